//! Errors of the group key layer.

use thiserror::Error;

use super::kid::Slot;
use crate::sframe::SframeError;

/// Why a KID, slot or generation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KidError {
    /// Kinds 4 to 7 are reserved; a frame using one is refused.
    #[error("reserved KID kind {0}")]
    ReservedKind(u8),
    /// Slots have 7 bits (0 to 127).
    #[error("slot {0} out of range (0 to 127)")]
    SlotOutOfRange(u64),
    /// The generation does not fit the KID's 54 upper bits.
    #[error("key generation {0} out of range")]
    GenerationOutOfRange(u64),
}

/// Why a key bundle or ack body was refused. Bodies come from peers: every malformed form is a
/// variant here, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The body is not exactly as long as its type requires.
    #[error("group key body has {got} bytes, expected {expected}")]
    WrongLength {
        /// Bytes this type of body has.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A format version other than 2.
    #[error("group key body version {0} is not supported")]
    UnknownVersion(u8),
    /// The type byte is not the one expected (bundle 1, ack 2).
    #[error("group key body of type {got}, expected {expected}")]
    WrongType {
        /// The type wanted here.
        expected: u8,
        /// The type received.
        got: u8,
    },
    /// The slot or generation is out of range.
    #[error(transparent)]
    Kid(#[from] KidError),
}

/// Everything that can go wrong in the group key state machine and the receiver keyring.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A malformed bundle or ack body.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A frame whose KID is not a v2 group KID.
    #[error(transparent)]
    Kid(#[from] KidError),
    /// The SFrame layer refused (malformed frame, replay, failed authentication, ...).
    #[error(transparent)]
    Sframe(#[from] SframeError),
    /// The slot is not a member (frames, bundles or acks from it are refused).
    #[error("slot {0} is not a member")]
    UnknownMember(Slot),
    /// The slot is already a member (or is our own).
    #[error("slot {0} is already taken")]
    SlotTaken(Slot),
    /// A bundle names a sender slot other than the member it came from.
    #[error("bundle from slot {from} claims slot {claimed}")]
    SlotMismatch {
        /// The member whose pairwise channel carried it.
        from: Slot,
        /// The slot written in the bundle.
        claimed: Slot,
    },
    /// An ack for another member's key reached us.
    #[error("ack for slot {0}, which is not ours")]
    AckNotForUs(Slot),
    /// The bundle's sequence number is older than one already accepted from this sender.
    #[error("stale bundle: sequence {seq}, already accepted {last}")]
    StaleBundle {
        /// Sequence of the refused bundle.
        seq: u64,
        /// Highest sequence accepted from this sender.
        last: u64,
    },
    /// The generation is older than the receiver keeps for this sender.
    #[error("stale key generation {generation} (keeping {floor} and newer)")]
    StaleGeneration {
        /// Generation of the refused key.
        generation: u64,
        /// Oldest generation still accepted.
        floor: u64,
    },
    /// The receiver already holds as many generations of this sender as it may.
    #[error("too many key generations held for slot {0}")]
    TooManyGenerations(Slot),
    /// No key for this frame, and it was not held (full queue, too old, or too large).
    #[error("no key for slot {slot} generation {generation}")]
    UnknownKey {
        /// Sender slot of the frame.
        slot: Slot,
        /// Generation of the frame.
        generation: u64,
    },
    /// Our own key generation cannot grow any more.
    #[error("key generations exhausted")]
    GenerationsExhausted,
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
}
