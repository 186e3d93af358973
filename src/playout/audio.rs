//! Audio on top of the playout buffer: decode, recover from FEC, or conceal, and steer the
//! delay by time-stretching.
//!
//! Decoded audio goes into a small sample FIFO; the device takes exactly the samples it asks
//! for from its front. Each time the FIFO runs short, one frame is decoded (or concealed) and
//! the delay controller looks at the playout offset of that frame, `P = output time - media
//! timestamp`, against the target from [`DelayManager`]: above it by more than a couple of
//! milliseconds, the unplayed audio is shortened by whole pitch periods (accelerate); below,
//! lengthened (preemptive expand). A missing packet is waited for (concealed without
//! advancing) while `P` is under the target, and given up as lost at or above it. The first
//! real frame after concealment is merged into it. Stretching changes how many decoded
//! samples the device consumes, never how many it gets.

use std::time::Duration;

use super::buffer::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
use super::delay::DelayManager;
use super::stats::PlayoutStats;
use super::stretch::{MAX_LAG, MIN_LAG, Stretcher};
use crate::media::{CodecError, DecodeKind, OpusDecoder};

/// Concealed frames in a row after which output turns to silence (PLC would only buzz on).
const MAX_CONCEAL_RUN: u32 = 10;
/// Excess over the target (ticks, 0.5 ms) before audio is shortened (voiced audio needs a
/// whole period of excess, silence goes in any length), and shortfall (2 ms) before it is
/// lengthened: hysteresis so steady audio is left alone.
const ACCELERATE_MARGIN: i64 = 24;
const EXPAND_MARGIN: i64 = 96;
/// Concealed frames of a voiced gap played at full level before the repeated period fades
/// (over as many again).
const EXPAND_FULL: u32 = 2;
const EXPAND_FADE: u32 = 6;
/// Normalised correlation at which the audio before a gap counts as voiced.
const EXPAND_VOICED: f32 = 0.95;
/// Mean square above which decoded audio counts as sound (about -50 dBFS).
const ACTIVE_MEAN_SQUARE: f32 = 1e-5;
/// Packets inserted between two calls whose readiness is remembered.
const PENDING: usize = 64;
/// Latest frames whose waits in the buffer bound how much an acceleration may take from
/// the frame being played (see `produce`).
const WAITS: usize = 16;

/// The audio-specific seam: how to turn a packet (or its absence) into one frame of samples.
pub trait FrameDecoder {
    /// Decodes `payload` into `out` (one frame).
    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError>;
    /// Recovers the frame before `next` from `next`'s redundancy (FEC).
    fn recover(&mut self, next: &[u8], out: &mut [f32]) -> Result<(), CodecError>;
    /// Conceals one missing frame.
    fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError>;
}

impl FrameDecoder for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        OpusDecoder::decode(self, payload, out)
    }
    fn recover(&mut self, next: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.decode_fec(next, out)
    }
    fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        OpusDecoder::conceal(self, out)
    }
}

/// A playout buffer plus a decoder: packets in, audio out in whatever lengths the device asks.
#[derive(Debug)]
pub struct AudioPlayout<D: FrameDecoder> {
    buffer: PlayoutBuffer,
    decoder: D,
    conceal_run: u32,
    last_played: Option<u32>,
    last_kind: DecodeKind,
    frame_samples: usize,
    frame_ticks: i64,
    clock_rate: u32,
    /// Decoded, not yet played audio is `fifo[head..tail]`.
    fifo: Vec<f32>,
    head: usize,
    tail: usize,
    /// One frame of scratch, and the previous decoded frame (the tail a merge continues).
    frame: Vec<f32>,
    prev: Vec<f32>,
    prev_concealed: bool,
    /// The last decoded frame had sound (not silence, where the sender may be in DTX).
    active: bool,
    stretcher: Stretcher,
    /// The last pitch period before a voiced gap, repeated to conceal it: `(lag, position)`.
    period: Vec<f32>,
    expand: Option<(usize, usize)>,
    delay: DelayManager,
    /// Highest extended timestamp seen (unwrapping reference).
    ts_high: Option<i64>,
    /// Extended timestamps of packets inserted since the last call.
    pending: [i64; PENDING],
    pending_len: usize,
    /// Media timestamp of the next sample to be appended to the FIFO.
    play_ts: Option<i64>,
    /// How long each of the latest [`WAITS`] frames' packets sat in the buffer before it was
    /// decoded (ticks; 0 for a frame that was concealed), as a ring.
    waits: [i64; WAITS],
    waits_next: usize,
}

impl<D: FrameDecoder> AudioPlayout<D> {
    /// Wraps `decoder` with a buffer configured by `cfg`.
    pub fn new(cfg: PlayoutConfig, decoder: D) -> Self {
        let buffer = PlayoutBuffer::new(cfg);
        let clock_rate = cfg.clock_rate.max(1);
        let frame_ticks =
            (cfg.frame.as_nanos() * u128::from(clock_rate) / 1_000_000_000).max(1) as i64;
        let frame_samples = frame_ticks as usize;
        Self {
            buffer,
            decoder,
            conceal_run: 0,
            last_played: None,
            last_kind: DecodeKind::Silence,
            frame_samples,
            frame_ticks,
            clock_rate,
            fifo: vec![0.0; 4 * frame_samples],
            head: 0,
            tail: 0,
            frame: vec![0.0; frame_samples],
            prev: vec![0.0; frame_samples],
            prev_concealed: false,
            active: false,
            stretcher: Stretcher::new(),
            period: vec![0.0; MAX_LAG],
            expand: None,
            delay: DelayManager::new(frame_ticks * 48_000 / i64::from(clock_rate)),
            ts_high: None,
            pending: [0; PENDING],
            pending_len: 0,
            play_ts: None,
            waits: [0; WAITS],
            waits_next: 0,
        }
    }

    fn ticks(&self, t: Duration) -> i64 {
        (t.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as i64
    }

    fn extend_ts(&mut self, ts: u32) -> i64 {
        let ext = match self.ts_high {
            None => i64::from(ts) + (1 << 32),
            Some(h) => h + i64::from(ts.wrapping_sub(h as u32) as i32),
        };
        if self.ts_high.is_none_or(|h| ext > h) {
            self.ts_high = Some(ext);
        }
        ext
    }

    /// Offers a received packet that arrived at `now`.
    pub fn insert(&mut self, packet: Packet, now: Duration) {
        let ts = self.extend_ts(packet.timestamp);
        let before = (self.buffer.stats().received, self.buffer.stats().late);
        self.buffer.insert(packet, now);
        let s = self.buffer.stats();
        if (s.received, s.late) != before {
            self.delay.arrived(self.ticks(now) - ts);
            if self.pending_len < PENDING {
                self.pending[self.pending_len] = ts;
                self.pending_len += 1;
            }
        }
    }

    /// Produces one frame (`out.len()` samples, normally a frame) and says how the last audio
    /// decoded for it was made. Never fails: a packet the decoder rejects is concealed and
    /// counted in `decode_errors`. Same as [`Self::fill`].
    pub fn next_frame(&mut self, now: Duration, out: &mut [f32]) -> DecodeKind {
        self.fill(now, out)
    }

    /// Fills `out` (any length: what the device asks for at `now`) from the FIFO, decoding
    /// and stretching frames as it runs short. Returns how the last frame decoded during this
    /// call was made (or, if none was, the one before).
    pub fn fill(&mut self, now: Duration, out: &mut [f32]) -> DecodeKind {
        self.last_played = None;
        let now_t = self.ticks(now);
        self.delay.begin_batch(now_t);
        for i in 0..self.pending_len {
            self.delay.ready(now_t - self.pending[i]);
        }
        self.pending_len = 0;
        let mut written = 0;
        while written < out.len() {
            // Serve in pieces of at most a frame, so the FIFO never needs more than that.
            let want = (out.len() - written).min(self.frame_samples);
            while self.tail - self.head < want {
                self.produce(now_t + written as i64);
            }
            out[written..written + want].copy_from_slice(&self.fifo[self.head..self.head + want]);
            self.head += want;
            written += want;
        }
        self.last_kind
    }

    /// Decodes (or conceals) one frame onto the FIFO and steers the delay on it.
    fn produce(&mut self, now_t: i64) {
        // Make room: move the unplayed audio to the front.
        if self.head > 0 {
            self.fifo.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        let queued = self.tail as i64;
        let target = self.delay.is_ready().then(|| self.delay.target_offset());
        // The offset the next frame plays at, if it is the next in media time.
        let offset = |ts: i64| now_t + queued - ts;
        let mut excess = match (self.play_ts, target) {
            (Some(ts), Some(t)) => Some(offset(ts) - t),
            _ => None,
        };
        // Far over the target (a long stall just ended): drop whole frames first.
        let max_ticks = self.ticks(self.buffer.config().max_delay);
        while let Some(e) = excess {
            if e <= max_ticks || !self.buffer.skip_head() {
                break;
            }
            excess = Some(e - self.frame_ticks);
            self.play_ts = self.play_ts.map(|t| t + self.frame_ticks);
        }
        let give_up = excess.is_some_and(|e| e >= 0);
        let mut frame = std::mem::take(&mut self.frame);
        let (kind, media_ts) = self.decode_next(give_up, &mut frame);
        let waited = match (kind, media_ts) {
            (DecodeKind::Normal, Some(_)) => self.buffer.last_arrival().map_or(0, |a| now_t - a),
            _ => 0,
        };
        self.waits[self.waits_next] = waited.max(0);
        self.waits_next = (self.waits_next + 1) % WAITS;
        // A packet sets the timeline (it may jump after DTX); a lost frame advances it; a wait
        // inserts audio without advancing.
        let frame_offset = match media_ts {
            Some(ts) => {
                self.play_ts = Some(ts + self.frame_ticks);
                target.map(|t| offset(ts) - t)
            }
            None => None,
        };
        let mut skip = 0;
        if matches!(kind, DecodeKind::Normal | DecodeKind::Fec) && self.prev_concealed {
            skip = self.stretcher.merge(&self.prev, &mut frame);
            let s = self.buffer.stats_mut();
            s.merged += 1;
            s.stretch_removed += skip as u64;
        }
        self.prev_concealed = matches!(kind, DecodeKind::Plc);
        let kept = self.frame_samples - skip;
        self.fifo[self.tail..self.tail + kept].copy_from_slice(&frame[skip..]);
        self.tail += kept;
        self.prev.copy_from_slice(&frame);
        self.frame = frame;

        // Steer on real audio only (concealment already moved the timeline).
        let Some(e) = frame_offset else {
            self.update_delay_stats(now_t);
            return;
        };
        let ticks_to_samples = |t: i64| (t.max(0) as usize).min(self.frame_samples);
        // Shorten only by what is here, or by how long the latest packets all sat waiting:
        // when the excess is the path's own delay (every packet comes late), accelerating
        // cannot lower it, only run the buffer dry. Packets that all waited, though, could
        // have been played that much sooner (the phase between their arrival and the
        // device's calls): shedding it is what brings a clean path down to its floor.
        let held = self.tail as i64 - self.frame_samples as i64
            + self.buffer.len() as i64 * self.frame_ticks;
        let room = held.max(self.steady_wait());
        if e > ACCELERATE_MARGIN && room > 0 {
            let budget = ticks_to_samples(e.min(room));
            if let Some(r) = self
                .stretcher
                .accelerate(&mut self.fifo[..self.tail], budget)
            {
                self.tail -= r.samples;
                let s = self.buffer.stats_mut();
                s.accelerated += 1;
                s.stretch_removed += r.samples as u64;
            }
        } else if e < -EXPAND_MARGIN {
            let budget = ticks_to_samples(-e).min(self.fifo.len() - self.tail);
            let len = self.tail;
            if let Some(r) = self
                .stretcher
                .expand(&mut self.fifo[..len + budget], len, budget)
            {
                self.tail += r.samples;
                let s = self.buffer.stats_mut();
                s.preemptive_expanded += 1;
                s.stretch_inserted += r.samples as u64;
            }
        }
        self.update_delay_stats(now_t);
    }

    /// The least time any of the latest frames' packets waited in the buffer: the phase
    /// between the packets' arrival and the device's calls that every one of them showed.
    /// Shedding it cannot run the buffer dry while the path stays as it is; a path whose delay
    /// rises (packets ever later, or lost) shows small waits and is left alone.
    fn steady_wait(&self) -> i64 {
        self.waits.iter().copied().min().unwrap_or(0)
    }

    /// Delay figures in time: how long after the fastest recent arrival the next frame will
    /// play, and the same for the target.
    fn update_delay_stats(&mut self, now_t: i64) {
        let (Some(ts), true) = (self.play_ts, self.delay.is_ready()) else {
            return;
        };
        let base = self.delay.min_transit();
        let delay = now_t + (self.tail - self.head) as i64 - ts - base;
        let target = self.delay.target_offset() - base;
        let rate = i64::from(self.clock_rate);
        let dur = |t: i64| Duration::from_micros((t.max(0) * 1_000_000 / rate) as u64);
        let s = self.buffer.stats_mut();
        s.delay = dur(delay);
        s.max_delay = s.max_delay.max(s.delay);
        s.target = dur(target);
    }

    /// One frame from the buffer's decision, with the media timestamp of the packet it
    /// decoded (if it decoded one).
    fn decode_next(&mut self, give_up: bool, out: &mut [f32]) -> (DecodeKind, Option<i64>) {
        let (kind, ts) = match self.buffer.pop_unsteered(give_up, self.active) {
            Playout::Packet(p) => {
                let ts = self.extend_ts(p.timestamp);
                match self.decoder.decode(&p.payload, out) {
                    Ok(()) => {
                        self.last_played = Some(p.timestamp);
                        let energy: f32 = out.iter().map(|v| v * v).sum();
                        self.active = energy > ACTIVE_MEAN_SQUARE * out.len() as f32;
                        (DecodeKind::Normal, Some(ts))
                    }
                    Err(e) => {
                        tracing::debug!("playout: undecodable packet {}: {e}", p.seq);
                        self.buffer.stats_mut().decode_errors += 1;
                        self.buffer.stats_mut().concealed += 1;
                        (self.conceal(out), Some(ts))
                    }
                }
            }
            Playout::Lost { .. } => {
                self.play_ts = self.play_ts.map(|t| t + self.frame_ticks);
                let recovered = match self.buffer.peek_next() {
                    Some(next) if self.conceal_run < MAX_CONCEAL_RUN => {
                        self.decoder.recover(&next.payload, out).is_ok()
                    }
                    _ => false,
                };
                if recovered {
                    self.buffer.stats_mut().fec_recovered += 1;
                    (DecodeKind::Fec, None)
                } else {
                    (self.conceal(out), None)
                }
            }
            Playout::Wait => (self.conceal(out), None),
            _ => {
                out.fill(0.0);
                (DecodeKind::Silence, None)
            }
        };
        self.delay.frame_done(self.buffer.stats().lost);
        if matches!(kind, DecodeKind::Normal | DecodeKind::Fec) {
            self.conceal_run = 0;
            self.expand = None;
        }
        self.last_kind = kind;
        (kind, ts)
    }

    fn conceal(&mut self, out: &mut [f32]) -> DecodeKind {
        self.conceal_run = self.conceal_run.saturating_add(1);
        if self.conceal_run > MAX_CONCEAL_RUN || self.decoder.conceal(out).is_err() {
            out.fill(0.0);
            return DecodeKind::Silence;
        }
        // Voiced audio before the gap: continue its last pitch period, in phase, fading after
        // a few frames (NetEq's expand). The codec's own concealment fades voiced audio to
        // near silence within a frame; it still runs above, to keep the decoder in step.
        if self.conceal_run == 1 && self.active && self.prev.len() >= 4 * MIN_LAG {
            let span = (2 * MAX_LAG).min(self.prev.len());
            let x = &self.prev[self.prev.len() - span..];
            self.expand = match self.stretcher.pitch(x, MIN_LAG, span / 2) {
                Some((lag, corr)) if corr >= EXPAND_VOICED => {
                    let start = self.prev.len() - lag;
                    self.period[..lag].copy_from_slice(&self.prev[start..]);
                    Some((lag, 0))
                }
                _ => None,
            };
        }
        if let Some((lag, pos)) = self.expand {
            let gain = |run: u32| {
                let over = run.saturating_sub(EXPAND_FULL) as f32;
                (1.0 - over / EXPAND_FADE as f32).max(0.0)
            };
            let (g0, g1) = (gain(self.conceal_run - 1), gain(self.conceal_run));
            let n = out.len() as f32;
            for (i, s) in out.iter_mut().enumerate() {
                let g = g0 + (g1 - g0) * (i as f32 + 1.0) / n;
                *s = self.period[(pos + i) % lag] * g;
            }
            self.expand = Some((lag, (pos + out.len()) % lag));
        }
        DecodeKind::Plc
    }

    /// The RTP timestamp of the packet the last `fill` (or `next_frame`) decoded, if it
    /// decoded one (for tracing a frame through the pipeline).
    pub fn last_played(&self) -> Option<u32> {
        self.last_played
    }

    /// Counters and delay figures.
    pub fn stats(&self) -> &PlayoutStats {
        self.buffer.stats()
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &PlayoutBuffer {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playout::stretch::tests::{max_step, zc_hz};

    /// A decoder whose packets carry the index of the frame of a 250 Hz tone they stand for.
    struct ToneDecoder {
        frame: usize,
        next: u64,
    }

    impl ToneDecoder {
        fn write(&mut self, index: u64, out: &mut [f32]) {
            for (i, s) in out.iter_mut().enumerate() {
                let t = (index as usize * self.frame + i) as f32 / 48_000.0;
                *s = 0.5 * (std::f32::consts::TAU * 250.0 * t).sin();
            }
            self.next = index + 1;
        }
    }

    impl FrameDecoder for ToneDecoder {
        fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
            let index = u64::from_be_bytes(
                payload
                    .try_into()
                    .map_err(|_| CodecError::BadPacketLength(payload.len()))?,
            );
            self.write(index, out);
            Ok(())
        }
        fn recover(&mut self, _next: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
            let i = self.next;
            self.write(i, out);
            Ok(())
        }
        fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
            // Ideal concealment: the tone goes on.
            let i = self.next;
            self.write(i, out);
            Ok(())
        }
    }

    fn packet(index: u64, frame: usize) -> Packet {
        Packet {
            seq: index as u16,
            timestamp: (index as u32).wrapping_mul(frame as u32),
            payload: index.to_be_bytes().to_vec(),
        }
    }

    /// What a virtual-time run produced.
    struct Sim {
        out: Vec<f32>,
        /// (time, delay, target) after every device callback.
        trace: Vec<(Duration, Duration, Duration)>,
        stats: PlayoutStats,
        frames: u64,
    }

    /// `secs` of a 250 Hz tone in frames of `frame` samples; frame k is sent at its media time
    /// and arrives at `arrival(k)` (ms; `None`: lost). The device asks for 10 ms every 10 ms,
    /// 5 ms out of phase with the sender.
    fn simulate(frame: usize, secs: u64, arrival: impl Fn(u64) -> Option<f64>) -> Sim {
        let mut p = AudioPlayout::new(
            PlayoutConfig {
                frame: Duration::from_micros(frame as u64 * 1000 / 48),
                ..PlayoutConfig::default()
            },
            ToneDecoder { frame, next: 0 },
        );
        let frame_ms = frame as f64 / 48.0;
        let frames = (secs as f64 * 1000.0 / frame_ms) as u64;
        let mut wire: Vec<(f64, u64)> = (0..frames)
            .filter_map(|k| arrival(k).map(|at| (at, k)))
            .collect();
        wire.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut next = 0;
        let mut period = vec![0.0f32; 480];
        let mut out = Vec::new();
        let mut trace = Vec::new();
        for tick in 0..secs * 100 {
            let now = tick as f64 * 10.0 + 5.0;
            while next < wire.len() && wire[next].0 <= now {
                let (at, k) = wire[next];
                p.insert(packet(k, frame), Duration::from_secs_f64(at / 1000.0));
                next += 1;
            }
            let t = Duration::from_secs_f64(now / 1000.0);
            p.fill(t, &mut period);
            out.extend_from_slice(&period);
            trace.push((t, p.stats().delay, p.stats().target));
        }
        Sim {
            out,
            trace,
            stats: *p.stats(),
            frames,
        }
    }

    fn tone_step() -> f32 {
        let tone: Vec<f32> = (0..4800)
            .map(|i| 0.5 * (std::f32::consts::TAU * 250.0 * i as f32 / 48_000.0).sin())
            .collect();
        max_step(&tone)
    }

    /// A seeded uniform draw in [0, 1) per frame and purpose.
    fn draw(k: u64, salt: u64) -> f64 {
        let mut x =
            k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// On a clean path the delay settles at the phase between the packets' arrival and the
    /// next device callback (4 ms here) plus the guard, for both frame lengths: a whole frame
    /// buffer would hold 10 or 20 ms more.
    #[test]
    fn a_clean_path_converges_to_the_arrival_phase() {
        // Steady from the start, and after a start whose first packets came 15 ms late (the
        // decoding then sits a device period behind the arrivals, with nothing buffered:
        // only the packets' waits show the delay that can go).
        for (frame, late_start) in [(960usize, 0.0), (480, 0.0), (960, 15.0), (480, 15.0)] {
            let frame_ms = frame as f64 / 48.0;
            let sim = simulate(frame, 5, |k| {
                // Back to the steady phase over five packets (no reordering).
                let late = (late_start - 3.0 * k.saturating_sub(10) as f64).max(0.0);
                Some(k as f64 * frame_ms + 1.0 + late)
            });
            let s = sim.stats;
            eprintln!("{frame} {late_start}: {s:?}");
            assert_eq!((s.lost, s.late, s.underruns), (0, 0, 0), "{s:?}");
            for &(t, delay, target) in &sim.trace[200..] {
                // Voiced audio is shortened by whole pitch periods: what is left over is
                // under one period of the 250 Hz tone (4.2 ms).
                let floor = if late_start > 0.0 { 10 } else { 6 };
                assert!(
                    delay <= Duration::from_millis(floor),
                    "{frame} {late_start} at {t:?}: {delay:?}"
                );
                assert!(target <= Duration::from_millis(6), "{target:?}");
            }
            assert!(max_step(&sim.out) <= 1.1 * tone_step());
            assert!((zc_hz(&sim.out[48_000..]) - 250.0).abs() < 1.0);
        }
    }

    /// 30 ms of jitter and 5 % loss: nearly every packet is in time (late loss at most 2 %)
    /// at a delay near the jitter plus, as the path loses packets, about a frame for the
    /// packet after a gap (its FEC), not far above that.
    #[test]
    fn jitter_and_loss_keep_late_loss_low() {
        for frame in [960usize, 480] {
            let frame_ms = frame as f64 / 48.0;
            let sim = simulate(frame, 30, |k| {
                (draw(k, 1) >= 0.05).then(|| k as f64 * frame_ms + 1.0 + 30.0 * draw(k, 2))
            });
            let s = sim.stats;
            let mean_ms = sim.trace[300..]
                .iter()
                .map(|(_, d, _)| d.as_secs_f64() * 1000.0)
                .sum::<f64>()
                / (sim.trace.len() - 300) as f64;
            eprintln!("{frame}: mean delay {mean_ms:.1} ms, {s:?}");
            assert!(
                s.late * 50 <= sim.frames,
                "late {} of {}",
                s.late,
                sim.frames
            );
            assert!(s.lost > 0 && s.accelerated > 0, "{s:?}");
            assert!((25.0..=45.0 + frame_ms).contains(&mean_ms), "{mean_ms}");
            assert!(max_step(&sim.out) <= 1.1 * tone_step());
        }
    }

    /// 5 % loss with 30 ms of jitter: the packet after a lost one carries its FEC, and the
    /// delay leaves room for it to come, so most lost frames are rebuilt rather than
    /// concealed (half of them were, when the target only covered the jitter).
    #[test]
    fn lost_frames_are_recovered_from_the_next_packet() {
        for frame in [960usize, 480] {
            let frame_ms = frame as f64 / 48.0;
            let sim = simulate(frame, 30, |k| {
                (draw(k, 6) >= 0.05).then(|| k as f64 * frame_ms + 1.0 + 30.0 * draw(k, 7))
            });
            let s = sim.stats;
            eprintln!("{frame}: {s:?}");
            assert!(s.lost >= 40, "{s:?}");
            assert!(s.fec_recovered * 4 >= s.lost * 3, "{frame}: {s:?}");
            eprintln!("{frame}: step {}", max_step(&sim.out) / tone_step());
        }
    }

    /// A 200 ms stall on top of 30 ms jitter: the audio built up while waiting is shed by
    /// accelerating, and the delay is back within 10 % of the target it had before the stall
    /// in under 2 s, without a click.
    #[test]
    fn a_200_ms_spike_is_recovered_from_within_2_s() {
        for frame in [960usize, 480] {
            let frame_ms = frame as f64 / 48.0;
            let sim = simulate(frame, 8, |k| {
                let sent = k as f64 * frame_ms;
                let at = sent + 1.0 + 30.0 * draw(k, 3);
                Some(if (4000.0..4200.0).contains(&at) {
                    4200.0 + 30.0 * draw(k, 4)
                } else {
                    at
                })
            });
            let s = sim.stats;
            let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
            let before: Vec<Duration> = sim
                .trace
                .iter()
                .filter(|(t, _, _)| *t >= ms(3000.0) && *t < ms(4000.0))
                .map(|(_, _, target)| *target)
                .collect();
            let target = before.iter().sum::<Duration>() / before.len() as u32;
            let peak = sim
                .trace
                .iter()
                .map(|(_, d, _)| *d)
                .max()
                .unwrap_or_default();
            let back = sim
                .trace
                .iter()
                .find(|(t, d, _)| *t >= ms(4200.0) && *d <= target.mul_f64(1.1))
                .map(|(t, _, _)| *t - ms(4200.0));
            eprintln!("{frame}: target {target:?}, peak {peak:?}, back after {back:?}, {s:?}");
            assert!(peak >= ms(150.0), "the stall built up delay: {peak:?}");
            let back = back.expect("the delay came back");
            assert!(back <= ms(2000.0), "{back:?}");
            assert!(s.accelerated > 0 && s.stretch_removed > 48 * 100, "{s:?}");
            assert!(max_step(&sim.out) <= 1.1 * tone_step());
        }
    }

    /// The path's delay steps up by 180 ms (a bottleneck queue fills when the link rate
    /// drops) and stays there for a second before the queue drains. The gap while the queue
    /// fills is concealed once; after it the late packets are played at the new delay, not
    /// fought: accelerating would only empty the buffer, as every packet comes 180 ms late,
    /// and turn into more concealment and packets given up. When the queue drains, the
    /// delay comes back down.
    #[test]
    fn a_delay_step_is_played_at_the_new_delay() {
        for frame in [960usize, 480] {
            let frame_ms = frame as f64 / 48.0;
            let sim = simulate(frame, 6, |k| {
                let sent = k as f64 * frame_ms;
                let queue = if sent < 2000.0 {
                    0.0
                } else if sent < 3200.0 {
                    180.0 * ((sent - 2000.0) / 100.0).min(1.0)
                } else {
                    (180.0 - (sent - 3200.0)).max(0.0)
                };
                Some(sent + 1.0 + queue + 8.0 * draw(k, 5))
            });
            let s = sim.stats;
            let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
            let end_delay = sim.trace.last().map(|x| x.1).unwrap_or_default();
            eprintln!("{frame}: end delay {end_delay:?}, {s:?}");
            // The onset gap (180 ms, plus the path's jitter) is the concealment; at most one
            // packet is given up too early. Fighting the new delay conceals 50 frames of 20 ms here.
            let gap = (240.0 / frame_ms) as u64;
            assert!(s.concealed <= gap, "{s:?}");
            assert!(s.lost + s.late <= 2, "{s:?}");
            assert!(end_delay <= ms(40.0), "{end_delay:?}");
            assert!(max_step(&sim.out) <= 1.1 * tone_step());
        }
    }

    /// A decoder whose own concealment is silence and that has no FEC (Opus's concealment
    /// fades a steady voice to near silence within a frame).
    struct SilentPlc(ToneDecoder);

    impl FrameDecoder for SilentPlc {
        fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
            self.0.decode(payload, out)
        }
        fn recover(&mut self, _next: &[u8], _out: &mut [f32]) -> Result<(), CodecError> {
            Err(CodecError::BadPacketLength(0))
        }
        fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
            out.fill(0.0);
            Ok(())
        }
    }

    /// Three frames of a voiced stream are lost: the gap is filled by the last pitch period
    /// repeated in phase (full level, then fading), not by the codec's silence, and the
    /// audio after it joins without a click.
    #[test]
    fn a_voiced_gap_is_concealed_by_repeating_the_pitch_period() {
        let mut p = AudioPlayout::new(
            PlayoutConfig::default(),
            SilentPlc(ToneDecoder {
                frame: 960,
                next: 0,
            }),
        );
        let mut out = Vec::new();
        let mut pcm = vec![0.0f32; 960];
        let mut concealed = 0;
        for k in 0..150u64 {
            if !(50..53).contains(&k) {
                p.insert(packet(k, 960), Duration::from_micros(k * 20_000 + 1_000));
            }
            let kind = p.fill(Duration::from_micros(k * 20_000 + 5_000), &mut pcm);
            concealed += u32::from(kind == DecodeKind::Plc);
            out.extend_from_slice(&pcm);
        }
        // The three, and the waits before the buffer gives them up.
        assert!(concealed >= 3, "{:?}", p.stats());
        // After the start, every 20 ms of output carries the tone at a clear level (the
        // repeated period fades from the third concealed frame on: half level by the fifth).
        for (i, chunk) in out.chunks_exact(960).enumerate().skip(10) {
            let rms = (chunk.iter().map(|v| v * v).sum::<f32>() / 960.0).sqrt();
            let share = crate::media::tone_share(chunk, 48_000.0, 250.0);
            assert!(
                rms > 0.15 && share > 0.8,
                "chunk {i}: rms {rms}, share {share}"
            );
        }
        assert!(max_step(&out[9600..]) <= 1.1 * tone_step());
    }
}
