//! Counters in the Prometheus text format, for the signaling server's `/metrics` or the
//! SFU's own.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram or packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A sender over its packets-per-second limit.
    RateLimit,
    /// A datagram from an address no participant uses, that is not a STUN request for one.
    UnknownSource,
    /// A datagram from a participant's address that its connection rejected.
    Malformed,
    /// RTP the connection accepted but the SFU could not route (no such track or member).
    Unroutable,
    /// The outgoing connection refused the packet.
    SendFailed,
    /// Video withheld from a receiver whose downlink reported loss (its audio goes on).
    Bandwidth,
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::RateLimit,
        DropReason::UnknownSource,
        DropReason::Malformed,
        DropReason::Unroutable,
        DropReason::SendFailed,
        DropReason::Bandwidth,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::RateLimit => "rate_limit",
            DropReason::UnknownSource => "unknown_source",
            DropReason::Malformed => "malformed",
            DropReason::Unroutable => "unroutable",
            DropReason::SendFailed => "send_failed",
            DropReason::Bandwidth => "bandwidth",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The SFU's counters, shared by its workers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Rooms open now.
    pub rooms: AtomicU64,
    /// Participants joined now.
    pub participants: AtomicU64,
    /// Media packets (RTP) received from participants.
    pub packets_in: AtomicU64,
    /// Media packets forwarded.
    pub packets_out: AtomicU64,
    /// Bytes of RTP payload received.
    pub bytes_in: AtomicU64,
    /// Bytes of RTP payload forwarded.
    pub bytes_out: AtomicU64,
    /// Keyframe requests relayed to publishers.
    pub keyframe_requests: AtomicU64,
    /// `--redis`: 1 while the SFU's registration in Redis is refreshed, else 0.
    pub redis_registered: AtomicU64,
    /// `--redis`: offers served from the SFU's Redis channel (answered or refused).
    pub redis_offers: AtomicU64,
    /// `--redis`: leaves served from the SFU's Redis channel.
    pub redis_leaves: AtomicU64,
    /// `--redis`: messages on the SFU's Redis channel that were not a request it serves.
    pub redis_bad_messages: AtomicU64,
    /// `--redis`: members dropped because the SFU lost Redis (its rooms move elsewhere).
    pub redis_dropped_members: AtomicU64,
    dropped: [AtomicU64; 6],
}

impl Metrics {
    /// Counts one drop.
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut one = |name: &str, typ: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {typ}");
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        };
        one("sotto_sfu_rooms", "gauge", "Rooms open.", &self.rooms);
        one(
            "sotto_sfu_participants",
            "gauge",
            "Participants joined.",
            &self.participants,
        );
        one(
            "sotto_sfu_packets_in_total",
            "counter",
            "RTP packets received.",
            &self.packets_in,
        );
        one(
            "sotto_sfu_packets_out_total",
            "counter",
            "RTP packets forwarded.",
            &self.packets_out,
        );
        one(
            "sotto_sfu_bytes_in_total",
            "counter",
            "RTP payload bytes received.",
            &self.bytes_in,
        );
        one(
            "sotto_sfu_bytes_out_total",
            "counter",
            "RTP payload bytes forwarded.",
            &self.bytes_out,
        );
        one(
            "sotto_sfu_keyframe_requests_total",
            "counter",
            "Keyframe requests relayed to publishers.",
            &self.keyframe_requests,
        );
        one(
            "sotto_sfu_redis_registered",
            "gauge",
            "1 while the registration in Redis is refreshed (--redis).",
            &self.redis_registered,
        );
        one(
            "sotto_sfu_redis_offers_total",
            "counter",
            "Offers served from the Redis channel.",
            &self.redis_offers,
        );
        one(
            "sotto_sfu_redis_leaves_total",
            "counter",
            "Leaves served from the Redis channel.",
            &self.redis_leaves,
        );
        one(
            "sotto_sfu_redis_bad_messages_total",
            "counter",
            "Messages on the Redis channel that were not a request the SFU serves.",
            &self.redis_bad_messages,
        );
        one(
            "sotto_sfu_redis_dropped_members_total",
            "counter",
            "Members dropped because the SFU lost Redis.",
            &self.redis_dropped_members,
        );
        let _ = writeln!(
            s,
            "# HELP sotto_sfu_packets_dropped_total Datagrams and packets dropped, by reason."
        );
        let _ = writeln!(s, "# TYPE sotto_sfu_packets_dropped_total counter");
        for r in DropReason::ALL {
            let _ = writeln!(
                s,
                "sotto_sfu_packets_dropped_total{{reason=\"{}\"}} {}",
                r.label(),
                self.dropped(r)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_its_value() {
        let m = Metrics::default();
        m.rooms.store(2, Ordering::Relaxed);
        m.packets_out.store(41, Ordering::Relaxed);
        m.count_drop(DropReason::RateLimit);
        m.count_drop(DropReason::RateLimit);
        m.count_drop(DropReason::Malformed);
        let text = m.render();
        assert!(text.contains("\nsotto_sfu_rooms 2\n"), "{text}");
        assert!(text.contains("\nsotto_sfu_packets_out_total 41\n"));
        assert!(text.contains("sotto_sfu_packets_dropped_total{reason=\"rate_limit\"} 2\n"));
        assert!(text.contains("sotto_sfu_packets_dropped_total{reason=\"malformed\"} 1\n"));
        assert!(text.contains("sotto_sfu_packets_dropped_total{reason=\"unknown_source\"} 0\n"));
    }
}
