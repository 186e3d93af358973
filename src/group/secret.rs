//! One (member, gen) base secret, and the one-way ratchet between generations.

use hkdf::Hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::error::GroupError;
use crate::sframe::SframeError;

/// Length of a base secret.
pub const SECRET_LEN: usize = 32;

const RATCHET_LABEL: &[u8] = b"sotto v2 group ratchet";

/// A sender's base secret for one generation. Zeroized on drop; `Debug` hides it.
#[derive(Clone)]
pub struct GroupSecret(Zeroizing<[u8; SECRET_LEN]>);

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSecret(..)")
    }
}

impl GroupSecret {
    /// A fresh random secret.
    pub fn random() -> Result<Self, GroupError> {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| GroupError::Random)?;
        Ok(GroupSecret(bytes))
    }

    /// A secret from raw bytes (for applications and tests with their own keys).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        GroupSecret(Zeroizing::new(bytes))
    }

    /// The next generation: `HKDF-Expand(secret, "sotto v2 group ratchet", 32)`. One way: the
    /// new secret says nothing about this one.
    pub fn ratchet(&self) -> Result<Self, GroupError> {
        let mut next = Zeroizing::new([0u8; SECRET_LEN]);
        Hkdf::<Sha256>::from_prk(self.0.as_ref())
            .ok()
            .and_then(|hk| hk.expand(RATCHET_LABEL, next.as_mut()).ok())
            .ok_or(GroupError::Sframe(SframeError::Crypto))?;
        Ok(GroupSecret(next))
    }

    /// Whether two secrets are equal (constant time); for tests and diagnostics.
    pub fn ct_eq(&self, other: &GroupSecret) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratchet_is_deterministic_and_moves() {
        let s = GroupSecret::from_bytes([7; 32]);
        let a = s.ratchet().unwrap();
        assert!(a.ct_eq(&s.ratchet().unwrap()));
        assert!(!a.ct_eq(&s));
        assert!(!a.ratchet().unwrap().ct_eq(&a));
        assert!(
            !GroupSecret::random()
                .unwrap()
                .ct_eq(&GroupSecret::random().unwrap())
        );
        assert_eq!(format!("{s:?}"), "GroupSecret(..)");
    }
}
