//! Time-stretching keeps speech clean: accelerating and expanding a tone, a chirp and a
//! synthesized voice (tests/data/speech-espeak.wav, espeak-ng 1.51, "Can you hear me now?")
//! frame by frame leaves no clicks (no sample-to-sample step beyond the signal's own largest)
//! and keeps the pitch, while really changing the length.

use sotto::playout::stretch::{RATE, Stretcher};

fn tone(freq: f32, secs: f32) -> Vec<f32> {
    let n = (secs * RATE as f32) as usize;
    (0..n)
        .map(|i| 0.5 * (std::f32::consts::TAU * freq * i as f32 / RATE as f32).sin())
        .collect()
}

/// A linear chirp from `f0` to `f1` Hz.
fn chirp(f0: f32, f1: f32, secs: f32) -> Vec<f32> {
    let n = (secs * RATE as f32) as usize;
    let k = (f1 - f0) / secs;
    (0..n)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            0.5 * (std::f32::consts::TAU * (f0 * t + 0.5 * k * t * t)).sin()
        })
        .collect()
}

/// The espeak-ng phrase, 22.05 kHz in the file, linearly resampled to 48 kHz.
fn speech() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-espeak.wav");
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let x: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    let ratio = f64::from(spec.sample_rate) / RATE as f64;
    let n = (x.len() as f64 / ratio) as usize - 1;
    (0..n)
        .map(|i| {
            let p = i as f64 * ratio;
            let j = p as usize;
            let f = (p - j as f64) as f32;
            x[j] * (1.0 - f) + x[(j + 1).min(x.len() - 1)] * f
        })
        .collect()
}

fn max_step(x: &[f32]) -> f32 {
    x.windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

/// Stretches `x` frame by frame (`frame` samples each, working on the frame plus up to a
/// frame before it still unplayed, as the playout's FIFO does): `accelerate` removes up to
/// half a frame from each, otherwise each is lengthened by up to half a frame. Also returns,
/// for each output sample, the input sample it mostly came from.
fn stretch(x: &[f32], frame: usize, accelerate: bool) -> (Vec<f32>, Vec<usize>) {
    let mut s = Stretcher::new();
    let mut out = Vec::with_capacity(x.len() * 2);
    let mut from = Vec::with_capacity(x.len() * 2);
    let mut work = vec![0.0f32; 4 * frame];
    let mut pos = vec![0usize; 4 * frame];
    let mut held = 0; // unplayed samples at the front of `work`
    for (k, chunk) in x.chunks_exact(frame).enumerate() {
        work[held..held + frame].copy_from_slice(chunk);
        for (i, p) in pos[held..held + frame].iter_mut().enumerate() {
            *p = k * frame + i;
        }
        let mut len = held + frame;
        let budget = frame / 2;
        if accelerate {
            if let Some(r) = s.accelerate(&mut work[..len], budget) {
                pos.copy_within(r.samples + r.fade..len, r.fade);
                len -= r.samples;
            }
        } else if let Some(r) = s.expand(&mut work[..len + budget], len, budget) {
            pos.copy_within(r.fade..len, 2 * r.fade);
            len += r.samples;
        }
        // Play all but up to a frame, which stays for the next round.
        let play = len.saturating_sub(frame);
        out.extend_from_slice(&work[..play]);
        from.extend_from_slice(&pos[..play]);
        work.copy_within(play..len, 0);
        pos.copy_within(play..len, 0);
        held = len - play;
    }
    out.extend_from_slice(&work[..held]);
    from.extend_from_slice(&pos[..held]);
    (out, from)
}

/// Pitch (Hz) of the 30 ms window of `x` starting at `at`, if it is clearly periodic
/// (normalised autocorrelation over 0.8 at its best lag in 2.5-15 ms).
fn pitch_at(x: &[f32], at: usize) -> Option<f32> {
    let win = 1440;
    let w = x.get(at..at + win)?;
    let e: f32 = w.iter().map(|v| v * v).sum();
    if e < 1e-3 {
        return None;
    }
    let corr: Vec<f32> = (120..=720)
        .map(|lag| {
            let n = win - lag;
            let (a, b) = (&w[..n], &w[lag..]);
            let c: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let ea: f32 = a.iter().map(|v| v * v).sum();
            let eb: f32 = b.iter().map(|v| v * v).sum();
            c / (ea * eb).sqrt().max(1e-9)
        })
        .collect();
    let best = corr.iter().copied().fold(f32::MIN, f32::max);
    // The shortest lag that is a local peak nearly as good as the best (no octave errors).
    let lag = (1..corr.len() - 1)
        .find(|&i| corr[i] >= best - 0.03 && corr[i] >= corr[i - 1] && corr[i] >= corr[i + 1])?;
    (best > 0.8).then(|| RATE as f32 / (lag + 120) as f32)
}

/// For every 30 ms window of the output that is clearly periodic and came from one stretch of
/// the input (its samples' sources span at most 70 ms), the ratio of its pitch
/// to the pitch of the input around the source of its middle sample. A pitch-keeping stretch gives ratios near 1; a resampler would give its
/// speed ratio.
fn pitch_ratios(x: &[f32], y: &[f32], from: &[usize]) -> Vec<f32> {
    let mut out = Vec::new();
    for at in (0..y.len().saturating_sub(1440)).step_by(1440) {
        let (a, b) = (from[at], from[at + 1439]);
        if b < a || b - a > 1440 + 1920 {
            continue;
        }
        let mid = from[at + 720].saturating_sub(720);
        if let (Some(py), Some(px)) = (pitch_at(y, at), pitch_at(x, mid)) {
            out.push(py / px);
        }
    }
    out
}

fn check(name: &str, x: &[f32], step_margin: f32, min_change: f32) {
    for frame in [960, 480] {
        for accelerate in [true, false] {
            let (y, from) = stretch(x, frame, accelerate);
            let change = y.len() as f32 / x.len() as f32;
            let ratios = pitch_ratios(x, &y, &from);
            let off = ratios.iter().filter(|r| (*r - 1.0).abs() > 0.03).count();
            eprintln!(
                "{name} {frame} {accelerate}: length x{change:.3}, largest step {} vs {}, \
                 {} of {} windows off pitch by over 3 %",
                max_step(&y),
                max_step(x),
                off,
                ratios.len()
            );
            assert!(
                (change - 1.0).abs() > min_change,
                "{name} {frame}/{accelerate}: length x{change}"
            );
            assert!(
                max_step(&y) <= step_margin * max_step(x),
                "{name} {frame}/{accelerate}: a click"
            );
            assert!(ratios.len() >= 10, "{name}: {} windows", ratios.len());
            assert!(
                off * 20 <= ratios.len(),
                "{name} {frame}/{accelerate}: pitch moved in {off} of {} windows",
                ratios.len()
            );
        }
    }
}

#[test]
fn tone_and_chirp_keep_their_pitch_and_have_no_clicks() {
    check("tone", &tone(220.0, 2.0), 1.05, 0.15);
    check("chirp", &chirp(150.0, 400.0, 2.0), 1.1, 0.15);
}

#[test]
fn speech_keeps_its_pitch_and_has_no_clicks() {
    let x = speech();
    check("speech", &x, 1.1, 0.05);
}
