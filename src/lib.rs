//! sotto: an end-to-end encrypted voice and video call engine.
//!
//! Media is sealed frame by frame with [SFrame](sframe) (RFC 9605) before it reaches the
//! transport, so nobody in the middle (signaling server, relay, TURN server, operator) can
//! hear, see or read a call. The keys come from an authenticated [handshake] between the two
//! endpoints.
//!
//! # A call
//!
//! Two peers meet in a room on a signaling server, agree keys through it with the
//! authenticated handshake, connect over WebRTC and talk; every Opus frame is sealed before it
//! leaves. Here both peers run in one process, with tones for microphones, through an
//! in-process server (`sotto-signaling`; an application points at its own):
//!
//! ```
//! use sotto::call::{CallBuilder, CallEvent, CallState};
//! use sotto::media::{NullSink, ToneSource};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let server = format!("ws://{}/ws", listener.local_addr()?);
//! # let stop = tokio_util::sync::CancellationToken::new();
//! # let app = sotto_signaling::App::new(Default::default(), stop.clone());
//! # tokio::spawn(sotto_signaling::serve(listener, app));
//! let start = |name: &str, hz: f64| {
//!     CallBuilder::new(server.clone(), "standup")
//!         .name(name)
//!         .source(ToneSource::new(hz, 0.3)) // or DeviceSource, a WAV file, the app's own
//!         .sink(NullSink::default())
//!         .start()
//! };
//! let mut alice = start("alice", 440.0)?;
//! while !matches!(alice.next_event().await, Some(CallEvent::State(CallState::WaitingForPeer))) {}
//! let mut bob = start("bob", 660.0)?;
//! // Each side shows a safety code; people compare them to rule out a man in the middle.
//! let mut codes = Vec::new();
//! for call in [&mut alice, &mut bob] {
//!     while let Some(event) = call.next_event().await {
//!         match event {
//!             CallEvent::SafetyCode(peer) => codes.push(peer.safety_code),
//!             CallEvent::FirstAudio { .. } => break, // the peer's tone is playing
//!             CallEvent::Ended { reason, .. } => return Err(reason.to_string().into()),
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(codes[0], codes[1]);
//! alice.hang_up().await;
//! bob.hang_up().await;
//! # stop.cancel();
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! [`call`] is the object applications embed. Below it: [`sframe`] (RFC 9605), [`handshake`]
//! (identities, key agreement, known peers), [`group`] (group call sender keys), [`names`],
//! [`media`] (sources, sinks, Opus), [`playout`], [`transport`] (WebRTC), [`signal`] (the
//! signaling client), [`latency`] (the mouth-to-ear benchmark) and [`text`].

#![cfg_attr(
    not(feature = "insecure-test-hooks"),
    doc = r#"
# No plaintext path

The default build has no way to put unencrypted media on the wire: the transport takes only
sealed frames, and the test hooks that send plaintext exist only with the non-default
`insecure-test-hooks` feature. So this does not compile:

```compile_fail
async fn plaintext(t: &sotto::transport::MediaTransport) {
    let _ = t.insecure_send_plaintext_for_tests(b"opus", std::time::Duration::from_millis(20)).await;
}
```

nor do the latency benchmark's baseline senders, audio and video, which are private to the
crate:

```compile_fail
async fn plaintext(t: &sotto::transport::MediaTransport) {
    let _ = t.send_unprotected_for_latency_baseline(b"opus", std::time::Duration::from_millis(20)).await;
}
```

```compile_fail
async fn plaintext(t: &sotto::transport::MediaTransport) {
    let _ = t.send_video_unprotected_for_latency_baseline(b"vp8", std::time::Instant::now()).await;
}
```

while sending a sealed frame does:

```no_run
async fn sealed(t: &sotto::transport::MediaTransport, f: &sotto::transport::SealedFrame) {
    let _ = t.send(f, std::time::Duration::from_millis(20)).await;
}
```
"#
)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod call;
pub mod group;
pub mod handshake;
pub mod latency;
pub mod media;
pub mod messages;
pub mod names;
pub mod playout;
pub mod sframe;
pub mod signal;
pub mod text;
pub mod transport;
mod wipe;
