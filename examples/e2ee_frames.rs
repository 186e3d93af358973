//! Embedding sotto's E2EE without its transport: two endpoints agree on keys over any channel
//! (here, function calls), then seal and open media frames with SFrame.
//!
//! Run with `cargo run --example e2ee_frames`.

use std::sync::Arc;
use std::time::Instant;

use sotto::handshake::{
    DtlsFingerprint, Handshake, Identity, MediaReceiver, MediaSender, RotationConfig,
};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

use sotto::sframe::CipherSuite;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Long-term identities (apps keep them with Identity::load_or_create).
    let alice = Arc::new(Identity::generate()?);
    let bob = Arc::new(Identity::generate()?);

    // The four handshake messages would travel through the signaling server.
    let (mut a, hello) = Handshake::initiator(alice, "example-room", "alice", &DTLS_I)?;
    let mut b = Handshake::responder(bob, "example-room", "bob", &DTLS_R)?;
    let reply = b.handle(&hello)?.send.ok_or("no reply")?;
    let reveal = a.handle(&reply)?.send.ok_or("no reveal")?;
    let step = b.handle(&reveal)?;
    let bob_done = step.established.ok_or("bob not done")?;
    let alice_done = a
        .handle(&step.send.ok_or("no confirm")?)?
        .established
        .ok_or("alice not done")?;
    println!(
        "safety codes: alice {} / bob {}",
        alice_done.safety_code, bob_done.safety_code
    );

    // Alice's sending direction; rotation every 60 s by default.
    let now = Instant::now();
    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = MediaSender::new(suite, alice_done.keys.send, RotationConfig::default(), now)?;
    let mut rx = MediaReceiver::new(suite, bob_done.keys.recv, RotationConfig::default())?;

    let encoded_audio = b"an encoded Opus frame";
    let mut frame = tx.context().encrypt_to_vec(&[], encoded_audio)?;
    println!("on the wire: {} bytes, KID {}", frame.len(), tx.kid());
    let opened = rx.decrypt_in_place(&[], &mut frame, now)?;
    assert_eq!(opened.payload, encoded_audio);
    println!("bob opened: {:?}", String::from_utf8_lossy(opened.payload));
    Ok(())
}
