//! Errors of the SFrame layer.

use thiserror::Error;

/// Everything that can go wrong while building SFrame contexts or protecting a frame.
///
/// Frames from the network are untrusted: every way they can be malformed maps to a variant
/// here, never to a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SframeError {
    /// The frame ends before its header does.
    #[error("SFrame header truncated: needs {needed} bytes, frame has {available}")]
    HeaderTruncated {
        /// Bytes the header declares (at least 1).
        needed: usize,
        /// Bytes the frame has.
        available: usize,
    },
    /// A cipher suite value that RFC 9605's registry does not define (or that sotto omits).
    #[error("unknown SFrame cipher suite {0:#06x}")]
    UnknownCipherSuite(u16),
    /// Base keys must have at least one byte.
    #[error("SFrame base key is empty")]
    EmptyBaseKey,
    /// After the header there are fewer bytes than the authentication tag needs.
    #[error(
        "SFrame ciphertext too short: {available} bytes after the header, the tag alone needs {tag_len}"
    )]
    CiphertextTooShort {
        /// Bytes after the header.
        available: usize,
        /// Tag length of the key's cipher suite.
        tag_len: usize,
    },
    /// The receiver holds no key for the frame's KID.
    #[error("no SFrame key for KID {kid}")]
    UnknownKid {
        /// The KID named by the frame header.
        kid: u64,
    },
    /// The tag did not verify: wrong key, or the header, metadata, ciphertext or tag was altered.
    #[error("SFrame authentication failed")]
    AuthenticationFailed,
    /// This KID and counter were already accepted once.
    #[error("replayed SFrame frame (KID {kid}, CTR {ctr})")]
    Replay {
        /// KID of the frame.
        kid: u64,
        /// Counter of the frame.
        ctr: u64,
    },
    /// The counter is older than the replay window still tracks.
    #[error("SFrame frame too old for the replay window (KID {kid}, CTR {ctr}, newest {newest})")]
    TooOld {
        /// KID of the frame.
        kid: u64,
        /// Counter of the frame.
        ctr: u64,
        /// Highest counter accepted so far for this KID.
        newest: u64,
    },
    /// The sender used every counter value; it needs a new context rather than a wrap.
    #[error("SFrame counter exhausted: rekey with a new context")]
    CounterExhausted,
    /// A caller's buffer cannot hold the result.
    #[error("buffer too small: needs {needed} bytes, has {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The encrypt-in-place headroom is smaller than the header.
    #[error("headroom too small: the header needs {needed} bytes, headroom is {available}")]
    HeadroomTooSmall {
        /// Header length for this frame.
        needed: usize,
        /// Headroom given.
        available: usize,
    },
    /// Metadata is bounded so the AAD scratch space is allocated once, not per frame.
    #[error("SFrame metadata too long: {len} bytes, limit {max}")]
    MetadataTooLong {
        /// Metadata length given.
        len: usize,
        /// The limit ([`crate::sframe::MAX_METADATA_LEN`]).
        max: usize,
    },
    /// The receiver already holds as many keys as it was configured for.
    #[error("too many SFrame receive keys (limit {max})")]
    TooManyKeys {
        /// The configured limit.
        max: usize,
    },
    /// A replay window must track between 1 and [`crate::sframe::MAX_REPLAY_WINDOW`] frames.
    #[error("invalid replay window size {0}")]
    InvalidReplayWindow(u64),
    /// The crypto backend refused the operation (for example a payload beyond AES-GCM's limit).
    #[error("SFrame crypto backend failure")]
    Crypto,
}
