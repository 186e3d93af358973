//! Server limits and settings. Every limit is configurable; the defaults suit a small
//! deployment and the local demo.

use std::path::PathBuf;
use std::time::Duration;

/// Limits that protect the server and everyone on it from one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// Peers per room.
    pub max_peers_per_room: usize,
    /// Open WebSocket connections.
    pub max_connections: usize,
    /// Sustained messages per second per connection.
    pub rate_per_sec: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Messages queued towards one client before it counts as too slow and is dropped.
    pub outbound_queue: usize,
    /// How often the server pings each client.
    pub heartbeat: Duration,
    /// A client silent (no message, no pong) this long is disconnected.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_peers_per_room: 16,
            max_connections: 10_000,
            rate_per_sec: 50,
            rate_burst: 200,
            outbound_queue: 256,
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// Everything a server instance needs besides its listening socket.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// The limits.
    pub limits: Limits,
    /// With a secret set, joining needs a token minted with it.
    pub secret: Option<Vec<u8>>,
    /// Static files served at `/` (the web client), if any.
    pub web_dir: Option<PathBuf>,
}
