//! A hostile signaling server, for tests: what an operator who controls the server can do to a
//! two-party call. It serves one room to two victims (and the web client's files, for
//! browsers), and according to its [`Attack`]:
//!
//! - [`Attack::OwnHandshakes`]: runs a handshake of its own with each victim, under names it
//!   chooses (the other victim's name, or a lookalike), signing each victim's real DTLS
//!   fingerprint so the transport check passes, and forwards the SDP. Media then flows peer to
//!   peer, sealed under keys the two victims do not share.
//! - [`Attack::SwapDtls`]: forwards the handshake untouched but replaces the DTLS fingerprint in
//!   the SDP, as it must to sit in the DTLS path itself.
//! - [`Attack::None`]: an honest relay (for a first, genuine call).
//!
//! It speaks signaling protocol version 1 (`signaling/PROTOCOL.md`): join, signal, leave, ping.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sotto::handshake::{DtlsFingerprint, Handshake, Identity};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the hostile server does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    /// Relays honestly.
    None,
    /// Runs its own handshakes. `as_first` is the name it attests and claims towards the
    /// first victim (in place of the second's), `as_second` towards the second victim.
    OwnHandshakes {
        /// Shown to the first victim to join.
        as_first: Option<String>,
        /// Shown to the second victim to join.
        as_second: Option<String>,
    },
    /// Replaces the DTLS fingerprint in every SDP with one of its own.
    SwapDtls,
    /// Relays honestly, then, once the handshake is over, delivers every handshake message
    /// once more to the side that already had it.
    ReplayHandshake,
}

/// Mallory's state for one call.
struct Room {
    attack: Attack,
    /// Victims by peer id, in join order: (id, real name, outbound queue).
    victims: Vec<(String, String, mpsc::UnboundedSender<String>)>,
    mallory: Arc<Identity>,
    /// The second victim's `hello`, kept until the first victim's DTLS fingerprint is known.
    held_hello: Option<Value>,
    /// Mallory's handshake with the first victim (she initiates it).
    leg_first: Option<Handshake>,
    /// Mallory's handshake with the second victim (she responds).
    leg_second: Option<Handshake>,
    room: String,
    /// Handshakes Mallory completed (both legs of one call: 2).
    pub established: usize,
    /// Handshake messages relayed, as (recipient index, data), for replaying.
    relayed: Vec<(usize, Value)>,
}

/// A running hostile server.
pub struct Mitm {
    /// `ws://127.0.0.1:PORT/ws`.
    pub url: String,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    state: Arc<Mutex<Room>>,
    shutdown: CancellationToken,
}

impl Mitm {
    /// Starts it on a free loopback port; `web_dir` is served at `/` when given.
    pub async fn start(attack: Attack, web_dir: Option<PathBuf>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Room {
            attack,
            victims: Vec::new(),
            mallory: Arc::new(Identity::generate().unwrap()),
            held_hello: None,
            leg_first: None,
            leg_second: None,
            room: String::new(),
            established: 0,
            relayed: Vec::new(),
        }));
        let mut router = Router::new().route("/ws", get(upgrade));
        if let Some(dir) = web_dir {
            router = router.fallback_service(tower_http::services::ServeDir::new(dir));
        }
        // Pages under the same CSP and headers as from the real server.
        let app = router
            .layer(axum::middleware::map_response(
                sotto_signaling::web::security_headers,
            ))
            .with_state(Arc::clone(&state));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        Mitm {
            url: format!("ws://{addr}/ws"),
            http: format!("http://{addr}"),
            state,
            shutdown,
        }
    }

    /// Mallory's identity key fingerprint (what the victims pin if they trust her).
    pub fn fingerprint(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .mallory
            .public_key()
            .fingerprint()
    }

    /// How many handshakes Mallory completed herself.
    pub fn handshakes_completed(&self) -> usize {
        self.state.lock().unwrap().established
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn upgrade(ws: WebSocketUpgrade, State(state): State<Arc<Mutex<Room>>>) -> Response {
    ws.on_upgrade(move |socket| victim(socket, state))
}

fn server_msg(mut v: Value) -> String {
    v["v"] = json!(1);
    v.to_string()
}

/// One victim's connection.
async fn victim(socket: WebSocket, state: Arc<Mutex<Room>>) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let mut me: Option<String> = None;
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("ping") => {
                let _ = tx.send(server_msg(json!({"type": "pong"})));
            }
            Some("join") => {
                let id = join(&state, &v, tx.clone());
                me = Some(id);
            }
            Some("signal") => {
                if let Some(from) = &me {
                    on_signal(&state, from, &v);
                }
            }
            Some("leave") => break,
            _ => {}
        }
    }
    if let Some(id) = me {
        let room = state.lock().unwrap();
        for (other, _, out) in &room.victims {
            if *other != id {
                let _ = out.send(server_msg(json!({"type": "peer_left", "peer_id": id})));
            }
        }
    }
    writer.abort();
}

/// The name Mallory attests for the other victim, towards victim `index`.
fn shown_to(room: &Room, index: usize) -> String {
    let real_other = room
        .victims
        .get(1 - index)
        .map(|v| v.1.clone())
        .unwrap_or_default();
    match &room.attack {
        Attack::OwnHandshakes {
            as_first,
            as_second,
        } => {
            let chosen = if index == 0 { as_first } else { as_second };
            chosen.clone().unwrap_or(real_other)
        }
        _ => real_other,
    }
}

fn join(state: &Mutex<Room>, v: &Value, tx: mpsc::UnboundedSender<String>) -> String {
    let mut room = state.lock().unwrap();
    let id = format!("p{}", room.victims.len() + 1);
    let name = v["name"].as_str().unwrap_or("").to_string();
    room.room = v["room"].as_str().unwrap_or("").to_string();
    room.victims.push((id.clone(), name, tx.clone()));
    let index = room.victims.len() - 1;
    let peers: Vec<Value> = if index == 1 {
        vec![json!({"peer_id": room.victims[0].0, "name": shown_to(&room, 1)})]
    } else {
        vec![]
    };
    let _ = tx.send(server_msg(json!({
        "type": "welcome", "peer_id": id, "room": room.room, "peers": peers
    })));
    if index == 1 {
        let shown = shown_to(&room, 0);
        let _ = room.victims[0].2.send(server_msg(
            json!({"type": "peer_joined", "peer_id": id, "name": shown}),
        ));
    }
    id
}

/// Delivers `data` to victim `index` as if from the other victim.
fn deliver(room: &Room, index: usize, data: Value) {
    let from = room.victims[1 - index].0.clone();
    let _ = room.victims[index].2.send(server_msg(
        json!({"type": "signal", "from": from, "data": data}),
    ));
}

fn handshake_data(message: &[u8]) -> Value {
    json!({"kind": "handshake", "message": serde_json::from_slice::<Value>(message).unwrap()})
}

fn on_signal(state: &Mutex<Room>, from: &str, v: &Value) {
    let mut room = state.lock().unwrap();
    let Some(sender) = room.victims.iter().position(|x| x.0 == from) else {
        return;
    };
    if room.victims.len() < 2 {
        return;
    }
    let mut data = v["data"].clone();
    let kind = data["kind"].as_str().unwrap_or("").to_string();
    match (&room.attack, kind.as_str()) {
        (Attack::OwnHandshakes { .. }, "handshake") => intercept(&mut room, sender, &data),
        (Attack::SwapDtls, "offer" | "answer") => {
            let sdp = data["sdp"].as_str().unwrap_or("").to_string();
            let forged = DtlsFingerprint::from_sha256([0x66; 32]).to_string();
            let rewritten: Vec<String> = sdp
                .split("\r\n")
                .map(|line| {
                    if line.starts_with("a=fingerprint:") {
                        format!("a=fingerprint:{forged}")
                    } else {
                        line.to_string()
                    }
                })
                .collect();
            data["sdp"] = json!(rewritten.join("\r\n"));
            deliver(&room, 1 - sender, data);
        }
        (Attack::ReplayHandshake, "handshake") => {
            let last = data["message"]["type"] == "confirm";
            room.relayed.push((1 - sender, data.clone()));
            deliver(&room, 1 - sender, data);
            if last {
                for (to, old) in room.relayed.clone() {
                    deliver(&room, to, old);
                }
            }
        }
        _ => deliver(&room, 1 - sender, data),
    }
}

/// Mallory's two handshakes. The second victim initiates towards "the first"; Mallory
/// answers it only once she has the first victim's DTLS fingerprint, which she learns by
/// initiating her own handshake with the first victim.
fn intercept(room: &mut Room, sender: usize, data: &Value) {
    let message = &data["message"];
    let bytes = serde_json::to_vec(message).unwrap();
    let kind = message["type"].as_str().unwrap_or("");
    match (sender, kind) {
        (1, "hello") => {
            let second_dtls = DtlsFingerprint::parse(message["dtls"].as_str().unwrap()).unwrap();
            let name = shown_to(room, 0);
            let (leg, hello) =
                Handshake::initiator(Arc::clone(&room.mallory), &room.room, &name, &second_dtls)
                    .unwrap();
            room.leg_first = Some(leg);
            room.held_hello = Some(message.clone());
            deliver(room, 0, handshake_data(&hello));
        }
        (0, "reply") => {
            let first_dtls = DtlsFingerprint::parse(message["dtls"].as_str().unwrap()).unwrap();
            let leg = room.leg_first.as_mut().unwrap();
            let reveal = leg.handle(&bytes).unwrap().send.unwrap();
            deliver(room, 0, handshake_data(&reveal));
            let name = shown_to(room, 1);
            let mut second =
                Handshake::responder(Arc::clone(&room.mallory), &room.room, &name, &first_dtls)
                    .unwrap();
            let hello = serde_json::to_vec(&room.held_hello.take().unwrap()).unwrap();
            let reply = second.handle(&hello).unwrap().send.unwrap();
            room.leg_second = Some(second);
            deliver(room, 1, handshake_data(&reply));
        }
        (1, "reveal") => {
            let step = room.leg_second.as_mut().unwrap().handle(&bytes).unwrap();
            if step.established.is_some() {
                room.established += 1;
            }
            deliver(room, 1, handshake_data(&step.send.unwrap()));
        }
        (0, "confirm") => {
            let step = room.leg_first.as_mut().unwrap().handle(&bytes).unwrap();
            if step.established.is_some() {
                room.established += 1;
            }
        }
        _ => {}
    }
}
