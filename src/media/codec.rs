//! Opus encoder and decoder (libopus through the `opus` crate) for 48 kHz mono frames.
//!
//! The decoder hides loss three ways, chosen by the playout layer: a packet decodes as usual,
//! a lost frame is recovered from the in-band FEC of the *next* packet when that packet is
//! already here ([`OpusDecoder::decode_fec`]), otherwise it is concealed by Opus' PLC
//! ([`OpusDecoder::conceal`]). Packets are untrusted: a packet libopus rejects is an error,
//! never a panic, and the caller conceals instead.

use super::{FrameDuration, SAMPLE_RATE};

/// Largest Opus packet we emit or accept (RFC 6716 allows 1275 bytes per frame).
pub const MAX_PACKET: usize = 1500;
/// Samples of the largest frame libopus may return (120 ms at 48 kHz).
const MAX_DECODE: usize = 5760;

/// Opus errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// libopus refused a setting or failed to create a codec.
    #[error("opus setup: {0}")]
    Setup(opus::Error),
    /// Encoding a frame failed.
    #[error("opus encode: {0}")]
    Encode(opus::Error),
    /// A packet could not be decoded (corrupt or not Opus).
    #[error("opus decode: {0}")]
    Decode(opus::Error),
    /// A frame had the wrong number of samples.
    #[error("frame has {got} samples, expected {expected}")]
    FrameSize {
        /// Samples given.
        got: usize,
        /// Samples expected.
        expected: usize,
    },
    /// A packet was empty or longer than [`MAX_PACKET`].
    #[error("opus packet of {0} bytes rejected")]
    BadPacketLength(usize),
    /// The output buffer is too small for the output.
    #[error("packet buffer too small")]
    BufferTooSmall,
}

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Frame length.
    pub frame: FrameDuration,
    /// Target bitrate in bit/s (6 000 - 510 000).
    pub bitrate: i32,
    /// Complexity 0-10 (cost against quality).
    pub complexity: i32,
    /// In-band forward error correction (LBRR): each packet carries a low-rate copy of the
    /// previous frame.
    pub fec: bool,
    /// Expected loss in percent; tells the encoder how much to spend on FEC.
    pub loss_percent: i32,
    /// Discontinuous transmission: near-silent frames become tiny packets sent rarely.
    pub dtx: bool,
}

impl Default for OpusConfig {
    fn default() -> Self {
        Self {
            frame: FrameDuration::Ms20,
            bitrate: 32_000,
            complexity: 9,
            fec: true,
            loss_percent: 10,
            dtx: false,
        }
    }
}

/// An Opus encoder in VoIP mode, 48 kHz mono.
pub struct OpusEncoder {
    enc: opus::Encoder,
    cfg: OpusConfig,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl OpusEncoder {
    /// Builds an encoder with `cfg`.
    pub fn new(cfg: OpusConfig) -> Result<Self, CodecError> {
        let enc = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
            .map_err(CodecError::Setup)?;
        let mut me = Self { enc, cfg };
        me.apply(cfg)?;
        Ok(me)
    }

    /// Changes settings on the fly (bitrate, FEC, loss hint, DTX, complexity, frame length).
    pub fn apply(&mut self, cfg: OpusConfig) -> Result<(), CodecError> {
        let e = &mut self.enc;
        e.set_bitrate(opus::Bitrate::Bits(cfg.bitrate.clamp(6_000, 510_000)))
            .map_err(CodecError::Setup)?;
        e.set_complexity(cfg.complexity.clamp(0, 10))
            .map_err(CodecError::Setup)?;
        e.set_inband_fec(cfg.fec).map_err(CodecError::Setup)?;
        e.set_packet_loss_perc(cfg.loss_percent.clamp(0, 100))
            .map_err(CodecError::Setup)?;
        e.set_dtx(cfg.dtx).map_err(CodecError::Setup)?;
        self.cfg = cfg;
        Ok(())
    }

    /// Updates only the expected-loss hint (from receiver reports).
    pub fn set_loss_hint(&mut self, percent: i32) -> Result<(), CodecError> {
        self.enc
            .set_packet_loss_perc(percent.clamp(0, 100))
            .map_err(CodecError::Setup)?;
        self.cfg.loss_percent = percent.clamp(0, 100);
        Ok(())
    }

    /// The settings in force.
    pub fn config(&self) -> OpusConfig {
        self.cfg
    }

    /// Encodes one frame (exactly `cfg.frame.samples()` samples) into `out`; returns the
    /// packet length. With DTX on, a length of 1-2 bytes means "silence, may be skipped".
    pub fn encode(&mut self, frame: &[f32], out: &mut [u8]) -> Result<usize, CodecError> {
        let expected = self.cfg.frame.samples();
        if frame.len() != expected {
            return Err(CodecError::FrameSize {
                got: frame.len(),
                expected,
            });
        }
        if out.is_empty() {
            return Err(CodecError::BufferTooSmall);
        }
        let cap = out.len().min(MAX_PACKET);
        self.enc
            .encode_float(frame, &mut out[..cap])
            .map_err(CodecError::Encode)
    }

    /// The encoder's algorithmic delay (look-ahead), in samples at 48 kHz.
    pub fn lookahead(&mut self) -> Result<u32, CodecError> {
        self.enc
            .get_lookahead()
            .map(|n| n.max(0) as u32)
            .map_err(CodecError::Encode)
    }

    /// Whether the encoder is in DTX (the last frame was silence).
    pub fn in_dtx(&mut self) -> bool {
        self.enc.get_in_dtx().unwrap_or(false)
    }
}

/// How a frame of output was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeKind {
    /// Decoded from its own packet.
    Normal,
    /// Recovered from the in-band FEC of the next packet.
    Fec,
    /// Concealed by packet loss concealment.
    Plc,
    /// Silence (e.g. long outage after PLC faded out, or before the first packet).
    Silence,
}

/// An Opus decoder, 48 kHz mono, with PLC and FEC.
pub struct OpusDecoder {
    dec: opus::Decoder,
    frame: usize,
    scratch: Box<[f32; MAX_DECODE]>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("frame", &self.frame)
            .finish()
    }
}

impl OpusDecoder {
    /// A decoder that outputs frames of `frame` length.
    pub fn new(frame: FrameDuration) -> Result<Self, CodecError> {
        let dec =
            opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(CodecError::Setup)?;
        Ok(Self {
            dec,
            frame: frame.samples(),
            scratch: Box::new([0.0; MAX_DECODE]),
        })
    }

    /// Samples per output frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    fn check(&self, out: &[f32]) -> Result<(), CodecError> {
        if out.len() != self.frame {
            return Err(CodecError::FrameSize {
                got: out.len(),
                expected: self.frame,
            });
        }
        Ok(())
    }

    /// Copies `n` decoded samples into `out`, padding or cutting to one frame (a peer that sends
    /// another frame length still yields frames of our size).
    fn emit(&self, n: usize, out: &mut [f32]) {
        let n = n.min(MAX_DECODE);
        let k = n.min(out.len());
        out[..k].copy_from_slice(&self.scratch[..k]);
        out[k..].fill(0.0);
    }

    /// Decodes `packet` into `out` (one frame).
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.check(out)?;
        if packet.is_empty() || packet.len() > MAX_PACKET {
            return Err(CodecError::BadPacketLength(packet.len()));
        }
        let n = self
            .dec
            .decode_float(packet, &mut self.scratch[..], false)
            .map_err(CodecError::Decode)?;
        self.emit(n, out);
        Ok(())
    }

    /// Recovers the frame *before* `next_packet` from its FEC data; without FEC data libopus
    /// falls back to PLC, so this is always at least as good as [`Self::conceal`].
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.check(out)?;
        if next_packet.is_empty() || next_packet.len() > MAX_PACKET {
            return self.conceal(out);
        }
        let frame = self.frame;
        let n = self
            .dec
            .decode_float(next_packet, &mut self.scratch[..frame], true)
            .map_err(CodecError::Decode)?;
        self.emit(n, out);
        Ok(())
    }

    /// Conceals one lost frame (PLC).
    pub fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        self.check(out)?;
        let frame = self.frame;
        let n = self
            .dec
            .decode_float(&[], &mut self.scratch[..frame], false)
            .map_err(CodecError::Decode)?;
        self.emit(n, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn garbage_packets_never_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for frame in [FrameDuration::Ms10, FrameDuration::Ms20] {
            let mut dec = OpusDecoder::new(frame).unwrap();
            let mut out = vec![0.0f32; frame.samples()];
            for i in 0..20_000 {
                let len = rng.random_range(0..1600usize);
                let mut p = vec![0u8; len];
                rng.fill(&mut p[..]);
                let _ = dec.decode(&p, &mut out);
                if i % 7 == 0 {
                    let _ = dec.decode_fec(&p, &mut out);
                }
                if i % 11 == 0 {
                    let _ = dec.conceal(&mut out);
                }
                assert!(out.iter().all(|s| s.is_finite()));
            }
            // Wrong frame size is an error, not a panic.
            assert!(dec.decode(&[0xfc, 0xff, 0xfe], &mut [0.0; 7]).is_err());
        }
    }

    #[test]
    fn encode_rejects_wrong_frame_size_and_dtx_shrinks_silence() {
        let mut enc = OpusEncoder::new(OpusConfig {
            dtx: true,
            ..OpusConfig::default()
        })
        .unwrap();
        let mut pkt = [0u8; MAX_PACKET];
        assert!(enc.encode(&[0.0; 100], &mut pkt).is_err());
        let mut last = 0;
        for _ in 0..30 {
            last = enc.encode(&[0.0; 960], &mut pkt).unwrap();
        }
        assert!(last <= 3, "DTX packet of {last} bytes");
    }
}
