//! Encrypt then decrypt arbitrary payloads under arbitrary KIDs, counters and suites: the
//! plaintext must come back, and any single-byte change to the frame must be refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let suite = CipherSuite::ALL[usize::from(data[0]) % CipherSuite::ALL.len()];
    let kid = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let ctr = u64::from_le_bytes(data[9..17].try_into().unwrap());
    let meta_len = usize::from(data[17] % 16).min(data.len() - 20);
    let flip_at = usize::from(data[18]) | (usize::from(data[19]) << 8);
    let (metadata, payload) = data[20..].split_at(meta_len);

    let key = b"roundtrip fuzzing key";
    let mut tx = SenderContext::new(suite, kid, key)
        .unwrap()
        .with_counter(ctr);
    let frame = tx.encrypt_to_vec(metadata, payload).unwrap();

    let mut rx = ReceiverContext::new();
    rx.add_key(suite, kid, key).unwrap();
    let mut tampered = frame.clone();
    let at = flip_at % tampered.len();
    tampered[at] ^= 0x01;
    assert!(rx.decrypt_to_vec(metadata, &tampered).is_err());

    let (header, plaintext) = rx.decrypt_to_vec(metadata, &frame).unwrap();
    assert_eq!((header.kid, header.ctr), (kid, ctr));
    assert_eq!(plaintext, payload);
});
