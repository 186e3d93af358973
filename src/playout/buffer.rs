//! The codec-agnostic playout buffer.
//!
//! Design, in short:
//! - Packets are keyed by extended (unwrapped) RTP sequence number in a bounded `BTreeMap`;
//!   sequence numbers decide order and loss, timestamps only feed the jitter estimate (so DTX
//!   gaps, where timestamps jump but sequence numbers do not, are ridden without loss).
//! - The consumer pops once per frame period on its own clock. The buffer's *level* is the
//!   number of frames from the play point to the newest packet held.
//! - Target level = 1 frame + the jitter estimate, so a clean path plays ~1 frame behind.
//! - Below target the buffer grows by concealing a frame without advancing (expand); a missing
//!   head with later packets present is waited for while the level is under target, and
//!   declared lost above it. Above target + 1 frame for a while (or above the maximum at once)
//!   it drops a packet (compress). Expand and compress together absorb clock drift.

use std::collections::BTreeMap;
use std::time::Duration;

use super::jitter::JitterEstimator;
use super::stats::PlayoutStats;

/// One encoded media packet as it came off the wire (after decryption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (clock-rate ticks).
    pub timestamp: u32,
    /// The encoded frame.
    pub payload: Vec<u8>,
}

/// Playout buffer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// RTP clock rate (48 000 for Opus).
    pub clock_rate: u32,
    /// Length of one frame, i.e. of one pop.
    pub frame: Duration,
    /// Most packets held at once.
    pub max_packets: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Highest delay the buffer will steer to; above it, packets are dropped at once.
    pub max_delay: Duration,
    /// Pops in a row above target + 1 frame before one packet is dropped.
    pub compress_after: u32,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        Self {
            clock_rate: 48_000,
            frame: Duration::from_millis(20),
            max_packets: 256,
            max_payload: 1500,
            max_delay: Duration::from_millis(500),
            compress_after: 12,
        }
    }
}

/// What to do for the next frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Playout {
    /// Play this packet.
    Packet(Packet),
    /// The packet for this frame is lost; conceal it. If [`PlayoutBuffer::peek_next`] returns
    /// a packet, it directly follows the lost one (its FEC may recover it).
    Lost {
        /// Sequence number of the lost packet.
        seq: u16,
    },
    /// Nothing to play yet: buffer empty (underrun, DTX) or growing towards its target.
    /// Conceal (or play silence if the stream has not started).
    Wait,
    /// No packet has arrived yet.
    NotStarted,
}

/// Adaptive playout buffer (see the module docs).
#[derive(Debug)]
pub struct PlayoutBuffer {
    cfg: PlayoutConfig,
    frame_ticks: i64,
    packets: BTreeMap<i64, Packet>,
    /// Highest extended sequence number seen (reference for unwrapping).
    highest_seq: Option<i64>,
    /// Highest extended timestamp seen (reference for unwrapping).
    highest_ts: i64,
    /// Next extended sequence number to play.
    next_seq: Option<i64>,
    /// Bit i set: sequence `next_seq - 1 - i` was played from a real packet.
    played_mask: u64,
    jitter: JitterEstimator,
    above_target: u32,
    /// Deliberate waits (expand, or waiting for a missing head) in a row; bounded by the
    /// target so a stream that simply stopped still plays out its last packets.
    wait_run: i64,
    /// Arrival time (ticks) of recent packets, by extended sequence number modulo its length.
    arrivals: [i64; ARRIVALS],
    /// Shortest time a played packet waited in the buffer, over the current window.
    min_wait: i64,
    waits: u32,
    /// Every packet of the last window waited over a frame: drop one frame of delay.
    shrink: bool,
    /// `pop_unsteered` gave up a head on an empty buffer and has not played a packet since.
    gave_up_empty: bool,
    /// Arrival time (ticks) of the packet played last, if known.
    last_arrival: Option<i64>,
    stats: PlayoutStats,
}

/// Arrival times remembered (a power of two; more than a window's worth of packets).
const ARRIVALS: usize = 64;
/// Played packets per wait window.
const WAIT_WINDOW: u32 = 50;
/// Margin every packet must keep after a shrink, in ms.
const WAIT_GUARD_MS: i64 = 2;

/// Extended sequence numbers start here so that packets before the first never go negative.
const SEQ_BASE: i64 = 1 << 32;
/// A jump this far from the play point means the sender restarted: start over.
const RESET_DISTANCE: i64 = 3000;

impl PlayoutBuffer {
    /// An empty buffer.
    pub fn new(cfg: PlayoutConfig) -> Self {
        let frame_ticks =
            (cfg.frame.as_nanos() * u128::from(cfg.clock_rate) / 1_000_000_000).max(1) as i64;
        let cfg = PlayoutConfig {
            max_packets: cfg.max_packets.max(2),
            compress_after: cfg.compress_after.max(1),
            ..cfg
        };
        Self {
            cfg,
            frame_ticks,
            packets: BTreeMap::new(),
            highest_seq: None,
            highest_ts: 0,
            next_seq: None,
            played_mask: 0,
            jitter: JitterEstimator::new(),
            above_target: 0,
            wait_run: 0,
            arrivals: [i64::MIN; ARRIVALS],
            last_arrival: None,
            min_wait: i64::MAX,
            waits: 0,
            shrink: false,
            gave_up_empty: false,
            stats: PlayoutStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PlayoutConfig {
        &self.cfg
    }

    fn extend_seq(&self, seq: u16) -> i64 {
        match self.highest_seq {
            None => SEQ_BASE + i64::from(seq),
            Some(h) => h + i64::from(seq.wrapping_sub(h as u16) as i16),
        }
    }

    fn extend_ts(&self, ts: u32) -> i64 {
        match self.highest_seq {
            None => i64::from(ts),
            Some(_) => self.highest_ts + i64::from(ts.wrapping_sub(self.highest_ts as u32) as i32),
        }
    }

    fn ticks(&self, t: Duration) -> i64 {
        (t.as_nanos() * u128::from(self.cfg.clock_rate) / 1_000_000_000) as i64
    }

    fn reset(&mut self) {
        self.packets.clear();
        self.highest_seq = None;
        self.next_seq = None;
        self.played_mask = 0;
        self.jitter = JitterEstimator::new();
        self.above_target = 0;
        self.min_wait = i64::MAX;
        self.waits = 0;
        self.shrink = false;
    }

    /// Offers a packet that arrived at `now`. Late, duplicate, oversized and out-of-window
    /// packets are dropped and counted; nothing here can fail or grow without bound.
    pub fn insert(&mut self, packet: Packet, now: Duration) {
        if packet.payload.len() > self.cfg.max_payload {
            self.stats.overflow += 1;
            return;
        }
        let mut ext = self.extend_seq(packet.seq);
        if let Some(next) = self.next_seq
            && (ext - next).abs() > RESET_DISTANCE
        {
            tracing::debug!("playout: sequence jumped by {}, restarting", ext - next);
            self.reset();
            ext = self.extend_seq(packet.seq);
        }
        if let Some(next) = self.next_seq {
            if ext < next {
                let back = next - 1 - ext;
                if back < 64 && self.played_mask & (1 << back) != 0 {
                    self.stats.duplicate += 1;
                    return;
                }
                if !(self.gave_up_empty && back == 0) {
                    self.stats.late += 1;
                    return;
                }
                // The head given up on an empty buffer arrives while its gap is still being
                // concealed (nothing played since): it was late, not lost. Play it after the
                // concealment; the delay grows by the gap instead of losing the frame.
                self.next_seq = Some(ext);
                self.played_mask >>= 1;
                self.stats.lost = self.stats.lost.saturating_sub(1);
            }
            if ext >= next + self.cfg.max_packets as i64 {
                if !self.packets.is_empty() {
                    self.stats.overflow += 1;
                    return;
                }
                // Nothing held: the stream resumes after a gap longer than the window (a path
                // that was down for seconds). Refusing it would refuse everything after it
                // until the reset distance; its gap is lost, play on from here.
                let skipped = ext - next;
                self.stats.lost += skipped.unsigned_abs();
                self.next_seq = Some(ext);
                self.played_mask = 0;
            }
        } else if let (Some((&lo, _)), Some((&hi, _))) = (
            self.packets.first_key_value(),
            self.packets.last_key_value(),
        ) {
            // Not started yet: keep the held packets within one window of each other.
            let w = self.cfg.max_packets as i64;
            if ext <= hi - w || ext >= lo + w {
                self.stats.overflow += 1;
                return;
            }
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicate += 1;
            return;
        }
        if self.packets.len() >= self.cfg.max_packets {
            self.stats.overflow += 1;
            return;
        }
        let ext_ts = self.extend_ts(packet.timestamp);
        if self.highest_seq.is_none_or(|h| ext > h) {
            self.highest_seq = Some(ext);
            self.highest_ts = ext_ts;
        }
        self.jitter.record(self.ticks(now) - ext_ts);
        self.arrivals[(ext as usize) % ARRIVALS] = self.ticks(now);
        self.packets.insert(ext, packet);
        self.stats.received += 1;
    }

    /// Target level in frames: one frame plus the jitter estimate, capped by `max_delay`.
    fn target_frames(&self) -> i64 {
        let jitter_frames = (self.jitter.p95_ticks() + self.frame_ticks - 1) / self.frame_ticks;
        (1 + jitter_frames).min(self.max_frames())
    }

    fn max_frames(&self) -> i64 {
        (self.ticks(self.cfg.max_delay) / self.frame_ticks).max(1)
    }

    /// Frames from the play point to the newest packet held.
    fn level(&self) -> i64 {
        match (self.next_seq, self.packets.last_key_value()) {
            (Some(next), Some((&last, _))) => {
                (last + 1 - next).clamp(0, self.cfg.max_packets as i64)
            }
            _ => 0,
        }
    }

    fn advance(&mut self, played: bool) {
        if let Some(n) = self.next_seq.as_mut() {
            *n += 1;
        }
        self.played_mask = (self.played_mask << 1) | u64::from(played);
    }

    fn update_delay_stats(&mut self, level: i64) {
        let f = self.cfg.frame;
        self.stats.delay = f * level.clamp(0, u32::MAX as i64) as u32;
        self.stats.max_delay = self.stats.max_delay.max(self.stats.delay);
        self.stats.target = f * self.target_frames() as u32;
        let ns = self.jitter.p95_ticks().max(0) as u128 * 1_000_000_000
            / u128::from(self.cfg.clock_rate);
        self.stats.jitter = Duration::from_nanos(ns.min(u64::MAX as u128) as u64);
    }

    /// Decides the next frame. Call once per frame period; `now` is only used for bookkeeping
    /// symmetry with [`Self::insert`] (all decisions depend on what has arrived).
    pub fn pop(&mut self, now: Duration) -> Playout {
        let Some(next) = self
            .next_seq
            .or_else(|| self.packets.first_key_value().map(|(&k, _)| k))
        else {
            return Playout::NotStarted;
        };
        self.next_seq = Some(next);
        let level = self.level();
        let target = self.target_frames();
        self.update_delay_stats(level);
        let now_ticks = self.ticks(now);

        // Under a frame of jitter the target rounds up to a whole extra frame; if every packet
        // of the last window still waited more than a frame (plus a guard), that frame is
        // not needed: drop it. Time-based, so it sees the arrival phase that levels cannot.
        if self.shrink
            && target <= 2
            && self.packets.contains_key(&next)
            && self.packets.contains_key(&(next + 1))
        {
            self.shrink = false;
            self.packets.remove(&next);
            self.advance(false);
            self.stats.compressed += 1;
            self.min_wait = i64::MAX;
            self.waits = 0;
            return self.take_head_at(now_ticks);
        }

        // Compress: too much buffered for long enough (or far too much right now).
        if level > target + 1 {
            self.above_target += 1;
        } else {
            self.above_target = 0;
        }
        if (self.above_target >= self.cfg.compress_after || level > self.max_frames())
            && self.packets.contains_key(&next)
            && self.packets.contains_key(&(next + 1))
        {
            self.packets.remove(&next);
            self.advance(false);
            self.stats.compressed += 1;
            self.above_target = 0;
            return self.take_head_at(now_ticks);
        }

        if self.packets.contains_key(&next) {
            // Grow towards the target before a jitter spike forces it (hysteresis: 2 frames).
            if level + 1 < target && self.stats.played > 0 && self.wait_run < target {
                self.wait_run += 1;
                self.stats.expanded += 1;
                self.stats.concealed += 1;
                return Playout::Wait;
            }
            return self.take_head_at(now_ticks);
        }
        if self.packets.is_empty() {
            return self.underrun();
        }
        // The head is missing but later packets are here: wait while under target, else lost.
        if level <= target && self.wait_run < target {
            self.wait_run += 1;
            self.stats.expanded += 1;
            self.stats.concealed += 1;
            return Playout::Wait;
        }
        self.declare_lost(next)
    }

    /// Decides the next frame without steering the delay (no whole-frame expand, compress or
    /// shrink): for a consumer that steers by time-stretching. A missing head with later
    /// packets present is waited for (`Wait`) unless `give_up` is set or the wait has lasted
    /// up to `max_delay`, then declared lost. On an empty buffer the head is declared lost
    /// only when `give_up` and `active` (the consumer was playing sound, so the sender was not
    /// in DTX silence), and only once in a row.
    pub fn pop_unsteered(&mut self, give_up: bool, active: bool) -> Playout {
        let Some(next) = self
            .next_seq
            .or_else(|| self.packets.first_key_value().map(|(&k, _)| k))
        else {
            return Playout::NotStarted;
        };
        self.next_seq = Some(next);
        let ns = self.jitter.p95_ticks().max(0) as u128 * 1_000_000_000
            / u128::from(self.cfg.clock_rate);
        self.stats.jitter = Duration::from_nanos(ns.min(u64::MAX as u128) as u64);
        if self.packets.contains_key(&next) {
            return self.take_head();
        }
        // Nothing here at or above the target during sound: the head is most likely lost, so
        // conceal it in its own slot (no delay added). Only once in a row: more missing frames
        // are a stall, whose packets are waited for. In silence the sender may be in DTX.
        if self.packets.is_empty()
            && give_up
            && active
            && !self.gave_up_empty
            && self.stats.played > 0
        {
            self.gave_up_empty = true;
            return self.declare_lost(next);
        }
        if self.packets.is_empty() {
            return self.underrun();
        }
        // The stream resumes after a gap longer than `max_delay` (a path that was down): its
        // frames are long overdue. Concealing them one per pop would add the whole outage to
        // the delay for good, so they are lost at once, but the one just before the first
        // packet held, concealed now (that packet's FEC may recover it).
        if let Some((&first, _)) = self.packets.first_key_value()
            && first - next > self.max_frames()
        {
            let skipped = first - 1 - next;
            self.stats.lost += skipped.unsigned_abs();
            self.stats.concealed += skipped.unsigned_abs();
            self.next_seq = Some(first - 1);
            self.played_mask = 0;
            return self.declare_lost(first - 1);
        }
        if !give_up && self.wait_run < self.max_frames() && self.level() <= self.max_frames() {
            self.wait_run += 1;
            self.stats.expanded += 1;
            self.stats.concealed += 1;
            return Playout::Wait;
        }
        self.declare_lost(next)
    }

    /// Gives up on the packet `next` (extended sequence number): it is concealed.
    fn declare_lost(&mut self, next: i64) -> Playout {
        self.advance(false);
        self.stats.lost += 1;
        self.stats.concealed += 1;
        Playout::Lost { seq: next as u16 }
    }

    /// Nothing to play: the buffer ran dry (concealed once playing has begun).
    fn underrun(&mut self) -> Playout {
        self.stats.underruns += 1;
        if self.stats.played > 0 {
            self.stats.concealed += 1;
        }
        Playout::Wait
    }

    /// Drops the head packet when the one after it is here too (cutting a whole frame of
    /// delay at once); counted in `compressed`. Returns whether it did.
    pub fn skip_head(&mut self) -> bool {
        let Some(next) = self.next_seq else {
            return false;
        };
        if self.packets.contains_key(&next) && self.packets.contains_key(&(next + 1)) {
            self.packets.remove(&next);
            self.advance(false);
            self.stats.compressed += 1;
            return true;
        }
        false
    }

    /// Plays the head, noting how long it waited.
    fn take_head_at(&mut self, now_ticks: i64) -> Playout {
        if let Some(next) = self.next_seq
            && self.packets.contains_key(&next)
        {
            let arrived = self.arrivals[(next as usize) % ARRIVALS];
            if arrived != i64::MIN {
                self.min_wait = self.min_wait.min(now_ticks - arrived);
                self.waits += 1;
                if self.waits >= WAIT_WINDOW {
                    let guard = i64::from(self.cfg.clock_rate) * WAIT_GUARD_MS / 1000;
                    self.shrink = self.min_wait > self.frame_ticks + guard;
                    self.min_wait = i64::MAX;
                    self.waits = 0;
                }
            }
        }
        self.take_head()
    }

    fn take_head(&mut self) -> Playout {
        let Some(next) = self.next_seq else {
            return Playout::NotStarted;
        };
        match self.packets.remove(&next) {
            Some(p) => {
                let arrived = self.arrivals[(next as usize) % ARRIVALS];
                self.last_arrival = (arrived != i64::MIN).then_some(arrived);
                self.wait_run = 0;
                self.gave_up_empty = false;
                self.advance(true);
                self.stats.played += 1;
                Playout::Packet(p)
            }
            None => self.declare_lost(next),
        }
    }

    /// When the packet played last arrived (ticks of the clock rate, on the clock `insert`
    /// was given), if it is still remembered.
    pub(crate) fn last_arrival(&self) -> Option<i64> {
        self.last_arrival
    }

    /// The packet that will be played next, if it is here (after a `Lost`, the one that
    /// directly follows the lost frame: the FEC source).
    pub fn peek_next(&self) -> Option<&Packet> {
        self.next_seq.and_then(|n| self.packets.get(&n))
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Counters and delay figures.
    pub fn stats(&self) -> &PlayoutStats {
        &self.stats
    }

    /// Mutable counters, for the decoding layer's own figures (FEC, decode errors).
    pub fn stats_mut(&mut self) -> &mut PlayoutStats {
        &mut self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn pkt(seq: u16) -> Packet {
        Packet {
            seq,
            timestamp: u32::from(seq.wrapping_sub(60_000)).wrapping_mul(960),
            payload: vec![seq as u8],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// After an outage of 2.6 s (the path down, ICE restarted), the packets that follow the
    /// gap are played within one frame: the gap is lost at once, not concealed frame by frame
    /// at the cost of 2.6 s of delay.
    #[test]
    fn a_long_gap_is_skipped_not_concealed_in_real_time() {
        let mut b = PlayoutBuffer::new(PlayoutConfig::default());
        for i in 0..50u16 {
            b.insert(pkt(i), ms(20 * u64::from(i)));
            assert!(matches!(b.pop_unsteered(false, true), Playout::Packet(p) if p.seq == i));
        }
        // Nothing for 130 frames: the consumer conceals on an empty buffer.
        for _ in 0..130 {
            assert!(!matches!(b.pop_unsteered(true, true), Playout::Packet(_)));
        }
        b.insert(pkt(180), ms(20 * 180));
        b.insert(pkt(181), ms(20 * 181));
        // At most the frame just before the first one held is concealed, then it plays.
        let first = b.pop_unsteered(false, true);
        assert!(matches!(first, Playout::Lost { seq: 179 }), "{first:?}");
        assert_eq!(b.peek_next().map(|p| p.seq), Some(180));
        assert!(matches!(b.pop_unsteered(false, true), Playout::Packet(p) if p.seq == 180));
        assert!(matches!(b.pop_unsteered(false, true), Playout::Packet(p) if p.seq == 181));
        assert_eq!(b.stats().lost, 130);
        // A gap longer than the window (8 s) is not refused either: play resumes at once.
        for _ in 0..400 {
            assert!(!matches!(b.pop_unsteered(true, true), Playout::Packet(_)));
        }
        b.insert(pkt(582), ms(20 * 582));
        b.insert(pkt(583), ms(20 * 583));
        assert!(matches!(b.pop_unsteered(false, true), Playout::Packet(p) if p.seq == 582));
        assert!(matches!(b.pop_unsteered(false, true), Playout::Packet(p) if p.seq == 583));
        assert_eq!(b.stats().lost, 130 + 400);
        assert_eq!(b.stats().overflow, 0);
    }

    /// A little jitter rounds the target up to two frames; when every packet still waits
    /// more than a frame, the buffer drops that frame once and stays one frame deep.
    #[test]
    fn sheds_a_frame_of_delay_that_the_arrival_phase_makes_unneeded() {
        let mut b = PlayoutBuffer::new(PlayoutConfig::default());
        let mut played = 0;
        for i in 0..400u64 {
            // Packet i arrives 5 ms (+0.5 ms jitter) after its slot; pops are at 20 ms + 15.
            let arrival = Duration::from_micros(20_000 * i + 5_000 + (i % 2) * 500);
            b.insert(pkt(i as u16), arrival);
            if i >= 1 {
                // Start one frame deep, as a level-based buffer settles on this path.
                let now = Duration::from_micros(20_000 * i + 15_000);
                if matches!(b.pop(now), Playout::Packet(_)) {
                    played += 1;
                }
            }
        }
        let s = b.stats();
        assert_eq!(s.compressed, 1, "{s:?}");
        assert_eq!((s.lost, s.late, s.underruns), (0, 0, 0), "{s:?}");
        assert_eq!(s.delay, ms(20), "{s:?}");
        assert_eq!(played, 399, "every pop played a packet");
    }

    #[test]
    fn orders_reordered_packets_and_wraps_sequence_numbers() {
        let mut b = PlayoutBuffer::new(PlayoutConfig::default());
        assert_eq!(b.pop(ms(0)), Playout::NotStarted);
        // Pairs swapped on the wire, each pair inside one frame period.
        let arrivals = [
            (65535u16, 0),
            (65534, 1),
            (1, 40),
            (0, 41),
            (3, 80),
            (2, 81),
        ];
        let mut played = Vec::new();
        let mut next = 0;
        for i in 0..12 {
            let now = ms(20 * i + 10);
            while next < arrivals.len() && ms(arrivals[next].1) <= now {
                b.insert(pkt(arrivals[next].0), ms(arrivals[next].1));
                next += 1;
            }
            if let Playout::Packet(p) = b.pop(now) {
                played.push(p.seq);
            }
        }
        assert_eq!(b.stats().late + b.stats().lost, 0, "{:?}", b.stats());
        assert_eq!(played, vec![65534, 65535, 0, 1, 2, 3]);
    }

    #[test]
    fn counts_duplicates_late_and_loss() {
        let mut b = PlayoutBuffer::new(PlayoutConfig::default());
        b.insert(pkt(10), ms(0));
        b.insert(pkt(10), ms(0));
        assert_eq!(b.stats().duplicate, 1);
        assert!(matches!(b.pop(ms(0)), Playout::Packet(p) if p.seq == 10));
        b.insert(pkt(10), ms(5));
        assert_eq!(b.stats().duplicate, 2);
        // 11 missing, 12..=16 present: the buffer waits while under target, then declares 11 lost.
        for s in 12..=16 {
            b.insert(pkt(s), ms(20));
        }
        let mut lost = None;
        for i in 0..3 {
            if let Playout::Lost { seq } = b.pop(ms(20 + i)) {
                lost = Some(seq);
                assert_eq!(b.peek_next().map(|p| p.seq), Some(12));
                break;
            }
        }
        assert_eq!(lost, Some(11));
        b.insert(pkt(11), ms(60));
        assert_eq!(b.stats().late, 1);
        assert_eq!(b.stats().lost, 1);
    }

    #[test]
    fn hostile_input_keeps_memory_bounded_and_never_panics() {
        let cfg = PlayoutConfig {
            max_packets: 64,
            ..PlayoutConfig::default()
        };
        let mut b = PlayoutBuffer::new(cfg);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for i in 0..50_000u64 {
            let len = rng.random_range(0..2000usize);
            let p = Packet {
                seq: rng.random(),
                timestamp: rng.random(),
                payload: vec![0; len],
            };
            b.insert(p, ms(i));
            assert!(b.len() <= 64);
            if i % 3 == 0 {
                let _ = b.pop(ms(i));
            }
        }
        assert!(b.stats().overflow > 0);
        assert!(b.stats().max_delay <= cfg.max_delay + cfg.frame * 64);
    }

    #[test]
    fn delay_falls_back_after_a_jitter_spike() {
        let mut b = PlayoutBuffer::new(PlayoutConfig::default());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut arrivals: Vec<(Duration, u16)> = (0..3000u16)
            .map(|s| {
                let jitter = if (500..1000).contains(&s) {
                    rng.random_range(0..80)
                } else {
                    0
                };
                (ms(u64::from(s) * 20 + 5 + jitter), s)
            })
            .collect();
        arrivals.sort();
        let mut next = 0;
        let mut spike_target = Duration::ZERO;
        for j in 0..3000u64 {
            let now = ms(j * 20 + 10);
            while next < arrivals.len() && arrivals[next].0 <= now {
                b.insert(pkt(arrivals[next].1), arrivals[next].0);
                next += 1;
            }
            let _ = b.pop(now);
            if j == 990 {
                spike_target = b.stats().target;
            }
        }
        assert!(spike_target >= ms(60), "{spike_target:?}");
        assert_eq!(b.stats().target, ms(20));
        assert!(b.stats().delay <= ms(40), "{:?}", b.stats());
    }
}
