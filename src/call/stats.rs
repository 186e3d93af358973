//! Call statistics: counters the media threads bump (atomics, no locks on the frame path) and
//! the snapshot applications read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// A snapshot of a call's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallStats {
    /// Round-trip time over the encrypted control channel (latest ping), in ms.
    pub rtt_ms: Option<f64>,
    /// Share of the peer's frames lost (not recovered in time), percent.
    pub loss_percent: f64,
    /// Arrival jitter (p95 of the relative delay), in ms.
    pub jitter_ms: f64,
    /// Outgoing media bitrate over the last stats interval (SFrame payloads), kbit/s.
    pub send_kbps: f64,
    /// Incoming media bitrate over the last stats interval, kbit/s.
    pub recv_kbps: f64,
    /// Audio waiting in the playout buffer, in ms.
    pub playout_delay_ms: f64,
    /// Frames encoded, sealed and handed to the transport.
    pub frames_sent: u64,
    /// Frames that arrived from the transport (before decryption).
    pub frames_received: u64,
    /// Frames that authenticated and decrypted.
    pub frames_decrypted: u64,
    /// Frames refused: bad tag, unknown key, malformed.
    pub decrypt_failures: u64,
    /// Frames refused as replays or older than the replay window.
    pub replays_rejected: u64,
    /// Frames that authenticated but were refused because their RTP sequence number or
    /// timestamp contradicts their SFrame counter (reordered or spliced by a relay).
    pub reorder_rejected: u64,
    /// Frames played from a received packet.
    pub frames_played: u64,
    /// Frames concealed (loss, underrun), FEC excluded.
    pub frames_concealed: u64,
    /// Frames recovered from the next packet's FEC.
    pub fec_recovered: u64,
    /// Control messages refused (authentication, replay).
    pub control_failures: u64,
    /// Handshake messages that arrived after the keys were agreed, ignored.
    pub late_handshake_messages: u64,
    /// Join to first decrypted frame played, in ms.
    pub setup_ms: Option<f64>,
    /// Whether our microphone is muted.
    pub muted: bool,
    /// Whether the peer says its microphone is muted.
    pub peer_muted: bool,
}

/// Counters shared between the call task and the media threads.
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub frames_decrypted: AtomicU64,
    pub decrypt_failures: AtomicU64,
    pub replays_rejected: AtomicU64,
    pub reorder_rejected: AtomicU64,
    pub frames_played: AtomicU64,
    pub frames_concealed: AtomicU64,
    pub fec_recovered: AtomicU64,
    pub frames_lost: AtomicU64,
    pub control_failures: AtomicU64,
    pub late_handshake_messages: AtomicU64,
    /// Microseconds.
    pub jitter_us: AtomicU64,
    pub playout_delay_us: AtomicU64,
    pub rtt_us: AtomicU64,
    pub setup_us: AtomicU64,
    pub muted: AtomicBool,
    pub peer_muted: AtomicBool,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl SharedStats {
    pub(crate) fn set_duration(cell: &AtomicU64, d: Duration) {
        cell.store(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A snapshot; bitrates are filled in by the caller that knows the interval.
    pub(crate) fn snapshot(&self) -> CallStats {
        let played = self.frames_played.load(Relaxed);
        let lost = self.frames_lost.load(Relaxed);
        let nonzero = |v: u64| (v > 0).then(|| ms(v));
        CallStats {
            rtt_ms: nonzero(self.rtt_us.load(Relaxed)),
            loss_percent: if played + lost == 0 {
                0.0
            } else {
                100.0 * lost as f64 / (played + lost) as f64
            },
            jitter_ms: ms(self.jitter_us.load(Relaxed)),
            send_kbps: 0.0,
            recv_kbps: 0.0,
            playout_delay_ms: ms(self.playout_delay_us.load(Relaxed)),
            frames_sent: self.frames_sent.load(Relaxed),
            frames_received: self.frames_received.load(Relaxed),
            frames_decrypted: self.frames_decrypted.load(Relaxed),
            decrypt_failures: self.decrypt_failures.load(Relaxed),
            replays_rejected: self.replays_rejected.load(Relaxed),
            reorder_rejected: self.reorder_rejected.load(Relaxed),
            frames_played: played,
            frames_concealed: self.frames_concealed.load(Relaxed),
            fec_recovered: self.fec_recovered.load(Relaxed),
            control_failures: self.control_failures.load(Relaxed),
            late_handshake_messages: self.late_handshake_messages.load(Relaxed),
            setup_ms: nonzero(self.setup_us.load(Relaxed)),
            muted: self.muted.load(Relaxed),
            peer_muted: self.peer_muted.load(Relaxed),
        }
    }
}

/// Turns byte counters into bitrates between two stats ticks.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    last_sent: u64,
    last_received: u64,
}

impl RateMeter {
    /// Fills `stats`' bitrates from the counters' growth over `interval`.
    pub(crate) fn update(
        &mut self,
        shared: &SharedStats,
        interval: Duration,
        stats: &mut CallStats,
    ) {
        let sent = shared.bytes_sent.load(Relaxed);
        let received = shared.bytes_received.load(Relaxed);
        let secs = interval.as_secs_f64().max(1e-3);
        stats.send_kbps = sent.saturating_sub(self.last_sent) as f64 * 8.0 / 1000.0 / secs;
        stats.recv_kbps = received.saturating_sub(self.last_received) as f64 * 8.0 / 1000.0 / secs;
        self.last_sent = sent;
        self.last_received = received;
    }
}
