//! The video track's RTP side, Sans-I/O: VP8 packetization (RFC 7741 payload descriptor) of
//! sealed frames, reassembly of whole frames from untrusted packets, and the two pieces of the
//! interceptor chain the transport adds (keyframe requests to the application, the bitrate
//! estimate out of GCC).
//!
//! The payload of every packet is a piece of a *sealed* frame: the descriptor is written and
//! read here, and nothing here looks inside the frame.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::interceptor::{
    Attribute, BandwidthEstimator, EstimatorStats, Interceptor, Packet, PacketReport, StreamInfo,
    TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use thiserror::Error;
use tokio::sync::watch;

/// Whether this side sends video. The video m-line is negotiated either way, so a peer that
/// sends video can always be received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VideoDirection {
    /// A VP8 track each way (`sendrecv`).
    SendReceive,
    /// Only the peer's video is received (`recvonly`).
    #[default]
    ReceiveOnly,
}

/// A whole video frame reassembled from RTP, still sealed.
#[derive(Debug, Clone)]
pub struct ReceivedVideoFrame {
    /// RTP timestamp (90 kHz), shared by all packets of the frame.
    pub timestamp: u32,
    /// The sealed frame (the VP8 payload descriptors are stripped).
    pub payload: Bytes,
    /// When its last packet arrived.
    pub arrival: Instant,
    /// At least one frame was lost (or dropped) between the previous frame delivered and this
    /// one, so a decoder may need a keyframe.
    pub after_loss: bool,
}

/// Largest video frame reassembled, in bytes; bigger frames are dropped as lost.
pub const MAX_VIDEO_FRAME: usize = 2 << 20;
/// Packets buffered at most while waiting for a missing one.
const MAX_BUFFERED_PACKETS: usize = 2048;
/// How long a hole in the sequence numbers may wait for a late (or retransmitted) packet
/// before the frames around it are given up.
pub const VIDEO_REORDER_WAIT: Duration = Duration::from_millis(150);
/// Largest RTP payload the packetizer makes: below webrtc-rs's 1200-byte packets with room
/// for the RTP header, its extensions (mid, transport-cc) and the SRTP tag.
pub const MAX_VIDEO_RTP_PAYLOAD: usize = 1100;

/// A malformed VP8 payload descriptor (RFC 7741, section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// The packet ends inside the descriptor.
    #[error("VP8 payload descriptor truncated")]
    Truncated,
    /// No frame bytes follow the descriptor.
    #[error("VP8 packet without payload")]
    Empty,
}

/// What the packet's VP8 payload descriptor says, and where the frame bytes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S bit with partition index 0: the first packet of a frame.
    pub frame_start: bool,
    /// Descriptor length in bytes.
    pub len: usize,
}

/// Parses the VP8 payload descriptor at the start of an RTP payload.
pub fn parse_vp8_descriptor(payload: &[u8]) -> Result<Vp8Descriptor, DescriptorError> {
    let first = *payload.first().ok_or(DescriptorError::Truncated)?;
    let mut len = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(1).ok_or(DescriptorError::Truncated)?;
        len = 2;
        if ext & 0x80 != 0 {
            // Picture ID: 7 bits, or 15 with the M bit.
            let pid = *payload.get(len).ok_or(DescriptorError::Truncated)?;
            len += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            len += 1; // TID/Y/KEYIDX
        }
    }
    match payload.len() {
        n if n < len => Err(DescriptorError::Truncated),
        n if n == len => Err(DescriptorError::Empty),
        _ => Ok(Vp8Descriptor {
            frame_start: first & 0x10 != 0 && first & 0x07 == 0,
            len,
        }),
    }
}

/// Splits sealed frames into RTP payloads with a VP8 payload descriptor carrying a 15-bit
/// picture ID (which lets receivers such as libwebrtc see a lost frame).
#[derive(Debug)]
pub struct Vp8Packetizer {
    picture_id: u16,
    max_payload: usize,
}

impl Vp8Packetizer {
    /// A packetizer making payloads of at most `max_payload` bytes (at least 5), starting at
    /// picture ID `picture_id`.
    pub fn new(picture_id: u16, max_payload: usize) -> Self {
        Vp8Packetizer {
            picture_id: picture_id & 0x7fff,
            max_payload: max_payload.max(5),
        }
    }

    /// The payloads of one frame, in order; fragments are of near-equal size. An empty frame
    /// gives no payloads.
    pub fn packetize(&mut self, frame: &[u8]) -> Vec<Bytes> {
        const DESCRIPTOR: usize = 4;
        if frame.is_empty() {
            return Vec::new();
        }
        let room = self.max_payload - DESCRIPTOR;
        let count = frame.len().div_ceil(room);
        let size = frame.len().div_ceil(count);
        let [pid_hi, pid_lo] = self.picture_id.to_be_bytes();
        let out = frame
            .chunks(size)
            .enumerate()
            .map(|(i, chunk)| {
                let mut p = BytesMut::with_capacity(DESCRIPTOR + chunk.len());
                // X, S on the first packet (partition 0); I; M with the 15-bit picture ID.
                p.put_u8(if i == 0 { 0x90 } else { 0x80 });
                p.put_u8(0x80);
                p.put_u8(0x80 | pid_hi);
                p.put_u8(pid_lo);
                p.put_slice(chunk);
                p.freeze()
            })
            .collect();
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        out
    }
}

struct Fragment {
    timestamp: u32,
    /// A padding-only packet: takes a sequence number, carries nothing.
    padding: bool,
    start: bool,
    marker: bool,
    data: Bytes,
    arrival: Instant,
}

/// What the assembler has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Frames delivered whole.
    pub frames: u64,
    /// Packets whose descriptor did not parse.
    pub malformed: u64,
    /// Packets discarded: duplicates, too late, or of frames given up.
    pub discarded: u64,
    /// Times frames were given up (a hole that was not filled in time, or a broken frame).
    pub losses: u64,
}

/// Rebuilds whole frames from the packets of one video stream (Sans-I/O: time comes in).
///
/// Frames come out in RTP sequence order and only whole: from a packet with the S bit
/// (partition 0) through the packet with the marker bit, with every sequence number in
/// between and one timestamp. A hole waits [`VIDEO_REORDER_WAIT`] for a late or retransmitted
/// packet, then the frames it touches are dropped and the next delivered frame is marked
/// `after_loss`. Memory is bounded (at most 2048 packets buffered, frames of at most
/// [`MAX_VIDEO_FRAME`] bytes).
#[derive(Default)]
pub struct FrameAssembler {
    fragments: BTreeMap<u64, Fragment>,
    /// Highest extended sequence number seen.
    highest: Option<u64>,
    /// The first sequence number not yet delivered or given up.
    next: Option<u64>,
    /// Packets below this were delivered or given up; later copies are discarded.
    floor: u64,
    /// A sequence number that is missing while later ones are buffered.
    hole: Option<u64>,
    lost: bool,
    ready: VecDeque<ReceivedVideoFrame>,
    stats: AssemblerStats,
}

impl std::fmt::Debug for FrameAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameAssembler")
            .field("buffered", &self.fragments.len())
            .field("next", &self.next)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FrameAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start high, so sequence numbers before the first one stay representable.
            let ext = (1u64 << 32) + u64::from(seq);
            self.highest = Some(ext);
            return ext;
        };
        let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
        let ext = highest.saturating_add_signed(delta);
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }

    /// Takes one RTP packet of the stream (its payload still carrying the VP8 descriptor).
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &Bytes, now: Instant) {
        let descriptor = match parse_vp8_descriptor(payload) {
            Ok(d) => d,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let ext = self.extend(seq);
        if ext < self.floor || self.fragments.contains_key(&ext) {
            self.stats.discarded += 1;
            return;
        }
        self.fragments.insert(
            ext,
            Fragment {
                timestamp,
                padding: false,
                start: descriptor.frame_start,
                marker,
                data: payload.slice(descriptor.len..),
                arrival: now,
            },
        );
        if self.next.is_none() && descriptor.frame_start {
            // The first frame start: what came before it cannot be completed.
            let before = self.fragments.len();
            self.fragments = self.fragments.split_off(&ext);
            let dropped = before - self.fragments.len();
            if dropped > 0 {
                self.stats.discarded += dropped as u64;
                self.lost = true;
            }
            self.set_next(ext);
        }
        while self.fragments.len() > MAX_BUFFERED_PACKETS {
            self.give_up();
        }
        self.drain();
        self.expire(now);
    }

    /// Takes a padding-only packet of the stream (senders without RTX pad on the media
    /// SSRC, between frames): it fills its sequence number so no hole is seen there.
    pub fn push_padding(&mut self, seq: u16, timestamp: u32, now: Instant) {
        let ext = self.extend(seq);
        if self.next.is_none() || ext < self.floor || self.fragments.contains_key(&ext) {
            return;
        }
        self.fragments.insert(
            ext,
            Fragment {
                timestamp,
                padding: true,
                start: false,
                marker: false,
                data: Bytes::new(),
                arrival: now,
            },
        );
        while self.fragments.len() > MAX_BUFFERED_PACKETS {
            self.give_up();
        }
        self.drain();
        self.expire(now);
    }

    /// Gives up a hole that waited long enough; call when [`Self::deadline`] passes.
    pub fn expire(&mut self, now: Instant) {
        while let Some(deadline) = self.deadline() {
            if now < deadline {
                break;
            }
            self.give_up();
            self.drain();
        }
    }

    /// When the current hole (if any) will be given up.
    pub fn deadline(&self) -> Option<Instant> {
        let hole = self.hole?;
        let (_, after) = self.fragments.range(hole..).next()?;
        Some(after.arrival + VIDEO_REORDER_WAIT)
    }

    /// The next complete frame, if any.
    pub fn pop(&mut self) -> Option<ReceivedVideoFrame> {
        self.ready.pop_front()
    }

    /// Drops everything before the next frame start after `next`.
    fn give_up(&mut self) {
        self.stats.losses += 1;
        self.lost = true;
        self.hole = None;
        let from = self.next.map_or(0, |n| n + 1);
        let restart = self
            .fragments
            .range(from..)
            .find(|(_, f)| f.start)
            .map(|(k, _)| *k);
        match restart {
            Some(k) => {
                let keep = self.fragments.split_off(&k);
                self.stats.discarded += self.fragments.len() as u64;
                self.fragments = keep;
                self.set_next(k);
            }
            None => {
                self.stats.discarded += self.fragments.len() as u64;
                self.fragments.clear();
                // Wait for the next frame start.
                self.next = None;
                self.floor = self.highest.map_or(0, |h| h + 1);
            }
        }
    }

    /// Drops the fragments `from..to`, which cannot form a frame.
    fn drop_range(&mut self, from: u64, to: u64) {
        let tail = self.fragments.split_off(&to);
        let dropped = self.fragments.split_off(&from);
        self.fragments.extend(tail);
        self.stats.discarded += dropped.len() as u64;
        self.stats.losses += 1;
        self.lost = true;
        self.set_next(to);
    }

    fn set_next(&mut self, next: u64) {
        self.next = Some(next);
        self.floor = next;
    }

    /// Delivers every frame now complete at the head.
    fn drain(&mut self) {
        self.hole = None;
        while let Some(next) = self.next {
            let Some(first) = self.fragments.get(&next) else {
                if self.fragments.range(next..).next().is_some() {
                    self.hole = Some(next);
                }
                return;
            };
            if first.padding {
                self.fragments.remove(&next);
                self.set_next(next + 1);
                continue;
            }
            if !first.start {
                // A continuation whose frame start was given up.
                self.drop_range(next, next + 1);
                continue;
            }
            let timestamp = first.timestamp;
            let mut size = 0usize;
            let mut end = next;
            let complete = loop {
                let Some(f) = self.fragments.get(&end) else {
                    if self.fragments.range(end..).next().is_some() {
                        self.hole = Some(end);
                    }
                    break None;
                };
                size += f.data.len();
                if f.timestamp != timestamp
                    || f.padding
                    || (end != next && f.start)
                    || size > MAX_VIDEO_FRAME
                {
                    break Some(false);
                }
                if f.marker {
                    break Some(true);
                }
                end += 1;
            };
            match complete {
                None => return,
                // The frame start of the broken frame goes, so the next start is found.
                Some(false) => {
                    let to = if end == next { next + 1 } else { end };
                    self.drop_range(next, to);
                }
                Some(true) => {
                    let mut tail = self.fragments.split_off(&(end + 1));
                    std::mem::swap(&mut tail, &mut self.fragments);
                    let mut payload = BytesMut::with_capacity(size);
                    let mut arrival = None;
                    for f in tail.values() {
                        payload.put_slice(&f.data);
                        arrival = Some(f.arrival);
                    }
                    if let Some(arrival) = arrival {
                        self.ready.push_back(ReceivedVideoFrame {
                            timestamp,
                            payload: payload.freeze(),
                            arrival,
                            after_loss: std::mem::take(&mut self.lost),
                        });
                        self.stats.frames += 1;
                    }
                    self.set_next(end + 1);
                }
            }
        }
    }
}

/// Marks PLI and FIR (keyframe requests) and sender reports (lip sync) from the peer for
/// delivery to the application (webrtc-rs stops all
/// inbound RTCP at the end of the chain otherwise); other RTCP ends here, as it would.
pub(crate) struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl KeyframeRequests {
    pub(crate) fn new() -> Self {
        KeyframeRequests {
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            packets.retain(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>()
                    || any.is::<FullIntraRequest>()
                    || any.is::<SenderReport>()
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

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// How far back arrivals count towards the acknowledged rate: short, so a link that drops
/// shows in it within a few feedback intervals.
const ACKED_WINDOW: Duration = Duration::from_millis(250);
/// The published estimate is at most this many times the acknowledged rate once the link has
/// been clear for [`RAMP`]...
const ACKED_HEADROOM: f64 = 1.5;
/// ...or at most this many while the peer reports losing more than [`LOSSY`] of the recent
/// packets or a queue builds: a full link carries no more than arrives, and audio shares its
/// queue.
const LOSSY_HEADROOM: f64 = 0.9;
/// While congested, the headroom shrinks with the queue so it drains: 1 minus the queueing
/// delay over this span (a 200 ms queue halves the rate until it is gone)...
const DRAIN_SPAN: Duration = Duration::from_millis(400);
/// ...down to this.
const DRAIN_HEADROOM: f64 = 0.5;
/// After the last sign of congestion, the headroom holds at 1 for [`HOLD`], then climbs back
/// to [`ACKED_HEADROOM`] over this span: snapping straight back refilled the queue it had
/// just drained.
const RAMP: Duration = Duration::from_secs(8);
/// See [`RAMP`].
const HOLD: Duration = Duration::from_secs(1);
/// Feedback reports in a row showing a queue that count as congestion.
const QUEUED_REPORTS: u32 = 2;
/// How fast a clear link's estimate grows while the sender does not fill it, per second.
const APP_LIMITED_GROWTH: f64 = 0.08;
/// Share of the last [`RECENT_PACKETS`] reported packets lost that counts as a lossy link.
const LOSSY: f64 = 0.05;
/// Packets the recent loss share is taken over.
const RECENT_PACKETS: usize = 100;
/// Queueing delay (one-way delay above its recent minimum) that counts as a queue building at
/// the bottleneck: the link is full before it drops anything, and audio waits in that queue.
const QUEUE_BUILDING: Duration = Duration::from_millis(25);
/// How long the one-way delay's minimum (the empty-queue baseline) is remembered.
const BASELINE_WINDOW: Duration = Duration::from_secs(5);
/// The newest packets' delay is the minimum over this span (one packet's jitter is no queue).
const RECENT_DELAY_SPAN: Duration = Duration::from_millis(100);
/// ...and, while the link is clear, never capped below this, in bits/s, so a sender that
/// sends little (audio alone, or video paused) can still be given enough to start video again.
const ACKED_FLOOR: f64 = 200_000.0;

/// The headroom over the acknowledged rate: how far the sender may go beyond what arrives.
fn headroom(queue: Option<Duration>, lossy: bool, clear_for: Option<Duration>) -> f64 {
    let queued = queue.is_some_and(|q| q >= QUEUE_BUILDING);
    if lossy || queued {
        let q = queue.unwrap_or_default().as_secs_f64();
        return (1.0 - q / DRAIN_SPAN.as_secs_f64()).clamp(DRAIN_HEADROOM, LOSSY_HEADROOM);
    }
    match clear_for {
        // Never congested, or far from where it last was.
        None => ACKED_HEADROOM,
        Some(clear) => {
            let ramp = clear.saturating_sub(HOLD).as_secs_f64() / RAMP.as_secs_f64();
            1.0 + (ACKED_HEADROOM - 1.0) * ramp.min(1.0)
        }
    }
}

/// Wraps the estimator the interceptor chain owns, publishing its target (bits/s) to a watch
/// after each update.
///
/// The target is capped at [`ACKED_HEADROOM`] times the rate the peer acknowledged receiving
/// (transport-wide feedback, over [`ACKED_WINDOW`]). GCC's own target can run far above what
/// is sent; when the link then drops (5 Mbit/s to 300 kbit/s in tests/netsim_video.rs) its loss
/// half needed ~2.5 s to come down, while the video encoder kept filling the bottleneck ahead
/// of audio. The acknowledged rate falls within one feedback interval.
pub(crate) struct PublishedEstimator<E> {
    inner: E,
    target: watch::Sender<u64>,
    /// Arrived packets: (arrival on the peer's clock, bytes), oldest first.
    acked: VecDeque<(Duration, usize)>,
    acked_bytes: usize,
    /// Whether each of the last reported packets arrived, newest last.
    recent: VecDeque<bool>,
    recent_lost: usize,
    /// One-way delays (arrival on the peer's clock minus departure since `origin`, so with an
    /// unknown constant offset) by departure, oldest first, over [`BASELINE_WINDOW`].
    delays: VecDeque<(Instant, f64)>,
    origin: Option<Instant>,
    /// When the link last showed congestion (loss or a queue).
    congested_at: Option<Instant>,
    /// The capped target last published, bits/s.
    current: f64,
    /// When the halves were last logged.
    logged: Option<Instant>,
    /// Feedback reports in a row that showed a queue.
    queued_reports: u32,
    /// When the target was last computed.
    computed_at: Option<Instant>,
}

impl<E: BandwidthEstimator> PublishedEstimator<E> {
    pub(crate) fn new(inner: E) -> (Self, watch::Receiver<u64>) {
        let (target, rx) = watch::channel(inner.target_bitrate() as u64);
        let initial = inner.target_bitrate();
        (
            PublishedEstimator {
                inner,
                target,
                acked: VecDeque::new(),
                acked_bytes: 0,
                recent: VecDeque::with_capacity(RECENT_PACKETS + 1),
                recent_lost: 0,
                delays: VecDeque::new(),
                origin: None,
                congested_at: None,
                current: initial,
                logged: None,
                queued_reports: 0,
                computed_at: None,
            },
            rx,
        )
    }

    /// The rate the peer received at, bits/s, once a whole window has been seen.
    fn acked_rate(&self) -> Option<f64> {
        let (first, _) = self.acked.front()?;
        let (last, _) = self.acked.back()?;
        if last.saturating_sub(*first) < ACKED_WINDOW / 2 {
            return None;
        }
        Some((self.acked_bytes * 8) as f64 / ACKED_WINDOW.as_secs_f64())
    }

    fn track_acked(&mut self, reports: &[PacketReport]) {
        for r in reports {
            self.recent.push_back(r.arrived);
            self.recent_lost += usize::from(!r.arrived);
            if self.recent.len() > RECENT_PACKETS
                && let Some(arrived) = self.recent.pop_front()
            {
                self.recent_lost -= usize::from(!arrived);
            }
            if let (true, Some(at)) = (r.arrived, r.arrival) {
                self.acked.push_back((at, r.size));
                self.acked_bytes += r.size;
                let origin = *self.origin.get_or_insert(r.departure);
                let sent = r.departure.saturating_duration_since(origin);
                self.delays
                    .push_back((r.departure, at.as_secs_f64() - sent.as_secs_f64()));
            }
        }
        let Some(&(newest, _)) = self.acked.iter().max_by_key(|(at, _)| *at) else {
            return;
        };
        while let Some(&(at, size)) = self.acked.front() {
            if at + ACKED_WINDOW >= newest && self.acked.len() < 8192 {
                break;
            }
            self.acked.pop_front();
            self.acked_bytes -= size;
        }
        self.forget_old_delays();
    }

    /// How far the newest packets' one-way delay stands above the recent minimum: the queue
    /// at the bottleneck.
    fn queueing_delay(&self) -> Option<Duration> {
        let &(newest, _) = self.delays.back()?;
        let baseline = self
            .delays
            .iter()
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        let recent = self
            .delays
            .iter()
            .rev()
            .take_while(|(at, _)| newest.saturating_duration_since(*at) <= RECENT_DELAY_SPAN)
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        Duration::try_from_secs_f64(recent - baseline).ok()
    }

    fn forget_old_delays(&mut self) {
        let Some(&(newest, _)) = self.delays.back() else {
            return;
        };
        while let Some(&(at, _)) = self.delays.front() {
            if newest.saturating_duration_since(at) <= BASELINE_WINDOW && self.delays.len() < 8192 {
                break;
            }
            self.delays.pop_front();
        }
    }

    /// GCC's target, capped by the acknowledged rate times the headroom the link allows now.
    fn capped(&mut self, now: Instant) -> f64 {
        let gcc = self.inner.target_bitrate();
        let lossy = self.recent.len() >= RECENT_PACKETS / 2
            && self.recent_lost as f64 > LOSSY * self.recent.len() as f64;
        let queue = self.queueing_delay();
        // A queue in one report can be a stalled machine; in two in a row (50 ms apart) the
        // link is full.
        let congested = lossy || self.queued_reports >= QUEUED_REPORTS;
        let acked = self.acked_rate();
        if congested {
            self.congested_at = Some(now);
        }
        let clear_for = self.congested_at.map(|t| now.saturating_duration_since(t));
        let headroom = headroom(queue, lossy, clear_for);
        // The floor only lets a quiet sender start again; a congested link gets no more than
        // it drains.
        let floor = if congested { 0.0 } else { ACKED_FLOOR };
        let elapsed = self
            .computed_at
            .replace(now)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        match acked {
            Some(_) if congested => gcc.min(acked.unwrap_or_default() * headroom),
            // A clear link keeps what it had even when the sender sends less than it may (a
            // smaller picture, a still scene), and grows slowly from there: otherwise a
            // sender that stepped down could never earn the estimate to step up again.
            Some(acked) => {
                let kept = self.current * (1.0 + APP_LIMITED_GROWTH * elapsed.as_secs_f64());
                gcc.min((acked * headroom).max(floor).max(kept))
            }
            None => gcc,
        }
    }

    fn publish(&mut self, now: Instant, reports: Option<&[PacketReport]>) {
        self.current = self.capped(now);
        let target = self.current as u64;
        let changed = self.target.send_if_modified(|v| {
            let changed = *v != target;
            *v = target;
            changed
        });
        // Both halves once a second at most (the target alone hides which one holds it).
        let Some(reports) = reports else { return };
        if changed
            || self
                .logged
                .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            self.logged = Some(now);
            let lost = reports.iter().filter(|r| !r.arrived).count();
            let s = self.inner.stats();
            tracing::debug!(
                target_bps = target,
                acked_bps = self.acked_rate().map(|v| v as u64),
                delay_bps = s.delay_based_bitrate.map(|v| v as u64),
                loss_bps = s.loss_based_bitrate.map(|v| v as u64),
                loss = s.packet_loss,
                reports = reports.len(),
                lost,
                "bandwidth estimate"
            );
        }
    }
}

impl<E: BandwidthEstimator> BandwidthEstimator for PublishedEstimator<E> {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.inner.on_reports(now, reports);
        self.track_acked(reports);
        let queued = self.queueing_delay().is_some_and(|q| q >= QUEUE_BUILDING);
        self.queued_reports = if queued { self.queued_reports + 1 } else { 0 };
        self.publish(now, Some(reports));
    }

    fn target_bitrate(&self) -> f64 {
        self.current
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.publish(now, None);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(p: &mut Vp8Packetizer, frame: &[u8]) -> Vec<Bytes> {
        p.packetize(frame)
    }

    fn frame(len: usize, tag: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
    }

    /// Feeds frames as (seq, ts, marker, payload) and returns what came out.
    struct Feed {
        a: FrameAssembler,
        seq: u16,
        now: Instant,
    }

    impl Feed {
        fn new(seq: u16) -> Self {
            Feed {
                a: FrameAssembler::new(),
                seq,
                now: Instant::now(),
            }
        }

        fn packetize(
            &mut self,
            p: &mut Vp8Packetizer,
            data: &[u8],
            ts: u32,
        ) -> Vec<(u16, u32, bool, Bytes)> {
            let payloads = packets(p, data);
            let n = payloads.len();
            payloads
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let s = self.seq;
                    self.seq = self.seq.wrapping_add(1);
                    (s, ts, i + 1 == n, b)
                })
                .collect()
        }

        fn push(&mut self, pkts: &[(u16, u32, bool, Bytes)]) {
            for (s, t, m, b) in pkts {
                self.a.push(*s, *t, *m, b, self.now);
            }
        }

        fn out(&mut self) -> Vec<ReceivedVideoFrame> {
            std::iter::from_fn(|| self.a.pop()).collect()
        }
    }

    #[test]
    fn descriptor_parsing() {
        assert_eq!(
            parse_vp8_descriptor(&[0x10, 0xaa]),
            Ok(Vp8Descriptor {
                frame_start: true,
                len: 1
            })
        );
        assert_eq!(
            parse_vp8_descriptor(&[0x90, 0x80, 0x81, 0x02, 0xaa]).unwrap(),
            Vp8Descriptor {
                frame_start: true,
                len: 4
            }
        );
        // 7-bit picture ID, TL0PICIDX and TID: 5 bytes.
        assert_eq!(
            parse_vp8_descriptor(&[0x80, 0xe0, 0x05, 0x01, 0x40, 0xaa])
                .unwrap()
                .len,
            5
        );
        // S with a non-zero partition index is not a frame start.
        assert!(!parse_vp8_descriptor(&[0x11, 0xaa]).unwrap().frame_start);
        assert_eq!(parse_vp8_descriptor(&[]), Err(DescriptorError::Truncated));
        assert_eq!(
            parse_vp8_descriptor(&[0x90, 0x80, 0x81]),
            Err(DescriptorError::Truncated)
        );
        assert_eq!(parse_vp8_descriptor(&[0x10]), Err(DescriptorError::Empty));
    }

    #[test]
    fn packetizer_splits_evenly_and_marks_the_start() {
        let mut p = Vp8Packetizer::new(0x7ffe, MAX_VIDEO_RTP_PAYLOAD);
        let data = frame(5000, 1);
        let out = p.packetize(&data);
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|b| b.len() <= MAX_VIDEO_RTP_PAYLOAD));
        let sizes: Vec<_> = out.iter().map(|b| b.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        let mut joined = Vec::new();
        for (i, b) in out.iter().enumerate() {
            let d = parse_vp8_descriptor(b).unwrap();
            assert_eq!(d.frame_start, i == 0);
            assert_eq!(&b[2..4], &[0xff, 0xfe]);
            joined.extend_from_slice(&b[d.len..]);
        }
        assert_eq!(joined, data);
        // The picture ID wraps within 15 bits.
        let next = p.packetize(&[1]);
        assert_eq!(&next[0][2..4], &[0xff, 0xff]);
        assert_eq!(&p.packetize(&[1])[0][2..4], &[0x80, 0x00]);
        assert!(p.packetize(&[]).is_empty());
    }

    #[test]
    fn whole_frames_come_out_in_order_across_sequence_wrap() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(65530);
        let frames: Vec<_> = (0..6).map(|i| frame(500 + i * 1700, i as u8)).collect();
        for (i, f) in frames.iter().enumerate() {
            let pk = feed.packetize(&mut p, f, 3000 * i as u32);
            feed.push(&pk);
        }
        let out = feed.out();
        assert_eq!(out.len(), 6);
        for (i, f) in out.iter().enumerate() {
            assert_eq!(f.payload, frames[i]);
            assert_eq!(f.timestamp, 3000 * i as u32);
            assert!(!f.after_loss);
        }
    }

    #[test]
    fn reordered_packets_still_make_whole_frames() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(100);
        let a = frame(4000, 1);
        let b = frame(3000, 2);
        let mut pk = feed.packetize(&mut p, &a, 0);
        pk.extend(feed.packetize(&mut p, &b, 3000));
        pk.swap(0, 2);
        pk.swap(4, 6);
        feed.push(&pk);
        let out = feed.out();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload, a);
        assert_eq!(out[1].payload, b);
        assert!(!out[0].after_loss && !out[1].after_loss);
    }

    #[test]
    fn a_frame_with_a_missing_packet_is_dropped_and_the_next_marked() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(7);
        let f0 = frame(3000, 0);
        let f1 = frame(3000, 1);
        let f2 = frame(3000, 2);
        let p0 = feed.packetize(&mut p, &f0, 0);
        let mut p1 = feed.packetize(&mut p, &f1, 3000);
        let p2 = feed.packetize(&mut p, &f2, 6000);
        p1.remove(1);
        feed.push(&p0);
        feed.push(&p1);
        feed.push(&p2);
        // f1 waits for its missing packet, and f2 waits behind it.
        let out = feed.out();
        assert_eq!(out.len(), 1);
        assert!(feed.a.deadline().is_some());
        feed.now += VIDEO_REORDER_WAIT;
        feed.a.expire(feed.now);
        let out2 = feed.out();
        assert_eq!(out2.len(), 1, "only f2, never a partial f1");
        assert_eq!(out2[0].payload, f2);
        assert!(out2[0].after_loss);
        assert_eq!(feed.a.stats().frames, 2);
    }

    #[test]
    fn a_late_packet_within_the_wait_completes_its_frame() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(0);
        let f0 = frame(3000, 0);
        let f1 = frame(3000, 1);
        let mut pk = feed.packetize(&mut p, &f0, 0);
        pk.extend(feed.packetize(&mut p, &f1, 3000));
        let late = pk.remove(1);
        feed.push(&pk);
        assert!(feed.out().is_empty());
        feed.now += VIDEO_REORDER_WAIT / 2;
        feed.a.expire(feed.now);
        feed.push(&[late]);
        let out = feed.out();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (&out[0].payload[..], &out[1].payload[..]),
            (&f0[..], &f1[..])
        );
        assert!(!out[1].after_loss);
    }

    #[test]
    fn a_wholly_lost_frame_marks_the_next_one() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(0);
        let f: Vec<_> = (0..3).map(|i| frame(2000, i)).collect();
        let p0 = feed.packetize(&mut p, &f[0], 0);
        let _lost = feed.packetize(&mut p, &f[1], 3000);
        let p2 = feed.packetize(&mut p, &f[2], 6000);
        feed.push(&p0);
        feed.push(&p2);
        feed.now += VIDEO_REORDER_WAIT;
        feed.a.expire(feed.now);
        let out = feed.out();
        assert_eq!(out.len(), 2);
        assert!(!out[0].after_loss);
        assert!(out[1].after_loss);
        assert_eq!(out[1].payload, f[2]);
    }

    #[test]
    fn a_slow_frame_without_holes_is_not_given_up() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(0);
        let f0 = frame(20_000, 0);
        let pk = feed.packetize(&mut p, &f0, 0);
        for one in &pk {
            feed.push(std::slice::from_ref(one));
            feed.now += VIDEO_REORDER_WAIT;
            feed.a.expire(feed.now);
        }
        let out = feed.out();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, f0);
    }

    #[test]
    fn padding_between_frames_is_not_a_loss() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(65534);
        let f0 = frame(2500, 0);
        let f1 = frame(2500, 1);
        let pk0 = feed.packetize(&mut p, &f0, 0);
        // Three padding packets (across the sequence wrap) between the frames.
        let pad: Vec<u16> = (0..3).map(|i| feed.seq.wrapping_add(i)).collect();
        feed.seq = feed.seq.wrapping_add(3);
        let pk1 = feed.packetize(&mut p, &f1, 3000);
        feed.push(&pk0);
        feed.push(&pk1);
        // The padding arrives late: the frame waits for it, then goes out unmarked.
        assert_eq!(feed.out().len(), 1);
        for s in pad {
            feed.a.push_padding(s, 0, feed.now);
        }
        let out = feed.out();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, f1);
        assert!(!out[0].after_loss);
        assert_eq!(feed.a.stats().losses, 0);
        assert!(feed.a.deadline().is_none());
    }

    #[test]
    fn joining_mid_frame_waits_for_a_frame_start() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(0);
        let f0 = frame(3000, 0);
        let f1 = frame(3000, 1);
        let pk0 = feed.packetize(&mut p, &f0, 0);
        let pk1 = feed.packetize(&mut p, &f1, 3000);
        feed.push(&pk0[1..]);
        feed.push(&pk1);
        let out = feed.out();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, f1);
        assert!(out[0].after_loss);
    }

    #[test]
    fn duplicates_and_mixed_timestamps_are_not_delivered() {
        let mut p = Vp8Packetizer::new(0, MAX_VIDEO_RTP_PAYLOAD);
        let mut feed = Feed::new(0);
        let f0 = frame(3000, 0);
        let mut pk = feed.packetize(&mut p, &f0, 0);
        let dup = pk[0].clone();
        pk[1].1 = 99; // a middle packet claiming another timestamp
        feed.push(&pk);
        feed.push(&[dup]);
        assert!(feed.out().is_empty());
        let f1 = frame(100, 1);
        let pk1 = feed.packetize(&mut p, &f1, 3000);
        feed.push(&pk1);
        let out = feed.out();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, f1);
        assert!(out[0].after_loss);
    }

    #[test]
    fn random_packets_never_panic_and_stay_bounded() {
        // A small xorshift generator: deterministic, no extra dependency.
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut a = FrameAssembler::new();
        let mut now = Instant::now();
        for _ in 0..50_000 {
            let r = next();
            let len = (r % 40) as usize;
            let payload: Bytes = (0..len).map(|_| next() as u8).collect();
            if r & 0x400 != 0 {
                a.push_padding((r >> 20) as u16 % 64, 0, now);
            }
            let seq = if r & 0x100 != 0 {
                (r >> 16) as u16
            } else {
                (r >> 20) as u16 % 64
            };
            a.push(seq, (r >> 40) as u32 % 4, r & 0x200 != 0, &payload, now);
            now += Duration::from_micros(r % 3000);
            a.expire(now);
            while a.pop().is_some() {}
            assert!(a.fragments.len() <= MAX_BUFFERED_PACKETS);
        }
        assert!(a.stats().malformed > 0 && a.stats().frames > 0);
    }

    fn report(id: u64, size: usize, arrival_ms: Option<u64>) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id,
            rtp_sequence_number: id as u16,
            is_twcc: true,
            twcc_sequence_number: id as u16,
            size,
            arrived: arrival_ms.is_some(),
            departure: Instant::now(),
            arrival: arrival_ms.map(Duration::from_millis),
            ecn: Default::default(),
        }
    }

    #[test]
    fn a_congested_link_is_drained_in_proportion_to_its_queue_and_regained_slowly() {
        let ms = Duration::from_millis;
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Congested: a short queue keeps 0.9, a long one cuts deeper, to half at most.
        assert!(near(headroom(Some(ms(30)), false, Some(ms(0))), 0.9));
        assert!(near(headroom(Some(ms(100)), false, Some(ms(0))), 0.75));
        assert!(near(headroom(Some(ms(200)), false, Some(ms(0))), 0.5));
        assert!(near(headroom(Some(ms(900)), false, Some(ms(0))), 0.5));
        assert!(near(headroom(None, true, Some(ms(0))), 0.9));
        // Never congested: full headroom at once.
        assert!(near(headroom(Some(ms(5)), false, None), ACKED_HEADROOM));
        // Clear again: hold at 1, then climb back over the ramp.
        assert!(near(headroom(None, false, Some(ms(900))), 1.0));
        assert!(near(headroom(None, false, Some(ms(5000))), 1.25));
        assert!(near(headroom(None, false, Some(ms(9000))), ACKED_HEADROOM));
        assert!(near(
            headroom(None, false, Some(ms(60_000))),
            ACKED_HEADROOM
        ));
    }

    /// A congested moment at 640 kbit/s, then a clear link while the sender sends half as
    /// much (it stepped down to a smaller picture): the estimate does not follow the sender
    /// down, and grows from where the drain left it, so a bigger picture can be earned back.
    #[test]
    fn an_app_limited_sender_on_a_clear_link_keeps_and_grows_its_estimate() {
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(5e6));
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut id = 0;
        let mut feed =
            |e: &mut PublishedEstimator<_>, from: u64, batches: u64, size: usize, queued: u64| {
                for batch in from..from + batches {
                    let reports: Vec<_> = (0..4)
                        .map(|i| {
                            id += 1;
                            let sent = batch * 100 + i * 25;
                            let mut r = report(id, size, Some(sent + queued));
                            r.departure = start + ms(sent);
                            r
                        })
                        .collect();
                    e.on_reports(start + ms(batch * 100 + 100 + queued), &reports);
                }
            };
        // 2000-byte packets every 25 ms (640 kbit/s), then a 60 ms queue for three reports
        // (the first one's newest 100 ms still hold an unqueued packet).
        feed(&mut e, 0, 10, 2000, 0);
        feed(&mut e, 10, 3, 2000, 60);
        let drained = *rx.borrow();
        assert!(drained < 640_000, "{drained}");
        // Clear again, the sender at 320 kbit/s for 3 s: not capped to what it sends...
        feed(&mut e, 14, 30, 1000, 0);
        let later = *rx.borrow();
        // ...and grown a little (8 % a second) from the drained value.
        assert!(later > drained, "{drained} -> {later}");
        assert!(
            later >= 320_000 * 3 / 2 || later as f64 >= drained as f64 * 1.15,
            "{drained} -> {later}"
        );
    }

    /// A sender that follows the published estimate into a 300 kbit/s bottleneck (a FIFO
    /// with no loss), with feedback every 50 ms: the queue it builds is drained and stays
    /// short, and the link is still used.
    #[test]
    fn a_sender_following_the_estimate_keeps_the_bottleneck_queue_short() {
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(5e6));
        let start = Instant::now();
        let link_bps = 300_000.0;
        let size = 1000usize;
        let mut next_send = 0.0f64; // seconds
        let mut link_free = 0.0f64; // when the bottleneck finishes its queue
        let mut pending: Vec<PacketReport> = Vec::new();
        let mut id = 0u64;
        let mut queue_after_2s = Vec::new();
        let mut sent_bytes_after_2s = 0usize;
        let end = 12.0;
        let mut feedback_at = 0.05;
        while next_send < end {
            // Sender: 800 kbit/s at most, else what the estimate allows.
            let rate = (*rx.borrow() as f64).min(800_000.0);
            let sent = next_send;
            next_send += (size * 8) as f64 / rate;
            let arrival = sent.max(link_free) + (size * 8) as f64 / link_bps;
            link_free = arrival;
            id += 1;
            let mut r = report(id, size, None);
            r.arrived = true;
            r.departure = start + Duration::from_secs_f64(sent);
            r.arrival = Some(Duration::from_secs_f64(arrival));
            pending.push(r);
            if sent > 2.0 {
                queue_after_2s.push(arrival - sent);
                sent_bytes_after_2s += size;
            }
            // Feedback for everything that has arrived, as the peer would send it.
            while feedback_at <= sent {
                let (arrived, rest): (Vec<_>, Vec<_>) = pending
                    .drain(..)
                    .partition(|r| r.arrival.is_some_and(|a| a.as_secs_f64() <= feedback_at));
                pending = rest;
                if !arrived.is_empty() {
                    e.on_reports(start + Duration::from_secs_f64(feedback_at), &arrived);
                }
                feedback_at += 0.05;
            }
        }
        let used = (sent_bytes_after_2s * 8) as f64 / (end - 2.0) / link_bps;
        let long = queue_after_2s.iter().filter(|q| **q > 0.1).count();
        let worst = queue_after_2s.iter().copied().fold(0.0, f64::max);
        // The link stays mostly used...
        assert!(used > 0.6, "used {used:.2} of the link");
        // ...and after the first two seconds the queue rarely passes 100 ms.
        assert!(
            long * 10 < queue_after_2s.len(),
            "{long} of {} packets queued over 100 ms (worst {worst:.3} s, used {used:.2})",
            queue_after_2s.len()
        );
    }

    #[test]
    fn the_estimate_is_capped_by_what_the_peer_received() {
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(1.3e6));
        let now = Instant::now();
        assert_eq!(*rx.borrow(), 1_300_000);
        // One second of 1000-byte packets arriving at 320 kbit/s (every 25 ms), all of them,
        // no queue: a clear link keeps its estimate (the sender may just have little to say).
        let mut id = 0;
        for batch in 0..10u64 {
            let reports: Vec<_> = (0..4)
                .map(|i| {
                    id += 1;
                    report(id, 1000, Some(batch * 100 + i * 25))
                })
                .collect();
            e.on_reports(now, &reports);
        }
        let roomy = *rx.borrow();
        assert_eq!(roomy, 1_300_000);
        // The same arrivals with half of what was sent lost: the link carries no more than
        // arrives, the cap is 0.9 x 320k.
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(1.3e6));
        let mut id = 0;
        for batch in 0..10u64 {
            let reports: Vec<_> = (0..4)
                .flat_map(|i| {
                    let at = batch * 100 + i * 25;
                    id += 2;
                    [report(id, 1000, None), report(id + 1, 1000, Some(at))]
                })
                .collect();
            e.on_reports(now, &reports);
        }
        let capped = *rx.borrow();
        assert!((270_000..=330_000).contains(&capped), "{capped}");
        assert_eq!(e.target_bitrate() as u64, capped);
        // Nothing lost, but the one-way delay climbs 60 ms above its minimum: a queue is
        // building at the bottleneck, so the link carries no more than arrives either.
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(1.3e6));
        let start = Instant::now();
        let mut id = 0;
        for batch in 0..10u64 {
            let reports: Vec<_> = (0..4)
                .map(|i| {
                    id += 1;
                    let sent = batch * 100 + i * 25;
                    // Queueing grows in the second half: up to 60 ms more per packet.
                    let queued = if batch >= 5 { (batch - 4) * 12 } else { 0 };
                    let mut r = report(id, 1000, Some(sent + queued));
                    r.departure = start + Duration::from_millis(sent);
                    r
                })
                .collect();
            e.on_reports(now, &reports);
        }
        let queued = *rx.borrow();
        assert!((250_000..=330_000).contains(&queued), "{queued}");
        // Little acknowledged (audio alone) on a clear link: the estimate stays.
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(1.3e6));
        let reports: Vec<_> = (0..50).map(|i| report(i, 100, Some(i * 20))).collect();
        e.on_reports(now, &reports);
        assert_eq!(*rx.borrow(), 1_300_000);
        // Below the cap, GCC's own target stands.
        let (mut e, rx) = PublishedEstimator::new(rtc::interceptor::ConstantBitrate::new(150e3));
        e.on_reports(now, &reports);
        assert_eq!(*rx.borrow(), 150_000);
    }
}
