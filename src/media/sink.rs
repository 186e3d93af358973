//! The sink side: the [`AudioSink`] trait and a null sink.

use super::MediaError;

/// Something that consumes 48 kHz mono audio, one frame at a time.
///
/// Implemented by [`super::NullSink`], [`super::WavSink`] and [`super::DeviceSink`]; an
/// application plugs in its own by implementing it.
pub trait AudioSink: Send {
    /// Consumes one frame. A live sink blocks while its device queue is full, which paces the
    /// caller at the device's clock.
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError>;

    /// Flushes what is buffered (e.g. finalises a WAV header).
    fn finish(&mut self) -> Result<(), MediaError> {
        Ok(())
    }

    /// Whether `write_frame` blocks at a real-time clock (a device). A call paces sinks that
    /// are not live (files, analysers) itself.
    fn is_live(&self) -> bool {
        false
    }
}

impl<S: AudioSink + ?Sized> AudioSink for Box<S> {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        (**self).write_frame(frame)
    }
    fn finish(&mut self) -> Result<(), MediaError> {
        (**self).finish()
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
}

/// Discards audio, counting frames and samples.
#[derive(Debug, Default, Clone)]
pub struct NullSink {
    /// Frames written.
    pub frames: u64,
    /// Samples written.
    pub samples: u64,
}

impl AudioSink for NullSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        self.frames += 1;
        self.samples += frame.len() as u64;
        Ok(())
    }
}
