//! One KID's ready-to-use key: suite, salt and expanded cipher.

use zeroize::Zeroizing;

use super::cipher::{Aad, FrameCipher};
use super::schedule::nonce;
use super::suite::NONCE_LEN;
use super::{CipherSuite, DerivedKey, SframeError};

pub(crate) struct FrameKey {
    kid: u64,
    suite: CipherSuite,
    salt: Zeroizing<[u8; NONCE_LEN]>,
    cipher: FrameCipher,
}

impl FrameKey {
    pub(crate) fn new(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        let derived = DerivedKey::derive(suite, kid, base_key)?;
        Ok(FrameKey {
            kid,
            suite,
            salt: Zeroizing::new(*derived.salt()),
            cipher: FrameCipher::new(&derived)?,
        })
    }

    pub(crate) fn kid(&self) -> u64 {
        self.kid
    }

    pub(crate) fn suite(&self) -> CipherSuite {
        self.suite
    }

    pub(crate) fn seal(
        &self,
        ctr: u64,
        header: &[u8],
        metadata: &[u8],
        scratch: &mut [u8],
        payload: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), SframeError> {
        let nonce = nonce(&self.salt, ctr);
        self.cipher
            .seal(&nonce, Aad { header, metadata }, scratch, payload, tag)
    }

    pub(crate) fn open(
        &self,
        ctr: u64,
        header: &[u8],
        metadata: &[u8],
        scratch: &mut [u8],
        ct_and_tag: &mut [u8],
    ) -> Result<(), SframeError> {
        let nonce = nonce(&self.salt, ctr);
        self.cipher
            .open(&nonce, Aad { header, metadata }, scratch, ct_and_tag)
    }
}
