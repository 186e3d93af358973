//! Signaling: the wire protocol shared with `sotto-signaling`, and the client that joins a
//! room, relays messages and reconnects with backoff.

pub mod client;
pub mod protocol;

pub use client::{SignalClient, SignalConfig, SignalEvent};
pub use protocol::{ErrorCode, PeerInfo};
