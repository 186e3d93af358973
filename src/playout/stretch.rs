//! Time-stretching of decoded speech: pitch-synchronous overlap-add (a WSOLA variant) at
//! 48 kHz, mono, on the few frames of audio the playout holds.
//!
//! - **Accelerate** removes a whole number of pitch periods: the period `L` after `start` is
//!   cross-faded into the period before it, so the waveform stays continuous and the pitch
//!   stays the same (the signal just has one period fewer).
//! - **Preemptive expand** inserts one period the same way in reverse.
//! - **Merge** blends concealed audio into the first real frame after a loss: the periodic
//!   continuation of the concealed tail is cross-faded into the new frame.
//!
//! Low-energy stretches (silence, pauses) may remove or insert any length, which is where most
//! of the delay is shed. Everything works in place on caller buffers with a fixed scratch;
//! nothing allocates after [`Stretcher::new`].
//!
//! The pitch search is coarse to fine so a stretch costs a few percent of decoding a frame
//! (`benches/frame_cost.rs`): the whole lag range at 3 kHz, five lags around its peak at
//! 6 kHz, then a climb of a few full-rate lags on every other sample of a 2.7 ms window.

/// Sample rate the module is tuned for.
pub const RATE: usize = 48_000;
/// Shortest period searched: 2.5 ms (400 Hz).
pub const MIN_LAG: usize = 120;
/// Longest period searched: 15 ms (67 Hz).
pub const MAX_LAG: usize = 720;
/// Decimation of the pitch search's middle stage (48 kHz to 6 kHz).
const DECIM: usize = 8;
/// Correlation window of the middle stage (6 kHz samples: 5.3 ms).
const DEC_WIN: usize = 32;
/// Samples held by the 6 kHz scratch: the longest period plus a window, and a little.
const DEC_LEN: usize = MAX_LAG / DECIM + DEC_WIN + 4;
/// The coarse stage runs at 3 kHz (pairs of 6 kHz samples), over the same 5.3 ms.
const COARSE_WIN: usize = DEC_WIN / 2;
/// 6 kHz lags checked either side of the 3 kHz peak.
const MID_SPAN: usize = 2;
/// How far the full-rate refinement may climb from the interpolated 6 kHz peak.
const REFINE: usize = 6;
/// Full-rate correlation window of the refinement (2.7 ms).
const FINE_WIN: usize = 128;
/// Normalised correlation a voiced stretch needs.
const VOICED: f32 = 0.85;
/// Mean square below which a stretch counts as silence (about -50 dBFS).
const SILENT: f32 = 1e-5;
/// Cross-fade of a low-energy stretch (2.5 ms).
const SILENT_FADE: usize = 120;
/// Normalised correlation at which a merge aligns the returning audio's phase.
const MERGE_ALIGN: f32 = 0.95;
/// Shortest cut of silence (0.5 ms): small enough to take the last bit of excess delay.
const MIN_QUIET_CUT: usize = 24;

/// What a stretch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretched {
    /// Samples removed (accelerate) or inserted (expand).
    pub samples: usize,
    /// Whether it was done on a low-energy stretch (any length) rather than a pitch period.
    pub quiet: bool,
    /// Length of the cross-fade (the pitch period, for voiced audio). Accelerate leaves
    /// `x[..fade]` blended and continues with what followed the removed span; expand leaves
    /// `x[..fade]`, a blended copy of the period, then the rest.
    pub fade: usize,
}

/// Pitch search and overlap-add, with preallocated scratch.
#[derive(Debug, Clone)]
pub struct Stretcher {
    /// The analysed audio at 6 kHz (sums of 8 samples).
    dec: [f32; DEC_LEN],
    /// The same at 3 kHz (sums of pairs of those).
    coarse: [f32; DEC_LEN / 2],
}

impl Default for Stretcher {
    fn default() -> Self {
        Self::new()
    }
}

/// A pitch period found by [`Stretcher::search`].
#[derive(Debug, Clone, Copy)]
struct Period {
    /// Whole-sample lag with the highest normalised correlation.
    lag: usize,
    /// That correlation.
    corr: f32,
    /// Where between `lag - 1` and `lag + 1` the correlation peaks (a parabola through the
    /// three), so `k` periods are `k * (lag + frac)` rather than `k` times the rounding.
    frac: f32,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes: independent sums keep the FPU busy, and an optimised build vectorises
    // them without reassociating.
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<8>();
    let (cb, rb) = b[..n].as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Whether the mean square of `x` is below [`SILENT`]. Stops at the first block that settles
/// it, so voice costs one block rather than a pass over everything.
fn is_silent(x: &[f32]) -> bool {
    let limit = SILENT * x.len() as f32;
    let mut sum = 0.0;
    for block in x.chunks(64) {
        sum += dot(block, block);
        if sum >= limit {
            return false;
        }
    }
    true
}

/// Normalised correlation from a cross term and two energies.
fn norm(c: f32, ea: f32, eb: f32) -> f32 {
    c / (ea * eb).sqrt().max(1e-12)
}

/// Over the even-indexed samples of `a` and `b`: their cross term and the energy of `b`.
fn corr_even(a: &[f32], b: &[f32]) -> (f32, f32) {
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<8>();
    let (cb, rb) = b[..n].as_chunks::<8>();
    let (mut c, mut e) = ([0f32; 4], [0f32; 4]);
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..4 {
            c[k] += x[2 * k] * y[2 * k];
            e[k] += y[2 * k] * y[2 * k];
        }
    }
    for (x, y) in ra.iter().zip(rb).step_by(2) {
        c[0] += x * y;
        e[0] += y * y;
    }
    ((c[0] + c[1]) + (c[2] + c[3]), (e[0] + e[1]) + (e[2] + e[3]))
}

/// Four-lane dot product for the short windows of the decimated stages.
fn dot_short(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<4>();
    let (cb, rb) = b[..n].as_chunks::<4>();
    let mut acc = [0f32; 4];
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Removes `x[..cut]` by cross-fading `x[..fade]` into `x[cut..cut + fade]` and moving the
/// rest up: the result starts like `x` and ends like it, `cut` samples shorter.
fn cut_span(x: &mut [f32], cut: usize, fade: usize) {
    let (a, b) = x.split_at_mut(cut);
    crossfade(&mut a[..fade], &b[..fade]);
    x.copy_within(cut + fade.., fade);
}

/// `a` fading out while `b` fades in, written over `a` (equal lengths).
fn crossfade(a: &mut [f32], b: &[f32]) {
    let n = a.len();
    let step = 1.0 / (n as f32 + 1.0);
    // Four weights advanced together: no conversion per sample, no serial chain.
    let mut w = [step, 2.0 * step, 3.0 * step, 4.0 * step];
    let (ca, ra) = a.as_chunks_mut::<4>();
    let (cb, rb) = b[..n].as_chunks::<4>();
    for (x, y) in ca.iter_mut().zip(cb) {
        for k in 0..4 {
            x[k] += w[k] * (y[k] - x[k]);
            w[k] += 4.0 * step;
        }
    }
    for ((x, y), w) in ra.iter_mut().zip(rb).zip(w) {
        *x += w * (*y - *x);
    }
}

/// The lag in `lo..=hi` at which `d[lag..lag + win]` best matches `d[..win]`, scored by
/// `c * |c| / energy` (normalised but for the constant head energy), with the scores of its
/// neighbours (0 at the ends). `d` must hold `hi + win` samples.
fn best_lag(d: &[f32], lo: usize, hi: usize, win: usize) -> (usize, [f32; 3]) {
    let head = &d[..win];
    let score = |c: f32, e: f32| c * c.abs() / (e + 1e-12);
    let mut e = dot_short(&d[lo..lo + win], &d[lo..lo + win]);
    let (mut best, mut prev) = ((lo, [0.0, f32::MIN, 0.0]), 0.0);
    for lag in lo..=hi {
        if lag > lo {
            let (out, inn) = (d[lag - 1], d[lag + win - 1]);
            e = (e - out * out + inn * inn).max(0.0);
        }
        let s = score(dot_short(head, &d[lag..lag + win]), e);
        if lag == best.0 + 1 {
            best.1[2] = s;
        }
        if s > best.1[1] {
            best = (lag, [prev, s, 0.0]);
        }
        prev = s;
    }
    best
}

impl Stretcher {
    /// A stretcher with its scratch.
    pub fn new() -> Self {
        Self {
            dec: [0.0; DEC_LEN],
            coarse: [0.0; DEC_LEN / 2],
        }
    }

    /// The lag in `min..=max` at which `x` best repeats, with its normalised correlation.
    /// `x` must hold at least `2 * max` samples. Coarse search at 3 kHz, narrowed at 6 kHz,
    /// refined at 48 kHz.
    pub fn pitch(&mut self, x: &[f32], min: usize, max: usize) -> Option<(usize, f32)> {
        self.search(x, min, max).map(|p| (p.lag, p.corr))
    }

    fn search(&mut self, x: &[f32], min: usize, max: usize) -> Option<Period> {
        let max = max.min(MAX_LAG).min(x.len() / 2);
        let min = min.max(DECIM * 2);
        if min > max {
            return None;
        }
        // Decimate by summing every other sample of each eight (a crude low-pass with nulls at
        // 6, 12 and 18 kHz, enough for voice pitch; the scale does not matter to normalised
        // correlation), only as far as the longest lag and a window.
        let n = (x.len() / DECIM).min(max / DECIM + DEC_WIN + 2);
        let (chunks, _) = x.as_chunks::<DECIM>();
        for (d, c) in self.dec[..n].iter_mut().zip(chunks) {
            *d = (c[0] + c[2]) + (c[4] + c[6]);
        }
        let dec = &self.dec[..n];
        let (pairs, _) = dec.as_chunks::<2>();
        let n2 = pairs.len();
        for (d, p) in self.coarse[..n2].iter_mut().zip(pairs) {
            *d = p[0] + p[1];
        }
        let coarse = &self.coarse[..n2];

        // 3 kHz over the whole range.
        let (lo2, hi2) = (min.div_ceil(2 * DECIM), max.div_ceil(2 * DECIM));
        let win2 = COARSE_WIN.min(n2.saturating_sub(hi2)).max(1);
        let hi2 = hi2.min(n2.saturating_sub(win2));
        if lo2 > hi2 {
            return None;
        }
        let (p2, _) = best_lag(coarse, lo2, hi2, win2);

        // 6 kHz around it; a parabola through the peak and its neighbours puts it within a
        // sample or two at 48 kHz.
        let (lo, hi) = ((min / DECIM).max(1), max.div_ceil(DECIM));
        let win = DEC_WIN.min(n.saturating_sub(hi)).max(1);
        let hi = hi.min(n.saturating_sub(win));
        let from = (2 * p2).saturating_sub(MID_SPAN).max(lo);
        let to = (2 * p2 + MID_SPAN).min(hi);
        if from > to {
            return None;
        }
        let (d, [a, b, c]) = best_lag(dec, from, to, win);
        let mut centre = (d * DECIM) as f32;
        let den = a - 2.0 * b + c;
        if d > from && d < to && den < 0.0 {
            centre += (0.5 * (a - c) / den).clamp(-1.0, 1.0) * DECIM as f32;
        }
        let centre = (centre.round().max(0.0) as usize).clamp(min, max);
        Some(self.climb(x, centre, min, max))
    }

    /// Full-rate refinement: from `start`, moves to the neighbouring lag while its normalised
    /// correlation is higher (at most [`REFINE`] steps), within `min..=max`. Lags are
    /// full-rate; the window takes every other sample (the same 2.7 ms for half the work, and
    /// speech has little above 12 kHz to lose).
    fn climb(&self, x: &[f32], start: usize, min: usize, max: usize) -> Period {
        let lo = start.saturating_sub(REFINE).max(min);
        let hi = (start + REFINE).min(max);
        let w = FINE_WIN.min(x.len() - hi);
        let a = &x[..w];
        let ea = corr_even(a, a).0;
        let at = |lag: usize| {
            let (c, e) = corr_even(a, &x[lag..lag + w]);
            norm(c, ea, e)
        };
        let mut lag = start;
        let mut s = at(lag);
        let mut left = (lag > lo).then(|| at(lag - 1));
        let mut right = (lag < hi).then(|| at(lag + 1));
        loop {
            match (left, right) {
                (Some(sl), _) if sl > s && right.is_none_or(|sr| sl >= sr) => {
                    (lag, right, s) = (lag - 1, Some(s), sl);
                    left = (lag > lo).then(|| at(lag - 1));
                }
                (_, Some(sr)) if sr > s => {
                    (lag, left, s) = (lag + 1, Some(s), sr);
                    right = (lag < hi).then(|| at(lag + 1));
                }
                _ => break,
            }
        }
        let mut frac = 0.0;
        if let (Some(sl), Some(sr)) = (left, right) {
            let den = sl - 2.0 * s + sr;
            if den < 0.0 {
                frac = (0.5 * (sl - sr) / den).clamp(-0.5, 0.5);
            }
        }
        Period { lag, corr: s, frac }
    }

    /// Shortens `x[..len]` by up to `budget` samples, in place; returns what was removed.
    /// Voiced audio loses whole pitch periods (the longest multiple that fits the budget),
    /// silence any length; audio that is neither (noise, onsets) is left alone.
    pub fn accelerate(&mut self, x: &mut [f32], budget: usize) -> Option<Stretched> {
        let len = x.len();
        if budget < MIN_QUIET_CUT || len < 2 * MIN_LAG {
            return None;
        }
        if is_silent(x) {
            let cut = budget.min(len - SILENT_FADE);
            cut_span(x, cut, SILENT_FADE.min(cut));
            return Some(Stretched {
                samples: cut,
                quiet: true,
                fade: SILENT_FADE.min(cut),
            });
        }
        let p = self.search(x, MIN_LAG, budget.min(len / 2))?;
        if p.corr < VOICED {
            return None;
        }
        let lag = p.lag;
        // Remove as many whole periods as fit the budget and half the audio (periodic audio
        // repeats at any multiple of its period). An integer lag is up to half a sample off
        // the true period, k times over: k periods are counted from the interpolated one.
        let k = (budget.min(len / 2) / lag).max(1);
        let cut = (k as f32 * (lag as f32 + p.frac)).round() as usize;
        let cut = cut.max(lag);
        if cut + lag > len {
            return None;
        }
        cut_span(x, cut, lag);
        Some(Stretched {
            samples: cut,
            quiet: false,
            fade: lag,
        })
    }

    /// Lengthens `x[..len]` by up to `budget` samples (one pitch period, or any length of
    /// silence), in place; `x.len()` must have room for `len + budget`. Returns what was
    /// inserted.
    pub fn expand(&mut self, x: &mut [f32], len: usize, budget: usize) -> Option<Stretched> {
        let budget = budget.min(x.len().saturating_sub(len));
        if budget < MIN_LAG.min(SILENT_FADE) || len < 2 * MIN_LAG {
            return None;
        }
        let lag = if is_silent(&x[..len]) {
            budget.min(len / 2)
        } else {
            let p = self.search(&x[..len], MIN_LAG, budget.min(len / 2))?;
            if p.corr < VOICED {
                return None;
            }
            p.lag
        };
        // x[..lag] ++ fade(x[lag..2lag] -> x[..lag]) ++ x[lag..len]
        x.copy_within(lag..len, 2 * lag);
        let (head, tail) = x.split_at_mut(2 * lag);
        let (first, mid) = head.split_at_mut(lag);
        mid.copy_from_slice(&tail[..lag]);
        crossfade(mid, first);
        // `mid` now fades from the period after `first` into `first` itself, which the copy
        // of x[lag..] that follows continues without a break.
        Some(Stretched {
            samples: lag,
            quiet: is_silent(first),
            fade: lag,
        })
    }

    /// Blends `new` (the first real audio after concealment) into the audio that came before
    /// it, whose last samples are `tail`: the periodic continuation of `tail` fades into `new`
    /// over a period (at most half of what is left of `new`). For voiced audio it first finds
    /// where, within one period, `new` best continues that continuation, and returns that
    /// offset: the caller drops `new[..offset]`, so the waveform keeps its phase across the
    /// seam instead of jumping (concealment rarely ends in phase with the real audio, and a
    /// phase jump cancels the pitch in whatever window spans it).
    pub fn merge(&mut self, tail: &[f32], new: &mut [f32]) -> usize {
        if tail.len() < 2 * MIN_LAG || new.len() < 2 * MIN_LAG {
            return 0;
        }
        let voiced = !is_silent(tail);
        let lag = if voiced {
            // Search the end of the tail: reverse order is not needed, the last 2*max samples
            // are periodic if any are.
            let span = (2 * MAX_LAG).min(tail.len());
            match self.pitch(&tail[tail.len() - span..], MIN_LAG, span / 2) {
                Some((lag, _)) => lag,
                None => return 0,
            }
        } else {
            SILENT_FADE
        };
        let start = tail.len() - lag;
        let cont = |i: usize| tail[start + i % lag];
        // The offset (under a period, and leaving most of `new`) where `new` correlates best
        // with the continuation over one period; taken only where both are clearly the same
        // periodic sound (dropping real speech at every seam costs more than a phase jump).
        let mut offset = 0;
        if voiced {
            let win = lag.min(new.len() / 4);
            let e_cont: f32 = (0..win).map(|i| cont(i) * cont(i)).sum();
            let mut best = MERGE_ALIGN;
            for d in 0..lag.min(new.len() / 2 - win) {
                let seg = &new[d..d + win];
                let (mut c, mut e) = (0f32, 0f32);
                for (i, v) in seg.iter().enumerate() {
                    c += cont(i) * v;
                    e += v * v;
                }
                let score = c / (e * e_cont).max(1e-12).sqrt();
                if score > best {
                    best = score;
                    offset = d;
                }
            }
        }
        let new = &mut new[offset..];
        let fade = lag.min(new.len() / 2);
        let step = 1.0 / (fade as f32 + 1.0);
        for (i, s) in new[..fade].iter_mut().enumerate() {
            let w = (i as f32 + 1.0) * step;
            *s = cont(i) * (1.0 - w) + *s * w;
        }
        offset
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tone(freq: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 * (std::f32::consts::TAU * freq * i as f32 / RATE as f32).sin())
            .collect()
    }

    /// Largest sample-to-sample step.
    pub(crate) fn max_step(x: &[f32]) -> f32 {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    /// Frequency from positive-going zero crossings.
    pub(crate) fn zc_hz(x: &[f32]) -> f32 {
        let ups: Vec<usize> = (1..x.len())
            .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
            .collect();
        if ups.len() < 2 {
            return 0.0;
        }
        (ups.len() - 1) as f32 * RATE as f32 / (ups[ups.len() - 1] - ups[0]) as f32
    }

    #[test]
    fn pitch_of_a_tone() {
        let x = tone(200.0, 1920);
        let (lag, c) = Stretcher::new().pitch(&x, MIN_LAG, 700).unwrap();
        assert_eq!(lag, 240, "{c}");
        assert!(c > 0.99);
    }

    #[test]
    fn accelerate_removes_whole_periods_of_a_tone_without_a_click() {
        let mut s = Stretcher::new();
        for (freq, budget) in [(200.0f32, 300usize), (150.0, 480), (440.0, 300)] {
            let mut x = tone(freq, 960);
            let before = x.clone();
            let r = s.accelerate(&mut x, budget).unwrap();
            assert!(!r.quiet);
            let period = RATE as f32 / freq;
            let periods = r.samples as f32 / period;
            assert!((periods - periods.round()).abs() < 0.05, "{freq}: {r:?}");
            assert!(r.samples <= budget && r.samples > 0);
            let out = &x[..960 - r.samples];
            // The shortened frame joins the original's continuation without a step.
            assert!(max_step(out) <= 1.05 * max_step(&before), "{freq}");
            assert!((out[out.len() - 1] - before[959]).abs() < 1e-6);
        }
    }

    #[test]
    fn several_periods_are_cut_from_the_interpolated_period() {
        // 330 Hz: 145.45 samples a period, so six whole-sample lags would miss by 2.7 samples.
        let period = RATE as f32 / 330.0;
        let mut x = tone(330.0, 1920);
        let before = x.clone();
        let p = Stretcher::new().search(&x, MIN_LAG, 960).unwrap();
        assert_eq!(p.lag, 145, "{p:?}");
        assert!((p.frac - 0.45).abs() < 0.1, "{p:?}");
        let r = Stretcher::new().accelerate(&mut x, 960).unwrap();
        let periods = r.samples as f32 / period;
        assert!(
            periods > 5.5 && (periods - periods.round()).abs() < 0.01,
            "{r:?}"
        );
        let out = &x[..1920 - r.samples];
        assert!(max_step(out) <= 1.02 * max_step(&before));
        assert!((zc_hz(out) - 330.0).abs() < 1.0, "{}", zc_hz(out));
    }

    #[test]
    fn expand_inserts_whole_periods_of_a_tone_without_a_click() {
        let mut s = Stretcher::new();
        let mut x = tone(250.0, 960);
        let before = x.clone();
        x.resize(960 + 480, 0.0);
        let r = s.expand(&mut x, 960, 480).unwrap();
        assert!(r.samples > 0 && r.samples.is_multiple_of(192), "{r:?}");
        let out = &x[..960 + r.samples];
        assert!(max_step(out) <= 1.05 * max_step(&before));
        assert!((zc_hz(out) - 250.0).abs() < 2.0, "{}", zc_hz(out));
    }

    #[test]
    fn noise_is_not_stretched_and_silence_is_cut_freely() {
        let mut s = Stretcher::new();
        let mut seed = 1u32;
        let mut noise: Vec<f32> = (0..960)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        assert_eq!(s.accelerate(&mut noise, 400), None);
        let mut quiet = vec![0.0f32; 960];
        let r = s.accelerate(&mut quiet, 500).unwrap();
        assert_eq!((r.samples, r.quiet), (500, true));
    }

    #[test]
    fn merge_hides_a_phase_jump() {
        // Concealed audio that drifted half a period against the real audio that resumes.
        let tail = tone(300.0, 960);
        let mut new: Vec<f32> = (0..960)
            .map(|i| {
                let t = (960 + i) as f32 + 40.0;
                0.5 * (std::f32::consts::TAU * 300.0 * t / RATE as f32).sin()
            })
            .collect();
        let joined = |new: &[f32]| {
            let mut v = tail.clone();
            v.extend_from_slice(new);
            max_step(&v)
        };
        let smooth = max_step(&tail);
        assert!(joined(&new) > 3.0 * smooth, "the test signal has a click");
        let skip = Stretcher::new().merge(&tail, &mut new);
        let new = &new[skip..];
        assert!(joined(new) <= 1.3 * smooth, "{} vs {smooth}", joined(new));
        // Aligned, not just smoothed: tail and new together are one unbroken tone, so its
        // power over any window spanning the seam stays at the tone's.
        let mut v = tail.clone();
        v.extend_from_slice(new);
        let w = &v[960 - 600..960 + 600];
        let e: f32 = w.iter().map(|x| x * x).sum();
        let (mut c, mut q) = (0f32, 0f32);
        for (i, x) in w.iter().enumerate() {
            let ph = std::f32::consts::TAU * 300.0 * i as f32 / RATE as f32;
            c += x * ph.cos();
            q += x * ph.sin();
        }
        let share = 2.0 * (c * c + q * q) / (w.len() as f32 * e);
        assert!(share > 0.95, "the tone's share across the seam: {share}");
    }
}
