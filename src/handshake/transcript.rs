//! The transcript hash and everything derived from it: signatures' input, the key schedule,
//! key confirmation and the safety code.
//!
//! ```text
//! th   = SHA-256("sotto handshake" || v || call_id || I.name || I.identity || commitment
//!                || R.name || R.identity || R.ephemeral || I.ephemeral)   (each field length-prefixed)
//! prk  = HKDF-Extract(salt = th, X25519(I.ephemeral, R.ephemeral))
//! keys = HKDF-Expand(prk, label, 32) for: confirm initiator / responder,
//!        media initiator / responder (one SFrame base key per sending direction)
//! code = SHA-256("sotto safety code" || th), first 8 bytes, as 8 decimal digits
//! ```

use hkdf::Hkdf;
use ring::{digest, hmac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::HandshakeError;

/// Builds the transcript hash field by field; each field is length-prefixed so no two
/// different transcripts hash the same bytes.
pub(crate) struct Transcript(digest::Context);

impl Transcript {
    pub(crate) fn new(version: u32) -> Self {
        let mut t = Transcript(digest::Context::new(&digest::SHA256));
        t.field(b"sotto handshake");
        t.field(&version.to_be_bytes());
        t
    }

    pub(crate) fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u32).to_be_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// What a signature covers: a role label and the transcript hash, so a signature from one
/// role can never be replayed as the other's.
pub(crate) fn signed_content(role_label: &[u8], th: &[u8; 32]) -> Vec<u8> {
    [role_label, th.as_slice()].concat()
}

pub(crate) const SIG_INITIATOR: &[u8] = b"sotto v1 initiator signature";
pub(crate) const SIG_RESPONDER: &[u8] = b"sotto v1 responder signature";

/// The commitment an initiator makes to its ephemeral key before seeing the responder's, so a
/// man in the middle cannot grind ephemeral keys until the safety codes collide.
pub(crate) fn commitment(call_id: &str, ephemeral: &[u8; 32]) -> [u8; 32] {
    let mut t = Transcript(digest::Context::new(&digest::SHA256));
    t.field(b"sotto v1 commitment");
    t.field(call_id.as_bytes());
    t.field(ephemeral);
    t.finish()
}

/// Secrets derived from one handshake. Zeroized on drop.
pub(crate) struct Schedule {
    pub(crate) confirm_initiator: Zeroizing<[u8; 32]>,
    pub(crate) confirm_responder: Zeroizing<[u8; 32]>,
    pub(crate) media_initiator: Zeroizing<[u8; 32]>,
    pub(crate) media_responder: Zeroizing<[u8; 32]>,
}

impl Schedule {
    pub(crate) fn derive(th: &[u8; 32], shared: &[u8]) -> Result<Self, HandshakeError> {
        let hk = Hkdf::<Sha256>::new(Some(th), shared);
        let expand = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
            let mut out = Zeroizing::new([0u8; 32]);
            hk.expand(label, out.as_mut())
                .map_err(|_| HandshakeError::BadPublicKey)?;
            Ok(out)
        };
        Ok(Schedule {
            confirm_initiator: expand(b"sotto v1 confirm initiator")?,
            confirm_responder: expand(b"sotto v1 confirm responder")?,
            media_initiator: expand(b"sotto v1 media initiator")?,
            media_responder: expand(b"sotto v1 media responder")?,
        })
    }
}

/// HMAC-SHA256 of the transcript hash under a confirmation key.
pub(crate) fn confirm_tag(key: &[u8; 32], th: &[u8; 32]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), th);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Constant-time check of a peer's confirmation tag.
pub(crate) fn verify_confirm(key: &[u8; 32], th: &[u8; 32], tag: &[u8; 32]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), th, tag).is_ok()
}

/// A short code both people read aloud; equal on both sides exactly when both saw the same
/// transcript (same identities, same ephemeral keys, same call).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyCode(String);

impl SafetyCode {
    pub(crate) fn from_transcript(th: &[u8; 32]) -> Self {
        let mut t = Transcript(digest::Context::new(&digest::SHA256));
        t.field(b"sotto safety code");
        t.field(th);
        let h = t.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        // 2^64 is so much larger than 10^8 that the modulo bias is below 10^-10.
        let n = u64::from_be_bytes(first) % 100_000_000;
        SafetyCode(format!("{:04} {:04}", n / 10_000, n % 10_000))
    }

    /// The code as shown to people: eight digits in two groups, e.g. `0421 7736`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SafetyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for SafetyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetyCode({})", self.0)
    }
}
