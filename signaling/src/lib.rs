//! `sotto-signaling`: the relay between sotto peers.
//!
//! Peers join rooms over a WebSocket at `/ws` and exchange opaque messages (SDP, ICE,
//! handshake) through the server, which stamps the sender and never reads the payload: media
//! keys are agreed end to end and never pass through here in a usable form. The protocol is in
//! `PROTOCOL.md`; its types live in [`sotto::signal::protocol`].

#![warn(missing_docs)]

pub mod cluster;
pub mod cluster_sfu;
pub mod config;
mod connection;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod sfu_link;
pub mod sfu_pool;
pub mod tls;
pub mod token;
pub mod turn;
pub mod web;

pub use config::{Limits, ServerConfig};
pub use server::{App, metrics_router, router, serve, serve_metrics};
pub use sfu_link::{SfuLink, SfuRefusal};
