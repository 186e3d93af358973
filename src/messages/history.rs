//! `--history DIR`: live messages kept across restarts in SQLite, encrypted at rest.
//!
//! Each message's sender and text are sealed (ChaCha20-Poly1305) under a key of its own; that
//! key is stored wrapped under the history master key, which lives next to the identity
//! (`history.key`, owner-only like the identity file). At expiry the row is deleted with
//! `secure_delete` on, so SQLite overwrites the freed cells with zeros, and the rollback
//! journal (`journal_mode=DELETE`) is removed after each commit: neither the text, nor its
//! ciphertext, nor its wrapped key stays in any file of the directory. Room names are stored
//! only as a keyed hash.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{DisappearingTimer, MessageId, unix_ms};
use crate::handshake::private_file::{ensure_private_dir, read_private, write_private};
use crate::wipe::Wiped;

/// The database's file name inside the history directory.
pub const DB_FILE: &str = "messages.sqlite3";

/// Why the history could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The master key file could not be read or written.
    #[error("history key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The directory is not usable (not ours, writable by others, ...).
    #[error("history directory {path}: {reason}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// SQLite failed.
    #[error("history database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Encryption or randomness failed.
    #[error("history encryption failed")]
    Crypto,
}

/// A message as the history keeps it.
#[derive(Debug)]
pub struct StoredMessage {
    /// Its id.
    pub id: MessageId,
    /// The sender's name; `None` for our own messages.
    pub from: Option<String>,
    /// The text.
    pub text: Zeroizing<String>,
    /// The TTL it carries.
    pub ttl: DisappearingTimer,
    /// When it was sent (ours) or received (the peer's), Unix ms on our clock.
    pub at_ms: u64,
    /// When it expires, Unix ms on our clock; `None`: never.
    pub expires_ms: Option<u64>,
}

/// What is sealed under the per-message key.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    from: Option<&'a str>,
    text: &'a str,
}

/// The history of one room in one directory.
pub struct History {
    conn: rusqlite::Connection,
    master: Wiped<LessSafeKey>,
    room_tag: Vec<u8>,
    dir: PathBuf,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Where the history master key of the identity at `identity` is kept: `history.key` next
/// to it.
pub fn history_key_path(identity: &Path) -> PathBuf {
    identity.with_file_name("history.key")
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, HistoryError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| HistoryError::Crypto)?;
    Ok(bytes)
}

fn aead_key(bytes: &[u8]) -> Result<Wiped<LessSafeKey>, HistoryError> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| HistoryError::Crypto)?;
    Ok(Wiped::new(LessSafeKey::new(key)))
}

/// Loads the master key at `path`, creating it (owner-only) if missing.
fn load_master(path: &Path) -> Result<Zeroizing<[u8; 32]>, HistoryError> {
    let key_err = |reason: String| HistoryError::Key {
        path: path.to_path_buf(),
        reason,
    };
    match read_private(path, 128).map_err(|e| key_err(e.to_string()))? {
        Some(text) => {
            let mut key = Zeroizing::new([0u8; 32]);
            let trimmed = std::str::from_utf8(&text)
                .map_err(|_| key_err("not a hex key".into()))?
                .trim();
            hex::decode_to_slice(trimmed, key.as_mut())
                .map_err(|_| key_err("not a 32-byte hex key".into()))?;
            Ok(key)
        }
        None => {
            let key = random::<32>()?;
            let text = Zeroizing::new(hex::encode(key.as_ref()) + "\n");
            write_private(path, text.as_bytes()).map_err(|e| key_err(e.to_string()))?;
            Ok(key)
        }
    }
}

impl History {
    /// Opens (creating if missing) the history of `room` in `dir`, under the master key at
    /// `key_path` (see [`history_key_path`]).
    pub fn open(dir: &Path, key_path: &Path, room: &str) -> Result<Self, HistoryError> {
        ensure_private_dir(dir).map_err(|e| HistoryError::Dir {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let master_bytes = load_master(key_path)?;
        let mut hash = Sha256::new();
        hash.update(b"sotto history room\0");
        hash.update(master_bytes.as_ref());
        hash.update(room.as_bytes());
        let room_tag = hash.finalize().to_vec();
        let master = aead_key(master_bytes.as_ref())?;
        let path = dir.join(DB_FILE);
        // Create the file owner-only (never through a link) before SQLite opens it; SQLite
        // gives its journal the database file's mode.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| HistoryError::Dir {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA secure_delete = ON;
             PRAGMA journal_mode = DELETE;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS messages (
                 id BLOB PRIMARY KEY,
                 room BLOB NOT NULL,
                 ttl_s INTEGER,
                 at_ms INTEGER NOT NULL,
                 expires_ms INTEGER,
                 wrapped_key BLOB NOT NULL,
                 body BLOB NOT NULL
             );",
        )?;
        Ok(History {
            conn,
            master,
            room_tag,
            dir: dir.to_path_buf(),
        })
    }

    /// Stores `message`, sealed under a fresh key of its own.
    pub fn store(&mut self, message: &StoredMessage) -> Result<(), HistoryError> {
        let key = random::<32>()?;
        let body = Zeroizing::new(
            serde_json::to_vec(&Body {
                from: message.from.as_deref(),
                text: &message.text,
            })
            .map_err(|_| HistoryError::Crypto)?,
        );
        let mut sealed = Zeroizing::new(body.to_vec());
        // Each message key seals exactly one body, so a zero nonce never repeats under it.
        aead_key(key.as_ref())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(&message.id.0),
                &mut *sealed,
            )
            .map_err(|_| HistoryError::Crypto)?;
        let nonce = random::<NONCE_LEN>()?;
        let mut wrapped = key.to_vec();
        self.master
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(&message.id.0),
                &mut wrapped,
            )
            .map_err(|_| HistoryError::Crypto)?;
        let mut stored_key = nonce.to_vec();
        stored_key.extend_from_slice(&wrapped);
        self.conn.execute(
            "INSERT OR REPLACE INTO messages
                 (id, room, ttl_s, at_ms, expires_ms, wrapped_key, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                &message.id.0[..],
                &self.room_tag,
                message.ttl.secs().map(|s| s as i64),
                message.at_ms as i64,
                message.expires_ms.map(|e| e as i64),
                stored_key,
                &sealed[..],
            ],
        )?;
        Ok(())
    }

    /// Deletes message `id` (its wrapped key and ciphertext are overwritten in the file).
    pub fn delete(&mut self, id: MessageId) -> Result<(), HistoryError> {
        self.conn
            .execute("DELETE FROM messages WHERE id = ?1", [&id.0[..]])?;
        Ok(())
    }

    /// Deletes every message of any room that expired by `now`.
    pub fn purge_expired(&mut self, now: SystemTime) -> Result<usize, HistoryError> {
        Ok(self.conn.execute(
            "DELETE FROM messages WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
            [unix_ms(now) as i64],
        )?)
    }

    /// The live messages of this room, oldest first, after deleting the expired ones. Rows
    /// that do not open (damaged, or another master key) are skipped.
    pub fn live(&mut self, now: SystemTime) -> Result<Vec<StoredMessage>, HistoryError> {
        self.purge_expired(now)?;
        let mut statement = self.conn.prepare(
            "SELECT id, ttl_s, at_ms, expires_ms, wrapped_key, body FROM messages
             WHERE room = ?1 ORDER BY at_ms",
        )?;
        type Row = (Vec<u8>, Option<i64>, i64, Option<i64>, Vec<u8>, Vec<u8>);
        let rows = statement.query_map([&self.room_tag], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, ttl_s, at_ms, expires_ms, wrapped, body): Row = row?;
            match self.open_row(&id, ttl_s, &wrapped, body) {
                Some((id, from, text, ttl)) => out.push(StoredMessage {
                    id,
                    from,
                    text,
                    ttl,
                    at_ms: u64::try_from(at_ms).unwrap_or(0),
                    expires_ms: expires_ms.and_then(|e| u64::try_from(e).ok()),
                }),
                None => tracing::warn!("skipped a history entry that does not open"),
            }
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn open_row(
        &self,
        id: &[u8],
        ttl_s: Option<i64>,
        wrapped: &[u8],
        body: Vec<u8>,
    ) -> Option<(
        MessageId,
        Option<String>,
        Zeroizing<String>,
        DisappearingTimer,
    )> {
        let id = MessageId(id.try_into().ok()?);
        let ttl = DisappearingTimer::from_secs(ttl_s.and_then(|t| u64::try_from(t).ok())).ok()?;
        let (nonce, sealed_key) = wrapped.split_at_checked(NONCE_LEN)?;
        let mut key = Zeroizing::new(sealed_key.to_vec());
        let key = self
            .master
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(&id.0),
                &mut key,
            )
            .ok()?;
        let mut body = Zeroizing::new(body);
        let plain = aead_key(key)
            .ok()?
            .open_in_place(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(&id.0),
                &mut body,
            )
            .ok()?;
        let parsed: Body<'_> = serde_json::from_slice(plain).ok()?;
        Some((
            id,
            parsed.from.map(str::to_owned),
            Zeroizing::new(parsed.text.to_owned()),
            ttl,
        ))
    }

    /// The directory the history lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored (encrypted) wrapped key and body of `id`, as they sit in the file: what a
    /// test looks for in the directory's files.
    #[doc(hidden)]
    pub fn raw_entry(&self, id: MessageId) -> Option<(Vec<u8>, Vec<u8>)> {
        self.conn
            .query_row(
                "SELECT wrapped_key, body FROM messages WHERE id = ?1",
                [&id.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Every byte of every file in `dir` (database, journal, WAL, key).
    fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    fn message(n: u8, text: &str, expires_ms: Option<u64>) -> StoredMessage {
        StoredMessage {
            id: MessageId([n; 16]),
            from: Some("bobby-peer-name".into()),
            text: Zeroizing::new(text.into()),
            ttl: DisappearingTimer::from_secs(Some(5)).unwrap(),
            at_ms: unix_ms(SystemTime::now()),
            expires_ms,
        }
    }

    #[test]
    fn live_messages_survive_a_restart_and_others_rooms_stay_apart() {
        let dir = temp_dir("restart");
        let key = dir.join("history.key");
        let later = unix_ms(SystemTime::now()) + 3_600_000;
        {
            let mut h = History::open(&dir, &key, "room-a").unwrap();
            h.store(&message(1, "kept across restarts", Some(later)))
                .unwrap();
            let mut ours = message(2, "mine", None);
            ours.from = None;
            h.store(&ours).unwrap();
            let mut other = History::open(&dir, &key, "room-b").unwrap();
            other.store(&message(3, "another room", None)).unwrap();
        }
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let db_mode = std::fs::metadata(dir.join(DB_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(db_mode, 0o600);
        let mut h = History::open(&dir, &key, "room-a").unwrap();
        let live = h.live(SystemTime::now()).unwrap();
        let got: Vec<_> = live
            .iter()
            .map(|m| (m.from.clone(), m.text.to_string(), m.expires_ms))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Some("bobby-peer-name".into()),
                    "kept across restarts".into(),
                    Some(later)
                ),
                (None, "mine".into(), None)
            ]
        );
        // Nothing is stored in the clear, not even the room's name.
        for (path, bytes) in all_files(&dir) {
            for needle in ["kept across restarts", "room-a", "bobby-peer-name"] {
                assert!(!contains(&bytes, needle.as_bytes()), "{needle} in {path:?}");
            }
        }
        // Another master key opens nothing.
        let other_key = dir.join("other.key");
        let mut stranger = History::open(&dir, &other_key, "room-a").unwrap();
        assert!(stranger.live(SystemTime::now()).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_expiry_no_file_holds_the_text_its_ciphertext_or_its_key() {
        let dir = temp_dir("expiry");
        let key = dir.join("history.key");
        let mut h = History::open(&dir, &key, "room").unwrap();
        let marker = "MARKER-7f3a-disappearing";
        let now = SystemTime::now();
        let expires = unix_ms(now) + 5_000;
        h.store(&message(9, marker, Some(expires))).unwrap();
        h.store(&message(10, "stays", None)).unwrap();
        let (wrapped, body) = h.raw_entry(MessageId([9; 16])).unwrap();
        // The search works: before expiry the sealed entry is in the database file.
        let db = std::fs::read(dir.join(DB_FILE)).unwrap();
        assert!(contains(&db, &wrapped) && contains(&db, &body));
        assert!(!contains(&db, marker.as_bytes()));
        assert_eq!(
            h.purge_expired(now + Duration::from_millis(4_999)).unwrap(),
            0
        );
        assert_eq!(h.purge_expired(now + Duration::from_secs(5)).unwrap(), 1);
        for (path, bytes) in all_files(&dir) {
            assert!(!contains(&bytes, marker.as_bytes()), "text in {path:?}");
            assert!(!contains(&bytes, &wrapped), "wrapped key in {path:?}");
            assert!(!contains(&bytes, &body), "ciphertext in {path:?}");
        }
        // No journal or WAL is left beside the database.
        let names: Vec<_> = all_files(&dir)
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n == DB_FILE || n == "history.key"),
            "{names:?}"
        );
        let live = h.live(now).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].text.as_str(), "stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = temp_dir("perm");
        let key = dir.join("history.key");
        History::open(&dir, &key, "room").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            History::open(&dir, &key, "room"),
            Err(HistoryError::Key { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
