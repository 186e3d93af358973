//! The source side: the [`AudioSource`] trait and a rebuffer to fixed frames.

use super::MediaError;

/// Something that produces 48 kHz mono audio, one frame at a time.
///
/// Implemented by [`super::ToneSource`], [`super::WavSource`] and [`super::DeviceSource`];
/// an application plugs in its own by implementing it.
pub trait AudioSource: Send {
    /// Fills `out` (one whole frame, e.g. 480 or 960 samples) with the next audio.
    /// Returns `Ok(false)` at the end of the stream (`out` is then unspecified).
    /// A live source blocks until a frame's worth is ready.
    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError>;

    /// Whether `read_frame` blocks at a real-time clock (a device). A call paces sources that
    /// are not live (files, tones) itself, one frame per frame duration.
    fn is_live(&self) -> bool {
        false
    }
}

impl<S: AudioSource + ?Sized> AudioSource for Box<S> {
    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError> {
        (**self).read_frame(out)
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
}

/// Collects chunks of any length into frames of a fixed length (e.g. device periods of 320
/// or 1024 samples into 480-sample codec frames). Capacity is fixed at creation: it never
/// allocates afterwards and never holds more than one frame plus one chunk.
#[derive(Debug)]
pub struct Rebuffer {
    buf: Vec<f32>,
    frame: usize,
    cap: usize,
}

impl Rebuffer {
    /// A rebuffer that yields frames of `frame` samples from chunks of at most `max_chunk`.
    pub fn new(frame: usize, max_chunk: usize) -> Self {
        let cap = frame + max_chunk;
        Self {
            buf: Vec::with_capacity(cap),
            frame,
            cap,
        }
    }

    /// Appends samples; whatever does not fit the fixed capacity is dropped (returned count).
    pub fn push(&mut self, samples: &[f32]) -> usize {
        let room = self.cap - self.buf.len();
        let take = samples.len().min(room);
        self.buf.extend_from_slice(&samples[..take]);
        samples.len() - take
    }

    /// Copies the next whole frame into `out` (which must be `frame` long) if one is ready.
    pub fn pop(&mut self, out: &mut [f32]) -> bool {
        if self.buf.len() < self.frame || out.len() != self.frame {
            return false;
        }
        out.copy_from_slice(&self.buf[..self.frame]);
        self.buf.drain(..self.frame);
        true
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuffers_odd_chunks_into_frames() {
        let mut r = Rebuffer::new(480, 1024);
        let mut out = [0.0f32; 480];
        let mut n = 0.0f32;
        let mut frames = 0;
        for _ in 0..10 {
            let chunk: Vec<f32> = (0..320)
                .map(|_| {
                    n += 1.0;
                    n
                })
                .collect();
            assert_eq!(r.push(&chunk), 0);
            while r.pop(&mut out) {
                assert_eq!(out[0], (frames * 480 + 1) as f32);
                frames += 1;
            }
        }
        assert_eq!(frames, 6);
        assert_eq!(r.len(), 3200 - 2880);
    }
}
