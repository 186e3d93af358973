//! Known peers: the identity key each peer had when first seen (trust on first use), and
//! whether people have verified it by comparing safety codes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::HandshakeError;
use super::identity::{IdentityKey, write_private};

/// Known-peers files beyond this size are refused rather than read.
const MAX_FILE_LEN: u64 = 4 << 20;
/// Peers remembered at most.
pub const MAX_KNOWN_PEERS: usize = 10_000;

/// How strict to be with peers whose identity is new or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustPolicy {
    /// Pin a new peer's key on first contact; warn (but go on) when a known peer's key
    /// changed. The default, as in most messengers.
    #[default]
    TrustOnFirstUse,
    /// Only talk to peers whose current key people verified; refuse new, unverified or
    /// changed ones.
    RequireVerified,
}

/// What the known-peers file says about a peer's identity in this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrust {
    /// Never seen before; now pinned.
    New,
    /// Seen before with this key, not verified.
    Known,
    /// Seen before with this key, verified by comparing safety codes.
    Verified,
    /// Seen before with a different key: someone may be in the middle, or the peer
    /// reinstalled. Show this prominently; the pin is not replaced until accepted.
    Changed {
        /// The key pinned before.
        previous: IdentityKey,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRecord {
    identity: String,
    verified: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    version: u32,
    peers: BTreeMap<String, PeerRecord>,
}

/// The pinned identity of each peer, by peer name, optionally backed by a file.
#[derive(Debug, Default)]
pub struct KnownPeers {
    path: Option<PathBuf>,
    peers: BTreeMap<String, (IdentityKey, bool)>,
}

impl KnownPeers {
    /// An empty store that lives in memory only.
    pub fn in_memory() -> Self {
        KnownPeers::default()
    }

    /// Loads the store at `path` (empty if the file does not exist yet).
    pub fn load(path: &Path) -> Result<Self, HandshakeError> {
        let bad = |reason: String| HandshakeError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut store = KnownPeers {
            path: Some(path.to_path_buf()),
            peers: BTreeMap::new(),
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => {
                return Err(HandshakeError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if meta.len() > MAX_FILE_LEN {
            return Err(bad("known-peers file is too large".into()));
        }
        let text = fs::read_to_string(path).map_err(|source| HandshakeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: PeersFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a sotto known-peers file: {e}")))?;
        if file.version != 1 {
            return Err(bad(format!("unsupported version {}", file.version)));
        }
        if file.peers.len() > MAX_KNOWN_PEERS {
            return Err(bad("too many peers".into()));
        }
        for (name, rec) in file.peers {
            let key = IdentityKey::from_hex(&rec.identity)
                .ok_or_else(|| bad(format!("peer {name:?} has a malformed identity")))?;
            store.peers.insert(name, (key, rec.verified));
        }
        Ok(store)
    }

    /// Writes the store back to its file (owner-only, atomically); no-op in memory.
    pub fn save(&self) -> Result<(), HandshakeError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = PeersFile {
            version: 1,
            peers: self
                .peers
                .iter()
                .map(|(name, (key, verified))| {
                    (
                        name.clone(),
                        PeerRecord {
                            identity: key.to_hex(),
                            verified: *verified,
                        },
                    )
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| HandshakeError::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(path, &text)
    }

    /// What is known about `name` presenting `key`, without changing anything.
    pub fn check(&self, name: &str, key: &IdentityKey) -> PeerTrust {
        match self.peers.get(name) {
            None => PeerTrust::New,
            Some((pinned, _)) if pinned != key => PeerTrust::Changed { previous: *pinned },
            Some((_, true)) => PeerTrust::Verified,
            Some((_, false)) => PeerTrust::Known,
        }
    }

    /// Applies `policy` to `name` presenting `key`: pins new peers (under trust on first
    /// use), and refuses what the policy refuses. A changed key is reported, never silently
    /// re-pinned.
    pub fn evaluate(
        &mut self,
        name: &str,
        key: &IdentityKey,
        policy: TrustPolicy,
    ) -> Result<PeerTrust, HandshakeError> {
        let trust = self.check(name, key);
        let refuse = |reason| HandshakeError::PeerRefused {
            name: name.to_string(),
            reason,
        };
        match (policy, &trust) {
            (TrustPolicy::RequireVerified, PeerTrust::New | PeerTrust::Known) => {
                Err(refuse("identity not verified"))
            }
            (TrustPolicy::RequireVerified, PeerTrust::Changed { .. }) => {
                Err(refuse("identity changed since it was pinned"))
            }
            (TrustPolicy::TrustOnFirstUse, PeerTrust::New) => {
                if self.peers.len() >= MAX_KNOWN_PEERS {
                    return Err(refuse("known-peers store is full"));
                }
                self.peers.insert(name.to_string(), (*key, false));
                Ok(trust)
            }
            (TrustPolicy::TrustOnFirstUse, PeerTrust::Changed { previous }) => {
                tracing::warn!(
                    peer = name,
                    previous = %previous,
                    presented = %key,
                    "PEER IDENTITY CHANGED: compare safety codes before trusting this call"
                );
                Ok(trust)
            }
            _ => Ok(trust),
        }
    }

    /// Records that people compared safety codes and trust `key` for `name` (replacing a
    /// previous pin).
    pub fn mark_verified(&mut self, name: &str, key: &IdentityKey) {
        self.peers.insert(name.to_string(), (*key, true));
    }

    /// Accepts a changed key for `name` as the new pin, unverified.
    pub fn accept_changed(&mut self, name: &str, key: &IdentityKey) {
        self.peers.insert(name.to_string(), (*key, false));
    }

    /// The pinned key of `name`.
    pub fn pinned(&self, name: &str) -> Option<IdentityKey> {
        self.peers.get(name).map(|(k, _)| *k)
    }
}
