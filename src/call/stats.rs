//! Call statistics: counters the media threads bump (atomics, no locks on the frame path) and
//! the snapshot applications read.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

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
    /// Video frames encoded, sealed and handed to the transport.
    pub video_frames_sent: u64,
    /// Video frames that arrived whole from the transport (before decryption).
    pub video_frames_received: u64,
    /// Video frames that authenticated and decrypted.
    pub video_frames_decrypted: u64,
    /// Video frames refused: bad tag, unknown key, malformed layout. Never decoded or shown.
    pub video_decrypt_failures: u64,
    /// Video frames refused as replays or older than the replay window.
    pub video_replays_rejected: u64,
    /// Video frames that authenticated but whose RTP timestamp contradicts their counter.
    pub video_reorder_rejected: u64,
    /// Decrypted video frames the decoder refused.
    pub video_decode_errors: u64,
    /// Video frames shown (written to the video sink).
    pub video_frames_rendered: u64,
    /// Decrypted video frames not decoded because a frame before them was lost (they wait
    /// for the keyframe asked for).
    pub video_frames_skipped: u64,
    /// Keyframes we sent.
    pub video_keyframes_sent: u64,
    /// Keyframes the peer asked us for (PLI or FIR received).
    pub video_keyframes_requested: u64,
    /// Keyframes we asked the peer for (PLI sent).
    pub video_keyframe_requests_sent: u64,
    /// Width of the last picture shown.
    pub video_width: u32,
    /// Height of the last picture shown.
    pub video_height: u32,
    /// Pictures shown per second over the last stats interval.
    pub video_fps_received: f64,
    /// Outgoing video bitrate over the last stats interval (sealed frames), kbit/s.
    pub video_send_kbps: f64,
    /// Incoming video bitrate over the last stats interval, kbit/s.
    pub video_recv_kbps: f64,
    /// The encoder's target bitrate: the bandwidth estimate minus audio's share, kbit/s.
    pub video_target_kbps: u64,
    /// Gaps between shown pictures of at least max(3 x the mean frame time, mean + 150 ms).
    pub video_freezes: u64,
    /// How much later a picture is shown than the audio that arrived with it is played, ms
    /// (negative: earlier). `None` until a picture was shown.
    pub av_sync_offset_ms: Option<f64>,
    /// Text messages we sent.
    pub messages_sent: u64,
    /// Text messages from the peer accepted.
    pub messages_received: u64,
    /// Text messages from the peer refused after they authenticated (malformed, oversize,
    /// replayed or reordered by sequence number, duplicate id, wrong sender, bad timer).
    /// Sealed frames that fail authentication or replay are refused before anyone can tell
    /// what they carry, and count in `control_failures`.
    pub messages_rejected: u64,
    /// Text messages (ours and the peer's) that expired and were erased.
    pub messages_expired: u64,
    /// ICE restarts after the path was lost: restart offers we sent, or answered.
    pub ice_restarts: u64,
    /// New connections to the SFU after the path to it was lost (group calls).
    pub sfu_reconnects: u64,
    /// `p2p` for a two-party call, `sfu` for a group call through the SFU.
    pub mode: &'static str,
    /// A group call's safety code over the room and every member's identity (ours included),
    /// once a member's keys are agreed. In a group, `safety_code` in reports is this code.
    pub group_safety_code: Option<String>,
    /// A group call's other members whose keys were agreed: those in the call now, then
    /// (with `present: false`) the latest that left.
    pub participants: Vec<ParticipantStats>,
    /// Times our group sending key changed (each join ratchets it, each leave replaces it).
    pub rekeys: u64,
    /// Group frames dropped because their sender's key never came (never played).
    pub unknown_key_frames: u64,
}

/// One other member of a group call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParticipantStats {
    /// Its name (canonical, as shown).
    pub name: String,
    /// Its identity key's fingerprint.
    pub identity: String,
    /// What the known-peers store says about it.
    pub trust: &'static str,
    /// Its frames that authenticated and decrypted (every kind: audio and video).
    pub frames_decrypted: u64,
    /// Its frames that failed authentication under a key we hold (every kind).
    pub decrypt_failures: u64,
    /// Its video frames that authenticated and decrypted (also in `frames_decrypted`).
    pub video_frames_decrypted: u64,
    /// Its video frames that failed authentication (also in `decrypt_failures`).
    pub video_decrypt_failures: u64,
    /// Whether its voice was heard in the last moment.
    pub speaking: bool,
    /// Still in the call (members that left keep their last figures, `present: false`).
    pub present: bool,
}

/// What a group call adds to the figures (set by the call task, read at snapshots).
#[derive(Debug, Default)]
pub(crate) struct GroupFigures {
    pub group_safety_code: Option<String>,
    pub participants: Vec<ParticipantStats>,
    pub rekeys: u64,
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
    pub video_frames_sent: AtomicU64,
    pub video_bytes_sent: AtomicU64,
    pub video_frames_received: AtomicU64,
    pub video_bytes_received: AtomicU64,
    pub video_frames_decrypted: AtomicU64,
    pub video_decrypt_failures: AtomicU64,
    pub video_replays_rejected: AtomicU64,
    pub video_reorder_rejected: AtomicU64,
    pub video_decode_errors: AtomicU64,
    pub video_frames_rendered: AtomicU64,
    pub video_frames_skipped: AtomicU64,
    pub video_keyframes_sent: AtomicU64,
    pub video_keyframes_requested: AtomicU64,
    pub video_keyframe_requests_sent: AtomicU64,
    pub video_width: AtomicU32,
    pub video_height: AtomicU32,
    pub video_target_kbps: AtomicU64,
    pub video_freezes: AtomicU64,
    /// Microseconds, signed.
    pub av_sync_offset_us: AtomicI64,
    pub av_sync_measured: AtomicBool,
    /// The RTP timestamp of the audio frame played last (high 32 bits) and when, in 100 us
    /// units since [`clock_base`] (low 32 bits, wrapping): one word, so it never tears.
    pub audio_played: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub messages_expired: AtomicU64,
    pub ice_restarts: AtomicU64,
    pub sfu_reconnects: AtomicU64,
    pub unknown_key_frames: AtomicU64,
    /// Set for a group call (then `group` holds its figures).
    pub group_mode: AtomicBool,
    /// Not on the frame path: written by the call task, read by snapshots.
    pub group: std::sync::Mutex<GroupFigures>,
}

/// The instant the call clocks of [`SharedStats`] count from.
pub(crate) fn clock_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

const TICK_US: u64 = 100;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl SharedStats {
    /// Records that the audio frame with RTP timestamp `ts` was played at `at`.
    pub(crate) fn set_audio_played(&self, ts: u32, at: Instant) {
        let ticks = at.saturating_duration_since(clock_base()).as_micros() as u64 / TICK_US;
        self.audio_played
            .store(u64::from(ts) << 32 | (ticks & 0xffff_ffff), Relaxed);
    }

    /// The audio frame played last and when, if any was (read near `now`: the stored time
    /// wraps every 4.9 days).
    pub(crate) fn audio_played(&self, now: Instant) -> Option<(u32, Instant)> {
        let word = self.audio_played.load(Relaxed);
        if word == 0 {
            return None;
        }
        let ts = (word >> 32) as u32;
        let stored = word & 0xffff_ffff;
        let now_ticks = now.saturating_duration_since(clock_base()).as_micros() as u64 / TICK_US;
        let back = (now_ticks & 0xffff_ffff).wrapping_sub(stored) & 0xffff_ffff;
        let at = now.checked_sub(Duration::from_micros(back * TICK_US))?;
        Some((ts, at))
    }

    pub(crate) fn set_duration(cell: &AtomicU64, d: Duration) {
        cell.store(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A snapshot; bitrates are filled in by the caller that knows the interval.
    pub(crate) fn snapshot(&self) -> CallStats {
        let played = self.frames_played.load(Relaxed);
        let lost = self.frames_lost.load(Relaxed);
        let nonzero = |v: u64| (v > 0).then(|| ms(v));
        let mut stats = CallStats {
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
            video_frames_sent: self.video_frames_sent.load(Relaxed),
            video_frames_received: self.video_frames_received.load(Relaxed),
            video_frames_decrypted: self.video_frames_decrypted.load(Relaxed),
            video_decrypt_failures: self.video_decrypt_failures.load(Relaxed),
            video_replays_rejected: self.video_replays_rejected.load(Relaxed),
            video_reorder_rejected: self.video_reorder_rejected.load(Relaxed),
            video_decode_errors: self.video_decode_errors.load(Relaxed),
            video_frames_rendered: self.video_frames_rendered.load(Relaxed),
            video_frames_skipped: self.video_frames_skipped.load(Relaxed),
            video_keyframes_sent: self.video_keyframes_sent.load(Relaxed),
            video_keyframes_requested: self.video_keyframes_requested.load(Relaxed),
            video_keyframe_requests_sent: self.video_keyframe_requests_sent.load(Relaxed),
            video_width: self.video_width.load(Relaxed),
            video_height: self.video_height.load(Relaxed),
            video_fps_received: 0.0,
            video_send_kbps: 0.0,
            video_recv_kbps: 0.0,
            video_target_kbps: self.video_target_kbps.load(Relaxed),
            video_freezes: self.video_freezes.load(Relaxed),
            av_sync_offset_ms: self
                .av_sync_measured
                .load(Relaxed)
                .then(|| self.av_sync_offset_us.load(Relaxed) as f64 / 1000.0),
            messages_sent: self.messages_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            messages_rejected: self.messages_rejected.load(Relaxed),
            messages_expired: self.messages_expired.load(Relaxed),
            ice_restarts: self.ice_restarts.load(Relaxed),
            sfu_reconnects: self.sfu_reconnects.load(Relaxed),
            mode: if self.group_mode.load(Relaxed) {
                "sfu"
            } else {
                "p2p"
            },
            group_safety_code: None,
            participants: Vec::new(),
            rekeys: 0,
            unknown_key_frames: self.unknown_key_frames.load(Relaxed),
        };
        if let Ok(group) = self.group.lock() {
            stats.group_safety_code = group.group_safety_code.clone();
            stats.participants = group.participants.clone();
            stats.rekeys = group.rekeys;
        }
        stats
    }
}

/// Turns byte counters into bitrates between two stats ticks.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    last_sent: u64,
    last_received: u64,
    last_video_sent: u64,
    last_video_received: u64,
    last_rendered: u64,
}

impl RateMeter {
    /// Fills `stats`' bitrates from the counters' growth over `interval`.
    pub(crate) fn update(
        &mut self,
        shared: &SharedStats,
        interval: Duration,
        stats: &mut CallStats,
    ) {
        let secs = interval.as_secs_f64().max(1e-3);
        let rate = |now: u64, last: &mut u64| {
            let per_sec = now.saturating_sub(*last) as f64 / secs;
            *last = now;
            per_sec
        };
        let kbps = |bytes_per_sec: f64| bytes_per_sec * 8.0 / 1000.0;
        stats.send_kbps = kbps(rate(shared.bytes_sent.load(Relaxed), &mut self.last_sent));
        stats.recv_kbps = kbps(rate(
            shared.bytes_received.load(Relaxed),
            &mut self.last_received,
        ));
        stats.video_send_kbps = kbps(rate(
            shared.video_bytes_sent.load(Relaxed),
            &mut self.last_video_sent,
        ));
        stats.video_recv_kbps = kbps(rate(
            shared.video_bytes_received.load(Relaxed),
            &mut self.last_video_received,
        ));
        stats.video_fps_received = rate(
            shared.video_frames_rendered.load(Relaxed),
            &mut self.last_rendered,
        );
    }
}
