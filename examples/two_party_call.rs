//! One side of a two-party E2EE call with the default microphone and speaker.
//!
//! ```text
//! target/debug/sotto-signaling &          # prints: listening on ws://127.0.0.1:8787/ws
//! cargo run --example two_party_call -- ws://127.0.0.1:8787/ws my-room alice
//! cargo run --example two_party_call -- ws://127.0.0.1:8787/ws my-room bob
//! ```
//!
//! Compare the safety codes both sides print; Ctrl-C hangs up.

use std::sync::Arc;

use sotto::call::{CallBuilder, CallEvent};
use sotto::handshake::Identity;
use sotto::media::{DeviceSink, DeviceSource};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(room), Some(name)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: two_party_call <ws-url> <room> <name>");
        std::process::exit(2);
    };
    let mut call = CallBuilder::new(url, room)
        .name(name)
        // A fresh identity per run; a real app keeps one (Identity::load_or_create).
        .identity(Arc::new(Identity::generate()?))
        .source(DeviceSource::open(None)?)
        .sink(DeviceSink::open(None)?)
        .start()?;
    loop {
        tokio::select! {
            event = call.next_event() => match event {
                Some(CallEvent::State(state)) => println!("state: {state:?}"),
                Some(CallEvent::SafetyCode(peer)) => {
                    println!("talking to {:?}; compare safety code {}", peer.name, peer.safety_code)
                }
                Some(CallEvent::PeerIdentityChanged { name, .. }) => {
                    println!("WARNING: {name:?} has a new identity key")
                }
                Some(CallEvent::Stats(s)) => println!(
                    "rtt {:?} ms, loss {:.1} %, decrypted {}, failures {}",
                    s.rtt_ms, s.loss_percent, s.frames_decrypted, s.decrypt_failures
                ),
                Some(CallEvent::Ended { reason, .. }) => {
                    println!("ended: {reason}");
                    return Ok(());
                }
                Some(_) => {}
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => {
                println!("ended: {}", call.hang_up().await);
                return Ok(());
            }
        }
    }
}
