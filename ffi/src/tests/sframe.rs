//! SFrame through the C ABI: RFC 9605 vectors, bad arguments, tampering.

use std::ptr::{null, null_mut};

use serde::Deserialize;

use super::last_error;
use crate::sotto_status::{self, *};
use crate::*;

const VECTORS: &str = include_str!("../../../tests/data/rfc9605-test-vectors.json");

#[derive(Deserialize)]
struct Vectors {
    sframe: Vec<SframeVector>,
}

#[derive(Deserialize)]
struct SframeVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    metadata: String,
    pt: String,
    ct: String,
}

fn vectors() -> Vec<SframeVector> {
    let v: Vectors = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(v.sframe.len(), 5);
    v.sframe
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// One-shot encryption into a vector; the status and the bytes.
fn encrypt(
    suite: u16,
    key: &[u8],
    kid: u64,
    ctr: u64,
    metadata: &[u8],
    plaintext: &[u8],
    cap: usize,
) -> (sotto_status, Vec<u8>, usize) {
    let mut out = vec![0u8; cap];
    let mut len = usize::MAX;
    // SAFETY: every pointer is valid for its length.
    let status = unsafe {
        sotto_sframe_encrypt(
            suite,
            key.as_ptr(),
            key.len(),
            kid,
            ctr,
            metadata.as_ptr(),
            metadata.len(),
            plaintext.as_ptr(),
            plaintext.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if status == SOTTO_OK {
        out.truncate(len);
    }
    (status, out, len)
}

fn decrypt(
    suite: u16,
    key: &[u8],
    metadata: &[u8],
    frame: &[u8],
    cap: usize,
) -> (sotto_status, Vec<u8>, usize) {
    let mut out = vec![0u8; cap];
    let mut len = usize::MAX;
    // SAFETY: every pointer is valid for its length.
    let status = unsafe {
        sotto_sframe_decrypt(
            suite,
            key.as_ptr(),
            key.len(),
            metadata.as_ptr(),
            metadata.len(),
            frame.as_ptr(),
            frame.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if status == SOTTO_OK {
        out.truncate(len);
    }
    (status, out, len)
}

fn receiver_decrypt(
    rx: *mut sotto_sframe_receiver,
    metadata: &[u8],
    frame: &[u8],
    cap: usize,
) -> (sotto_status, Vec<u8>, usize) {
    let mut out = vec![0u8; cap];
    let mut len = usize::MAX;
    // SAFETY: a live receiver; every pointer is valid for its length.
    let status = unsafe {
        sotto_sframe_receiver_decrypt(
            rx,
            metadata.as_ptr(),
            metadata.len(),
            frame.as_ptr(),
            frame.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if status == SOTTO_OK {
        out.truncate(len);
    }
    (status, out, len)
}

fn sender_encrypt(
    tx: *mut sotto_sframe_sender,
    metadata: &[u8],
    plaintext: &[u8],
    cap: usize,
) -> (sotto_status, Vec<u8>, usize) {
    let mut out = vec![0u8; cap];
    let mut len = usize::MAX;
    // SAFETY: a live sender; every pointer is valid for its length.
    let status = unsafe {
        sotto_sframe_sender_encrypt(
            tx,
            metadata.as_ptr(),
            metadata.len(),
            plaintext.as_ptr(),
            plaintext.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    if status == SOTTO_OK {
        out.truncate(len);
    }
    (status, out, len)
}

fn new_sender(suite: u16, key: &[u8], kid: u64) -> *mut sotto_sframe_sender {
    let mut tx = null_mut();
    // SAFETY: valid key and out pointer.
    let status = unsafe { sotto_sframe_sender_new(suite, key.as_ptr(), key.len(), kid, &mut tx) };
    assert_eq!(status, SOTTO_OK, "{}", last_error());
    assert!(!tx.is_null());
    tx
}

fn new_receiver(suite: u16, kid: u64, key: &[u8]) -> *mut sotto_sframe_receiver {
    let mut rx = null_mut();
    // SAFETY: valid out pointer, then a live receiver and a valid key.
    unsafe {
        assert_eq!(sotto_sframe_receiver_new(suite, &mut rx), SOTTO_OK);
        assert_eq!(
            sotto_sframe_receiver_add_key(rx, kid, key.as_ptr(), key.len()),
            SOTTO_OK,
            "{}",
            last_error()
        );
    }
    rx
}

#[test]
fn one_shot_matches_every_rfc9605_vector_both_ways() {
    for v in vectors() {
        let (key, md, pt) = (h(&v.base_key), h(&v.metadata), h(&v.pt));
        let cap = pt.len() + sotto_sframe_overhead(v.cipher_suite);
        let (status, ct, _) = encrypt(v.cipher_suite, &key, v.kid, v.ctr, &md, &pt, cap);
        assert_eq!(status, SOTTO_OK, "{}", last_error());
        assert_eq!(hex::encode(&ct), v.ct, "suite {} encrypt", v.cipher_suite);
        assert_eq!(last_error(), "");
        let (status, got, _) = decrypt(v.cipher_suite, &key, &md, &h(&v.ct), pt.len());
        assert_eq!(status, SOTTO_OK, "{}", last_error());
        assert_eq!(hex::encode(got), v.pt, "suite {} decrypt", v.cipher_suite);
    }
}

#[test]
fn contexts_decrypt_the_vectors_refuse_replays_and_round_trip() {
    for v in vectors() {
        let (key, md, pt, ct) = (h(&v.base_key), h(&v.metadata), h(&v.pt), h(&v.ct));
        let rx = new_receiver(v.cipher_suite, v.kid, &key);
        let (status, got, _) = receiver_decrypt(rx, &md, &ct, pt.len());
        assert_eq!(status, SOTTO_OK, "{}", last_error());
        assert_eq!(got, pt);
        let (status, _, _) = receiver_decrypt(rx, &md, &ct, pt.len());
        assert_eq!(status, SOTTO_ERR_AUTH, "a replay is refused");
        assert!(last_error().contains("replay"), "{}", last_error());

        // A sender's first frames carry counters 0, 1, 2: what one-shot gives for them.
        let tx = new_sender(v.cipher_suite, &key, v.kid);
        let cap = pt.len() + sotto_sframe_overhead(v.cipher_suite);
        let rx2 = new_receiver(v.cipher_suite, v.kid, &key);
        for ctr in 0..3 {
            let (status, frame, _) = sender_encrypt(tx, &md, &pt, cap);
            assert_eq!(status, SOTTO_OK, "{}", last_error());
            let (_, expected, _) = encrypt(v.cipher_suite, &key, v.kid, ctr, &md, &pt, cap);
            assert_eq!(frame, expected, "counter {ctr}");
            let (status, got, _) = receiver_decrypt(rx2, &md, &frame, pt.len());
            assert_eq!(status, SOTTO_OK, "{}", last_error());
            assert_eq!(got, pt);
        }
        // SAFETY: each freed once.
        unsafe {
            sotto_sframe_sender_free(tx);
            sotto_sframe_receiver_free(rx);
            sotto_sframe_receiver_free(rx2);
        }
    }
}

#[test]
fn too_small_buffers_report_the_size_and_change_nothing() {
    let v = &vectors()[0];
    let (key, md, pt, ct) = (h(&v.base_key), h(&v.metadata), h(&v.pt), h(&v.ct));
    let (status, _, needed) = encrypt(v.cipher_suite, &key, v.kid, v.ctr, &md, &pt, 3);
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    assert_eq!(needed, ct.len());
    // Asking with NULL and capacity 0 gives the size too.
    let mut len = 0usize;
    // SAFETY: valid pointers; out is NULL with capacity 0.
    let status = unsafe {
        sotto_sframe_encrypt(
            v.cipher_suite,
            key.as_ptr(),
            key.len(),
            v.kid,
            v.ctr,
            md.as_ptr(),
            md.len(),
            pt.as_ptr(),
            pt.len(),
            null_mut(),
            0,
            &mut len,
        )
    };
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    assert_eq!(len, ct.len());

    let (status, _, needed) = decrypt(v.cipher_suite, &key, &md, &ct, pt.len() - 1);
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    assert_eq!(needed, pt.len());

    // The receiver's replay window does not move on a too-small buffer: the retry works.
    let rx = new_receiver(v.cipher_suite, v.kid, &key);
    let (status, _, needed) = receiver_decrypt(rx, &md, &ct, 1);
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    assert_eq!(needed, pt.len());
    let (status, got, _) = receiver_decrypt(rx, &md, &ct, needed);
    assert_eq!(status, SOTTO_OK, "{}", last_error());
    assert_eq!(got, pt);

    // The sender's counter is not used up by a too-small buffer.
    let tx = new_sender(v.cipher_suite, &key, v.kid);
    let (status, _, needed) = sender_encrypt(tx, &md, &pt, 0);
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    let (status, frame, _) = sender_encrypt(tx, &md, &pt, needed);
    assert_eq!(status, SOTTO_OK);
    let (_, at_zero, _) = encrypt(v.cipher_suite, &key, v.kid, 0, &md, &pt, needed);
    assert_eq!(frame, at_zero);
    // SAFETY: each freed once.
    unsafe {
        sotto_sframe_receiver_free(rx);
        sotto_sframe_sender_free(tx);
    }
}

#[test]
fn tampered_frames_and_wrong_keys_fail_authentication() {
    let v = &vectors()[3];
    let (key, md, pt, ct) = (h(&v.base_key), h(&v.metadata), h(&v.pt), h(&v.ct));
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        let (status, _, _) = decrypt(v.cipher_suite, &key, &md, &bad, ct.len());
        // Flipping a header bit may change the KID or CTR (still a failed tag) or the length.
        assert_eq!(status, SOTTO_ERR_AUTH, "byte {i}: {}", last_error());
    }
    let mut wrong = key.clone();
    wrong[0] ^= 0x80;
    assert_eq!(
        decrypt(v.cipher_suite, &wrong, &md, &ct, pt.len()).0,
        SOTTO_ERR_AUTH
    );
    assert_eq!(
        decrypt(v.cipher_suite, &key, b"other", &ct, pt.len()).0,
        SOTTO_ERR_AUTH
    );
    assert_eq!(
        decrypt(v.cipher_suite, &key, &md, &ct[..3], pt.len()).0,
        SOTTO_ERR_AUTH
    );
    // A receiver without the frame's KID refuses it.
    let rx = new_receiver(v.cipher_suite, v.kid + 1, &key);
    assert_eq!(receiver_decrypt(rx, &md, &ct, pt.len()).0, SOTTO_ERR_AUTH);
    // SAFETY: freed once.
    unsafe { sotto_sframe_receiver_free(rx) };
}

#[test]
fn bad_suites_keys_and_lengths_are_invalid() {
    let key = [7u8; 16];
    for suite in [0u16, 6, 0xffff] {
        assert_eq!(sotto_sframe_overhead(suite), 0);
        let (status, _, _) = encrypt(suite, &key, 1, 1, &[], b"x", 64);
        assert_eq!(status, SOTTO_ERR_INVALID, "suite {suite}");
        assert!(last_error().contains("cipher suite"), "{}", last_error());
        let mut rx = null_mut();
        // SAFETY: valid out pointer.
        assert_eq!(
            unsafe { sotto_sframe_receiver_new(suite, &mut rx) },
            SOTTO_ERR_INVALID
        );
        assert!(rx.is_null());
    }
    assert_eq!(sotto_sframe_overhead(4), 17 + 16);
    // An empty key.
    assert_eq!(encrypt(4, &[], 1, 1, &[], b"x", 64).0, SOTTO_ERR_INVALID);
    // Metadata over the limit.
    let long = vec![0u8; 4097];
    assert_eq!(encrypt(4, &key, 1, 1, &long, b"x", 64).0, SOTTO_ERR_INVALID);
    // A length beyond what any buffer can have.
    let mut out = [0u8; 64];
    let mut len = 0;
    // SAFETY: the length is refused before the pointer is read.
    let status = unsafe {
        sotto_sframe_encrypt(
            4,
            key.as_ptr(),
            usize::MAX,
            1,
            1,
            null(),
            0,
            null(),
            0,
            out.as_mut_ptr(),
            out.len(),
            &mut len,
        )
    };
    assert_eq!(status, SOTTO_ERR_INVALID);
}

#[test]
fn null_pointers_are_errors_and_empty_buffers_may_be_null() {
    let key = [7u8; 16];
    let mut out = [0u8; 64];
    let mut len = 0usize;
    // SAFETY: every non-NULL pointer is valid; NULLs are the point of the test.
    unsafe {
        let enc = |key: *const u8, pt: *const u8, pt_len: usize, out_len: *mut usize| {
            sotto_sframe_encrypt(
                4,
                key,
                16,
                1,
                1,
                null(),
                0,
                pt,
                pt_len,
                out.as_ptr().cast_mut(),
                64,
                out_len,
            )
        };
        assert_eq!(enc(null(), null(), 0, &mut len), SOTTO_ERR_NULL);
        assert!(last_error().contains("key"), "{}", last_error());
        assert_eq!(enc(key.as_ptr(), null(), 1, &mut len), SOTTO_ERR_NULL);
        assert_eq!(enc(key.as_ptr(), null(), 0, null_mut()), SOTTO_ERR_NULL);
        // An empty frame with NULL metadata and plaintext: header and tag only.
        assert_eq!(enc(key.as_ptr(), null(), 0, &mut len), SOTTO_OK);
        // KID 1 and CTR 1 fit in the one-byte header.
        assert_eq!(len, 1 + 16);
        let frame = out[..len].to_vec();
        let mut plain = [0u8; 4];
        let mut plain_len = 99usize;
        assert_eq!(
            sotto_sframe_decrypt(
                4,
                key.as_ptr(),
                16,
                null(),
                0,
                frame.as_ptr(),
                frame.len(),
                null_mut(),
                0,
                &mut plain_len
            ),
            SOTTO_OK,
            "{}",
            last_error()
        );
        assert_eq!(plain_len, 0);
        assert_eq!(
            sotto_sframe_decrypt(
                4,
                key.as_ptr(),
                16,
                null(),
                0,
                null(),
                5,
                plain.as_mut_ptr(),
                4,
                &mut plain_len
            ),
            SOTTO_ERR_NULL
        );
        // A NULL output with a capacity is not allowed.
        assert_eq!(
            sotto_sframe_decrypt(
                4,
                key.as_ptr(),
                16,
                null(),
                0,
                frame.as_ptr(),
                frame.len(),
                null_mut(),
                4,
                &mut plain_len
            ),
            SOTTO_ERR_NULL
        );
        assert_eq!(
            sotto_sframe_sender_new(4, key.as_ptr(), 16, 1, null_mut()),
            SOTTO_ERR_NULL
        );
        let mut tx = null_mut();
        assert_eq!(
            sotto_sframe_sender_new(4, null(), 16, 1, &mut tx),
            SOTTO_ERR_NULL
        );
        assert!(tx.is_null());
        assert_eq!(
            sotto_sframe_sender_encrypt(
                null_mut(),
                null(),
                0,
                null(),
                0,
                out.as_mut_ptr(),
                64,
                &mut len
            ),
            SOTTO_ERR_NULL
        );
        assert_eq!(sotto_sframe_receiver_new(4, null_mut()), SOTTO_ERR_NULL);
        assert_eq!(
            sotto_sframe_receiver_add_key(null_mut(), 1, key.as_ptr(), 16),
            SOTTO_ERR_NULL
        );
        assert_eq!(
            sotto_sframe_receiver_decrypt(
                null_mut(),
                null(),
                0,
                frame.as_ptr(),
                frame.len(),
                out.as_mut_ptr(),
                64,
                &mut len
            ),
            SOTTO_ERR_NULL
        );
        // Freeing NULL is a no-op.
        sotto_sframe_sender_free(null_mut());
        sotto_sframe_receiver_free(null_mut());
    }
}
