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
//!
//! ```
//! use std::time::Duration;
//! use sotto::playout::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
//!
//! let mut buffer = PlayoutBuffer::new(PlayoutConfig::default());
//! let ms = Duration::from_millis;
//! // Packets 0 and 2 arrive (960 ticks = 20 ms apart); 1 is lost on the way.
//! for (seq, at) in [(0u16, 0), (2, 40)] {
//!     let packet = Packet { seq, timestamp: u32::from(seq) * 960, payload: vec![seq as u8] };
//!     buffer.insert(packet, ms(at));
//! }
//! let mut played = Vec::new();
//! for tick in 0..6 {
//!     match buffer.pop(ms(40 + 20 * tick)) {
//!         Playout::Packet(p) => played.push(Some(p.seq)),
//!         Playout::Lost { .. } => played.push(None),
//!         _ => {} // waiting for the buffer to fill, or not started
//!     }
//! }
//! assert_eq!(played, [Some(0), None, Some(2)]);
//! ```

mod audio;
mod buffer;
mod delay;
mod jitter;
mod stats;
pub mod stretch;

pub use audio::{AudioPlayout, FrameDecoder};
pub use buffer::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
pub use jitter::JitterEstimator;
pub use stats::PlayoutStats;
pub use stretch::{Stretched, Stretcher};
