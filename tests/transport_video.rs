//! Video over real WebRTC on loopback: sealed VP8-shaped frames cross whole and in order, one
//! side may only receive, PLIs reach the peer, the wire carries ciphertext, and the GCC
//! estimate is published. Plus the sealed layout against an independent SFrame
//! implementation (the `sframe` crate implements metadata | header | ciphertext | tag).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{
    MediaTransport, ReceivedVideoFrame, TransportConfig, TransportError, VideoDirection,
    open_video_in_place, seal, seal_video, video_clear_prefix_len,
};
use tokio::sync::mpsc;

const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
const VIDEO_KID: u64 = 1 << 24;

fn config(video: VideoDirection) -> TransportConfig {
    TransportConfig {
        video,
        ..TransportConfig::default()
    }
}

async fn connected(a: VideoDirection, b: VideoDirection) -> (MediaTransport, MediaTransport) {
    let a = MediaTransport::new(config(a)).await.unwrap();
    let b = MediaTransport::new(config(b)).await.unwrap();
    let answer = b
        .accept_offer(&a.create_offer().await.unwrap())
        .await
        .unwrap();
    a.accept_answer(&answer).await.unwrap();
    a.connected(Duration::from_secs(10)).await.unwrap();
    b.connected(Duration::from_secs(10)).await.unwrap();
    (a, b)
}

/// A VP8-shaped frame: a keyframe header (tag, start code, 640x360) every 30 frames, delta
/// frame tags otherwise; the body is distinct per frame so a mix-up cannot pass. Sizes are
/// those of a real stream (keyframes 20-30 KB, deltas up to 4.5 KB: about 1 Mbit/s at 30 fps),
/// so the video pacer carries them at the starting estimate without dropping any.
fn vp8_frame(i: usize, salt: u8) -> Vec<u8> {
    let len = if i.is_multiple_of(30) {
        20_000 + (i * 7919) % 10_000
    } else {
        500 + (i * 7919) % 4_000
    };
    let mut f = if i.is_multiple_of(30) {
        vec![0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
    } else {
        vec![0x51, 0x15, 0x00]
    };
    let mut x = (i as u32 + 1).wrapping_mul(2_654_435_761) ^ u32::from(salt);
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

fn pair(kid: u64, key: &[u8]) -> (SenderContext, ReceiverContext) {
    let tx = SenderContext::new(SUITE, kid, key).unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(SUITE, kid, key).unwrap();
    (tx, rx)
}

/// Opens every frame and checks it against `expected(i)`, in order, byte-exact, and that
/// the wire carried none of the frame's body in the clear.
async fn receive_all(
    frames: &mut mpsc::Receiver<ReceivedVideoFrame>,
    rx: &mut ReceiverContext,
    count: usize,
    expected: impl Fn(usize) -> Vec<u8>,
) {
    let mut last_ts = None;
    for i in 0..count {
        let f = tokio::time::timeout(Duration::from_secs(10), frames.recv())
            .await
            .unwrap_or_else(|_| panic!("frame {i} did not arrive"))
            .unwrap();
        let want = expected(i);
        let n = video_clear_prefix_len(want[0]);
        assert!(!f.after_loss, "frame {i} after a loss on loopback");
        assert_eq!(&f.payload[..n], &want[..n], "clear prefix of frame {i}");
        // Every 16-byte run of the body, hashed: checking each wire window is then cheap
        // enough not to stall the runtime that also receives the packets.
        let body: HashSet<&[u8]> = want[n..].windows(16).collect();
        assert!(
            !f.payload.windows(16).any(|w| body.contains(w)),
            "frame {i}: plaintext on the wire"
        );
        let mut buf = f.payload.to_vec();
        let opened = open_video_in_place(&mut buf, |m, p| rx.decrypt_in_place(m, p)).unwrap();
        assert_eq!(
            opened.header.unwrap().ctr,
            i as u64,
            "frame {i} out of order"
        );
        assert_eq!(opened.vp8, &want[..], "frame {i} not byte-exact");
        if let Some(prev) = last_ts {
            assert!(
                f.timestamp.wrapping_sub(prev) < 1 << 31,
                "timestamps go back"
            );
        }
        last_ts = Some(f.timestamp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_video_frames_cross_both_ways_whole_and_in_order() {
    let (mut a, mut b) = connected(VideoDirection::SendReceive, VideoDirection::SendReceive).await;
    let mut at_a = a.take_video_frames().unwrap();
    let mut at_b = b.take_video_frames().unwrap();
    assert!(a.take_video_frames().is_none());
    let (mut a_tx, mut b_rx) = pair(VIDEO_KID, b"a to b video");
    let (mut b_tx, mut a_rx) = pair(VIDEO_KID | 1, b"b to a video");
    const N: usize = 60;
    let start = Instant::now();
    let sending = async {
        let mut ticker = tokio::time::interval(Duration::from_millis(33));
        for i in 0..N {
            ticker.tick().await;
            let capture = start + Duration::from_millis(33 * i as u64);
            a.send_video(&seal_video(&mut a_tx, &vp8_frame(i, 1)).unwrap(), capture)
                .await
                .unwrap();
            b.send_video(&seal_video(&mut b_tx, &vp8_frame(i, 2)).unwrap(), capture)
                .await
                .unwrap();
        }
    };
    let ((), (), ()) = tokio::join!(
        sending,
        receive_all(&mut at_b, &mut b_rx, N, |i| vp8_frame(i, 1)),
        receive_all(&mut at_a, &mut a_rx, N, |i| vp8_frame(i, 2)),
    );
    assert_eq!(a_rx.stats().decrypted, N as u64);
    assert_eq!(b_rx.stats().decrypted, N as u64);
    // Audio frames never show up as video and the other way round.
    let mut audio = a.take_frames().unwrap();
    assert!(audio.try_recv().is_err());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_timestamps_follow_the_capture_time_at_90_khz() {
    let (a, mut b) = connected(VideoDirection::SendReceive, VideoDirection::ReceiveOnly).await;
    let mut at_b = b.take_video_frames().unwrap();
    let (mut tx, _) = pair(VIDEO_KID, b"k");
    let t0 = Instant::now();
    // Irregular capture times: the timestamps must follow them, not a frame count.
    let offsets_ms = [0u64, 40, 50, 250, 251, 1000];
    for (i, ms) in offsets_ms.iter().enumerate() {
        a.send_video(
            &seal_video(&mut tx, &vp8_frame(i, 0)).unwrap(),
            t0 + Duration::from_millis(*ms),
        )
        .await
        .unwrap();
    }
    let mut stamps = Vec::new();
    for _ in offsets_ms {
        let f = tokio::time::timeout(Duration::from_secs(10), at_b.recv())
            .await
            .unwrap()
            .unwrap();
        stamps.push(f.timestamp);
    }
    for (ms, ts) in offsets_ms.iter().zip(&stamps) {
        assert_eq!(ts.wrapping_sub(stamps[0]), (*ms as u32) * 90);
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_side_receive_only_video_one_way_audio_both_ways() {
    // Both orders: the receive-only side offers, and it answers.
    for receive_only_offers in [false, true] {
        let (sender, receiver) = if receive_only_offers {
            let (r, s) = connected(VideoDirection::ReceiveOnly, VideoDirection::SendReceive).await;
            (s, r)
        } else {
            connected(VideoDirection::SendReceive, VideoDirection::ReceiveOnly).await
        };
        let (mut sender, mut receiver) = (sender, receiver);
        let mut video_in = receiver.take_video_frames().unwrap();
        let mut audio_at_receiver = receiver.take_frames().unwrap();
        let mut audio_at_sender = sender.take_frames().unwrap();
        let (mut vtx, mut vrx) = pair(VIDEO_KID, b"video");
        let (mut s_atx, mut r_arx) = pair(0, b"audio s");
        let (mut r_atx, mut s_arx) = pair(1, b"audio r");

        let (mut v_tx2, _) = pair(VIDEO_KID | 1, b"other");
        let frame = seal_video(&mut v_tx2, &vp8_frame(1, 9)).unwrap();
        assert!(matches!(
            receiver.send_video(&frame, Instant::now()).await,
            Err(TransportError::VideoReceiveOnly)
        ));

        const N: usize = 20;
        let sending = async {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            for i in 0..N {
                ticker.tick().await;
                sender
                    .send_video(
                        &seal_video(&mut vtx, &vp8_frame(i, 3)).unwrap(),
                        Instant::now(),
                    )
                    .await
                    .unwrap();
                sender
                    .send(
                        &seal(&mut s_atx, format!("audio s {i}").as_bytes()).unwrap(),
                        Duration::from_millis(20),
                    )
                    .await
                    .unwrap();
                receiver
                    .send(
                        &seal(&mut r_atx, format!("audio r {i}").as_bytes()).unwrap(),
                        Duration::from_millis(20),
                    )
                    .await
                    .unwrap();
            }
        };
        let audio = |frames: &mut mpsc::Receiver<sotto::transport::ReceivedFrame>,
                     rx: &mut ReceiverContext,
                     who: &'static str| {
            let mut got = 0;
            while let Ok(f) = frames.try_recv() {
                let (h, pt) = rx.decrypt_to_vec(&[], &f.payload).unwrap();
                assert_eq!(pt, format!("audio {who} {}", h.ctr).into_bytes());
                got += 1;
            }
            got
        };
        let ((), ()) = tokio::join!(
            sending,
            receive_all(&mut video_in, &mut vrx, N, |i| vp8_frame(i, 3))
        );
        // Audio rides alongside: wait for most of it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut at_r, mut at_s) = (0, 0);
        while (at_r < N - 2 || at_s < N - 2) && Instant::now() < deadline {
            at_r += audio(&mut audio_at_receiver, &mut r_arx, "s");
            at_s += audio(&mut audio_at_sender, &mut s_arx, "r");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            at_r >= N - 2 && at_s >= N - 2,
            "audio: {at_r} at the receive-only side, {at_s} at the sender"
        );
        sender.close().await.unwrap();
        receiver.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_reaches_the_video_sender() {
    keyframe_request_reaches_the_sender(VideoDirection::ReceiveOnly).await;
}

/// Both sides send video: the PLI about our track must not be taken for RTCP about the
/// peer's track (webrtc-rs routes RTCP by track id, so the two ids must differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_reaches_the_sender_when_both_send_video() {
    keyframe_request_reaches_the_sender(VideoDirection::SendReceive).await;
}

async fn keyframe_request_reaches_the_sender(b_video: VideoDirection) {
    let (mut a, mut b) = connected(VideoDirection::SendReceive, b_video).await;
    let mut requests = a.take_keyframe_requests().unwrap();
    let mut at_a = a.take_video_frames().unwrap();
    let mut at_b = b.take_video_frames().unwrap();
    // No remote video track yet: nothing to send a PLI for.
    assert!(!b.request_keyframe());
    let (mut tx, _) = pair(VIDEO_KID, b"k");
    a.send_video(
        &seal_video(&mut tx, &vp8_frame(0, 0)).unwrap(),
        Instant::now(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), at_b.recv())
        .await
        .unwrap()
        .unwrap();
    if b_video == VideoDirection::SendReceive {
        let (mut tx, _) = pair(VIDEO_KID | 1, b"k");
        b.send_video(
            &seal_video(&mut tx, &vp8_frame(0, 1)).unwrap(),
            Instant::now(),
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), at_a.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        requests.try_recv().is_err(),
        "a request before any was sent"
    );
    assert!(b.request_keyframe());
    tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("the PLI did not reach the sender")
        .unwrap();
    // And again: requests keep flowing.
    assert!(b.request_keyframe());
    tokio::time::timeout(Duration::from_secs(10), requests.recv())
        .await
        .expect("the second PLI did not reach the sender")
        .unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bitrate_estimate_is_published_and_moves_while_sending() {
    let (a, mut b) = connected(VideoDirection::SendReceive, VideoDirection::ReceiveOnly).await;
    let mut at_b = b.take_video_frames().unwrap();
    let mut estimate = a.bitrate_watch();
    let initial = *estimate.borrow_and_update();
    assert_eq!(initial, sotto::transport::INITIAL_BITRATE);
    let (mut tx, _) = pair(VIDEO_KID, b"k");
    let drain = tokio::spawn(async move { while at_b.recv().await.is_some() {} });
    let sending = async {
        let mut ticker = tokio::time::interval(Duration::from_millis(33));
        for i in 0..300 {
            ticker.tick().await;
            let mut f = vp8_frame(i, 0);
            f.truncate(5000);
            a.send_video(&seal_video(&mut tx, &f).unwrap(), Instant::now())
                .await
                .unwrap();
        }
    };
    let changed = tokio::select! {
        () = sending => None,
        r = estimate.changed() => Some(r),
    };
    let now = *estimate.borrow();
    eprintln!("estimate: initial {initial} bit/s, then {now} bit/s");
    assert!(
        matches!(changed, Some(Ok(()))),
        "the estimate did not move in 10 s of sending"
    );
    assert_ne!(now, initial);
    assert!((sotto::transport::MIN_BITRATE..=sotto::transport::DEFAULT_MAX_BITRATE).contains(&now));
    a.close().await.unwrap();
    b.close().await.unwrap();
    drain.abort();
}

// ---- The sealed layout against the `sframe` crate ----

const BASE_KEY: &[u8] = b"interop base key, 32 bytes long!";

#[test]
fn the_sframe_crate_opens_our_sealed_video() {
    use sframe::frame::EncryptedFrameView;
    use sframe::key::DecryptionKey;
    let key = DecryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, VIDEO_KID, BASE_KEY)
        .unwrap();
    let mut tx = SenderContext::new(SUITE, VIDEO_KID, BASE_KEY).unwrap();
    for i in [0usize, 1, 2, 30] {
        let vp8 = vp8_frame(i, 5);
        let n = video_clear_prefix_len(vp8[0]);
        let sealed = seal_video(&mut tx, &vp8).unwrap();
        let wire = sealed.as_bytes();
        // metadata = the clear prefix, then header || ciphertext || tag.
        let view = EncryptedFrameView::try_with_meta_data(&wire[n..], &wire[..n]).unwrap();
        let mut out = Vec::new();
        let media = view.decrypt_into(&key, &mut out).unwrap();
        assert_eq!(media.meta_data(), &vp8[..n]);
        assert_eq!(media.payload(), &vp8[n..]);
    }
}

#[test]
fn we_open_video_the_sframe_crate_sealed() {
    use sframe::frame::{MediaFrameView, MonotonicCounter};
    use sframe::key::EncryptionKey;
    let key = EncryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, VIDEO_KID, BASE_KEY)
        .unwrap();
    let mut counter = MonotonicCounter::with_start_value(300, u64::MAX);
    let mut rx = ReceiverContext::new();
    rx.add_key(SUITE, VIDEO_KID, BASE_KEY).unwrap();
    for i in [0usize, 1, 2, 30] {
        let vp8 = vp8_frame(i, 6);
        let n = video_clear_prefix_len(vp8[0]);
        let media = MediaFrameView::try_with_meta_data(&mut counter, &vp8[n..], &vp8[..n]).unwrap();
        let mut out = Vec::new();
        let encrypted = media.encrypt_into(&key, &mut out).unwrap();
        // Their layout is ours: metadata (the clear prefix) || header || ciphertext || tag.
        let mut wire = encrypted.meta_data().to_vec();
        wire.extend_from_slice(encrypted.sframe_cipher_text());
        assert_eq!(&wire[..n], &vp8[..n]);
        let opened = open_video_in_place(&mut wire, |m, p| rx.decrypt_in_place(m, p)).unwrap();
        assert_eq!(opened.vp8, &vp8[..]);
        assert_eq!(
            opened.header.unwrap().ctr,
            300 + [0, 1, 2, 30].iter().position(|x| *x == i).unwrap() as u64
        );
    }
    // A changed prefix byte makes their frame fail with us too.
    let vp8 = vp8_frame(0, 7);
    let media = MediaFrameView::try_with_meta_data(&mut counter, &vp8[10..], &vp8[..10]).unwrap();
    let mut out = Vec::new();
    let encrypted = media.encrypt_into(&key, &mut out).unwrap();
    let mut wire = encrypted.meta_data().to_vec();
    wire.extend_from_slice(encrypted.sframe_cipher_text());
    wire[7] ^= 0x40;
    assert!(open_video_in_place(&mut wire, |m, p| rx.decrypt_in_place(m, p)).is_err());
    assert_eq!(rx.stats().auth_failures, 1);
}
