//! Group call keys (Sans-I/O): sender keys per member, rekeying on join and leave, and the
//! receiver keyring, for calls through an SFU that cannot decrypt.
//!
//! Each member has one base secret per generation ([`GroupSecret`]); every kind's SFrame key
//! comes from it through the RFC 9605 key schedule under a v2 KID ([`GroupKid`]:
//! `gen << 10 | slot << 3 | kind`). Secrets travel as [`KeyBundle`]s over each pair's
//! authenticated channel and are acknowledged with [`KeyAck`]s. [`GroupKeys`] runs the rules;
//! the group safety code is [`crate::handshake::group_safety_code`]. The wire format and the
//! rules are in `docs/call-protocol.md`, "Group keys".
//!
//! ```
//! use std::time::Instant;
//! use sotto::group::{GroupKeys, GroupOutput, JoinKind, KeyKind, OpenOutcome, Slot};
//! use sotto::sframe::CipherSuite;
//!
//! let suite = CipherSuite::AesGcm128Sha256;
//! let (a, b) = (Slot::new(1)?, Slot::new(2)?);
//! let mut alice = GroupKeys::new(suite, a)?;
//! let mut bob = GroupKeys::new(suite, b)?;
//! let now = Instant::now();
//! alice.member_joined(now, b, JoinKind::NewJoiner)?;
//! bob.member_joined(now, a, JoinKind::AlreadyPresent)?;
//! // The driver seals bundles on the pair channel; here they go straight across.
//! while let Some(out) = alice.poll_output() {
//!     if let GroupOutput::SendBundle { body, .. } = out {
//!         bob.bundle_received(now, a, &body)?;
//!     }
//! }
//! let frame = alice.seal(KeyKind::Audio, b"opus")?;
//! let OpenOutcome::Opened(opened) = bob.open(now, &frame)? else { panic!() };
//! assert_eq!((opened.slot, opened.payload.as_slice()), (a, &b"opus"[..]));
//! # Ok::<(), sotto::group::GroupError>(())
//! ```

mod bundle;
mod error;
mod keyring;
mod kid;
mod machine;
mod secret;
mod sender;

pub use bundle::{ACK_LEN, BUNDLE_LEN, KeyAck, KeyBundle};
pub use error::{BundleError, GroupError, KidError};
pub use keyring::{
    HOLD_TIME, Inserted, Keyring, MAX_DERIVE, MAX_GENERATIONS, MAX_HELD_BYTES, MAX_HELD_FRAMES,
    OpenOutcome, OpenedFrame, SenderStats,
};
pub use kid::{GroupKid, KeyKind, MAX_GENERATION, MAX_SLOT, Slot};
pub use machine::{
    GroupEvent, GroupKeys, GroupOutput, JoinKind, RESEND_AFTER, RESEND_MAX, SWITCH_TIMEOUT,
};
pub use secret::{GroupSecret, SECRET_LEN};

#[cfg(test)]
mod tests;
