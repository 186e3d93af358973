//! `sotto-sfu --signaling`: SFU processes attached to a signaling hub that has no SFU of its
//! own. Rooms are pinned to one of them, members reach it as the peer `sfu`, a killed SFU's
//! rooms hear `peer_left` for `sfu`, and the hub shrugs off garbage and unauthenticated
//! attaches.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::Client;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto_signaling::token::{mint, unix_now};
use sotto_signaling::{App, ServerConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &[u8] = b"attach-test-secret";
const WAIT: Duration = Duration::from_secs(60);

/// A hub in this process, with a secret and no SFU of its own.
struct Hub {
    app: Arc<App>,
    url: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn hub_with(secret: Option<&[u8]>) -> Hub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = ServerConfig {
        secret: secret.map(<[u8]>::to_vec),
        ..ServerConfig::default()
    };
    let app = App::new(config, shutdown.clone());
    tokio::spawn(sotto_signaling::serve(listener, app.clone()));
    Hub { app, url, shutdown }
}

async fn hub() -> Hub {
    hub_with(Some(SECRET)).await
}

fn token(room: &str, name: &str) -> String {
    mint(SECRET, room, name, unix_now() + 3600)
}

fn sfu_token() -> String {
    token("", "sfu")
}

/// A `sotto-sfu --signaling` process, killed when dropped.
struct SfuProcess {
    child: Child,
    /// Its workers' media ports.
    ports: Vec<u16>,
}

impl SfuProcess {
    fn start(url: &str, token: &str) -> SfuProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-sfu"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--signaling",
                url,
            ])
            .args(["--token", token])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addrs = line
            .trim()
            .strip_prefix("sfu media on udp ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let ports = addrs
            .split(',')
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap().port())
            .collect();
        SfuProcess { child, ports }
    }
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the hub counts `n` attached SFUs.
async fn until_attached(hub: &Hub, n: usize) {
    tokio::time::timeout(WAIT, async {
        while hub.app.sfus.attached() != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} SFUs attached in time"));
}

/// Runs `sotto-sfu` with `args` and returns its exit status and standard error; panics if it
/// is still running after a minute (it must stop by itself on these errors, not retry).
async fn sfu_exit(args: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-sfu"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sotto-sfu {args:?} did not stop by itself");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client of the hub.
struct Peer {
    ws: Ws,
}

impl Peer {
    async fn connect(hub: &Hub) -> Peer {
        let (ws, _) = tokio_tungstenite::connect_async(&hub.url).await.unwrap();
        Peer { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text message (pings are answered by the library).
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("connection open")
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    async fn expect_type(&mut self, kind: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], kind, "{v}");
        v
    }

    async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect_type("error").await;
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Joins `room` as `name`; returns the welcome.
    async fn join(hub: &Hub, room: &str, name: &str) -> (Peer, Value) {
        let mut p = Peer::connect(hub).await;
        p.send(json!({"v":1,"type":"join","room":room,"name":name,"token":token(room, name)}))
            .await;
        let welcome = p.expect_type("welcome").await;
        (p, welcome)
    }

    async fn offer(&mut self, sdp: &str) {
        self.send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_offer","sdp":sdp}}))
            .await;
    }

    /// Offers a real offer and returns the port of the SFU worker that answered it.
    async fn offer_and_get_port(&mut self, kid: u64) -> (Client, u16) {
        let (client, offer) = Client::new(kid, 3, 20).await;
        self.offer(&offer).await;
        let answer = self.expect_type("signal").await;
        assert_eq!(answer["from"], "sfu", "{answer}");
        assert_eq!(answer["data"]["kind"], "sfu_answer", "{answer}");
        let sdp = answer["data"]["sdp"].as_str().unwrap();
        (client, candidate_port(sdp))
    }
}

/// The port of the (first) host candidate in an SDP answer.
fn candidate_port(sdp: &str) -> u16 {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .unwrap_or_else(|| panic!("no candidate in {sdp}"));
    // foundation component transport priority address port typ host
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

fn which(sfus: &[&SfuProcess], port: u16) -> usize {
    sfus.iter()
        .position(|s| s.ports.contains(&port))
        .unwrap_or_else(|| panic!("port {port} is no attached SFU's"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_go_to_two_attached_sfus_and_a_room_stays_on_its_sfu() {
    let hub = hub().await;
    let one = SfuProcess::start(&hub.url, &sfu_token());
    let two = SfuProcess::start(&hub.url, &sfu_token());
    until_attached(&hub, 2).await;
    let sfus = [&one, &two];

    let (mut alice, welcome) = Peer::join(&hub, "red", "alice").await;
    assert_eq!(welcome["sfu"], true, "{welcome}");
    let (_a, port_red) = alice.offer_and_get_port(0).await;
    let (mut carol, _) = Peer::join(&hub, "blue", "carol").await;
    let (_c, port_blue) = carol.offer_and_get_port(1).await;
    let (red, blue) = (which(&sfus, port_red), which(&sfus, port_blue));
    assert_ne!(red, blue, "both rooms went to one SFU");

    // A second member of red goes where red is, although the other SFU is as loaded.
    let (mut bob, _) = Peer::join(&hub, "red", "bob").await;
    let _ = alice.expect_type("peer_joined").await;
    let (_b, port_bob) = bob.offer_and_get_port(2).await;
    assert_eq!(which(&sfus, port_bob), red);

    let metrics = hub.app.metrics.render();
    assert!(
        metrics.contains("sotto_signaling_sfus_attached 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sfu_is_left_by_its_rooms_and_they_rejoin_on_another() {
    let hub = hub().await;
    let mut sfus = vec![
        SfuProcess::start(&hub.url, &sfu_token()),
        SfuProcess::start(&hub.url, &sfu_token()),
    ];
    until_attached(&hub, 2).await;
    let (mut alice, _) = Peer::join(&hub, "red", "alice").await;
    let (mut bob, _) = Peer::join(&hub, "red", "bob").await;
    let _ = alice.expect_type("peer_joined").await;
    let (_a, port) = alice.offer_and_get_port(0).await;
    let (_b, _) = bob.offer_and_get_port(1).await;
    // A room elsewhere, on the other SFU, which must not hear anything.
    let (mut dave, _) = Peer::join(&hub, "blue", "dave").await;
    let (_d, _) = dave.offer_and_get_port(3).await;

    let red = which(&sfus.iter().collect::<Vec<_>>(), port);
    drop(sfus.remove(red));
    for member in [&mut alice, &mut bob] {
        let left = member.expect_type("peer_left").await;
        assert_eq!(left["peer_id"], "sfu", "{left}");
    }
    until_attached(&hub, 1).await;
    // Dave's SFU is still there: his next message is the pong to his ping.
    dave.send(json!({"v":1,"type":"ping"})).await;
    dave.expect_type("pong").await;

    // Offering again lands on the SFU that is left.
    let (_a2, port) = alice.offer_and_get_port(4).await;
    assert!(
        sfus[0].ports.contains(&port),
        "{port} vs {:?}",
        sfus[0].ports
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_attach_needs_an_sfu_token_on_a_server_with_a_secret() {
    let hub = hub().await;
    let mut p = Peer::connect(&hub).await;
    p.send(json!({"v":1,"type":"sfu_attach","capacity":10}))
        .await;
    p.expect_error("bad_token").await;
    // A member's token, even for the name `sfu`, is not an SFU's.
    p.send(json!({"v":1,"type":"sfu_attach","capacity":10,"token":token("sfu", "sfu")}))
        .await;
    p.expect_error("bad_token").await;
    p.send(json!({"v":1,"type":"sfu_attach","capacity":0,"token":sfu_token()}))
        .await;
    p.expect_error("bad_message").await;
    // A member in a room cannot become an SFU.
    let (mut alice, welcome) = Peer::join(&hub, "red", "alice").await;
    assert!(welcome.get("sfu").is_none(), "{welcome}");
    alice
        .send(json!({"v":1,"type":"sfu_attach","capacity":10,"token":sfu_token()}))
        .await;
    alice.expect_error("already_joined").await;
    alice.offer("v=0").await;
    alice.expect_error("no_sfu").await;
    assert_eq!(hub.app.sfus.attached(), 0);

    // The right token attaches; an attached SFU may not join a room.
    p.send(json!({"v":1,"type":"sfu_attach","capacity":10,"token":sfu_token()}))
        .await;
    p.expect_type("sfu_attached").await;
    assert_eq!(hub.app.sfus.attached(), 1);
    p.send(
        json!({"v":1,"type":"join","room":"red","name":"mallory","token":token("red", "mallory")}),
    )
    .await;
    p.expect_error("already_joined").await;

    // A server without a secret takes no SFU at all.
    let open = hub_with(None).await;
    let mut q = Peer::connect(&open).await;
    q.send(json!({"v":1,"type":"sfu_attach","capacity":10,"token":sfu_token()}))
        .await;
    q.expect_error("bad_token").await;
    assert_eq!(open.app.sfus.attached(), 0);

    // The process exits at once, with the reason, when its token is refused.
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let url = std::ffi::OsString::from(&hub.url);
    let (status, stderr) = sfu_exit(&[os("--signaling"), &url, os("--token"), os("v1.1.00")]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("refused to attach this SFU: bad_token"),
        "{stderr}"
    );
    let (status, stderr) = sfu_exit(&[
        os("--signaling"),
        os("http://example.org/ws"),
        os("--token"),
        os("t"),
    ])
    .await;
    assert!(!status.success());
    assert!(stderr.contains("bad --signaling URL"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_attached_sfu_does_not_disturb_the_hub() {
    let hub = hub().await;
    // A fake SFU, to send what a real one would not.
    let mut sfu = Peer::connect(&hub).await;
    sfu.send(json!({"v":1,"type":"sfu_attach","capacity":4,"token":sfu_token()}))
        .await;
    sfu.expect_type("sfu_attached").await;
    let (mut alice, welcome) = Peer::join(&hub, "red", "alice").await;
    assert_eq!(welcome["sfu"], true, "{welcome}");
    let alice_id = welcome["peer_id"].as_str().unwrap().to_owned();
    let (mut bob, welcome) = Peer::join(&hub, "red", "bob").await;
    let bob_id = welcome["peer_id"].as_str().unwrap().to_owned();
    let _ = alice.expect_type("peer_joined").await;

    alice.offer("v=0 alice").await;
    let forwarded = sfu.expect_type("signal").await;
    assert_eq!(forwarded["from"], alice_id.as_str(), "{forwarded}");
    assert_eq!(
        forwarded["data"],
        json!({"kind":"sfu_offer","room":"red","sdp":"v=0 alice"})
    );

    // Garbage of every kind; each is refused or dropped, and the SFU stays attached.
    sfu.ws
        .send(Message::binary(vec![0xffu8; 64]))
        .await
        .unwrap();
    sfu.expect_error("bad_message").await;
    sfu.ws.send(Message::text("{not json")).await.unwrap();
    sfu.expect_error("bad_json").await;
    sfu.send(json!({"v":1,"type":"hello"})).await;
    sfu.expect_error("unknown_type").await;
    sfu.send(json!({"v":1,"type":"leave"})).await;
    sfu.expect_error("bad_message").await;
    sfu.send(json!({"v":1,"type":"signal","data":{"kind":"sfu_answer","room":"red","sdp":"x"}}))
        .await;
    sfu.expect_error("bad_message").await;
    sfu.send(json!({"v":1,"type":"signal","to":alice_id,"data":{"kind":"offer","sdp":"x"}}))
        .await;
    sfu.expect_error("bad_message").await;
    sfu.send(json!({"v":1,"type":"signal","to":alice_id,"data":[1,2,[3,{"a":null}]]}))
        .await;
    sfu.expect_error("bad_message").await;
    sfu.send(json!({"v":1,"type":"sfu_attach","capacity":4,"token":sfu_token()}))
        .await;
    sfu.expect_error("already_joined").await;
    // Answers for a room that is not its own, and for a member who did not offer, go nowhere.
    sfu.send(json!({"v":1,"type":"signal","to":alice_id,"data":{"kind":"sfu_answer","room":"blue","sdp":"x"}}))
        .await;
    sfu.send(json!({"v":1,"type":"signal","to":bob_id,"data":{"kind":"sfu_answer","room":"red","sdp":"for bob"}}))
        .await;
    sfu.send(json!({"v":1,"type":"signal","to":"p0000000000000000","data":{"kind":"sfu_answer","room":"red","sdp":"x"}}))
        .await;
    // The real answer reaches alice, as the in-process SFU's would.
    sfu.send(json!({"v":1,"type":"signal","to":alice_id,"data":{"kind":"sfu_answer","room":"red","sdp":"v=0 answer"}}))
        .await;
    let answer = alice.expect_type("signal").await;
    assert_eq!(answer["from"], "sfu");
    assert_eq!(
        answer["data"],
        json!({"kind":"sfu_answer","sdp":"v=0 answer"})
    );
    // Bob got nothing from the SFU: his next message is the pong.
    bob.send(json!({"v":1,"type":"ping"})).await;
    bob.expect_type("pong").await;
    sfu.send(json!({"v":1,"type":"ping"})).await;
    sfu.expect_type("pong").await;
    assert_eq!(hub.app.sfus.attached(), 1);
    assert!(
        hub.app
            .metrics
            .render()
            .contains("sotto_signaling_sfu_bad_messages_total 10")
    );

    // Leaves travel with the room; a refusal comes back as `sfu_refused` with a known reason.
    alice
        .send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_leave"}}))
        .await;
    let leave = sfu.expect_type("signal").await;
    assert_eq!(leave["from"], alice_id.as_str());
    assert_eq!(leave["data"], json!({"kind":"sfu_leave","room":"red"}));
    alice.offer("v=0 again").await;
    let _ = sfu.expect_type("signal").await;
    sfu.send(json!({"v":1,"type":"signal","to":alice_id,"data":{"kind":"sfu_refused","room":"red","reason":"<script>","message":"full\u{1b}[2J of \n rooms"}}))
        .await;
    let refused = alice.expect_error("sfu_refused").await;
    assert_eq!(refused["message"], "unavailable: full[2J of  rooms");

    // Bob is seated, so the room stays on this SFU.
    bob.offer("v=0 bob").await;
    let forwarded = sfu.expect_type("signal").await;
    assert_eq!(forwarded["from"], bob_id.as_str(), "{forwarded}");

    // When the SFU goes, the room hears that `sfu` left; a member's next offer finds no SFU.
    drop(sfu);
    for member in [&mut alice, &mut bob] {
        let left = member.expect_type("peer_left").await;
        assert_eq!(left["peer_id"], "sfu");
    }
    until_attached(&hub, 0).await;
    alice.offer("v=0").await;
    alice.expect_error("no_sfu").await;
}

/// A sink that keeps everything played (48 kHz).
#[derive(Clone, Default)]
struct CaptureSink(Arc<std::sync::Mutex<Vec<f32>>>);

impl sotto::media::AudioSink for CaptureSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), sotto::media::MediaError> {
        self.0.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
}

impl CaptureSink {
    fn tail(&self, seconds: f64) -> Vec<f32> {
        let all = self.0.lock().unwrap();
        let n = ((seconds * 48_000.0) as usize).min(all.len());
        all[all.len() - n..].to_vec()
    }
}

/// Mean share of `hz` over 100 ms blocks of `x` (robust to the phase seams playout leaves).
fn share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    blocks
        .iter()
        .map(|b| sotto::media::tone_share(b, 48_000.0, hz))
        .sum::<f64>()
        / blocks.len().max(1) as f64
}

/// What an engine member reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Connected, with a group code over both others.
    Full,
    /// Its path to the SFU is lost.
    Reconnecting,
}

/// An engine member of a group call on `hub`: its sink, a hang-up trigger and its final stats.
struct Member {
    name: &'static str,
    sink: CaptureSink,
    hang_up: tokio::sync::oneshot::Sender<()>,
    ended: tokio::task::JoinHandle<Option<sotto::call::CallStats>>,
}

/// Starts `name` sending `hz` in `room`; it reports its marks to `marks`.
fn member(
    hub: &Hub,
    room: &str,
    name: &'static str,
    hz: f64,
    marks: tokio::sync::mpsc::UnboundedSender<(&'static str, Mark)>,
) -> Member {
    use sotto::call::{CallBuilder, CallEvent, CallState};
    let sink = CaptureSink::default();
    let mut call = CallBuilder::new(hub.url.clone(), room)
        .name(name)
        .token(token(room, name))
        .source(sotto::media::ToneSource::new(hz, 0.3))
        .sink(sink.clone())
        .configure(|c| c.group = true)
        .start()
        .unwrap();
    let (hang_up, mut hang_up_rx) = tokio::sync::oneshot::channel::<()>();
    let ended = tokio::spawn(async move {
        let (mut connected, mut others, mut ended) = (false, 0, None);
        let mut hung_up = false;
        loop {
            let event = tokio::select! {
                e = call.next_event() => e,
                _ = &mut hang_up_rx, if !hung_up => {
                    hung_up = true;
                    call.hang_up().await;
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                CallEvent::GroupSafetyCode { members, .. } => others = members.len(),
                CallEvent::State(CallState::Connected) => connected = true,
                CallEvent::State(CallState::Reconnecting) => {
                    connected = false;
                    let _ = marks.send((name, Mark::Reconnecting));
                }
                CallEvent::State(CallState::Undecryptable) => panic!("{name}: undecryptable"),
                CallEvent::Ended { stats, .. } => ended = Some(stats),
                _ => {}
            }
            if connected && others == 2 {
                let _ = marks.send((name, Mark::Full));
            }
        }
        ended
    });
    Member {
        name,
        sink,
        hang_up,
        ended,
    }
}

/// Waits until each of `names` has reported `mark`.
async fn until_marked(
    marks: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, Mark)>,
    names: &[&str],
    mark: Mark,
) {
    let mut done = std::collections::HashSet::new();
    while !names.iter().all(|n| done.contains(n)) {
        let (who, m) = tokio::time::timeout(WAIT, marks.recv())
            .await
            .unwrap_or_else(|_| panic!("everyone {mark:?} in time; only {done:?}"))
            .unwrap();
        if m == mark {
            done.insert(who);
        }
    }
}

/// Engine calls in this binary run one at a time: each is three real-time pipelines.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TONES: [(&str, f64); 3] = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];

/// Hangs everyone up and checks that each heard the two others (and not itself) in its last
/// `seconds` of playout, and decrypted everything; returns their stats.
async fn hang_up_and_check(members: Vec<Member>, seconds: f64) -> Vec<sotto::call::CallStats> {
    let mut all = Vec::new();
    for m in members {
        let heard = m.sink.tail(seconds);
        let _ = m.hang_up.send(());
        let name = m.name;
        let stats = tokio::time::timeout(WAIT, m.ended)
            .await
            .unwrap()
            .unwrap()
            .expect("ended");
        assert_eq!(stats.mode, "sfu", "{name}");
        assert_eq!(stats.decrypt_failures, 0, "{name}");
        assert_eq!(stats.participants.len(), 2, "{name}: {stats:?}");
        for p in &stats.participants {
            assert!(p.frames_decrypted >= 50, "{name}: {p:?}");
        }
        for (other, hz) in TONES {
            let s = share(&heard, hz);
            eprintln!("{name} hears {other} ({hz} Hz) at share {s:.2}");
            if other == name {
                assert!(s < 0.05, "{name} hears itself: {s:.2}");
            } else {
                assert!(s > 0.2, "{name} barely hears {other}: {s:.2}");
            }
        }
        all.push(stats);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engine_members_hear_each_other_through_an_attached_sfu() {
    let _one = ONE_CALL.lock().await;
    let hub = hub().await;
    let sfu = SfuProcess::start(&hub.url, &sfu_token());
    until_attached(&hub, 1).await;
    let (marks_tx, mut marks) = tokio::sync::mpsc::unbounded_channel();
    let members: Vec<Member> = TONES
        .iter()
        .map(|&(name, hz)| member(&hub, "trio", name, hz, marks_tx.clone()))
        .collect();
    until_marked(&mut marks, &["alice", "bob", "carol"], Mark::Full).await;
    // The room is on the attached SFU (the hub has none of its own).
    let metrics = hub.app.metrics.render();
    assert!(
        metrics.contains("sotto_signaling_sfus_attached 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    hang_up_and_check(members, 2.0).await;
    drop(sfu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_members_move_to_another_attached_sfu_when_theirs_is_killed() {
    let _one = ONE_CALL.lock().await;
    let hub = hub().await;
    let first = SfuProcess::start(&hub.url, &sfu_token());
    until_attached(&hub, 1).await;
    let (marks_tx, mut marks) = tokio::sync::mpsc::unbounded_channel();
    let members: Vec<Member> = TONES
        .iter()
        .map(|&(name, hz)| member(&hub, "trio", name, hz, marks_tx.clone()))
        .collect();
    let everyone = ["alice", "bob", "carol"];
    until_marked(&mut marks, &everyone, Mark::Full).await;
    // A second SFU attaches; the room is on the first one, which dies.
    let second = SfuProcess::start(&hub.url, &sfu_token());
    until_attached(&hub, 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = std::time::Instant::now();
    drop(first);
    until_marked(&mut marks, &everyone, Mark::Reconnecting).await;
    until_marked(&mut marks, &everyone, Mark::Full).await;
    eprintln!("all connected again {:?} after the kill", killed.elapsed());
    assert_eq!(hub.app.sfus.attached(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for stats in hang_up_and_check(members, 2.0).await {
        assert!(stats.sfu_reconnects >= 1, "{stats:?}");
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_wss_it_attaches_with_ca_cert_and_stops_on_an_unknown_certificate() {
    let setup =
        sotto_signaling::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = ServerConfig {
        secret: Some(SECRET.to_vec()),
        tls: Some(setup.config.clone()),
        ..ServerConfig::default()
    };
    let app = App::new(config, shutdown.clone());
    tokio::spawn(sotto_signaling::serve(listener, app.clone()));
    let hub = Hub {
        app,
        url: format!("wss://localhost:{port}/ws"),
        shutdown,
    };
    let dir = std::env::temp_dir().join(format!("sotto-attach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("hub.pem");
    std::fs::write(&ca, setup.certificate_pem()).unwrap();

    // Without the CA the certificate is unknown: a clear error, at once, no retries.
    let url = std::ffi::OsString::from(&hub.url);
    let token = std::ffi::OsString::from(sfu_token());
    let os = std::ffi::OsStr::new;
    let (status, stderr) = sfu_exit(&[os("--signaling"), &url, os("--token"), &token]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-cert"),
        "{stderr}"
    );
    assert_eq!(hub.app.sfus.attached(), 0);

    // With it, the SFU attaches over TLS.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-sfu"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--signaling",
            &hub.url,
        ])
        .args(["--token", &sfu_token()])
        .arg("--ca-cert")
        .arg(&ca)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    until_attached(&hub, 1).await;
    let _ = child.kill();
    let _ = child.wait();
    until_attached(&hub, 0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_attaches_again_when_the_hub_comes_back() {
    let first = hub().await;
    let addr: std::net::SocketAddr = first
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let sfu = SfuProcess::start(&first.url, &sfu_token());
    until_attached(&first, 1).await;
    let (mut alice, _) = Peer::join(&first, "red", "alice").await;
    let (_a, port) = alice.offer_and_get_port(0).await;
    assert!(sfu.ports.contains(&port));

    // The hub stops (its connections are closed) and a new one starts on the same address.
    let server = first.app.clone();
    drop(first);
    // (She may hear first that `sfu` left, if its connection closed before hers.)
    loop {
        let v = alice.next().await;
        if v["type"] == "error" {
            assert_eq!(v["code"], "shutting_down", "{v}");
            break;
        }
        assert_eq!(v, json!({"v":1,"type":"peer_left","peer_id":"sfu"}));
    }
    tokio::time::timeout(WAIT, async {
        while server
            .metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the old hub's connections closed");
    let listener = tokio::time::timeout(WAIT, async {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the address free again");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = ServerConfig {
        secret: Some(SECRET.to_vec()),
        ..ServerConfig::default()
    };
    let app = App::new(config, shutdown.clone());
    tokio::spawn(sotto_signaling::serve(listener, app.clone()));
    let second = Hub {
        app,
        url: format!("ws://{addr}/ws"),
        shutdown,
    };
    until_attached(&second, 1).await;
    let (mut bob, welcome) = Peer::join(&second, "red", "bob").await;
    assert_eq!(welcome["sfu"], true, "{welcome}");
    let (_b, port) = bob.offer_and_get_port(1).await;
    assert!(sfu.ports.contains(&port));
}
