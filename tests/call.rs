//! Two calls through a real signaling server and real WebRTC on loopback: tones go both ways
//! end-to-end encrypted; a peer without the keys hears nothing; strangers in the room cannot
//! disturb the call.

mod common;

use std::time::Duration;

use common::{CaptureSink, TestServer, assert_hears, tone_ratio};
use serde_json::json;
use sotto::call::{Call, CallBuilder, CallEvent, CallStats, EndReason};
use sotto::media::ToneSource;
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};

/// Calls in this binary run one at a time: each is real-time audio on a 2-core machine.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Collects events until the call ends, asserting nothing along the way.
struct Observed {
    safety_code: Option<String>,
    peer_name: Option<String>,
    first_audio_ms: Option<f64>,
    ended: Option<(EndReason, CallStats)>,
    peer_muted: Vec<bool>,
    identity_changed: bool,
}

async fn observe(mut call: Call) -> Observed {
    let mut seen = Observed {
        safety_code: None,
        peer_name: None,
        first_audio_ms: None,
        ended: None,
        peer_muted: Vec::new(),
        identity_changed: false,
    };
    while let Some(event) = call.next_event().await {
        match event {
            CallEvent::SafetyCode(peer) => {
                seen.safety_code = Some(peer.safety_code);
                seen.peer_name = Some(peer.name);
            }
            CallEvent::FirstAudio { setup_ms } => seen.first_audio_ms = Some(setup_ms),
            CallEvent::Ended { reason, stats } => seen.ended = Some((reason, stats)),
            CallEvent::PeerMuted(m) => seen.peer_muted.push(m),
            CallEvent::PeerIdentityChanged { .. } => seen.identity_changed = true,
            _ => {}
        }
    }
    seen
}

fn call(server: &TestServer, room: &str, name: &str, hz: f64, sink: &CaptureSink) -> CallBuilder {
    CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(hz, 0.3))
        .sink(sink.clone())
}

/// Runs `alice` (joins first) and `bob` for `talk` after both are connected; alice hangs up.
async fn talk(alice: CallBuilder, bob: CallBuilder, talk: Duration) -> (Observed, Observed) {
    let mut alice = alice.start().unwrap();
    // Alice is in the room (waiting) before Bob arrives, so Bob initiates.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), alice.next_event()).await {
            Ok(Some(CallEvent::State(sotto::call::CallState::WaitingForPeer))) => break,
            Ok(Some(_)) => continue,
            other => panic!("alice never reached the room: {other:?}"),
        }
    }
    let bob = bob.start().unwrap();
    let bob_task = tokio::spawn(observe(bob));
    let mut connected = false;
    let mut early_safety = None;
    let mut early_changed = false;
    while !connected {
        match tokio::time::timeout(Duration::from_secs(20), alice.next_event()).await {
            Ok(Some(CallEvent::State(sotto::call::CallState::Connected))) => connected = true,
            Ok(Some(CallEvent::SafetyCode(p))) => early_safety = Some((p.safety_code, p.name)),
            Ok(Some(CallEvent::PeerIdentityChanged { .. })) => early_changed = true,
            Ok(Some(CallEvent::Ended { reason, .. })) => panic!("alice ended early: {reason}"),
            Ok(Some(_)) => {}
            other => panic!("alice never connected: {other:?}"),
        }
    }
    // Keep reading Alice's events while the call runs, then hang up.
    let alice_task = tokio::spawn(async move {
        let hang_up_at = tokio::time::Instant::now() + talk;
        let mut first_audio_ms = None;
        let mut safety = early_safety;
        let mut changed = early_changed;
        loop {
            tokio::select! {
                ev = alice.next_event() => match ev {
                    Some(CallEvent::FirstAudio { setup_ms }) => first_audio_ms = Some(setup_ms),
                    Some(CallEvent::SafetyCode(p)) => safety = Some((p.safety_code, p.name)),
                    Some(CallEvent::PeerIdentityChanged { .. }) => changed = true,
                    Some(CallEvent::Ended { reason, .. }) => panic!("alice ended early: {reason}"),
                    Some(_) => {}
                    None => panic!("alice's events stopped"),
                },
                _ = tokio::time::sleep_until(hang_up_at) => break,
            }
        }
        let reason = alice.hang_up().await;
        let stats = alice.stats();
        (reason, stats, first_audio_ms, safety, changed)
    });
    let (reason, stats, first_audio_ms, safety, changed) = alice_task.await.unwrap();
    let bob_seen = tokio::time::timeout(Duration::from_secs(10), bob_task)
        .await
        .expect("bob's call did not end after alice hung up")
        .unwrap();
    let alice_seen = Observed {
        safety_code: safety.as_ref().map(|s| s.0.clone()),
        peer_name: safety.map(|s| s.1),
        first_audio_ms,
        ended: Some((reason, stats)),
        peer_muted: Vec::new(),
        identity_changed: changed,
    };
    (alice_seen, bob_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_hear_each_others_tone_end_to_end_encrypted() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let (heard_by_alice, heard_by_bob) = (CaptureSink::default(), CaptureSink::default());
    let (alice, bob) = talk(
        call(&server, "tones", "alice", 440.0, &heard_by_alice),
        call(&server, "tones", "bob", 660.0, &heard_by_bob),
        Duration::from_secs(4),
    )
    .await;

    // The codes were derived independently on each side; they agree.
    let code = alice.safety_code.clone().expect("alice got no safety code");
    assert_eq!(bob.safety_code.as_deref(), Some(code.as_str()));
    assert_eq!(alice.peer_name.as_deref(), Some("bob"));
    assert_eq!(bob.peer_name.as_deref(), Some("alice"));

    let (a_reason, a_stats) = alice.ended.unwrap();
    let (b_reason, b_stats) = bob.ended.unwrap();
    assert_eq!(a_reason, EndReason::LocalHangup);
    assert_eq!(
        b_reason,
        EndReason::RemoteHangup,
        "bob was not told over the control channel"
    );
    for (who, s) in [("alice", &a_stats), ("bob", &b_stats)] {
        eprintln!("{who}: {s:?}");
        assert!(s.frames_sent >= 150, "{who} sent {}", s.frames_sent);
        assert!(
            s.frames_decrypted >= 150,
            "{who} decrypted {}",
            s.frames_decrypted
        );
        assert_eq!(s.decrypt_failures, 0, "{who}");
        assert_eq!(s.replays_rejected, 0, "{who}");
        assert_eq!(s.reorder_rejected, 0, "{who}");
        assert_eq!(s.frames_decrypted, s.frames_received, "{who}");
        assert!(s.frames_played >= 150, "{who} played {}", s.frames_played);
        assert!(
            s.rtt_ms.is_some(),
            "{who} measured no RTT over the control channel"
        );
        assert!(s.setup_ms.is_some(), "{who} recorded no set-up time");
    }
    assert!(alice.first_audio_ms.is_some() && bob.first_audio_ms.is_some());
    eprintln!(
        "set-up (to first played frame): alice {:?} ms, bob {:?} ms",
        alice.first_audio_ms, bob.first_audio_ms
    );

    // Each side's output carries the other's tone, not its own.
    for (who, sink, want, own) in [
        ("alice", &heard_by_alice, 660.0, 440.0),
        ("bob", &heard_by_bob, 440.0, 660.0),
    ] {
        let tail = sink.tail(2.0);
        assert_hears(&tail, want, who);
        let leak = tone_ratio(&tail, 48_000.0, own);
        assert!(leak < 0.01, "{who}: own tone share {leak}");
    }
}

/// Both hear the other's tone, with nothing failing.
fn assert_heard_each_other(
    alice: Observed,
    bob: Observed,
    heard_by_alice: &CaptureSink,
    heard_by_bob: &CaptureSink,
) {
    let (a_reason, a_stats) = alice.ended.unwrap();
    let (b_reason, b_stats) = bob.ended.unwrap();
    assert_eq!(a_reason, EndReason::LocalHangup);
    assert_eq!(b_reason, EndReason::RemoteHangup);
    for (who, s) in [("alice", &a_stats), ("bob", &b_stats)] {
        eprintln!("{who}: set-up {:?} ms", s.setup_ms);
        assert!(
            s.frames_decrypted >= 50,
            "{who} decrypted {}",
            s.frames_decrypted
        );
        assert_eq!(s.decrypt_failures, 0, "{who}");
    }
    assert_hears(&heard_by_alice.tail(1.0), 660.0, "alice");
    assert_hears(&heard_by_bob.tail(1.0), 440.0, "bob");
}

/// A peer that trickles ICE and one that does not (complete descriptions only, as before
/// trickle ICE) call each other, whichever of them offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_and_non_trickle_peers_call_each_other() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    // Bob joins second, so Bob offers.
    for (alice_trickles, bob_trickles) in [(false, true), (true, false)] {
        eprintln!("alice trickles: {alice_trickles}, bob (the offerer) trickles: {bob_trickles}");
        let room = format!("mixed-{alice_trickles}");
        let (heard_by_alice, heard_by_bob) = (CaptureSink::default(), CaptureSink::default());
        let (alice, bob) = talk(
            call(&server, &room, "alice", 440.0, &heard_by_alice)
                .configure(|c| c.transport.trickle = alice_trickles),
            call(&server, &room, "bob", 660.0, &heard_by_bob)
                .configure(|c| c.transport.trickle = bob_trickles),
            Duration::from_secs(2),
        )
        .await;
        assert_heard_each_other(alice, bob, &heard_by_alice, &heard_by_bob);
    }
}

/// A STUN server that never answers holds up ICE gathering until the gathering limit (here a
/// minute, three times the call's set-up limit). Trickling peers send their descriptions at
/// once and connect on their host candidates; without trickle ICE no description would go
/// out before the set-up limit ended the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_that_never_answers_does_not_hold_up_the_call() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    // Takes the STUN requests and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun = format!("stun:{}", silent.local_addr().unwrap());
    let unanswered = |c: &mut sotto::call::CallConfig| {
        c.transport.ice_servers = vec![sotto::transport::IceServer {
            urls: vec![stun.clone()],
            ..Default::default()
        }];
        c.transport.gather_timeout = Duration::from_secs(60);
    };
    let (heard_by_alice, heard_by_bob) = (CaptureSink::default(), CaptureSink::default());
    let (alice, bob) = talk(
        call(&server, "silent-stun", "alice", 440.0, &heard_by_alice).configure(unanswered),
        call(&server, "silent-stun", "bob", 660.0, &heard_by_bob).configure(unanswered),
        Duration::from_secs(2),
    )
    .await;
    assert_heard_each_other(alice, bob, &heard_by_alice, &heard_by_bob);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_in_the_room_cannot_disturb_the_call() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let (heard_by_alice, heard_by_bob) = (CaptureSink::default(), CaptureSink::default());
    let mut alice = call(&server, "crowded", "alice", 440.0, &heard_by_alice)
        .start()
        .unwrap();
    while !matches!(
        alice.next_event().await,
        Some(CallEvent::State(sotto::call::CallState::WaitingForPeer))
    ) {}
    let bob = call(&server, "crowded", "bob", 660.0, &heard_by_bob)
        .start()
        .unwrap();
    // Bob is in the room once Alice starts the handshake with him.
    let mut code = None;
    loop {
        match alice.next_event().await {
            Some(CallEvent::State(sotto::call::CallState::Handshaking)) => break,
            Some(CallEvent::SafetyCode(p)) => code = Some(p.safety_code),
            Some(CallEvent::Ended { reason, .. }) => panic!("alice ended: {reason}"),
            Some(_) => {}
            None => panic!("alice's events stopped"),
        }
    }
    // Mallory joins third and throws junk and a fake handshake at everyone.
    let (mallory, mut mallory_events) =
        SignalClient::connect(SignalConfig::new(server.url.clone(), "crowded", "mallory"));
    while !matches!(
        mallory_events.recv().await,
        Some(SignalEvent::Joined { .. })
    ) {}
    for junk in [
        json!("x"),
        json!({"kind": "handshake", "message": {"v": 1, "type": "hello"}}),
        json!({"kind": "offer", "sdp": "v=0\r\n"}),
        json!({"kind": "answer", "sdp": "garbage"}),
        json!({"kind": "handshake", "message": "not an object"}),
        json!({"kind": "bye"}),
        json!({"kind": "trickle"}),
        json!({"kind": "candidate", "candidate": "candidate:1 1 udp 1 10.9.9.9 9 typ host", "ufrag": "abcd"}),
        json!({"kind": "end_of_candidates", "ufrag": "abcd"}),
    ] {
        mallory.broadcast(&junk).await.unwrap();
    }
    let bob_task = tokio::spawn(observe(bob));
    let hang_up_at = tokio::time::Instant::now() + Duration::from_secs(4);
    // Alice mutes for the last second: Bob is told, and hears silence.
    let mute_at = hang_up_at - Duration::from_secs(1);
    let mut muted = false;
    loop {
        if !muted && tokio::time::Instant::now() >= mute_at {
            alice.set_muted(true).await;
            muted = true;
        }
        tokio::select! {
            ev = alice.next_event() => match ev {
                Some(CallEvent::SafetyCode(p)) => code = Some(p.safety_code),
                Some(CallEvent::Ended { reason, .. }) => panic!("alice ended: {reason}"),
                Some(_) => {}
                None => panic!("alice's events stopped"),
            },
            _ = tokio::time::sleep_until(if muted { hang_up_at } else { mute_at }) => {
                if muted { break }
            }
        }
    }
    let stats = alice.stats();
    assert!(stats.muted);
    assert_eq!(alice.hang_up().await, EndReason::LocalHangup);
    let bob_seen = bob_task.await.unwrap();
    assert_eq!(bob_seen.safety_code, code);
    assert_eq!(bob_seen.peer_name.as_deref(), Some("alice"));
    assert_eq!(stats.decrypt_failures, 0);
    assert_hears(&heard_by_alice.tail(1.5), 660.0, "alice");
    assert_eq!(
        bob_seen.peer_muted,
        vec![true],
        "bob was not told of the mute"
    );
    assert!(bob_seen.ended.as_ref().unwrap().1.peer_muted);
    // Before the mute Bob heard Alice; in its last 0.7 s, nothing.
    let heard = heard_by_bob.tail(3.0);
    let split = heard.len() - (0.7 * 48_000.0) as usize;
    assert_hears(&heard[..heard.len() - 48_000], 440.0, "bob before the mute");
    let after = sotto::media::dbfs(&heard[split..]);
    assert!(
        after < -50.0,
        "bob still hears alice after the mute: {after} dBFS"
    );
    mallory.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_peer_with_a_new_identity_is_reported() {
    use sotto::handshake::{Identity, KnownPeers};
    use std::sync::Arc;
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let dir = std::env::temp_dir().join(format!("sotto-known-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("known_peers.json");
    let alice_id = Arc::new(Identity::generate().unwrap());
    let sink = CaptureSink::default();
    let mut changed = Vec::new();
    let bobs = [
        Arc::new(Identity::generate().unwrap()),
        Arc::new(Identity::generate().unwrap()),
    ];
    // Bob calls twice under the same name; the second time with a different identity.
    for (round, room) in ["first", "second"].into_iter().enumerate() {
        let alice = call(&server, room, "alice", 440.0, &sink)
            .identity(alice_id.clone())
            .known_peers(KnownPeers::load(&store).unwrap());
        let bob = call(&server, room, "bob", 660.0, &sink).identity(bobs[round].clone());
        let (alice_seen, bob_seen) = talk(alice, bob, Duration::from_millis(500)).await;
        assert!(bob_seen.ended.is_some(), "round {round}");
        changed.push(alice_seen.identity_changed);
    }
    assert_eq!(
        changed,
        vec![false, true],
        "new peer pinned, then its change reported"
    );
    // The pin from the first call is still the one in the file: the changed key was reported,
    // not silently pinned in its place.
    let pinned = KnownPeers::load(&store).unwrap().pinned("bob");
    assert_eq!(
        pinned,
        Some(bobs[0].public_key()),
        "the first key stays pinned"
    );
    assert_ne!(pinned, Some(bobs[1].public_key()));
    let _ = std::fs::remove_dir_all(&dir);
}
