//! Video to and from the application: frames it pushes in, frames handed back to it.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use super::frame::check_size;
use super::{VideoError, VideoFrame, VideoSink, VideoSource};

/// Why [`AppVideoHandle::push`] did not take a frame. The frame is dropped either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The queue is full (the call is behind); this frame was refused.
    #[error("video queue full; frame refused")]
    Full,
    /// The source is gone (the call ended).
    #[error("video source closed")]
    Closed,
    /// The planes did not make a valid frame.
    #[error(transparent)]
    Invalid(#[from] VideoError),
}

/// A live source of pictures the application pushes through an [`AppVideoHandle`].
///
/// The queue is bounded: when it is full, [`AppVideoHandle::push`] refuses the new frame
/// ([`PushError::Full`]) rather than dropping an older one, so what is queued stays in order
/// and the application learns it is sending faster than the call takes. The stream ends
/// when every handle is dropped.
#[derive(Debug)]
pub struct AppVideoSource {
    rx: Receiver<VideoFrame>,
    width: u32,
    height: u32,
    fps: u32,
}

/// The application's end of an [`AppVideoSource`]; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct AppVideoHandle {
    tx: SyncSender<VideoFrame>,
}

impl AppVideoSource {
    /// A source announcing `width` x `height` at `fps`, holding at most `capacity` frames
    /// (at least 1).
    pub fn new(
        width: u32,
        height: u32,
        fps: u32,
        capacity: usize,
    ) -> Result<(Self, AppVideoHandle), VideoError> {
        check_size(width.into(), height.into())?;
        if fps == 0 || fps > 240 {
            return Err(VideoError::InvalidConfig(format!(
                "frame rate {fps} (need 1..=240)"
            )));
        }
        let (tx, rx) = sync_channel(capacity.max(1));
        Ok((
            Self {
                rx,
                width,
                height,
                fps,
            },
            AppVideoHandle { tx },
        ))
    }
}

impl AppVideoHandle {
    /// Queues a picture (its `capture` time is what the call stamps it with).
    pub fn push(&self, frame: VideoFrame) -> Result<(), PushError> {
        self.tx.try_send(frame).map_err(|e| match e {
            TrySendError::Full(_) => PushError::Full,
            TrySendError::Disconnected(_) => PushError::Closed,
        })
    }

    /// Copies three I420 planes into a new picture (captured now) and queues it.
    #[allow(clippy::too_many_arguments)]
    pub fn push_i420(
        &self,
        width: u32,
        height: u32,
        y: &[u8],
        y_stride: usize,
        u: &[u8],
        v: &[u8],
        uv_stride: usize,
    ) -> Result<(), PushError> {
        let frame = VideoFrame::from_planes(width, height, y, y_stride, u, v, uv_stride)?;
        self.push(frame)
    }
}

impl VideoSource for AppVideoSource {
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        match self.rx.recv() {
            Ok(mut frame) => {
                std::mem::swap(out, &mut frame);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn frame_rate(&self) -> f64 {
        f64::from(self.fps)
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

type Callback = Box<dyn FnMut(&VideoFrame) + Send>;

enum Target {
    Callback(Callback),
    Channel(SyncSender<VideoFrame>),
}

/// Hands decoded pictures to the application: to a callback (called on the receive path, so
/// it must return quickly), or into a bounded channel that drops pictures the application has
/// not taken in time (counted in [`AppVideoSink::dropped`]).
pub struct AppVideoSink {
    target: Target,
    dropped: u64,
}

impl std::fmt::Debug for AppVideoSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppVideoSink")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl AppVideoSink {
    /// Calls `f` with every picture.
    pub fn callback(f: impl FnMut(&VideoFrame) + Send + 'static) -> Self {
        Self {
            target: Target::Callback(Box::new(f)),
            dropped: 0,
        }
    }

    /// Sends every picture into a channel holding at most `capacity` (at least 1); a picture
    /// that does not fit is dropped.
    pub fn channel(capacity: usize) -> (Self, Receiver<VideoFrame>) {
        let (tx, rx) = sync_channel(capacity.max(1));
        (
            Self {
                target: Target::Channel(tx),
                dropped: 0,
            },
            rx,
        )
    }

    /// Pictures dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl VideoSink for AppVideoSink {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        match &mut self.target {
            Target::Callback(f) => f(frame),
            Target::Channel(tx) => {
                if tx.try_send(frame.clone()).is_err() {
                    self.dropped += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_source_refuses_when_full_and_ends_when_handles_drop() {
        let (mut src, handle) = AppVideoSource::new(64, 32, 30, 2).unwrap();
        assert!(src.is_live());
        let mut a = VideoFrame::black(64, 32).unwrap();
        a.plane_mut(0).fill(1);
        handle.push(a.clone()).unwrap();
        a.plane_mut(0).fill(2);
        handle.push(a.clone()).unwrap();
        a.plane_mut(0).fill(3);
        assert!(matches!(handle.push(a.clone()), Err(PushError::Full)));
        assert!(matches!(
            handle.push_i420(3, 2, &[0; 6], 3, &[0; 2], &[0; 2], 1),
            Err(PushError::Invalid(_))
        ));
        let mut out = VideoFrame::black(2, 2).unwrap();
        assert!(src.read_frame(&mut out).unwrap());
        assert_eq!(out.y()[0], 1);
        handle
            .push_i420(4, 2, &[9; 8], 4, &[128; 2], &[128; 2], 2)
            .unwrap();
        drop(handle);
        assert!(src.read_frame(&mut out).unwrap());
        assert_eq!(out.y()[0], 2);
        assert!(src.read_frame(&mut out).unwrap());
        assert_eq!((out.size(), out.y()[0]), ((4, 2), 9));
        assert!(!src.read_frame(&mut out).unwrap());
    }

    #[test]
    fn app_sink_channel_drops_when_full() {
        let (mut sink, rx) = AppVideoSink::channel(1);
        let f = VideoFrame::black(4, 2).unwrap();
        sink.write_frame(&f).unwrap();
        sink.write_frame(&f).unwrap();
        assert_eq!(sink.dropped(), 1);
        assert_eq!(rx.try_recv().unwrap().size(), (4, 2));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let mut cb = AppVideoSink::callback(move |_| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        cb.write_frame(&f).unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
