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
    /// Open TCP connections on the call listener, upgraded or not. Checked at accept, so a
    /// flood of sockets that never finish a request cannot exhaust the process.
    pub max_raw_connections: usize,
    /// Open TCP connections from one address (IPv6: one /64). 0 disables the check.
    pub max_connections_per_ip: usize,
    /// Sustained messages per second per connection.
    pub rate_per_sec: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Messages queued towards one client before it counts as too slow and is dropped.
    pub outbound_queue: usize,
    /// Bytes queued towards one client before it counts as too slow and is dropped (one
    /// message is always accepted into an empty queue, whatever its size).
    pub outbound_queue_bytes: usize,
    /// Longest time one write to a client may take before it counts as too slow.
    pub write_timeout: Duration,
    /// How often the server pings each client.
    pub heartbeat: Duration,
    /// A client silent (no message, no pong) this long is disconnected.
    pub idle_timeout: Duration,
    /// A WebSocket not in a room this long (after connecting or leaving) is disconnected.
    pub join_timeout: Duration,
    /// Time allowed to send a request's headers, and to start the next request on a kept-alive
    /// HTTP connection.
    pub header_timeout: Duration,
    /// SFUs attached at once (`sotto-sfu --signaling`); more are refused with `server_full`.
    pub max_attached_sfus: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_peers_per_room: 50,
            max_connections: 10_000,
            max_raw_connections: 10_000 + RAW_HEADROOM,
            max_connections_per_ip: 256,
            rate_per_sec: 50,
            rate_burst: 200,
            outbound_queue: 256,
            outbound_queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            join_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_attached_sfus: 16,
        }
    }
}

/// Raw connections allowed beyond `max_connections` by default: room for plain HTTP requests
/// (the web client's files, health checks) and for upgrades in progress.
pub const RAW_HEADROOM: usize = 1024;

/// Everything a server instance needs besides its listening socket.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// The limits.
    pub limits: Limits,
    /// With a secret set, joining needs a token minted with it.
    pub secret: Option<Vec<u8>>,
    /// Serve the web client from this directory at `/` (for development), instead of the
    /// copy compiled into the binary.
    pub web_dir: Option<PathBuf>,
    /// Without `web_dir`: serve the web client compiled into the binary at `/`. Off (no page,
    /// only `/ws` and `/healthz`) unless set.
    pub embedded_web: bool,
    /// Browser origins (`scheme://host[:port]`) allowed to open a WebSocket. Empty: only the
    /// server's own origin (the `Origin` names the `Host` the request was sent to). Requests
    /// without an `Origin` (native clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// STUN and TURN servers offered to every peer in `welcome`.
    pub ice: crate::turn::IceOffer,
    /// Serve HTTPS and WSS with this rustls configuration (see [`crate::tls`]); plain HTTP and
    /// WS without it.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Share rooms with other nodes through the Redis server at this URL
    /// (`redis://HOST:PORT`); rooms live in this process's memory without it.
    pub redis: Option<String>,
}
