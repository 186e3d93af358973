//! The video pacer, Sans-I/O: video RTP packets leave through a leaky bucket at a multiple of
//! the bandwidth estimate, so a keyframe's burst is spread out instead of filling the
//! bottleneck's queue in front of audio. Audio never goes through it.
//!
//! The queue is bounded in time: a frame that would make it wait longer than
//! [`MAX_PACER_DELAY`] at the current rate makes the pacer drop every queued frame that has
//! not started leaving, and the new frame too unless it is a keyframe; after that, delta
//! frames are dropped until a keyframe comes (they refer to pictures the receiver will never
//! have). Dropped frames keep their RTP sequence numbers, so the receiver sees the loss.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::rtp::Packet;

/// The pacing rate as a multiple of the bandwidth estimate (audio and video together).
/// Above 1 so the encoder's frames, which are bursty around its target, rarely wait.
pub const PACING_FACTOR: f64 = 1.5;

/// Longest a frame may wait in the pacer at the current rate before frames are dropped.
pub const MAX_PACER_DELAY: Duration = Duration::from_millis(400);

/// How far the bucket may lag behind, so packets after an idle spell go out together.
const BURST: Duration = Duration::from_millis(10);

/// Lowest pacing rate, bits/s.
const MIN_RATE: u64 = 50_000;

/// Bytes on the wire for one RTP packet besides its payload: RTP header with extensions,
/// SRTP tag, UDP and IPv4 headers.
const PACKET_OVERHEAD: usize = 12 + 16 + 10 + 8 + 20;

/// Queue bound in bytes, whatever the rate (a keyframe beyond it is still taken).
const MIN_QUEUE_BYTES: usize = 16 * 1024;

fn wire_size(p: &Packet) -> usize {
    p.payload.len() + PACKET_OVERHEAD
}

struct QueuedFrame {
    packets: VecDeque<Packet>,
    /// Its first packet has left: the rest must follow.
    started: bool,
}

/// Paces one video stream's packets (time comes in, packets come out).
pub struct VideoPacer {
    frames: VecDeque<QueuedFrame>,
    queued_bytes: usize,
    rate_bps: u64,
    /// When the bucket allows the next packet.
    next_send: Option<Instant>,
    /// Frames dropped since the last keyframe request was taken.
    dropped_pending: u64,
    dropped_total: u64,
    awaiting_keyframe: bool,
}

impl std::fmt::Debug for VideoPacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoPacer")
            .field("frames", &self.frames.len())
            .field("queued_bytes", &self.queued_bytes)
            .field("rate_bps", &self.rate_bps)
            .field("dropped_total", &self.dropped_total)
            .finish_non_exhaustive()
    }
}

impl VideoPacer {
    /// An empty pacer sending at `rate_bps`.
    pub fn new(rate_bps: u64) -> Self {
        VideoPacer {
            frames: VecDeque::new(),
            queued_bytes: 0,
            rate_bps: rate_bps.max(MIN_RATE),
            next_send: None,
            dropped_pending: 0,
            dropped_total: 0,
            awaiting_keyframe: false,
        }
    }

    /// Sets the pacing rate from a bandwidth estimate in bits/s.
    pub fn set_estimate(&mut self, estimate_bps: u64) {
        self.rate_bps = ((estimate_bps as f64 * PACING_FACTOR) as u64).max(MIN_RATE);
    }

    /// The pacing rate, bits/s.
    pub fn rate(&self) -> u64 {
        self.rate_bps
    }

    fn limit_bytes(&self) -> usize {
        let bytes = self.rate_bps as u128 * MAX_PACER_DELAY.as_millis() / 8000;
        usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .max(MIN_QUEUE_BYTES)
    }

    /// Queues the packets of one frame (in order); `keyframe` says whether the frame is one.
    /// Returns false if the frame was dropped instead.
    pub fn push_frame(&mut self, packets: Vec<Packet>, keyframe: bool) -> bool {
        if packets.is_empty() {
            return true;
        }
        if self.awaiting_keyframe && !keyframe {
            self.count_drops(1);
            return false;
        }
        let size: usize = packets.iter().map(wire_size).sum();
        if self.queued_bytes + size > self.limit_bytes() {
            let before = self.frames.len();
            let mut freed = 0;
            self.frames.retain(|f| {
                if !f.started {
                    freed += f.packets.iter().map(wire_size).sum::<usize>();
                }
                f.started
            });
            self.queued_bytes -= freed;
            self.count_drops((before - self.frames.len()) as u64);
            if !keyframe {
                self.count_drops(1);
                self.awaiting_keyframe = true;
                return false;
            }
        }
        if keyframe {
            self.awaiting_keyframe = false;
        }
        self.queued_bytes += size;
        self.frames.push_back(QueuedFrame {
            packets: packets.into(),
            started: false,
        });
        true
    }

    fn count_drops(&mut self, n: u64) {
        self.dropped_pending += n;
        self.dropped_total += n;
    }

    /// The next packet if the bucket lets it leave at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        let start = self.bucket_start(now)?;
        if start > now {
            return None;
        }
        let frame = self.frames.front_mut()?;
        let packet = frame.packets.pop_front()?;
        frame.started = true;
        if frame.packets.is_empty() {
            self.frames.pop_front();
        }
        let size = wire_size(&packet);
        self.queued_bytes -= size;
        let secs = (size * 8) as f64 / self.rate_bps as f64;
        self.next_send = Some(start + Duration::from_secs_f64(secs));
        Some(packet)
    }

    /// Where the bucket stands for the next packet: never more than [`BURST`] behind `now`.
    fn bucket_start(&self, now: Instant) -> Option<Instant> {
        if self.frames.is_empty() {
            return None;
        }
        let floor = now.checked_sub(BURST).unwrap_or(now);
        Some(self.next_send.map_or(floor, |t| t.max(floor)))
    }

    /// When the next packet may leave (`None`: nothing is queued).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.bucket_start(now).map(|t| t.max(now))
    }

    /// Frames dropped since the last call: the encoder should make a keyframe if not zero.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_pending)
    }

    /// Frames dropped in all.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Bytes waiting (with per-packet overhead).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A frame of `count` packets of `len` payload bytes, sequence numbers from `seq`.
    fn frame(seq: u16, count: usize, len: usize) -> Vec<Packet> {
        (0..count)
            .map(|i| {
                let mut p = Packet::default();
                p.header.sequence_number = seq.wrapping_add(i as u16);
                p.header.marker = i + 1 == count;
                p.payload = Bytes::from(vec![0u8; len]);
                p
            })
            .collect()
    }

    /// Runs the pacer from `t` until it is empty or `until`; returns (time, seq) of each
    /// packet, stepping time to each poll_timeout as a timer-driven task would.
    fn drain(p: &mut VideoPacer, mut t: Instant, until: Instant) -> Vec<(Instant, u16)> {
        let mut out = Vec::new();
        while let Some(next) = p.poll_timeout(t) {
            if next > until {
                break;
            }
            t = next;
            while let Some(pkt) = p.poll(t) {
                out.push((t, pkt.header.sequence_number));
            }
        }
        out
    }

    #[test]
    fn a_burst_leaves_at_the_pacing_rate() {
        let t0 = Instant::now();
        let mut p = VideoPacer::new(0);
        p.set_estimate(400_000);
        assert_eq!(p.rate(), 600_000);
        // A 30-packet keyframe: 30 * 1166 bytes on the wire = 279,840 bits, 466 ms at 600k.
        assert!(p.push_frame(frame(0, 30, 1100), true));
        let sent = drain(&mut p, t0, t0 + Duration::from_secs(5));
        let seqs: Vec<u16> = sent.iter().map(|s| s.1).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
        let span = sent[29].0 - sent[0].0;
        // The first packets ride the burst allowance; the rest follow at the rate.
        assert!(
            span > Duration::from_millis(430) && span < Duration::from_millis(470),
            "{span:?}"
        );
        // Never faster than the rate over any stretch beyond the burst allowance.
        for w in sent.windows(11) {
            let bits = 10 * 1166 * 8;
            let floor = Duration::from_secs_f64(bits as f64 / 600_000.0) - BURST;
            assert!(w[10].0 - w[0].0 >= floor);
        }
        assert_eq!(p.queued_bytes(), 0);
        assert_eq!(p.poll_timeout(t0), None);
    }

    #[test]
    fn small_frames_go_at_once_and_an_idle_bucket_does_not_save_up() {
        let t0 = Instant::now();
        let mut p = VideoPacer::new(1_000_000);
        assert!(p.push_frame(frame(0, 1, 500), false));
        assert_eq!(p.poll(t0).map(|p| p.header.sequence_number), Some(0));
        // A second later, a 20-packet frame: only the burst allowance goes at once.
        let t1 = t0 + Duration::from_secs(1);
        assert!(p.push_frame(frame(1, 20, 1100), false));
        let mut now = 0;
        while p.poll(t1).is_some() {
            now += 1;
        }
        assert!((1..=2).contains(&now), "{now} packets at once");
        assert!(p.poll_timeout(t1).unwrap() > t1);
    }

    #[test]
    fn overflow_drops_whole_unstarted_frames_and_deltas_until_a_keyframe() {
        let t0 = Instant::now();
        // 400 ms at 500 kbit/s: 25,000 bytes of queue.
        let mut p = VideoPacer::new(500_000);
        assert!(p.push_frame(frame(0, 10, 1100), true));
        // The keyframe starts leaving.
        assert!(p.poll(t0).is_some());
        assert!(p.push_frame(frame(10, 5, 1100), false));
        assert!(p.push_frame(frame(15, 5, 1100), false));
        // This one overflows: the two queued deltas and it are dropped, not the started frame.
        assert!(!p.push_frame(frame(20, 5, 1100), false));
        assert_eq!(p.take_dropped(), 3);
        assert_eq!(p.take_dropped(), 0);
        // Later deltas refer to dropped pictures: dropped even though there is room.
        assert!(!p.push_frame(frame(25, 1, 200), false));
        assert_eq!(p.take_dropped(), 1);
        // A keyframe ends it.
        assert!(p.push_frame(frame(26, 4, 1100), true));
        assert!(p.push_frame(frame(30, 1, 200), false));
        let seqs: Vec<u16> = drain(&mut p, t0, t0 + Duration::from_secs(5))
            .into_iter()
            .map(|s| s.1)
            .collect();
        // The rest of the started keyframe, then the new keyframe and the delta after it:
        // the gap 10..26 is what the receiver sees as loss.
        let expected: Vec<u16> = (1..10).chain(26..31).collect();
        assert_eq!(seqs, expected);
        assert_eq!(p.dropped_total(), 4);
        assert_eq!(p.queued_bytes(), 0);
    }

    #[test]
    fn a_keyframe_bigger_than_the_bound_is_still_sent_whole() {
        let t0 = Instant::now();
        let mut p = VideoPacer::new(100_000);
        assert!(p.push_frame(frame(0, 2, 1100), false));
        // 40 KB: beyond the 16 KiB floor of the bound. The queued delta goes, it stays.
        assert!(p.push_frame(frame(2, 36, 1100), true));
        assert_eq!(p.take_dropped(), 1);
        let sent = drain(&mut p, t0, t0 + Duration::from_secs(10));
        assert_eq!(sent.len(), 36);
        assert_eq!(sent[0].1, 2);
    }

    #[test]
    fn a_lower_rate_spreads_packets_further() {
        let t0 = Instant::now();
        let mut fast = VideoPacer::new(0);
        let mut slow = VideoPacer::new(0);
        fast.set_estimate(2_000_000);
        slow.set_estimate(200_000);
        for p in [&mut fast, &mut slow] {
            assert!(p.push_frame(frame(0, 8, 1100), true));
        }
        let f = drain(&mut fast, t0, t0 + Duration::from_secs(5));
        let s = drain(&mut slow, t0, t0 + Duration::from_secs(5));
        assert!(s[7].0 - s[0].0 > (f[7].0 - f[0].0) * 5);
    }
}
