//! Audio on top of the playout buffer: decode, recover from FEC, or conceal.

use std::time::Duration;

use super::buffer::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
use super::stats::PlayoutStats;
use crate::media::{CodecError, DecodeKind, OpusDecoder};

/// Concealed frames in a row after which output turns to silence (PLC would only buzz on).
const MAX_CONCEAL_RUN: u32 = 10;

/// The audio-specific seam: how to turn a packet (or its absence) into one frame of samples.
pub trait FrameDecoder {
    /// Decodes `payload` into `out` (one frame).
    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError>;
    /// Recovers the frame before `next` from `next`'s redundancy (FEC).
    fn recover(&mut self, next: &[u8], out: &mut [f32]) -> Result<(), CodecError>;
    /// Conceals one missing frame.
    fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError>;
}

impl FrameDecoder for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        OpusDecoder::decode(self, payload, out)
    }
    fn recover(&mut self, next: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.decode_fec(next, out)
    }
    fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        OpusDecoder::conceal(self, out)
    }
}

/// A playout buffer plus a decoder: packets in, one audio frame out per `next_frame` call.
#[derive(Debug)]
pub struct AudioPlayout<D: FrameDecoder> {
    buffer: PlayoutBuffer,
    decoder: D,
    conceal_run: u32,
    last_played: Option<u32>,
}

impl<D: FrameDecoder> AudioPlayout<D> {
    /// Wraps `decoder` with a buffer configured by `cfg`.
    pub fn new(cfg: PlayoutConfig, decoder: D) -> Self {
        Self {
            buffer: PlayoutBuffer::new(cfg),
            decoder,
            conceal_run: 0,
            last_played: None,
        }
    }

    /// Offers a received packet.
    pub fn insert(&mut self, packet: Packet, now: Duration) {
        self.buffer.insert(packet, now);
    }

    /// Produces the next frame into `out` and says how it was made. Never fails: a packet the
    /// decoder rejects is concealed and counted in `decode_errors`.
    pub fn next_frame(&mut self, now: Duration, out: &mut [f32]) -> DecodeKind {
        self.last_played = None;
        let kind = match self.buffer.pop(now) {
            Playout::Packet(p) => match self.decoder.decode(&p.payload, out) {
                Ok(()) => {
                    self.last_played = Some(p.timestamp);
                    DecodeKind::Normal
                }
                Err(e) => {
                    tracing::debug!("playout: undecodable packet {}: {e}", p.seq);
                    self.buffer.stats_mut().decode_errors += 1;
                    self.buffer.stats_mut().concealed += 1;
                    self.conceal(out)
                }
            },
            Playout::Lost { .. } => {
                let recovered = match self.buffer.peek_next() {
                    Some(next) if self.conceal_run < MAX_CONCEAL_RUN => {
                        self.decoder.recover(&next.payload, out).is_ok()
                    }
                    _ => false,
                };
                if recovered {
                    self.buffer.stats_mut().fec_recovered += 1;
                    DecodeKind::Fec
                } else {
                    self.conceal(out)
                }
            }
            Playout::Wait => self.conceal(out),
            Playout::NotStarted => {
                out.fill(0.0);
                DecodeKind::Silence
            }
        };
        if matches!(kind, DecodeKind::Normal | DecodeKind::Fec) {
            self.conceal_run = 0;
        }
        kind
    }

    fn conceal(&mut self, out: &mut [f32]) -> DecodeKind {
        self.conceal_run = self.conceal_run.saturating_add(1);
        if self.conceal_run > MAX_CONCEAL_RUN || self.decoder.conceal(out).is_err() {
            out.fill(0.0);
            return DecodeKind::Silence;
        }
        DecodeKind::Plc
    }

    /// The RTP timestamp of the packet the last `next_frame` decoded, if it decoded one (for
    /// tracing a frame through the pipeline).
    pub fn last_played(&self) -> Option<u32> {
        self.last_played
    }

    /// Counters and delay figures.
    pub fn stats(&self) -> &PlayoutStats {
        self.buffer.stats()
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &PlayoutBuffer {
        &self.buffer
    }
}
