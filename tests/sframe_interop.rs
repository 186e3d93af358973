//! Interoperability with an independent SFrame implementation (the `sframe` crate, ring
//! backend, which offers the two AES-GCM suites): each side decrypts what the other encrypts.

use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use sotto::sframe::{CipherSuite, Header, ReceiverContext, SenderContext};

const BASE_KEY: &[u8] = b"interop base key, 32 bytes long!";

fn theirs(suite: CipherSuite) -> sframe::CipherSuite {
    match suite {
        CipherSuite::AesGcm128Sha256 => sframe::CipherSuite::AesGcm128Sha256,
        CipherSuite::AesGcm256Sha512 => sframe::CipherSuite::AesGcm256Sha512,
        other => panic!("the sframe crate's ring backend has no {other}"),
    }
}

const SUITES: [CipherSuite; 2] = [CipherSuite::AesGcm128Sha256, CipherSuite::AesGcm256Sha512];

#[test]
fn they_decrypt_what_we_encrypt() {
    for suite in SUITES {
        for kid in [0u64, 7, 8, 0xabcd, u64::MAX] {
            let key = DecryptionKey::derive_from(theirs(suite), kid, BASE_KEY).unwrap();
            let mut tx = SenderContext::new(suite, kid, BASE_KEY)
                .unwrap()
                .with_counter(1 << 20);
            for (i, metadata) in [&b""[..], b"some metadata"].into_iter().enumerate() {
                let payload = vec![i as u8 ^ 0x5a; 100 + i * 1100];
                let frame = tx.encrypt_to_vec(metadata, &payload).unwrap();
                let view = EncryptedFrameView::try_with_meta_data(&frame, &metadata).unwrap();
                let mut out = Vec::new();
                let media = view.decrypt_into(&key, &mut out).unwrap();
                assert_eq!(media.payload(), &payload[..], "{suite} kid {kid}");
                assert_eq!(media.meta_data(), metadata);
            }
        }
    }
}

#[test]
fn we_decrypt_what_they_encrypt() {
    for suite in SUITES {
        for kid in [0u64, 7, 8, 0xabcd, u64::MAX] {
            let key = EncryptionKey::derive_from(theirs(suite), kid, BASE_KEY).unwrap();
            let mut counter = MonotonicCounter::with_start_value(250, u64::MAX);
            let mut rx = ReceiverContext::new();
            rx.add_key(suite, kid, BASE_KEY).unwrap();
            for (i, metadata) in [&b""[..], b"some metadata"].into_iter().enumerate() {
                let payload = vec![i as u8 ^ 0xa5; 100 + i * 1100];
                let media =
                    MediaFrameView::try_with_meta_data(&mut counter, &payload, &metadata).unwrap();
                let mut out = Vec::new();
                let encrypted = media.encrypt_into(&key, &mut out).unwrap();
                let frame = encrypted.sframe_cipher_text().to_vec();
                let (header, pt) = rx.decrypt_to_vec(metadata, &frame).unwrap();
                assert_eq!(
                    header,
                    Header::new(kid, 250 + i as u64),
                    "{suite} kid {kid}"
                );
                assert_eq!(pt, payload);
            }
            assert_eq!(rx.stats().decrypted, 2);
        }
    }
}
