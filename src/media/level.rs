//! Audio level (dBFS per frame) and mute.

/// The level reported for digital silence.
pub const SILENCE_DBFS: f32 = -127.0;

/// RMS level of `frame` in dBFS (0 dBFS is a full-scale square wave; a full-scale sine is
/// about -3 dBFS). Silence and empty frames give [`SILENCE_DBFS`].
pub fn dbfs(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return SILENCE_DBFS;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / frame.len() as f64).sqrt();
    if rms <= 0.0 {
        return SILENCE_DBFS;
    }
    (20.0 * rms.log10()).max(f64::from(SILENCE_DBFS)) as f32
}

/// Power of the `freq` component of `samples` at sample rate `rate` (Goertzel), unnormalised.
pub fn goertzel_power(samples: &[f32], rate: f64, freq: f64) -> f64 {
    let c = 2.0 * (std::f64::consts::TAU * freq / rate).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in samples {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// Share of the power of `samples` that lies at `freq`, 0 to 1: a clean tone at `freq` gives
/// about 1, silence 0. For checking what came out of a pipeline.
pub fn tone_share(samples: &[f32], rate: f64, freq: f64) -> f64 {
    let energy: f64 = samples.iter().map(|&v| f64::from(v).powi(2)).sum();
    if energy == 0.0 {
        return 0.0;
    }
    2.0 * goertzel_power(samples, rate, freq) / (samples.len() as f64 * energy)
}

/// The strongest frequency between 100 Hz and 2 kHz, to 1 Hz (a coarse Goertzel scan in 10 Hz
/// steps, then a fine one around the peak). For checking what a listener heard.
pub fn dominant_hz(samples: &[f32], rate: f64) -> f64 {
    let best = |lo: u32, hi: u32, step: usize| {
        (lo..=hi)
            .step_by(step)
            .map(f64::from)
            .max_by(|a, b| {
                goertzel_power(samples, rate, *a).total_cmp(&goertzel_power(samples, rate, *b))
            })
            .unwrap_or(0.0)
    };
    let coarse = best(100, 2000, 10) as u32;
    best(coarse.saturating_sub(10), coarse + 10, 1)
}
/// Measures each frame's level and applies mute in place.
#[derive(Debug, Default, Clone)]
pub struct LevelMeter {
    muted: bool,
    last_dbfs: Option<f32>,
}

impl LevelMeter {
    /// A meter, unmuted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mutes or unmutes; a muted frame is zeroed after its level is measured, so a UI can
    /// still show "you are talking while muted".
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Whether mute is on.
    pub fn is_muted(&self) -> bool {
        self.muted
    }

    /// Measures `frame` (before mute), zeroes it when muted, and returns the level in dBFS.
    pub fn process(&mut self, frame: &mut [f32]) -> f32 {
        let level = dbfs(frame);
        if self.muted {
            frame.fill(0.0);
        }
        self.last_dbfs = Some(level);
        level
    }

    /// The level of the last processed frame.
    pub fn last_dbfs(&self) -> Option<f32> {
        self.last_dbfs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_sine_is_minus_three_db() {
        let f: Vec<f32> = (0..960)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48_000.0).sin())
            .collect();
        let l = dbfs(&f);
        assert!((l + 3.01).abs() < 0.05, "{l}");
    }

    #[test]
    fn silence_and_mute() {
        assert_eq!(dbfs(&[0.0; 480]), SILENCE_DBFS);
        assert_eq!(dbfs(&[]), SILENCE_DBFS);
        let mut m = LevelMeter::new();
        m.set_muted(true);
        let mut f = [0.5f32; 480];
        let l = m.process(&mut f);
        assert!((l - 20.0 * 0.5f32.log10()).abs() < 0.01);
        assert!(f.iter().all(|&s| s == 0.0));
        assert!(m.is_muted());
    }
}
