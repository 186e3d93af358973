//! The SFrame key schedule (RFC 9605, section 4.4.2): from a base key and a KID to the AEAD key
//! and the nonce salt.
//!
//! ```text
//! sframe_secret = HKDF-Extract("", base_key)
//! sframe_key    = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret key "  || KID || suite, Nk)
//! sframe_salt   = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret salt " || KID || suite, Nn)
//! ```
//! KID is 8 bytes and the suite 2 bytes, both big endian, so keys of different KIDs and suites
//! are independent even under one base key.

use hkdf::Hkdf;
use sha2::{Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::suite::{MAX_HASH_LEN, MAX_KEY_LEN, NONCE_LEN, SuiteHash};
use super::{CipherSuite, SframeError};

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";

/// Key material derived for one KID; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKey {
    #[zeroize(skip)]
    suite: CipherSuite,
    secret: [u8; MAX_HASH_LEN],
    key: [u8; MAX_KEY_LEN],
    salt: [u8; NONCE_LEN],
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("DerivedKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl DerivedKey {
    /// Runs the key schedule of `suite` for `kid` over `base_key` (any length but zero).
    pub fn derive(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        if base_key.is_empty() {
            return Err(SframeError::EmptyBaseKey);
        }
        let mut out = DerivedKey {
            suite,
            secret: [0; MAX_HASH_LEN],
            key: [0; MAX_KEY_LEN],
            salt: [0; NONCE_LEN],
        };
        let key_label = label(KEY_LABEL, kid, suite);
        let salt_label = label(SALT_LABEL, kid, suite);
        let key = &mut out.key[..suite.key_len()];
        // Both arms run the same schedule; only the hash differs.
        macro_rules! schedule {
            ($hash:ty) => {{
                let (mut prk, hk) = Hkdf::<$hash>::extract(Some(&[]), base_key);
                out.secret[..prk.len()].copy_from_slice(&prk);
                prk.as_mut_slice().zeroize();
                hk.expand(&key_label, key)
                    .and_then(|()| hk.expand(&salt_label, &mut out.salt))
                    .map_err(|_| SframeError::Crypto)?;
            }};
        }
        match suite.hash() {
            SuiteHash::Sha256 => schedule!(Sha256),
            SuiteHash::Sha512 => schedule!(Sha512),
        }
        Ok(out)
    }

    /// The suite this material was derived for.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// `sframe_secret` (Nh bytes).
    pub fn secret(&self) -> &[u8] {
        &self.secret[..self.suite.hash_len()]
    }

    /// `sframe_key` (Nk bytes).
    pub fn key(&self) -> &[u8] {
        &self.key[..self.suite.key_len()]
    }

    /// `sframe_salt` (Nn bytes).
    pub fn salt(&self) -> &[u8; NONCE_LEN] {
        &self.salt
    }

    /// The nonce of the frame with counter `ctr`.
    pub fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        nonce(&self.salt, ctr)
    }
}

/// `prefix || KID (8 bytes BE) || suite (2 bytes BE)`, on the stack.
fn label(prefix: &[u8], kid: u64, suite: CipherSuite) -> LabelBuf {
    let mut buf = [0u8; 33];
    let n = prefix.len();
    buf[..n].copy_from_slice(prefix);
    buf[n..n + 8].copy_from_slice(&kid.to_be_bytes());
    buf[n + 8..n + 10].copy_from_slice(&suite.id().to_be_bytes());
    LabelBuf { buf, len: n + 10 }
}

struct LabelBuf {
    buf: [u8; 33],
    len: usize,
}

impl std::ops::Deref for LabelBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The nonce of counter `ctr`: the salt XOR the counter, right-aligned big endian.
pub(crate) fn nonce(salt: &[u8; NONCE_LEN], ctr: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *salt;
    for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
        *n ^= c;
    }
    nonce
}
