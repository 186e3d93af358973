//! sotto's selective forwarding unit: group calls where every member sends one stream and
//! the SFU forwards each receiver the loudest few speakers (and video), without being able to
//! read any of it.
//!
//! Media is sealed end to end with SFrame before it reaches a member's transport; this crate
//! does not depend on the engine's SFrame or handshake code and holds no media key. It
//! terminates each member's DTLS-SRTP hop (webrtc-rs's Sans-I/O `rtc` crate), reads the RTP
//! header and the RFC 6464 audio level (the only thing in the clear), and forwards the
//! payload byte for byte under rewritten SSRC, sequence number and timestamp.
//!
//! - [`room`]: the Sans-I/O forwarding core (top-N selection, rewriting, limits, PLI routing).
//! - [`server`]: worker threads with one UDP socket each; [`Sfu::join`] and [`Sfu::leave`].
//! - [`metrics`]: Prometheus counters.
//! - [`attach`]: `--signaling`, the SFU as a WebSocket client of a signaling hub.
//! - [`redis_node`]: `--redis`, the SFU as a node that signaling nodes find through Redis.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod demux;
pub mod metrics;
pub mod redis_node;
pub mod room;
pub mod server;

pub use metrics::{DropReason, Metrics};
pub use room::{ForwardConfig, JoinError, Kind, Room};
pub use server::{Sfu, SfuConfig, SfuError};
