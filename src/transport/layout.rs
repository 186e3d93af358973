//! The sealed layout of a VP8 frame (`docs/call-protocol.md`, video):
//!
//! ```text
//! | VP8 bytes 0..n (clear) | SFrame header | ciphertext of VP8 bytes n.. | tag |
//! n = 10 if (vp8[0] & 1) == 0 (keyframe) else 3 (delta frame)
//! AAD = SFrame header || VP8 bytes 0..n   (the clear prefix is the SFrame metadata)
//! ```
//!
//! Browsers read the VP8 payload header before any receive transform runs, so it stays in the
//! clear; binding it as metadata means a changed prefix (or a flipped frame-type bit, which
//! moves where the SFrame header is looked for) fails authentication. Empty frames pass
//! through unchanged, as the browser worker does.

use bytes::Bytes;
use thiserror::Error;

use super::SealedFrame;
use crate::sframe::{Decrypted, Header, MAX_HEADER_LEN, SenderContext, SframeError};

/// Clear prefix of a VP8 keyframe: the frame tag, the start code and the picture size.
pub const VP8_KEYFRAME_PREFIX: usize = 10;
/// Clear prefix of a VP8 delta frame: the frame tag.
pub const VP8_DELTA_PREFIX: usize = 3;

/// Bytes left in the clear in front of a sealed VP8 frame whose first byte is `first_byte`.
pub const fn video_clear_prefix_len(first_byte: u8) -> usize {
    if first_byte & 1 == 0 {
        VP8_KEYFRAME_PREFIX
    } else {
        VP8_DELTA_PREFIX
    }
}

/// Errors of sealing or opening a video frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VideoLayoutError {
    /// The frame is shorter than its clear prefix needs (plus, on receipt, an SFrame header).
    #[error("video frame of {len} bytes is too short: needs at least {needed}")]
    TooShort {
        /// Bytes the frame has.
        len: usize,
        /// Bytes it needs.
        needed: usize,
    },
    /// The opener returned a plaintext that does not lie inside the frame it was given.
    #[error("the opener returned a plaintext outside the frame")]
    PlaintextOutsideFrame,
    /// SFrame refused to seal the frame.
    #[error(transparent)]
    Sframe(#[from] SframeError),
}

/// Opening a video frame failed: either the layout (`Layout`) or the opener (`Open`, for
/// example an authentication failure).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenVideoError<E> {
    /// The frame does not have the sealed video layout.
    #[error(transparent)]
    Layout(VideoLayoutError),
    /// The opener refused the frame.
    #[error("{0}")]
    Open(E),
}

/// A VP8 frame opened in place: `prefix || plaintext`, contiguous inside the caller's buffer.
#[derive(Debug)]
pub struct OpenedVideo<'a> {
    /// The SFrame header of the frame; `None` for an empty frame (passed through).
    pub header: Option<Header>,
    /// The whole VP8 frame, ready for the decoder.
    pub vp8: &'a [u8],
}

/// Seals one VP8 frame with `sender` in the video layout. An empty frame gives an empty
/// (unsealed) frame; a frame shorter than its clear prefix is refused before any counter is
/// used.
pub fn seal_video(sender: &mut SenderContext, vp8: &[u8]) -> Result<SealedFrame, VideoLayoutError> {
    let Some(&first) = vp8.first() else {
        return Ok(SealedFrame(Bytes::new()));
    };
    let n = video_clear_prefix_len(first);
    if vp8.len() < n {
        return Err(VideoLayoutError::TooShort {
            len: vp8.len(),
            needed: n,
        });
    }
    let (prefix, rest) = vp8.split_at(n);
    // [room for the prefix][header room][rest][tag]: the prefix is then written just in
    // front of wherever the (variable-length) header starts.
    let mut buf = vec![0u8; n + MAX_HEADER_LEN + rest.len() + sender.max_overhead()];
    buf[n + MAX_HEADER_LEN..n + MAX_HEADER_LEN + rest.len()].copy_from_slice(rest);
    let range = sender.encrypt_in_place(prefix, &mut buf[n..], MAX_HEADER_LEN, rest.len())?;
    buf[range.start..range.start + n].copy_from_slice(prefix);
    Ok(SealedFrame(
        Bytes::from(buf).slice(range.start..n + range.end),
    ))
}

/// Opens a sealed VP8 frame where it lies, without allocating.
///
/// `open` gets the clear prefix (the SFrame metadata) and the SFrame part after it, and
/// decrypts that part in place, as [`crate::sframe::ReceiverContext::decrypt_in_place`] and
/// `MediaReceiver::decrypt_in_place` do:
///
/// ```
/// # use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
/// # use sotto::transport::{open_video_in_place, seal_video};
/// # let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, 1 << 24, b"key")?;
/// # let mut rx = ReceiverContext::new();
/// # rx.add_key(CipherSuite::AesGcm128Sha256, 1 << 24, b"key")?;
/// let delta = [0x31, 0x15, 0x00, 1, 2, 3, 4, 5];
/// let mut wire = seal_video(&mut tx, &delta)?.as_bytes().to_vec();
/// let opened = open_video_in_place(&mut wire, |meta, part| rx.decrypt_in_place(meta, part))
///     .unwrap();
/// assert_eq!(opened.vp8, delta);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The clear prefix is then moved next to the plaintext, so the result is the whole VP8
/// frame. An empty buffer is an empty frame and `open` is not called.
pub fn open_video_in_place<'a, E>(
    buf: &'a mut [u8],
    open: impl for<'b> FnOnce(&'b [u8], &'b mut [u8]) -> Result<Decrypted<'b>, E>,
) -> Result<OpenedVideo<'a>, OpenVideoError<E>> {
    let Some(&first) = buf.first() else {
        return Ok(OpenedVideo {
            header: None,
            vp8: buf,
        });
    };
    let n = video_clear_prefix_len(first);
    if buf.len() <= n {
        return Err(OpenVideoError::Layout(VideoLayoutError::TooShort {
            len: buf.len(),
            needed: n + 1,
        }));
    }
    let (prefix, part) = buf.split_at_mut(n);
    let part_start = part.as_ptr() as usize;
    let part_len = part.len();
    let decrypted = open(prefix, part).map_err(OpenVideoError::Open)?;
    let header = decrypted.header;
    let plaintext_len = decrypted.payload.len();
    // Where the plaintext lies within the SFrame part; anything else is the opener's bug.
    let offset = (decrypted.payload.as_ptr() as usize)
        .checked_sub(part_start)
        .filter(|o| {
            o.checked_add(plaintext_len)
                .is_some_and(|end| end <= part_len)
        })
        .ok_or(OpenVideoError::Layout(
            VideoLayoutError::PlaintextOutsideFrame,
        ))?;
    // The plaintext starts at buf[n + offset]; the prefix goes right before it.
    buf.copy_within(0..n, offset);
    Ok(OpenedVideo {
        header: Some(header),
        vp8: &buf[offset..offset + n + plaintext_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sframe::{CipherSuite, ReceiverContext};

    const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
    const KID: u64 = 1 << 24;

    fn pair() -> (SenderContext, ReceiverContext) {
        let tx = SenderContext::new(SUITE, KID, b"video key").unwrap();
        let mut rx = ReceiverContext::new();
        rx.add_key(SUITE, KID, b"video key").unwrap();
        (tx, rx)
    }

    fn keyframe(len: usize) -> Vec<u8> {
        let mut f = vec![0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        f.extend((0..len.saturating_sub(10)).map(|i| (i * 7 + 3) as u8));
        f.truncate(len);
        f
    }

    fn delta(len: usize) -> Vec<u8> {
        let mut f = vec![0x51, 0x15, 0x00];
        f.extend((0..len.saturating_sub(3)).map(|i| (i * 13 + 1) as u8));
        f.truncate(len);
        f
    }

    fn open(rx: &mut ReceiverContext, wire: &[u8]) -> Result<Vec<u8>, String> {
        let mut buf = wire.to_vec();
        open_video_in_place(&mut buf, |m, p| rx.decrypt_in_place(m, p))
            .map(|o| o.vp8.to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn prefix_length_follows_the_frame_type_bit() {
        assert_eq!(video_clear_prefix_len(0x90), 10);
        assert_eq!(video_clear_prefix_len(0x00), 10);
        assert_eq!(video_clear_prefix_len(0x51), 3);
        assert_eq!(video_clear_prefix_len(0x01), 3);
    }

    #[test]
    fn round_trip_keeps_the_prefix_clear_and_the_rest_sealed() {
        let (mut tx, mut rx) = pair();
        for frame in [
            keyframe(10),
            keyframe(11),
            keyframe(5000),
            delta(3),
            delta(4),
            delta(1400),
        ] {
            let n = video_clear_prefix_len(frame[0]);
            let header = Header::new(KID, tx.next_counter().unwrap());
            let wire = seal_video(&mut tx, &frame).unwrap();
            let wire = wire.as_bytes();
            assert_eq!(&wire[..n], &frame[..n], "prefix in the clear");
            let (h, hlen) = header.to_bytes();
            assert_eq!(
                &wire[n..n + hlen],
                &h[..hlen],
                "header right after the prefix"
            );
            assert_eq!(wire.len(), frame.len() + hlen + 16);
            if frame.len() > n + 8 {
                let rest = &frame[n..];
                assert!(!wire.windows(8).any(|w| rest.windows(8).any(|p| p == w)));
            }
            assert_eq!(open(&mut rx, wire).unwrap(), frame);
        }
        assert_eq!(rx.stats().decrypted, 6);
    }

    #[test]
    fn opened_frame_lies_in_the_callers_buffer() {
        let (mut tx, mut rx) = pair();
        let frame = delta(300);
        let mut buf = seal_video(&mut tx, &frame).unwrap().as_bytes().to_vec();
        let range = buf.as_ptr_range();
        let opened = open_video_in_place(&mut buf, |m, p| rx.decrypt_in_place(m, p)).unwrap();
        assert!(range.contains(&opened.vp8.as_ptr()));
        assert_eq!(opened.header, Some(Header::new(KID, 0)));
        assert_eq!(opened.vp8, frame);
    }

    #[test]
    fn every_tampered_prefix_byte_fails_authentication() {
        let (mut tx, mut rx) = pair();
        for frame in [keyframe(200), delta(200)] {
            let wire = seal_video(&mut tx, &frame).unwrap().as_bytes().to_vec();
            let n = video_clear_prefix_len(frame[0]);
            // Bit 0 of byte 0 is covered by the next test (it changes the layout).
            for i in 0..n {
                let mut bad = wire.clone();
                bad[i] ^= if i == 0 { 0x80 } else { 0x01 };
                assert!(open(&mut rx, &bad).is_err(), "prefix byte {i} of {n}");
            }
            assert_eq!(open(&mut rx, &wire).unwrap(), frame);
        }
        assert_eq!(rx.stats().auth_failures, 13);
    }

    #[test]
    fn flipping_the_frame_type_bit_fails() {
        let (mut tx, mut rx) = pair();
        for frame in [keyframe(200), delta(200)] {
            let mut wire = seal_video(&mut tx, &frame).unwrap().as_bytes().to_vec();
            wire[0] ^= 1;
            assert!(open(&mut rx, &wire).is_err());
        }
        assert_eq!(rx.stats().decrypted, 0);
    }

    #[test]
    fn short_frames_are_refused() {
        let (mut tx, mut rx) = pair();
        for len in 1..10 {
            assert_eq!(
                seal_video(&mut tx, &keyframe(len)).unwrap_err(),
                VideoLayoutError::TooShort { len, needed: 10 }
            );
        }
        for len in 1..3 {
            assert!(matches!(
                seal_video(&mut tx, &delta(len)),
                Err(VideoLayoutError::TooShort { needed: 3, .. })
            ));
        }
        // Refusals use no counter.
        assert_eq!(tx.next_counter(), Some(0));
        let mut called = false;
        for wire in [&keyframe(10)[..], &delta(3)[..], &[0x90][..]] {
            let mut buf = wire.to_vec();
            let r = open_video_in_place(&mut buf, |m, p| {
                called = true;
                rx.decrypt_in_place(m, p)
            });
            assert!(matches!(
                r,
                Err(OpenVideoError::Layout(VideoLayoutError::TooShort { .. }))
            ));
        }
        assert!(!called);
        // One byte past the prefix reaches SFrame, which refuses it.
        assert!(open(&mut rx, &delta(4)).is_err());
        assert_eq!(rx.stats().malformed + rx.stats().unknown_kid, 1);
    }

    #[test]
    fn empty_frames_pass_through() {
        let (mut tx, rx) = pair();
        assert!(seal_video(&mut tx, &[]).unwrap().as_bytes().is_empty());
        assert_eq!(tx.next_counter(), Some(0));
        let mut buf = [0u8; 0];
        let opened =
            open_video_in_place(&mut buf, |_m, _p| -> Result<Decrypted<'_>, SframeError> {
                panic!("empty frames are not opened")
            })
            .unwrap();
        assert!(opened.vp8.is_empty() && opened.header.is_none());
        assert_eq!(rx.stats().decrypted, 0);
    }

    #[test]
    fn an_opener_returning_foreign_bytes_is_refused() {
        let (mut tx, _) = pair();
        let mut buf = seal_video(&mut tx, &delta(50)).unwrap().as_bytes().to_vec();
        let foreign: &'static mut [u8] = Box::leak(vec![1u8; 10].into_boxed_slice());
        let r = open_video_in_place(&mut buf, |_m, _p| {
            Ok::<_, SframeError>(Decrypted {
                header: Header::new(KID, 0),
                payload: foreign,
            })
        });
        assert!(matches!(
            r,
            Err(OpenVideoError::Layout(
                VideoLayoutError::PlaintextOutsideFrame
            ))
        ));
    }
}
