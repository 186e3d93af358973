//! A synthetic sine tone source.

use super::source::AudioSource;
use super::{MediaError, SAMPLE_RATE};

/// An endless (or time-limited) sine tone at 48 kHz mono.
#[derive(Debug, Clone)]
pub struct ToneSource {
    phase: f64,
    step: f64,
    amplitude: f32,
    remaining: Option<u64>,
}

impl ToneSource {
    /// A tone of `freq_hz` at `amplitude` (0..=1 of full scale), endless.
    pub fn new(freq_hz: f64, amplitude: f32) -> Self {
        Self {
            phase: 0.0,
            step: std::f64::consts::TAU * freq_hz / f64::from(SAMPLE_RATE),
            amplitude: amplitude.clamp(0.0, 1.0),
            remaining: None,
        }
    }

    /// Limits the tone to `samples` samples, after which [`AudioSource::read_frame`] reports the end.
    pub fn with_limit(mut self, samples: u64) -> Self {
        self.remaining = Some(samples);
        self
    }

    /// Fills `out` with the next samples of the tone (no limit check).
    pub fn fill(&mut self, out: &mut [f32]) {
        for s in out.iter_mut() {
            *s = self.amplitude * self.phase.sin() as f32;
            self.phase += self.step;
            if self.phase >= std::f64::consts::TAU {
                self.phase -= std::f64::consts::TAU;
            }
        }
    }
}

impl AudioSource for ToneSource {
    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError> {
        if let Some(rem) = self.remaining.as_mut() {
            if *rem == 0 {
                return Ok(false);
            }
            *rem = rem.saturating_sub(out.len() as u64);
        }
        self.fill(out);
        Ok(true)
    }
}
