//! Bad input against the SFrame receiver: tampering, truncation, wrong keys, unknown KIDs,
//! replays and exhausted counters. Each must be refused with the right error, count in the
//! stats, leave the receiver's state alone, and never panic.

use sotto::sframe::{CipherSuite, ReceiverConfig, ReceiverContext, SenderContext, SframeError};

const KEY: &[u8] = b"sixteen byte key";
const KID: u64 = 0x1234;

fn pair(suite: CipherSuite) -> (SenderContext, ReceiverContext) {
    let tx = SenderContext::new(suite, KID, KEY).unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, KID, KEY).unwrap();
    (tx, rx)
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for suite in CipherSuite::ALL {
        // A counter past 7 so the header carries a CTR byte that can be flipped too.
        let (tx, mut rx) = pair(suite);
        let mut tx = tx.with_counter(300);
        let metadata = b"rtp header bits";
        let frame = tx
            .encrypt_to_vec(metadata, b"an encoded opus frame")
            .unwrap();
        assert_eq!(frame.len(), 1 + 2 + 2 + 21 + suite.tag_len());
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = rx.decrypt_to_vec(metadata, &bad).unwrap_err();
            // A flip in the header may also change the KID or the header's length.
            let in_header = bit / 8 < 5;
            assert!(
                matches!(err, SframeError::AuthenticationFailed)
                    || (in_header
                        && matches!(
                            err,
                            SframeError::UnknownKid { .. }
                                | SframeError::HeaderTruncated { .. }
                                | SframeError::CiphertextTooShort { .. }
                        )),
                "{suite}: bit {bit}: {err:?}"
            );
        }
        // Flipped metadata is refused as well.
        let mut bad_meta = metadata.to_vec();
        bad_meta[0] ^= 1;
        assert_eq!(
            rx.decrypt_to_vec(&bad_meta, &frame).unwrap_err(),
            SframeError::AuthenticationFailed
        );
        // No failure moved the replay window or counted as decrypted: the genuine frame
        // still decrypts, exactly once.
        assert_eq!(rx.stats().decrypted, 0, "{suite}");
        let (_, pt) = rx.decrypt_to_vec(metadata, &frame).unwrap();
        assert_eq!(pt, b"an encoded opus frame");
        assert_eq!(rx.stats().decrypted, 1);
        let failures = rx.stats();
        assert_eq!(
            failures.auth_failures + failures.unknown_kid + failures.malformed,
            (frame.len() * 8 + 1) as u64
        );
    }
}

#[test]
fn every_truncation_is_rejected() {
    for suite in CipherSuite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let frame = tx.encrypt_to_vec(&[], b"payload").unwrap();
        for cut in 0..frame.len() {
            assert!(
                rx.decrypt_to_vec(&[], &frame[..cut]).is_err(),
                "{suite} cut {cut}"
            );
        }
        // Extra bytes appended are refused too (they would be taken as tag).
        let mut longer = frame.clone();
        longer.push(0);
        assert!(rx.decrypt_to_vec(&[], &longer).is_err());
        assert_eq!(rx.stats().decrypted, 0);
        assert!(rx.decrypt_to_vec(&[], &frame).is_ok());
    }
}

#[test]
fn empty_payload_roundtrips_and_short_frames_are_typed_errors() {
    let (mut tx, mut rx) = pair(CipherSuite::AesGcm128Sha256);
    let frame = tx.encrypt_to_vec(&[], &[]).unwrap();
    assert_eq!(rx.decrypt_to_vec(&[], &frame).unwrap().1, b"");
    assert!(matches!(
        rx.decrypt_to_vec(&[], &frame[..frame.len() - 1]),
        Err(SframeError::CiphertextTooShort { tag_len: 16, .. })
    ));
    assert!(matches!(
        rx.decrypt_to_vec(&[], &[]),
        Err(SframeError::HeaderTruncated { .. })
    ));
}

#[test]
fn wrong_key_and_unknown_kid_are_rejected() {
    for suite in CipherSuite::ALL {
        let mut tx = SenderContext::new(suite, KID, KEY).unwrap();
        let frame = tx.encrypt_to_vec(&[], b"secret").unwrap();

        let mut wrong = ReceiverContext::new();
        wrong.add_key(suite, KID, b"another base key").unwrap();
        assert_eq!(
            wrong.decrypt_to_vec(&[], &frame).unwrap_err(),
            SframeError::AuthenticationFailed
        );
        assert_eq!(wrong.stats().auth_failures, 1);

        let mut other_kid = ReceiverContext::new();
        other_kid.add_key(suite, KID + 1, KEY).unwrap();
        assert_eq!(
            other_kid.decrypt_to_vec(&[], &frame).unwrap_err(),
            SframeError::UnknownKid { kid: KID }
        );
        assert_eq!(other_kid.stats().unknown_kid, 1);
    }
    // Same KID and base key under another suite: different keys, so authentication fails.
    let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();
    let frame = tx.encrypt_to_vec(&[], &[0u8; 32]).unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(CipherSuite::AesCtr128HmacSha256_80, KID, KEY)
        .unwrap();
    assert!(rx.decrypt_to_vec(&[], &frame).is_err());
}

#[test]
fn replays_and_frames_older_than_the_window_are_rejected() {
    let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();
    let mut rx = ReceiverContext::with_config(ReceiverConfig {
        replay_window: 128,
        ..ReceiverConfig::default()
    })
    .unwrap();
    rx.add_key(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();

    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| tx.encrypt_to_vec(&[], &[i as u8; 20]).unwrap())
        .collect();
    // Reordered inside the window: accepted.
    for i in [10usize, 5, 7, 6, 9, 8, 130] {
        assert!(rx.decrypt_to_vec(&[], &frames[i]).is_ok(), "frame {i}");
    }
    // Duplicates: refused, whether newest or older.
    for i in [130usize, 10, 5] {
        assert_eq!(
            rx.decrypt_to_vec(&[], &frames[i]).unwrap_err(),
            SframeError::Replay {
                kid: KID,
                ctr: i as u64
            }
        );
    }
    // The window tracks 130 - 127 = 3 up to 130: 11 is new and accepted, 2 is too old.
    assert!(rx.decrypt_to_vec(&[], &frames[11]).is_ok());
    assert_eq!(
        rx.decrypt_to_vec(&[], &frames[2]).unwrap_err(),
        SframeError::TooOld {
            kid: KID,
            ctr: 2,
            newest: 130
        }
    );
    let stats = rx.stats();
    assert_eq!((stats.decrypted, stats.replays, stats.too_old), (8, 3, 1));
}

#[test]
fn several_kids_each_have_their_own_window() {
    let suite = CipherSuite::AesGcm256Sha512;
    let mut alice = SenderContext::new(suite, 1, b"alice's key").unwrap();
    let mut bob = SenderContext::new(suite, 2, b"bob's key").unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, 1, b"alice's key").unwrap();
    rx.add_key(suite, 2, b"bob's key").unwrap();
    // Both senders use counter 0: no collision between KIDs.
    let a = alice.encrypt_to_vec(&[], b"from alice").unwrap();
    let b = bob.encrypt_to_vec(&[], b"from bob").unwrap();
    assert_eq!(rx.decrypt_to_vec(&[], &a).unwrap().1, b"from alice");
    assert_eq!(rx.decrypt_to_vec(&[], &b).unwrap().1, b"from bob");
    assert!(rx.remove_key(1));
    assert!(matches!(
        rx.decrypt_to_vec(&[], &alice.encrypt_to_vec(&[], b"x").unwrap()),
        Err(SframeError::UnknownKid { kid: 1 })
    ));
}

#[test]
fn rotation_keeps_the_counter_and_readding_a_kid_keeps_its_window() {
    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = SenderContext::new(suite, 1, b"epoch one").unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, 1, b"epoch one").unwrap();
    rx.add_key(suite, 2, b"epoch two").unwrap();
    let old = tx.encrypt_to_vec(&[], b"before").unwrap();
    tx.rotate(2, b"epoch two").unwrap();
    assert_eq!(tx.next_counter(), Some(1), "the counter survives rotation");
    let new = tx.encrypt_to_vec(&[], b"after").unwrap();
    // Frames in flight under the old key still decrypt after the new one arrives.
    assert_eq!(rx.decrypt_to_vec(&[], &new).unwrap().1, b"after");
    assert_eq!(rx.decrypt_to_vec(&[], &old).unwrap().1, b"before");
    // Re-adding KID 1 must not reopen its window to replays.
    rx.add_key(suite, 1, b"epoch one").unwrap();
    assert!(matches!(
        rx.decrypt_to_vec(&[], &old),
        Err(SframeError::Replay { kid: 1, ctr: 0 })
    ));
}

#[test]
fn exhausted_counter_is_an_error_not_a_wrap() {
    let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, KID, KEY)
        .unwrap()
        .with_counter(u64::MAX - 1);
    let mut rx = ReceiverContext::new();
    rx.add_key(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();
    for _ in 0..2 {
        let f = tx.encrypt_to_vec(&[], b"late").unwrap();
        assert!(rx.decrypt_to_vec(&[], &f).is_ok());
    }
    assert_eq!(tx.next_counter(), None);
    assert_eq!(
        tx.encrypt_to_vec(&[], b"one too many").unwrap_err(),
        SframeError::CounterExhausted
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        tx.encrypt(&[], b"x", &mut buf).unwrap_err(),
        SframeError::CounterExhausted
    );
}

#[test]
fn counters_never_repeat_and_nonces_differ() {
    // The same plaintext under one key: the ciphertext bodies (header and tag cut off, since
    // the header carries the counter anyway) are equal exactly when the keystream, that is
    // the nonce, repeats. Both suite families, CTR and GCM, encrypt with a counter-mode
    // keystream.
    const PLAINTEXT: &[u8] = b"same plaintext, long enough to span two AES blocks";
    for suite in CipherSuite::ALL {
        let mut tx = SenderContext::new(suite, KID, KEY).unwrap();
        let mut counters = std::collections::HashSet::new();
        let mut bodies = std::collections::HashSet::new();
        for _ in 0..1000 {
            let ctr = tx.next_counter().unwrap();
            assert!(counters.insert(ctr), "{suite:?}: counter {ctr} repeated");
            let f = tx.encrypt_to_vec(&[], PLAINTEXT).unwrap();
            let end = f.len() - suite.tag_len();
            let body = f[end - PLAINTEXT.len()..end].to_vec();
            assert_ne!(body, PLAINTEXT, "{suite:?}: not encrypted");
            assert!(
                bodies.insert(body),
                "{suite:?}: counter {ctr} reused a keystream (nonce)"
            );
        }
    }
}

#[test]
fn caller_buffer_errors_are_typed_and_do_not_consume_a_counter() {
    let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();
    let mut small = [0u8; 8];
    assert!(matches!(
        tx.encrypt(&[], b"does not fit", &mut small),
        Err(SframeError::BufferTooSmall { .. })
    ));
    let mut buf = [0u8; 64];
    assert!(matches!(
        tx.encrypt_in_place(&[], &mut buf, 1, 4),
        Err(SframeError::HeadroomTooSmall {
            needed: 3,
            available: 1
        })
    ));
    let big_metadata = vec![0u8; sotto::sframe::MAX_METADATA_LEN + 1];
    assert!(matches!(
        tx.encrypt(&big_metadata, b"x", &mut buf),
        Err(SframeError::MetadataTooLong { .. })
    ));
    assert_eq!(tx.next_counter(), Some(0));

    let mut rx = ReceiverContext::new();
    rx.add_key(CipherSuite::AesGcm128Sha256, KID, KEY).unwrap();
    let frame = tx.encrypt_to_vec(&[], b"twelve bytes").unwrap();
    let mut out = [0u8; 10];
    assert!(matches!(
        rx.decrypt(&[], &frame, &mut out),
        Err(SframeError::BufferTooSmall { .. })
    ));
    let mut out = [0u8; 64];
    let (_, n) = rx.decrypt(&[], &frame, &mut out).unwrap();
    assert_eq!(&out[..n], b"twelve bytes");
}

#[test]
fn limits_are_enforced() {
    let mut rx = ReceiverContext::with_config(ReceiverConfig {
        max_keys: 2,
        ..ReceiverConfig::default()
    })
    .unwrap();
    rx.add_key(CipherSuite::AesGcm128Sha256, 1, KEY).unwrap();
    rx.add_key(CipherSuite::AesGcm128Sha256, 2, KEY).unwrap();
    assert_eq!(
        rx.add_key(CipherSuite::AesGcm128Sha256, 3, KEY),
        Err(SframeError::TooManyKeys { max: 2 })
    );
    assert!(
        ReceiverContext::with_config(ReceiverConfig {
            replay_window: 0,
            ..ReceiverConfig::default()
        })
        .is_err()
    );
    assert_eq!(
        SenderContext::new(CipherSuite::AesGcm128Sha256, 1, &[]).unwrap_err(),
        SframeError::EmptyBaseKey
    );
    assert_eq!(
        CipherSuite::from_id(0).unwrap_err(),
        SframeError::UnknownCipherSuite(0)
    );
}

#[test]
fn random_garbage_never_panics() {
    // A small xorshift generator keeps this deterministic without a dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rx = ReceiverContext::new();
    for suite in CipherSuite::ALL {
        rx.add_key(suite, suite.id().into(), KEY).unwrap();
    }
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Point half the frames at a KID the receiver holds (1-5, inline in the config
        // byte) so they get past the lookup and reach the AEAD.
        if len > 0 && next() % 2 == 0 {
            frame[0] = (((next() % 5) as u8 + 1) << 4) | (next() % 16) as u8;
        }
        assert!(rx.decrypt_to_vec(&[], &frame).is_err());
    }
    assert_eq!(rx.stats().decrypted, 0);
}
