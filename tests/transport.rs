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
