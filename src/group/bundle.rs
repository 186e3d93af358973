//! Key bundles and acks: the plaintext bodies members send each other over their pairwise
//! authenticated channel (the engine seals them with the pair's control key).
//!
//! ```text
//! bundle (51 bytes): version 2 | type 1 | slot | gen (u64 BE) | seq (u64 BE) | secret (32)
//! ack    (11 bytes): version 2 | type 2 | slot | gen (u64 BE)
//! ```
//! A bundle's slot is its sender's; `seq` grows with every bundle that sender makes, so a
//! receiver can refuse an older one. An ack's slot is the slot of the key being acknowledged
//! (the recipient's own), its gen the generation received.

use zeroize::Zeroizing;

use super::error::BundleError;
use super::kid::{MAX_GENERATION, Slot};
use super::secret::{GroupSecret, SECRET_LEN};
use crate::group::error::KidError;

/// Format version of both bodies.
pub const BODY_VERSION: u8 = 2;
/// Type byte of a bundle.
pub const TYPE_BUNDLE: u8 = 1;
/// Type byte of an ack.
pub const TYPE_ACK: u8 = 2;
/// Length of a bundle body.
pub const BUNDLE_LEN: usize = 3 + 8 + 8 + SECRET_LEN;
/// Length of an ack body.
pub const ACK_LEN: usize = 3 + 8;

/// A sender's key for one generation, as sent to one member. `Debug` hides the secret.
#[derive(Clone)]
pub struct KeyBundle {
    /// The sender's slot.
    pub slot: Slot,
    /// The generation of `secret`.
    pub generation: u64,
    /// The sender's bundle sequence number (grows by one per bundle made).
    pub seq: u64,
    /// The base secret of (slot, gen).
    pub secret: GroupSecret,
}

impl std::fmt::Debug for KeyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBundle")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// "I hold generation `generation` of slot `slot`'s key."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAck {
    /// The slot whose key is acknowledged.
    pub slot: Slot,
    /// The generation received.
    pub generation: u64,
}

fn check_head(body: &[u8], kind: u8, len: usize) -> Result<(), BundleError> {
    if let Some(&version) = body.first()
        && version != BODY_VERSION
    {
        return Err(BundleError::UnknownVersion(version));
    }
    if let Some(&got) = body.get(1)
        && got != kind
    {
        return Err(BundleError::WrongType {
            expected: kind,
            got,
        });
    }
    if body.len() != len {
        return Err(BundleError::WrongLength {
            expected: len,
            got: body.len(),
        });
    }
    Ok(())
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn slot_and_gen(body: &[u8]) -> Result<(Slot, u64), BundleError> {
    let slot = Slot::new(body[2])?;
    let generation = read_u64(&body[3..11]);
    if generation > MAX_GENERATION {
        return Err(KidError::GenerationOutOfRange(generation).into());
    }
    Ok((slot, generation))
}

impl KeyBundle {
    /// The body, zeroized when dropped.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(BUNDLE_LEN));
        out.extend_from_slice(&[BODY_VERSION, TYPE_BUNDLE, self.slot.get()]);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.secret.as_bytes());
        out
    }

    /// Parses a body from a peer: exact length, known version and type, fields in range.
    pub fn parse(body: &[u8]) -> Result<Self, BundleError> {
        check_head(body, TYPE_BUNDLE, BUNDLE_LEN)?;
        let (slot, generation) = slot_and_gen(body)?;
        let seq = read_u64(&body[11..19]);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(&body[19..BUNDLE_LEN]);
        Ok(KeyBundle {
            slot,
            generation,
            seq,
            secret: GroupSecret::from_bytes(*secret),
        })
    }
}

impl KeyAck {
    /// The body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ACK_LEN);
        out.extend_from_slice(&[BODY_VERSION, TYPE_ACK, self.slot.get()]);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// Parses a body from a peer.
    pub fn parse(body: &[u8]) -> Result<Self, BundleError> {
        check_head(body, TYPE_ACK, ACK_LEN)?;
        let (slot, generation) = slot_and_gen(body)?;
        Ok(KeyAck { slot, generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bundle() -> KeyBundle {
        KeyBundle {
            slot: Slot::new(5).unwrap(),
            generation: 3,
            seq: 9,
            secret: GroupSecret::from_bytes([0xab; 32]),
        }
    }

    #[test]
    fn bodies_round_trip_and_hide_the_secret() {
        let body = bundle().encode();
        assert_eq!(body.len(), BUNDLE_LEN);
        let back = KeyBundle::parse(&body).unwrap();
        assert_eq!((back.slot.get(), back.generation, back.seq), (5, 3, 9));
        assert!(back.secret.ct_eq(&bundle().secret));
        let shown = format!("{back:?}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab"),
            "{shown}"
        );
        let ack = KeyAck {
            slot: Slot::new(127).unwrap(),
            generation: 1 << 40,
        };
        assert_eq!(KeyAck::parse(&ack.encode()).unwrap(), ack);
    }

    #[test]
    fn malformed_bodies_get_typed_errors() {
        let body = bundle().encode();
        assert_eq!(
            KeyBundle::parse(&body[..BUNDLE_LEN - 1]).unwrap_err(),
            BundleError::WrongLength {
                expected: BUNDLE_LEN,
                got: BUNDLE_LEN - 1
            }
        );
        let mut v = body.to_vec();
        v[0] = 1;
        assert_eq!(
            KeyBundle::parse(&v).unwrap_err(),
            BundleError::UnknownVersion(1)
        );
        assert_eq!(
            KeyAck::parse(&body).unwrap_err(),
            BundleError::WrongType {
                expected: TYPE_ACK,
                got: TYPE_BUNDLE
            }
        );
        let mut v = body.to_vec();
        v[2] = 128;
        assert_eq!(
            KeyBundle::parse(&v).unwrap_err(),
            BundleError::Kid(KidError::SlotOutOfRange(128))
        );
        let mut v = body.to_vec();
        v[3] = 0xff;
        assert!(matches!(
            KeyBundle::parse(&v).unwrap_err(),
            BundleError::Kid(KidError::GenerationOutOfRange(_))
        ));
        assert!(KeyAck::parse(&[]).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let mut parsed = 0;
        for i in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Half the inputs get a valid head, so the field checks are reached too.
            if i % 2 == 0 && v.len() >= 2 {
                v[0] = BODY_VERSION;
                v[1] = if i % 4 == 0 { TYPE_BUNDLE } else { TYPE_ACK };
            }
            parsed += KeyBundle::parse(&v).is_ok() as u32;
            parsed += KeyAck::parse(&v).is_ok() as u32;
        }
        // Only exact-length bodies with in-range fields parse; with these lengths a few do.
        assert!(parsed < 2_000);
    }
}
