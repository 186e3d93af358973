//! SFrame speed against its baselines, in one run so the ratios hold on a noisy machine.
//!
//! Group `sframe`, each iteration one encrypt and one decrypt of one frame:
//! - `encrypt_decrypt/<size>`: sotto, AES_128_GCM_SHA256_128, in place.
//! - `raw_aead/<size>`: a bare AES-128-GCM seal + open with ring (the fastest AEAD in the
//!   dependency tree, see the `aead_choice` group) and a pre-expanded key: the floor.
//! - `sframe_crate/<size>`: the `sframe` crate's encrypt + decrypt into reused buffers.
//!
//! Group `aead_choice`: ring against RustCrypto's aes-gcm for the same seal + open, the
//! measurement behind using ring for the GCM suites.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sotto::sframe::{CipherSuite, MAX_HEADER_LEN, ReceiverContext, SenderContext};

const SIZES: [usize; 3] = [100, 1200, 30_000];
const BASE_KEY: &[u8] = b"benchmark base key of 32 bytes!!";

fn nonce_for(ctr: u64) -> [u8; 12] {
    let mut n = [0x42u8; 12];
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    n
}

fn bench_sframe(c: &mut Criterion) {
    let mut group = c.benchmark_group("sframe");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        let suite = CipherSuite::AesGcm128Sha256;
        let mut tx = SenderContext::new(suite, 1, BASE_KEY).unwrap();
        let mut rx = ReceiverContext::new();
        rx.add_key(suite, 1, BASE_KEY).unwrap();
        let mut buf = vec![0x5au8; MAX_HEADER_LEN + size + suite.tag_len()];
        group.bench_function(BenchmarkId::new("encrypt_decrypt", size), |b| {
            b.iter(|| {
                let range = tx
                    .encrypt_in_place(&[], &mut buf, MAX_HEADER_LEN, size)
                    .unwrap();
                let frame = rx.decrypt_in_place(&[], &mut buf[range]).unwrap();
                black_box(frame.payload.len());
            })
        });

        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &BASE_KEY[..16]).unwrap());
        let mut data = vec![0x5au8; size + 16];
        let mut ctr = 0u64;
        group.bench_function(BenchmarkId::new("raw_aead", size), |b| {
            b.iter(|| {
                ctr += 1;
                let (pt, tag_out) = data.split_at_mut(size);
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce_for(ctr)),
                        Aad::empty(),
                        pt,
                    )
                    .unwrap();
                tag_out.copy_from_slice(tag.as_ref());
                let pt = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce_for(ctr)),
                        Aad::empty(),
                        &mut data,
                    )
                    .unwrap();
                black_box(pt.len());
            })
        });

        let enc_key = sframe::key::EncryptionKey::derive_from(
            sframe::CipherSuite::AesGcm128Sha256,
            1u64,
            BASE_KEY,
        )
        .unwrap();
        let dec_key = sframe::key::DecryptionKey::derive_from(
            sframe::CipherSuite::AesGcm128Sha256,
            1u64,
            BASE_KEY,
        )
        .unwrap();
        let mut counter = sframe::frame::MonotonicCounter::default();
        let payload = vec![0x5au8; size];
        let mut enc_buf = Vec::with_capacity(size + 64);
        let mut dec_buf = Vec::with_capacity(size + 64);
        group.bench_function(BenchmarkId::new("sframe_crate", size), |b| {
            b.iter(|| {
                let media = sframe::frame::MediaFrameView::try_new(&mut counter, &payload).unwrap();
                let encrypted = media.encrypt_into(&enc_key, &mut enc_buf).unwrap();
                let decrypted = encrypted.decrypt_into(&dec_key, &mut dec_buf).unwrap();
                black_box(decrypted.payload().len());
            })
        });
    }
    group.finish();
}

fn bench_aead_choice(c: &mut Criterion) {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    let mut group = c.benchmark_group("aead_choice");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &BASE_KEY[..16]).unwrap());
        let mut data = vec![0x5au8; size + 16];
        group.bench_function(BenchmarkId::new("ring", size), |b| {
            b.iter(|| {
                let (pt, tag_out) = data.split_at_mut(size);
                let nonce = Nonce::assume_unique_for_key(nonce_for(1));
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::empty(), pt)
                    .unwrap();
                tag_out.copy_from_slice(tag.as_ref());
                let nonce = Nonce::assume_unique_for_key(nonce_for(1));
                black_box(
                    key.open_in_place(nonce, Aad::empty(), &mut data)
                        .unwrap()
                        .len(),
                );
            })
        });

        let cipher = aes_gcm::Aes128Gcm::new_from_slice(&BASE_KEY[..16]).unwrap();
        let mut data = vec![0x5au8; size];
        group.bench_function(BenchmarkId::new("aes_gcm", size), |b| {
            b.iter(|| {
                let nonce = nonce_for(1).into();
                let tag = cipher
                    .encrypt_inout_detached(&nonce, &[], data.as_mut_slice().into())
                    .unwrap();
                cipher
                    .decrypt_inout_detached(&nonce, &[], data.as_mut_slice().into(), &tag)
                    .unwrap();
                black_box(data.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sframe, bench_aead_choice);
criterion_main!(benches);
