//! Cost of call key agreement: a full four-message handshake between two endpoints (both
//! sides' work: two X25519 key pairs and agreements, two Ed25519 signatures and verifications,
//! HKDF, MACs, JSON), and one media key rotation step.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sotto::handshake::{DtlsFingerprint, Handshake, Identity, MediaSender, RotationConfig};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

use sotto::sframe::CipherSuite;

fn bench_handshake(c: &mut Criterion) {
    let alice = Arc::new(Identity::from_seed(&[1; 32]).unwrap());
    let bob = Arc::new(Identity::from_seed(&[2; 32]).unwrap());
    let mut group = c.benchmark_group("handshake");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("full_two_party", |b| {
        b.iter(|| {
            let (mut a, hello) =
                Handshake::initiator(alice.clone(), "room", "alice", &DTLS_I).unwrap();
            let mut r = Handshake::responder(bob.clone(), "room", "bob", &DTLS_R).unwrap();
            let reply = r.handle(&hello).unwrap().send.unwrap();
            let reveal = a.handle(&reply).unwrap().send.unwrap();
            let step = r.handle(&reveal).unwrap();
            let done = a.handle(&step.send.unwrap()).unwrap().established.unwrap();
            black_box(done.safety_code);
        })
    });

    let (mut a, hello) = Handshake::initiator(alice.clone(), "room", "alice", &DTLS_I).unwrap();
    let mut r = Handshake::responder(bob.clone(), "room", "bob", &DTLS_R).unwrap();
    let reply = r.handle(&hello).unwrap().send.unwrap();
    let reveal = a.handle(&reply).unwrap().send.unwrap();
    let confirm = r.handle(&reveal).unwrap().send.unwrap();
    let keys = a.handle(&confirm).unwrap().established.unwrap().keys;
    let now = Instant::now();
    let mut sender = MediaSender::new(
        CipherSuite::AesGcm128Sha256,
        keys.send,
        RotationConfig::default(),
        now,
    )
    .unwrap();
    group.bench_function("rotate_send_key", |b| {
        b.iter(|| black_box(sender.rotate(now).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench_handshake);
criterion_main!(benches);
