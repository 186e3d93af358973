//! Group media through the SFU that `sotto-signaling --sfu` hosts: members reach it with
//! `sfu_offer`/`sfu_answer` through signaling, each with the engine's `SfuTransport`, and
//! receive every other member's sealed frames byte for byte, never their own.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use sotto::transport::{SfuTransport, SfuTransportConfig, SlotFrame, seal};
use tokio::sync::mpsc;

const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
const WAIT: Duration = Duration::from_secs(30);

fn key(kid: u64) -> Vec<u8> {
    format!("test key of the member in slot {kid}").into_bytes()
}

struct Member {
    slot: u64,
    /// Kept: the client leaves the room when its events are dropped.
    signal: (SignalClient, mpsc::Receiver<SignalEvent>),
    transport: SfuTransport,
    frames: mpsc::Receiver<SlotFrame>,
}

async fn next_event(events: &mut mpsc::Receiver<SignalEvent>) -> SignalEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("signaling event in time")
        .expect("signaling open")
}

/// Joins `room`, offers to the SFU and waits until media can flow.
async fn join(url: &str, room: &str, name: &str) -> Member {
    let (signal, mut events) = SignalClient::connect(SignalConfig::new(url, room, name));
    let slot = loop {
        if let SignalEvent::Joined { slot, sfu, .. } = next_event(&mut events).await {
            assert!(sfu, "the server has an SFU");
            break u64::from(slot.expect("a slot"));
        }
    };
    let mut transport = SfuTransport::new(SfuTransportConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        audio_slots: 3,
        ..SfuTransportConfig::default()
    })
    .await
    .unwrap();
    let offer = transport.create_offer().await.unwrap();
    signal
        .send_to("sfu", &json!({"kind": "sfu_offer", "sdp": offer}))
        .await
        .unwrap();
    let answer = loop {
        match next_event(&mut events).await {
            SignalEvent::Message { from, data } if from == "sfu" => {
                let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
                assert_eq!(v["kind"], "sfu_answer", "{v}");
                break v["sdp"].as_str().unwrap().to_owned();
            }
            SignalEvent::ServerError { code, message } => panic!("{code:?}: {message}"),
            _ => {}
        }
    };
    transport.accept_answer(&answer).await.unwrap();
    transport.connected(WAIT).await.unwrap();
    let frames = transport.take_frames().unwrap();
    Member {
        slot,
        signal: (signal, events),
        transport,
        frames,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_every_other_member_through_the_sfu_and_never_themselves() {
    let server = common::TestServer::start_with_sfu().await;
    let mut members = Vec::new();
    for name in ["alice", "bob", "carol"] {
        members.push(join(&server.url, "group", name).await);
    }
    let slots: Vec<u64> = members.iter().map(|m| m.slot).collect();
    assert_eq!(slots, [0, 1, 2]);

    // Each member sends 2 s of 20 ms frames, sealed under its own key, at its own level.
    const FRAMES: u64 = 100;
    let sent: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Arc::default();
    let mut receivers = Vec::new();
    let mut transports = Vec::new();
    for m in members {
        let Member {
            slot,
            signal,
            transport,
            frames,
        } = m;
        receivers.push((slot, frames, signal));
        transports.push((slot, Arc::new(transport)));
    }
    let mut senders = Vec::new();
    for (slot, transport) in &transports {
        let (slot, transport, sent) = (*slot, Arc::clone(transport), Arc::clone(&sent));
        senders.push(tokio::spawn(async move {
            let mut ctx = SenderContext::new(SUITE, slot, &key(slot)).unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for n in 0..FRAMES {
                tick.tick().await;
                let payload = format!("slot {slot} frame {n}").into_bytes();
                let frame = seal(&mut ctx, &payload).unwrap();
                sent.lock().unwrap().insert(frame.as_bytes().to_vec(), slot);
                let level = 20 + 10 * slot as u8;
                transport
                    .send_audio(&frame, n * 960, level, true)
                    .await
                    .unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    // What arrived: opened with every member's key, so a member's own frames would show.
    for (slot, mut frames, _signal) in receivers {
        let mut rx = ReceiverContext::new();
        for kid in 0..3 {
            rx.add_key(SUITE, kid, &key(kid)).unwrap();
        }
        let mut per_sender: HashMap<u64, usize> = HashMap::new();
        let mut failures = 0;
        let drain = async {
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(500), frames.recv()).await
            {
                let known = sent.lock().unwrap().get(&frame.payload[..]).copied();
                assert!(known.is_some(), "a payload nobody sent, or altered");
                let mut buf = frame.payload.to_vec();
                match rx.decrypt_in_place(&[], &mut buf) {
                    Ok(d) => *per_sender.entry(d.header.kid).or_default() += 1,
                    Err(_) => failures += 1,
                }
            }
        };
        tokio::time::timeout(WAIT, drain).await.unwrap();
        eprintln!("slot {slot} received {per_sender:?}");
        assert_eq!(failures, 0);
        assert!(
            !per_sender.contains_key(&slot),
            "slot {slot} got its own frames"
        );
        for other in (0..3).filter(|o| *o != slot) {
            let n = per_sender.get(&other).copied().unwrap_or(0);
            // Loopback: nearly all of them, allowing for the first ones before the route.
            assert!(
                n as u64 >= FRAMES * 8 / 10,
                "slot {slot} got {n} of {other}'s"
            );
        }
    }
    for (_, t) in transports {
        t.close().await.unwrap();
    }
}
