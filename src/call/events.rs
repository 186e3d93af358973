//! What a call reports to the application.

use crate::handshake::{IdentityKey, PeerTrust};
use crate::messages::ChatEvent;

use super::stats::CallStats;

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallState {
    /// Connecting to the signaling server and joining the room.
    Joining,
    /// In the room, waiting for the other peer.
    WaitingForPeer,
    /// Running the key agreement with the peer.
    Handshaking,
    /// Keys agreed; waiting for the WebRTC connection.
    Connecting,
    /// Media flows, end to end encrypted.
    Connected,
    /// Connected, but for over a second every frame from the peer failed authentication and
    /// none decrypted: the keys differ, someone may be in the middle. Not end-to-end
    /// encrypted in any useful sense; back to `Connected` when frames decrypt.
    Undecryptable,
    /// The path dropped: ICE is restarted (by the call's initiator) to bring it back, with the
    /// same keys and playout. Back to `Connected` when it is, or the call ends with
    /// [`EndReason::ConnectionLost`] after 30 s.
    Reconnecting,
    /// Over.
    Ended,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// We hung up (or the configured duration ran out).
    LocalHangup,
    /// The call ended (we hung up, the configured duration ran out, or the peer left) before
    /// media ever connected: it never happened. Says how far the set-up got.
    NeverConnected(&'static str),
    /// The peer sent an authenticated hang-up.
    RemoteHangup,
    /// The signaling server says the peer left.
    PeerLeft,
    /// Key agreement failed; nothing was sent.
    HandshakeFailed(String),
    /// The peer's identity is not trusted under the configured policy.
    PeerNotTrusted(String),
    /// The peer's SDP carries another DTLS fingerprint than the one it signed: someone
    /// rewrote the SDP to sit in the transport.
    TransportNotBound(String),
    /// The WebRTC connection failed or could not be set up.
    ConnectionFailed(String),
    /// The path to the peer was lost and did not come back within this time, ICE restarts
    /// included.
    ConnectionLost(std::time::Duration),
    /// The signaling server refused us or went away for good.
    SignalingFailed(String),
    /// A local audio device or file failed.
    MediaFailed(String),
    /// A step took longer than its timeout.
    Timeout(&'static str),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The texts may quote what a peer or server sent: never let it drive a terminal.
        use crate::text::Printable as P;
        match self {
            EndReason::LocalHangup => write!(f, "hung up"),
            EndReason::NeverConnected(stage) => {
                write!(f, "media never connected: {stage}")
            }
            EndReason::RemoteHangup => write!(f, "the peer hung up"),
            EndReason::PeerLeft => write!(f, "the peer left"),
            EndReason::HandshakeFailed(e) => write!(f, "key agreement failed: {}", P(e)),
            EndReason::PeerNotTrusted(e) => write!(f, "peer not trusted: {}", P(e)),
            EndReason::TransportNotBound(e) => {
                write!(f, "transport not bound to the peer: {}", P(e))
            }
            EndReason::ConnectionFailed(e) => write!(f, "connection failed: {}", P(e)),
            EndReason::ConnectionLost(after) => write!(
                f,
                "connection lost: the path to the peer did not come back within {} s",
                after.as_secs()
            ),
            EndReason::SignalingFailed(e) => write!(f, "signaling failed: {}", P(e)),
            EndReason::MediaFailed(e) => write!(f, "audio failed: {}", P(e)),
            EndReason::Timeout(what) => write!(f, "timed out: {what}"),
        }
    }
}

/// The authenticated peer: who the keys are shared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's name in canonical form ([`crate::names::canonical`]): what to show. The
    /// raw name is never shown.
    pub name: String,
    /// The name mixes scripts (for example Latin and Cyrillic), as lookalikes do: warn.
    pub mixed_script: bool,
    /// Its identity key, proven by its signature.
    pub identity: IdentityKey,
    /// The code both people compare ("0421 7736").
    pub safety_code: String,
    /// What the known-peers store says about this identity.
    pub trust: PeerTrust,
}

/// Something the application may want to show or act on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallEvent {
    /// The call moved to a new state.
    State(CallState),
    /// Keys are agreed: show the safety code for the people to compare.
    SafetyCode(PeerInfo),
    /// The peer's identity key differs from the one pinned for its name, or for a pinned name
    /// that looks like it. Until the people compare safety codes, assume someone is in the
    /// middle.
    PeerIdentityChanged {
        /// The peer's name (canonical).
        name: String,
        /// The pinned name it matched: differs from `name` for a lookalike.
        pinned_name: String,
        /// The key pinned before.
        pinned: IdentityKey,
        /// The key it presented now.
        presented: IdentityKey,
    },
    /// Periodic statistics.
    Stats(CallStats),
    /// Frames from the peer failed authentication (new failures since the last report).
    AuthenticationFailures {
        /// How many new failures.
        new: u64,
        /// How many in all.
        total: u64,
    },
    /// The peer muted or unmuted.
    PeerMuted(bool),
    /// The first frame from the peer was decrypted and played.
    FirstAudio {
        /// Join to first played frame, in ms.
        setup_ms: f64,
    },
    /// The peer's video is shown at a new size (its first picture, or a change as its sender
    /// adapts to the network).
    VideoSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A group member's video is shown at a new size (its first picture, or a change):
    /// the group-call counterpart of [`CallEvent::VideoSize`].
    ParticipantVideoSize {
        /// The member (canonical name, as in [`CallEvent::ParticipantJoined`]).
        name: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A text message arrived, was sent, delivered, refused or expired, the disappearing
    /// timer changed, or (at the end of the call) a message was not delivered. Texts in these
    /// events are wiped when their message expires.
    Chat(ChatEvent),
    /// Group calls: a member's keys are agreed and it gets ours (`safety_code` is the pair's
    /// code; the one to compare is [`CallEvent::GroupSafetyCode`]).
    ParticipantJoined(PeerInfo),
    /// Group calls: a member left (its keys are erased; ours are replaced).
    ParticipantLeft {
        /// Its name (canonical).
        name: String,
    },
    /// Group calls: a member was refused (its name or identity failed the trust policy); it
    /// gets no key and its frames are not opened.
    ParticipantRefused {
        /// The name it joined with (canonical).
        name: String,
        /// Why.
        reason: String,
    },
    /// Group calls: the group safety code, over the room and every member's identity. It
    /// changes when the membership does; everyone in the call sees the same code.
    GroupSafetyCode {
        /// The code ("0421 7736").
        code: String,
        /// The members it covers besides us (canonical names, sorted).
        members: Vec<String>,
        /// There was an earlier code in this call: tell the people it changed.
        changed: bool,
    },
    /// Group calls: a member started or stopped speaking.
    Speaking {
        /// Its name (canonical).
        name: String,
        /// Speaking now.
        speaking: bool,
    },
    /// What we trust of the peer, or of a group member, changed in this call
    /// ([`Call::verify`](crate::call::Call::verify) marked it verified).
    TrustChanged {
        /// Its name (canonical).
        name: String,
        /// What the known-peers store says now.
        trust: PeerTrust,
    },
    /// Group calls: a member muted or unmuted.
    ParticipantMuted {
        /// Its name (canonical).
        name: String,
        /// Muted now.
        muted: bool,
    },
    /// The call is over; the final statistics follow in `stats`.
    Ended {
        /// Why.
        reason: EndReason,
        /// Final figures.
        stats: CallStats,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost path ends the call as a failure that says why.
    #[test]
    fn a_lost_path_is_a_failed_end_with_its_reason() {
        let lost = EndReason::ConnectionLost(std::time::Duration::from_secs(30));
        assert_eq!(
            lost.to_string(),
            "connection lost: the path to the peer did not come back within 30 s"
        );
        assert!(!crate::call::ended_ok(&lost));
    }
}
