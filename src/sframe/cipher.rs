//! The AEAD of each suite behind one interface, with the key expanded once per KID.
//!
//! GCM suites use ring (the fastest AES-GCM in the dependency tree, measured in
//! `benches/sframe.rs`). The CTR-HMAC suites (RFC 9605, section 4.5.1) combine AES-128-CTR
//! from RustCrypto with ring's HMAC-SHA256:
//!
//! ```text
//! ct  = AES-CTR(enc_key, nonce || 0x00000000, pt)
//! tag = HMAC(auth_key, len(aad) || len(ct) || Nt || nonce || aad || ct)[..Nt]   (lengths u64 BE)
//! ```

use aes::{Aes128, Aes256};
use ctr::cipher::{InnerIvInit, KeyInit, StreamCipher};
use ctr::{Ctr128BE, CtrCore};
use ring::{aead, hmac};
use subtle::ConstantTimeEq;

use super::suite::NONCE_LEN;
use super::{CipherSuite, DerivedKey, SframeError};
use crate::wipe::Wiped;

/// Associated data of one frame: the encoded header followed by the application's metadata.
///
/// Kept in two parts so the header can stay inside the frame buffer; only ring's GCM needs it
/// contiguous, and then `scratch` (sized once per context) holds the joined copy.
pub(crate) struct Aad<'a> {
    pub(crate) header: &'a [u8],
    pub(crate) metadata: &'a [u8],
}

impl Aad<'_> {
    fn len(&self) -> usize {
        self.header.len() + self.metadata.len()
    }

    /// The AAD as one slice: the header itself when there is no metadata (no copy).
    fn joined<'s>(&'s self, scratch: &'s mut [u8]) -> Result<&'s [u8], SframeError> {
        if self.metadata.is_empty() {
            return Ok(self.header);
        }
        let len = self.len();
        let max = scratch.len().saturating_sub(self.header.len());
        let Some(dst) = scratch.get_mut(..len) else {
            return Err(SframeError::MetadataTooLong {
                len: self.metadata.len(),
                max,
            });
        };
        let (h, m) = dst.split_at_mut(self.header.len());
        h.copy_from_slice(self.header);
        m.copy_from_slice(self.metadata);
        Ok(dst)
    }
}

/// One KID's expanded key: ready to seal or open frames without further key setup.
pub(crate) enum FrameCipher {
    Gcm(Wiped<aead::LessSafeKey>),
    CtrHmac {
        aes: CtrAes,
        mac: Wiped<hmac::Key>,
        tag_len: usize,
    },
}

/// The block cipher under CTR mode. RustCrypto's AES zeroizes its round keys on drop (the
/// crate's `zeroize` feature).
pub(crate) enum CtrAes {
    Aes128(Aes128),
    Aes256(Aes256),
}

impl FrameCipher {
    pub(crate) fn new(derived: &DerivedKey) -> Result<Self, SframeError> {
        let suite = derived.suite();
        let key = derived.key();
        let gcm = |alg: &'static aead::Algorithm| {
            aead::UnboundKey::new(alg, key)
                .map(|k| FrameCipher::Gcm(Wiped::new(aead::LessSafeKey::new(k))))
                .map_err(|_| SframeError::Crypto)
        };
        match suite {
            CipherSuite::AesGcm128Sha256 => gcm(&aead::AES_128_GCM),
            CipherSuite::AesGcm256Sha512 => gcm(&aead::AES_256_GCM),
            CipherSuite::AesCtr128HmacSha256_80
            | CipherSuite::AesCtr128HmacSha256_64
            | CipherSuite::AesCtr128HmacSha256_32 => {
                CtrHmacAead::new(16, CtrHmacHash::Sha256, suite.tag_len())?.cipher(key)
            }
        }
    }

    /// Encrypts `payload` in place and writes the tag (exactly the suite's tag length).
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        scratch: &mut [u8],
        payload: &mut [u8],
        tag_out: &mut [u8],
    ) -> Result<(), SframeError> {
        match self {
            FrameCipher::Gcm(key) => {
                let aad = aad.joined(scratch)?;
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(*nonce),
                        aead::Aad::from(aad),
                        payload,
                    )
                    .map_err(|_| SframeError::Crypto)?;
                tag_out.copy_from_slice(tag.as_ref());
                Ok(())
            }
            FrameCipher::CtrHmac { aes, mac, tag_len } => {
                ctr_apply(aes, nonce, payload);
                let full = ctr_hmac_tag(mac, *tag_len, nonce, &aad, payload);
                tag_out.copy_from_slice(&full.as_ref()[..*tag_len]);
                Ok(())
            }
        }
    }

    /// Verifies and decrypts `ct_and_tag` in place; the plaintext is the leading
    /// `len - tag_len` bytes. Nothing is decrypted unless the tag verifies.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        scratch: &mut [u8],
        ct_and_tag: &mut [u8],
    ) -> Result<(), SframeError> {
        match self {
            FrameCipher::Gcm(key) => {
                let aad = aad.joined(scratch)?;
                key.open_in_place(
                    aead::Nonce::assume_unique_for_key(*nonce),
                    aead::Aad::from(aad),
                    ct_and_tag,
                )
                .map(|_| ())
                .map_err(|_| SframeError::AuthenticationFailed)
            }
            FrameCipher::CtrHmac { aes, mac, tag_len } => {
                let ct_len = ct_and_tag.len().checked_sub(*tag_len).ok_or(
                    SframeError::CiphertextTooShort {
                        available: ct_and_tag.len(),
                        tag_len: *tag_len,
                    },
                )?;
                let (ct, tag) = ct_and_tag.split_at_mut(ct_len);
                let expected = ctr_hmac_tag(mac, *tag_len, nonce, &aad, ct);
                if !bool::from(expected.as_ref()[..*tag_len].ct_eq(tag)) {
                    return Err(SframeError::AuthenticationFailed);
                }
                ctr_apply(aes, nonce, ct);
                Ok(())
            }
        }
    }
}

fn ctr_apply(aes: &CtrAes, nonce: &[u8; NONCE_LEN], data: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..NONCE_LEN].copy_from_slice(nonce);
    // Cloning copies the expanded round keys; no key schedule runs per frame.
    match aes {
        CtrAes::Aes128(k) => {
            Ctr128BE::<Aes128>::from_core(CtrCore::inner_iv_init(k.clone(), &iv.into()))
                .apply_keystream(data)
        }
        CtrAes::Aes256(k) => {
            Ctr128BE::<Aes256>::from_core(CtrCore::inner_iv_init(k.clone(), &iv.into()))
                .apply_keystream(data)
        }
    }
}

fn ctr_hmac_tag(
    mac: &hmac::Key,
    tag_len: usize,
    nonce: &[u8; NONCE_LEN],
    aad: &Aad<'_>,
    ct: &[u8],
) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(&(ct.len() as u64).to_be_bytes());
    ctx.update(&(tag_len as u64).to_be_bytes());
    ctx.update(nonce);
    ctx.update(aad.header);
    ctx.update(aad.metadata);
    ctx.update(ct);
    ctx.sign()
}

/// The hash of a CTR-HMAC AEAD's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrHmacHash {
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// The bare AES-CTR + HMAC AEAD of RFC 9605, section 4.5.1, over an explicit key, nonce and
/// AAD, as the RFC's AES-CTR-HMAC test vectors exercise it. The registry suites 1-3 use
/// AES-128 with SHA256; the published vectors also cover AES-256 with SHA512.
///
/// Allocates per call: for conformance tests and tools, not for per-frame use.
#[derive(Debug, Clone, Copy)]
pub struct CtrHmacAead {
    enc_key_len: usize,
    hash: CtrHmacHash,
    tag_len: usize,
}

impl CtrHmacAead {
    /// An AEAD with an AES key of `enc_key_len` bytes (16 or 32), the given MAC hash and a tag
    /// of `tag_len` bytes (1 to the hash length).
    pub fn new(enc_key_len: usize, hash: CtrHmacHash, tag_len: usize) -> Result<Self, SframeError> {
        let hash_len = match hash {
            CtrHmacHash::Sha256 => 32,
            CtrHmacHash::Sha512 => 64,
        };
        if !matches!(enc_key_len, 16 | 32) || tag_len == 0 || tag_len > hash_len {
            return Err(SframeError::Crypto);
        }
        Ok(CtrHmacAead {
            enc_key_len,
            hash,
            tag_len,
        })
    }

    /// Bytes of the combined key: the AES key, then a MAC key as long as the hash output.
    pub fn key_len(&self) -> usize {
        self.enc_key_len
            + match self.hash {
                CtrHmacHash::Sha256 => 32,
                CtrHmacHash::Sha512 => 64,
            }
    }

    fn cipher(&self, key: &[u8]) -> Result<FrameCipher, SframeError> {
        if key.len() != self.key_len() {
            return Err(SframeError::Crypto);
        }
        let (enc_key, auth_key) = key.split_at(self.enc_key_len);
        let aes = match self.enc_key_len {
            16 => CtrAes::Aes128(Aes128::new_from_slice(enc_key).map_err(|_| SframeError::Crypto)?),
            _ => CtrAes::Aes256(Aes256::new_from_slice(enc_key).map_err(|_| SframeError::Crypto)?),
        };
        let alg = match self.hash {
            CtrHmacHash::Sha256 => hmac::HMAC_SHA256,
            CtrHmacHash::Sha512 => hmac::HMAC_SHA512,
        };
        Ok(FrameCipher::CtrHmac {
            aes,
            mac: Wiped::new(hmac::Key::new(alg, auth_key)),
            tag_len: self.tag_len,
        })
    }

    /// Encrypts `plaintext`; returns ciphertext || tag.
    pub fn encrypt(
        &self,
        key: &[u8],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let cipher = self.cipher(key)?;
        let mut out = plaintext.to_vec();
        let mut tag = vec![0u8; self.tag_len];
        let aad = Aad {
            header: aad,
            metadata: &[],
        };
        cipher.seal(nonce, aad, &mut [], &mut out, &mut tag)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Verifies and decrypts ciphertext || tag.
    pub fn decrypt(
        &self,
        key: &[u8],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        if ciphertext.len() < self.tag_len {
            return Err(SframeError::CiphertextTooShort {
                available: ciphertext.len(),
                tag_len: self.tag_len,
            });
        }
        let cipher = self.cipher(key)?;
        let mut buf = ciphertext.to_vec();
        let aad = Aad {
            header: aad,
            metadata: &[],
        };
        cipher.open(nonce, aad, &mut [], &mut buf)?;
        buf.truncate(ciphertext.len() - self.tag_len);
        Ok(buf)
    }
}
