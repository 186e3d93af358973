//! Calls that survive their signaling going away (issue 18): the client moves to the next
//! server of its list, a two-party call goes on through a rejoin under new peer ids on either
//! side, signaling between the two works again afterwards (an ICE restart is negotiated), and
//! a peer that really vanished still ends the call at once.

#[path = "support/redis.rs"]
mod redis;
#[path = "support/sotto_bin.rs"]
mod sotto_bin;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotto::call::{Call, CallBuilder, CallEvent, CallState, CallStats, EndReason};
use sotto::media::{NullSink, ToneSource};
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use tokio::sync::{mpsc, oneshot, watch};

/// Calls in this binary run one at a time: each is real-time audio on a 2-core machine.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(30);

/// `sotto-signaling` as a process, so it can be killed (SIGKILL) mid-call.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(listen: &str) -> Self {
        Self::start_with(listen, &[])
    }

    fn start_with(listen: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
            .args(["--listen", listen, "--web-dir", "/nonexistent"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // It may print more (the SFU's addresses): read on, so it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line")
            .to_string();
        Server { child, url }
    }

    fn addr(&self) -> String {
        self.url
            .strip_prefix("ws://")
            .and_then(|s| s.strip_suffix("/ws"))
            .unwrap()
            .to_string()
    }

    /// SIGKILL: no close frame, no leave; the kernel drops the connections.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay to `upstream` that the test can cut: its connections end as if the node
/// between the client and the server died.
struct Relay {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                links.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { url, task }
    }

    /// Drops the listener and every connection through it.
    async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What the test asks a running call.
enum Ask {
    Stats(oneshot::Sender<CallStats>),
    Send(String),
    Restart(oneshot::Sender<bool>),
    HangUp,
}

/// A call driven by its own task (events read all along), asked through a channel.
struct Party {
    asks: mpsc::Sender<Ask>,
    state: watch::Receiver<CallState>,
    /// Texts the peer acknowledged.
    delivered: watch::Receiver<u64>,
    ended: tokio::task::JoinHandle<EndReason>,
}

impl Party {
    fn start(builder: CallBuilder) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let call = builder.start().unwrap();
        let (asks, rx) = mpsc::channel(8);
        let (state_tx, state) = watch::channel(CallState::Joining);
        let (delivered_tx, delivered) = watch::channel(0);
        let ended = tokio::spawn(drive(call, rx, state_tx, delivered_tx));
        Party {
            asks,
            state,
            delivered,
            ended,
        }
    }

    async fn reach(&mut self, wanted: CallState) {
        tokio::time::timeout(STEP, self.state.wait_for(|s| *s == wanted))
            .await
            .unwrap_or_else(|_| panic!("never reached {wanted:?}"))
            .unwrap_or_else(|_| panic!("the call ended before {wanted:?}"));
    }

    async fn stats(&self) -> CallStats {
        let (tx, rx) = oneshot::channel();
        self.asks.send(Ask::Stats(tx)).await.unwrap();
        rx.await.unwrap()
    }

    /// Restarts ICE (the initiator only) and says whether the answer came back within `wait`.
    async fn restart(&self, wait: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.asks.send(Ask::Restart(tx)).await.unwrap();
        matches!(tokio::time::timeout(wait, rx).await, Ok(Ok(true)))
    }

    /// Sends a text over the encrypted control channel and waits for the peer's
    /// acknowledgement: the channel works both ways.
    async fn text(&mut self, text: &str) {
        let before = *self.delivered.borrow();
        self.asks.send(Ask::Send(text.to_owned())).await.unwrap();
        tokio::time::timeout(STEP, self.delivered.wait_for(|n| *n > before))
            .await
            .expect("the text was never acknowledged")
            .unwrap();
    }

    async fn hang_up(self) -> EndReason {
        self.asks.send(Ask::HangUp).await.unwrap();
        self.end().await
    }

    async fn end(self) -> EndReason {
        tokio::time::timeout(STEP, self.ended)
            .await
            .expect("the call did not end")
            .unwrap()
    }
}

async fn drive(
    mut call: Call,
    mut asks: mpsc::Receiver<Ask>,
    state: watch::Sender<CallState>,
    delivered: watch::Sender<u64>,
) -> EndReason {
    loop {
        tokio::select! {
            event = call.next_event() => match event {
                Some(CallEvent::State(s)) => {
                    let _ = state.send(s);
                }
                Some(CallEvent::Ended { reason, .. }) => {
                    eprintln!("call ended: {reason}");
                    let _ = state.send(CallState::Ended);
                    return reason;
                }
                Some(CallEvent::Chat(sotto::messages::ChatEvent::Delivered { .. })) => {
                    delivered.send_modify(|n| *n += 1);
                }
                Some(_) => {}
                None => return call.ended().await,
            },
            ask = asks.recv() => match ask {
                Some(Ask::Stats(tx)) => {
                    let _ = tx.send(call.stats());
                }
                Some(Ask::Send(text)) => {
                    call.send_message(&text).await.unwrap();
                }
                // The restart's answer is awaited aside, so events keep being read.
                Some(Ask::Restart(tx)) => {
                    let answer = call.restart_ice_for_tests().await;
                    tokio::spawn(async move {
                        let _ = tx.send(answer.await.unwrap_or(false));
                    });
                }
                Some(Ask::HangUp) | None => return call.hang_up().await,
            },
        }
    }
}

async fn joined(events: &mut mpsc::Receiver<SignalEvent>) {
    loop {
        match tokio::time::timeout(STEP, events.recv()).await.unwrap() {
            Some(SignalEvent::Joined { .. }) => break,
            Some(SignalEvent::Closed { reason }) => panic!("gave up: {reason}"),
            Some(_) => {}
            None => panic!("client stopped"),
        }
    }
}

fn party(url: &str, fallbacks: &[&str], room: &str, name: &str, hz: f64) -> CallBuilder {
    CallBuilder::new(url, room)
        .fallback_servers(fallbacks.iter().copied())
        .name(name)
        .source(ToneSource::new(hz, 0.3))
        .sink(NullSink::default())
        .configure(|c| c.transport.udp_addrs = vec!["127.0.0.1:0".into()])
}

/// Alice joins first and waits, so Bob initiates (and restarts ICE); both connected.
async fn connected_call(alice: CallBuilder, bob: CallBuilder) -> (Party, Party) {
    let mut alice = Party::start(alice);
    alice.reach(CallState::WaitingForPeer).await;
    let mut bob = Party::start(bob);
    alice.reach(CallState::Connected).await;
    bob.reach(CallState::Connected).await;
    // Mid-call: a second of audio each way.
    let flowing = Instant::now() + STEP;
    while alice.stats().await.frames_decrypted < 50 || bob.stats().await.frames_decrypted < 50 {
        assert!(Instant::now() < flowing, "media did not flow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (alice, bob)
}

/// Decrypted frames as seen every 20 ms: the longest time they did not grow, and the total.
struct Flow {
    longest_gap: Duration,
    last_count: u64,
    last_change: Instant,
}

impl Flow {
    async fn start(p: &Party) -> Self {
        Flow {
            longest_gap: Duration::ZERO,
            last_count: p.stats().await.frames_decrypted,
            last_change: Instant::now(),
        }
    }

    async fn sample(&mut self, p: &Party) {
        let s = p.stats().await;
        assert_eq!(s.decrypt_failures, 0, "frames failed to decrypt");
        let now = Instant::now();
        if s.frames_decrypted > self.last_count {
            self.last_count = s.frames_decrypted;
            self.last_change = now;
        }
        self.longest_gap = self.longest_gap.max(now - self.last_change);
    }
}

/// A third client in the room that notes when each member (re)joined it.
struct Watcher {
    _client: SignalClient,
    joined: watch::Receiver<std::collections::HashMap<String, Instant>>,
}

impl Watcher {
    fn start(url: &str, room: &str) -> Self {
        let mut config = SignalConfig::new(url, room, "watcher");
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(100);
        let (client, mut events) = SignalClient::connect(config);
        let (tx, joined) = watch::channel(std::collections::HashMap::new());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let now = Instant::now();
                match event {
                    SignalEvent::Joined { peers, .. } => tx.send_modify(|m| {
                        for p in peers {
                            m.insert(p.name, now);
                        }
                    }),
                    SignalEvent::PeerJoined(p) => tx.send_modify(|m| {
                        m.insert(p.name, now);
                    }),
                    _ => {}
                }
            }
        });
        Watcher {
            _client: client,
            joined,
        }
    }

    /// Waits until it sees every one of `names` in the room.
    async fn sees(&mut self, names: &[&str]) {
        tokio::time::timeout(
            STEP,
            self.joined
                .wait_for(|m| names.iter().all(|n| m.contains_key(*n))),
        )
        .await
        .expect("the watcher never saw everyone")
        .unwrap();
    }

    /// Whether every one of `names` joined after `since`, and when the last did.
    fn back(&self, names: &[&str], since: Instant) -> Option<Instant> {
        let joined = self.joined.borrow();
        names
            .iter()
            .map(|n| joined.get(*n).copied().filter(|t| *t > since))
            .collect::<Option<Vec<_>>>()
            .and_then(|times| times.into_iter().max())
    }
}

/// What one outage cost.
struct Outage {
    /// Until the `movers` were in the room again (as a third client saw it).
    rejoined: Duration,
    /// Until an ICE restart (signaling both ways, at the new ids) was answered.
    restarted: Duration,
    /// The longest stretch without a decrypted frame, on each side, until they were back.
    gap_alice: Duration,
    gap_bob: Duration,
    /// The same from then on, through the restart.
    restart_gap_alice: Duration,
    restart_gap_bob: Duration,
}

/// After the outage began at `since`: samples both sides' media until the `movers` are back in
/// the room, then has Bob restart ICE until a restart is answered; media must flow after it.
async fn until_signaling_works(
    alice: &Party,
    bob: &Party,
    since: Instant,
    watcher: &Watcher,
    movers: &[&str],
) -> Outage {
    let mut a = Flow::start(alice).await;
    let mut b = Flow::start(bob).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rejoined = loop {
        assert!(Instant::now() < deadline, "they never rejoined the room");
        if let Some(at) = watcher.back(movers, since) {
            break at - since;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.sample(alice).await;
        b.sample(bob).await;
    };
    let gaps = (a.longest_gap, b.longest_gap);
    a.longest_gap = Duration::ZERO;
    b.longest_gap = Duration::ZERO;
    let worked = loop {
        assert!(Instant::now() < deadline, "signaling never came back");
        // An offer to an id that is gone is not answered: the next one replaces it (after
        // as long as the engine's own restarts wait for an answer).
        let attempt = Instant::now();
        let restart = bob.restart(Duration::from_secs(5));
        tokio::pin!(restart);
        let mut answered = None;
        // Not sent (Bob not in the room yet): the next try a little later.
        while answered.is_none() || attempt.elapsed() < Duration::from_millis(200) {
            tokio::select! {
                ok = &mut restart, if answered.is_none() => answered = Some(ok),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    a.sample(alice).await;
                    b.sample(bob).await;
                }
            }
            if answered == Some(true) {
                break;
            }
        }
        if answered == Some(true) {
            break since.elapsed();
        }
    };
    // Media goes on after the restart too.
    let count = (a.last_count, b.last_count);
    let more = Instant::now() + STEP;
    while a.last_count < count.0 + 25 || b.last_count < count.1 + 25 {
        assert!(Instant::now() < more, "media stopped after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.sample(alice).await;
        b.sample(bob).await;
    }
    Outage {
        rejoined,
        restarted: worked,
        gap_alice: gaps.0,
        gap_bob: gaps.1,
        restart_gap_alice: a.longest_gap,
        restart_gap_bob: b.longest_gap,
    }
}

fn report(what: &str, o: &Outage) {
    eprintln!(
        "FIGURES {what}: back in the room after {} ms, ICE restart answered after {} ms; \
         longest media gap until back alice {} ms, bob {} ms; through the restart alice {} ms, \
         bob {} ms",
        o.rejoined.as_millis(),
        o.restarted.as_millis(),
        o.gap_alice.as_millis(),
        o.gap_bob.as_millis(),
        o.restart_gap_alice.as_millis(),
        o.restart_gap_bob.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_moves_to_the_next_server_of_its_list() {
    // The first server of the list is not there at all: the second one is used.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/ws", l.local_addr().unwrap())
    };
    let mut a = Server::start("127.0.0.1:0");
    let b = Server::start("127.0.0.1:0");
    let mut config = SignalConfig::new(dead, "r", "alice");
    config.fallback_urls = vec![a.url.clone(), b.url.clone()];
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    config.max_attempts = Some(3);
    config.retry_forever_once_joined = true;
    let (_alice, mut events) = SignalClient::connect(config);
    joined(&mut events).await;
    // She is on `a`: a watcher there sees her.
    let (_w, mut watch_a) = SignalClient::connect(SignalConfig::new(a.url.clone(), "r", "w"));
    match tokio::time::timeout(STEP, watch_a.recv()).await.unwrap() {
        Some(SignalEvent::Joined { peers, .. }) => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].name, "alice");
        }
        other => panic!("{other:?}"),
    }
    // `a` dies: she goes on to `b` (and, once joined, more failures than max_attempts are
    // allowed: the dead first URL is tried again on the way).
    a.kill();
    joined(&mut events).await;
    let (_v, mut watch_b) = SignalClient::connect(SignalConfig::new(b.url.clone(), "r", "v"));
    match tokio::time::timeout(STEP, watch_b.recv()).await.unwrap() {
        Some(SignalEvent::Joined { peers, .. }) => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].name, "alice");
        }
        other => panic!("{other:?}"),
    }
}

/// Bob's signaling connection alone drops (the node between him and the room died): Alice
/// hears `peer_left` for his id while his media still flows, and the call goes on; Bob rejoins
/// through his fallback URL under a new id and says so over the sealed control channel; an
/// ICE restart from Bob is then answered by Alice at his new id; a hang-up ends both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_on_when_one_side_rejoins_signaling_under_a_new_id() {
    let _one = ONE_CALL.lock().await;
    let server = Server::start("127.0.0.1:0");
    let relay = Relay::start(server.addr()).await;
    let (mut alice, mut bob) = connected_call(
        party(&server.url, &[], "one-side", "alice", 440.0),
        party(&relay.url, &[&server.url], "one-side", "bob", 660.0),
    )
    .await;
    let mut watcher = Watcher::start(&server.url, "one-side");
    watcher.sees(&["alice", "bob"]).await;
    let cut = Instant::now();
    relay.cut().await;
    let outage = until_signaling_works(&alice, &bob, cut, &watcher, &["bob"]).await;
    report("one side rejoined", &outage);
    assert!(
        alice.stats().await.ice_restarts >= 1,
        "the restart reached alice"
    );
    // The encrypted control channel works both ways after the move.
    alice.text("still here").await;
    bob.text("me too").await;
    assert_eq!(alice.hang_up().await, EndReason::LocalHangup);
    assert_eq!(bob.end().await, EndReason::RemoteHangup);
}

/// The signaling server is killed (SIGKILL) mid-call and a new one starts on the same port:
/// both sides rejoin under new ids, media never stops, and signaling between them works
/// again (an ICE restart); a hang-up ends both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_its_signaling_server_being_killed_and_replaced() {
    let _one = ONE_CALL.lock().await;
    let mut server = Server::start("127.0.0.1:0");
    let addr = server.addr();
    let (mut alice, mut bob) = connected_call(
        party(&server.url, &[], "killed", "alice", 440.0),
        party(&server.url, &[], "killed", "bob", 660.0),
    )
    .await;
    let killed = Instant::now();
    server.kill();
    let server = Server::start(&addr);
    let watcher = Watcher::start(&server.url, "killed");
    let outage = until_signaling_works(&alice, &bob, killed, &watcher, &["alice", "bob"]).await;
    report("server killed and replaced", &outage);
    assert!(
        alice.stats().await.ice_restarts >= 1,
        "the restart reached alice"
    );
    // The encrypted control channel works both ways after the move.
    alice.text("still here").await;
    bob.text("me too").await;
    assert_eq!(bob.hang_up().await, EndReason::LocalHangup);
    assert_eq!(alice.end().await, EndReason::RemoteHangup);
}

/// The same through a second server given as the fallback: the first is killed, both move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moves_to_the_fallback_server_when_its_server_is_killed() {
    let _one = ONE_CALL.lock().await;
    let mut first = Server::start("127.0.0.1:0");
    let second = Server::start("127.0.0.1:0");
    let (mut alice, mut bob) = connected_call(
        party(&first.url, &[&second.url], "moved", "alice", 440.0),
        party(&first.url, &[&second.url], "moved", "bob", 660.0),
    )
    .await;
    let killed = Instant::now();
    first.kill();
    let watcher = Watcher::start(&second.url, "moved");
    let outage = until_signaling_works(&alice, &bob, killed, &watcher, &["alice", "bob"]).await;
    report("moved to the fallback server", &outage);
    // The encrypted control channel works both ways after the move.
    alice.text("still here").await;
    bob.text("me too").await;
    assert_eq!(alice.hang_up().await, EndReason::LocalHangup);
    assert_eq!(bob.end().await, EndReason::RemoteHangup);
}

/// A peer that really vanishes (its process killed: no hang-up, no media) still ends the
/// call on `peer_left`, not after the 30 s a lost path gets. (Its `sotto call --server` lists
/// a dead node first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_still_ends_the_call_on_peer_left() {
    let _one = ONE_CALL.lock().await;
    let server = Server::start("127.0.0.1:0");
    let mut alice = Party::start(party(&server.url, &[], "vanish", "alice", 440.0));
    alice.reach(CallState::WaitingForPeer).await;
    let dir = std::env::temp_dir().join(format!("sotto-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Bob's CLI is given a dead node first: it goes on to the next of its list.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}/ws", l.local_addr().unwrap())
    };
    let servers = format!("{dead},{}", server.url);
    let mut bob = Command::new(sotto_bin::sotto_bin())
        .args([
            "call", "--server", &servers, "--room", "vanish", "--name", "bob",
        ])
        .args([
            "--bind",
            "127.0.0.1:0",
            "--tone",
            "660",
            "--duration",
            "120",
        ])
        .arg("--identity")
        .arg(dir.join("bob-identity.json"))
        .arg("--output")
        .arg(dir.join("bob.wav"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    alice.reach(CallState::Connected).await;
    // Media flows both ways before the kill.
    let start = alice.stats().await.frames_decrypted;
    let flowing = Instant::now() + STEP;
    while alice.stats().await.frames_decrypted < start + 25 {
        assert!(Instant::now() < flowing, "no media from bob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.kill().unwrap();
    bob.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(alice.end().await, EndReason::PeerLeft);
}

/// Frames each member decrypted of each other present member, by (observer, name).
async fn group_flow(
    members: &[(&str, &Party)],
) -> std::collections::HashMap<(String, String), u64> {
    let mut flow = std::collections::HashMap::new();
    for (who, p) in members {
        for other in p.stats().await.participants {
            if other.present {
                flow.insert(((*who).to_owned(), other.name), other.frames_decrypted);
            }
        }
    }
    flow
}

/// Until every member decrypts every other one's audio (more frames over a fifth of a second).
async fn until_everyone_hears_everyone(members: &[(&str, &Party)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the group never heard everyone again"
        );
        let before = group_flow(members).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = group_flow(members).await;
        let all = members.iter().all(|(who, _)| {
            members.iter().filter(|(o, _)| o != who).all(|(other, _)| {
                let key = ((*who).to_owned(), (*other).to_owned());
                let was = before.get(&key).copied().unwrap_or(0);
                after.get(&key).is_some_and(|now| *now >= was + 4)
            })
        });
        if all {
            return;
        }
    }
}

/// A group call member whose signaling drops alone (the SFU stays) rejoins under a new id and
/// is in the call again: everyone hears everyone, with no decrypt failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_whose_signaling_rejoins_is_in_the_call_again() {
    let _one = ONE_CALL.lock().await;
    let server = Server::start_with("127.0.0.1:0", &["--sfu"]);
    let relay = Relay::start(server.addr()).await;
    let group = |b: CallBuilder| b.configure(|c| c.group = true);
    let mut alice = Party::start(group(party(&server.url, &[], "g", "alice", 440.0)));
    alice.reach(CallState::WaitingForPeer).await;
    let bob = Party::start(group(party(&server.url, &[], "g", "bob", 550.0)));
    let carol = Party::start(group(party(
        &relay.url,
        &[&server.url],
        "g",
        "carol",
        660.0,
    )));
    let members = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
    until_everyone_hears_everyone(&members).await;
    // Carol's own count (every member's frames, counted as they decrypt) shows her gap; the
    // per-member figures are published once a second.
    let mut heard = Flow::start(&carol).await;
    let cut = Instant::now();
    relay.cut().await;
    let resumed = Instant::now() + STEP;
    let at_cut = heard.last_count;
    // Three seconds of two voices.
    while heard.last_count < at_cut + 300 {
        assert!(
            Instant::now() < resumed,
            "carol never heard the group again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        heard.sample(&carol).await;
    }
    until_everyone_hears_everyone(&members).await;
    eprintln!(
        "FIGURES group member rejoined: carol's longest gap {} ms; everyone's figures show \
         everyone again after {} ms",
        heard.longest_gap.as_millis(),
        cut.elapsed().as_millis()
    );
    for (who, p) in &members {
        let s = p.stats().await;
        assert_eq!(s.decrypt_failures, 0, "{who}");
    }
    assert_eq!(alice.hang_up().await, EndReason::LocalHangup);
    assert_eq!(bob.hang_up().await, EndReason::LocalHangup);
    assert_eq!(carol.hang_up().await, EndReason::LocalHangup);
}

/// Before any media, a call still gives up on signaling that stays gone (once in a call it
/// keeps trying): one waiting for its peer ends when its server dies and never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_its_peer_gives_up_when_signaling_stays_gone() {
    let _one = ONE_CALL.lock().await;
    for group in [false, true] {
        let mut server = Server::start_with("127.0.0.1:0", &["--sfu"]);
        let mut alice = Party::start(
            party(&server.url, &[], "alone", "alice", 440.0).configure(|c| c.group = group),
        );
        alice.reach(CallState::WaitingForPeer).await;
        server.kill();
        match alice.end().await {
            EndReason::SignalingFailed(why) => assert!(why.contains("gave up"), "{why}"),
            other => panic!("group {group}: {other:?}"),
        }
    }
}

/// Two nodes sharing the room through Redis (issue 18): the node of one side is killed
/// (SIGKILL) mid-call. That side moves to the other node of its list; the server reaps its
/// old member about 3 s later (the other side hears `peer_left` while the media flows, and
/// the move is refused as `name_taken` until then); the call goes on, an ICE restart is
/// negotiated at the new id, and a hang-up ends both. Once with each side's node killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_the_node_of_one_side_being_killed() {
    let _one = ONE_CALL.lock().await;
    let Some(redis) = redis::Redis::start() else {
        return;
    };
    for (round, killed) in ["alice", "bob"].into_iter().enumerate() {
        let mut a = Server::start_with("127.0.0.1:0", &["--redis", &redis.url]);
        let mut b = Server::start_with("127.0.0.1:0", &["--redis", &redis.url]);
        let room = format!("cluster-{round}");
        let (mut alice, mut bob) = connected_call(
            party(&a.url, &[&b.url], &room, "alice", 440.0),
            party(&b.url, &[&a.url], &room, "bob", 660.0),
        )
        .await;
        let survivor = if killed == "alice" { &b.url } else { &a.url };
        let mut watcher = Watcher::start(survivor, &room);
        watcher.sees(&["alice", "bob"]).await;
        let at = Instant::now();
        if killed == "alice" {
            a.kill();
        } else {
            b.kill();
        }
        let outage = until_signaling_works(&alice, &bob, at, &watcher, &[killed]).await;
        report(&format!("{killed}'s node killed (cluster)"), &outage);
        // The encrypted control channel works both ways after the move.
        alice.text("still here").await;
        bob.text("me too").await;
        assert_eq!(alice.hang_up().await, EndReason::LocalHangup);
        assert_eq!(bob.end().await, EndReason::RemoteHangup);
    }
}
