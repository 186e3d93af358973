//! The WebRTC transport of one two-party call (webrtc-rs): one Opus audio track each way,
//! ICE/DTLS/SRTP underneath, and nothing but SFrame-sealed frames on the track.
//!
//! Only [`SealedFrame`]s can be sent, and only the SFrame layer makes them, so no code path
//! can hand plaintext media to the network. Received RTP payloads come out as
//! [`ReceivedFrame`]s still sealed, for the caller to decrypt; their RTP sequence number and
//! timestamp are not authenticated, so [`FrameOrder`] checks them against the SFrame counter.
//!
//! A VP8 video m-line follows the audio one, always negotiated (`sendrecv` or `recvonly`, see
//! [`VideoDirection`]). Its frames are sealed in the layout of [`seal_video`] (clear VP8
//! payload header as SFrame metadata), packetized with a VP8 payload descriptor, and come out
//! of [`MediaTransport::take_video_frames`] reassembled but still sealed. PLI/FIR from the peer
//! come out of [`MediaTransport::take_keyframe_requests`]; [`MediaTransport::bitrate_watch`]
//! follows the sending-side estimate of GCC over transport-wide congestion control feedback.
//! Video packets leave through a [`VideoPacer`] at a multiple of that estimate, so a
//! keyframe's burst does not queue audio behind it at the bottleneck; audio is not paced.
//!
//! A negotiated data channel (`sotto-control`, stream id 0) carries control messages, which
//! are sealed the same way (with the control keys of `docs/call-protocol.md`).
//!
//! Negotiation is plain SDP text for the caller to relay over signaling, either complete (sent
//! once ICE gathering finished: [`MediaTransport::create_offer`], [`MediaTransport::accept_offer`])
//! or trickled (sent at once, [`MediaTransport::create_offer_trickle`],
//! [`MediaTransport::accept_offer_trickle`], with each candidate gathered later coming out of
//! [`MediaTransport::take_local_candidates`] and the peer's going in through
//! [`MediaTransport::add_remote_candidate`]).
//!
//! A lost path is noticed within [`ICE_DISCONNECTED_AFTER`] of silence (media or consent
//! checks, sent every [`ICE_KEEPALIVE`]); [`MediaTransport::create_restart_offer`] then restarts
//! ICE on the same peer connection: new ICE credentials and candidates, the same DTLS
//! association, tracks and SRTP keys. [`Reconnector`] decides when (Sans-I/O).
//!
//! ```no_run
//! # async fn demo(mut sender: sotto::sframe::SenderContext) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sotto::transport::{MediaTransport, TransportConfig, seal};
//!
//! let transport = MediaTransport::new(TransportConfig::default()).await?;
//! // The handshake signs this fingerprint; the peer checks our SDP against it.
//! println!("our DTLS certificate: {}", transport.dtls_fingerprint());
//! let offer = transport.create_offer().await?;
//! # let answer = offer.clone();
//! // ... send the offer through signaling, get the answer back ...
//! transport.accept_answer(&answer).await?;
//! transport.connected(Duration::from_secs(10)).await?;
//! // Only sealed frames go on the track.
//! let frame = seal(&mut sender, b"an Opus packet")?;
//! transport.send(&frame, Duration::from_millis(20)).await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use rtc::data_channel::RTCDataChannelInit;
use rtc::interceptor::{
    CongestionControlBuilder, Gcc, NackGeneratorBuilder, NackResponderBuilder, Registry, Slot,
    TwccReceiverBuilder, TwccSenderBuilder,
};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::configuration::{RTCConfigurationBuilder, RTCIceTransportPolicy};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceServer;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{PayloadType, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::handshake::DtlsFingerprint;
use crate::sframe::{MAX_HEADER_LEN, SenderContext, SframeError};

mod layout;
mod order;
mod pacer;
mod restart;
mod sfu;
mod sync;
mod turn_tcp;
mod video;
pub use layout::{
    OpenVideoError, OpenedVideo, VP8_DELTA_PREFIX, VP8_KEYFRAME_PREFIX, VideoLayoutError,
    open_video_in_place, seal_video, video_clear_prefix_len,
};
pub use order::{FrameOrder, ORDER_WINDOW, OrderError};
pub use pacer::{MAX_PACER_DELAY, PACING_FACTOR, VideoPacer};
pub use restart::{PathAction, RECONNECT_GIVE_UP, Reconnector, RestartRole};
pub use sfu::{
    AUDIO_LEVEL_URI, MAX_AUDIO_SLOTS, MAX_VIDEO_SLOTS, SfuTransport, SfuTransportConfig, SlotFrame,
    SlotVideoFrame, rfc6464_level,
};
pub use sync::SenderClock;
pub use turn_tcp::{
    MAX_TURN_MESSAGE, StreamSplitter, TurnTcpError, frame_datagram, tcp_turn_server,
};
pub use video::{
    AssemblerStats, DescriptorError, FrameAssembler, MAX_VIDEO_FRAME, MAX_VIDEO_RTP_PAYLOAD,
    ReceivedVideoFrame, VIDEO_REORDER_WAIT, VideoDirection, Vp8Descriptor, Vp8Packetizer,
    parse_vp8_descriptor,
};
use video::{KeyframeRequests, PublishedEstimator};

/// Errors of the transport.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// webrtc-rs refused an operation.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The peer's session description is not valid SDP.
    #[error("bad session description from peer: {0}")]
    BadDescription(String),
    /// ICE gathering or connection did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection is closed.
    #[error("transport closed")]
    Closed,
    /// The control channel is not open (yet, or any more).
    #[error("control channel not open")]
    ControlNotOpen,
    /// Sealing a frame failed.
    #[error(transparent)]
    Sframe(#[from] SframeError),
    /// Video was sent on a transport built with [`VideoDirection::ReceiveOnly`].
    #[error("this transport does not send video")]
    VideoReceiveOnly,
    /// A TURN over TCP server could not be set up.
    #[error(transparent)]
    TurnTcp(#[from] TurnTcpError),
}

/// `sdp` with every candidate's related address and port (`raddr`, `rport`) replaced by
/// `0.0.0.0 0`, as browsers do for privacy.
fn scrub_related_addresses(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if !line.starts_with("a=candidate") {
            out.push_str(line);
            continue;
        }
        let (body, end) = match line.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n")),
        };
        out.push_str(&scrub_candidate(body));
        out.push_str(end);
    }
    out
}

/// One candidate (an SDP line's value or a trickled `candidate:` string) with its related
/// address and port replaced by `0.0.0.0 0`.
fn scrub_candidate(candidate: &str) -> String {
    let mut words: Vec<&str> = candidate.split(' ').collect();
    for i in 1..words.len() {
        match words[i - 1] {
            "raddr" => words[i] = "0.0.0.0",
            "rport" => words[i] = "0",
            _ => {}
        }
    }
    words.join(" ")
}

/// Whether any of `servers` is a TURN server.
pub fn has_turn(servers: &[IceServer]) -> bool {
    servers
        .iter()
        .flat_map(|s| &s.urls)
        .any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
}

fn ice_policy(relay_only: bool) -> RTCIceTransportPolicy {
    if relay_only {
        RTCIceTransportPolicy::Relay
    } else {
        RTCIceTransportPolicy::All
    }
}

fn rtc_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect()
}

/// Time between two ICE connectivity checks. The stack's default of 200 ms is most of a
/// loopback call's set-up (~205 ms of ~230); RFC 8445 paces checks at 50 ms.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it fails: 40 x 50 ms = 2 s, longer than the default 1.4 s,
/// so a slow relayed path gets no less time than before.
const ICE_MAX_CHECKS: u16 = 40;

/// Silence on the selected path (no media, no consent check) after which ICE calls it
/// disconnected and the call restarts ICE. The stack's default of 5 s would let a short outage
/// pass unnoticed and a longer one cost 5 s before any repair starts.
pub const ICE_DISCONNECTED_AFTER: Duration = Duration::from_millis(1500);
/// How often consent checks go out on the selected path, media or not (default 2 s): three
/// fit in [`ICE_DISCONNECTED_AFTER`], so an idle but healthy path is never taken for lost.
pub const ICE_KEEPALIVE: Duration = Duration::from_millis(500);

/// How long a restart's offer or answer waits for ICE gathering. Gathering during an outage
/// can wait out an unreachable STUN server; the candidates kept from before (host,
/// server-reflexive, relay) are usually the ones that work again when the path returns.
pub const RESTART_GATHER_WAIT: Duration = Duration::from_secs(1);

/// How long a trickled description waits for its first candidate at most, so a peer that
/// does not trickle still finds one in it. Host candidates usually come within a few
/// milliseconds, and the wait ends there; on a loaded machine they took over 50 ms. Relay-only
/// waits for its relay candidate, or goes out without one when this passes.
pub const HOST_CANDIDATE_WAIT: Duration = Duration::from_millis(500);

/// Local candidates queued for the caller at most (a caller that does not drain them loses
/// the rest; they are also in every later description).
const LOCAL_CANDIDATE_QUEUE: usize = 64;

/// What local ICE gathering found, for the peer (trickle ICE).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalCandidate {
    /// One candidate: the `candidate:...` string (RFC 8839 without the `a=`).
    Candidate(String),
    /// Gathering finished: no more candidates until the next description gathers anew.
    End,
}

/// ICE pacing and timeouts for every peer connection we make.
fn ice_pacing() -> SettingEngine {
    SettingEngineBuilder::new()
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_CHECKS))
        // Failure keeps the stack's default (25 s after disconnected): a restart or the call's
        // own deadline decides before that.
        .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), None, Some(ICE_KEEPALIVE))
        .build()
}

fn rtc_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::WebRtc(e.to_string())
}

/// ICE servers and local addresses.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// STUN/TURN servers (`stun:host:port`, `turn:host:port` with credentials).
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to gather host candidates on. `127.0.0.1:0` for loopback calls;
    /// a wildcard address skips loopback.
    pub udp_addrs: Vec<String>,
    /// How long ICE gathering may take.
    pub gather_timeout: Duration,
    /// Whether we send video (the video m-line is negotiated either way).
    pub video: VideoDirection,
    /// Upper bound of the sending bitrate estimate, in bits/s (audio and video together).
    pub max_bitrate: u64,
    /// Gather and offer TURN relay candidates only, so the peer never learns our addresses.
    pub relay_only: bool,
    /// Trickle ICE in calls: send the offer or answer at once and the candidates as they are
    /// gathered. `false` behaves as a peer that does not trickle: complete descriptions only.
    pub trickle: bool,
}

/// Where the sending bitrate estimate starts, in bits/s (lowered to `max_bitrate` if above).
pub const INITIAL_BITRATE: u64 = 1_000_000;
/// Lowest sending bitrate estimate, in bits/s.
pub const MIN_BITRATE: u64 = 100_000;
/// Default [`TransportConfig::max_bitrate`], in bits/s.
pub const DEFAULT_MAX_BITRATE: u64 = 2_500_000;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            ice_servers: Vec::new(),
            udp_addrs: vec!["127.0.0.1:0".into()],
            gather_timeout: Duration::from_secs(5),
            video: VideoDirection::default(),
            max_bitrate: DEFAULT_MAX_BITRATE,
            relay_only: false,
            trickle: true,
        }
    }
}

/// A STUN or TURN server.
#[derive(Debug, Clone, Default)]
pub struct IceServer {
    /// Server URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    pub username: String,
    /// TURN credential.
    pub credential: String,
}

/// An ICE-restart offer ([`MediaTransport::create_restart_offer`]).
#[derive(Debug, Clone)]
pub struct RestartOffer {
    /// The SDP for the peer.
    pub sdp: String,
    /// Whether gathering finished in time. If not (a STUN or TURN server out of reach, as in
    /// an outage), the offer may hold only candidates from before, which a changed network
    /// no longer reaches.
    pub gathered: bool,
}

/// An SFrame frame ready for the wire. Only [`seal`] makes one, from a [`SenderContext`].
#[derive(Debug, Clone)]
pub struct SealedFrame(Bytes);

impl SealedFrame {
    /// The bytes that go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Seals `payload` with `sender` into a frame the transport will send.
pub fn seal(sender: &mut SenderContext, payload: &[u8]) -> Result<SealedFrame, SframeError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len() + sender.max_overhead()];
    buf[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let range = sender.encrypt_in_place(&[], &mut buf, MAX_HEADER_LEN, payload.len())?;
    let bytes = Bytes::from(buf).slice(range);
    Ok(SealedFrame(bytes))
}

/// A frame as it came off the wire, still sealed.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// The SFrame frame.
    pub payload: Bytes,
    /// When it arrived.
    pub arrival: Instant,
}

/// Times a missing video packet is asked for (NACK) before it is given up; the receiver's
/// reassembly waits [`VIDEO_REORDER_WAIT`] for it anyway.
const NACKS_PER_PACKET: u16 = 2;

/// How often the receiver reports arrivals (transport-wide feedback). The sender learns that a
/// link has dropped one interval after it did, and until then it fills the bottleneck's queue
/// ahead of audio: at 50 ms rather than the interceptor's 100 ms default that queue overflows
/// half as long, for about 8 kbit/s more feedback.
const TWCC_FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);

/// Whole video frames queued for the application at most.
const VIDEO_QUEUE: usize = 64;

/// Largest control message accepted from the peer (sealed), in bytes: a chat message of 4 KiB
/// of text needs up to 6 x that as escaped JSON.
pub const MAX_CONTROL_MESSAGE: usize = 32 * 1024;

/// Label of the control data channel.
pub const CONTROL_LABEL: &str = "sotto-control";

/// Connection progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportState {
    /// Negotiating.
    Connecting,
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The path was lost; ICE may recover it.
    Disconnected,
    /// ICE gave up on the path: only an ICE restart can bring it back.
    Failed,
    /// Closed for good.
    Closed,
}

impl TransportState {
    /// Our view of a peer connection's state.
    fn from_peer_connection(state: RTCPeerConnectionState) -> Self {
        match state {
            RTCPeerConnectionState::Connected => TransportState::Connected,
            RTCPeerConnectionState::Disconnected => TransportState::Disconnected,
            RTCPeerConnectionState::Failed => TransportState::Failed,
            RTCPeerConnectionState::Closed => TransportState::Closed,
            _ => TransportState::Connecting,
        }
    }
}

/// Waits until `state` says media can flow, or fails when the connection fails or closes
/// first.
async fn wait_connected(
    state: &watch::Receiver<TransportState>,
    timeout: Duration,
) -> Result<(), TransportError> {
    let mut state = state.clone();
    let wait = state.wait_for(|s| {
        matches!(
            s,
            TransportState::Connected | TransportState::Failed | TransportState::Closed
        )
    });
    let state = *tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| TransportError::Timeout("connection"))?
        .map_err(|_| TransportError::Closed)?;
    if state != TransportState::Connected {
        return Err(TransportError::Closed);
    }
    Ok(())
}

/// Applies the answer to our offer.
async fn set_remote_answer(
    pc: &Arc<dyn PeerConnection>,
    answer: &str,
) -> Result<(), TransportError> {
    let desc = RTCSessionDescription::answer(answer.to_owned())
        .map_err(|e| TransportError::BadDescription(e.to_string()))?;
    pc.set_remote_description(desc)
        .await
        .map_err(|e| TransportError::BadDescription(e.to_string()))
}

/// The peer's video track, once it exists: where PLIs go.
#[derive(Default)]
struct RemoteVideo {
    track: Option<Arc<dyn TrackRemote>>,
    ssrc: Option<u32>,
}

struct Handler {
    /// How many times ICE gathering completed: each local description gathers anew.
    gathered: watch::Sender<u64>,
    /// How many local candidates were found so far.
    found: watch::Sender<u64>,
    /// Each local candidate and the end of each gathering, for trickle ICE.
    candidates: mpsc::Sender<LocalCandidate>,
    relay_only: bool,
    state: watch::Sender<TransportState>,
    frames: mpsc::Sender<ReceivedFrame>,
    video_frames: mpsc::Sender<ReceivedVideoFrame>,
    remote_video: Arc<Mutex<RemoteVideo>>,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
    audio_clock: watch::Sender<Option<SenderClock>>,
    video_clock: watch::Sender<Option<SenderClock>>,
}

/// RTP clock rate of Opus.
const OPUS_CLOCK_RATE: u32 = 48_000;
/// RTP clock rate of video.
const VIDEO_CLOCK_RATE: u32 = 90_000;

/// Publishes the clock of the sender reports among `packets` (RTCP about a received stream).
fn publish_sender_clock(
    packets: &[Box<dyn rtc::rtcp::Packet>],
    clock_rate: u32,
    clock: &watch::Sender<Option<SenderClock>>,
) {
    for p in packets {
        if let Some(sr) = p
            .as_any()
            .downcast_ref::<rtc::rtcp::sender_report::SenderReport>()
        {
            let _ = clock.send(Some(SenderClock::from_report(sr, clock_rate)));
        }
    }
}

enum Polled {
    Event(TrackRemoteEvent),
    Timeout,
    Ended,
}

/// Reassembles the peer's video frames and queues them (bounded: a stalled consumer loses
/// frames, and the next one delivered says so).
async fn pump_video(
    track: Arc<dyn TrackRemote>,
    frames: mpsc::Sender<ReceivedVideoFrame>,
    remote: Arc<Mutex<RemoteVideo>>,
    clock: watch::Sender<Option<SenderClock>>,
) {
    let mut assembler = FrameAssembler::new();
    let mut dropped = false;
    loop {
        let event = match assembler.deadline() {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), track.poll()).await {
                Ok(Some(event)) => Polled::Event(event),
                Ok(None) => Polled::Ended,
                Err(_) => {
                    assembler.expire(Instant::now());
                    Polled::Timeout
                }
            },
            None => match track.poll().await {
                Some(event) => Polled::Event(event),
                None => Polled::Ended,
            },
        };
        match event {
            Polled::Event(TrackRemoteEvent::OnRtpPacket(packet)) => {
                if packet.payload.is_empty() {
                    assembler.push_padding(
                        packet.header.sequence_number,
                        packet.header.timestamp,
                        Instant::now(),
                    );
                    continue;
                }
                if let Ok(mut r) = remote.lock() {
                    // The newest SSRC: where a PLI has to go.
                    r.ssrc = Some(packet.header.ssrc);
                }
                assembler.push(
                    packet.header.sequence_number,
                    packet.header.timestamp,
                    packet.header.marker,
                    &packet.payload,
                    Instant::now(),
                );
            }
            Polled::Event(TrackRemoteEvent::OnRtcpPacket(packets)) => {
                publish_sender_clock(&packets, VIDEO_CLOCK_RATE, &clock);
            }
            Polled::Event(_) | Polled::Timeout => {}
            Polled::Ended => break,
        }
        while let Some(mut frame) = assembler.pop() {
            frame.after_loss |= dropped;
            match frames.try_send(frame) {
                Ok(()) => dropped = false,
                Err(mpsc::error::TrySendError::Full(_)) => dropped = true,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
            if self.candidates.try_send(LocalCandidate::End).is_err() {
                tracing::debug!("local candidate queue full: end of gathering not queued");
            }
        }
    }

    async fn on_ice_candidate(&self, event: webrtc::peer_connection::RTCPeerConnectionIceEvent) {
        let candidate = match event.candidate.to_json() {
            Ok(init) => init.candidate,
            Err(e) => {
                tracing::debug!(error = %e, "local candidate not expressible");
                return;
            }
        };
        // As in the description: relay-only never names our own addresses.
        let candidate = if self.relay_only {
            scrub_candidate(&candidate)
        } else {
            candidate
        };
        tracing::debug!(%candidate, "local candidate");
        self.found.send_modify(|n| *n += 1);
        if self
            .candidates
            .try_send(LocalCandidate::Candidate(candidate))
            .is_err()
        {
            tracing::debug!("local candidate queue full: candidate not queued");
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(?state, "peer connection state");
        let _ = self.state.send(TransportState::from_peer_connection(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await == RtpCodecKind::Video {
            if let Ok(mut r) = self.remote_video.lock() {
                r.track = Some(Arc::clone(&track));
            }
            self.runtime.spawn(Box::pin(pump_video(
                track,
                self.video_frames.clone(),
                Arc::clone(&self.remote_video),
                self.video_clock.clone(),
            )));
            return;
        }
        let frames = self.frames.clone();
        let clock = self.audio_clock.clone();
        self.runtime.spawn(Box::pin(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtcpPacket(packets) = &event {
                    publish_sender_clock(packets, OPUS_CLOCK_RATE, &clock);
                }
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    // Padding-only packets carry no frame.
                    if packet.payload.is_empty() {
                        continue;
                    }
                    let frame = ReceivedFrame {
                        seq: packet.header.sequence_number,
                        timestamp: packet.header.timestamp,
                        payload: packet.payload.clone(),
                        arrival: Instant::now(),
                    };
                    // A full queue means the receiver stalled: drop rather than buffer.
                    if frames.try_send(frame).is_err() && frames.is_closed() {
                        break;
                    }
                }
            }
        }));
    }
}

/// One peer connection with an outgoing Opus track, the incoming frames and the control
/// channel. Sending takes `&self`, so a capture thread can share it with the call task.
pub struct MediaTransport {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    control: Arc<dyn DataChannel>,
    control_open: watch::Receiver<bool>,
    ssrc: u32,
    payload_type: OnceLock<PayloadType>,
    gathered: watch::Receiver<u64>,
    found: watch::Receiver<u64>,
    local_candidates: Option<mpsc::Receiver<LocalCandidate>>,
    state: watch::Receiver<TransportState>,
    frames: Option<mpsc::Receiver<ReceivedFrame>>,
    controls: Option<mpsc::Receiver<Bytes>>,
    gather_timeout: Duration,
    relay_only: bool,
    dtls_fingerprint: DtlsFingerprint,
    video: Option<VideoSend>,
    /// Our video SSRC; also the sender SSRC of our PLIs when we only receive.
    video_ssrc: u32,
    remote_video: Arc<Mutex<RemoteVideo>>,
    video_frames: Option<mpsc::Receiver<ReceivedVideoFrame>>,
    keyframe_requests: Option<mpsc::Receiver<()>>,
    bitrate: watch::Receiver<u64>,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
    audio_clock: watch::Receiver<Option<SenderClock>>,
    video_clock: watch::Receiver<Option<SenderClock>>,
    /// Carries TURN over TCP for the peer connection's TURN client, while the call lasts.
    turn_tcp: Mutex<turn_tcp::TurnTcpBridges>,
}

/// The sending half of the video track.
struct VideoSend {
    /// Packets wait here for the pacing task, which alone writes them to the track.
    pacer: Arc<Mutex<VideoPacer>>,
    /// Wakes the pacing task when a frame is queued.
    queued: Arc<tokio::sync::Notify>,
    /// Frames the pacer dropped in all.
    dropped: Arc<std::sync::atomic::AtomicU64>,
    sender: Arc<dyn RtpSender>,
    payload_type: OnceLock<PayloadType>,
    /// RTP timestamps count 90 kHz from the first frame's capture time.
    epoch: OnceLock<Instant>,
    timestamp_base: u32,
    /// Held while a frame is numbered and queued, so frames never interleave.
    state: tokio::sync::Mutex<VideoSendState>,
}

struct VideoSendState {
    packetizer: Vp8Packetizer,
    seq: u16,
}

/// Forwards the peer's keyframe requests (PLI/FIR on our video track). The track only has
/// events once negotiation bound it, so this waits for the connection first.
async fn pump_keyframe_requests(
    track: Arc<TrackLocalStaticRTP>,
    mut state: watch::Receiver<TransportState>,
    requests: mpsc::Sender<()>,
) {
    loop {
        match track.poll().await {
            Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                let asks = packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                });
                // One pending request stands for any number: the encoder makes one keyframe.
                if asks && requests.try_send(()).is_err() && requests.is_closed() {
                    return;
                }
            }
            Some(_) => {}
            None => {
                if *state.borrow() == TransportState::Closed || state.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The one task that writes video packets to the track, as the pacer lets them go, at
/// [`PACING_FACTOR`] times the bandwidth estimate. Frames the pacer drops ask our encoder for a
/// keyframe through the same stream as the peer's PLI. Ends when the connection closes.
async fn pace_video(
    track: Arc<TrackLocalStaticRTP>,
    pacer: Arc<Mutex<VideoPacer>>,
    queued: Arc<tokio::sync::Notify>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    bitrate: watch::Receiver<u64>,
    mut state: watch::Receiver<TransportState>,
    keyframes: mpsc::Sender<()>,
) {
    let mut due = Vec::new();
    loop {
        let now = Instant::now();
        let (next, lost) = {
            let Ok(mut p) = pacer.lock() else { return };
            p.set_estimate(*bitrate.borrow());
            while let Some(packet) = p.poll(now) {
                due.push(packet);
            }
            dropped.store(p.dropped_total(), std::sync::atomic::Ordering::Relaxed);
            (p.poll_timeout(now), p.take_dropped())
        };
        if lost > 0 {
            // One pending request stands for any number.
            let _ = keyframes.try_send(());
        }
        for packet in due.drain(..) {
            if let Err(e) = track.write_rtp(packet).await {
                tracing::debug!(error = %e, "video packet not sent");
            }
        }
        if *state.borrow() == TransportState::Closed {
            return;
        }
        match next {
            Some(at) if at <= Instant::now() => continue,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = queued.notified() => {}
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
            None => {
                tokio::select! {
                    _ = queued.notified() => {}
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
        }
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

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

/// The codecs (Opus, VP8) and the interceptor chain: NACK, RTCP reports, transport-wide
/// congestion control with GCC, and keyframe requests delivered to us. Returns the estimate.
fn media_setup(
    max_bitrate: u64,
) -> Result<(MediaEngine, Registry, watch::Receiver<u64>), TransportError> {
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .map_err(rtc_err)?;
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8_codec(),
                payload_type: 96,
            },
            RtpCodecKind::Video,
        )
        .map_err(rtc_err)?;
    for (typ, parameter) in [("nack", ""), ("nack", "pli"), ("ccm", "fir")] {
        media.register_feedback(feedback(typ, parameter), RtpCodecKind::Video);
    }
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        // Audio is numbered too, so the estimate accounts for every byte we send.
        media.register_feedback(feedback("transport-cc", ""), kind);
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                },
                kind,
                None,
            )
            .map_err(rtc_err)?;
    }
    let max = max_bitrate.max(MIN_BITRATE) as f64;
    let (estimator, bitrate) =
        PublishedEstimator::new(Gcc::new(INITIAL_BITRATE as f64, MIN_BITRATE as f64, max));
    // What configure_nack sets up, but each missing packet is asked for a few times only. Its
    // default asks every 100 ms for as long as the packet stays in the 512-packet log. After
    // a burst of loss on a rate-limited link (tests/netsim_video.rs) the sender then resent
    // about 1,200 packets a second on a clean link, none of which the receiver's transport-wide
    // feedback ever counted as arrived: the estimate saw 94 % loss and stayed at its floor.
    let registry = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().build())
        .with(
            Slot::NackGenerator,
            NackGeneratorBuilder::new()
                .with_max_nacks_per_packet(NACKS_PER_PACKET)
                .build(),
        );
    let registry = configure_rtcp_reports(registry)
        // What configure_congestion_control sets up, minus its pacer: the pacer is one FIFO
        // at the estimated rate, which would queue audio behind a keyframe's burst. Video is
        // paced before the track instead (`pace_video`).
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(estimator).build(),
        )
        .with(Slot::TwccSender, TwccSenderBuilder::new().build())
        .with(
            Slot::TwccReceiver,
            TwccReceiverBuilder::new()
                .with_interval(TWCC_FEEDBACK_INTERVAL)
                .build(),
        )
        // Application-most: everything else has seen the RTCP before it stops here.
        .with(Slot::from(14_000), KeyframeRequests::new());
    Ok((media, registry, bitrate))
}

impl std::fmt::Debug for MediaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaTransport")
            .field("ssrc", &self.ssrc)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
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

fn random_ssrc() -> Result<u32, TransportError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 4];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| rtc_err("no randomness"))?;
    Ok(u32::from_be_bytes(b))
}

/// Forwards the control channel's events: open state, and sealed messages of sane size.
async fn pump_control(
    channel: Arc<dyn DataChannel>,
    open: watch::Sender<bool>,
    messages: mpsc::Sender<Bytes>,
) {
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                let _ = open.send(true);
            }
            DataChannelEvent::OnMessage(msg) => {
                if msg.is_string || msg.data.len() > MAX_CONTROL_MESSAGE {
                    tracing::debug!(len = msg.data.len(), "control: dropped malformed message");
                    continue;
                }
                // A peer flooding control messages loses them rather than growing a queue.
                if messages.try_send(msg.data.freeze()).is_err() && messages.is_closed() {
                    break;
                }
            }
            DataChannelEvent::OnClose => {
                let _ = open.send(false);
                break;
            }
            _ => {}
        }
    }
    let _ = open.send(false);
}

impl MediaTransport {
    /// A peer connection with one outgoing audio track and the control channel.
    pub async fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| TransportError::WebRtc("no async runtime".into()))?;
        let (media, registry, bitrate) = media_setup(config.max_bitrate)?;
        let (ice_servers, turn_tcp) = turn_tcp::bridge_tcp_turn(&config.ice_servers)?;
        let ice_servers = rtc_ice_servers(&ice_servers);
        // Our own certificate, so its fingerprint is known before any SDP exists: the
        // handshake signs it (docs/handshake.md, "Binding the transport").
        let provider = rtc::crypto::default_provider().map_err(rtc_err)?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["sotto".to_owned()]).map_err(rtc_err)?,
        )
        .map_err(rtc_err)?;
        let dtls_fingerprint = certificate
            .get_fingerprints(provider.crypto())
            .map_err(rtc_err)?
            .into_iter()
            .find(|f| f.algorithm.eq_ignore_ascii_case("sha-256"))
            .ok_or_else(|| rtc_err("no sha-256 certificate fingerprint"))
            .and_then(|f| {
                DtlsFingerprint::parse(&format!("{} {}", f.algorithm, f.value)).map_err(rtc_err)
            })?;
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            // Relay-only needs a TURN server; without one yet (the signaling server may offer
            // one), the policy comes with `set_ice_servers`, before gathering.
            .with_ice_transport_policy(ice_policy(
                config.relay_only && has_turn(&config.ice_servers),
            ))
            .with_certificates(vec![certificate])
            .build();
        let (gathered_tx, gathered) = watch::channel(0);
        let (found_tx, found) = watch::channel(0);
        let (candidates_tx, local_candidates) = mpsc::channel(LOCAL_CANDIDATE_QUEUE);
        let (state_tx, state) = watch::channel(TransportState::Connecting);
        let (frames_tx, frames) = mpsc::channel(512);
        let (video_frames_tx, video_frames) = mpsc::channel(VIDEO_QUEUE);
        let remote_video = Arc::new(Mutex::new(RemoteVideo::default()));
        let (audio_clock_tx, audio_clock) = watch::channel(None);
        let (video_clock_tx, video_clock) = watch::channel(None);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_setting_engine(ice_pacing())
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                gathered: gathered_tx,
                found: found_tx,
                candidates: candidates_tx,
                relay_only: config.relay_only,
                state: state_tx,
                frames: frames_tx,
                video_frames: video_frames_tx,
                remote_video: Arc::clone(&remote_video),
                runtime: runtime.clone(),
                audio_clock: audio_clock_tx,
                video_clock: video_clock_tx,
            }))
            .with_runtime(runtime.clone())
            .with_udp_addrs(config.udp_addrs.clone())
            .build()
            .await
            .map_err(rtc_err)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc = random_ssrc()?;
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                // Track ids unique per side: webrtc-rs routes RTCP by track id, and a peer's
                // track with our id would take the feedback about ours (its PLIs, for video).
                MediaStreamTrack::new(
                    "sotto".to_owned(),
                    format!("sotto-audio-{ssrc:08x}"),
                    format!("sotto-audio-{ssrc:08x}"),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: opus_codec(),
                        ..Default::default()
                    }],
                ),
            )
            .map_err(rtc_err)?,
        );
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(rtc_err)?;

        // The video m-line, after the audio one.
        let video_ssrc = random_ssrc()?;
        let (keyframe_tx, keyframe_requests) = mpsc::channel(4);
        let video = match config.video {
            VideoDirection::SendReceive => {
                let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "sotto".to_owned(),
                    format!("sotto-video-{video_ssrc:08x}"),
                    format!("sotto-video-{video_ssrc:08x}"),
                    RtpCodecKind::Video,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(video_ssrc),
                            ..Default::default()
                        },
                        codec: vp8_codec(),
                        ..Default::default()
                    }],
                )));
                let sender = pc
                    .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                    .await
                    .map_err(rtc_err)?;
                let pacer = Arc::new(Mutex::new(VideoPacer::new(0)));
                let queued = Arc::new(tokio::sync::Notify::new());
                let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
                runtime.spawn(Box::pin(pace_video(
                    Arc::clone(&track),
                    Arc::clone(&pacer),
                    Arc::clone(&queued),
                    Arc::clone(&dropped),
                    bitrate.clone(),
                    state.clone(),
                    keyframe_tx.clone(),
                )));
                runtime.spawn(Box::pin(pump_keyframe_requests(
                    Arc::clone(&track),
                    state.clone(),
                    keyframe_tx,
                )));
                let random = random_ssrc()?;
                Some(VideoSend {
                    pacer,
                    queued,
                    dropped,
                    sender,
                    payload_type: OnceLock::new(),
                    epoch: OnceLock::new(),
                    timestamp_base: random,
                    state: tokio::sync::Mutex::new(VideoSendState {
                        packetizer: Vp8Packetizer::new(random as u16, MAX_VIDEO_RTP_PAYLOAD),
                        seq: (random >> 16) as u16,
                    }),
                })
            }
            VideoDirection::ReceiveOnly => {
                pc.add_transceiver_from_kind(
                    RtpCodecKind::Video,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(rtc_err)?;
                None
            }
        };

        // Negotiated out of band (both sides create stream 0), so no in-band announcement
        // and no `on_data_channel` race.
        let control = pc
            .create_data_channel(
                CONTROL_LABEL,
                Some(RTCDataChannelInit {
                    negotiated: Some(0),
                    ..Default::default()
                }),
            )
            .await
            .map_err(rtc_err)?;
        let (open_tx, control_open) = watch::channel(false);
        let (controls_tx, controls) = mpsc::channel(64);
        runtime.spawn(Box::pin(pump_control(
            Arc::clone(&control),
            open_tx,
            controls_tx,
        )));

        Ok(MediaTransport {
            pc,
            track,
            sender,
            control,
            control_open,
            ssrc,
            payload_type: OnceLock::new(),
            gathered,
            found,
            local_candidates: Some(local_candidates),
            state,
            frames: Some(frames),
            controls: Some(controls),
            gather_timeout: config.gather_timeout,
            relay_only: config.relay_only,
            dtls_fingerprint,
            video,
            video_ssrc,
            remote_video,
            video_frames: Some(video_frames),
            keyframe_requests: Some(keyframe_requests),
            bitrate,
            runtime,
            audio_clock,
            video_clock,
            turn_tcp: Mutex::new(turn_tcp),
        })
    }

    /// Replaces the STUN/TURN servers, before gathering starts (the offer or answer); with
    /// relay-only set, they must include a TURN server.
    pub async fn set_ice_servers(&self, servers: &[IceServer]) -> Result<(), TransportError> {
        let (servers, bridges) = turn_tcp::bridge_tcp_turn(servers)?;
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(rtc_ice_servers(&servers))
            .with_ice_transport_policy(ice_policy(self.relay_only))
            .build();
        self.pc.set_configuration(config).await.map_err(rtc_err)?;
        if let Ok(mut held) = self.turn_tcp.lock() {
            *held = bridges;
        }
        Ok(())
    }

    /// The SHA-256 fingerprint of our DTLS certificate, as our SDP carries it.
    pub fn dtls_fingerprint(&self) -> &DtlsFingerprint {
        &self.dtls_fingerprint
    }

    /// Our SDP once the gathering that follows gathering number `before` completes, or once
    /// `limit` passed.
    async fn local_sdp(&self, before: u64, limit: Duration) -> Result<String, TransportError> {
        let mut gathered = self.gathered.clone();
        let wait = gathered.wait_for(|done| *done > before);
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(TransportError::Closed),
            // A STUN or TURN server that does not answer (a firewall that drops UDP) must not
            // stop the call: it goes ahead with the candidates gathered so far.
            Err(_) => tracing::warn!(
                "ICE gathering did not finish within {limit:?}; going on with the candidates found"
            ),
        }
        self.describe_local().await
    }

    /// Our SDP once the first candidate after `found` candidates came (or gathering number
    /// `gathered` completed), at most [`HOST_CANDIDATE_WAIT`] from now: the trickled
    /// description, with the host candidates in it.
    async fn early_local_sdp(&self, found: u64, gathered: u64) -> Result<String, TransportError> {
        let mut found_watch = self.found.clone();
        let mut gathered_watch = self.gathered.clone();
        let wait = async {
            tokio::select! {
                _ = found_watch.wait_for(|n| *n > found) => {}
                _ = gathered_watch.wait_for(|n| *n > gathered) => {}
            }
        };
        // Going on without any is fine: they follow as candidates.
        let _ = tokio::time::timeout(HOST_CANDIDATE_WAIT, wait).await;
        // The candidates of one gathering step come one after the other: let the rest of this
        // one in.
        tokio::task::yield_now().await;
        self.describe_local().await
    }

    /// Our local description as it is now, with the candidates gathered so far.
    async fn describe_local(&self) -> Result<String, TransportError> {
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| rtc_err("no local description"))?;
        // A relay candidate's related address is the machine's own: relay-only must not send
        // it (connectivity never needs it).
        let sdp = if self.relay_only {
            scrub_related_addresses(&desc.sdp)
        } else {
            desc.sdp
        };
        // Every line that can carry an address: what the peer learns of ours.
        let addresses: Vec<&str> = sdp
            .lines()
            .filter(|l| {
                l.starts_with("a=candidate") || l.starts_with("c=") || l.starts_with("a=rtcp:")
            })
            .collect();
        tracing::debug!(?addresses, "local description ready");
        Ok(sdp)
    }

    /// Takes the stream of local candidates as gathering finds them, and the end of each
    /// gathering (trickle ICE); `None` after the first call. Bounded: what does not fit is
    /// dropped (it is still in every later description).
    pub fn take_local_candidates(&mut self) -> Option<mpsc::Receiver<LocalCandidate>> {
        self.local_candidates.take()
    }

    /// Creates the offer and returns its SDP at once, with the candidates found within
    /// [`HOST_CANDIDATE_WAIT`] (trickle ICE: the rest come out of
    /// [`Self::take_local_candidates`]).
    pub async fn create_offer_trickle(&self) -> Result<String, TransportError> {
        let (found, gathered) = (*self.found.borrow(), *self.gathered.borrow());
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        self.early_local_sdp(found, gathered).await
    }

    /// Takes the peer's offer SDP and returns the answer SDP at once, as
    /// [`Self::create_offer_trickle`] does.
    pub async fn accept_offer_trickle(&self, offer: &str) -> Result<String, TransportError> {
        let desc = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        let (found, gathered) = (*self.found.borrow(), *self.gathered.borrow());
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        self.early_local_sdp(found, gathered).await
    }

    /// A new offer with the same ICE credentials and every candidate gathered so far, without
    /// waiting: for a peer that does not trickle, once gathering found more than the first
    /// offer held.
    pub async fn create_offer_again(&self) -> Result<String, TransportError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        self.describe_local().await
    }

    /// Adds one of the peer's candidates (a `candidate:...` string, RFC 8839 without the
    /// `a=`). Needs the peer's description first; the caller checks which ICE generation
    /// (ufrag) it belongs to.
    pub async fn add_remote_candidate(&self, candidate: &str) -> Result<(), TransportError> {
        let init = rtc::peer_connection::transport::RTCIceCandidateInit {
            candidate: candidate.to_owned(),
            ..Default::default()
        };
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))
    }

    /// Creates the offer; returns its SDP for the peer once ICE candidates are gathered.
    pub async fn create_offer(&self) -> Result<String, TransportError> {
        let before = *self.gathered.borrow();
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        self.local_sdp(before, self.gather_timeout).await
    }

    /// Restarts ICE (RFC 8445 section 9): an offer with new ICE credentials, applied at once,
    /// with the candidates kept from before plus those gathered within
    /// [`RESTART_GATHER_WAIT`]. The DTLS association, its fingerprint, the tracks and the SRTP
    /// keys stay; the path comes back once the peer's answer is accepted
    /// ([`Self::accept_answer`]) and the new checks succeed. Only the offerer restarts; an
    /// offer made before the last one was answered replaces it.
    pub async fn create_restart_offer(&self) -> Result<RestartOffer, TransportError> {
        let before = *self.gathered.borrow();
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
        let offer = self.pc.create_offer(Some(options)).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        let sdp = self
            .local_sdp(before, RESTART_GATHER_WAIT.min(self.gather_timeout))
            .await?;
        let gathered = *self.gathered.borrow() > before;
        Ok(RestartOffer { sdp, gathered })
    }

    /// Takes the peer's offer SDP; returns the answer SDP for the peer. A later offer (the
    /// peer restarting ICE) is answered the same way, its gathering bounded by
    /// [`RESTART_GATHER_WAIT`].
    pub async fn accept_offer(&self, offer: &str) -> Result<String, TransportError> {
        let desc = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        let again = self.pc.current_remote_description().await.is_some();
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        let before = *self.gathered.borrow();
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        let limit = if again {
            RESTART_GATHER_WAIT.min(self.gather_timeout)
        } else {
            self.gather_timeout
        };
        self.local_sdp(before, limit).await
    }

    /// Takes the peer's answer SDP to our offer.
    pub async fn accept_answer(&self, answer: &str) -> Result<(), TransportError> {
        set_remote_answer(&self.pc, answer).await
    }

    /// Waits until media can flow.
    pub async fn connected(&self, timeout: Duration) -> Result<(), TransportError> {
        wait_connected(&self.state, timeout).await
    }

    /// The connection state now.
    pub fn state(&self) -> TransportState {
        *self.state.borrow()
    }

    /// A watch on the connection state, for select loops.
    pub fn state_watch(&self) -> watch::Receiver<TransportState> {
        self.state.clone()
    }

    /// A watch on whether the control channel is open.
    pub fn control_open_watch(&self) -> watch::Receiver<bool> {
        self.control_open.clone()
    }

    /// Sends one sealed frame lasting `duration` of audio.
    pub async fn send(
        &self,
        frame: &SealedFrame,
        duration: Duration,
    ) -> Result<(), TransportError> {
        let pt = match self.payload_type.get() {
            Some(pt) => *pt,
            None => {
                let params = self.sender.get_parameters().await.map_err(rtc_err)?;
                let pt = params
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
                    .ok_or_else(|| rtc_err("no negotiated codec"))?;
                *self.payload_type.get_or_init(|| pt)
            }
        };
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(&Sample {
                data: frame.0.clone(),
                duration,
                ..Sample::new(Instant::now())
            })
            .await
            .map_err(rtc_err)
    }

    /// Sends one sealed video frame (see [`seal_video`]) captured at `capture`: packetized
    /// with a VP8 payload descriptor, RTP timestamp at 90 kHz from the capture time (counted
    /// from the first frame's), and queued in the video pacer, which lets the packets out at
    /// [`PACING_FACTOR`] times the bandwidth estimate (audio does not wait behind it). An
    /// empty frame sends nothing.
    pub async fn send_video(
        &self,
        frame: &SealedFrame,
        capture: Instant,
    ) -> Result<(), TransportError> {
        let video = self
            .video
            .as_ref()
            .ok_or(TransportError::VideoReceiveOnly)?;
        let pt = match video.payload_type.get() {
            Some(pt) => *pt,
            None => {
                let params = video.sender.get_parameters().await.map_err(rtc_err)?;
                let pt = params
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
                    .ok_or_else(|| rtc_err("no negotiated video codec"))?;
                *video.payload_type.get_or_init(|| pt)
            }
        };
        let epoch = *video.epoch.get_or_init(|| capture);
        let ticks = capture.saturating_duration_since(epoch).as_micros() * 9 / 100;
        let timestamp = video.timestamp_base.wrapping_add(ticks as u32);
        let mut state = video.state.lock().await;
        let payloads = state.packetizer.packetize(frame.as_bytes());
        let count = payloads.len();
        let mut packets = Vec::with_capacity(count);
        for (i, payload) in payloads.into_iter().enumerate() {
            let seq = state.seq;
            state.seq = seq.wrapping_add(1);
            packets.push(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i + 1 == count,
                    payload_type: pt,
                    sequence_number: seq,
                    timestamp,
                    ssrc: self.video_ssrc,
                    ..Default::default()
                },
                payload,
            });
        }
        // Numbered before queueing: a frame the pacer drops leaves a gap the receiver sees.
        let keyframe = frame.as_bytes().first().is_some_and(|b| b & 1 == 0);
        video
            .pacer
            .lock()
            .map_err(|_| rtc_err("video pacer poisoned"))?
            .push_frame(packets, keyframe);
        video.queued.notify_one();
        Ok(())
    }

    /// Video frames the pacer dropped so far, because the link could not carry them in time
    /// (see [`VideoPacer`]). Each drop also asks our encoder for a keyframe, through
    /// [`Self::take_keyframe_requests`].
    pub fn dropped_video_frames(&self) -> u64 {
        self.video
            .as_ref()
            .map_or(0, |v| v.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Asks the peer for a keyframe (a PLI for its video SSRC). Returns false, and sends
    /// nothing, while the peer's video track does not exist yet.
    pub fn request_keyframe(&self) -> bool {
        let (track, ssrc) = match self.remote_video.lock() {
            Ok(r) => match (&r.track, r.ssrc) {
                (Some(track), Some(ssrc)) => (Arc::clone(track), ssrc),
                _ => return false,
            },
            Err(_) => return false,
        };
        let pli = PictureLossIndication {
            sender_ssrc: self.video_ssrc,
            media_ssrc: ssrc,
        };
        self.runtime.spawn(Box::pin(async move {
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "PLI not sent");
            }
        }));
        true
    }

    /// Takes the stream of whole received video frames (still sealed); `None` after the first
    /// call. Bounded: if it is not drained, frames are dropped and the next one delivered has
    /// `after_loss` set.
    pub fn take_video_frames(&mut self) -> Option<mpsc::Receiver<ReceivedVideoFrame>> {
        self.video_frames.take()
    }

    /// The peer's audio and video sender clocks, from its latest RTCP sender reports (`None`
    /// until one arrived): what lines its audio and video up (lip sync).
    pub fn peer_clocks(
        &self,
    ) -> (
        watch::Receiver<Option<SenderClock>>,
        watch::Receiver<Option<SenderClock>>,
    ) {
        (self.audio_clock.clone(), self.video_clock.clone())
    }

    /// Takes the stream of the peer's keyframe requests (PLI or FIR); `None` after the first
    /// call, and nothing ever arrives on a receive-only transport.
    pub fn take_keyframe_requests(&mut self) -> Option<mpsc::Receiver<()>> {
        self.keyframe_requests.take()
    }

    /// The sending-side bandwidth estimate in bits/s (GCC over transport-wide congestion
    /// control feedback, for audio and video together), between [`MIN_BITRATE`] and
    /// [`TransportConfig::max_bitrate`].
    pub fn bitrate_watch(&self) -> watch::Receiver<u64> {
        self.bitrate.clone()
    }

    /// Sends an Opus payload **without** SFrame. Only the latency benchmark (inside this
    /// crate) uses this, to measure what E2EE adds against the same pipeline without it; calls
    /// never do, and applications cannot (see the `insecure-test-hooks` feature).
    pub(crate) async fn send_unprotected_for_latency_baseline(
        &self,
        payload: &[u8],
        duration: Duration,
    ) -> Result<(), TransportError> {
        self.send(&SealedFrame(Bytes::copy_from_slice(payload)), duration)
            .await
    }

    /// Sends a VP8 frame **without** SFrame, captured at `capture`. Only the video latency
    /// benchmark (inside this crate) uses this, to measure what E2EE adds against the same
    /// pipeline without it; calls never do, and applications cannot.
    pub(crate) async fn send_video_unprotected_for_latency_baseline(
        &self,
        vp8: &[u8],
        capture: Instant,
    ) -> Result<(), TransportError> {
        self.send_video(&SealedFrame(Bytes::copy_from_slice(vp8)), capture)
            .await
    }

    /// Sends a payload **without** SFrame, as a sender without encryption would, so tests can
    /// show the receiver refuses it. Exists only with the non-default `insecure-test-hooks`
    /// feature; the default build has no way to put plaintext media on the wire.
    #[cfg(feature = "insecure-test-hooks")]
    pub async fn insecure_send_plaintext_for_tests(
        &self,
        payload: &[u8],
        duration: Duration,
    ) -> Result<(), TransportError> {
        self.send_unprotected_for_latency_baseline(payload, duration)
            .await
    }

    /// Sends one sealed control message.
    pub async fn send_control(&self, frame: &SealedFrame) -> Result<(), TransportError> {
        if !*self.control_open.borrow() {
            return Err(TransportError::ControlNotOpen);
        }
        self.control
            .send(BytesMut::from(frame.as_bytes()))
            .await
            .map_err(rtc_err)
    }

    /// Takes the stream of received (still sealed) media frames; `None` after the first call.
    /// It ends once the connection is gone.
    pub fn take_frames(&mut self) -> Option<mpsc::Receiver<ReceivedFrame>> {
        self.frames.take()
    }

    /// Takes the stream of received (still sealed) control messages; `None` after the first
    /// call.
    pub fn take_control(&mut self) -> Option<mpsc::Receiver<Bytes>> {
        self.controls.take()
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.pc.close().await.map_err(rtc_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn related_addresses_are_scrubbed_from_candidates_only() {
        let sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\n\
            a=candidate:1 1 udp 16777215 203.0.113.10 55790 typ relay raddr 10.1.0.2 rport 51635\r\n\
            a=candidate:2 1 udp 1694498815 203.0.113.11 4000 typ srflx raddr 10.1.0.2 rport 4000 generation 0\r\n\
            a=ice-ufrag:raddr\r\n";
        let out = scrub_related_addresses(sdp);
        assert!(!out.contains("10.1.0.2"), "{out}");
        assert!(out.contains("typ relay raddr 0.0.0.0 rport 0\r\n"), "{out}");
        assert!(
            out.contains("typ srflx raddr 0.0.0.0 rport 0 generation 0\r\n"),
            "{out}"
        );
        // Everything else as it was, line endings included.
        assert!(out.starts_with("v=0\r\nc=IN IP4 0.0.0.0\r\n"));
        assert!(out.ends_with("a=ice-ufrag:raddr\r\n"));
        assert_eq!(out.lines().count(), sdp.lines().count());
        assert!(has_turn(&[IceServer {
            urls: vec!["stun:a".into(), "turns:b".into()],
            ..IceServer::default()
        }]));
        assert!(!has_turn(&[IceServer {
            urls: vec!["stun:a".into()],
            ..IceServer::default()
        }]));
    }
}
