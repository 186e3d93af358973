//! Embedding sotto with the application's own audio: a source that synthesises a rising
//! chirp and a sink that meters what arrives, instead of devices or files. Two calls run in
//! one process against a signaling server.
//!
//! ```text
//! target/debug/sotto-signaling &          # prints: listening on ws://127.0.0.1:8787/ws
//! cargo run --example custom_audio_io -- ws://127.0.0.1:8787/ws
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sotto::call::{CallBuilder, CallEvent, CallState};
use sotto::media::{AudioSink, AudioSource, MediaError, NullSink, ToneSource, dbfs};

/// The application's capture: any code that fills 48 kHz mono frames. Not live, so the call
/// paces it at one frame per 20 ms.
struct Chirp {
    phase: f64,
    hz: f64,
}

impl AudioSource for Chirp {
    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError> {
        for s in out.iter_mut() {
            self.phase = (self.phase + self.hz / 48_000.0).fract();
            *s = 0.25 * (std::f64::consts::TAU * self.phase).sin() as f32;
            self.hz = if self.hz > 1_500.0 {
                300.0
            } else {
                self.hz + 0.01
            };
        }
        Ok(true)
    }
}

/// The application's playback: here it only keeps the level of the latest frame.
struct Meter(Arc<AtomicU32>);

impl AudioSink for Meter {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        self.0.store(dbfs(frame).to_bits(), Ordering::Relaxed);
        Ok(())
    }
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
    let level = Arc::new(AtomicU32::new(0));
    let mut listener = CallBuilder::new(url.clone(), "custom-io")
        .name("listener")
        .source(ToneSource::new(440.0, 0.0)) // it only listens: silence
        .sink(Meter(level.clone()))
        .start()?;
    wait_for(&mut listener, CallState::WaitingForPeer).await;
    let mut speaker = CallBuilder::new(url, "custom-io")
        .name("speaker")
        .source(Chirp {
            phase: 0.0,
            hz: 300.0,
        })
        .sink(NullSink::default())
        .start()?;
    wait_for(&mut speaker, CallState::Connected).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let db = f32::from_bits(level.load(Ordering::Relaxed));
        println!("listener hears the chirp at {db:.1} dBFS");
    }
    println!("{}", speaker.hang_up().await);
    println!("listener: {}", listener.ended().await);
    Ok(())
}
