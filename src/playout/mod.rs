//! The playout (jitter) buffer: Sans-I/O, packets and time in, frames out.
//!
//! [`PlayoutBuffer`] knows nothing of audio: it orders encoded packets by RTP sequence number,
//! measures arrival jitter from RTP timestamps, and on every `pop(now)` (called once per frame
//! period by the consumer's clock) says which packet to play, or that one is lost, or that the
//! buffer ran dry. [`AudioPlayout`] puts a [`FrameDecoder`] (Opus) behind it and turns those
//! decisions into audio: decode, FEC recovery from the next packet, or PLC. Video can reuse the
//! buffer with its own consumer.
//!
//! No clocks, sockets or threads inside: the caller passes `now` (a [`Duration`] since any
//! fixed origin), so tests run on virtual time.
//!
//! [`Duration`]: std::time::Duration

pub mod audio;
pub mod buffer;
pub mod jitter;
pub mod stats;

pub use audio::{AudioPlayout, FrameDecoder};
pub use buffer::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
pub use jitter::JitterEstimator;
pub use stats::PlayoutStats;
