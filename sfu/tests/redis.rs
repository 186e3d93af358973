//! SFUs found through Redis (`sotto-sfu --redis`, and an in-process SFU registered the same
//! way) by signaling nodes with `--redis`: rooms are placed on the least-loaded live SFU,
//! members reach it as the peer `sfu`, and when an SFU is killed its rooms' members move to
//! another one and hear each other again.
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence) and kills it
//! at the end. Without `redis-server` the tests are skipped, unless SOTTO_REQUIRE_REDIS=1.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Client;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto_signaling::token::{mint, unix_now};
use sotto_signaling::{App, ServerConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &[u8] = b"redis-test-secret";
const WAIT: Duration = Duration::from_secs(60);

/// A `redis-server` of this test, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    /// Starts one, or returns `None` (the test is skipped) when it is not installed.
    fn start() -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("SOTTO_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server is missing and SOTTO_REQUIRE_REDIS=1"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let url = format!("redis://127.0.0.1:{port}");
            if let Some(child) = spawn_redis(&url) {
                return Some(Redis { child, url });
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
        }
    }

    /// Kills it and starts it again on the same port, empty.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + WAIT;
        // The port may take a moment to be free again.
        loop {
            if let Some(child) = spawn_redis(&self.url) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// Starts `redis-server` for `url` (`redis://127.0.0.1:PORT`) and waits until it answers;
/// `None` if it exits first (the port is taken). The server that answers must be this one,
/// not another test's on a port reused meanwhile.
fn spawn_redis(url: &str) -> Option<Child> {
    let port = url.rsplit(':').next().unwrap();
    let mut child = Command::new("redis-server")
        .args(["--port", port, "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ours = format!("process_id:{}\r\n", child.id());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let info = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
        match info {
            Ok(info) if info.contains(&ours) => return Some(child),
            Ok(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "redis-server did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signaling node in this process with `--redis`, and without an SFU unless given one.
struct Node {
    app: Arc<App>,
    url: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Node {
    async fn start(redis: &Redis, sfu: Option<Arc<dyn sotto_signaling::SfuLink>>) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let config = ServerConfig {
            secret: Some(SECRET.to_vec()),
            redis: Some(redis.url.clone()),
            ..ServerConfig::default()
        };
        let app = App::with_sfu(config, shutdown.clone(), sfu);
        let cluster = sotto_signaling::cluster::Cluster::start(&redis.url, &app)
            .await
            .unwrap();
        app.cluster.set(cluster).unwrap();
        tokio::spawn(sotto_signaling::serve(listener, app.clone()));
        Node { app, url, shutdown }
    }

    /// Waits until the node counts `n` live SFUs.
    async fn until_live(&self, n: u64) {
        let cluster = self.app.sfu_cluster.clone().expect("--redis");
        tokio::time::timeout(WAIT, async {
            while cluster.live_sfus() != n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} live SFUs in time"));
    }

    fn metrics(&self) -> String {
        self.app.sfu_cluster.as_ref().unwrap().metrics.render()
    }
}

fn token(room: &str, name: &str) -> String {
    mint(SECRET, room, name, unix_now() + 3600)
}

/// A `sotto-sfu --redis` process, killed (SIGKILL) when dropped.
struct SfuProcess {
    child: Child,
    /// Its workers' media ports.
    ports: Vec<u16>,
    /// Its id in Redis.
    id: String,
}

impl SfuProcess {
    fn start(redis: &Redis, extra: &[&str]) -> SfuProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-sfu"))
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .args(["--redis", &redis.url])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let ports = first
            .strip_prefix("sfu media on udp ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .split(',')
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap().port())
            .collect();
        let second = lines.next().unwrap().unwrap();
        let id = second
            .strip_prefix("redis id ")
            .unwrap_or_else(|| panic!("unexpected second line {second:?}"))
            .to_owned();
        SfuProcess { child, ports, id }
    }
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client of a node.
struct Peer {
    ws: Ws,
}

impl Peer {
    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

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

    async fn join(node: &Node, room: &str, name: &str) -> (Peer, Value) {
        let (ws, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
        let mut p = Peer { ws };
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
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

fn which(sfus: &[&SfuProcess], port: u16) -> usize {
    sfus.iter()
        .position(|s| s.ports.contains(&port))
        .unwrap_or_else(|| panic!("port {port} is no SFU's"))
}

fn placement(redis: &Redis, room: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("sotto:place:{room}"))
        .query(&mut redis.con())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_the_redis_sfus_by_load_and_a_room_stays_on_its_sfu() {
    let Some(redis) = Redis::start() else { return };
    let node = Node::start(&redis, None).await;
    // Before any SFU registers, a group member is told there is none.
    node.until_live(0).await;
    let (mut early, welcome) = Peer::join(&node, "early", "eve").await;
    assert!(welcome.get("sfu").is_none(), "{welcome}");
    early.offer("v=0").await;
    early.expect_error("no_sfu").await;

    let one = SfuProcess::start(&redis, &[]);
    let two = SfuProcess::start(&redis, &[]);
    node.until_live(2).await;
    let sfus = [&one, &two];
    let (mut alice, welcome) = Peer::join(&node, "red", "alice").await;
    assert_eq!(welcome["sfu"], true, "{welcome}");
    let (_a, port_red) = alice.offer_and_get_port(0).await;
    let (mut carol, _) = Peer::join(&node, "blue", "carol").await;
    let (_c, port_blue) = carol.offer_and_get_port(1).await;
    let (red, blue) = (which(&sfus, port_red), which(&sfus, port_blue));
    assert_ne!(red, blue, "both rooms went to one SFU");
    assert_eq!(
        placement(&redis, "red").as_deref(),
        Some(sfus[red].id.as_str())
    );
    assert_eq!(
        placement(&redis, "blue").as_deref(),
        Some(sfus[blue].id.as_str())
    );

    // A second member of red goes where red is, although the other SFU is as loaded.
    let (mut bob, _) = Peer::join(&node, "red", "bob").await;
    let _ = alice.expect_type("peer_joined").await;
    let (_b, port_bob) = bob.offer_and_get_port(2).await;
    assert_eq!(which(&sfus, port_bob), red);

    // Each SFU reports its load in its registration.
    let load: String = redis::cmd("GET")
        .arg(format!("sotto:sfu:{}", sfus[red].id))
        .query(&mut redis.con())
        .unwrap();
    let load: Value = serde_json::from_str(&load).unwrap();
    assert_eq!(load["capacity"], 1000, "{load}");
    let metrics = node.metrics();
    for line in [
        "sotto_signaling_cluster_sfus 2",
        "sotto_signaling_cluster_sfu_placements_total 2",
        "sotto_signaling_cluster_sfu_offers_total 3",
        "sotto_signaling_cluster_sfu_rooms 2",
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "{line}: {metrics}");
    }

    // A leave goes to the room's SFU: bob is out of it, and may offer again.
    bob.send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_leave"}}))
        .await;
    let (_b2, port_bob) = bob.offer_and_get_port(3).await;
    assert_eq!(which(&sfus, port_bob), red);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sfu_takes_no_new_room_and_a_silent_one_is_passed_over() {
    let Some(redis) = Redis::start() else { return };
    let node = Node::start(&redis, None).await;
    let sfu = SfuProcess::start(&redis, &["--max-rooms", "1"]);
    // A registered SFU that nobody serves, the least loaded and first by id: an offer
    // published to it reaches no one, so the room is placed again on the real one.
    let mut con = redis.con();
    let ghost = "s0000000000000000";
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("sotto:sfu:{ghost}"))
        .arg(r#"{"rooms":0,"seated":0,"capacity":10}"#)
        .ignore()
        .cmd("SADD")
        .arg("sotto:sfus")
        .arg(ghost)
        .ignore()
        .query(&mut con)
        .unwrap();
    node.until_live(2).await;

    let (mut alice, _) = Peer::join(&node, "red", "alice").await;
    let (_a, port) = alice.offer_and_get_port(0).await;
    assert!(sfu.ports.contains(&port), "{port} vs {:?}", sfu.ports);
    assert_eq!(placement(&redis, "red").as_deref(), Some(sfu.id.as_str()));
    assert!(
        node.metrics()
            .contains("sotto_signaling_cluster_sfu_dead_total 1\n")
    );

    // The real SFU is at its one room and the ghost is gone: a new room is refused.
    let _: () = redis::cmd("DEL")
        .arg(format!("sotto:sfu:{ghost}"))
        .query(&mut con)
        .unwrap();
    node.until_live(1).await;
    let (mut carol, _) = Peer::join(&node, "blue", "carol").await;
    carol.offer("v=0").await;
    let refused = carol.expect_error("sfu_refused").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("too_many_rooms"),
        "{refused}"
    );
    // Red's members still go to red's SFU.
    let (mut bob, _) = Peer::join(&node, "red", "bob").await;
    let _ = alice.expect_type("peer_joined").await;
    let (_b, port) = bob.offer_and_get_port(1).await;
    assert!(sfu.ports.contains(&port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sfu_is_left_by_its_rooms_and_they_are_placed_on_another() {
    let Some(redis) = Redis::start() else { return };
    let node = Node::start(&redis, None).await;
    let mut sfus = vec![
        SfuProcess::start(&redis, &[]),
        SfuProcess::start(&redis, &[]),
    ];
    node.until_live(2).await;
    let (mut alice, _) = Peer::join(&node, "red", "alice").await;
    let (mut bob, _) = Peer::join(&node, "red", "bob").await;
    let _ = alice.expect_type("peer_joined").await;
    let (_a, port) = alice.offer_and_get_port(0).await;
    let (_b, _) = bob.offer_and_get_port(1).await;
    // A room on the other SFU, which must not hear anything.
    let (mut dave, _) = Peer::join(&node, "blue", "dave").await;
    let (_d, _) = dave.offer_and_get_port(3).await;

    let red = which(&sfus.iter().collect::<Vec<_>>(), port);
    let dead_id = sfus[red].id.clone();
    drop(sfus.remove(red));
    for member in [&mut alice, &mut bob] {
        let left = member.expect_type("peer_left").await;
        assert_eq!(left["peer_id"], "sfu", "{left}");
    }
    // Its placement is gone (or already names the live SFU).
    assert_ne!(placement(&redis, "red").as_deref(), Some(dead_id.as_str()));
    dave.send(json!({"v":1,"type":"ping"})).await;
    dave.expect_type("pong").await;

    // Offering again lands on the SFU that is left.
    alice
        .send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_leave"}}))
        .await;
    let (_a2, port) = alice.offer_and_get_port(4).await;
    assert!(
        sfus[0].ports.contains(&port),
        "{port} vs {:?}",
        sfus[0].ports
    );
    let metrics = node.metrics();
    assert!(
        metrics.contains("sotto_signaling_cluster_sfu_dead_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sotto_signaling_cluster_sfu_moves_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_a_room_placed_elsewhere_and_leave_their_old_sfu() {
    let Some(redis) = Redis::start() else { return };
    let node = Node::start(&redis, None).await;
    let sfus = [
        SfuProcess::start(&redis, &[]),
        SfuProcess::start(&redis, &[]),
    ];
    node.until_live(2).await;
    let (mut alice, _) = Peer::join(&node, "red", "alice").await;
    let (_a, port) = alice.offer_and_get_port(0).await;
    let on = which(&sfus.iter().collect::<Vec<_>>(), port);
    let (old, new) = (&sfus[on], &sfus[1 - on]);
    let seated = |sfu: &SfuProcess| -> u64 {
        let load: Option<String> = redis::cmd("GET")
            .arg(format!("sotto:sfu:{}", sfu.id))
            .query(&mut redis.con())
            .unwrap();
        let load: Value = serde_json::from_str(&load.unwrap_or_default()).unwrap_or_default();
        load["seated"].as_u64().unwrap_or(0)
    };
    until("alice seated on her SFU", || seated(old) == 1).await;

    // Another node placed the room elsewhere (say it found the SFU dead first).
    let _: () = redis::cmd("SET")
        .arg("sotto:place:red")
        .arg(&new.id)
        .arg("PX")
        .arg(5000)
        .query(&mut redis.con())
        .unwrap();
    let left = alice.expect_type("peer_left").await;
    assert_eq!(left["peer_id"], "sfu", "{left}");
    until("alice out of her old SFU", || seated(old) == 0).await;
    alice
        .send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_leave"}}))
        .await;
    let (_a2, port) = alice.offer_and_get_port(1).await;
    assert!(new.ports.contains(&port), "{port} vs {:?}", new.ports);
    let metrics = node.metrics();
    for line in [
        "sotto_signaling_cluster_sfu_moves_total 1",
        "sotto_signaling_cluster_sfu_dead_total 0",
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "{line}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_sfu_serves_rooms_placed_by_another_node_and_shrugs_off_garbage() {
    let Some(redis) = Redis::start() else { return };
    // Node A hosts an SFU (`sotto-signaling --sfu --redis`); node B has none.
    let sfu = Arc::new(
        sotto_sfu::Sfu::start(sotto_sfu::SfuConfig {
            workers: 1,
            ..sotto_sfu::SfuConfig::default()
        })
        .unwrap(),
    );
    let registered = sotto_sfu::redis_node::RedisNode::start(
        sfu.clone(),
        &sotto_sfu::redis_node::RedisNodeConfig {
            url: redis.url.clone(),
            capacity: 10,
        },
    )
    .unwrap();
    let a = Node::start(
        &redis,
        Some(sfu.clone() as Arc<dyn sotto_signaling::SfuLink>),
    )
    .await;
    let b = Node::start(&redis, None).await;
    b.until_live(1).await;
    a.until_live(1).await;

    let (mut alice, welcome) = Peer::join(&b, "red", "alice").await;
    assert_eq!(welcome["sfu"], true, "{welcome}");
    let (_a, port) = alice.offer_and_get_port(0).await;
    assert!(
        sfu.local_addrs().iter().any(|addr| addr.port() == port),
        "{port} vs {:?}",
        sfu.local_addrs()
    );
    assert_eq!(placement(&redis, "red").as_deref(), Some(registered.id()));

    // Garbage on the SFU's channel is counted, never answered, and the SFU goes on serving.
    let mut con = redis.con();
    let channel = format!("sotto:s:{}", registered.id());
    let huge = "x".repeat(300 * 1024);
    for garbage in [
        "",
        "{not json",
        "[1,2]",
        r#"{"op":"offer"}"#,
        r#"{"op":"offer","room":"red","peer":"p1","node":"n\n*","sdp":"v=0"}"#,
        r#"{"op":"join","room":"red","peer":"p1"}"#,
        &huge,
    ] {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(garbage)
            .query(&mut con)
            .unwrap();
        assert_eq!(receivers, 1);
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(b"\xff\xfe\x00".as_slice())
        .query(&mut con)
        .unwrap();
    // A member of the same room on the other node reaches the same SFU.
    let (mut carol, welcome) = Peer::join(&a, "red", "carol").await;
    assert_eq!(welcome["peers"][0]["name"], "alice", "{welcome}");
    let (_c, port) = carol.offer_and_get_port(1).await;
    assert!(sfu.local_addrs().iter().any(|addr| addr.port() == port));
    assert_eq!(
        sfu.metrics()
            .rooms
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let m = sfu.metrics();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.redis_bad_messages.load(Relaxed), 8);
    assert_eq!(m.redis_offers.load(Relaxed), 2);
    assert_eq!(m.redis_registered.load(Relaxed), 1);
    let page = sfu.render_metrics();
    assert!(
        page.contains("sotto_sfu_redis_bad_messages_total 8\n"),
        "{page}"
    );
    // A member whose connection ends leaves the SFU.
    assert_eq!(m.participants.load(Relaxed), 2);
    drop(carol);
    until("carol's leave reached the SFU", || {
        m.participants.load(Relaxed) == 1 && m.redis_leaves.load(Relaxed) == 1
    })
    .await;

    // A node that places rooms through Redis takes no attached SFU.
    let (ws, _) = tokio_tungstenite::connect_async(&a.url).await.unwrap();
    let mut fake = Peer { ws };
    fake.send(json!({"v":1,"type":"sfu_attach","capacity":4,"token":token("", "sfu")}))
        .await;
    fake.expect_error("bad_message").await;

    // Stopping the node deregisters the SFU at once.
    let id = registered.id().to_owned();
    drop(registered);
    let key: Option<String> = redis::cmd("GET")
        .arg(format!("sotto:sfu:{id}"))
        .query(&mut con)
        .unwrap();
    assert_eq!(key, None);
}

/// Polls `f` until it is true.
async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_answers_on_the_nodes_channel_and_drops_its_members_when_it_loses_redis() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sfu = Arc::new(
        sotto_sfu::Sfu::start(sotto_sfu::SfuConfig {
            workers: 1,
            ..sotto_sfu::SfuConfig::default()
        })
        .unwrap(),
    );
    let node = sotto_sfu::redis_node::RedisNode::start(
        sfu.clone(),
        &sotto_sfu::redis_node::RedisNodeConfig {
            url: redis.url.clone(),
            capacity: 10,
        },
    )
    .unwrap();
    let url = redis.url.clone();
    let key = format!("sotto:sfu:{}", node.id());
    let registered = || {
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("EXISTS").arg(&key).query::<bool>(&mut c))
            .unwrap_or(false)
    };
    until("the SFU registered", registered).await;

    // This test is the signaling node `ntest`: it offers, the answer comes on its channel.
    let mut sub = redis.con();
    let mut sub = sub.as_pubsub();
    sub.subscribe("sotto:n:ntest").unwrap();
    sub.set_read_timeout(Some(WAIT)).unwrap();
    let (_client, offer) = Client::new(0, 3, 20).await;
    let request = json!({"op":"offer","room":"red","peer":"p1","node":"ntest","sdp":offer});
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(format!("sotto:s:{}", node.id()))
        .arg(request.to_string())
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(receivers, 1);
    let msg: Value =
        serde_json::from_slice(sub.get_message().unwrap().get_payload_bytes()).unwrap();
    assert_eq!(
        (&msg["t"], &msg["r"], &msg["to"]),
        (&json!("s"), &json!("red"), &json!("p1"))
    );
    // The frame is the very text a member gets from the hub for an answer.
    let frame = msg["f"].as_str().unwrap();
    let answer: Value = serde_json::from_str(frame).unwrap();
    let sdp = answer["data"]["sdp"].as_str().unwrap();
    let expected = sotto_signaling::hub::encode(&sotto::signal::protocol::ServerMessage::Signal {
        v: 1,
        from: "sfu".into(),
        data: serde_json::value::to_raw_value(&json!({"kind":"sfu_answer","sdp":sdp})).unwrap(),
    });
    assert_eq!(frame, expected.as_str());
    assert_eq!(sfu.metrics().participants.load(Relaxed), 1);

    // Redis comes back empty: the registration had lapsed, so signaling nodes took the room
    // elsewhere; the SFU drops its member and registers again.
    drop(sub);
    redis.restart();
    until("the member dropped", || {
        sfu.metrics().participants.load(Relaxed) == 0
    })
    .await;
    assert_eq!(sfu.metrics().redis_dropped_members.load(Relaxed), 1);
    until("the SFU registered again", registered).await;
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

/// Mean share of `hz` over 100 ms blocks of `x`.
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
    /// After it was reconnecting: frames of every other member decrypted again (in the last
    /// stats interval).
    Resumed,
}

/// An engine member of a group call: its sink, a hang-up trigger and its final stats.
struct Member {
    name: &'static str,
    sink: CaptureSink,
    hang_up: tokio::sync::oneshot::Sender<()>,
    ended: tokio::task::JoinHandle<Option<sotto::call::CallStats>>,
}

type Marks = tokio::sync::mpsc::UnboundedSender<(&'static str, Mark, Instant)>;

/// Starts `name` sending `hz` in `room` on `node`; it reports its marks to `marks`.
fn member(node: &Node, room: &str, name: &'static str, hz: f64, marks: Marks) -> Member {
    use sotto::call::{CallBuilder, CallEvent, CallState};
    let sink = CaptureSink::default();
    let mut call = CallBuilder::new(node.url.clone(), room)
        .name(name)
        .token(token(room, name))
        .source(sotto::media::ToneSource::new(hz, 0.3))
        .sink(sink.clone())
        .configure(|c| {
            c.group = true;
            c.stats_interval = Duration::from_millis(100);
        })
        .start()
        .unwrap();
    let (hang_up, mut hang_up_rx) = tokio::sync::oneshot::channel::<()>();
    let ended = tokio::spawn(async move {
        let (mut connected, mut others, mut ended) = (false, 0, None);
        let mut hung_up = false;
        // Frames decrypted per other member at the last stats, and whether we are waiting
        // for them to grow again after a lost path.
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut waiting = false;
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
                    // Frames still in flight when the path broke count as before: growth is
                    // measured from the first stats after the path is back.
                    waiting = true;
                    last.clear();
                    let _ = marks.send((name, Mark::Reconnecting, Instant::now()));
                }
                CallEvent::State(CallState::Undecryptable) => panic!("{name}: undecryptable"),
                CallEvent::Stats(stats) => {
                    let present: Vec<_> = stats.participants.iter().filter(|p| p.present).collect();
                    let all_grew = present.len() == 2
                        && present
                            .iter()
                            .all(|p| last.get(&p.name).is_some_and(|&n| p.frames_decrypted > n));
                    if waiting && all_grew {
                        waiting = false;
                        let _ = marks.send((name, Mark::Resumed, Instant::now()));
                    }
                    last = present
                        .iter()
                        .map(|p| (p.name.clone(), p.frames_decrypted))
                        .collect();
                }
                CallEvent::Ended { stats, .. } => ended = Some(stats),
                _ => {}
            }
            if connected && others == 2 {
                let _ = marks.send((name, Mark::Full, Instant::now()));
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

/// Waits until each of `names` has reported `mark`; returns when each did (first time).
async fn until_marked(
    marks: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, Mark, Instant)>,
    names: &[&'static str],
    mark: Mark,
) -> HashMap<&'static str, Instant> {
    let mut done = HashMap::new();
    while !names.iter().all(|n| done.contains_key(n)) {
        let (who, m, at) = tokio::time::timeout(WAIT, marks.recv())
            .await
            .unwrap_or_else(|_| panic!("everyone {mark:?} in time; only {done:?}"))
            .unwrap();
        if m == mark {
            done.entry(who).or_insert(at);
        }
    }
    done
}

/// Engine calls in this binary run one at a time: each is three real-time pipelines.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TONES: [(&str, f64); 3] = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];
const EVERYONE: [&str; 3] = ["alice", "bob", "carol"];

/// Hangs everyone up and checks that each heard the two others (and not itself) in its last
/// `seconds` of playout, and that no frame failed to decrypt; returns their stats.
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
            assert_eq!(p.decrypt_failures, 0, "{name}: {p:?}");
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
async fn engine_members_move_to_the_other_sfu_when_theirs_is_killed() {
    let _one = ONE_CALL.lock().await;
    let Some(redis) = Redis::start() else { return };
    // Two signaling nodes: alice on one, bob and carol on the other, all on one SFU.
    let node = Node::start(&redis, None).await;
    let other = Node::start(&redis, None).await;
    let mut sfus = vec![
        SfuProcess::start(&redis, &[]),
        SfuProcess::start(&redis, &[]),
    ];
    node.until_live(2).await;
    other.until_live(2).await;
    let (marks_tx, mut marks) = tokio::sync::mpsc::unbounded_channel();
    let members: Vec<Member> = TONES
        .iter()
        .map(|&(name, hz)| {
            let on = if name == "alice" { &node } else { &other };
            member(on, "trio", name, hz, marks_tx.clone())
        })
        .collect();
    until_marked(&mut marks, &EVERYONE, Mark::Full).await;
    // They hear each other through the SFU the room is on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in &members {
        let heard = m.sink.tail(1.0);
        for (other, hz) in TONES.iter().filter(|(n, _)| *n != m.name) {
            let s = share(&heard, *hz);
            assert!(
                s > 0.2,
                "{} barely hears {other} before the kill: {s:.2}",
                m.name
            );
        }
    }
    let on = placement(&redis, "trio").expect("the room is placed");
    let index = sfus
        .iter()
        .position(|s| s.id == on)
        .expect("on one of ours");

    // At a random point of the nodes' once-a-second check, so that runs sample the wait.
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1000)).await;
    let killed = Instant::now();
    drop(sfus.remove(index)); // SIGKILL
    until_marked(&mut marks, &EVERYONE, Mark::Reconnecting).await;
    let resumed = until_marked(&mut marks, &EVERYONE, Mark::Resumed).await;
    let mut gaps: Vec<(&str, Duration)> = resumed
        .iter()
        .map(|(name, at)| (*name, at.duration_since(killed)))
        .collect();
    gaps.sort();
    let worst = gaps.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!("SFU killed -> every member decrypts every other again: {worst:?} ({gaps:?})");
    assert_eq!(
        placement(&redis, "trio").as_deref(),
        Some(sfus[0].id.as_str())
    );
    for n in [&node, &other] {
        let metrics = n.metrics();
        assert!(
            metrics.contains("sotto_signaling_cluster_sfu_dead_total 1\n"),
            "{metrics}"
        );
    }

    // Audio flows both ways for a while after the move, with no decrypt failure at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for stats in hang_up_and_check(members, 2.0).await {
        assert!(stats.sfu_reconnects >= 1, "{stats:?}");
    }
}
