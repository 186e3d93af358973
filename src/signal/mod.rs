//! Signaling: the wire protocol shared with `sotto-signaling`, and the client that joins a
//! room, relays messages and reconnects with backoff.
//!
//! ```no_run
//! # async fn demo() {
//! use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
//!
//! let (client, mut events) =
//!     SignalClient::connect(SignalConfig::new("ws://127.0.0.1:8787/ws", "standup", "alice"));
//! while let Some(event) = events.recv().await {
//!     match event {
//!         SignalEvent::Joined { peers, .. } => {
//!             for peer in peers {
//!                 // The payload is opaque to the server: here, the call protocol's JSON.
//!                 let _ = client.send_to(&peer.peer_id, &serde_json::json!({"kind": "hello"})).await;
//!             }
//!         }
//!         SignalEvent::Closed { reason } => { println!("{reason}"); break }
//!         _ => {}
//!     }
//! }
//! # }
//! ```

mod client;
pub mod protocol;

pub use client::{SignalClient, SignalConfig, SignalError, SignalEvent};
pub use protocol::{ErrorCode, IceServerInfo, PeerInfo};
