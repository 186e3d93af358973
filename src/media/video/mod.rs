//! Video: I420 frames, the VP8 codec, video sources and sinks, and measuring helpers.
//!
//! Everything here speaks one internal format: 8-bit I420 ([`VideoFrame`]) with even width
//! and height. Sources ([`VideoSource`]) fill frames: a moving [`TestPattern`], a Y4M file
//! ([`Y4mSource`]), frames the application pushes ([`AppVideoSource`]) or a V4L2 camera
//! ([`CameraSource`]). Sinks ([`VideoSink`]) take decoded frames: a Y4M file ([`Y4mSink`]),
//! the application ([`AppVideoSink`]), a desktop window (`WindowSink`, feature
//! `video-window`, on by default) or nothing ([`NullVideoSink`]). The codec sits behind the
//! [`VideoEncoder`] / [`VideoDecoder`] traits, chosen with [`VideoCodec`], so another codec can
//! be added without touching the call.
//!
//! Every test-pattern frame carries its frame number as a barcode ([`write_code`] /
//! [`read_code`]) that survives the codec, so a receiver can align what it decoded with what
//! was sent and measure [`psnr_y`] and freezes ([`FreezeDetector`]).
//!
//! ```
//! use sotto::media::video::{TestPattern, VideoCodec, VideoEncoderConfig, VideoFrame, VideoSource};
//! use sotto::media::video::{psnr_y, read_code};
//!
//! let mut pattern = TestPattern::new(640, 360, 30)?;
//! let mut encoder = VideoCodec::Vp8.new_encoder(&VideoEncoderConfig::new(640, 360))?;
//! let mut decoder = VideoCodec::Vp8.new_decoder()?;
//! let mut frame = VideoFrame::black(640, 360)?;
//! for n in 0..10u16 {
//!     pattern.read_frame(&mut frame)?;
//!     let encoded = encoder.encode(&frame, u64::from(n) * 3000)?.expect("no frame dropping");
//!     let decoded = decoder.decode(&encoded.data)?.expect("one picture per frame");
//!     assert_eq!(read_code(&decoded), Some(n));
//!     assert!(psnr_y(&frame, &decoded)? > 30.0);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod app;
mod barcode;
mod camera;
mod codec;
mod frame;
mod pattern;
mod probe;
mod quality;
mod sink;
mod source;
#[cfg(target_os = "linux")]
mod v4l2;
mod vpx;
#[cfg(feature = "video-window")]
mod window;
mod y4m;

pub use app::{AppVideoHandle, AppVideoSink, AppVideoSource, PushError};
pub use barcode::{BARCODE_BITS, BARCODE_BLOCK, read_code, write_code};
pub use camera::{CameraInfo, CameraSource, list_cameras, list_cameras_in, yuyv_to_i420};
pub use codec::{EncodedVideoFrame, VideoCodec, VideoDecoder, VideoEncoder, VideoEncoderConfig};
pub use frame::{MAX_DIMENSION, MAX_PIXELS, VideoFrame};
pub use pattern::TestPattern;
pub use probe::{ProbeHandle, ProbeReport, VideoProbe};
pub use quality::{FreezeDetector, psnr_y};
pub use sink::{NullVideoSink, VideoSink};
pub use source::VideoSource;
pub use vpx::{Vp8Decoder, Vp8Encoder};
#[cfg(feature = "video-window")]
pub use window::WindowSink;
pub use y4m::{Y4mSink, Y4mSource};

/// The RTP clock rate of video (Hz); encoder timestamps (`pts`) are in these ticks.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

/// Errors of the video layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    /// A frame size that is zero, odd, or beyond [`MAX_DIMENSION`] / [`MAX_PIXELS`].
    #[error(
        "invalid video size {width}x{height} (need even, non-zero, at most {MAX_DIMENSION} a side and {MAX_PIXELS} pixels)"
    )]
    InvalidSize {
        /// The width asked for.
        width: u64,
        /// The height asked for.
        height: u64,
    },
    /// A frame's size differs from what the encoder or sink was set up for.
    #[error("frame is {got_width}x{got_height}, expected {width}x{height}")]
    SizeMismatch {
        /// The expected width.
        width: u32,
        /// The expected height.
        height: u32,
        /// The frame's width.
        got_width: u32,
        /// The frame's height.
        got_height: u32,
    },
    /// Plane buffers too short for the size and strides given.
    #[error("plane {plane} is too short: {len} bytes for stride {stride} and {rows} rows")]
    PlaneTooShort {
        /// 0 = Y, 1 = U, 2 = V.
        plane: usize,
        /// The buffer's length.
        len: usize,
        /// The stride given.
        stride: usize,
        /// Rows needed.
        rows: usize,
    },
    /// The encoder refused a setting or a frame.
    #[error("{codec} encoder: {detail}")]
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// What went wrong, from the codec.
        detail: String,
    },
    /// The decoder refused a frame (corrupt, truncated, unsupported or too large).
    #[error("{codec} decoder: {detail}")]
    Decode {
        /// The codec's name.
        codec: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A setting outside what is supported.
    #[error("invalid video setting: {0}")]
    InvalidConfig(String),
    /// A file or stream format that is not supported (e.g. Y4M other than 8-bit 4:2:0).
    #[error("unsupported video format: {0}")]
    UnsupportedFormat(String),
    /// A Y4M file that could not be parsed.
    #[error("Y4M: {0}")]
    Y4m(String),
    /// Reading or writing a file or device failed.
    #[error("video I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The requested camera does not exist; the message lists those that do.
    #[error("{}", camera_missing_message(.wanted.as_deref(), .available))]
    CameraNotFound {
        /// The camera asked for (None: the default, first one).
        wanted: Option<String>,
        /// The cameras that exist, as "name (/dev/videoN)".
        available: Vec<String>,
    },
    /// A camera exists but could not be opened or run.
    #[error("camera {device}: {detail}")]
    Camera {
        /// The device path.
        device: String,
        /// What went wrong.
        detail: String,
    },
}

fn camera_missing_message(wanted: Option<&str>, available: &[String]) -> String {
    let what = match wanted {
        Some(name) => format!("no camera named {name:?}"),
        None => "no camera found".to_owned(),
    };
    if available.is_empty() {
        format!("{what}; there are no video capture devices on this machine")
    } else {
        format!("{what}; cameras: {}", available.join(", "))
    }
}
