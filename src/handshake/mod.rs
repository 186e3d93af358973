//! Authenticated call key agreement: identities, the X25519 handshake, safety codes, known
//! peers and key rotation.
//!
//! The handshake runs over the signaling server, which must not be able to read or forge
//! media keys:
//! - every call uses fresh X25519 keys (forward secrecy);
//! - both sides sign the whole transcript (both identities, both ephemeral keys, the call id,
//!   the protocol version, both DTLS certificate fingerprints) with their long-term Ed25519
//!   identity, and prove with a MAC that
//!   they derived the same keys;
//! - the initiator commits to its ephemeral key first, so a man in the middle with its own
//!   identities gets one guess at matching [`SafetyCode`]s, not a search;
//! - [`KnownPeers`] pins each peer's identity and reports a changed key.
//!
//! The state machine ([`Handshake`]) is Sans-I/O: bytes in, bytes and results out. The wire
//! format is documented in `docs/handshake.md`.
//!
//! ```
//! use std::sync::Arc;
//! use sotto::handshake::{DtlsFingerprint, Handshake, Identity};
//!
//! let alice = Arc::new(Identity::generate()?);
//! let bob = Arc::new(Identity::generate()?);
//! // Each side's DTLS certificate fingerprint, from its peer connection.
//! let (alice_dtls, bob_dtls) = (DtlsFingerprint::from_sha256([1; 32]), DtlsFingerprint::from_sha256([2; 32]));
//! let (mut a, hello) = Handshake::initiator(alice, "room-1", "alice", &alice_dtls)?;
//! let mut b = Handshake::responder(bob, "room-1", "bob", &bob_dtls)?;
//! let reply = b.handle(&hello)?.send.unwrap();
//! let reveal = a.handle(&reply)?.send.unwrap();
//! let step = b.handle(&reveal)?;
//! let bob_done = step.established.unwrap();
//! let alice_done = a.handle(&step.send.unwrap())?.established.unwrap();
//! assert_eq!(alice_done.safety_code, bob_done.safety_code);
//! assert_eq!(alice_done.peer_dtls, bob_dtls);
//! # Ok::<(), sotto::handshake::HandshakeError>(())
//! ```

mod dtls;
mod error;
mod group;
mod identity;
mod keys;
mod known_peers;
mod machine;
pub(crate) mod private_file;
mod transcript;
mod wire;

pub use dtls::{DtlsFingerprint, MAX_DTLS_LEN};
pub use error::HandshakeError;
pub use group::{GroupCodeError, MAX_GROUP_MEMBERS, group_safety_code};
pub use identity::{Identity, IdentityKey, default_config_dir, default_identity_path};
pub use keys::{
    CallKeys, Direction, DirectionKey, MediaKind, MediaReceiver, MediaSender, RotationConfig,
    VIDEO_KID_BASE, kid_for, kind_kid_for,
};
pub use known_peers::{
    KnownPeers, MAX_KNOWN_PEERS, PeerRecord, PeerTrust, TrustPolicy, VerifyError,
};
pub use machine::{Established, Handshake, Role, Step};
pub use transcript::SafetyCode;
pub use wire::{MAX_CALL_ID_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN, PROTOCOL_VERSION};
