//! Media: audio sources and sinks, resampling, the Opus codec and the level meter; video in
//! [`video`].
//!
//! Everything here speaks one internal format: 48 kHz mono `f32` frames of 10 or 20 ms
//! ([`SAMPLE_RATE`], [`FrameDuration`]). Adapters at the edges (device, WAV) convert from and
//! to whatever the outside world offers with a proper (windowed-sinc) resampler.
//!
//! Threads: device callbacks run on cpal's real-time thread and only copy samples through a
//! lock-free SPSC ring (`rtrb`); the resampler, codec and everything else run on the caller's
//! thread and reuse their buffers per frame.
//!
//! ```
//! use sotto::media::{AudioSource, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
//! use sotto::media::{MAX_PACKET, tone_share};
//!
//! let frame = FrameDuration::Ms20;
//! let mut tone = ToneSource::new(440.0, 0.3);
//! let mut encoder = OpusEncoder::new(OpusConfig::default())?;
//! let mut decoder = OpusDecoder::new(frame)?;
//! let (mut pcm, mut out, mut packet) = (vec![0f32; frame.samples()], vec![0f32; frame.samples()], [0u8; MAX_PACKET]);
//! let mut heard = Vec::new();
//! for _ in 0..25 {
//!     tone.read_frame(&mut pcm)?;
//!     let len = encoder.encode(&pcm, &mut packet)?;
//!     decoder.decode(&packet[..len], &mut out)?;
//!     heard.extend_from_slice(&out);
//! }
//! // Past the codec's start-up, the decoded audio is the tone.
//! assert!(tone_share(&heard[9_600..], 48_000.0, 440.0) > 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod device;
mod level;
mod quiet;
mod resample;
mod sink;
mod source;
mod tone;
pub mod video;
mod wav;

pub use codec::{CodecError, DecodeKind, MAX_PACKET, OpusConfig, OpusDecoder, OpusEncoder};
pub use device::{
    ConfigRange, DeviceError, DeviceEvent, DeviceInfo, DeviceSink, DeviceSource, list_devices,
};
pub use level::{LevelMeter, SILENCE_DBFS, dbfs, dominant_hz, goertzel_power, tone_share};
pub use resample::StreamResampler;
pub use sink::{AudioSink, NullSink};
pub use source::{AudioSource, Rebuffer};
pub use tone::ToneSource;
pub use wav::{WavError, WavSink, WavSource};

use std::time::Duration;

/// The internal sample rate of every frame (Hz).
pub const SAMPLE_RATE: u32 = 48_000;

/// Length of one codec frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FrameDuration {
    /// 10 ms (480 samples): lowest delay.
    Ms10,
    /// 20 ms (960 samples): the WebRTC default.
    #[default]
    Ms20,
}

impl FrameDuration {
    /// Samples per frame at 48 kHz mono.
    pub const fn samples(self) -> usize {
        match self {
            Self::Ms10 => 480,
            Self::Ms20 => 960,
        }
    }

    /// The frame length as a duration.
    pub const fn duration(self) -> Duration {
        match self {
            Self::Ms10 => Duration::from_millis(10),
            Self::Ms20 => Duration::from_millis(20),
        }
    }

    /// Parses a length in milliseconds (10 or 20).
    pub fn from_millis(ms: u32) -> Option<Self> {
        match ms {
            10 => Some(Self::Ms10),
            20 => Some(Self::Ms20),
            _ => None,
        }
    }
}

/// Errors of the media layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// An audio device could not be found, opened or run.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A WAV file could not be read or written.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// The Opus codec refused a setting or a frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The resampler could not be built for these rates.
    #[error("resampler: {0}")]
    Resample(String),
}
