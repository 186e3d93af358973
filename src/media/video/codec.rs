//! The codec seam: [`VideoEncoder`] / [`VideoDecoder`] and [`VideoCodec`] to make them.

use super::{VideoError, VideoFrame, Vp8Decoder, Vp8Encoder};

/// A video codec the engine can send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VideoCodec {
    /// VP8 (RFC 6386) through libvpx.
    Vp8,
}

impl VideoCodec {
    /// The codec's name as in SDP (`a=rtpmap:... VP8/90000`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
        }
    }

    /// The MIME type WebRTC uses (`video/VP8`).
    pub const fn mime_type(self) -> &'static str {
        match self {
            Self::Vp8 => "video/VP8",
        }
    }

    /// A new encoder of this codec.
    pub fn new_encoder(
        self,
        config: &VideoEncoderConfig,
    ) -> Result<Box<dyn VideoEncoder>, VideoError> {
        match self {
            Self::Vp8 => Ok(Box::new(Vp8Encoder::new(config)?)),
        }
    }

    /// A new decoder of this codec.
    pub fn new_decoder(self) -> Result<Box<dyn VideoDecoder>, VideoError> {
        match self {
            Self::Vp8 => Ok(Box::new(Vp8Decoder::new()?)),
        }
    }
}

/// Settings of a real-time video encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VideoEncoderConfig {
    /// Picture width (even).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Nominal frame rate; the rate control also follows the real timestamps.
    pub fps: u32,
    /// Target bitrate in kbit/s (constant bitrate).
    pub target_kbps: u32,
    /// Encoder threads; None picks by size (see [`VideoEncoderConfig::default_threads`]).
    pub threads: Option<u32>,
    /// Speed/quality trade-off (VP8's `cpu_used`, -16..=16; negative = a fixed real-time
    /// speed); None picks by size (see [`VideoEncoderConfig::default_cpu_used`]).
    pub cpu_used: Option<i32>,
    /// Frames between automatic keyframes; keyframes normally come on demand
    /// ([`VideoEncoder::force_keyframe`]).
    pub keyframe_interval: u32,
}

impl VideoEncoderConfig {
    /// Defaults for a size: 30 fps, a bitrate that suits the size (800 kbit/s at 640x360,
    /// 1500 at 1280x720), threads and `cpu_used` by size, a keyframe at least every 3000
    /// frames.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            fps: 30,
            target_kbps: Self::default_kbps(width, height),
            threads: None,
            cpu_used: None,
            keyframe_interval: 3000,
        }
    }

    /// A bitrate that gives a clean picture for this size at 30 fps.
    pub fn default_kbps(width: u32, height: u32) -> u32 {
        let pixels = u64::from(width) * u64::from(height);
        match pixels {
            0..=100_000 => 300,
            100_001..=250_000 => 800,
            250_001..=1_000_000 => 1500,
            _ => 2500,
        }
    }

    /// Encoder threads for a size when none is set: 1 at every size. On the 2-core build
    /// machine under load, 2 threads made a 720p frame 3-10x slower (libvpx's row sync waits
    /// for a core that other work holds), and 1 thread encodes 720p in 5-10 ms.
    pub fn default_threads(_width: u32, _height: u32) -> u32 {
        1
    }

    /// `cpu_used` for a size when none is set: -6 below 1280x720, -8 from there. Measured
    /// with the test pattern at 1500 kbit/s 720p, -8 costs about 0.2 dB of PSNR and saves a
    /// third of the encode time; at 360p -6 is cheap enough (2-4 ms) to keep the quality.
    pub fn default_cpu_used(width: u32, height: u32) -> i32 {
        if u64::from(width) * u64::from(height) >= 1280 * 720 {
            -8
        } else {
            -6
        }
    }
}

/// One encoded frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedVideoFrame {
    /// The codec's bitstream for one picture (for VP8: one whole frame, uncompressed header
    /// first).
    pub data: Vec<u8>,
    /// Whether it is a keyframe (decodable on its own).
    pub keyframe: bool,
}

/// A real-time video encoder.
pub trait VideoEncoder: Send {
    /// Which codec this is.
    fn codec(&self) -> VideoCodec;

    /// The picture size it encodes.
    fn size(&self) -> (u32, u32);

    /// Encodes one picture into `out` (its buffer is reused). `pts` is the capture time in
    /// 90 kHz ticks and must increase. Returns false if the encoder produced nothing for this
    /// picture (a dropped frame). The frame must have the encoder's size.
    fn encode_into(
        &mut self,
        frame: &VideoFrame,
        pts: u64,
        out: &mut EncodedVideoFrame,
    ) -> Result<bool, VideoError>;

    /// Encodes one picture into a new buffer; see [`VideoEncoder::encode_into`].
    fn encode(
        &mut self,
        frame: &VideoFrame,
        pts: u64,
    ) -> Result<Option<EncodedVideoFrame>, VideoError> {
        let mut out = EncodedVideoFrame::default();
        Ok(self.encode_into(frame, pts, &mut out)?.then_some(out))
    }

    /// The target bitrate in kbit/s.
    fn bitrate(&self) -> u32;

    /// Changes the target bitrate from the next frame on.
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), VideoError>;

    /// Makes the next encoded frame a keyframe (after a PLI/FIR or a key switch).
    fn force_keyframe(&mut self);

    /// Changes the picture size (the next frame is a keyframe).
    fn reconfigure(&mut self, width: u32, height: u32) -> Result<(), VideoError>;
}

impl<E: VideoEncoder + ?Sized> VideoEncoder for Box<E> {
    fn codec(&self) -> VideoCodec {
        (**self).codec()
    }
    fn size(&self) -> (u32, u32) {
        (**self).size()
    }
    fn encode_into(
        &mut self,
        frame: &VideoFrame,
        pts: u64,
        out: &mut EncodedVideoFrame,
    ) -> Result<bool, VideoError> {
        (**self).encode_into(frame, pts, out)
    }
    fn bitrate(&self) -> u32 {
        (**self).bitrate()
    }
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), VideoError> {
        (**self).set_bitrate(kbps)
    }
    fn force_keyframe(&mut self) {
        (**self).force_keyframe()
    }
    fn reconfigure(&mut self, width: u32, height: u32) -> Result<(), VideoError> {
        (**self).reconfigure(width, height)
    }
}

/// A video decoder. Its input is untrusted: corrupt, truncated or oversized frames give an
/// error, never a crash.
pub trait VideoDecoder: Send {
    /// Which codec this is.
    fn codec(&self) -> VideoCodec;

    /// Decodes one frame into `out` (resized to the picture; buffers reused). Returns false
    /// if the frame made no picture to show.
    fn decode_into(&mut self, data: &[u8], out: &mut VideoFrame) -> Result<bool, VideoError>;

    /// Whether the last picture is known to be damaged: it was built on a reference that a
    /// corrupt or partly lost frame broke. A receiver should ask for a keyframe (PLI).
    fn last_picture_damaged(&mut self) -> bool {
        false
    }

    /// Decodes one frame into a new picture; see [`VideoDecoder::decode_into`].
    fn decode(&mut self, data: &[u8]) -> Result<Option<VideoFrame>, VideoError> {
        let mut out = VideoFrame::black(2, 2)?;
        Ok(self.decode_into(data, &mut out)?.then_some(out))
    }
}

impl<D: VideoDecoder + ?Sized> VideoDecoder for Box<D> {
    fn codec(&self) -> VideoCodec {
        (**self).codec()
    }
    fn decode_into(&mut self, data: &[u8], out: &mut VideoFrame) -> Result<bool, VideoError> {
        (**self).decode_into(data, out)
    }
    fn last_picture_damaged(&mut self) -> bool {
        (**self).last_picture_damaged()
    }
}
