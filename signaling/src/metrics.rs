//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sotto::signal::ErrorCode;

/// Server-wide metrics; lock-free counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Open TCP connections on the call listener (HTTP and WebSocket).
    pub raw_connections: AtomicU64,
    /// Bytes queued towards clients and not yet written to their sockets.
    pub queued_bytes: AtomicU64,
    /// Rooms with at least one peer.
    pub rooms: AtomicU64,
    /// Peers in rooms.
    pub peers: AtomicU64,
    /// Client messages received.
    pub messages_received: AtomicU64,
    /// Messages delivered to peers by relay (one per recipient).
    pub messages_relayed: AtomicU64,
    /// WebSocket upgrades refused (HTTP 403) because of their `Origin`.
    pub origins_refused: AtomicU64,
    /// SFUs attached over WebSocket (`sotto-sfu --signaling`).
    pub sfus_attached: AtomicU64,
    /// Messages from attached SFUs that were malformed or about members they do not serve.
    pub sfu_bad_messages: AtomicU64,
    /// `--redis`: round trips to Redis made by the node's publisher (each carries a batch).
    pub cluster_round_trips: AtomicU64,
    /// `--redis`: messages published to other nodes (signals and membership commands).
    pub cluster_published: AtomicU64,
    /// `--redis`: messages received from the cluster.
    pub cluster_received: AtomicU64,
    /// `--redis`: signals for other nodes dropped (queue full, or undeliverable in time).
    pub cluster_dropped: AtomicU64,
    /// `--redis`: members of dead nodes removed by this node.
    pub cluster_reaped: AtomicU64,
    /// `--redis`: 1 while this node cannot reach Redis and serves no rooms.
    pub cluster_fenced: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Counts one error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Errors of `code` so far.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors[i].load(Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP sotto_signaling_{name} {help}");
            let _ = writeln!(out, "# TYPE sotto_signaling_{name} {kind}");
            let _ = writeln!(out, "sotto_signaling_{name} {value}");
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
        );
        metric(
            "connections_total",
            "counter",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        metric(
            "raw_connections",
            "gauge",
            "Open TCP connections on the call listener.",
            self.raw_connections.load(Relaxed),
        );
        metric(
            "queued_bytes",
            "gauge",
            "Bytes queued towards clients, not yet written.",
            self.queued_bytes.load(Relaxed),
        );
        metric(
            "rooms",
            "gauge",
            "Rooms with at least one peer.",
            self.rooms.load(Relaxed),
        );
        metric(
            "peers",
            "gauge",
            "Peers in rooms.",
            self.peers.load(Relaxed),
        );
        metric(
            "messages_received_total",
            "counter",
            "Client messages received.",
            self.messages_received.load(Relaxed),
        );
        metric(
            "messages_relayed_total",
            "counter",
            "Messages delivered to peers by relay.",
            self.messages_relayed.load(Relaxed),
        );
        metric(
            "origins_refused_total",
            "counter",
            "WebSocket upgrades refused for their Origin.",
            self.origins_refused.load(Relaxed),
        );
        metric(
            "sfus_attached",
            "gauge",
            "SFUs attached over WebSocket.",
            self.sfus_attached.load(Relaxed),
        );
        metric(
            "sfu_bad_messages_total",
            "counter",
            "Malformed or unwarranted messages from attached SFUs.",
            self.sfu_bad_messages.load(Relaxed),
        );
        for (name, kind, help, value) in [
            (
                "cluster_round_trips_total",
                "counter",
                "Round trips to Redis by the publisher (--redis); each carries a batch.",
                &self.cluster_round_trips,
            ),
            (
                "cluster_published_total",
                "counter",
                "Messages published to other nodes through Redis.",
                &self.cluster_published,
            ),
            (
                "cluster_received_total",
                "counter",
                "Messages received from other nodes through Redis.",
                &self.cluster_received,
            ),
            (
                "cluster_dropped_total",
                "counter",
                "Signals for other nodes dropped (queue full or not deliverable in time).",
                &self.cluster_dropped,
            ),
            (
                "cluster_reaped_total",
                "counter",
                "Members of dead nodes removed by this node.",
                &self.cluster_reaped,
            ),
            (
                "cluster_fenced",
                "gauge",
                "1 while this node cannot reach Redis and serves no rooms.",
                &self.cluster_fenced,
            ),
        ] {
            metric(name, kind, help, value.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP sotto_signaling_errors_total Errors sent to clients, by code."
        );
        let _ = writeln!(out, "# TYPE sotto_signaling_errors_total counter");
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "sotto_signaling_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                n.load(Relaxed)
            );
        }
        out
    }
}
