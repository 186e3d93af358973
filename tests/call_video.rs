//! Video calls between two engines through a real signaling server and real WebRTC on
//! loopback: the test pattern's barcodes arrive in order and whole, the picture matches its
//! source, nothing fails authentication, one-way video works, and a keyframe request is
//! answered.

mod common;

use std::time::Duration;

use common::{CaptureSink, TestServer};
use sotto::call::{Call, CallBuilder, CallEvent, CallState, CallStats, EndReason};
use sotto::media::ToneSource;
use sotto::media::video::{ProbeHandle, ProbeReport, TestPattern, VideoProbe};

/// Calls in this binary run one at a time: each encodes and decodes video in real time on a
/// 2-core machine.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const W: u32 = 640;
const H: u32 = 360;
const FPS: u32 = 30;

fn pattern() -> TestPattern {
    TestPattern::new(W, H, FPS).unwrap()
}

/// A call that sends a tone and, if `video`, the test pattern; the peer's video goes to a
/// probe.
fn side(server: &TestServer, room: &str, name: &str, video: bool) -> (CallBuilder, ProbeHandle) {
    let (probe, handle) = VideoProbe::new(Some(pattern()), 5).unwrap();
    let mut builder = CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(440.0, 0.3))
        .sink(CaptureSink::default())
        .video_sink(probe);
    if video {
        builder = builder.video_source(pattern());
    }
    (builder, handle)
}

async fn until_connected(call: &mut Call, who: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), call.next_event()).await {
            Ok(Some(CallEvent::State(CallState::Connected))) => return,
            Ok(Some(CallEvent::Ended { reason, .. })) => panic!("{who} ended early: {reason}"),
            Ok(Some(_)) => {}
            other => panic!("{who} never connected: {other:?}"),
        }
    }
}

/// Drains events while `until` holds off; panics if the call ends.
async fn drain(call: &mut Call, who: &str, until: tokio::time::Instant) {
    loop {
        tokio::select! {
            ev = call.next_event() => match ev {
                Some(CallEvent::Ended { reason, .. }) => panic!("{who} ended early: {reason}"),
                Some(_) => {}
                None => panic!("{who}'s events stopped"),
            },
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}

/// Runs a call between alice and bob for `talk` after both connect; returns each side's final
/// figures and what its probe saw, measured over the talk only.
async fn video_call(
    alice: (CallBuilder, ProbeHandle),
    bob: (CallBuilder, ProbeHandle),
    talk: Duration,
) -> [(CallStats, ProbeReport); 2] {
    let mut a = alice.0.start().unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a.next_event()).await {
            Ok(Some(CallEvent::State(CallState::WaitingForPeer))) => break,
            Ok(Some(_)) => {}
            other => panic!("alice never reached the room: {other:?}"),
        }
    }
    let mut b = bob.0.start().unwrap();
    until_connected(&mut a, "alice").await;
    until_connected(&mut b, "bob").await;
    let end = tokio::time::Instant::now() + talk;
    let bob_task = tokio::spawn(async move {
        drain(&mut b, "bob", end).await;
        b
    });
    drain(&mut a, "alice", end).await;
    let mut b = bob_task.await.unwrap();
    let a_reason = a.hang_up().await;
    assert_eq!(a_reason, EndReason::LocalHangup);
    let b_reason = tokio::time::timeout(Duration::from_secs(10), b.ended())
        .await
        .expect("bob's call did not end");
    assert_eq!(b_reason, EndReason::RemoteHangup);
    [(a.stats(), alice.1.report()), (b.stats(), bob.1.report())]
}

/// What a side that received the test pattern must have seen.
fn assert_received_pattern(who: &str, peer_sent: u64, s: &CallStats, r: &ProbeReport) {
    eprintln!("{who}: {s:?}\n{who} probe: {r:?}");
    assert_eq!(s.video_decrypt_failures, 0, "{who}");
    assert_eq!(s.video_replays_rejected, 0, "{who}");
    assert_eq!(s.video_reorder_rejected, 0, "{who}");
    assert_eq!(s.video_decode_errors, 0, "{who}");
    assert!(s.video_frames_decrypted > 0, "{who} decrypted no video");
    assert_eq!((s.video_width, s.video_height), (W, H), "{who}");
    assert_eq!(r.last_size, Some((W, H)), "{who}");
    // In order, every picture carries its barcode.
    assert_eq!(r.out_of_order, 0, "{who}");
    assert_eq!(r.codes_read, r.frames, "{who}: unreadable barcodes");
    // At least 90 % of what the peer sent was shown.
    assert!(
        r.frames * 10 >= peer_sent * 9,
        "{who} showed {} of {peer_sent}",
        r.frames
    );
    // The pictures are the pattern's pictures.
    let psnr = r.psnr_min_db.expect("no picture compared");
    assert!(psnr >= 30.0, "{who}: PSNR {psnr:.1} dB");
    assert!(r.psnr_samples >= 10, "{who}: {} samples", r.psnr_samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_flows_both_ways_in_order_and_intact() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let [(a, a_seen), (b, b_seen)] = video_call(
        side(&server, "video", "alice", true),
        side(&server, "video", "bob", true),
        Duration::from_secs(5),
    )
    .await;
    assert_received_pattern("alice", b.video_frames_sent, &a, &a_seen);
    assert_received_pattern("bob", a.video_frames_sent, &b, &b_seen);
    for (who, s, seen) in [("alice", &a, &a_seen), ("bob", &b, &b_seen)] {
        // 5 s at 30 fps, less start-up.
        assert!(
            s.video_frames_sent >= 100,
            "{who} sent {}",
            s.video_frames_sent
        );
        assert!(s.video_keyframes_sent >= 1, "{who}");
        assert!(
            seen.max_gap_ms < 1000.0,
            "{who}: a gap of {} ms",
            seen.max_gap_ms
        );
        // Lip sync from the sender reports: pictures shown within a frame or two of their
        // audio (a busy machine can add a little).
        let offset = s.av_sync_offset_ms.expect("no A/V offset measured");
        assert!(offset.abs() < 80.0, "{who}: A/V offset {offset} ms");
        // Audio was not disturbed.
        assert_eq!(s.decrypt_failures, 0, "{who}");
        assert!(s.frames_decrypted >= 150, "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_one_way_only() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let [(a, a_seen), (b, b_seen)] = video_call(
        side(&server, "oneway", "alice", true),
        side(&server, "oneway", "bob", false),
        Duration::from_secs(3),
    )
    .await;
    assert_received_pattern("bob", a.video_frames_sent, &b, &b_seen);
    assert_eq!(b.video_frames_sent, 0);
    assert_eq!(a.video_frames_received, 0);
    assert_eq!(a_seen.frames, 0);
    // Audio flows both ways.
    assert!(a.frames_decrypted >= 100 && b.frames_decrypted >= 100);
}

/// A display that hangs once (for `stall`) on its tenth picture, then keeps up.
struct StallingSink {
    probe: VideoProbe,
    shown: u64,
    stall: Duration,
}

impl sotto::media::video::VideoSink for StallingSink {
    fn write_frame(
        &mut self,
        frame: &sotto::media::video::VideoFrame,
    ) -> Result<(), sotto::media::video::VideoError> {
        self.shown += 1;
        if self.shown == 10 {
            std::thread::sleep(self.stall);
        }
        self.probe.write_frame(frame)
    }
}

/// A receiver that fell behind drops frames, skips the delta frames that depend on them, asks
/// for a keyframe (PLI), and the sender answers with one: the picture recovers, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fell_behind_asks_for_a_keyframe_and_recovers() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let (probe, handle) = VideoProbe::new(Some(pattern()), 5).unwrap();
    let bob = CallBuilder::new(server.url.clone(), "pli")
        .name("bob")
        .source(ToneSource::new(660.0, 0.3))
        .sink(CaptureSink::default())
        .video_sink(StallingSink {
            probe,
            shown: 0,
            // Longer than the render queue holds (about a second).
            stall: Duration::from_millis(2000),
        });
    let [(a, _), (b, b_seen)] = video_call(
        side(&server, "pli", "alice", true),
        (bob, handle),
        Duration::from_secs(5),
    )
    .await;
    eprintln!("alice: {a:?}\nbob: {b:?}\nbob probe: {b_seen:?}");
    assert!(
        b.video_keyframe_requests_sent >= 1,
        "bob asked for no keyframe"
    );
    assert!(a.video_keyframes_requested >= 1, "alice saw no PLI");
    assert!(
        a.video_keyframes_sent >= 2,
        "alice sent {} keyframes",
        a.video_keyframes_sent
    );
    assert!(b.video_frames_skipped >= 1, "no delta frame was skipped");
    // Skipped frames were never decoded into a broken picture.
    assert_eq!(b.video_decode_errors, 0);
    assert_eq!(b_seen.out_of_order, 0);
    assert!(b_seen.psnr_min_db.unwrap() >= 30.0, "{b_seen:?}");
    // The picture moved on after the stall: well past where it stalled.
    assert!(b_seen.last_code.unwrap() >= 100, "{b_seen:?}");
}
