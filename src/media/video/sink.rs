//! The sink side: the [`VideoSink`] trait and a null sink.

use super::{VideoError, VideoFrame};

/// Something that consumes decoded pictures.
///
/// Implemented by [`super::NullVideoSink`], [`super::Y4mSink`] and [`super::AppVideoSink`]; an
/// application plugs in its own by implementing it.
pub trait VideoSink: Send {
    /// Consumes one picture. Must not block for long: it runs on the receive path.
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError>;

    /// Flushes what is buffered (e.g. a file's last bytes).
    fn finish(&mut self) -> Result<(), VideoError> {
        Ok(())
    }
}

impl<S: VideoSink + ?Sized> VideoSink for Box<S> {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        (**self).write_frame(frame)
    }
    fn finish(&mut self) -> Result<(), VideoError> {
        (**self).finish()
    }
}

/// Discards pictures, counting them and remembering the last size.
#[derive(Debug, Default, Clone)]
pub struct NullVideoSink {
    /// Pictures written.
    pub frames: u64,
    /// Size of the last picture.
    pub last_size: Option<(u32, u32)>,
}

impl VideoSink for NullVideoSink {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        self.frames += 1;
        self.last_size = Some(frame.size());
        Ok(())
    }
}
