//! The receiving side: several KIDs at once, each with its own replay window.

use super::header::Header;
use super::key::FrameKey;
use super::replay::{DEFAULT_REPLAY_WINDOW, Refusal, ReplayWindow};
use super::sender::check_metadata;
use super::{CipherSuite, MAX_HEADER_LEN, MAX_METADATA_LEN, SframeError};

/// Limits of a [`ReceiverContext`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Counters remembered per KID; frames older than this are refused. At least 1, at most
    /// [`super::MAX_REPLAY_WINDOW`].
    pub replay_window: u64,
    /// Keys held at once (one per sender and per rotation step in flight).
    pub max_keys: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            replay_window: DEFAULT_REPLAY_WINDOW,
            max_keys: 64,
        }
    }
}

/// What a receiver has done so far. Every refused frame is counted under exactly one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Frames that authenticated and were decrypted.
    pub decrypted: u64,
    /// Frames whose tag did not verify.
    pub auth_failures: u64,
    /// Frames whose KID and counter were already accepted.
    pub replays: u64,
    /// Frames older than the replay window.
    pub too_old: u64,
    /// Frames for a KID the receiver does not hold.
    pub unknown_kid: u64,
    /// Frames with a truncated header or too short for a tag, or oversized metadata.
    pub malformed: u64,
}

/// A decrypted frame: its header and the plaintext, which lies inside the caller's buffer.
#[derive(Debug)]
pub struct Decrypted<'a> {
    /// The frame's KID and counter.
    pub header: Header,
    /// The plaintext.
    pub payload: &'a mut [u8],
}

struct ReceiverKey {
    key: FrameKey,
    window: ReplayWindow,
}

/// Verifies and decrypts incoming frames (RFC 9605, section 4.4.4).
///
/// A frame moves the replay window only after it authenticated, so forged frames cannot push
/// genuine ones out of the window.
pub struct ReceiverContext {
    config: ReceiverConfig,
    keys: Vec<ReceiverKey>,
    scratch: Box<[u8]>,
    stats: ReceiverStats,
}

impl std::fmt::Debug for ReceiverContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverContext")
            .field("config", &self.config)
            .field("kids", &self.kids().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for ReceiverContext {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiverContext {
    /// A receiver with the default limits and no keys.
    pub fn new() -> Self {
        ReceiverContext {
            config: ReceiverConfig::default(),
            keys: Vec::new(),
            scratch: vec![0u8; MAX_HEADER_LEN + MAX_METADATA_LEN].into_boxed_slice(),
            stats: ReceiverStats::default(),
        }
    }

    /// A receiver with the given limits.
    pub fn with_config(config: ReceiverConfig) -> Result<Self, SframeError> {
        // Validate the window size once, before any key needs it.
        ReplayWindow::new(config.replay_window)?;
        Ok(ReceiverContext {
            config,
            ..Self::new()
        })
    }

    /// Adds the key for `kid`, derived from `base_key`. Replacing an existing KID's key keeps
    /// its replay window, so frames already accepted cannot be accepted again.
    pub fn add_key(
        &mut self,
        suite: CipherSuite,
        kid: u64,
        base_key: &[u8],
    ) -> Result<(), SframeError> {
        let key = FrameKey::new(suite, kid, base_key)?;
        if let Some(existing) = self.keys.iter_mut().find(|k| k.key.kid() == kid) {
            existing.key = key;
            return Ok(());
        }
        if self.keys.len() >= self.config.max_keys {
            return Err(SframeError::TooManyKeys {
                max: self.config.max_keys,
            });
        }
        self.keys.push(ReceiverKey {
            key,
            window: ReplayWindow::new(self.config.replay_window)?,
        });
        Ok(())
    }

    /// Removes (and zeroizes) the key of `kid`; returns whether it was present.
    pub fn remove_key(&mut self, kid: u64) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.key.kid() != kid);
        self.keys.len() != before
    }

    /// The KIDs held.
    pub fn kids(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().map(|k| k.key.kid())
    }

    /// Counts of decrypted and refused frames.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Verifies and decrypts `frame` (header || ciphertext || tag) where it lies.
    ///
    /// On success the plaintext is `frame[header_len..len - tag_len]`; on failure the
    /// contents of `frame` are unspecified and nothing in the receiver changed but its stats.
    pub fn decrypt_in_place<'a>(
        &mut self,
        metadata: &[u8],
        frame: &'a mut [u8],
    ) -> Result<Decrypted<'a>, SframeError> {
        let (header, range) = self.open_counted(metadata, frame)?;
        Ok(Decrypted {
            header,
            payload: &mut frame[range],
        })
    }

    /// [`open`](Self::open), with the outcome counted in the stats.
    fn open_counted(
        &mut self,
        metadata: &[u8],
        frame: &mut [u8],
    ) -> Result<(Header, std::ops::Range<usize>), SframeError> {
        let result = self.open(metadata, frame);
        let stats = &mut self.stats;
        match &result {
            Ok(_) => stats.decrypted += 1,
            Err(SframeError::AuthenticationFailed) => stats.auth_failures += 1,
            Err(SframeError::Replay { .. }) => stats.replays += 1,
            Err(SframeError::TooOld { .. }) => stats.too_old += 1,
            Err(SframeError::UnknownKid { .. }) => stats.unknown_kid += 1,
            Err(_) => stats.malformed += 1,
        }
        result
    }

    fn open(
        &mut self,
        metadata: &[u8],
        frame: &mut [u8],
    ) -> Result<(Header, std::ops::Range<usize>), SframeError> {
        check_metadata(metadata)?;
        let (header, header_len) = Header::parse(frame)?;
        let Some(entry) = self.keys.iter_mut().find(|k| k.key.kid() == header.kid) else {
            return Err(SframeError::UnknownKid { kid: header.kid });
        };
        let tag_len = entry.key.suite().tag_len();
        let body_len = frame.len() - header_len;
        if body_len < tag_len {
            return Err(SframeError::CiphertextTooShort {
                available: body_len,
                tag_len,
            });
        }
        entry.window.check(header.ctr).map_err(|r| match r {
            Refusal::Duplicate => SframeError::Replay {
                kid: header.kid,
                ctr: header.ctr,
            },
            Refusal::TooOld { newest } => SframeError::TooOld {
                kid: header.kid,
                ctr: header.ctr,
                newest,
            },
        })?;
        let (head, body) = frame.split_at_mut(header_len);
        entry
            .key
            .open(header.ctr, head, metadata, &mut self.scratch, body)?;
        entry.window.accept(header.ctr);
        Ok((header, header_len..header_len + body_len - tag_len))
    }

    /// Verifies and decrypts `frame` into `out`; returns the header and the plaintext length.
    pub fn decrypt(
        &mut self,
        metadata: &[u8],
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<(Header, usize), SframeError> {
        let Some(dst) = out.get_mut(..frame.len()) else {
            return Err(SframeError::BufferTooSmall {
                needed: frame.len(),
                available: out.len(),
            });
        };
        dst.copy_from_slice(frame);
        let (header, range) = self.open_counted(metadata, dst)?;
        let len = range.len();
        out.copy_within(range, 0);
        Ok((header, len))
    }

    /// Decrypts into a new vector. Allocates: for tools and tests, not the media path.
    pub fn decrypt_to_vec(
        &mut self,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<(Header, Vec<u8>), SframeError> {
        let mut buf = frame.to_vec();
        let decrypted = self.decrypt_in_place(metadata, &mut buf)?;
        let header = decrypted.header;
        let plaintext = decrypted.payload.to_vec();
        Ok((header, plaintext))
    }
}
