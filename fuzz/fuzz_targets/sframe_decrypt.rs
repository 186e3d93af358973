//! Untrusted frames into header parsing and a receiver holding a key of every suite.
//!
//! Input: one byte of metadata length (mod 32), that much metadata, then the frame.
//! Nothing may panic; a parsed header must re-encode to the same KID and CTR; a frame the
//! receiver accepts once must be refused the second time.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::sframe::{CipherSuite, Header, ReceiverContext, SframeError};

/// The key the seed corpus was made with (`fuzz/seeds.sh`).
const BASE_KEY: &[u8] = b"fuzzing base key";

fuzz_target!(|data: &[u8]| {
    let Some((&meta_len, rest)) = data.split_first() else {
        return;
    };
    let meta_len = usize::from(meta_len % 32).min(rest.len());
    let (metadata, frame) = rest.split_at(meta_len);

    if let Ok((header, len)) = Header::parse(frame) {
        assert!(len <= frame.len() && len >= header.encoded_len());
        let (bytes, n) = header.to_bytes();
        assert_eq!(Header::parse(&bytes[..n]), Ok((header, n)));
    }

    // KIDs 1-5 use suites 1-5; KID 0x1234 uses the default suite with a multi-byte KID.
    let mut rx = ReceiverContext::new();
    for suite in CipherSuite::ALL {
        rx.add_key(suite, u64::from(suite.id()), BASE_KEY).unwrap();
    }
    rx.add_key(CipherSuite::AesGcm128Sha256, 0x1234, BASE_KEY)
        .unwrap();

    let mut buf = frame.to_vec();
    let accepted = rx.decrypt_in_place(metadata, &mut buf).is_ok();
    let mut again = frame.to_vec();
    let second = rx.decrypt_in_place(metadata, &mut again);
    if accepted {
        assert!(matches!(second, Err(SframeError::Replay { .. })));
    }
    let stats = rx.stats();
    assert_eq!(
        stats.decrypted
            + stats.auth_failures
            + stats.replays
            + stats.too_old
            + stats.unknown_kid
            + stats.malformed,
        2
    );
});
