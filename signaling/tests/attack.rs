//! A hostile signaling server against real calls (the engine, real WebRTC on loopback): what
//! exposes a server that runs its own handshakes or rewrites SDP.
//!
//! - First contact: the two safety codes differ, and the status says the media cannot be
//!   decrypted instead of "end-to-end encrypted".
//! - After a genuine call: the attacker's key is reported as changed, under the same name or
//!   a lookalike (Cyrillic letters, upper case, full width), and the pins stay.
//! - A DTLS fingerprint swapped in the SDP ends the call before any media.

#[path = "support/mitm.rs"]
mod mitm;
#[path = "support/sotto_bin.rs"]
mod sotto_bin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mitm::{Attack, Mitm};
use sotto::call::{Call, CallBuilder, CallEvent, CallState, EndReason, PeerInfo};
use sotto::handshake::{Identity, KnownPeers, PeerTrust};
use sotto::media::{NullSink, ToneSource};

/// Calls in this binary run one at a time: each is real-time audio on a 2-core machine.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(30);

struct Party {
    name: &'static str,
    identity: Arc<Identity>,
    peers_file: PathBuf,
}

impl Party {
    fn new(dir: &Path, name: &'static str) -> Self {
        Party {
            name,
            identity: Arc::new(Identity::generate().unwrap()),
            peers_file: dir.join(format!("{name}-known_peers.json")),
        }
    }

    fn builder(&self, url: &str, room: &str, hz: f64) -> CallBuilder {
        CallBuilder::new(url, room)
            .name(self.name)
            .identity(Arc::clone(&self.identity))
            .known_peers(KnownPeers::load(&self.peers_file).unwrap())
            .source(ToneSource::new(hz, 0.3))
            .sink(NullSink::default())
    }

    fn pinned(&self, name: &str) -> Option<sotto::handshake::IdentityKey> {
        KnownPeers::load(&self.peers_file).unwrap().pinned(name)
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-attack-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What one side saw.
#[derive(Debug, Default)]
struct Seen {
    peer: Option<PeerInfo>,
    changed: Option<(String, String)>,
    states: Vec<CallState>,
    ended: Option<EndReason>,
    frames_decrypted: u64,
    decrypt_failures: u64,
    late_handshake_messages: u64,
    /// From the last stats event (live), then the final stats.
    frames_received: u64,
    frames_played: u64,
    first_audio: bool,
}

/// Reads `call`'s events until `done` says so (or the call ends); once the other side is done
/// too (`both`), hangs up.
async fn watch(
    mut call: Call,
    done: impl Fn(&Seen) -> bool,
    both: Arc<tokio::sync::Barrier>,
) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + STEP;
    while !done(&seen) && seen.ended.is_none() {
        let event = tokio::time::timeout_at(deadline, call.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?}"));
        match event {
            Some(CallEvent::SafetyCode(info)) => seen.peer = Some(info),
            Some(CallEvent::PeerIdentityChanged {
                name, pinned_name, ..
            }) => seen.changed = Some((name, pinned_name)),
            Some(CallEvent::State(s)) => seen.states.push(s),
            Some(CallEvent::Stats(s)) => seen.frames_received = s.frames_received,
            Some(CallEvent::FirstAudio { .. }) => seen.first_audio = true,
            Some(CallEvent::Ended { reason, stats }) => {
                seen.frames_received = stats.frames_received;
                seen.frames_played = stats.frames_played;
                seen.frames_decrypted = stats.frames_decrypted;
                seen.decrypt_failures = stats.decrypt_failures;
                seen.late_handshake_messages = stats.late_handshake_messages;
                seen.ended = Some(reason);
            }
            Some(_) => {}
            None => break,
        }
    }
    // Hanging up would end the other side's call before it saw what it must see.
    let _ = tokio::time::timeout(STEP, both.wait()).await;
    if seen.ended.is_none() {
        seen.ended = Some(call.hang_up().await);
        // After the hang-up the media threads have stopped: the counters are final.
        let stats = call.stats();
        seen.frames_received = stats.frames_received;
        seen.frames_played = stats.frames_played;
        seen.frames_decrypted = stats.frames_decrypted;
        seen.decrypt_failures = stats.decrypt_failures;
        seen.late_handshake_messages = stats.late_handshake_messages;
    }
    seen
}

/// Alice joins first, then Bob; each is watched until `done`.
async fn call_pair(
    alice: CallBuilder,
    bob: CallBuilder,
    done: impl Fn(&Seen) -> bool + Copy + Send + 'static,
) -> (Seen, Seen) {
    let mut alice = alice.start().unwrap();
    loop {
        match tokio::time::timeout(STEP, alice.next_event()).await {
            Ok(Some(CallEvent::State(CallState::WaitingForPeer))) => break,
            Ok(Some(_)) => {}
            other => panic!("alice never reached the room: {other:?}"),
        }
    }
    let bob = bob.start().unwrap();
    let both = Arc::new(tokio::sync::Barrier::new(2));
    let bob = tokio::spawn(watch(bob, done, Arc::clone(&both)));
    let alice = watch(alice, done, both).await;
    (alice, bob.await.unwrap())
}

/// A hostile server running its own handshakes, presenting itself to the first victim as
/// `as_first` and to the second as `as_second` (`None`: the other victim's real name).
async fn impersonator(as_first: Option<String>, as_second: Option<String>) -> Mitm {
    Mitm::start(
        Attack::OwnHandshakes {
            as_first,
            as_second,
        },
        None,
    )
    .await
}

fn keys_agreed(s: &Seen) -> bool {
    s.peer.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_the_codes_differ_and_the_status_says_undecryptable() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("first");
    let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
    let mitm = impersonator(None, None).await;
    let until_undecryptable = |s: &Seen| s.states.contains(&CallState::Undecryptable);
    let (a, b) = call_pair(
        alice.builder(&mitm.url, "first", 440.0),
        bob.builder(&mitm.url, "first", 660.0),
        until_undecryptable,
    )
    .await;
    assert_eq!(mitm.handshakes_completed(), 2, "the attacker ran both legs");
    let (pa, pb) = (a.peer.clone().unwrap(), b.peer.clone().unwrap());
    // Each side met the attacker under the other's name, as new contacts...
    assert_eq!((pa.name.as_str(), pb.name.as_str()), ("bob", "alice"));
    assert_eq!(
        (pa.trust.clone(), pb.trust.clone()),
        (PeerTrust::New, PeerTrust::New)
    );
    assert_eq!(pa.identity.fingerprint(), mitm.fingerprint());
    // ...but the codes the two people read differ, and neither call claims to be end-to-end
    // encrypted once the peer's frames fail to authenticate.
    assert_ne!(pa.safety_code, pb.safety_code);
    for side in [&a, &b] {
        assert!(
            side.states.contains(&CallState::Undecryptable),
            "{:?}",
            side.states
        );
        assert_eq!(side.frames_decrypted, 0);
        assert!(side.decrypt_failures > 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keeps everything played, to check what a peer without the keys plays.
#[derive(Clone, Default)]
struct CaptureSink(Arc<std::sync::Mutex<Vec<f32>>>);

impl sotto::media::AudioSink for CaptureSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), sotto::media::MediaError> {
        self.0.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_each_others_keys_receive_every_frame_and_play_none() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("wrong-keys");
    let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
    let mitm = impersonator(None, None).await;
    let (heard_by_alice, heard_by_bob) = (CaptureSink::default(), CaptureSink::default());
    // Two seconds of frames each way, sealed under keys the receiver does not have.
    let (a, b) = call_pair(
        alice
            .builder(&mitm.url, "wrong-keys", 440.0)
            .sink(heard_by_alice.clone()),
        bob.builder(&mitm.url, "wrong-keys", 660.0)
            .sink(heard_by_bob.clone()),
        |s: &Seen| s.frames_received >= 100,
    )
    .await;
    for (side, heard) in [(&a, &heard_by_alice), (&b, &heard_by_bob)] {
        assert!(side.frames_received >= 100, "{side:?}");
        assert_eq!(side.frames_decrypted, 0, "{side:?}");
        assert_eq!(side.decrypt_failures, side.frames_received, "{side:?}");
        assert_eq!(side.frames_played, 0, "{side:?}");
        assert!(!side.first_audio, "{side:?}");
        let heard = heard.0.lock().unwrap();
        assert!(!heard.is_empty(), "the sink was paced");
        assert!(heard.iter().all(|s| *s == 0.0), "something was played");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names the attacker presents itself under: exact, lookalike (Cyrillic о, а, с, е),
/// other case, full width.
const VARIANTS: [(&str, &str); 4] = [
    ("bob", "alice"),
    ("bоb", "аliсе"),
    ("BOB", "Alice"),
    ("ｂｏｂ", "ａｌｉｃｅ"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_under_any_name_the_codes_differ() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("first-names");
    for (i, (as_bob, as_alice)) in VARIANTS.into_iter().enumerate() {
        let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
        let _ = std::fs::remove_file(&alice.peers_file);
        let _ = std::fs::remove_file(&bob.peers_file);
        let mitm = impersonator(Some(as_bob.into()), Some(as_alice.into())).await;
        let room = format!("first-{i}");
        let (a, b) = call_pair(
            alice.builder(&mitm.url, &room, 440.0),
            bob.builder(&mitm.url, &room, 660.0),
            keys_agreed,
        )
        .await;
        let (pa, pb) = (a.peer.unwrap(), b.peer.unwrap());
        assert_ne!(pa.safety_code, pb.safety_code, "{as_bob:?} / {as_alice:?}");
        assert_eq!(pa.trust, PeerTrust::New);
        assert_eq!(pa.name, sotto::names::canonical(as_bob));
        assert_eq!(pb.name, sotto::names::canonical(as_alice));
        assert_eq!(pa.mixed_script, i == 1, "{as_bob:?}");
        assert_eq!(pb.mixed_script, i == 1, "{as_alice:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_genuine_call_the_attacker_is_caught_under_any_lookalike_name() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("lookalike");
    let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
    let honest = Mitm::start(Attack::None, None).await;
    let (a, b) = call_pair(
        alice.builder(&honest.url, "genuine", 440.0),
        bob.builder(&honest.url, "genuine", 660.0),
        keys_agreed,
    )
    .await;
    let (pa, pb) = (a.peer.unwrap(), b.peer.unwrap());
    assert_eq!(pa.safety_code, pb.safety_code, "the genuine call");
    assert_eq!(pa.trust, PeerTrust::New);
    let bob_key = bob.identity.public_key();
    let alice_key = alice.identity.public_key();
    assert_eq!(alice.pinned("bob"), Some(bob_key));
    assert_eq!(bob.pinned("alice"), Some(alice_key));

    // The server now runs its own handshakes, presenting itself under each variant.
    for (i, (as_bob, as_alice)) in VARIANTS.into_iter().enumerate() {
        let mitm = impersonator(Some(as_bob.into()), Some(as_alice.into())).await;
        let room = format!("attack-{i}");
        let (a, b) = call_pair(
            alice.builder(&mitm.url, &room, 440.0),
            bob.builder(&mitm.url, &room, 660.0),
            keys_agreed,
        )
        .await;
        let (pa, pb) = (a.peer.unwrap(), b.peer.unwrap());
        assert_eq!(pa.identity.fingerprint(), mitm.fingerprint());
        assert!(
            matches!(&pa.trust, PeerTrust::Changed { previous, pinned_name }
                if *previous == bob_key && pinned_name == "bob"),
            "{as_bob:?}: {:?}",
            pa.trust
        );
        assert!(
            matches!(&pb.trust, PeerTrust::Changed { previous, pinned_name }
                if *previous == alice_key && pinned_name == "alice"),
            "{as_alice:?}: {:?}",
            pb.trust
        );
        assert_eq!(a.changed.as_ref().map(|c| c.1.as_str()), Some("bob"));
        assert_eq!(b.changed.as_ref().map(|c| c.1.as_str()), Some("alice"));
        // The name shown is the canonical one, never the raw one.
        assert_eq!(pa.name, sotto::names::canonical(as_bob));
        assert_eq!(pa.mixed_script, as_bob == "bоb");
        // The pins stay: nothing was silently re-pinned, in memory or in the files.
        assert_eq!(alice.pinned("bob"), Some(bob_key), "{as_bob:?}");
        assert_eq!(bob.pinned("alice"), Some(alice_key), "{as_alice:?}");
        assert_eq!(KnownPeers::load(&alice.peers_file).unwrap().len(), 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_fingerprint_swapped_in_the_sdp_ends_the_call_before_media() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("dtls");
    let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
    let mitm = Mitm::start(Attack::SwapDtls, None).await;
    let (a, b) = call_pair(
        alice.builder(&mitm.url, "dtls", 440.0),
        bob.builder(&mitm.url, "dtls", 660.0),
        |_| false,
    )
    .await;
    // Alice (who answers) always sees the swapped offer. Bob sees the swapped answer unless
    // Alice's keys were agreed before the offer arrived: then she ends without answering, and
    // Bob's call ends because she left.
    assert!(
        matches!(&a.ended, Some(EndReason::TransportNotBound(_))),
        "{:?}",
        a.ended
    );
    assert!(
        matches!(
            &b.ended,
            Some(EndReason::TransportNotBound(_) | EndReason::PeerLeft)
        ),
        "{:?}",
        b.ended
    );
    for side in [&a, &b] {
        assert!(
            !side.states.contains(&CallState::Connected),
            "{:?}",
            side.states
        );
        assert_eq!(side.frames_decrypted, 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_status_line_says_the_media_cannot_be_decrypted() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("cli");
    let mitm = impersonator(None, None).await;
    let run = |who: &str, hz: &str| {
        let mut cmd = std::process::Command::new(sotto_bin::sotto_bin());
        cmd.args([
            "call", "--server", &mitm.url, "--room", "cli", "--name", who,
        ])
        .args(["--bind", "127.0.0.1:0", "--tone", hz, "--duration", "4"])
        .arg("--identity")
        .arg(dir.join(who).join("identity.json"))
        .arg("--output")
        .arg(dir.join(format!("{who}.wav")))
        .arg("--stats-json")
        .arg(dir.join(format!("{who}.json")))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let alice = run("alice", "440").spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bob = run("bob", "660");
    let bob = tokio::task::spawn_blocking(move || bob.output().unwrap());
    let alice = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap());
    let (alice, bob) = (alice.await.unwrap(), bob.await.unwrap());
    for (who, out) in [("alice", &alice), ("bob", &bob)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let shown = format!(
            "{who}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(
                "state: connected, but the peer's media cannot be decrypted: keys differ (possible interception)"
            ),
            "{shown}"
        );
        // The last state shown before the end is the undecryptable one, never "end-to-end
        // encrypted".
        let last_state = stdout
            .lines()
            .rfind(|l| l.starts_with("state: ") && !l.contains("ended"))
            .unwrap();
        assert!(last_state.contains("cannot be decrypted"), "{shown}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{who}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["undecryptable"], true, "{report}");
        assert_eq!(report["frames_decrypted"], 0, "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_handshake_messages_after_the_keys_are_ignored_and_counted() {
    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("replay");
    let (alice, bob) = (Party::new(&dir, "alice"), Party::new(&dir, "bob"));
    let mitm = Mitm::start(Attack::ReplayHandshake, None).await;
    // Both sides stay until media is up: the replays did not end the call.
    let connected = |s: &Seen| {
        s.states.contains(&CallState::Connected)
            && s.peer.is_some()
            && s.states.last() == Some(&CallState::Connected)
    };
    let (a, b) = call_pair(
        alice.builder(&mitm.url, "replay", 440.0),
        bob.builder(&mitm.url, "replay", 660.0),
        connected,
    )
    .await;
    for side in [&a, &b] {
        assert_eq!(side.ended, Some(EndReason::LocalHangup), "{side:?}");
        assert_eq!(side.decrypt_failures, 0);
    }
    // Alice (responder) had hello and reveal replayed, Bob reply and confirm.
    assert_eq!(a.late_handshake_messages, 2, "{a:?}");
    assert_eq!(b.late_handshake_messages, 2, "{b:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_name_than_it_joined_with_is_refused() {
    use sotto::handshake::{DtlsFingerprint, Handshake};
    use sotto::signal::{SignalClient, SignalConfig, SignalEvent};

    let _one = ONE_CALL.lock().await;
    let dir = temp_dir("claim");
    let alice = Party::new(&dir, "alice");
    // The real server: it attests the name each peer joined with.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown.clone());
    tokio::spawn(sotto_signaling::serve(listener, app));

    let mut call = alice.builder(&url, "claim", 440.0).start().unwrap();
    while !matches!(
        call.next_event().await,
        Some(CallEvent::State(CallState::WaitingForPeer))
    ) {}
    // Mallory joins as "mallory" (all a leaked link lets her be) but claims to be bob.
    let (client, mut events) = SignalClient::connect(SignalConfig::new(&url, "claim", "mallory"));
    let alice_id = loop {
        match events.recv().await {
            Some(SignalEvent::Joined { peers, .. }) => break peers[0].peer_id.clone(),
            Some(_) => {}
            None => panic!("mallory could not join"),
        }
    };
    let mallory = Arc::new(Identity::generate().unwrap());
    let dtls = DtlsFingerprint::from_sha256([9; 32]);
    let (mut hs, hello) = Handshake::initiator(mallory, "claim", "bob", &dtls).unwrap();
    let send = |m: Vec<u8>| {
        let message: serde_json::Value = serde_json::from_slice(&m).unwrap();
        serde_json::json!({"kind": "handshake", "message": message})
    };
    client.send_to(&alice_id, &send(hello)).await.unwrap();
    let reply = loop {
        match tokio::time::timeout(STEP, events.recv()).await.unwrap() {
            Some(SignalEvent::Message { data, .. }) => {
                let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
                break serde_json::to_vec(&v["message"]).unwrap();
            }
            Some(_) => {}
            None => panic!("no reply"),
        }
    };
    let reveal = hs.handle(&reply).unwrap().send.unwrap();
    client.send_to(&alice_id, &send(reveal)).await.unwrap();
    let seen = watch(call, |_| false, Arc::new(tokio::sync::Barrier::new(1))).await;
    match &seen.ended {
        Some(EndReason::PeerNotTrusted(why)) => assert!(
            why.contains("joined the room as \"mallory\" but claims to be \"bob\""),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(seen.peer.is_none(), "no safety code for an impostor");
    assert_eq!(
        KnownPeers::load(&alice.peers_file).unwrap().len(),
        0,
        "nothing pinned"
    );
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
