//! Errors of the key agreement layer.

use thiserror::Error;

/// Everything that can go wrong while agreeing on call keys or handling identities.
///
/// Handshake messages arrive through the signaling server, which is not trusted: each way a
/// message can be malformed, misplaced or forged is a variant here, never a panic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message is larger than [`super::MAX_MESSAGE_LEN`]; it was not parsed.
    #[error("handshake message too large: {len} bytes, limit {max}")]
    MessageTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid JSON, a missing or unknown field, or a field of the wrong form.
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    /// The peer speaks a protocol version this build does not.
    #[error(
        "the peer speaks handshake version {got}, this build speaks only {supported}: update the older side"
    )]
    UnsupportedVersion {
        /// Version in the message.
        got: u32,
        /// Version spoken here.
        supported: u32,
    },
    /// A message that does not fit the current state (reordered, replayed or from the wrong
    /// role).
    #[error("unexpected handshake message {got:?} in state {state}")]
    UnexpectedMessage {
        /// The message type received.
        got: &'static str,
        /// Where the state machine was.
        state: &'static str,
    },
    /// The peer's hello is for another call or room.
    #[error("handshake is for another call")]
    CallIdMismatch,
    /// The revealed ephemeral key does not match the commitment made in the hello.
    #[error("peer's ephemeral key does not match its commitment")]
    CommitmentMismatch,
    /// The peer's signature over the transcript does not verify: the messages were altered
    /// in transit (for example a relay swapped ephemeral keys).
    #[error("peer's transcript signature is invalid")]
    BadSignature,
    /// The peer's key confirmation does not verify: it did not derive the same keys.
    #[error("peer's key confirmation is invalid")]
    BadConfirmation,
    /// A public key is not a valid point, or the key exchange produced no secret (a
    /// small-order point).
    #[error("invalid public key from peer")]
    BadPublicKey,
    /// The peer's SDP carries another DTLS fingerprint than the one it signed in the
    /// handshake: someone rewrote the SDP to sit in the transport.
    #[error(
        "the peer's DTLS fingerprint in its SDP differs from the one it signed in the handshake (possible interception)"
    )]
    DtlsMismatch,
    /// The peer presented our own identity key: a reflected handshake.
    #[error("peer presented our own identity")]
    ReflectedIdentity,
    /// The handshake already failed or finished; start a new one.
    #[error("handshake is closed")]
    Closed,
    /// The known-peers policy refused this peer.
    #[error("peer {name:?} refused: {reason}")]
    PeerRefused {
        /// The peer's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No system randomness.
    #[error("system random number generator failed")]
    Random,
    /// Reading or writing an identity or known-peers file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An identity or known-peers file exists but is not in the expected form.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Deriving or using SFrame keys failed.
    #[error(transparent)]
    Sframe(#[from] crate::sframe::SframeError),
}
