//! Two peers over real WebRTC on loopback: SFrame-sealed frames go both ways, and what crosses
//! the wire is ciphertext.

use std::time::Duration;

use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{MediaTransport, TransportConfig, seal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_frames_cross_a_real_peer_connection_both_ways() {
    let mut a = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut b = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut a_frames = a.take_frames().unwrap();
    let mut b_frames = b.take_frames().unwrap();
    let mut b_control = b.take_control().unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    a.accept_answer(&answer).await.unwrap();
    a.connected(Duration::from_secs(10)).await.unwrap();
    b.connected(Duration::from_secs(10)).await.unwrap();

    let suite = CipherSuite::AesGcm128Sha256;
    let mut a_tx = SenderContext::new(suite, 0, b"a to b key").unwrap();
    let mut b_tx = SenderContext::new(suite, 1, b"b to a key").unwrap();
    let mut a_rx = ReceiverContext::new();
    a_rx.add_key(suite, 1, b"b to a key").unwrap();
    let mut b_rx = ReceiverContext::new();
    b_rx.add_key(suite, 0, b"a to b key").unwrap();

    let plaintext =
        |i: u32| format!("opus frame number {i:04} ........................").into_bytes();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for i in 0..100u32 {
        ticker.tick().await;
        a.send(
            &seal(&mut a_tx, &plaintext(i)).unwrap(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        b.send(
            &seal(&mut b_tx, &plaintext(1000 + i)).unwrap(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
    }

    let mut got_at_b = 0;
    let mut got_at_a = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (got_at_b < 90 || got_at_a < 90) && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(f) = b_frames.recv() => {
                let wire = f.payload.to_vec();
                assert!(!wire.windows(16).any(|w| plaintext(0).windows(16).any(|p| p == w)), "plaintext on the wire");
                let (header, pt) = b_rx.decrypt_to_vec(&[], &wire).unwrap();
                assert_eq!(pt, plaintext(header.ctr as u32));
                got_at_b += 1;
            }
            Some(f) = a_frames.recv() => {
                let (header, pt) = a_rx.decrypt_to_vec(&[], &f.payload).unwrap();
                assert_eq!(pt, plaintext(1000 + header.ctr as u32));
                got_at_a += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        got_at_b >= 90 && got_at_a >= 90,
        "received {got_at_b} at b, {got_at_a} at a"
    );
    assert_eq!(b_rx.stats().auth_failures + a_rx.stats().auth_failures, 0);

    // The negotiated control channel opens on both sides and carries sealed messages.
    let mut open = a.control_open_watch();
    tokio::time::timeout(Duration::from_secs(10), open.wait_for(|o| *o))
        .await
        .unwrap()
        .unwrap();
    let control = b"{\"type\":\"mute\",\"muted\":true}";
    a.send_control(&seal(&mut a_tx, control).unwrap())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b_control.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!got.windows(8).any(|w| control.windows(8).any(|p| p == w)));
    assert_eq!(b_rx.decrypt_to_vec(&[], &got).unwrap().1, control);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Real Opus audio through a real peer connection: the receiver's wire bytes do not decode as
/// the tone (they are ciphertext), and decrypting first gives the tone back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_audio_on_the_wire_does_not_decode_as_the_plaintext() {
    use sotto::media::{AudioSource, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder};

    let a = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut b = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut b_frames = b.take_frames().unwrap();
    let answer = b
        .accept_offer(&a.create_offer().await.unwrap())
        .await
        .unwrap();
    a.accept_answer(&answer).await.unwrap();
    a.connected(Duration::from_secs(10)).await.unwrap();
    b.connected(Duration::from_secs(10)).await.unwrap();

    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = SenderContext::new(suite, 0, b"audio key").unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, 0, b"audio key").unwrap();
    let mut tone = sotto::media::ToneSource::new(440.0, 0.3);
    let mut enc = OpusEncoder::new(OpusConfig::default()).unwrap();
    let mut pcm = [0f32; 960];
    let mut packet = [0u8; 1500];
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..60 {
        ticker.tick().await;
        tone.read_frame(&mut pcm).unwrap();
        let len = enc.encode(&pcm, &mut packet).unwrap();
        a.send(
            &seal(&mut tx, &packet[..len]).unwrap(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
    }

    let mut raw_dec = OpusDecoder::new(FrameDuration::Ms20).unwrap();
    let mut dec = OpusDecoder::new(FrameDuration::Ms20).unwrap();
    let (mut raw_audio, mut audio, mut raw_errors) = (Vec::new(), Vec::new(), 0);
    let mut out = [0f32; 960];
    while audio.len() < 50 * 960 {
        let f = tokio::time::timeout(Duration::from_secs(5), b_frames.recv())
            .await
            .expect("frames stopped")
            .unwrap();
        // An eavesdropper's view: the RTP payload straight into Opus.
        match raw_dec.decode(&f.payload, &mut out) {
            Ok(()) => raw_audio.extend_from_slice(&out),
            Err(_) => raw_errors += 1,
        }
        let (_, pt) = rx.decrypt_to_vec(&[], &f.payload).unwrap();
        dec.decode(&pt, &mut out).unwrap();
        audio.extend_from_slice(&out);
    }
    let share = sotto::media::tone_share(&audio[10 * 960..], 48_000.0, 440.0);
    let raw_share = if raw_audio.len() > 20 * 960 {
        sotto::media::tone_share(&raw_audio[10 * 960..], 48_000.0, 440.0)
    } else {
        0.0
    };
    eprintln!(
        "decrypted 440 Hz share {share:.3}; raw wire bytes: share {raw_share:.3}, {raw_errors} undecodable"
    );
    assert!(share > 0.9, "decrypted audio is not the tone: {share}");
    assert!(
        raw_share < 0.05,
        "the wire carries the tone in the clear: {raw_share}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}
