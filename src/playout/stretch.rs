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

/// Sample rate the module is tuned for.
pub const RATE: usize = 48_000;
/// Shortest period searched: 2.5 ms (400 Hz).
pub const MIN_LAG: usize = 120;
/// Longest period searched: 15 ms (67 Hz).
pub const MAX_LAG: usize = 720;
/// Decimation of the coarse pitch search (48 kHz to 6 kHz).
const DECIM: usize = 8;
/// Samples held by the decimated scratch: enough for two longest periods plus a window.
const DEC_LEN: usize = (3 * MAX_LAG) / DECIM + 8;
/// Coarse correlation window (decimated samples: 5.3 ms).
const DEC_WIN: usize = 32;
/// Lags checked either side of the interpolated coarse peak at full rate.
const REFINE: usize = 3;
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
    dec: [f32; DEC_LEN],
}

impl Default for Stretcher {
    fn default() -> Self {
        Self::new()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four lanes so the compiler can vectorise without reassociation.
    let mut acc = [0f32; 4];
    let ca = a.chunks_exact(4);
    let cb = b.chunks_exact(4);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

fn mean_square(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    dot(x, x) / x.len() as f32
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
    for (i, (x, y)) in a.iter_mut().zip(b).enumerate() {
        let w = (i as f32 + 1.0) * step;
        *x = *x * (1.0 - w) + *y * w;
    }
}

impl Stretcher {
    /// A stretcher with its scratch.
    pub fn new() -> Self {
        Self {
            dec: [0.0; DEC_LEN],
        }
    }

    /// The lag in `min..=max` at which `x` best repeats, with its normalised correlation.
    /// `x` must hold at least `2 * max` samples. Coarse search at 6 kHz, refined at 48 kHz.
    pub fn pitch(&mut self, x: &[f32], min: usize, max: usize) -> Option<(usize, f32)> {
        let max = max.min(MAX_LAG).min(x.len() / 2);
        let min = min.max(DECIM * 2);
        if min > max {
            return None;
        }
        // Decimate by averaging (a crude low-pass, enough for voice pitch).
        // Only as much as the longest lag plus the window needs.
        let n = (x.len() / DECIM)
            .min(DEC_LEN)
            .min(max / DECIM + DEC_WIN + 1);
        for (d, chunk) in self.dec[..n].iter_mut().zip(x.chunks_exact(DECIM)) {
            *d = chunk.iter().sum::<f32>() * (1.0 / DECIM as f32);
        }
        let dec = &self.dec[..n];
        let (lo, hi) = (min / DECIM, max / DECIM);
        let win = DEC_WIN.min(n.saturating_sub(hi)).max(1);
        if lo + win > n || hi < lo {
            return None;
        }
        let head = &dec[..win];
        let top = hi.min(n - win);
        let mut scores = [0f32; DEC_LEN];
        let mut best = (lo, f32::MIN);
        let mut e1 = dot(&dec[lo..lo + win], &dec[lo..lo + win]);
        for lag in lo..=top {
            if lag > lo {
                let (out, inn) = (dec[lag - 1], dec[lag + win - 1]);
                e1 = (e1 - out * out + inn * inn).max(0.0);
            }
            let c = dot(head, &dec[lag..lag + win]);
            let score = if c > 0.0 { c * c / (e1 + 1e-12) } else { -1.0 };
            scores[lag] = score;
            if score > best.1 {
                best = (lag, score);
            }
        }
        // Parabolic interpolation puts the peak within a sample or two at 48 kHz; check the
        // few lags around it at full rate.
        let d = best.0;
        let mut centre = (d * DECIM) as f32;
        if d > lo && d < top {
            let (a, b, c) = (scores[d - 1], scores[d], scores[d + 1]);
            let den = a - 2.0 * b + c;
            if den < 0.0 {
                centre += (0.5 * (a - c) / den).clamp(-1.0, 1.0) * DECIM as f32;
            }
        }
        let centre = centre.round().max(0.0) as usize;
        let from = centre.saturating_sub(REFINE).max(min);
        let to = (centre + REFINE).min(max);
        let w = FINE_WIN.min(x.len() - to);
        let a = &x[..w];
        let ea = dot(a, a);
        let mut fine = (from, f32::MIN);
        for lag in from..=to {
            let b = &x[lag..lag + w];
            let norm = dot(a, b) / (ea * dot(b, b)).sqrt().max(1e-12);
            if norm > fine.1 {
                fine = (lag, norm);
            }
        }
        Some((fine.0, fine.1))
    }

    /// Shortens `x[..len]` by up to `budget` samples, in place; returns what was removed.
    /// Voiced audio loses whole pitch periods (the longest multiple that fits the budget),
    /// silence any length; audio that is neither (noise, onsets) is left alone.
    pub fn accelerate(&mut self, x: &mut [f32], budget: usize) -> Option<Stretched> {
        let len = x.len();
        if budget < MIN_QUIET_CUT || len < 2 * MIN_LAG {
            return None;
        }
        if mean_square(x) < SILENT {
            let cut = budget.min(len - SILENT_FADE);
            cut_span(x, cut, SILENT_FADE.min(cut));
            return Some(Stretched {
                samples: cut,
                quiet: true,
                fade: SILENT_FADE.min(cut),
            });
        }
        let (lag, corr) = self.pitch(x, MIN_LAG, budget.min(len / 2))?;
        if corr < VOICED {
            return None;
        }
        // Remove as many whole periods as fit the budget and half the audio (periodic audio
        // repeats at any multiple of its period).
        let k = (budget.min(len / 2) / lag).max(1);
        let mut cut = k * lag;
        if k > 1 {
            // An integer lag is up to half a sample off the true period, k times over: pick
            // the cut nearest k periods by its own correlation.
            let w = FINE_WIN.min(lag);
            let a = &x[..w];
            let mut best = f32::MIN;
            for c in cut.saturating_sub(k)..=(cut + k) {
                if c + lag > len || c + w > len {
                    break;
                }
                let b = &x[c..c + w];
                let score = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1e-12);
                if score > best {
                    best = score;
                    cut = c;
                }
            }
        }
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
        let lag = if mean_square(&x[..len]) < SILENT {
            budget.min(len / 2)
        } else {
            let (lag, corr) = self.pitch(&x[..len], MIN_LAG, budget.min(len / 2))?;
            if corr < VOICED {
                return None;
            }
            lag
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
            quiet: mean_square(first) < SILENT,
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
        let voiced = mean_square(tail) >= SILENT;
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
