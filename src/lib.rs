//! sotto: an end-to-end encrypted voice and video call engine.
//!
//! Media is sealed frame by frame with [SFrame](sframe) (RFC 9605) before it reaches the
//! transport, so nobody in the middle (signaling server, relay, TURN server, operator) can
//! hear, see or read a call. The keys come from an authenticated [handshake] between the two
//! endpoints.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod call;
pub mod handshake;
pub mod latency;
pub mod media;
pub mod names;
pub mod playout;
pub mod sframe;
pub mod signal;
pub mod text;
pub mod transport;
mod wipe;
