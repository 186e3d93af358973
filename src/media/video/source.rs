//! The source side: the [`VideoSource`] trait.

use super::{VideoError, VideoFrame};

/// Something that produces I420 pictures, one at a time.
///
/// Implemented by [`super::TestPattern`], [`super::Y4mSource`], [`super::AppVideoSource`] and
/// [`super::CameraSource`]; an application plugs in its own by implementing it.
pub trait VideoSource: Send {
    /// Fills `out` with the next picture (resizing it to the picture's size and setting its
    /// capture time). Returns `Ok(false)` at the end of the stream. A live source blocks until
    /// a picture is ready.
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError>;

    /// Whether `read_frame` blocks at a real-time clock (a camera, the application). A call
    /// paces sources that are not live (files, patterns) itself, at [`VideoSource::frame_rate`].
    fn is_live(&self) -> bool {
        false
    }

    /// Nominal pictures per second.
    fn frame_rate(&self) -> f64;

    /// Nominal picture size (width, height); single pictures may differ for some sources.
    fn size(&self) -> (u32, u32);
}

impl<S: VideoSource + ?Sized> VideoSource for Box<S> {
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        (**self).read_frame(out)
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
    fn frame_rate(&self) -> f64 {
        (**self).frame_rate()
    }
    fn size(&self) -> (u32, u32) {
        (**self).size()
    }
}
