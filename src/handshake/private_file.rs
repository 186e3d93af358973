//! Owner-only files (the identity seed, the known peers): read without following links and
//! checked on the open descriptor, written through an exclusively created temporary file with
//! a random name and a rename, in a directory nobody else can write, and updated under a lock.
//!
//! Each rule closes one local attack: a planted symlink at the temporary or final path, a
//! file swapped between a permission check and the read, a directory where others can plant
//! files, and two processes overwriting each other's changes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::HandshakeError;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HandshakeError + '_ {
    move |source| HandshakeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, reason: String) -> HandshakeError {
    HandshakeError::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes sure `dir` exists (created 0700 if not), belongs to us and is writable by nobody
/// else: otherwise someone could plant or swap files in it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), HandshakeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    let meta = fs::metadata(dir).map_err(io_error(dir))?;
    if !meta.is_dir() {
        return Err(bad_file(dir, "not a directory".into()));
    }
    let uid = effective_uid();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(bad_file(
            dir,
            format!(
                "directory belongs to user {}, not to you; keep sotto's files in a directory of your own",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(bad_file(
            dir,
            format!(
                "directory is writable by others (mode {:o}); keep sotto's files in a directory only you can write",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Opens `path` for reading without following a symlink and checks the open file itself: a
/// regular file of ours, mode without group or other bits, at most `max_len` bytes. `None`
/// when it does not exist.
pub(crate) fn read_private(
    path: &Path,
    max_len: u64,
) -> Result<Option<Zeroizing<Vec<u8>>>, HandshakeError> {
    ensure_private_dir(parent_of(path))?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(bad_file(
                path,
                "is a symbolic link; refusing to follow it".into(),
            ));
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    check_open_file(path, &file)?;
    let meta = file.metadata().map_err(io_error(path))?;
    if meta.len() > max_len {
        return Err(bad_file(path, format!("larger than {max_len} bytes")));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    (&mut file)
        .take(max_len + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > max_len {
        return Err(bad_file(path, format!("larger than {max_len} bytes")));
    }
    Ok(Some(bytes))
}

/// The checks on an opened file: regular, ours, owner-only.
fn check_open_file(path: &Path, file: &File) -> Result<(), HandshakeError> {
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(bad_file(path, "not a regular file".into()));
    }
    if meta.uid() != effective_uid() {
        return Err(bad_file(
            path,
            format!("belongs to user {}, not to you", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad_file(
            path,
            format!(
                "accessible by others (mode {:o}); run chmod 600 on it",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and owner-only: a temporary file with a random name,
/// created exclusively (never through a link), synced, then renamed over `path`; the directory
/// is synced too, so a crash leaves the old or the new file, never a torn one.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HandshakeError> {
    let dir = parent_of(path);
    ensure_private_dir(dir)?;
    let mut random = [0u8; 8];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| HandshakeError::Random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", hex::encode(random)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_error(path))
}

/// An exclusive advisory lock on `<path>.lock`, held until dropped, so that two processes
/// updating one file do not lose each other's changes.
#[derive(Debug)]
pub(crate) struct PrivateLock {
    file: File,
}

impl PrivateLock {
    /// Waits for and takes the lock that guards `path`.
    pub(crate) fn acquire(path: &Path) -> Result<Self, HandshakeError> {
        ensure_private_dir(parent_of(path))?;
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        check_open_file(&lock_path, &file)?;
        file.lock().map_err(io_error(&lock_path))?;
        Ok(PrivateLock { file })
    }
}

impl Drop for PrivateLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-pf-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_owner_only_and_reads_back() {
        let dir = temp_dir("rw");
        let path = dir.join("f.json");
        assert!(read_private(&path, 100).unwrap().is_none());
        write_private(&path, b"secret").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            read_private(&path, 100).unwrap().unwrap().as_slice(),
            b"secret"
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(read_private(&path, 3).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = temp_dir("link");
        let target = std::env::temp_dir().join(format!("sotto-pf-target-{}", std::process::id()));
        fs::write(&target, b"attacker").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.join("identity.json");
        symlink(&target, &path).unwrap();
        assert!(matches!(
            read_private(&path, 100),
            Err(HandshakeError::BadFile { .. })
        ));
        write_private(&path, b"seed").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"attacker");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let _ = fs::remove_file(&target);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_directories_others_can_write_and_readable_files() {
        let dir = temp_dir("perm");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.join("f.json");
        assert!(write_private(&path, b"x").is_err());
        assert!(read_private(&path, 10).is_err());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        write_private(&path, b"x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_private(&path, 10).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let dir = temp_dir("lock");
        let path = dir.join("peers.json");
        let first = PrivateLock::acquire(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let _second = PrivateLock::acquire(&p).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second holder got the lock while the first held it"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        waiter.join().unwrap();
        let _ = fs::remove_dir_all(&dir);
    }
}
