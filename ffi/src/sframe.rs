//! SFrame (RFC 9605): one-shot functions with an explicit counter, and sender and receiver
//! contexts for applications.

use engine::sframe::{
    CipherSuite, Header, MAX_HEADER_LEN, ReceiverContext, SenderContext, SframeError,
};
use zeroize::Zeroizing;

use crate::error::{
    Failure, Result, SOTTO_ERR_AUTH, SOTTO_ERR_BUFFER_TOO_SMALL, SOTTO_ERR_INTERNAL,
    SOTTO_ERR_STATE, bytes, guard, guard_value, out_bytes, sotto_status,
};

/// The status an SFrame error maps to.
fn sframe_failure(e: SframeError) -> Failure {
    let status = match &e {
        SframeError::AuthenticationFailed
        | SframeError::Replay { .. }
        | SframeError::TooOld { .. }
        | SframeError::UnknownKid { .. }
        | SframeError::HeaderTruncated { .. }
        | SframeError::CiphertextTooShort { .. } => SOTTO_ERR_AUTH,
        SframeError::BufferTooSmall { .. } => SOTTO_ERR_BUFFER_TOO_SMALL,
        SframeError::CounterExhausted => SOTTO_ERR_STATE,
        SframeError::Crypto => SOTTO_ERR_INTERNAL,
        _ => crate::error::SOTTO_ERR_INVALID,
    };
    Failure::new(status, e.to_string())
}

fn suite_arg(id: u16) -> Result<CipherSuite> {
    CipherSuite::from_id(id).map_err(sframe_failure)
}

fn too_small(needed: usize, cap: usize) -> Failure {
    Failure::new(
        SOTTO_ERR_BUFFER_TOO_SMALL,
        format!("output buffer too small: needs {needed} bytes, has {cap}"),
    )
}

/// Sets `*out_len` (non-NULL, checked by the caller).
fn set_len(out_len: *mut usize, len: usize) {
    // SAFETY: every caller checked `out_len` for NULL; the C caller promises it is writable.
    unsafe { out_len.write(len) }
}

/// Encrypts with `tx` into `out`, reporting the size needed through `out_len`.
fn encrypt_into(
    tx: &mut SenderContext,
    metadata: &[u8],
    plaintext: &[u8],
    out: &mut [u8],
    out_len: *mut usize,
) -> Result<()> {
    // The size is checked before the counter is consumed, so a retry reuses the same counter.
    match tx.encrypt(metadata, plaintext, out) {
        Ok(len) => {
            set_len(out_len, len);
            Ok(())
        }
        Err(SframeError::BufferTooSmall { needed, available }) => {
            set_len(out_len, needed);
            Err(too_small(needed, available))
        }
        Err(e) => Err(sframe_failure(e)),
    }
}

/// Decrypts `frame` with `rx` into `out`. The size needed is known from the header before the
/// replay window moves, so a too-small buffer can be retried with the same frame.
fn decrypt_into(
    rx: &mut ReceiverContext,
    suite: CipherSuite,
    metadata: &[u8],
    frame: &[u8],
    out: &mut [u8],
    out_len: *mut usize,
) -> Result<()> {
    let (_, header_len) = Header::parse(frame).map_err(sframe_failure)?;
    let overhead = header_len + suite.tag_len();
    if let Some(needed) = frame.len().checked_sub(overhead)
        && out.len() < needed
    {
        set_len(out_len, needed);
        return Err(too_small(needed, out.len()));
    }
    let mut work = Zeroizing::new(frame.to_vec());
    let decrypted = rx
        .decrypt_in_place(metadata, &mut work)
        .map_err(sframe_failure)?;
    let plaintext = &*decrypted.payload;
    let dst = out
        .get_mut(..plaintext.len())
        .ok_or_else(|| too_small(plaintext.len(), 0))?;
    dst.copy_from_slice(plaintext);
    set_len(out_len, plaintext.len());
    Ok(())
}

/// The most bytes SFrame adds to a frame with `suite` (registry value 1..5): the longest
/// header plus the tag; 0 for a bad suite. An output buffer of plaintext length plus this
/// always suffices for encryption.
///
/// Thread-safety: any thread. Ownership: nothing to free.
#[unsafe(no_mangle)]
pub extern "C" fn sotto_sframe_overhead(suite: u16) -> usize {
    guard_value(0, || {
        CipherSuite::from_id(suite).map_or(0, |s| MAX_HEADER_LEN + s.tag_len())
    })
}

/// Encrypts one frame with an explicit counter: byte for byte what `sotto sframe encrypt`
/// prints. Writes header || ciphertext || tag to `out` and its length to `*out_len`.
///
/// `suite` is the RFC 9605 registry value (1..5); `key` is the base key (any non-zero length),
/// from which the key and salt of `kid` are derived. `metadata` is authenticated, not
/// encrypted. `metadata` and `plaintext` may be NULL when their length is 0. `out` may be NULL
/// when `out_cap` is 0; if `out_cap` is too small the result is SOTTO_ERR_BUFFER_TOO_SMALL and
/// `*out_len` is the size needed (at most `plaintext_len + sotto_sframe_overhead(suite)`).
///
/// Never use one (key, kid, ctr) twice: use a sender context for a stream of frames.
///
/// Thread-safety: any thread; no shared state. Ownership: the caller owns every buffer; the
/// library keeps no pointer after it returns and wipes its key copies.
///
/// # Safety
/// Each pointer must be NULL or valid for its length (`out` for `out_cap` writable bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_encrypt(
    suite: u16,
    key: *const u8,
    key_len: usize,
    kid: u64,
    ctr: u64,
    metadata: *const u8,
    metadata_len: usize,
    plaintext: *const u8,
    plaintext_len: usize,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> sotto_status {
    guard(|| {
        if out_len.is_null() {
            return Err(Failure::null("out_len"));
        }
        // SAFETY (all four): the caller promises valid pointers for the given lengths.
        let key = unsafe { bytes(key, key_len, "key", false) }?;
        let metadata = unsafe { bytes(metadata, metadata_len, "metadata", true) }?;
        let plaintext = unsafe { bytes(plaintext, plaintext_len, "plaintext", true) }?;
        let out = unsafe { out_bytes(out, out_cap) }?;
        let suite = suite_arg(suite)?;
        let mut tx = SenderContext::new(suite, kid, key)
            .map_err(sframe_failure)?
            .with_counter(ctr);
        encrypt_into(&mut tx, metadata, plaintext, out, out_len)
    })
}

/// Decrypts one frame (header || ciphertext || tag): byte for byte what `sotto sframe
/// decrypt` does. The key of the KID the frame names is derived from the base key `key`.
/// Writes the plaintext to `out` and its length to `*out_len`.
///
/// SOTTO_ERR_AUTH: the frame is malformed or failed authentication (wrong key, or header,
/// metadata, ciphertext or tag altered). `metadata` may be NULL when its length is 0; `out`
/// may be NULL when `out_cap` is 0. If `out_cap` is too small the result is
/// SOTTO_ERR_BUFFER_TOO_SMALL and `*out_len` is the size needed.
///
/// Thread-safety: any thread; no shared state. Ownership: the caller owns every buffer; the
/// library keeps no pointer after it returns and wipes its copies.
///
/// # Safety
/// Each pointer must be NULL or valid for its length (`out` for `out_cap` writable bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_decrypt(
    suite: u16,
    key: *const u8,
    key_len: usize,
    metadata: *const u8,
    metadata_len: usize,
    frame: *const u8,
    frame_len: usize,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> sotto_status {
    guard(|| {
        if out_len.is_null() {
            return Err(Failure::null("out_len"));
        }
        // SAFETY (all four): the caller promises valid pointers for the given lengths.
        let key = unsafe { bytes(key, key_len, "key", false) }?;
        let metadata = unsafe { bytes(metadata, metadata_len, "metadata", true) }?;
        let frame = unsafe { bytes(frame, frame_len, "frame", false) }?;
        let out = unsafe { out_bytes(out, out_cap) }?;
        let suite = suite_arg(suite)?;
        let (header, _) = Header::parse(frame).map_err(sframe_failure)?;
        let mut rx = ReceiverContext::new();
        rx.add_key(suite, header.kid, key).map_err(sframe_failure)?;
        decrypt_into(&mut rx, suite, metadata, frame, out, out_len)
    })
}

/// An SFrame sender: one KID, a counter that only grows (starting at 0).
pub struct sotto_sframe_sender {
    tx: SenderContext,
}

/// An SFrame receiver: keys by KID, each with its replay window.
pub struct sotto_sframe_receiver {
    suite: CipherSuite,
    rx: ReceiverContext,
}

/// Creates a sender for `kid` whose key and salt are derived from the base key `key` with
/// `suite` (1..5). The counter starts at 0 and grows by one per frame.
///
/// Thread-safety: use a sender from one thread at a time (it may move between threads).
/// Ownership: `*out` receives a new sender that the caller frees with
/// `sotto_sframe_sender_free`; the key is copied (derived) and the caller's buffer may be
/// wiped at once.
///
/// # Safety
/// `key` must be valid for `key_len` bytes; `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_sender_new(
    suite: u16,
    key: *const u8,
    key_len: usize,
    kid: u64,
    out: *mut *mut sotto_sframe_sender,
) -> sotto_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: the caller promises `key_len` readable bytes.
        let key = unsafe { bytes(key, key_len, "key", false) }?;
        let tx = SenderContext::new(suite_arg(suite)?, kid, key).map_err(sframe_failure)?;
        let sender = Box::into_raw(Box::new(sotto_sframe_sender { tx }));
        // SAFETY: `out` is non-NULL and the caller promises it is writable.
        unsafe { out.write(sender) };
        Ok(())
    })
}

/// Encrypts the next frame with the sender's next counter into `out` (header || ciphertext
/// || tag) and sets `*out_len`. If `out_cap` is too small: SOTTO_ERR_BUFFER_TOO_SMALL,
/// `*out_len` is the size needed, and the counter is not used up.
///
/// Thread-safety: one thread at a time per sender. Ownership: the caller owns every buffer.
///
/// # Safety
/// `sender` must come from `sotto_sframe_sender_new` and not be freed; each pointer must be
/// NULL or valid for its length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_sender_encrypt(
    sender: *mut sotto_sframe_sender,
    metadata: *const u8,
    metadata_len: usize,
    plaintext: *const u8,
    plaintext_len: usize,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> sotto_status {
    guard(|| {
        if out_len.is_null() {
            return Err(Failure::null("out_len"));
        }
        // SAFETY: the caller promises a live sender, used by this thread only.
        let sender = unsafe { sender.as_mut() }.ok_or_else(|| Failure::null("sender"))?;
        // SAFETY (all three): the caller promises valid pointers for the given lengths.
        let metadata = unsafe { bytes(metadata, metadata_len, "metadata", true) }?;
        let plaintext = unsafe { bytes(plaintext, plaintext_len, "plaintext", true) }?;
        let out = unsafe { out_bytes(out, out_cap) }?;
        encrypt_into(&mut sender.tx, metadata, plaintext, out, out_len)
    })
}

/// Frees a sender and wipes its keys. NULL is a no-op.
///
/// Thread-safety: not while another thread uses the sender. Ownership: `sender` is invalid
/// afterwards.
///
/// # Safety
/// `sender` must be NULL or come from `sotto_sframe_sender_new`, freed only once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_sender_free(sender: *mut sotto_sframe_sender) {
    guard_value((), || {
        if !sender.is_null() {
            // SAFETY: the caller gives back the box `sotto_sframe_sender_new` made.
            drop(unsafe { Box::from_raw(sender) });
        }
    })
}

/// Creates a receiver for frames of `suite` (1..5), without keys yet.
///
/// Thread-safety: use a receiver from one thread at a time (it may move between threads).
/// Ownership: `*out` receives a new receiver that the caller frees with
/// `sotto_sframe_receiver_free`.
///
/// # Safety
/// `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_receiver_new(
    suite: u16,
    out: *mut *mut sotto_sframe_receiver,
) -> sotto_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let receiver = sotto_sframe_receiver {
            suite: suite_arg(suite)?,
            rx: ReceiverContext::new(),
        };
        // SAFETY: `out` is non-NULL and the caller promises it is writable.
        unsafe { out.write(Box::into_raw(Box::new(receiver))) };
        Ok(())
    })
}

/// Adds (or replaces) the key of `kid`, derived from the base key `key`. Replacing a key keeps
/// the KID's replay window, so frames accepted before cannot be accepted again.
///
/// Thread-safety: one thread at a time per receiver. Ownership: the key is copied (derived);
/// the caller's buffer may be wiped at once.
///
/// # Safety
/// `receiver` must come from `sotto_sframe_receiver_new` and not be freed; `key` must be
/// valid for `key_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_receiver_add_key(
    receiver: *mut sotto_sframe_receiver,
    kid: u64,
    key: *const u8,
    key_len: usize,
) -> sotto_status {
    guard(|| {
        // SAFETY: the caller promises a live receiver, used by this thread only.
        let receiver = unsafe { receiver.as_mut() }.ok_or_else(|| Failure::null("receiver"))?;
        // SAFETY: the caller promises `key_len` readable bytes.
        let key = unsafe { bytes(key, key_len, "key", false) }?;
        receiver
            .rx
            .add_key(receiver.suite, kid, key)
            .map_err(sframe_failure)
    })
}

/// Verifies and decrypts one frame into `out` and sets `*out_len`. SOTTO_ERR_AUTH: malformed,
/// failed authentication, replayed or too old, or a KID without a key. If `out_cap` is too
/// small: SOTTO_ERR_BUFFER_TOO_SMALL, `*out_len` is the size needed, and the replay window is
/// unchanged (the same frame can be given again).
///
/// Thread-safety: one thread at a time per receiver. Ownership: the caller owns every buffer.
///
/// # Safety
/// `receiver` must come from `sotto_sframe_receiver_new` and not be freed; each pointer must
/// be NULL or valid for its length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_receiver_decrypt(
    receiver: *mut sotto_sframe_receiver,
    metadata: *const u8,
    metadata_len: usize,
    frame: *const u8,
    frame_len: usize,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> sotto_status {
    guard(|| {
        if out_len.is_null() {
            return Err(Failure::null("out_len"));
        }
        // SAFETY: the caller promises a live receiver, used by this thread only.
        let receiver = unsafe { receiver.as_mut() }.ok_or_else(|| Failure::null("receiver"))?;
        // SAFETY (all three): the caller promises valid pointers for the given lengths.
        let metadata = unsafe { bytes(metadata, metadata_len, "metadata", true) }?;
        let frame = unsafe { bytes(frame, frame_len, "frame", false) }?;
        let out = unsafe { out_bytes(out, out_cap) }?;
        decrypt_into(
            &mut receiver.rx,
            receiver.suite,
            metadata,
            frame,
            out,
            out_len,
        )
    })
}

/// Frees a receiver and wipes its keys. NULL is a no-op.
///
/// Thread-safety: not while another thread uses the receiver. Ownership: `receiver` is
/// invalid afterwards.
///
/// # Safety
/// `receiver` must be NULL or come from `sotto_sframe_receiver_new`, freed only once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_sframe_receiver_free(receiver: *mut sotto_sframe_receiver) {
    guard_value((), || {
        if !receiver.is_null() {
            // SAFETY: the caller gives back the box `sotto_sframe_receiver_new` made.
            drop(unsafe { Box::from_raw(receiver) });
        }
    })
}
