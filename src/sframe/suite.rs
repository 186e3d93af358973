//! The RFC 9605 cipher suite registry.

use super::SframeError;

/// An SFrame cipher suite (RFC 9605, section 4.5 registry values 1 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    /// AES-128-CTR with HMAC-SHA256, 80-bit tag.
    AesCtr128HmacSha256_80,
    /// AES-128-CTR with HMAC-SHA256, 64-bit tag.
    AesCtr128HmacSha256_64,
    /// AES-128-CTR with HMAC-SHA256, 32-bit tag.
    AesCtr128HmacSha256_32,
    /// AES-128-GCM, HKDF with SHA256, 128-bit tag. sotto's default.
    AesGcm128Sha256,
    /// AES-256-GCM, HKDF with SHA512, 128-bit tag.
    AesGcm256Sha512,
}

/// The hash behind a suite's HKDF key schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SuiteHash {
    Sha256,
    Sha512,
}

impl CipherSuite {
    /// Every suite, in registry order.
    pub const ALL: [CipherSuite; 5] = [
        CipherSuite::AesCtr128HmacSha256_80,
        CipherSuite::AesCtr128HmacSha256_64,
        CipherSuite::AesCtr128HmacSha256_32,
        CipherSuite::AesGcm128Sha256,
        CipherSuite::AesGcm256Sha512,
    ];

    /// The registry value (1-5), also the last two bytes of the key schedule labels.
    pub const fn id(self) -> u16 {
        match self {
            CipherSuite::AesCtr128HmacSha256_80 => 1,
            CipherSuite::AesCtr128HmacSha256_64 => 2,
            CipherSuite::AesCtr128HmacSha256_32 => 3,
            CipherSuite::AesGcm128Sha256 => 4,
            CipherSuite::AesGcm256Sha512 => 5,
        }
    }

    /// The suite with registry value `id`.
    pub fn from_id(id: u16) -> Result<Self, SframeError> {
        CipherSuite::ALL
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or(SframeError::UnknownCipherSuite(id))
    }

    /// The registry name, e.g. `AES_128_GCM_SHA256_128`.
    pub const fn name(self) -> &'static str {
        match self {
            CipherSuite::AesCtr128HmacSha256_80 => "AES_128_CTR_HMAC_SHA256_80",
            CipherSuite::AesCtr128HmacSha256_64 => "AES_128_CTR_HMAC_SHA256_64",
            CipherSuite::AesCtr128HmacSha256_32 => "AES_128_CTR_HMAC_SHA256_32",
            CipherSuite::AesGcm128Sha256 => "AES_128_GCM_SHA256_128",
            CipherSuite::AesGcm256Sha512 => "AES_256_GCM_SHA512_128",
        }
    }

    /// AEAD.Nk: bytes of the derived `sframe_key` (for CTR-HMAC: encryption key then MAC key).
    pub const fn key_len(self) -> usize {
        match self {
            CipherSuite::AesCtr128HmacSha256_80
            | CipherSuite::AesCtr128HmacSha256_64
            | CipherSuite::AesCtr128HmacSha256_32 => 48,
            CipherSuite::AesGcm128Sha256 => 16,
            CipherSuite::AesGcm256Sha512 => 32,
        }
    }

    /// AEAD.Nn: bytes of the nonce and of `sframe_salt`.
    pub const fn nonce_len(self) -> usize {
        NONCE_LEN
    }

    /// AEAD.Nt: bytes of the authentication tag appended to every frame.
    pub const fn tag_len(self) -> usize {
        match self {
            CipherSuite::AesCtr128HmacSha256_80 => 10,
            CipherSuite::AesCtr128HmacSha256_64 => 8,
            CipherSuite::AesCtr128HmacSha256_32 => 4,
            CipherSuite::AesGcm128Sha256 | CipherSuite::AesGcm256Sha512 => 16,
        }
    }

    /// Hash.Nh: bytes of the HKDF hash output (the length of `sframe_secret`).
    pub const fn hash_len(self) -> usize {
        match self.hash() {
            SuiteHash::Sha256 => 32,
            SuiteHash::Sha512 => 64,
        }
    }

    pub(crate) const fn hash(self) -> SuiteHash {
        match self {
            CipherSuite::AesGcm256Sha512 => SuiteHash::Sha512,
            _ => SuiteHash::Sha256,
        }
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every registered suite uses a 96-bit nonce.
pub(crate) const NONCE_LEN: usize = 12;
/// Longest `sframe_key` of any suite.
pub(crate) const MAX_KEY_LEN: usize = 48;
/// Longest hash output of any suite.
pub(crate) const MAX_HASH_LEN: usize = 64;
