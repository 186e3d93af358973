//! Embedding sotto with the application's own video: one side draws I420 pictures on its own
//! thread and pushes them into the call; the other takes the peer's decoded pictures from a
//! channel, as a renderer would. Every picture is VP8-encoded and sealed with SFrame on the
//! way. Two calls run in one process against a signaling server.
//!
//! ```text
//! target/debug/sotto-signaling &          # prints: listening on ws://127.0.0.1:8787/ws
//! cargo run --example video_call -- ws://127.0.0.1:8787/ws
//! ```

use std::time::{Duration, Instant};

use sotto::call::{CallBuilder, CallEvent, CallState};
use sotto::media::video::{AppVideoSink, AppVideoSource, PushError, VideoFrame};
use sotto::media::{NullSink, ToneSource};

const W: u32 = 640;
const H: u32 = 360;
const FPS: u32 = 30;

/// The application's camera: a diagonal gradient that slides one pixel per picture.
fn draw(n: u32, y: &mut [u8], u: &mut [u8], v: &mut [u8]) {
    for (row, line) in y.chunks_mut(W as usize).enumerate() {
        for (col, p) in line.iter_mut().enumerate() {
            *p = (16 + (col + row + n as usize) % 220) as u8;
        }
    }
    u.fill(128);
    v.fill((96 + n % 64) as u8);
}

async fn wait_for(call: &mut sotto::call::Call, want: CallState) {
    while let Some(event) = call.next_event().await {
        match event {
            CallEvent::State(s) if s == want => return,
            CallEvent::Ended { reason, .. } => panic!("call ended: {reason}"),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8787/ws".into());

    // The viewer: the peer's pictures arrive in a channel (at most 4 waiting).
    let (screen, pictures) = AppVideoSink::channel(4);
    let mut viewer = CallBuilder::new(url.clone(), "video-example")
        .name("viewer")
        .source(ToneSource::new(440.0, 0.0))
        .sink(NullSink::default())
        .video_sink(screen)
        .start()?;
    wait_for(&mut viewer, CallState::WaitingForPeer).await;

    // The camera side: the application pushes pictures from its own thread, in real time.
    let (camera, handle) = AppVideoSource::new(W, H, FPS, 2)?;
    let mut sender = CallBuilder::new(url, "video-example")
        .name("camera")
        .source(ToneSource::new(440.0, 0.2))
        .sink(NullSink::default())
        .video_source(camera)
        .start()?;
    std::thread::spawn(move || {
        let (mut y, mut u, mut v) = (
            vec![0u8; (W * H) as usize],
            vec![0u8; (W * H / 4) as usize],
            vec![0u8; (W * H / 4) as usize],
        );
        let start = Instant::now();
        for n in 0.. {
            draw(n, &mut y, &mut u, &mut v);
            match handle.push_i420(W, H, &y, W as usize, &u, &v, W as usize / 2) {
                Ok(()) | Err(PushError::Full) => {}
                Err(_) => return, // the call is over
            }
            let next = start + Duration::from_secs_f64(f64::from(n + 1) / f64::from(FPS));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    wait_for(&mut sender, CallState::Connected).await;

    // Render loop of the viewer: here it only reports what it gets.
    let report = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(4);
        let mut shown = 0u32;
        let mut last: Option<VideoFrame> = None;
        while Instant::now() < until {
            if let Ok(p) = pictures.recv_timeout(Duration::from_millis(100)) {
                shown += 1;
                last = Some(p);
            }
        }
        (shown, last.map(|p| p.size()))
    })
    .await?;
    println!(
        "viewer got {} pictures in 4 s, last one {:?}",
        report.0, report.1
    );
    let stats = sender.stats();
    println!(
        "camera side sent {} video frames ({} keyframes), all sealed with SFrame",
        stats.video_frames_sent, stats.video_keyframes_sent
    );
    println!("{}", sender.hang_up().await);
    println!("viewer: {}", viewer.ended().await);
    Ok(())
}
