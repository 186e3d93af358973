//! The signaling server over real WebSockets: protocol round trips, every kind of bad input,
//! limits, tokens, metrics, and the engine's reconnecting client.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto::signal::{ErrorCode, SignalClient, SignalConfig, SignalEvent};
use sotto_signaling::token::{mint, unix_now};
use sotto_signaling::{App, Limits, ServerConfig, serve, serve_metrics};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    app: std::sync::Arc<App>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    async fn start_on(addr: SocketAddr, config: ServerConfig) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = App::new(config, shutdown.clone());
        let task = tokio::spawn(serve(listener, app.clone()));
        Server {
            addr,
            app,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
}

impl Client {
    async fn connect(server: &Server) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        Client { ws }
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next JSON message (skipping pings), or None when the connection closes.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let v = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        assert_eq!(v["type"], kind, "got {v}");
        v
    }

    async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "got {v}");
        v
    }

    async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"v":1,"type":"join","room":room,"name":name}))
            .await;
        self.expect("welcome").await
    }

    /// Proves the connection is still served.
    async fn ping(&mut self) {
        self.send(json!({"v":1,"type":"ping"})).await;
        self.expect("pong").await;
    }
}

#[tokio::test]
async fn join_relay_and_leave_round_trip() {
    let server = Server::start(ServerConfig::default()).await;
    let mut alice = Client::connect(&server).await;
    let mut bob = Client::connect(&server).await;
    let mut carol = Client::connect(&server).await;

    let w = alice.join("room", "alice").await;
    assert_eq!(w["v"], 1);
    assert_eq!(w["peers"], json!([]));
    let alice_id = w["peer_id"].as_str().unwrap().to_string();
    let w = bob.join("room", "bob").await;
    assert_eq!(
        w["peers"],
        json!([{"peer_id": alice_id, "name": "alice", "slot": 0}])
    );
    let bob_id = w["peer_id"].as_str().unwrap().to_string();
    let joined = alice.expect("peer_joined").await;
    assert_eq!(
        (joined["peer_id"].as_str(), joined["name"].as_str()),
        (Some(bob_id.as_str()), Some("bob"))
    );
    carol.join("other-room", "carol").await;

    // Addressed relay: the payload arrives untouched, stamped with the sender.
    let sdp =
        json!({"kind":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n","nested":[1,{"a":null}]});
    alice
        .send(json!({"v":1,"type":"signal","to":bob_id,"data":sdp}))
        .await;
    let got = bob.expect("signal").await;
    assert_eq!(got["from"], alice_id.as_str());
    assert_eq!(got["data"], sdp);

    // Room broadcast reaches the room only, not the sender or other rooms.
    bob.send(json!({"v":1,"type":"signal","data":"hello room"}))
        .await;
    assert_eq!(alice.expect("signal").await["data"], "hello room");
    carol.ping().await;

    // Unknown recipient.
    alice
        .send(json!({"v":1,"type":"signal","to":"p999","data":1}))
        .await;
    alice.expect_error("unknown_peer").await;

    bob.send(json!({"v":1,"type":"leave"})).await;
    assert_eq!(alice.expect("peer_left").await["peer_id"], bob_id.as_str());
    // A disconnect announces too.
    let mut dave = Client::connect(&server).await;
    let dave_id = dave.join("room", "dave").await["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    alice.expect("peer_joined").await;
    drop(dave);
    assert_eq!(alice.expect("peer_left").await["peer_id"], dave_id.as_str());
    server.stop().await;
}

/// Peers that join one room at the same moment each get their welcome first, and then learn of
/// every later joiner: a `peer_joined` never overtakes the welcome (a client would take the
/// roster from the welcome and miss that peer for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_joiners_get_their_welcome_before_any_peer_joined() {
    let server = Server::start(ServerConfig::default()).await;
    for round in 0..20 {
        let room = format!("rush{round}");
        let mut clients = Vec::new();
        for _ in 0..12 {
            clients.push(Client::connect(&server).await);
        }
        // Every join is on the wire before any reply is read.
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(json!({"v":1,"type":"join","room":room,"name":format!("m{i}")}))
                .await;
        }
        let mut known = Vec::new();
        for c in &mut clients {
            let welcome = c.expect("welcome").await;
            let me = welcome["peer_id"].as_str().unwrap().to_owned();
            let mut peers: Vec<String> = welcome["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["peer_id"].as_str().unwrap().to_owned())
                .collect();
            known.push((me, std::mem::take(&mut peers)));
        }
        // Then each learns of everyone who joined after it, and nobody twice.
        let total = clients.len();
        for (c, (_, peers)) in clients.iter_mut().zip(known.iter_mut()) {
            while peers.len() < total - 1 {
                let joined = c.expect("peer_joined").await;
                let id = joined["peer_id"].as_str().unwrap().to_owned();
                assert!(!peers.contains(&id), "{id} announced twice");
                peers.push(id);
            }
        }
        let ids: Vec<&String> = known.iter().map(|(me, _)| me).collect();
        for (me, peers) in &known {
            let mut all: Vec<&String> = peers.iter().chain([me]).collect();
            all.sort();
            let mut expected = ids.clone();
            expected.sort();
            assert_eq!(all, expected);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn slots_are_unique_in_a_room_and_reused_after_a_leave() {
    let server = Server::start(ServerConfig::default()).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    assert_eq!(a.join("room", "a").await["slot"], 0);
    let wb = b.join("room", "b").await;
    assert_eq!(wb["slot"], 1);
    assert_eq!(a.expect("peer_joined").await["slot"], 1);
    assert_eq!(c.join("room", "c").await["slot"], 2);
    assert_eq!(a.expect("peer_joined").await["slot"], 2);
    b.send(json!({"v":1,"type":"leave"})).await;
    a.expect("peer_left").await;
    // The freed slot goes to the next joiner; the roster lists everyone's.
    let mut d = Client::connect(&server).await;
    let wd = d.join("room", "d").await;
    assert_eq!(wd["slot"], 1);
    let slots: Vec<&Value> = wd["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["slot"])
        .collect();
    assert_eq!(slots, [&json!(0), &json!(2)]);
    // Slots are per room.
    let mut e = Client::connect(&server).await;
    assert_eq!(e.join("other", "e").await["slot"], 0);
    server.stop().await;
}

/// `join` with `"group": true` marks a member always in the group call: the server says so
/// in `welcome.peers` and `peer_joined`, and says nothing for the others.
#[tokio::test]
async fn group_members_are_marked_in_welcome_and_peer_joined() {
    let server = Server::start(ServerConfig::default()).await;
    let mut g = Client::connect(&server).await;
    let mut p = Client::connect(&server).await;
    let mut q = Client::connect(&server).await;
    g.send(json!({"v":1,"type":"join","room":"mix","name":"gina","group":true}))
        .await;
    g.expect("welcome").await;
    let wp = p.join("mix", "paul").await;
    assert_eq!(wp["peers"][0]["name"], "gina");
    assert_eq!(wp["peers"][0]["group"], true, "{wp}");
    let joined = g.expect("peer_joined").await;
    assert_eq!(joined["name"], "paul");
    assert!(joined.get("group").is_none(), "{joined}");
    q.send(json!({"v":1,"type":"join","room":"mix","name":"quin","group":true}))
        .await;
    let wq = q.expect("welcome").await;
    let flags: Vec<&Value> = wq["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["group"])
        .collect();
    assert_eq!(flags, [&json!(true), &Value::Null], "{wq}");
    for c in [&mut g, &mut p] {
        let joined = c.expect("peer_joined").await;
        assert_eq!(joined["group"], true, "{joined}");
    }
    // Anything but a boolean is a bad message; the connection survives.
    let mut r = Client::connect(&server).await;
    r.send(json!({"v":1,"type":"join","room":"mix","name":"rob","group":"yes"}))
        .await;
    r.expect_error("bad_message").await;
    r.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_without_an_sfu_says_so() {
    let server = Server::start(ServerConfig::default()).await;
    let mut a = Client::connect(&server).await;
    let w = a.join("room", "a").await;
    assert!(w.get("sfu").is_none(), "{w}");
    a.send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_offer","sdp":"v=0"}}))
        .await;
    a.expect_error("no_sfu").await;
    a.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_messages_get_errors_and_the_connection_survives() {
    let server = Server::start(ServerConfig::default()).await;
    let mut c = Client::connect(&server).await;
    let cases = [
        ("not json", "bad_json"),
        ("[1,2,3]", "bad_json"),
        (r#"{"type":"join"}"#, "bad_message"),
        (
            r#"{"v":7,"type":"join","room":"r","name":"n"}"#,
            "unsupported_version",
        ),
        (r#"{"v":1,"type":"teleport"}"#, "unknown_type"),
        (r#"{"v":1,"type":"join","room":"r"}"#, "bad_message"),
        (
            r#"{"v":1,"type":"join","room":"","name":"n"}"#,
            "bad_message",
        ),
        (
            r#"{"v":1,"type":"join","room":"r","name":"a\u0000b"}"#,
            "bad_message",
        ),
        (r#"{"v":1,"type":"signal","data":1}"#, "not_joined"),
        (r#"{"v":1,"type":"leave"}"#, "not_joined"),
        (r#"{"v":1,"type":"signal"}"#, "bad_message"),
    ];
    for (text, code) in cases {
        c.send_text(text).await;
        let err = c.expect_error(code).await;
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    c.expect_error("bad_message").await;
    c.join("r", "n").await;
    c.send(json!({"v":1,"type":"join","room":"r2","name":"n"}))
        .await;
    c.expect_error("already_joined").await;
    c.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_and_closed_without_hurting_others() {
    let config = ServerConfig {
        limits: Limits {
            max_message_bytes: 1024,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut other = Client::connect(&server).await;
    other.join("r", "other").await;
    let mut big = Client::connect(&server).await;
    big.join("r", "big").await;
    other.expect("peer_joined").await;
    let payload = "x".repeat(1500);
    big.send(json!({"v":1,"type":"signal","data":payload}))
        .await;
    big.expect_error("too_large").await;
    assert!(big.recv().await.is_none(), "connection must close");
    assert_eq!(other.expect("peer_left").await["type"], "peer_left");
    other.ping().await;
    // Far beyond the limit: cut off by the WebSocket layer, the server keeps going.
    let mut huge = Client::connect(&server).await;
    let _ = huge.ws.send(Message::text("y".repeat(100_000))).await;
    assert!(huge.recv().await.is_none());
    other.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn room_and_connection_limits() {
    let config = ServerConfig {
        limits: Limits {
            max_peers_per_room: 2,
            max_connections: 4,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.join("small", "a").await;
    b.join("small", "b").await;
    a.expect("peer_joined").await;
    c.send(json!({"v":1,"type":"join","room":"small","name":"c"}))
        .await;
    c.expect_error("room_full").await;
    c.join("elsewhere", "c").await;
    let mut d = Client::connect(&server).await;
    d.ping().await;
    let mut e = Client::connect(&server).await;
    e.expect_error("server_full").await;
    assert!(e.recv().await.is_none());
    a.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_required_checked_and_expire() {
    let secret = b"server secret".to_vec();
    let config = ServerConfig {
        secret: Some(secret.clone()),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut c = Client::connect(&server).await;
    let join = |token: Option<String>| json!({"v":1,"type":"join","room":"r","name":"alice","token":token});

    c.send(join(None)).await;
    c.expect_error("bad_token").await;
    c.send(join(Some("garbage".into()))).await;
    c.expect_error("bad_token").await;
    c.send(join(Some(mint(
        b"wrong secret",
        "r",
        "alice",
        unix_now() + 60,
    ))))
    .await;
    c.expect_error("bad_token").await;
    c.send(join(Some(mint(&secret, "r", "mallory", unix_now() + 60))))
        .await;
    c.expect_error("bad_token").await;
    c.send(join(Some(mint(&secret, "other", "alice", unix_now() + 60))))
        .await;
    c.expect_error("bad_token").await;
    c.send(join(Some(mint(&secret, "r", "alice", unix_now() - 5))))
        .await;
    c.expect_error("token_expired").await;
    c.send(join(Some(mint(&secret, "r", "alice", unix_now() + 60))))
        .await;
    c.expect("welcome").await;
    server.stop().await;
}

#[tokio::test]
async fn floods_are_rate_limited_per_connection() {
    let config = ServerConfig {
        limits: Limits {
            rate_per_sec: 10,
            rate_burst: 20,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut quiet = Client::connect(&server).await;
    quiet.join("r", "quiet").await;
    let mut flood = Client::connect(&server).await;
    flood.join("r", "flood").await;
    quiet.expect("peer_joined").await;
    for i in 0..500 {
        flood.send(json!({"v":1,"type":"signal","data":i})).await;
    }
    // The flooder hears about it; most of its messages never reach the room.
    let mut relayed = 0;
    loop {
        let v = tokio::time::timeout(Duration::from_millis(500), quiet.recv()).await;
        match v {
            Ok(Some(v)) if v["type"] == "signal" => relayed += 1,
            _ => break,
        }
    }
    // The burst (20, one spent on the join) and what refills while sending pass; nothing more.
    assert!((15..100).contains(&relayed), "relayed {relayed} of 500");
    let mut saw_rate_error = false;
    while let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(300), flood.recv()).await {
        if v["code"] == "rate_limited" {
            saw_rate_error = true;
        }
    }
    assert!(saw_rate_error);
    quiet.ping().await;
    server.stop().await;
}

#[tokio::test]
async fn idle_clients_are_disconnected() {
    let config = ServerConfig {
        limits: Limits {
            heartbeat: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    // A raw TCP client that completes the upgrade, then neither reads nor answers pings.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Everything the server sent: the 101 response, pings, the error and the close frame.
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let got_idle = text.contains("\"code\":\"idle_timeout\"");
    assert!(got_idle);
    server.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let server = Server::start(ServerConfig::default()).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("m", "a").await;
    let b_id = b.join("m", "b").await["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.expect("peer_joined").await;
    a.send(json!({"v":1,"type":"signal","to":b_id,"data":{}}))
        .await;
    b.expect("signal").await;
    a.send_text("nope").await;
    a.expect_error("bad_json").await;

    let body = http_get(server.addr, "/healthz").await;
    assert!(body.ends_with("ok\n"), "{body}");
    // Not on the call listener: only on the operator's own address.
    let body = http_get(server.addr, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
    assert!(!body.contains("sotto_signaling"), "{body}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_metrics(listener, server.app.clone()));
    let body = http_get(metrics_addr, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for line in [
        "sotto_signaling_connections 2",
        "sotto_signaling_rooms 1",
        "sotto_signaling_peers 2",
        "sotto_signaling_messages_relayed_total 1",
        "sotto_signaling_errors_total{code=\"bad_json\"} 1",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    server.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn shutdown_tells_clients_why() {
    let server = Server::start(ServerConfig::default()).await;
    let mut c = Client::connect(&server).await;
    c.join("r", "c").await;
    server.shutdown.cancel();
    c.expect_error("shutting_down").await;
    assert!(c.recv().await.is_none());
    server.task.await.unwrap().unwrap();
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<SignalEvent>) -> SignalEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event")
        .expect("open")
}

#[tokio::test]
async fn engine_client_relays_and_reconnects_with_backoff() {
    let server = Server::start(ServerConfig::default()).await;
    let addr = server.addr;
    let mut cfg = SignalConfig::new(server.url(), "call", "alice");
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    let (alice, mut alice_events) = SignalClient::connect(cfg);
    let (bob, mut bob_events) =
        SignalClient::connect(SignalConfig::new(server.url(), "call", "bob"));

    assert!(matches!(
        next(&mut alice_events).await,
        SignalEvent::Joined { .. }
    ));
    let SignalEvent::Joined { peers, .. } = next(&mut bob_events).await else {
        panic!()
    };
    let alice_id = peers.first().map(|p| p.peer_id.clone());
    let SignalEvent::PeerJoined(bob_info) = next(&mut alice_events).await else {
        panic!()
    };
    alice
        .send_to(&bob_info.peer_id, &json!({"sdp": "offer"}))
        .await
        .unwrap();
    let SignalEvent::Message { from, data } = next(&mut bob_events).await else {
        panic!()
    };
    assert_eq!(Some(from), alice_id);
    assert_eq!(data.get(), r#"{"sdp":"offer"}"#);

    // The server goes away: alice sees it, backs off, and rejoins when it is back.
    server.stop().await;
    let mut saw_reconnecting = 0;
    loop {
        match next(&mut alice_events).await {
            SignalEvent::Reconnecting { delay, .. } => {
                assert!(delay <= Duration::from_millis(400));
                saw_reconnecting += 1;
                if saw_reconnecting == 3 {
                    break;
                }
            }
            SignalEvent::Disconnected { .. }
            | SignalEvent::PeerLeft { .. }
            | SignalEvent::ServerError {
                code: ErrorCode::ShuttingDown,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        alice.send_to("p1", &1).await.is_err(),
        "no sends while disconnected"
    );
    let server = Server::start_on(addr, ServerConfig::default()).await;
    loop {
        if let SignalEvent::Joined { .. } = next(&mut alice_events).await {
            break;
        }
    }
    assert!(alice.is_joined());
    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn engine_client_stops_on_a_refused_token() {
    let config = ServerConfig {
        secret: Some(b"s".to_vec()),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let (_c, mut events) = SignalClient::connect(SignalConfig::new(server.url(), "r", "x"));
    let mut saw_error = false;
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(SignalEvent::ServerError { code, .. }) => saw_error = code == ErrorCode::BadToken,
            Some(SignalEvent::Closed { reason }) => {
                assert!(reason.contains("bad_token"), "{reason}");
                break;
            }
            Some(_) => {}
            None => panic!("closed without a Closed event"),
        }
    }
    assert!(saw_error);
    server.stop().await;
}

/// A WebSocket client whose socket has a tiny receive buffer: once joined, it never reads
/// again, so everything sent to it backs up into the server.
async fn stalled_client(server: &Server, room: &str, name: &str) -> (Client, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        server.url(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut client = Client { ws };
    let id = client.join(room, name).await["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    (client, id)
}

/// Reads `stream` until `pred` matches a message (failing on close or after `within`).
async fn wait_for<S>(stream: &mut S, within: Duration, pred: impl Fn(&Value) -> bool) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(within, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if pred(&v) {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended while waiting: {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for the message")
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_queue_stays_bounded() {
    const QUEUE_BYTES: u64 = 256 * 1024;
    let config = ServerConfig {
        limits: Limits {
            rate_per_sec: 1_000_000,
            rate_burst: 1_000_000,
            outbound_queue_bytes: QUEUE_BYTES as usize,
            // Neither pings, the idle check nor the write deadline may be what ends it: the
            // queue overflowing must, even while a write to the client is blocked.
            heartbeat: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let (_stalled, stalled_id) = stalled_client(&server, "flood", "stalled").await;
    let mut flooder = Client::connect(&server).await;
    flooder.join("flood", "flooder").await;
    let (mut sink, mut stream) = flooder.ws.split();
    let app = server.app.clone();
    let target = stalled_id.clone();
    let flood = tokio::spawn(async move {
        let payload = "x".repeat(16 * 1024);
        let mut max_queued = 0;
        let mut sent = 0;
        // Up to 64 MB: far more than the socket buffers and the queue can hold.
        for _ in 0..4000 {
            let msg = json!({"v":1,"type":"signal","to":target,"data":payload});
            if sink.send(Message::text(msg.to_string())).await.is_err() {
                break;
            }
            // Paced while the client's socket still takes data, so that the server ends up
            // blocked writing to it (rather than the queue overflowing before it writes).
            sent += 1;
            let paced = tokio::time::Instant::now();
            while (app.metrics.messages_relayed.load(Relaxed) < sent
                || app.metrics.queued_bytes.load(Relaxed) > 0)
                && paced.elapsed() < Duration::from_millis(200)
            {
                max_queued = max_queued.max(app.metrics.queued_bytes.load(Relaxed));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max_queued = max_queued.max(app.metrics.queued_bytes.load(Relaxed));
            if app.metrics.peers.load(Relaxed) < 2 {
                break;
            }
        }
        (sink, max_queued)
    });
    // The stalled client is dropped (its room hears of it) while its socket is still open.
    let left = wait_for(&mut stream, Duration::from_secs(60), |v| {
        v["type"] == "peer_left"
    })
    .await;
    assert_eq!(left["peer_id"], stalled_id.as_str());
    let (sink, max_queued) = flood.await.unwrap();
    assert!(
        max_queued <= QUEUE_BYTES + 20 * 1024,
        "{max_queued} bytes queued for one client"
    );
    assert!(server.app.metrics.errors(ErrorCode::SlowConsumer) >= 1);
    // What it had queued is released, and the server goes on serving.
    let mut flooder = Client {
        ws: sink.reunite(stream).unwrap(),
    };
    flooder.send(json!({"v":1,"type":"ping"})).await;
    wait_for(&mut flooder.ws, WAIT, |v| v["type"] == "pong").await;
    assert_eq!(server.app.metrics.queued_bytes.load(Relaxed), 0);
    server.stop().await;
}

/// Everything the server sends on a raw TCP connection until it closes it.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("the server keeps the connection open")
        .ok();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn sockets_that_never_join_are_dropped_and_free_their_slots() {
    let secret = b"server secret".to_vec();
    let config = ServerConfig {
        secret: Some(secret.clone()),
        limits: Limits {
            max_connections: 5,
            join_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    // Five sockets take every slot and never join; one of them talks, which is not enough.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(Client::connect(&server).await);
    }
    idle[0].ping().await;
    for c in &mut idle {
        c.expect_error("join_timeout").await;
        assert!(c.recv().await.is_none(), "connection must close");
    }
    // A client with a valid token gets in, and is not dropped for having joined.
    let mut alice = Client::connect(&server).await;
    alice
        .send(json!({"v":1,"type":"join","room":"r","name":"alice",
            "token": mint(&secret, "r", "alice", unix_now() + 60)}))
        .await;
    alice.expect("welcome").await;
    let mut late = Client::connect(&server).await;
    late.expect_error("join_timeout").await;
    alice.ping().await;
    // Leaving starts the clock again.
    alice.send(json!({"v":1,"type":"leave"})).await;
    alice.expect_error("join_timeout").await;
    assert!(alice.recv().await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn slow_or_silent_http_requests_time_out() {
    use tokio::io::AsyncWriteExt;
    let config = ServerConfig {
        limits: Limits {
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A finished request is answered; the kept-alive connection must then start the next one
    // within the timeout too.
    let mut kept = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(!read_until_closed(&mut partial).await.contains("ok"));
    let answered = read_until_closed(&mut kept).await;
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("ok\n"),
        "{answered}"
    );
    raw_connections(&server, 0).await;
    server.stop().await;
}

/// Waits until the server counts `n` open TCP connections.
async fn raw_connections(server: &Server, n: u64) {
    tokio::time::timeout(WAIT, async {
        while server.app.metrics.raw_connections.load(Relaxed) != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("raw connection count");
}

#[tokio::test]
async fn raw_connections_are_capped_in_total() {
    let config = ServerConfig {
        limits: Limits {
            max_raw_connections: 3,
            header_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    raw_connections(&server, 3).await;
    let mut over = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let refused = read_until_closed(&mut over).await;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("server_full"),
        "{refused}"
    );
    // A WebSocket counts while it lives; a freed slot is usable again.
    held.pop();
    raw_connections(&server, 2).await;
    let mut c = Client::connect(&server).await;
    c.join("r", "c").await;
    assert!(
        tokio_tungstenite::connect_async(server.url())
            .await
            .is_err()
    );
    drop(c);
    raw_connections(&server, 2).await;
    Client::connect(&server).await.ping().await;
    assert!(server.app.metrics.errors(ErrorCode::ServerFull) >= 2);
    server.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_address() {
    let config = ServerConfig {
        limits: Limits {
            max_connections_per_ip: 2,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let mut a = Client::connect(&server).await;
    let _b = Client::connect(&server).await;
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = response.body().clone().unwrap_or_default();
            assert!(String::from_utf8_lossy(&body).contains("too_many_connections"));
        }
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    // Another address is not affected (all of 127/8 is loopback on Linux).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        server.url(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    Client { ws }.ping().await;
    a.ping().await;
    assert_eq!(server.app.metrics.errors(ErrorCode::TooManyConnections), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_token_is_held_by_one_connection_at_a_time() {
    let secret = b"server secret".to_vec();
    let config = ServerConfig {
        secret: Some(secret.clone()),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let token = mint(&secret, "r", "alice", unix_now() + 60);
    let join = |token: &str| json!({"v":1,"type":"join","room":"r","name":"alice","token":token});

    // A squatter with a leaked token joins first: the real peer is refused, not seated twice.
    let mut squatter = Client::connect(&server).await;
    squatter.send(join(&token)).await;
    squatter.expect("welcome").await;
    let mut real = Client::connect(&server).await;
    real.send(join(&token)).await;
    real.expect_error("token_in_use").await;
    // Textual variants of the token are not a way around it: they are not tokens at all.
    let (head, mac) = token.rsplit_once('.').unwrap();
    let expiry = head.strip_prefix("v1.").unwrap();
    for variant in [
        format!("v1.0{expiry}.{mac}"),
        format!("v1.{expiry}.{}", mac.to_ascii_uppercase()),
    ] {
        real.send(join(&variant)).await;
        real.expect_error("bad_token").await;
    }
    let mut watcher = Client::connect(&server).await;
    watcher
        .send(json!({"v":1,"type":"join","room":"r","name":"bob",
            "token": mint(&secret, "r", "bob", unix_now() + 60)}))
        .await;
    let peers = watcher.expect("welcome").await["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
    squatter.expect("peer_joined").await;

    // Leaving the room keeps the token held by that connection; it may rejoin with it.
    squatter.send(json!({"v":1,"type":"leave"})).await;
    watcher.expect("peer_left").await;
    real.send(join(&token)).await;
    real.expect_error("token_in_use").await;
    squatter.send(join(&token)).await;
    squatter.expect("welcome").await;
    watcher.expect("peer_joined").await;

    // Once that connection closes, the token may be used again (a client reconnecting).
    drop(squatter);
    watcher.expect("peer_left").await;
    real.send(join(&token)).await;
    real.expect("welcome").await;
    server.stop().await;
}

#[tokio::test]
async fn names_are_unique_in_a_room_up_to_confusables() {
    let server = Server::start(ServerConfig::default()).await;
    let mut bob = Client::connect(&server).await;
    bob.join("r", "bob").await;
    let mut other = Client::connect(&server).await;
    for taken in [
        "bob",
        "BOB",
        "\u{ff42}\u{ff4f}\u{ff42}",
        "b\u{43e}b",
        "b\u{200b}ob",
    ] {
        other
            .send(json!({"v":1,"type":"join","room":"r","name":taken}))
            .await;
        other.expect_error("name_taken").await;
    }
    // The same name elsewhere, and a different name here, are fine.
    Client::connect(&server)
        .await
        .join("elsewhere", "bob")
        .await;
    let w = other.join("r", "rob").await;
    assert_eq!(w["peers"][0]["name"], "bob");
    bob.expect("peer_joined").await;
    // Once bob has left, the name is free.
    drop(bob);
    other.expect("peer_left").await;
    Client::connect(&server).await.join("r", "Bob").await;
    server.stop().await;
}

#[tokio::test]
async fn the_engine_client_is_refused_a_taken_seat_and_retries() {
    let server = Server::start(ServerConfig::default()).await;
    let mut squatter = Client::connect(&server).await;
    squatter.join("call", "alice").await;
    let mut cfg = SignalConfig::new(server.url(), "call", "alice");
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    let (alice, mut events) = SignalClient::connect(cfg);
    let mut refusals = 0;
    while refusals < 2 {
        match next(&mut events).await {
            SignalEvent::ServerError {
                code: ErrorCode::NameTaken,
                ..
            } => refusals += 1,
            SignalEvent::Disconnected { .. } | SignalEvent::Reconnecting { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!alice.is_joined());
    // When the seat is free (as when the server notices our own dropped connection), it joins.
    squatter.send(json!({"v":1,"type":"leave"})).await;
    loop {
        if let SignalEvent::Joined { .. } = next(&mut events).await {
            break;
        }
    }
    alice.close().await;
    server.stop().await;
}

#[tokio::test]
async fn peer_ids_are_random() {
    let server = Server::start(ServerConfig::default()).await;
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(&server).await;
        let id = c.join(&format!("room{}", i % 3), &format!("n{i}")).await["peer_id"]
            .as_str()
            .unwrap()
            .to_string();
        clients.push(c);
        ids.push(id);
    }
    for id in &ids {
        let digits = id.strip_prefix('p').unwrap_or_default();
        assert!(
            digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let values: Vec<u64> = ids
        .iter()
        .map(|id| u64::from_str_radix(&id[1..], 16).unwrap())
        .collect();
    let mut unique = values.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids repeat: {ids:?}");
    // Not a counter: neither ordered nor close together.
    assert_ne!(unique, values, "ids are ascending: {ids:?}");
    let spread = unique.last().unwrap() - unique.first().unwrap();
    assert!(spread > u64::MAX / 4, "ids are clustered: {ids:?}");
    server.stop().await;
}

async fn connect_with_origin(
    server: &Server,
    origin: Option<&str>,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.url().into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Client { ws })
}

fn assert_forbidden(result: Result<Client, tokio_tungstenite::tungstenite::Error>) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        Err(e) => panic!("expected HTTP 403, got {e}"),
        Ok(_) => panic!("expected HTTP 403, got a WebSocket"),
    }
}

#[tokio::test]
async fn websocket_origins_are_checked() {
    // Default: no Origin (native clients) or the server's own origin.
    let server = Server::start(ServerConfig::default()).await;
    let own = format!("http://{}", server.addr);
    connect_with_origin(&server, None)
        .await
        .unwrap()
        .ping()
        .await;
    connect_with_origin(&server, Some(&own))
        .await
        .unwrap()
        .ping()
        .await;
    assert_forbidden(connect_with_origin(&server, Some("https://evil.example")).await);
    assert_forbidden(connect_with_origin(&server, Some("null")).await);
    assert_eq!(server.app.metrics.origins_refused.load(Relaxed), 2);
    assert!(
        server
            .app
            .metrics
            .render()
            .contains("sotto_signaling_origins_refused_total 2\n")
    );
    server.stop().await;

    // With an allow-list: no Origin, or a listed one; not even the server's own.
    let config = ServerConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..ServerConfig::default()
    };
    let server = Server::start(config).await;
    let own = format!("http://{}", server.addr);
    connect_with_origin(&server, None)
        .await
        .unwrap()
        .ping()
        .await;
    connect_with_origin(&server, Some("https://app.example"))
        .await
        .unwrap()
        .ping()
        .await;
    assert_forbidden(connect_with_origin(&server, Some(&own)).await);
    assert_forbidden(connect_with_origin(&server, Some("https://evil.example")).await);
    server.stop().await;
}

/// An in-process SFU whose `leave` is slow (300 ms) and that tells when each leave is done.
#[derive(Debug)]
struct SlowLeaveSfu {
    seated: std::sync::Mutex<std::collections::HashSet<String>>,
    left: std::sync::Mutex<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl sotto_signaling::SfuLink for SlowLeaveSfu {
    fn join(
        &self,
        _room: &str,
        peer: &str,
        _offer_sdp: &str,
    ) -> Result<String, sotto_signaling::SfuRefusal> {
        if !self.seated.lock().unwrap().insert(peer.to_owned()) {
            return Err(sotto_signaling::SfuRefusal("already in".into()));
        }
        Ok("v=0 answer".into())
    }
    fn leave(&self, _room: &str, peer: &str) {
        std::thread::sleep(Duration::from_millis(300));
        self.seated.lock().unwrap().remove(peer);
        let _ = self.left.lock().unwrap().send(());
    }
    fn render_metrics(&self) -> String {
        String::new()
    }
}

/// A member that leaves the SFU and offers again at once (as the engine does when its path to
/// the SFU is lost) is seated afterwards: the leave reaches the SFU before the new offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_leave_and_the_offer_after_it_reach_the_sfu_in_order() {
    let (left_tx, mut left) = tokio::sync::mpsc::unbounded_channel();
    let sfu = std::sync::Arc::new(SlowLeaveSfu {
        seated: Default::default(),
        left: std::sync::Mutex::new(left_tx),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = App::with_sfu(ServerConfig::default(), shutdown.clone(), Some(sfu.clone()));
    let task = tokio::spawn(serve(listener, app.clone()));
    let server = Server {
        addr,
        app,
        shutdown,
        task,
    };
    let mut a = Client::connect(&server).await;
    let w = a.join("room", "a").await;
    let me = w["peer_id"].as_str().unwrap().to_owned();
    let offer = json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_offer","sdp":"v=0"}});
    a.send(offer.clone()).await;
    assert_eq!(a.expect("signal").await["data"]["kind"], "sfu_answer");
    a.send(json!({"v":1,"type":"signal","to":"sfu","data":{"kind":"sfu_leave"}}))
        .await;
    a.send(offer).await;
    assert_eq!(a.expect("signal").await["data"]["kind"], "sfu_answer");
    tokio::time::timeout(Duration::from_secs(10), left.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        sfu.seated.lock().unwrap().contains(&me),
        "the leave overtook the offer after it"
    );
    server.stop().await;
}
