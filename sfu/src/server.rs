//! The SFU runtime: worker threads, each with one UDP socket and the Sans-I/O peer connections
//! of the rooms pinned to it.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::{
    Attribute, Interceptor, Packet as IPacket, Registry, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp::header::{Extension, Header};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::demux::{media_lines, stun_local_ufrag};
use crate::metrics::{DropReason, Metrics};
use crate::room::{ForwardConfig, InPacket, JoinError, Kind, Room};

const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Every RFC 6464 level as a one-byte slice, so a forwarded packet's extension is not an
/// allocation.
static LEVELS: [u8; 128] = {
    let mut l = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        l[i] = i as u8;
        i += 1;
    }
    l
};
/// The longest the worker sleeps without looking at its commands.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// A join waits this long for its worker.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses remembered per participant (ICE may try several; a flood of STUN from forged
/// sources must not grow the table).
const MAX_ADDRS_PER_PEER: usize = 8;
/// Room and participant ids longer than this are refused.
const MAX_ID_LEN: usize = 256;
/// Offers larger than this are refused before parsing.
const MAX_OFFER_LEN: usize = 64 * 1024;
/// The most m-lines of one kind a participant may offer.
const MAX_SLOTS: usize = 16;

/// How the SFU runs.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Address of the first worker's UDP socket; worker `i` binds port + `i` (or an ephemeral
    /// port when the port is 0).
    pub listen: SocketAddr,
    /// Number of worker threads (each one socket).
    pub workers: usize,
    /// The most rooms at once.
    pub max_rooms: usize,
    /// The address put in ICE candidates when `listen` is unspecified (0.0.0.0 or ::).
    pub announce_ip: Option<IpAddr>,
    /// Forwarding choices and per-room limits.
    pub forward: ForwardConfig,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_rooms: 1000,
            announce_ip: None,
            forward: ForwardConfig::default(),
        }
    }
}

/// Why the SFU could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// A worker socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A worker thread could not start.
    #[error("worker thread: {0}")]
    Thread(std::io::Error),
    /// `listen` is unspecified and no `announce_ip` was given.
    #[error("listening on an unspecified address needs an announce address")]
    NoAnnounceAddress,
}

enum Command {
    Join {
        room: String,
        id: String,
        offer: String,
        reply: mpsc::SyncSender<Result<String, JoinError>>,
    },
    Leave {
        room: String,
        id: String,
        reply: mpsc::SyncSender<LeaveOutcome>,
    },
    Stop,
}

#[derive(Debug, Clone, Copy)]
struct LeaveOutcome {
    was_member: bool,
    room_empty: bool,
}

struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

/// A running SFU. Dropping it stops the workers.
pub struct Sfu {
    workers: Vec<WorkerHandle>,
    /// Room to worker index. Also serialises joins, so limits hold without races.
    placement: Mutex<HashMap<String, usize>>,
    metrics: Arc<Metrics>,
    max_rooms: usize,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// Binds the workers' sockets and starts their threads.
    pub fn start(config: SfuConfig) -> Result<Sfu, SfuError> {
        let metrics = Arc::new(Metrics::default());
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let mut addr = config.listen;
            if addr.port() != 0 {
                addr.set_port(addr.port().saturating_add(i as u16));
            }
            let socket = UdpSocket::bind(addr).map_err(|source| SfuError::Bind { addr, source })?;
            let bound = socket
                .local_addr()
                .map_err(|source| SfuError::Bind { addr, source })?;
            let announced = if bound.ip().is_unspecified() {
                let ip = config.announce_ip.ok_or(SfuError::NoAnnounceAddress)?;
                SocketAddr::new(ip, bound.port())
            } else {
                bound
            };
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                socket,
                bound,
                announced,
                commands: rx,
                metrics: Arc::clone(&metrics),
                forward: config.forward,
                rooms: HashMap::new(),
                peers: HashMap::new(),
                by_addr: HashMap::new(),
                by_ufrag: HashMap::new(),
                next_key: 0,
                index: i,
                any_failed: false,
                reads: Vec::new(),
                targets: Vec::new(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("sotto-sfu-{i}"))
                .spawn(move || worker.run())
                .map_err(SfuError::Thread)?;
            workers.push(WorkerHandle {
                commands: tx,
                addr: announced,
                thread: Some(thread),
            });
        }
        Ok(Sfu {
            workers,
            placement: Mutex::new(HashMap::new()),
            metrics,
            max_rooms: config.max_rooms,
        })
    }

    /// The media addresses of the workers, as announced in ICE candidates.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.addr).collect()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether it hosts its maximum of rooms (a new room would be refused).
    pub fn is_full(&self) -> bool {
        self.metrics.rooms.load(Ordering::Relaxed) as usize >= self.max_rooms
    }

    /// The counters in the Prometheus text format, to append to a `/metrics` page.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Joins `participant` to `room` with its SDP offer; returns the SDP answer. Blocks until
    /// the room's worker has answered (milliseconds); async callers use `spawn_blocking`.
    ///
    /// The offer's audio m-lines that receive (`sendrecv`/`recvonly`) become the
    /// participant's speaker slots, in order (at most the configured N are used); its first
    /// `sendrecv`/`sendonly` audio m-line carries its own voice. Video likewise.
    pub fn join(
        &self,
        room: &str,
        participant: &str,
        offer_sdp: &str,
    ) -> Result<String, JoinError> {
        if room.is_empty()
            || room.len() > MAX_ID_LEN
            || participant.is_empty()
            || participant.len() > MAX_ID_LEN
        {
            return Err(JoinError::BadOffer("bad room or participant id".into()));
        }
        if offer_sdp.len() > MAX_OFFER_LEN {
            return Err(JoinError::BadOffer("offer too large".into()));
        }
        let mut placement = self.placement.lock().map_err(|_| JoinError::Unavailable)?;
        let index = match placement.get(room) {
            Some(&i) => i,
            None => {
                if self.metrics.rooms.load(Ordering::Relaxed) as usize >= self.max_rooms {
                    return Err(JoinError::TooManyRooms {
                        limit: self.max_rooms,
                    });
                }
                // The worker with the fewest rooms.
                let mut counts = vec![0usize; self.workers.len()];
                for &i in placement.values() {
                    if let Some(c) = counts.get_mut(i) {
                        *c += 1;
                    }
                }
                counts
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| **c)
                    .map_or(0, |(i, _)| i)
            }
        };
        let worker = self.workers.get(index).ok_or(JoinError::Unavailable)?;
        let (reply, answer) = mpsc::sync_channel(1);
        worker
            .commands
            .send(Command::Join {
                room: room.to_owned(),
                id: participant.to_owned(),
                offer: offer_sdp.to_owned(),
                reply,
            })
            .map_err(|_| JoinError::Unavailable)?;
        let result = answer
            .recv_timeout(JOIN_TIMEOUT)
            .map_err(|_| JoinError::Unavailable)?;
        if result.is_ok() {
            placement.insert(room.to_owned(), index);
        }
        result
    }

    /// Removes `participant` from `room`; returns whether it was there.
    pub fn leave(&self, room: &str, participant: &str) -> bool {
        let Ok(mut placement) = self.placement.lock() else {
            return false;
        };
        let Some(&index) = placement.get(room) else {
            return false;
        };
        let Some(worker) = self.workers.get(index) else {
            return false;
        };
        let (reply, outcome) = mpsc::sync_channel(1);
        if worker
            .commands
            .send(Command::Leave {
                room: room.to_owned(),
                id: participant.to_owned(),
                reply,
            })
            .is_err()
        {
            return false;
        }
        match outcome.recv_timeout(JOIN_TIMEOUT) {
            Ok(o) => {
                if o.room_empty {
                    placement.remove(room);
                }
                o.was_member
            }
            Err(_) => false,
        }
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.commands.send(Command::Stop);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// An outgoing track of one participant.
struct OutTrack {
    sender: RTCRtpSenderId,
    track_id: String,
    ssrc: u32,
    /// (payload type, audio-level extension id), read from the negotiated parameters.
    negotiated: Option<(u8, Option<u8>)>,
}

struct Peer {
    /// Shared names: the forwarding path needs them per packet without copying.
    room: Arc<str>,
    id: Arc<str>,
    ufrag: String,
    pc: RTCPeerConnection,
    addrs: Vec<SocketAddr>,
    /// Incoming track id to its kind and receiver.
    tracks: HashMap<String, (Kind, RTCRtpReceiverId)>,
    /// Negotiated audio-level extension id of the incoming audio, once read.
    level_ext: Option<Option<u8>>,
    /// The incoming video's receiver and SSRC, for keyframe requests.
    video_in: Option<(RTCRtpReceiverId, u32)>,
    audio_out: Vec<OutTrack>,
    video_out: Vec<OutTrack>,
    failed: bool,
}

impl Peer {
    /// Whether `ssrc` is one of our outgoing tracks to this participant.
    fn sends_ssrc(&self, ssrc: u32) -> bool {
        self.audio_out
            .iter()
            .chain(self.video_out.iter())
            .any(|o| o.ssrc == ssrc)
    }
}

struct RoomState {
    core: Room,
    peers: HashMap<String, u64>,
}

struct Worker {
    socket: UdpSocket,
    bound: SocketAddr,
    announced: SocketAddr,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    forward: ForwardConfig,
    rooms: HashMap<String, RoomState>,
    peers: HashMap<u64, Peer>,
    by_addr: HashMap<SocketAddr, u64>,
    by_ufrag: HashMap<String, u64>,
    next_key: u64,
    index: usize,
    /// Some connection failed or closed since the last reaping.
    any_failed: bool,
    /// Scratch space reused per packet, so forwarding allocates nothing of ours.
    reads: Vec<RTCMessage>,
    targets: Vec<(u64, crate::room::Route)>,
}

impl Worker {
    fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        let mut next_check = Instant::now();
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.close_all();
                        return;
                    }
                    Ok(Command::Join {
                        room,
                        id,
                        offer,
                        reply,
                    }) => {
                        let r = self.join(&room, &id, &offer);
                        let _ = reply.send(r);
                        next_check = Instant::now();
                    }
                    Ok(Command::Leave { room, id, reply }) => {
                        let was_member = self.remove_member(&room, &id);
                        let room_empty = !self.rooms.contains_key(&room);
                        let _ = reply.send(LeaveOutcome {
                            was_member,
                            room_empty,
                        });
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            // Timers: checked when the earliest one is due, or every MAX_WAIT at the latest
            // (a timer a datagram set meanwhile waits at most that long), not per datagram.
            let now = Instant::now();
            if next_check <= now {
                let due: Vec<u64> = self
                    .peers
                    .iter_mut()
                    .filter_map(|(k, p)| {
                        p.pc.poll_timeout().is_some_and(|t| t <= now).then_some(*k)
                    })
                    .collect();
                for key in due {
                    if let Some(p) = self.peers.get_mut(&key) {
                        let _ = p.pc.handle_timeout(now);
                    }
                    self.pump(key);
                }
                let earliest = self
                    .peers
                    .values_mut()
                    .filter_map(|p| p.pc.poll_timeout())
                    .min();
                next_check = earliest.map_or(now + MAX_WAIT, |t| t.min(now + MAX_WAIT));
            }
            let wait = next_check
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(500), MAX_WAIT);
            if self.socket.set_read_timeout(Some(wait)).is_err() {
                std::thread::sleep(wait);
            }
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(data) = buf.get(..n) {
                        self.on_datagram(from, data);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => tracing::debug!(worker = self.index, error = %e, "udp receive"),
            }
            if self.any_failed {
                self.any_failed = false;
                self.reap_failed();
            }
        }
    }

    fn close_all(&mut self) {
        for p in self.peers.values_mut() {
            let _ = p.pc.close();
        }
        self.peers.clear();
    }

    fn join(&mut self, room: &str, id: &str, offer: &str) -> Result<String, JoinError> {
        if let Some(r) = self.rooms.get(room) {
            r.core.can_add(id)?;
        }
        let lines = media_lines(offer);
        let audio_slots = lines
            .iter()
            .filter(|l| l.kind == Kind::Audio && l.receives)
            .count();
        let video_slots = lines
            .iter()
            .filter(|l| l.kind == Kind::Video && l.receives)
            .count();
        if lines.iter().filter(|l| l.kind == Kind::Audio).count() > MAX_SLOTS
            || lines.iter().filter(|l| l.kind == Kind::Video).count() > MAX_SLOTS
        {
            return Err(JoinError::BadOffer("too many m-lines".into()));
        }
        let key = self.next_key;
        self.next_key += 1;
        let ufrag = format!("s{}w{}k{key}", random_token(), self.index);
        let mut pc = new_peer_connection(&ufrag).map_err(JoinError::BadOffer)?;
        let desc = RTCSessionDescription::offer(offer.to_owned()).map_err(bad)?;
        pc.set_remote_description(Instant::now(), desc)
            .map_err(bad)?;
        // One of our tracks on every m-line, in order (add_track takes the first transceiver
        // of the kind without a sender); the ones the client receives on are slots.
        let mut audio_out = Vec::new();
        let mut video_out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let ssrc = rand::random::<u32>();
            let (rkind, codec, label) = match line.kind {
                Kind::Audio => (RtpCodecKind::Audio, opus_codec(), "audio"),
                Kind::Video => (RtpCodecKind::Video, vp8_codec(), "video"),
            };
            let track_id = format!("sfu-{label}-{i}-{ssrc:08x}");
            let track = MediaStreamTrack::new(
                format!("sfu-{label}-{i}"),
                track_id.clone(),
                track_id.clone(),
                rkind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            let sender = pc.add_track(track).map_err(bad)?;
            if line.receives {
                let out = OutTrack {
                    sender,
                    track_id,
                    ssrc,
                    negotiated: None,
                };
                match line.kind {
                    Kind::Audio => audio_out.push(out),
                    Kind::Video => video_out.push(out),
                }
            }
        }
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.announced.ip().to_string(),
                port: self.announced.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(bad)?;
        let init = RTCIceCandidate::from(&candidate).to_json().map_err(bad)?;
        pc.add_local_candidate(init).map_err(bad)?;
        let answer = pc.create_answer(None).map_err(bad)?;
        pc.set_local_description(Instant::now(), answer)
            .map_err(bad)?;
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| JoinError::BadOffer("no local description".into()))?;

        let forward = self.forward;
        let room_state = self.rooms.entry(room.to_owned()).or_insert_with(|| {
            self.metrics.rooms.fetch_add(1, Ordering::Relaxed);
            RoomState {
                core: Room::new(forward),
                peers: HashMap::new(),
            }
        });
        let used = match room_state.core.add(id, audio_slots, video_slots) {
            Ok(n) => n,
            Err(e) => {
                if room_state.core.is_empty() {
                    self.rooms.remove(room);
                    self.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        audio_out.truncate(used);
        room_state.peers.insert(id.to_owned(), key);
        self.by_ufrag.insert(ufrag.clone(), key);
        self.peers.insert(
            key,
            Peer {
                room: Arc::from(room),
                id: Arc::from(id),
                ufrag,
                pc,
                addrs: Vec::new(),
                tracks: HashMap::new(),
                level_ext: None,
                video_in: None,
                audio_out,
                video_out,
                failed: false,
            },
        );
        self.metrics.participants.fetch_add(1, Ordering::Relaxed);
        Ok(sdp)
    }

    fn remove_member(&mut self, room: &str, id: &str) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(key) = r.peers.remove(id) else {
            return false;
        };
        r.core.remove(id);
        if r.core.is_empty() {
            self.rooms.remove(room);
            self.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(mut p) = self.peers.remove(&key) {
            let _ = p.pc.close();
            for a in &p.addrs {
                self.by_addr.remove(a);
            }
            self.by_ufrag.remove(&p.ufrag);
        }
        self.metrics.participants.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn reap_failed(&mut self) {
        let failed: Vec<(String, String)> = self
            .peers
            .values()
            .filter(|p| p.failed)
            .map(|p| (p.room.to_string(), p.id.to_string()))
            .collect();
        for (room, id) in failed {
            tracing::debug!(%room, %id, "participant connection failed; removed");
            self.remove_member(&room, &id);
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let (key, known) = match self.by_addr.get(&from) {
            Some(&k) => (k, true),
            None => {
                let Some(&k) = stun_local_ufrag(data).and_then(|u| self.by_ufrag.get(u)) else {
                    self.metrics.count_drop(DropReason::UnknownSource);
                    return;
                };
                (k, false)
            }
        };
        // RFC 7983 demultiplexing: STUN 0-3, DTLS 20-63, RTP/RTCP 128-191. Anything else is
        // nobody's protocol.
        let first = data.first().copied().unwrap_or(255);
        if !(first <= 3 || (20..=63).contains(&first) || (128..=191).contains(&first)) {
            self.metrics.count_drop(DropReason::Malformed);
            return;
        }
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.bound,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if p.pc.handle_read(msg).is_err() {
            self.metrics.count_drop(DropReason::Malformed);
        }
        if !known {
            // A new address is the participant's only once its connection answered the
            // request, which ICE does only when it carries the right password: a forged
            // request naming a live ufrag adds nothing to the table.
            let answered = flush(&self.socket, &mut p.pc, Some(from));
            if !answered {
                self.metrics.count_drop(DropReason::UnknownSource);
            } else if p.addrs.len() < MAX_ADDRS_PER_PEER {
                p.addrs.push(from);
                self.by_addr.insert(from, key);
            }
        }
        self.pump(key);
    }

    /// Sends what `key`'s connection has to send, and acts on what it received.
    fn pump(&mut self, key: u64) {
        let mut reads = std::mem::take(&mut self.reads);
        reads.clear();
        {
            let Some(p) = self.peers.get_mut(&key) else {
                self.reads = reads;
                return;
            };
            flush(&self.socket, &mut p.pc, None);
            while let Some(event) = p.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        if let Some(r) = p.pc.rtp_receiver(init.receiver_id) {
                            let kind = match r.track().kind() {
                                RtpCodecKind::Video => Kind::Video,
                                _ => Kind::Audio,
                            };
                            if p.tracks.len() < 2 * MAX_SLOTS {
                                p.tracks.insert(init.track_id, (kind, init.receiver_id));
                            }
                        }
                    }
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed,
                    ) => {
                        p.failed = true;
                        self.any_failed = true;
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = p.pc.poll_read() {
                reads.push(message);
            }
        }
        for message in reads.drain(..) {
            match message {
                RTCMessage::RtpPacket(track_id, packet) => self.forward(key, &track_id, packet),
                RTCMessage::RtcpPacket(track_id, packets) => {
                    let worst_loss = packets
                        .iter()
                        .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
                        .flat_map(|rr| rr.reports.iter())
                        .filter(|r| self.peers.get(&key).is_some_and(|p| p.sends_ssrc(r.ssrc)))
                        .map(|r| r.fraction_lost)
                        .max();
                    if let Some(loss) = worst_loss {
                        self.on_receiver_loss(key, loss);
                    }
                    let wants_keyframe = packets.iter().any(|p| {
                        let any = p.as_any();
                        any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                    });
                    if wants_keyframe {
                        self.relay_keyframe_request(key, &track_id);
                    }
                }
                _ => {}
            }
        }
        self.reads = reads;
    }

    fn forward(&mut self, key: u64, track_id: &str, packet: rtc::rtp::Packet) {
        let now = Instant::now();
        self.metrics.packets_in.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_in
            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(&(kind, receiver)) = p.tracks.get(track_id) else {
            self.metrics.count_drop(DropReason::Unroutable);
            return;
        };
        let level = match kind {
            Kind::Audio => {
                let ext = *p.level_ext.get_or_insert_with(|| {
                    p.pc.rtp_receiver(receiver).and_then(|mut r| {
                        r.get_parameters()
                            .rtp_parameters
                            .header_extensions
                            .iter()
                            .find(|h| h.uri == AUDIO_LEVEL_URI)
                            .and_then(|h| u8::try_from(h.id).ok())
                    })
                });
                ext.and_then(|id| packet.header.get_extension(id))
                    .and_then(|b| b.first().map(|l| l & 0x7f))
            }
            Kind::Video => {
                p.video_in = Some((receiver, packet.header.ssrc));
                None
            }
        };
        let (room_name, from) = (Arc::clone(&p.room), Arc::clone(&p.id));
        let Some(room) = self.rooms.get_mut(&*room_name) else {
            return;
        };
        let input = InPacket {
            ssrc: packet.header.ssrc,
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            level,
        };
        let routes = match kind {
            Kind::Audio => room.core.on_audio(now, &from, input),
            Kind::Video => room.core.on_video(now, &from, input),
        };
        let routes = match routes {
            Ok(r) => r,
            Err(crate::room::DropCause::RateLimited) => {
                self.metrics.count_drop(DropReason::RateLimit);
                return;
            }
            Err(_) => {
                self.metrics.count_drop(DropReason::Unroutable);
                return;
            }
        };
        let keyframes = room.core.take_keyframe_requests();
        for _ in 0..room.core.take_shed() {
            self.metrics.count_drop(DropReason::Bandwidth);
        }
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend(
            routes
                .into_iter()
                .filter_map(|r| room.peers.get(&r.to).map(|&k| (k, r))),
        );
        for (target, route) in targets.drain(..) {
            let Some(t) = self.peers.get_mut(&target) else {
                continue;
            };
            let outs = match route.kind {
                Kind::Audio => &mut t.audio_out,
                Kind::Video => &mut t.video_out,
            };
            let Some(out) = outs.get_mut(route.slot) else {
                continue;
            };
            let (pt, level_id) = match out.negotiated {
                Some(n) => n,
                None => {
                    let Some(n) = negotiated(&mut t.pc, out.sender, route.kind) else {
                        self.metrics.count_drop(DropReason::SendFailed);
                        continue;
                    };
                    out.negotiated = Some(n);
                    n
                }
            };
            let mut header = Header {
                version: 2,
                marker: packet.header.marker,
                payload_type: pt,
                sequence_number: route.seq,
                timestamp: route.timestamp,
                ssrc: out.ssrc,
                ..Default::default()
            };
            if let (Some(id), Some(l)) = (level_id, level) {
                header.extension = true;
                header.extension_profile = 0xBEDE;
                header.extensions = vec![Extension {
                    id,
                    payload: level_payload(l),
                }];
            }
            let len = packet.payload.len() as u64;
            let out_packet = rtc::rtp::Packet {
                header,
                // The sealed frame, byte for byte.
                payload: packet.payload.clone(),
            };
            let sent =
                t.pc.rtp_sender(out.sender)
                    .map(|mut s| s.write_rtp(now, out_packet));
            match sent {
                Some(Ok(())) => {
                    self.metrics.packets_out.fetch_add(1, Ordering::Relaxed);
                    self.metrics.bytes_out.fetch_add(len, Ordering::Relaxed);
                }
                _ => self.metrics.count_drop(DropReason::SendFailed),
            }
            flush(&self.socket, &mut t.pc, None);
        }
        self.targets = targets;
        for publisher in keyframes {
            if let Some(&k) = self
                .rooms
                .get(&*room_name)
                .and_then(|r| r.peers.get(&publisher))
            {
                self.send_pli(k);
            }
        }
    }

    fn on_receiver_loss(&mut self, key: u64, fraction_lost: u8) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        if let Some(room) = self.rooms.get_mut(&*p.room) {
            room.core
                .on_receiver_loss(Instant::now(), &p.id, fraction_lost);
        }
    }

    fn relay_keyframe_request(&mut self, key: u64, track_id: &str) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        let Some(slot) = p.video_out.iter().position(|o| o.track_id == track_id) else {
            return;
        };
        let (room_name, receiver) = (Arc::clone(&p.room), Arc::clone(&p.id));
        let Some(room) = self.rooms.get_mut(&*room_name) else {
            return;
        };
        let Some(publisher) = room
            .core
            .on_keyframe_request(Instant::now(), &receiver, slot)
        else {
            return;
        };
        if let Some(&k) = room.peers.get(&publisher) {
            self.send_pli(k);
        }
    }

    fn send_pli(&mut self, key: u64) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let Some((receiver, media_ssrc)) = p.video_in else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if let Some(mut r) = p.pc.rtp_receiver(receiver)
            && r.write_rtcp(Instant::now(), vec![Box::new(pli)]).is_ok()
        {
            self.metrics
                .keyframe_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        flush(&self.socket, &mut p.pc, None);
    }
}

/// Sends what `pc` has to send; returns whether any of it went to `watch`.
fn flush(socket: &UdpSocket, pc: &mut RTCPeerConnection, watch: Option<SocketAddr>) -> bool {
    let mut to_watch = false;
    while let Some(msg) = pc.poll_write() {
        to_watch |= watch == Some(msg.transport.peer_addr);
        if let Err(e) = socket.send_to(&msg.message, msg.transport.peer_addr) {
            tracing::trace!(error = %e, "udp send");
        }
    }
    to_watch
}

/// The one-byte RFC 6464 extension payload for `level` (0-127; anything above is not a
/// level and becomes 127, silence), without an allocation.
fn level_payload(level: u8) -> Bytes {
    let l = usize::from(level.min(127));
    Bytes::from_static(LEVELS.get(l..=l).unwrap_or(&[127]))
}

fn bad(e: impl std::fmt::Display) -> JoinError {
    JoinError::BadOffer(e.to_string())
}

/// The payload type and audio-level extension id negotiated for an outgoing track.
fn negotiated(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    kind: Kind,
) -> Option<(u8, Option<u8>)> {
    let mut s = pc.rtp_sender(sender)?;
    let params = s.get_parameters();
    let mime = match kind {
        Kind::Audio => MIME_TYPE_OPUS,
        Kind::Video => MIME_TYPE_VP8,
    };
    let pt = params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))?
        .payload_type;
    let level = params
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|h| h.uri == AUDIO_LEVEL_URI)
        .and_then(|h| u8::try_from(h.id).ok());
    Some((pt, level))
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn new_peer_connection(ufrag: &str) -> Result<RTCPeerConnection, String> {
    let e = |e: rtc::shared::error::Error| e.to_string();
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .map_err(e)?;
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8_codec(),
                payload_type: 96,
            },
            RtpCodecKind::Video,
        )
        .map_err(e)?;
    for (typ, parameter) in [("nack", "pli"), ("ccm", "fir")] {
        media.register_feedback(
            RTCPFeedback {
                typ: typ.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    media
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(e)?;
    let registry = configure_rtcp_reports(Registry::new()).with(
        rtc::interceptor::Slot::from(14_000),
        KeyframeRequests::default(),
    );
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), random_token() + &random_token())
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .map_err(e)
}

/// An interceptor that lets PLI, FIR and receiver reports reach the application (webrtc-rs
/// stops inbound RTCP at the end of the chain otherwise); other RTCP ends there as usual.
#[derive(Default)]
pub struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let IPacket::Rtcp(packets) = &mut msg.message.packet {
            packets.retain(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>()
                    || any.is::<FullIntraRequest>()
                    || any.is::<ReceiverReport>()
            });
            if packets.is_empty() {
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl std::fmt::Debug for KeyframeRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyframeRequests").finish_non_exhaustive()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_payload_is_the_level_byte() {
        for level in 0..=127u8 {
            assert_eq!(&level_payload(level)[..], &[level]);
        }
        assert_eq!(&level_payload(200)[..], &[127]);
    }
}
