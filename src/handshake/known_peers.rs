//! Known peers: the identity key each peer had when first seen (trust on first use), under its
//! canonical name, with when it was first seen and whether people verified it by comparing
//! safety codes.
//!
//! Names are chosen by peers (and could be chosen by a hostile server), so they are compared
//! by their confusable skeleton ([`crate::names`]): a key presented under "bоb" (Cyrillic о),
//! "BOB" or "ｂｏｂ" is checked against the key pinned for "bob". A known key under a new name
//! is reported too.
//!
//! The file is owner-only, written atomically, and updated under a lock: on [`KnownPeers::save`]
//! the file is read again and only this process's changes are applied to it, so two `sotto`
//! processes never lose each other's pins.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::HandshakeError;
use super::identity::IdentityKey;
use super::private_file::{PrivateLock, read_private, write_private};
use crate::names;

/// Known-peers files beyond this size are refused rather than read.
const MAX_FILE_LEN: u64 = 8 << 20;
/// Peers remembered at most. When full, the oldest unverified pin makes room; verified pins are
/// never evicted.
pub const MAX_KNOWN_PEERS: usize = 10_000;

/// How strict to be with peers whose identity is new or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustPolicy {
    /// Pin a new peer's key on first contact; warn (but go on) when a known peer's key
    /// changed. The default, as in most messengers.
    #[default]
    TrustOnFirstUse,
    /// Only talk to peers whose current key people verified; refuse new, unverified or
    /// changed ones (a new peer is still pinned, unverified, so it can be verified later).
    RequireVerified,
}

/// What the known-peers store says about a peer's identity in this call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerTrust {
    /// Never seen before; now pinned.
    New,
    /// Seen before with this key, not verified.
    Known,
    /// Seen before with this key, verified by comparing safety codes.
    Verified,
    /// Another key is pinned for this name or for a name that looks like it: someone may be
    /// in the middle, or the peer reinstalled. Show this prominently; the pin is not replaced
    /// until people verify the new key.
    Changed {
        /// The key pinned before.
        previous: IdentityKey,
        /// The pinned name this one matched (differs from the presented name for a lookalike).
        pinned_name: String,
    },
    /// This key is pinned under another name that does not look like the presented one.
    Renamed {
        /// The name the key is pinned under.
        pinned_name: String,
        /// Whether that pin is verified.
        verified: bool,
    },
}

impl PeerTrust {
    /// The word used in reports: `new`, `known`, `verified`, `changed` or `renamed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerTrust::New => "new",
            PeerTrust::Known => "known",
            PeerTrust::Verified => "verified",
            PeerTrust::Changed { .. } => "changed",
            PeerTrust::Renamed { .. } => "renamed",
        }
    }
}

/// One pinned peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// The canonical name ([`names::canonical`]).
    pub name: String,
    /// The pinned identity key.
    pub identity: IdentityKey,
    /// When it was first seen, in Unix seconds (0: unknown, pinned by an older version).
    pub first_seen: u64,
    /// Whether people verified this key.
    pub verified: bool,
    /// A different key presented under this name since (not trusted; `verify` with its
    /// fingerprint accepts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented: Option<IdentityKey>,
}

impl Serialize for IdentityKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for IdentityKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        IdentityKey::from_hex(&s).ok_or_else(|| serde::de::Error::custom("malformed identity key"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    version: u32,
    peers: Vec<PeerRecord>,
}

/// The first file format: pins by exact name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFileV1 {
    #[serde(rename = "version")]
    _version: u32,
    peers: BTreeMap<String, V1Record>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Record {
    identity: IdentityKey,
    verified: bool,
}

/// Why `sotto peers verify` could not mark a peer verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No pin under that name.
    #[error("no known peer is named {0:?}")]
    UnknownPeer(String),
    /// The fingerprint given matches neither the pinned key nor the key presented since.
    #[error("the fingerprint does not match {name:?}'s pinned key ({pinned})")]
    FingerprintMismatch {
        /// The peer.
        name: String,
        /// The pinned key's fingerprint.
        pinned: String,
    },
    /// The fingerprint is not hex.
    #[error("a fingerprint is 40 hex digits (spaces and colons allowed), or the 64-digit key")]
    MalformedFingerprint,
    /// [`Call::verify`](crate::call::Call::verify): nobody of that name has agreed keys with
    /// us in this call.
    #[error("{0:?} is not in this call, or its keys are not agreed yet")]
    NotInCall(String),
    /// [`Call::verify`](crate::call::Call::verify): the call is over.
    #[error("the call has ended")]
    CallEnded,
}

/// A change this process made, applied again to the file as it is on disk when saving.
#[derive(Debug, Clone)]
enum Change {
    Put(PeerRecord),
    Remove,
}

/// The pins by canonical name, indexed by skeleton and by key so a check is not a scan.
#[derive(Debug, Default)]
struct Pins {
    by_name: BTreeMap<String, PeerRecord>,
    by_skeleton: HashMap<String, BTreeSet<String>>,
    by_key: HashMap<IdentityKey, BTreeSet<String>>,
}

impl Pins {
    fn insert(&mut self, record: PeerRecord) {
        self.remove(&record.name);
        self.by_skeleton
            .entry(names::skeleton(&record.name))
            .or_default()
            .insert(record.name.clone());
        self.by_key
            .entry(record.identity)
            .or_default()
            .insert(record.name.clone());
        self.by_name.insert(record.name.clone(), record);
    }

    fn remove(&mut self, name: &str) -> Option<PeerRecord> {
        let record = self.by_name.remove(name)?;
        let unindex = |names: Option<&mut BTreeSet<String>>| {
            names.is_some_and(|n| {
                n.remove(name);
                n.is_empty()
            })
        };
        let skeleton = names::skeleton(name);
        if unindex(self.by_skeleton.get_mut(&skeleton)) {
            self.by_skeleton.remove(&skeleton);
        }
        if unindex(self.by_key.get_mut(&record.identity)) {
            self.by_key.remove(&record.identity);
        }
        Some(record)
    }

    fn get(&self, name: &str) -> Option<&PeerRecord> {
        self.by_name.get(name)
    }

    /// Pins whose name has this skeleton.
    fn lookalikes<'a>(&'a self, skeleton: &str) -> impl Iterator<Item = &'a PeerRecord> + 'a {
        self.by_skeleton
            .get(skeleton)
            .into_iter()
            .flatten()
            .filter_map(|n| self.by_name.get(n))
    }

    /// A pin of this key, under any name.
    fn with_key(&self, key: &IdentityKey) -> Option<&PeerRecord> {
        self.by_key
            .get(key)
            .and_then(|n| n.iter().next())
            .and_then(|n| self.by_name.get(n))
    }

    fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The unverified pin seen first: the one to evict when the store is full.
    fn oldest_unverified(&self) -> Option<String> {
        self.by_name
            .values()
            .filter(|r| !r.verified)
            .min_by_key(|r| (r.first_seen, &r.name))
            .map(|r| r.name.clone())
    }
}

/// The pinned identities of peers, optionally backed by a file.
#[derive(Debug, Default)]
pub struct KnownPeers {
    path: Option<PathBuf>,
    peers: Pins,
    /// Changes not yet saved, by canonical name.
    changes: BTreeMap<String, Change>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl KnownPeers {
    /// An empty store that lives in memory only.
    pub fn in_memory() -> Self {
        KnownPeers::default()
    }

    /// Loads the store at `path` (empty if the file does not exist yet). The file must be
    /// owner-only, in a directory only its owner can write, and not a symlink.
    pub fn load(path: &Path) -> Result<Self, HandshakeError> {
        Ok(KnownPeers {
            path: Some(path.to_path_buf()),
            peers: read_file(path)?,
            changes: BTreeMap::new(),
        })
    }

    /// The file this store is saved to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes this store's changes back to its file: under the file's lock it reads the file
    /// again, applies the changes, and writes it atomically. No-op in memory.
    pub fn save(&mut self) -> Result<(), HandshakeError> {
        let Some(path) = self.path.clone() else {
            self.changes.clear();
            return Ok(());
        };
        if self.changes.is_empty() {
            return Ok(());
        }
        let _lock = PrivateLock::acquire(&path)?;
        let mut on_disk = read_file(&path)?;
        for (name, change) in std::mem::take(&mut self.changes) {
            match change {
                Change::Put(record) => on_disk.insert(record),
                Change::Remove => {
                    on_disk.remove(&name);
                }
            }
        }
        // Another process may have pinned peers meanwhile: make room the same way.
        while on_disk.len() > MAX_KNOWN_PEERS {
            match on_disk.oldest_unverified() {
                Some(oldest) => on_disk.remove(&oldest),
                None => break,
            };
        }
        let file = PeersFile {
            version: 2,
            peers: on_disk.by_name.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| HandshakeError::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &text)?;
        self.peers = on_disk;
        Ok(())
    }

    fn put(&mut self, record: PeerRecord) {
        self.changes
            .insert(record.name.clone(), Change::Put(record.clone()));
        self.peers.insert(record);
    }

    /// What is known about `name` presenting `key`, without changing anything.
    pub fn check(&self, name: &str, key: &IdentityKey) -> PeerTrust {
        let canonical = names::canonical(name);
        let skeleton = names::skeleton(name);
        let trust_of = |r: &PeerRecord| {
            if r.verified {
                PeerTrust::Verified
            } else {
                PeerTrust::Known
            }
        };
        if let Some(r) = self.peers.get(&canonical) {
            if r.identity == *key {
                return trust_of(r);
            }
            return PeerTrust::Changed {
                previous: r.identity,
                pinned_name: r.name.clone(),
            };
        }
        let lookalikes: Vec<&PeerRecord> = self.peers.lookalikes(&skeleton).collect();
        if let Some(same) = lookalikes.iter().find(|r| r.identity == *key) {
            return trust_of(same);
        }
        if let Some(r) = lookalikes.first() {
            return PeerTrust::Changed {
                previous: r.identity,
                pinned_name: r.name.clone(),
            };
        }
        if let Some(r) = self.peers.with_key(key) {
            return PeerTrust::Renamed {
                pinned_name: r.name.clone(),
                verified: r.verified,
            };
        }
        PeerTrust::New
    }

    /// Applies `policy` to `name` presenting `key`: pins new peers (unverified; under either
    /// policy, so a refused peer can be verified later), notes a changed key as presented
    /// (never re-pinning it), and refuses what the policy refuses.
    pub fn evaluate(
        &mut self,
        name: &str,
        key: &IdentityKey,
        policy: TrustPolicy,
    ) -> Result<PeerTrust, HandshakeError> {
        self.evaluate_at(name, key, policy, unix_now())
    }

    /// [`KnownPeers::evaluate`] at a given time (Unix seconds), for pins' first-seen times.
    pub fn evaluate_at(
        &mut self,
        name: &str,
        key: &IdentityKey,
        policy: TrustPolicy,
        now: u64,
    ) -> Result<PeerTrust, HandshakeError> {
        let trust = self.check(name, key);
        let shown = names::canonical(name);
        let refuse = |reason: String| HandshakeError::PeerRefused {
            name: shown.clone(),
            reason,
        };
        match &trust {
            PeerTrust::New => {
                if self.peers.len() >= MAX_KNOWN_PEERS {
                    let Some(oldest) = self.peers.oldest_unverified() else {
                        return Err(refuse(
                            "the known-peers store is full of verified peers; forget some".into(),
                        ));
                    };
                    self.peers.remove(&oldest);
                    self.changes.insert(oldest, Change::Remove);
                }
                self.put(PeerRecord {
                    name: shown.clone(),
                    identity: *key,
                    first_seen: now,
                    verified: false,
                    presented: None,
                });
            }
            PeerTrust::Changed {
                previous,
                pinned_name,
            } => {
                tracing::warn!(
                    peer = %crate::names::canonical(name),
                    pinned_name = %pinned_name,
                    previous = %previous,
                    presented = %key,
                    "PEER IDENTITY CHANGED: compare safety codes before trusting this call"
                );
                if let Some(record) = self.peers.get(pinned_name).cloned()
                    && record.presented != Some(*key)
                {
                    self.put(PeerRecord {
                        presented: Some(*key),
                        ..record
                    });
                }
            }
            _ => {}
        }
        if policy == TrustPolicy::RequireVerified {
            let why = match &trust {
                PeerTrust::Verified | PeerTrust::Renamed { verified: true, .. } => None,
                PeerTrust::New => Some("first contact, not verified yet".to_string()),
                PeerTrust::Known => Some("identity not verified".to_string()),
                PeerTrust::Renamed { pinned_name, .. } => Some(format!(
                    "identity is pinned as {pinned_name:?} and not verified"
                )),
                PeerTrust::Changed { pinned_name, .. } => Some(format!(
                    "identity differs from the one pinned for {pinned_name:?}"
                )),
            };
            if let Some(why) = why {
                // Say what to compare, so the people can verify and call again.
                return Err(refuse(format!(
                    "{why} (it presented identity {}; once you compared it with the peer: \
                     sotto peers verify {shown:?} --fingerprint \"{}\")",
                    key.fingerprint(),
                    key.fingerprint()
                )));
            }
        }
        Ok(trust)
    }

    /// Marks `name`'s pinned key verified, after people compared safety codes. With a
    /// fingerprint, it must match the pinned key, or the different key presented since (which
    /// then replaces the pin). Returns the key now verified.
    pub fn verify(
        &mut self,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<IdentityKey, VerifyError> {
        let canonical = names::canonical(name);
        let record = self
            .peers
            .get(&canonical)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownPeer(canonical.clone()))?;
        let key = match fingerprint {
            None => record.identity,
            Some(fp) => {
                let wanted = normalize_fingerprint(fp)?;
                let matches = |k: &IdentityKey| {
                    normalize_fingerprint(&k.fingerprint()).ok() == Some(wanted.clone())
                        || k.to_hex() == wanted
                };
                if matches(&record.identity) {
                    record.identity
                } else if let Some(p) = record.presented.filter(|p| matches(p)) {
                    p
                } else {
                    return Err(VerifyError::FingerprintMismatch {
                        name: canonical,
                        pinned: record.identity.fingerprint(),
                    });
                }
            }
        };
        let first_seen = if key == record.identity {
            record.first_seen
        } else {
            unix_now()
        };
        self.put(PeerRecord {
            identity: key,
            verified: true,
            presented: None,
            first_seen,
            ..record
        });
        Ok(key)
    }

    /// Removes `name`'s pin; whether there was one.
    pub fn forget(&mut self, name: &str) -> bool {
        let canonical = names::canonical(name);
        if self.peers.remove(&canonical).is_some() {
            self.changes.insert(canonical, Change::Remove);
            true
        } else {
            false
        }
    }

    /// The key pinned for `name` (by canonical name).
    pub fn pinned(&self, name: &str) -> Option<IdentityKey> {
        self.peers.get(&names::canonical(name)).map(|r| r.identity)
    }

    /// Every pin, by canonical name.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.by_name.values()
    }

    /// How many peers are pinned.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.peers.len() == 0
    }
}

/// Lower-case hex without separators; 40 digits (a fingerprint) or 64 (a whole key).
fn normalize_fingerprint(text: &str) -> Result<String, VerifyError> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | ':' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if (hex.len() == 40 || hex.len() == 64) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(VerifyError::MalformedFingerprint)
    }
}

fn read_file(path: &Path) -> Result<Pins, HandshakeError> {
    let bad = |reason: String| HandshakeError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let Some(bytes) = read_private(path, MAX_FILE_LEN)? else {
        return Ok(Pins::default());
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let version: Version = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a sotto known-peers file: {e}")))?;
    let records: Vec<PeerRecord> = match version.version {
        1 => {
            let old: PeersFileV1 = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("not a sotto known-peers file: {e}")))?;
            old.peers
                .into_iter()
                .map(|(name, r)| PeerRecord {
                    name: names::canonical(&name),
                    identity: r.identity,
                    first_seen: 0,
                    verified: r.verified,
                    presented: None,
                })
                .collect()
        }
        2 => {
            let file: PeersFile = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("not a sotto known-peers file: {e}")))?;
            file.peers
        }
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    if records.len() > MAX_KNOWN_PEERS {
        return Err(bad("too many peers".into()));
    }
    let mut peers = Pins::default();
    for mut r in records {
        r.name = names::canonical(&r.name);
        peers.insert(r);
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::Identity;

    fn key() -> IdentityKey {
        Identity::generate().unwrap().public_key()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-kp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn lookalike_names_are_checked_against_the_pin() {
        let mut store = KnownPeers::in_memory();
        let bob = key();
        let mallory = key();
        let tofu = TrustPolicy::TrustOnFirstUse;
        assert_eq!(store.evaluate("bob", &bob, tofu).unwrap(), PeerTrust::New);
        for lookalike in ["bob", "BOB", "Bob", "ｂｏｂ", "bоb", "b\u{200b}ob"] {
            assert_eq!(
                store.check(lookalike, &bob),
                PeerTrust::Known,
                "{lookalike:?}"
            );
            let trust = store.evaluate(lookalike, &mallory, tofu).unwrap();
            assert_eq!(
                trust,
                PeerTrust::Changed {
                    previous: bob,
                    pinned_name: "bob".into()
                },
                "{lookalike:?}"
            );
        }
        // Never re-pinned: bob's key stays, mallory's is only noted as presented.
        assert_eq!(store.pinned("bob"), Some(bob));
        assert_eq!(store.len(), 1);
        assert_eq!(store.records().next().unwrap().presented, Some(mallory));
    }

    #[test]
    fn a_known_key_under_a_new_name_is_reported() {
        let mut store = KnownPeers::in_memory();
        let bob = key();
        let tofu = TrustPolicy::TrustOnFirstUse;
        store.evaluate("bob", &bob, tofu).unwrap();
        assert_eq!(
            store.evaluate("robert", &bob, tofu).unwrap(),
            PeerTrust::Renamed {
                pinned_name: "bob".into(),
                verified: false
            }
        );
        assert_eq!(store.pinned("robert"), None);
    }

    #[test]
    fn require_verified_refuses_all_but_verified_keys() {
        let mut store = KnownPeers::in_memory();
        let strict = TrustPolicy::RequireVerified;
        let bob = key();
        assert!(store.evaluate("bob", &bob, strict).is_err());
        // Pinned (unverified) anyway, so it can be verified.
        assert_eq!(store.pinned("bob"), Some(bob));
        assert!(store.evaluate("bob", &bob, strict).is_err());
        store.verify("bob", None).unwrap();
        assert_eq!(
            store.evaluate("bob", &bob, strict).unwrap(),
            PeerTrust::Verified
        );
        assert!(store.evaluate("bоb", &key(), strict).is_err());
        assert!(store.evaluate("bob", &key(), strict).is_err());
    }

    #[test]
    fn verify_checks_the_fingerprint_and_can_accept_a_presented_key() {
        let mut store = KnownPeers::in_memory();
        let bob = key();
        let new_bob = key();
        let tofu = TrustPolicy::TrustOnFirstUse;
        store.evaluate("bob", &bob, tofu).unwrap();
        assert!(matches!(
            store.verify("bob", Some(&key().fingerprint())),
            Err(VerifyError::FingerprintMismatch { .. })
        ));
        assert!(matches!(
            store.verify("bob", Some("xyz")),
            Err(VerifyError::MalformedFingerprint)
        ));
        assert!(matches!(
            store.verify("carol", None),
            Err(VerifyError::UnknownPeer(_))
        ));
        assert_eq!(store.verify("BOB", Some(&bob.fingerprint())).unwrap(), bob);
        assert_eq!(store.check("bob", &bob), PeerTrust::Verified);
        // Bob reinstalled: the new key is presented, then verified with its fingerprint.
        store.evaluate("bob", &new_bob, tofu).unwrap();
        let colons = new_bob.fingerprint().replace(' ', ":").to_uppercase();
        assert_eq!(store.verify("bob", Some(&colons)).unwrap(), new_bob);
        assert_eq!(store.check("bob", &new_bob), PeerTrust::Verified);
        assert!(store.forget("bob"));
        assert_eq!(store.check("bob", &new_bob), PeerTrust::New);
    }

    #[test]
    fn a_full_store_evicts_the_oldest_unverified_never_a_verified_one() {
        let mut store = KnownPeers::in_memory();
        let tofu = TrustPolicy::TrustOnFirstUse;
        let verified = key();
        store.evaluate_at("first", &verified, tofu, 1).unwrap();
        store.verify("first", None).unwrap();
        for i in 0..MAX_KNOWN_PEERS - 1 {
            store
                .evaluate_at(&format!("p{i}"), &key(), tofu, 10 + i as u64)
                .unwrap();
        }
        assert_eq!(store.len(), MAX_KNOWN_PEERS);
        let newcomer = key();
        assert_eq!(
            store
                .evaluate_at("newcomer", &newcomer, tofu, 1_000_000)
                .unwrap(),
            PeerTrust::New
        );
        assert_eq!(store.len(), MAX_KNOWN_PEERS);
        assert_eq!(store.pinned("first"), Some(verified));
        assert_eq!(store.pinned("p0"), None, "the oldest unverified pin goes");
        assert!(store.pinned("p1").is_some());
        assert_eq!(store.pinned("newcomer"), Some(newcomer));
    }

    #[test]
    fn two_processes_do_not_lose_each_others_pins() {
        let dir = temp_dir("merge");
        let path = dir.join("known_peers.json");
        let tofu = TrustPolicy::TrustOnFirstUse;
        let mut a = KnownPeers::load(&path).unwrap();
        let mut b = KnownPeers::load(&path).unwrap();
        let (bob, carol) = (key(), key());
        a.evaluate("bob", &bob, tofu).unwrap();
        b.evaluate("carol", &carol, tofu).unwrap();
        a.save().unwrap();
        b.save().unwrap();
        let reloaded = KnownPeers::load(&path).unwrap();
        assert_eq!(reloaded.pinned("bob"), Some(bob));
        assert_eq!(reloaded.pinned("carol"), Some(carol));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn version_one_files_are_read_with_canonical_names() {
        let dir = temp_dir("v1");
        let path = dir.join("known_peers.json");
        let bob = key();
        let v1 = format!(
            r#"{{"version":1,"peers":{{"Bob":{{"identity":"{}","verified":true}}}}}}"#,
            bob.to_hex()
        );
        write_private(&path, v1.as_bytes()).unwrap();
        let store = KnownPeers::load(&path).unwrap();
        assert_eq!(store.check("bob", &bob), PeerTrust::Verified);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
