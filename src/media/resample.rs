//! Streaming mono sample-rate conversion with a windowed-sinc resampler (rubato).
//!
//! Input arrives in chunks of any length (device periods, WAV reads); output is pulled in
//! frames of any length. Buffers are sized at creation and reused. When both rates are equal
//! the samples pass through untouched (no filter delay).

use std::collections::VecDeque;

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use super::MediaError;

/// Input samples per resampler call: 10 ms at 48 kHz keeps the added delay small.
const CHUNK: usize = 480;

/// A mono resampler from one fixed rate to another.
pub struct StreamResampler {
    inner: Option<SincFixedIn<f32>>,
    pending_in: Vec<f32>,
    scratch_out: Vec<Vec<f32>>,
    out: VecDeque<f32>,
    max_out: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("passthrough", &self.inner.is_none())
            .field("queued", &self.out.len())
            .finish()
    }
}

impl StreamResampler {
    /// Converts from `from_hz` to `to_hz`; `max_queue` bounds the output samples held (older
    /// samples are dropped past it, so a stalled consumer cannot grow memory).
    pub fn new(from_hz: u32, to_hz: u32, max_queue: usize) -> Result<Self, MediaError> {
        if from_hz == 0 || to_hz == 0 || from_hz > 1_000_000 || to_hz > 1_000_000 {
            return Err(MediaError::Resample(format!(
                "unsupported rates {from_hz} -> {to_hz} Hz"
            )));
        }
        let inner = if from_hz == to_hz {
            None
        } else {
            let params = SincInterpolationParameters {
                sinc_len: 128,
                f_cutoff: 0.925,
                oversampling_factor: 128,
                interpolation: SincInterpolationType::Cubic,
                window: WindowFunction::BlackmanHarris2,
            };
            let r = SincFixedIn::<f32>::new(
                f64::from(to_hz) / f64::from(from_hz),
                1.0,
                params,
                CHUNK,
                1,
            )
            .map_err(|e| MediaError::Resample(e.to_string()))?;
            Some(r)
        };
        let out_max = inner.as_ref().map_or(CHUNK, |r| r.output_frames_max());
        Ok(Self {
            inner,
            pending_in: Vec::with_capacity(CHUNK),
            scratch_out: vec![vec![0.0; out_max]],
            out: VecDeque::with_capacity(max_queue + out_max),
            max_out: max_queue.max(out_max),
        })
    }

    /// Feeds input samples.
    pub fn push(&mut self, mut input: &[f32]) -> Result<(), MediaError> {
        let Some(r) = self.inner.as_mut() else {
            self.out.extend(input.iter().copied());
            self.trim();
            return Ok(());
        };
        while !input.is_empty() {
            let take = (CHUNK - self.pending_in.len()).min(input.len());
            self.pending_in.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending_in.len() == CHUNK {
                let (_, produced) = r
                    .process_into_buffer(&[&self.pending_in[..]], &mut self.scratch_out, None)
                    .map_err(|e| MediaError::Resample(e.to_string()))?;
                self.out
                    .extend(self.scratch_out[0][..produced].iter().copied());
                self.pending_in.clear();
            }
        }
        self.trim();
        Ok(())
    }

    /// Pulls `out.len()` samples if that many are ready.
    pub fn pull(&mut self, out: &mut [f32]) -> bool {
        if self.out.len() < out.len() {
            return false;
        }
        let n = out.len();
        for (o, s) in out.iter_mut().zip(self.out.drain(..n)) {
            *o = s;
        }
        true
    }

    /// Output samples ready.
    pub fn available(&self) -> usize {
        self.out.len()
    }

    /// Feeds zeros to push the filter's tail out at the end of a stream.
    pub fn flush(&mut self) -> Result<(), MediaError> {
        if self.inner.is_some() {
            let zeros = [0.0f32; CHUNK];
            self.push(&zeros)?;
            self.push(&zeros)?;
        }
        Ok(())
    }

    fn trim(&mut self) {
        if self.out.len() > self.max_out {
            let excess = self.out.len() - self.max_out;
            self.out.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_ratio(x: &[f32], rate: f64, freq: f64) -> f64 {
        crate::media::tone_share(x, rate, freq)
    }

    #[test]
    fn converts_44100_to_48000_keeping_pitch() {
        let mut r = StreamResampler::new(44_100, 48_000, 48_000).unwrap();
        // A 1 kHz tone at 44.1 kHz, built by hand.
        let step = std::f64::consts::TAU * 1000.0 / 44_100.0;
        let input: Vec<f32> = (0..44_100)
            .map(|i| (0.5 * (i as f64 * step).sin()) as f32)
            .collect();
        for c in input.chunks(441) {
            r.push(c).unwrap();
        }
        let n = r.available();
        assert!((47_000..=48_000).contains(&n), "{n}");
        let mut out = vec![0.0; 24_000];
        assert!(r.pull(&mut out));
        let tail = &out[4_800..];
        assert!(tone_ratio(tail, 48_000.0, 1000.0) > 0.9);
        assert!(tone_ratio(tail, 48_000.0, 1088.0) < 0.01);
    }

    #[test]
    fn passthrough_and_bounds() {
        let mut r = StreamResampler::new(48_000, 48_000, 960).unwrap();
        r.push(&[1.0; 2000]).unwrap();
        assert_eq!(r.available(), 960);
        assert!(StreamResampler::new(0, 48_000, 10).is_err());
    }
}
