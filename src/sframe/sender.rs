//! The sending side: one KID at a time, a counter that only ever goes up.

use std::ops::Range;

use super::header::{Header, MAX_HEADER_LEN};
use super::key::FrameKey;
use super::{CipherSuite, MAX_METADATA_LEN, SframeError};

/// Protects outgoing frames under one sender key (RFC 9605, section 4.4.3).
///
/// The counter is strictly increasing over the context's whole life, across
/// [`rotate`](Self::rotate) too, so no (key, nonce) pair can repeat even if an application
/// rotates back to an old KID and key. After counter `u64::MAX` encryption fails with
/// [`SframeError::CounterExhausted`] instead of wrapping.
pub struct SenderContext {
    key: FrameKey,
    next_ctr: Option<u64>,
    /// Room to join header and metadata for GCM's contiguous AAD; sized once.
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for SenderContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderContext")
            .field("suite", &self.key.suite())
            .field("kid", &self.key.kid())
            .field("next_ctr", &self.next_ctr)
            .finish_non_exhaustive()
    }
}

impl SenderContext {
    /// A sender for `kid` whose key and salt are derived from `base_key`; the counter starts at 0.
    pub fn new(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        Ok(SenderContext {
            key: FrameKey::new(suite, kid, base_key)?,
            next_ctr: Some(0),
            scratch: vec![0u8; MAX_HEADER_LEN + MAX_METADATA_LEN].into_boxed_slice(),
        })
    }

    /// Starts the counter at `ctr` instead of 0 (for tools and tests that need a given CTR).
    pub fn with_counter(mut self, ctr: u64) -> Self {
        self.next_ctr = Some(ctr);
        self
    }

    /// Switches to a new KID and base key. The counter keeps counting.
    pub fn rotate(&mut self, kid: u64, base_key: &[u8]) -> Result<(), SframeError> {
        self.key = FrameKey::new(self.key.suite(), kid, base_key)?;
        Ok(())
    }

    /// The suite in use.
    pub fn suite(&self) -> CipherSuite {
        self.key.suite()
    }

    /// The KID written into every frame.
    pub fn kid(&self) -> u64 {
        self.key.kid()
    }

    /// The counter the next frame will carry, or `None` once exhausted.
    pub fn next_counter(&self) -> Option<u64> {
        self.next_ctr
    }

    /// Upper bound of bytes a frame grows by: the longest header plus the tag.
    pub fn max_overhead(&self) -> usize {
        MAX_HEADER_LEN + self.key.suite().tag_len()
    }

    /// Encrypts the payload at `buf[headroom..headroom + len]` where it lies.
    ///
    /// The header is written just before the payload (so `headroom` must be at least its
    /// length; [`MAX_HEADER_LEN`] always is) and the tag just after it. Returns the range of
    /// `buf` holding the whole SFrame frame: header || ciphertext || tag.
    pub fn encrypt_in_place(
        &mut self,
        metadata: &[u8],
        buf: &mut [u8],
        headroom: usize,
        len: usize,
    ) -> Result<Range<usize>, SframeError> {
        check_metadata(metadata)?;
        let ctr = self.next_ctr.ok_or(SframeError::CounterExhausted)?;
        let header = Header::new(self.key.kid(), ctr);
        let header_len = header.encoded_len();
        let tag_len = self.key.suite().tag_len();
        if headroom < header_len {
            return Err(SframeError::HeadroomTooSmall {
                needed: header_len,
                available: headroom,
            });
        }
        let end = headroom
            .checked_add(len)
            .and_then(|n| n.checked_add(tag_len))
            .ok_or(SframeError::BufferTooSmall {
                needed: usize::MAX,
                available: buf.len(),
            })?;
        if buf.len() < end {
            return Err(SframeError::BufferTooSmall {
                needed: end,
                available: buf.len(),
            });
        }
        // The counter is consumed before sealing, so even a failed seal never lets it be reused.
        self.next_ctr = ctr.checked_add(1);
        let start = headroom - header_len;
        let (head, rest) = buf[start..end].split_at_mut(header_len);
        header.encode(head)?;
        let (payload, tag) = rest.split_at_mut(len);
        self.key
            .seal(ctr, head, metadata, &mut self.scratch, payload, tag)?;
        Ok(start..end)
    }

    /// Encrypts `plaintext` into `out` as header || ciphertext || tag; returns the length.
    pub fn encrypt(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SframeError> {
        let ctr = self.next_ctr.ok_or(SframeError::CounterExhausted)?;
        let header_len = Header::new(self.key.kid(), ctr).encoded_len();
        let needed = header_len + plaintext.len() + self.key.suite().tag_len();
        let Some(dst) = out.get_mut(header_len..header_len + plaintext.len()) else {
            return Err(SframeError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        };
        dst.copy_from_slice(plaintext);
        let range = self.encrypt_in_place(metadata, out, header_len, plaintext.len())?;
        Ok(range.len())
    }

    /// Encrypts into a new vector. Allocates: for tools and tests, not the media path.
    pub fn encrypt_to_vec(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let mut out = vec![0u8; plaintext.len() + self.max_overhead()];
        let len = self.encrypt(metadata, plaintext, &mut out)?;
        out.truncate(len);
        Ok(out)
    }
}

pub(crate) fn check_metadata(metadata: &[u8]) -> Result<(), SframeError> {
    if metadata.len() > MAX_METADATA_LEN {
        return Err(SframeError::MetadataTooLong {
            len: metadata.len(),
            max: MAX_METADATA_LEN,
        });
    }
    Ok(())
}
