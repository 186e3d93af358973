//! Group calls through the SFU that `sotto-signaling --sfu` hosts, with the engine's real
//! pipeline (Opus, group keys, SFrame, WebRTC to the SFU, one playout per member, mixing):
//! every member hears every other member's tone and not its own, everyone sees one group
//! safety code, and it changes when someone leaves.

mod common;
#[path = "../signaling/tests/support/forgetful_sfu.rs"]
mod forgetful_sfu;

use std::time::Duration;

use common::{CaptureSink, TestServer, tone_ratio};
use sotto::call::{Call, CallBuilder, CallEvent, CallState, CallStats, EndReason};
use sotto::handshake::{PeerTrust, VerifyError};
use sotto::media::ToneSource;
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(30);

/// Calls in this binary run one at a time: each is several real-time pipelines on 2 cores.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends the engine's debug log to the test's captured output, shown when a test fails.
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sotto=debug,sotto_sfu=debug,sotto_signaling=info")
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// What one member saw, once its call ended.
#[derive(Debug, Default)]
struct Seen {
    /// Every group code shown, with the members it covered.
    codes: Vec<(String, Vec<String>)>,
    joined: Vec<String>,
    left: Vec<String>,
    /// Every state shown, with when.
    states: Vec<(std::time::Instant, CallState)>,
    /// Every trust change shown.
    trust: Vec<(String, PeerTrust)>,
    /// Two-party safety codes shown (one per two-party stretch with keys).
    pair_codes: usize,
    ended: Option<(EndReason, CallStats)>,
}

/// Each other member's voice as the engine hands it over before mixing, by name.
#[derive(Clone, Default)]
struct Voices(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<f32>>>>);

impl sotto::call::ParticipantAudio for Voices {
    fn frame(&mut self, member: &str, samples: &[f32]) {
        let mut voices = self.0.lock().unwrap();
        voices
            .entry(member.to_owned())
            .or_default()
            .extend_from_slice(samples);
    }
}

impl Voices {
    /// The last `secs` of `member`'s voice (all of it if shorter).
    fn tail(&self, member: &str, secs: f64) -> Vec<f32> {
        let voices = self.0.lock().unwrap();
        let all = voices.get(member).map(Vec::as_slice).unwrap_or_default();
        let n = ((48_000.0 * secs) as usize).min(all.len());
        all[all.len() - n..].to_vec()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    }
}

/// A running member: its sink, a way to hang it up, and what it saw.
struct Member {
    name: &'static str,
    hz: f64,
    sink: CaptureSink,
    voices: Voices,
    hang_up: Option<oneshot::Sender<()>>,
    seen: tokio::task::JoinHandle<Seen>,
}

/// Starts `name` sending `hz` into the group room; once its media flows, `full` gets its name
/// and the number of other members its group code covers, each time that changes.
fn start(
    server: &TestServer,
    room: &str,
    name: &'static str,
    hz: f64,
    full: mpsc::UnboundedSender<(&'static str, usize)>,
) -> Member {
    let sink = CaptureSink::default();
    let voices = Voices::default();
    let call = CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(hz, 0.3))
        .sink(sink.clone())
        .participant_audio(voices.clone())
        .configure(|c| c.group = true)
        .start()
        .unwrap();
    let (hang_up, hang_up_rx) = oneshot::channel();
    let seen = tokio::spawn(observe(call, name, hang_up_rx, full));
    Member {
        name,
        hz,
        sink,
        voices,
        hang_up: Some(hang_up),
        seen,
    }
}

async fn observe(
    mut call: Call,
    name: &'static str,
    mut hang_up: oneshot::Receiver<()>,
    full: mpsc::UnboundedSender<(&'static str, usize)>,
) -> Seen {
    let mut seen = Seen::default();
    let mut hung_up = false;
    // Reported once media flows: the roster size of the latest code.
    let mut connected = false;
    loop {
        let event = tokio::select! {
            e = call.next_event() => e,
            _ = &mut hang_up, if !hung_up => {
                hung_up = true;
                let reason = call.hang_up().await;
                assert_eq!(reason, EndReason::LocalHangup, "{name}");
                continue;
            }
        };
        let Some(event) = event else { break };
        if let CallEvent::State(state) = &event {
            seen.states.push((std::time::Instant::now(), *state));
        }
        match event {
            CallEvent::GroupSafetyCode { code, members, .. } => {
                if connected {
                    let _ = full.send((name, members.len()));
                }
                seen.codes.push((code, members));
            }
            CallEvent::State(CallState::Connected) => {
                connected = true;
                let others = seen.codes.last().map_or(0, |c| c.1.len());
                let _ = full.send((name, others));
            }
            CallEvent::ParticipantJoined(info) => {
                // Alice compares codes with bob as soon as his keys are agreed.
                if name == "alice" && info.name == "bob" {
                    assert_eq!(call.verify("Bob").await, Ok(PeerTrust::Verified));
                    assert_eq!(
                        call.verify("zed").await,
                        Err(VerifyError::NotInCall("zed".into()))
                    );
                }
                seen.joined.push(info.name)
            }
            CallEvent::TrustChanged { name, trust } => seen.trust.push((name, trust)),
            CallEvent::ParticipantLeft { name } => seen.left.push(name),
            CallEvent::State(CallState::Undecryptable) => panic!("{name}: undecryptable"),
            CallEvent::Ended { reason, stats } => seen.ended = Some((reason, stats)),
            _ => {}
        }
    }
    seen
}

/// Waits until every one of `names` has shown a group code over `others` other members.
async fn until_everyone_sees(
    full: &mut mpsc::UnboundedReceiver<(&'static str, usize)>,
    names: &[&str],
    others: usize,
) {
    let mut done: Vec<&str> = Vec::new();
    while !names.iter().all(|n| done.contains(n)) {
        let (who, n) = tokio::time::timeout(WAIT, full.recv())
            .await
            .expect("group codes in time")
            .expect("members running");
        if n == others && !done.contains(&who) {
            done.push(who);
        }
    }
}

/// Mean share of `hz` over 100 ms blocks of `x` (robust to the phase seams playout leaves).
fn share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    blocks
        .iter()
        .map(|b| tone_ratio(b, 48_000.0, hz))
        .sum::<f64>()
        / blocks.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_hear_each_other_through_the_sfu_under_one_group_code() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let (full_tx, mut full) = mpsc::unbounded_channel();
    let tones = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];
    let mut members: Vec<Member> = Vec::new();
    for (name, hz) in tones {
        members.push(start(&server, "trio", name, hz, full_tx.clone()));
    }
    until_everyone_sees(&mut full, &["alice", "bob", "carol"], 2).await;
    // Three seconds of talk once everyone holds everyone's keys.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in &mut members {
        let _ = m.hang_up.take().unwrap().send(());
    }
    let mut codes = Vec::new();
    let mut rekeys = Vec::new();
    for m in members {
        let seen = tokio::time::timeout(WAIT, m.seen).await.unwrap().unwrap();
        let (reason, stats) = seen.ended.expect("ended");
        eprintln!("{}: {reason}; {stats:?}", m.name);
        assert_eq!(stats.mode, "sfu");
        assert_eq!(stats.decrypt_failures, 0, "{}", m.name);
        assert_eq!(stats.participants.len(), 2, "{}: {stats:?}", m.name);
        // Alice verified bob mid-call: she was told, and her figures say so.
        let verified: Vec<&str> = stats
            .participants
            .iter()
            .filter(|p| p.trust == "verified")
            .map(|p| p.name.as_str())
            .collect();
        if m.name == "alice" {
            assert_eq!(seen.trust, [("bob".to_owned(), PeerTrust::Verified)]);
            assert_eq!(verified, ["bob"]);
        } else {
            assert!(seen.trust.is_empty() && verified.is_empty(), "{}", m.name);
        }
        for p in &stats.participants {
            assert_eq!(p.decrypt_failures, 0, "{}: {p:?}", m.name);
            assert!(p.frames_decrypted >= 50, "{}: {p:?}", m.name);
        }
        rekeys.push(stats.rekeys);
        let code = stats.group_safety_code.clone().expect("a group code");
        assert_eq!(seen.codes.last().map(|c| &c.0), Some(&code));
        codes.push(code);
        // The last two seconds played carry both other tones and not our own.
        let heard = m.sink.tail(2.0);
        for (other, hz) in tones {
            let s = share(&heard, hz);
            eprintln!("{} hears {other} ({hz} Hz) at share {s:.2}", m.name);
            if other == m.name {
                assert!(s < 0.05, "{} hears itself: {s:.2}", m.name);
            } else {
                assert!(s > 0.2, "{} barely hears {other}: {s:.2}", m.name);
            }
        }
        // Each other member's voice also came on its own, under its name, before mixing.
        let mut others: Vec<&str> = tones.iter().map(|t| t.0).filter(|n| *n != m.name).collect();
        others.sort();
        assert_eq!(m.voices.names(), others, "{}", m.name);
        for (other, hz) in tones.iter().filter(|t| t.0 != m.name) {
            let voice = m.voices.tail(other, 2.0);
            assert!(
                voice.len() >= 48_000,
                "{}: {other}'s voice is short",
                m.name
            );
            let s = share(&voice, *hz);
            eprintln!("{} has {other}'s voice alone at share {s:.2}", m.name);
            assert!(
                s > 0.8,
                "{}: {other}'s voice is not its tone alone: {s:.2}",
                m.name
            );
        }
        let _ = m.hz;
    }
    assert!(
        codes.windows(2).all(|w| w[0] == w[1]),
        "codes differ: {codes:?}"
    );
    // Each join ratchets the keys of those already there: in the server's join order, the
    // first member rekeyed twice, the second once, the last never.
    rekeys.sort();
    assert_eq!(rekeys, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_code_changes_when_a_member_leaves_and_the_rest_keep_talking() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let (full_tx, mut full) = mpsc::unbounded_channel();
    let mut alice = start(&server, "leave", "alice", 440.0, full_tx.clone());
    let mut bob = start(&server, "leave", "bob", 660.0, full_tx.clone());
    let mut carol = start(&server, "leave", "carol", 880.0, full_tx.clone());
    until_everyone_sees(&mut full, &["alice", "bob", "carol"], 2).await;
    // A second of the three talking, then carol leaves.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = carol.hang_up.take().unwrap().send(());
    let carol_seen = tokio::time::timeout(WAIT, carol.seen)
        .await
        .unwrap()
        .unwrap();
    let trio_code = carol_seen.codes.last().unwrap().0.clone();
    until_everyone_sees(&mut full, &["alice", "bob"], 1).await;
    // Two seconds on the new keys.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut duo_codes = Vec::new();
    for (m, other) in [(&mut alice, 660.0), (&mut bob, 440.0)] {
        let _ = m.hang_up.take().unwrap().send(());
        let heard = m.sink.tail(1.5);
        let s = share(&heard, other);
        assert!(
            s > 0.4,
            "{} barely hears the other after the leave: {s:.2}",
            m.name
        );
        assert!(share(&heard, 880.0) < 0.05, "{} still hears carol", m.name);
    }
    for (m, other) in [(alice, "bob"), (bob, "alice")] {
        let seen = tokio::time::timeout(WAIT, m.seen).await.unwrap().unwrap();
        // Carol left first; the other may be seen leaving too, as both hang up at the end.
        assert_eq!(
            seen.left.first().map(String::as_str),
            Some("carol"),
            "{}",
            m.name
        );
        assert!(
            seen.left[1..].iter().all(|n| n == other),
            "{}: {:?}",
            m.name,
            seen.left
        );
        let (_, stats) = seen.ended.unwrap();
        assert_eq!(stats.decrypt_failures, 0, "{}", m.name);
        let present: Vec<&str> = stats
            .participants
            .iter()
            .filter(|p| p.present)
            .map(|p| p.name.as_str())
            .collect();
        // The other is still there, unless its hang-up at the end came first.
        let other_left = seen.left.len() > 1;
        assert_eq!(
            present,
            if other_left { vec![] } else { vec![other] },
            "{}: {:?}",
            m.name,
            stats.participants
        );
        // Carol's figures stay, marked as gone.
        assert!(
            stats
                .participants
                .iter()
                .any(|p| p.name == "carol" && !p.present && p.frames_decrypted > 0),
            "{}: {:?}",
            m.name,
            stats.participants
        );
        // A leave replaces the key (on top of what the joins ratcheted).
        assert!(stats.rekeys >= 1, "{}: {}", m.name, stats.rekeys);
        // The code shown over the two of them (a later one covers one member alone).
        let code = seen
            .codes
            .iter()
            .rev()
            .find(|c| c.1 == [other])
            .map(|c| c.0.clone())
            .unwrap_or_else(|| panic!("{}: no code over the two: {:?}", m.name, seen.codes));
        if !other_left {
            assert_eq!(stats.group_safety_code.as_ref(), Some(&code), "{}", m.name);
        }
        assert!(seen.codes.iter().any(|c| c.0 == trio_code), "{}", m.name);
        assert_ne!(code, trio_code, "{}: the code did not change", m.name);
        duo_codes.push(code);
    }
    assert_eq!(duo_codes[0], duo_codes[1]);
}

/// The SFU forgets every member mid-call (their ICE consent fails): each member notices, leaves
/// and joins the SFU again over a new connection with the keys it has, and the three hear each
/// other again with zero decrypt failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reconnect_to_an_sfu_that_lost_them_and_keep_talking() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let sfu = std::sync::Arc::new(forgetful_sfu::ForgetfulSfu::new(TestServer::loopback_sfu()));
    let server = TestServer::start_with_sfu_link(sfu.clone()).await;
    let (full_tx, mut full) = mpsc::unbounded_channel();
    let tones = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];
    let mut members: Vec<Member> = Vec::new();
    for (name, hz) in tones {
        members.push(start(&server, "forgotten", name, hz, full_tx.clone()));
    }
    until_everyone_sees(&mut full, &["alice", "bob", "carol"], 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while full.try_recv().is_ok() {}
    let forgotten = std::time::Instant::now();
    assert_eq!(sfu.forget("forgotten"), 3);
    // Each reports its media connected again (with both others still in its code).
    until_everyone_sees(&mut full, &["alice", "bob", "carol"], 2).await;
    let rejoined = forgotten.elapsed();
    assert_eq!(sfu.seated(), 3);
    // Four seconds after all three are back: the last 2.5 s must carry both others.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for m in &mut members {
        let _ = m.hang_up.take().unwrap().send(());
    }
    for m in members {
        let heard = m.sink.tail(2.5);
        let seen = tokio::time::timeout(WAIT, m.seen).await.unwrap().unwrap();
        let (reason, stats) = seen.ended.expect("ended");
        let lost = seen
            .states
            .iter()
            .find(|(at, s)| *at > forgotten && *s == CallState::Reconnecting)
            .map(|(at, _)| *at - forgotten);
        let again = seen
            .states
            .iter()
            .find(|(at, s)| *at > forgotten && *s == CallState::Connected)
            .map(|(at, _)| *at - forgotten);
        eprintln!(
            "{}: {reason}; reconnecting after {lost:?}, connected again after {again:?} (all seated again after {rejoined:?}); sfu_reconnects {}",
            m.name, stats.sfu_reconnects
        );
        assert_eq!(reason, EndReason::LocalHangup, "{}", m.name);
        assert!(
            lost.is_some() && again.is_some(),
            "{}: {:?}",
            m.name,
            seen.states
        );
        assert!(stats.sfu_reconnects >= 1, "{}", m.name);
        assert_eq!(stats.decrypt_failures, 0, "{}", m.name);
        for (other, hz) in tones {
            let s = share(&heard, hz);
            eprintln!("{} hears {other} ({hz} Hz) at share {s:.2}", m.name);
            if other != m.name {
                assert!(s > 0.2, "{} barely hears {other} after: {s:.2}", m.name);
            }
        }
    }
}

/// What a test waits for: each is reported while the member's media flows.
#[derive(Debug, PartialEq)]
enum Mark {
    /// Two-party keys agreed (a safety code for one peer).
    Pair,
    /// A group code over this many other members.
    Group(usize),
    /// Alone in the room, waiting for someone.
    Waiting,
}

/// A sink that keeps each frame played with the time it was played: a change of mode writes
/// nothing while it lasts, so gaps show in time, not in samples.
#[derive(Clone, Default)]
struct TimedSink(std::sync::Arc<std::sync::Mutex<Vec<TimedFrame>>>);

/// A frame played, and when.
type TimedFrame = (std::time::Instant, Vec<f32>);

impl sotto::media::AudioSink for TimedSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), sotto::media::MediaError> {
        let now = std::time::Instant::now();
        self.0.lock().unwrap().push((now, frame.to_vec()));
        Ok(())
    }
}

impl TimedSink {
    fn tail(&self, seconds: f64) -> Vec<f32> {
        let frames = self.0.lock().unwrap();
        let all: Vec<f32> = frames.iter().flat_map(|f| f.1.iter().copied()).collect();
        let n = ((seconds * 48_000.0) as usize).min(all.len());
        all[all.len() - n..].to_vec()
    }

    /// The longest time after `hz` was first heard during which no frame played carried it.
    fn longest_gap(&self, hz: f64) -> Duration {
        let frames = self.0.lock().unwrap();
        let heard: Vec<std::time::Instant> = frames
            .iter()
            .filter(|(_, f)| tone_ratio(f, 48_000.0, hz) > 0.1)
            .map(|(t, _)| *t)
            .collect();
        heard
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(Duration::MAX)
    }
}

/// Starts `name` in the default mode (two-party, moving to the SFU when a third comes).
fn start_auto(
    server: &TestServer,
    room: &str,
    name: &'static str,
    hz: f64,
    marks: mpsc::UnboundedSender<(&'static str, Mark)>,
) -> Running {
    start_marked(server, room, name, (hz, 0.3), false, marks)
}

/// A member's sink, its hang-up trigger and what it saw.
type Running = (
    TimedSink,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Seen>,
);

/// Starts `name` sending `tone` (Hz, amplitude), as a group member if `group`, reporting
/// marks as it goes.
fn start_marked(
    server: &TestServer,
    room: &str,
    name: &'static str,
    tone: (f64, f32),
    group: bool,
    marks: mpsc::UnboundedSender<(&'static str, Mark)>,
) -> Running {
    let sink = TimedSink::default();
    let mut call = CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(tone.0, tone.1))
        .sink(sink.clone())
        .configure(|c| c.group = group)
        .start()
        .unwrap();
    let (hang_up, mut hang_up_rx) = oneshot::channel::<()>();
    let seen = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut hung_up = false;
        let (mut connected, mut pair_pending, mut last_group) = (false, false, None);
        loop {
            let event = tokio::select! {
                e = call.next_event() => e,
                _ = &mut hang_up_rx, if !hung_up => {
                    hung_up = true;
                    assert_eq!(call.hang_up().await, EndReason::LocalHangup, "{name}");
                    continue;
                }
            };
            let Some(event) = event else { break };
            // Marks go out once media flows: a code shown while connecting waits for it.
            let mut out = Vec::new();
            if matches!(event, CallEvent::SafetyCode(_)) {
                seen.pair_codes += 1;
            }
            match event {
                CallEvent::SafetyCode(_) if connected => out.push(Mark::Pair),
                CallEvent::SafetyCode(_) => pair_pending = true,
                CallEvent::State(CallState::WaitingForPeer) => {
                    connected = false;
                    last_group = None;
                    out.push(Mark::Waiting);
                }
                CallEvent::GroupSafetyCode { code, members, .. } => {
                    last_group = Some(members.len());
                    if connected {
                        out.push(Mark::Group(members.len()));
                    }
                    seen.codes.push((code, members));
                }
                CallEvent::State(CallState::Connected) => {
                    connected = true;
                    if std::mem::take(&mut pair_pending) {
                        out.push(Mark::Pair);
                    }
                    out.extend(last_group.map(Mark::Group));
                }
                CallEvent::State(CallState::Undecryptable) => panic!("{name}: undecryptable"),
                CallEvent::State(CallState::Reconnecting) => {}
                CallEvent::State(_) => {
                    connected = false;
                    last_group = None;
                }
                CallEvent::ParticipantLeft { name } => seen.left.push(name),
                CallEvent::Ended { reason, stats } => seen.ended = Some((reason, stats)),
                _ => {}
            }
            for mark in out {
                let _ = marks.send((name, mark));
            }
        }
        seen
    });
    (sink, hang_up, seen)
}

/// Waits until each of `names` has shown `mark` (marks go out while media flows).
async fn until_marked(
    marks: &mut mpsc::UnboundedReceiver<(&'static str, Mark)>,
    names: &[&str],
    mark: Mark,
) {
    let mut marked: Vec<&str> = Vec::new();
    while !names.iter().all(|n| marked.contains(n)) {
        let (who, m) = tokio::time::timeout(WAIT, marks.recv())
            .await
            .unwrap_or_else(|_| panic!("no {mark:?} in time (marked: {marked:?})"))
            .expect("members running");
        if m == mark {
            marked.push(who);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_party_call_moves_to_the_sfu_when_a_third_comes_and_back_when_it_leaves() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let (marks_tx, mut marks) = mpsc::unbounded_channel();
    let (alice_sink, alice_hang_up, alice) =
        start_auto(&server, "up", "alice", 440.0, marks_tx.clone());
    let (bob_sink, bob_hang_up, bob) = start_auto(&server, "up", "bob", 660.0, marks_tx.clone());
    until_marked(&mut marks, &["alice", "bob"], Mark::Pair).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (carol_sink, carol_hang_up, carol) =
        start_auto(&server, "up", "carol", 880.0, marks_tx.clone());
    until_marked(&mut marks, &["alice", "bob", "carol"], Mark::Group(2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (who, sink, others) in [
        ("alice", &alice_sink, [660.0, 880.0]),
        ("bob", &bob_sink, [440.0, 880.0]),
        ("carol", &carol_sink, [440.0, 660.0]),
    ] {
        let heard = sink.tail(1.5);
        for hz in others {
            let s = share(&heard, hz);
            assert!(s > 0.2, "{who} barely hears {hz} Hz in the group: {s:.2}");
        }
    }
    // Back to two: carol leaves, alice and bob meet again peer to peer.
    let _ = carol_hang_up.send(());
    let carol_seen = tokio::time::timeout(WAIT, carol).await.unwrap().unwrap();
    assert_eq!(carol_seen.ended.unwrap().1.decrypt_failures, 0);
    until_marked(&mut marks, &["alice", "bob"], Mark::Pair).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = alice_hang_up.send(());
    let _ = bob_hang_up.send(());
    for (who, seen, sink, other) in [
        ("alice", alice, &alice_sink, 660.0),
        ("bob", bob, &bob_sink, 440.0),
    ] {
        let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
        let (_, stats) = seen.ended.unwrap();
        assert_eq!(stats.mode, "p2p", "{who} ends two-party");
        assert_eq!(stats.decrypt_failures, 0, "{who}");
        assert_eq!(seen.left, ["carol"], "{who}");
        assert!(
            seen.codes.iter().any(|c| c.1.len() == 2),
            "{who}: {:?}",
            seen.codes
        );
        let heard = sink.tail(1.5);
        assert!(
            share(&heard, other) > 0.4,
            "{who} barely hears {other} Hz after"
        );
        assert!(share(&heard, 880.0) < 0.05, "{who} still hears carol");
        // Through both moves, the other's voice never went missing for more than a second.
        let gap = sink.longest_gap(other);
        eprintln!("{who}: longest gap in {other} Hz: {gap:?}");
        assert!(
            gap <= Duration::from_secs(1),
            "{who}: {other} Hz missing for {gap:?}"
        );
    }
}

/// A member that is always in the group call (`group`, as `--group`) and one that moves
/// between modes, alone together in a room: they meet on the SFU whoever comes first, and a
/// third that comes and goes leaves them there. Neither ever has a two-party call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_and_a_moving_member_meet_on_the_sfu_in_a_room_of_two() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    for (room, group_first) in [("mix-a", true), ("mix-b", false)] {
        let (marks_tx, mut marks) = mpsc::unbounded_channel();
        let first = if group_first { "gina" } else { "paul" };
        let start = |name: &'static str| {
            let (hz, group) = if name == "gina" {
                (440.0, true)
            } else {
                (660.0, false)
            };
            start_marked(&server, room, name, (hz, 0.3), group, marks_tx.clone())
        };
        let a = start(first);
        until_marked(&mut marks, &[first], Mark::Waiting).await;
        let b = start(if group_first { "paul" } else { "gina" });
        let ((gina_sink, gina_hang_up, gina), (paul_sink, paul_hang_up, paul)) =
            if group_first { (a, b) } else { (b, a) };
        until_marked(&mut marks, &["gina", "paul"], Mark::Group(1)).await;
        if group_first {
            // A third comes and goes: paul stays on the SFU with gina.
            let (_, carl_hang_up, carl) =
                start_auto(&server, room, "carl", 880.0, marks_tx.clone());
            until_marked(&mut marks, &["gina", "paul", "carl"], Mark::Group(2)).await;
            let _ = carl_hang_up.send(());
            let carl_seen = tokio::time::timeout(WAIT, carl).await.unwrap().unwrap();
            assert_eq!(carl_seen.ended.unwrap().1.decrypt_failures, 0);
            until_marked(&mut marks, &["gina", "paul"], Mark::Group(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (who, sink, other) in [("gina", &gina_sink, 660.0), ("paul", &paul_sink, 440.0)] {
            let s = share(&sink.tail(1.5), other);
            assert!(s > 0.4, "{room}: {who} barely hears {other} Hz: {s:.2}");
        }
        let _ = gina_hang_up.send(());
        let _ = paul_hang_up.send(());
        for (who, seen) in [("gina", gina), ("paul", paul)] {
            let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
            let (_, stats) = seen.ended.unwrap();
            assert_eq!(stats.mode, "sfu", "{room}: {who} ends on the SFU");
            assert_eq!(stats.decrypt_failures, 0, "{room}: {who}");
            assert_eq!(seen.pair_codes, 0, "{room}: {who} had a two-party call");
            assert!(
                seen.codes.iter().any(|c| c.1.len() == 1),
                "{room}: {who}: {:?}",
                seen.codes
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_never_reaches_steady_members_as_garbage_or_long_gaps() {
    use rand::{Rng, SeedableRng};
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let (marks_tx, mut marks) = mpsc::unbounded_channel();
    let steady_tones = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];
    let mut steady = Vec::new();
    for (name, hz) in steady_tones {
        steady.push((
            name,
            hz,
            start_marked(&server, "churn", name, (hz, 0.3), true, marks_tx.clone()),
        ));
    }
    until_marked(&mut marks, &["alice", "bob", "carol"], Mark::Group(2)).await;
    // Churners join and leave for 20 s, at most three at once. They are quieter, so the SFU
    // keeps forwarding the steady members to each other.
    const CHURN_HZ: f64 = 1320.0;
    const NAMES: [&str; 40] = [
        "c00", "c01", "c02", "c03", "c04", "c05", "c06", "c07", "c08", "c09", "c10", "c11", "c12",
        "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c20", "c21", "c22", "c23", "c24", "c25",
        "c26", "c27", "c28", "c29", "c30", "c31", "c32", "c33", "c34", "c35", "c36", "c37", "c38",
        "c39",
    ];
    let (churn_marks, _ignored) = mpsc::unbounded_channel();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let mut active: Vec<(oneshot::Sender<()>, tokio::task::JoinHandle<Seen>)> = Vec::new();
    let mut done = Vec::new();
    let (mut joins, mut leaves) = (0, 0);
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut next_name = NAMES.iter();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1200))).await;
        let join = active.is_empty() || (active.len() < 3 && rng.random_bool(0.5));
        match next_name.next().filter(|_| join) {
            Some(name) => {
                let (_, hang_up, seen) = start_marked(
                    &server,
                    "churn",
                    name,
                    (CHURN_HZ, 0.05),
                    true,
                    churn_marks.clone(),
                );
                active.push((hang_up, seen));
                joins += 1;
            }
            None if !active.is_empty() => {
                let (hang_up, seen) = active.swap_remove(rng.random_range(0..active.len()));
                let _ = hang_up.send(());
                done.push(seen);
                leaves += 1;
            }
            None => {}
        }
    }
    for (hang_up, seen) in active {
        let _ = hang_up.send(());
        done.push(seen);
    }
    for seen in done {
        tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
    }
    eprintln!("churn: {joins} joins, {leaves} leaves");
    assert!(
        joins >= 8 && leaves >= 5,
        "too little churn: {joins} joins, {leaves} leaves"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let known: Vec<f64> = steady_tones.iter().map(|t| t.1).chain([CHURN_HZ]).collect();
    let mut sinks = Vec::new();
    for (name, hz, (sink, hang_up, seen)) in steady {
        let _ = hang_up.send(());
        let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
        let (_, stats) = seen.ended.unwrap();
        eprintln!("{name}: rekeys {}, {:?}", stats.rekeys, stats.participants);
        assert_eq!(stats.decrypt_failures, 0, "{name}");
        for p in stats.participants.iter().filter(|p| p.name.len() > 3) {
            assert_eq!(p.decrypt_failures, 0, "{name}: {p:?}");
        }
        assert!(
            stats.rekeys >= 8,
            "{name}: {} rekeys through the churn",
            stats.rekeys
        );
        sinks.push((name, hz, sink));
    }
    for (name, hz, sink) in &sinks {
        for (other, other_hz) in steady_tones {
            if other_hz == *hz {
                continue;
            }
            let gap = sink.longest_gap(other_hz);
            eprintln!("{name}: longest gap in {other}'s voice: {gap:?}");
            assert!(
                gap <= Duration::from_secs(1),
                "{name} lost {other} for {gap:?}"
            );
        }
        // Nothing but the members' tones was ever played: no frame opened as noise.
        let frames = sink.0.lock().unwrap();
        let all: Vec<f32> = frames.iter().flat_map(|f| f.1.iter().copied()).collect();
        let mut tonal: Vec<f64> = all
            .chunks_exact(4800)
            .filter(|b| sotto::media::dbfs(b) >= -40.0)
            .map(|b| known.iter().map(|hz| tone_ratio(b, 48_000.0, *hz)).sum())
            .collect();
        tonal.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: tonal share of {} blocks: min {:.2}, p1 {:.2}, p5 {:.2}",
            tonal.len(),
            tonal[0],
            tonal[tonal.len() / 100],
            tonal[tonal.len() / 20]
        );
        // Frames opened as noise would fill many blocks with broadband sound; a tone's onset
        // or a concealed seam touches one block now and then.
        let noisy = tonal.iter().filter(|t| **t < 0.5).count();
        assert!(
            noisy * 50 <= tonal.len(),
            "{name}: {noisy} of {} blocks are not the members' tones",
            tonal.len()
        );
        assert!(
            tonal[tonal.len() / 2] >= 0.95,
            "{name}: median {:.2}",
            tonal[tonal.len() / 2]
        );
    }
}

/// A signaling proxy that lies to whoever connects through it: `hidden` is not in the room.
/// It drops her from `welcome`, drops her `peer_joined` and `peer_left`, and drops every
/// signal between her and the client. Returns its URL.
async fn roster_liar(upstream: String, hidden: &'static str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Ok((server, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await
                else {
                    return;
                };
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let hidden_id = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
                let id = std::sync::Arc::clone(&hidden_id);
                let up = tokio::spawn(async move {
                    while let Some(Ok(m)) = from_client.next().await {
                        if let Message::Text(t) = &m {
                            let v: serde_json::Value =
                                serde_json::from_str(t.as_str()).unwrap_or_default();
                            let hidden = id.lock().unwrap().clone();
                            if hidden.is_some() && v["to"].as_str() == hidden.as_deref() {
                                continue;
                            }
                        }
                        if to_server.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(m)) = from_server.next().await {
                    let m = match &m {
                        Message::Text(t) => {
                            let mut v: serde_json::Value =
                                serde_json::from_str(t.as_str()).unwrap_or_default();
                            let is_hidden = |p: &serde_json::Value| p["name"] == hidden;
                            match v["type"].as_str() {
                                Some("welcome") => {
                                    if let Some(peers) = v["peers"].as_array_mut() {
                                        if let Some(p) = peers.iter().find(|p| is_hidden(p)) {
                                            *hidden_id.lock().unwrap() =
                                                p["peer_id"].as_str().map(str::to_owned);
                                        }
                                        peers.retain(|p| !is_hidden(p));
                                    }
                                }
                                Some("peer_joined") if is_hidden(&v) => {
                                    *hidden_id.lock().unwrap() =
                                        v["peer_id"].as_str().map(str::to_owned);
                                    continue;
                                }
                                Some("peer_left" | "signal") => {
                                    let who = v["peer_id"].as_str().or(v["from"].as_str());
                                    if who.is_some() && who == hidden_id.lock().unwrap().as_deref()
                                    {
                                        continue;
                                    }
                                }
                                _ => {}
                            }
                            Message::text(v.to_string())
                        }
                        other => other.clone(),
                    };
                    if to_client.send(m).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hides_a_member_from_one_member_is_exposed_by_the_codes() {
    let _one = ONE_CALL.lock().await;
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let liar = roster_liar(server.url.clone(), "carol").await;
    let (marks_tx, mut marks) = mpsc::unbounded_channel();
    let alice = start_marked(
        &server,
        "lie",
        "alice",
        (440.0, 0.3),
        true,
        marks_tx.clone(),
    );
    // Bob's view of the room comes through the liar: carol is not there for him.
    let mut liar_server = TestServer::detached();
    liar_server.url = liar;
    let bob = start_marked(
        &liar_server,
        "lie",
        "bob",
        (660.0, 0.3),
        true,
        marks_tx.clone(),
    );
    until_marked(&mut marks, &["alice", "bob"], Mark::Group(1)).await;
    let carol = start_marked(
        &server,
        "lie",
        "carol",
        (880.0, 0.3),
        true,
        marks_tx.clone(),
    );
    until_marked(&mut marks, &["alice"], Mark::Group(2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut codes = Vec::new();
    let mut views = Vec::new();
    for (name, (_, hang_up, seen)) in [("alice", alice), ("bob", bob), ("carol", carol)] {
        let _ = hang_up.send(());
        let seen = tokio::time::timeout(WAIT, seen).await.unwrap().unwrap();
        // The code each showed while everyone was in (the hang-ups change them after).
        let (code, members) = seen
            .codes
            .iter()
            .max_by_key(|c| c.1.len())
            .cloned()
            .unwrap();
        eprintln!("{name} shows {code} over {members:?}");
        let (_, stats) = seen.ended.unwrap();
        assert_eq!(stats.decrypt_failures, 0, "{name}");
        codes.push(code);
        views.push((name, members, stats));
    }
    // Alice sees both; bob was shown a room without carol; carol never completed a handshake
    // with bob. Three rosters, three codes: comparing any two exposes the lie.
    assert_eq!(views[0].1, ["bob", "carol"]);
    assert_eq!(views[1].1, ["alice"]);
    assert_eq!(views[2].1, ["alice"]);
    assert_ne!(codes[0], codes[1]);
    assert_ne!(codes[0], codes[2]);
    // Carol's voice reached bob through the SFU, but he never had her key: nothing of hers was
    // opened or played, and it counts as frames without a key.
    let bob_stats = &views[1].2;
    assert!(bob_stats.unknown_key_frames > 0, "{bob_stats:?}");
    assert!(bob_stats.participants.iter().all(|p| p.name != "carol"));
}
