//! Long-term identities: an Ed25519 key per user or device, kept in an owner-only file.

use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::HandshakeError;
use super::private_file::{read_private, write_private};
use crate::wipe::Wiped;

/// Identity files are tiny; anything larger is not one.
const MAX_IDENTITY_FILE: u64 = 4096;

/// A public identity key: what peers pin and what the transcript signatures verify against.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey([u8; 32]);

impl IdentityKey {
    /// The key from its 32 bytes (not checked for being a valid point; verification is).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        IdentityKey(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of the key, as in files and on the wire.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(IdentityKey(bytes.try_into().ok()?))
    }

    /// A printable fingerprint: the first 20 bytes of SHA-256 of the key, in groups of four
    /// hex digits, for people to compare.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let hex = hex::encode(&digest.as_ref()[..20]);
        hex.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or("????"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether `sig` is this key's Ed25519 signature of `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({})", self.fingerprint())
    }
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// A long-term Ed25519 identity with its private key. The seed and the expanded key pair are
/// zeroized on drop; `Debug` shows only the fingerprint.
pub struct Identity {
    seed: Zeroizing<[u8; 32]>,
    pair: Wiped<Ed25519KeyPair>,
    public: IdentityKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    version: u32,
    kind: String,
    ed25519_seed: String,
}

const FILE_KIND: &str = "sotto-identity";

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, HandshakeError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| HandshakeError::Random)?;
        Self::from_seed(&seed)
    }

    /// The identity with this 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, HandshakeError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| HandshakeError::Random)?;
        let public = IdentityKey(
            pair.public_key()
                .as_ref()
                .try_into()
                .map_err(|_| HandshakeError::BadPublicKey)?,
        );
        Ok(Identity {
            seed: Zeroizing::new(*seed),
            pair: Wiped::new(pair),
            public,
        })
    }

    /// The public half.
    pub fn public_key(&self) -> IdentityKey {
        self.public
    }

    /// Signs `msg` with the identity key.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    /// Loads the identity at `path`, or creates one there (and its directory) on first use.
    /// Returns the identity and whether it was created now.
    ///
    /// The file is written owner-only (0600) and refused if anyone else can read it, as ssh
    /// does with private keys; so is a symlink, and a directory others can write.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), HandshakeError> {
        match read_private(path, MAX_IDENTITY_FILE)? {
            Some(bytes) => Ok((Self::parse(path, &bytes)?, false)),
            None => {
                let id = Self::generate()?;
                id.save(path)?;
                Ok((id, true))
            }
        }
    }

    /// Loads an existing identity file.
    pub fn load(path: &Path) -> Result<Self, HandshakeError> {
        let bytes = read_private(path, MAX_IDENTITY_FILE)?.ok_or_else(|| HandshakeError::Io {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Self::parse(path, &bytes)
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, HandshakeError> {
        let bad = |reason: String| HandshakeError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let file: IdentityFile = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a sotto identity file: {e}")))?;
        let IdentityFile {
            version,
            kind,
            ed25519_seed,
        } = file;
        let seed_hex = Zeroizing::new(ed25519_seed);
        if kind != FILE_KIND || version != 1 {
            return Err(bad(format!(
                "unsupported identity file ({kind} v{version})"
            )));
        }
        let seed = Zeroizing::new(
            hex::decode(seed_hex.as_str()).map_err(|_| bad("seed is not hex".into()))?,
        );
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| bad("seed is not 32 bytes".into()))?;
        Self::from_seed(seed)
    }

    /// Writes the identity to `path` atomically (temporary file, then rename), owner-only.
    pub fn save(&self, path: &Path) -> Result<(), HandshakeError> {
        let mut file = IdentityFile {
            version: 1,
            kind: FILE_KIND.into(),
            ed25519_seed: hex::encode(self.seed.as_ref()),
        };
        let text = Zeroizing::new(serde_json::to_string_pretty(&file).map_err(|e| {
            HandshakeError::BadFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?);
        file.ed25519_seed.zeroize();
        write_private(path, text.as_bytes())
    }
}

/// The default identity file: `identity.json` in [`default_config_dir`].
pub fn default_identity_path() -> PathBuf {
    default_config_dir().join("identity.json")
}

/// Where identities and known peers live by default: `$XDG_CONFIG_HOME/sotto`, else
/// `$HOME/.config/sotto`, else `./.sotto`.
pub fn default_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sotto");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".config").join("sotto");
    }
    PathBuf::from(".sotto")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-id-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_on_first_use_then_loaded() {
        let dir = temp_dir("create");
        let path = dir.join("nested").join("identity.json");
        let (a, created) = Identity::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Identity::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_files_others_can_read_and_garbage() {
        let dir = temp_dir("perm");
        let path = dir.join("identity.json");
        Identity::generate().unwrap().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(HandshakeError::BadFile { .. })
        ));
        for garbage in ["", "{", "{\"version\":1}", "[1,2]", "\u{0}\u{1}"] {
            fs::write(&path, garbage).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            assert!(Identity::load(&path).is_err(), "{garbage:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprint_is_stable_and_printable() {
        let id = Identity::from_seed(&[7u8; 32]).unwrap();
        let fp = id.public_key().fingerprint();
        assert_eq!(fp.len(), 40 + 9);
        assert_eq!(
            fp,
            Identity::from_seed(&[7u8; 32])
                .unwrap()
                .public_key()
                .fingerprint()
        );
        assert_ne!(
            fp,
            Identity::from_seed(&[8u8; 32])
                .unwrap()
                .public_key()
                .fingerprint()
        );
        assert!(!format!("{id:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let id = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let sig = id.sign(b"transcript");
        assert!(id.public_key().verify(b"transcript", &sig));
        assert!(!id.public_key().verify(b"transcripT", &sig));
        assert!(!other.public_key().verify(b"transcript", &sig));
        assert!(IdentityKey::from_hex(&id.public_key().to_hex()) == Some(id.public_key()));
    }
}
