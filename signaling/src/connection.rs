//! One client's WebSocket: parse, rate-limit and act on its messages; deliver what the hub
//! queues for it; keep it alive with pings and drop it when idle, too slow or shutting down.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sotto::signal::ErrorCode;
use sotto::signal::protocol::{
    ClientMessage, PROTOCOL_VERSION, ServerMessage, parse_client_message,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{PeerHandle, encode};
use crate::server::App;
use crate::token::{TokenError, unix_now, verify};

/// A reason to end the connection, told to the client before the close frame.
struct Close {
    code: ErrorCode,
    ws_code: u16,
    reason: &'static str,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Joined {
    room: String,
    peer_id: Arc<str>,
}

struct Conn {
    app: Arc<App>,
    tx: mpsc::Sender<Utf8Bytes>,
    kick: CancellationToken,
    joined: Option<Joined>,
    bucket: Bucket,
    last_rate_error: Option<Instant>,
}

impl Conn {
    fn send(&self, msg: &ServerMessage) {
        if self.tx.try_send(encode(msg)).is_err() {
            // Our own replies do not fit: the client is not reading.
            self.kick.cancel();
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.app.metrics.error(code);
        self.send(&ServerMessage::Error {
            v: PROTOCOL_VERSION,
            code,
            message: message.into(),
        });
    }

    fn on_text(&mut self, text: &str, now: Instant) -> Option<Close> {
        self.app.metrics.messages_received.fetch_add(1, Relaxed);
        let limits = &self.app.config.limits;
        if text.len() > limits.max_message_bytes {
            return Some(Close {
                code: ErrorCode::TooLarge,
                ws_code: 1009,
                reason: "message too large",
            });
        }
        if !self.bucket.allow(now) {
            // One error a second is enough to tell a flooding client; the rest are dropped.
            if self
                .last_rate_error
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_rate_error = Some(now);
                self.error(
                    ErrorCode::RateLimited,
                    "too many messages; some were dropped",
                );
            } else {
                self.app.metrics.error(ErrorCode::RateLimited);
            }
            return None;
        }
        let msg = match parse_client_message(text) {
            Ok(msg) => msg,
            Err(e) => {
                self.error(e.code, e.message);
                return None;
            }
        };
        match msg {
            ClientMessage::Join {
                room, name, token, ..
            } => self.on_join(room, name, token),
            ClientMessage::Leave { .. } => match self.joined.take() {
                Some(j) => self.app.hub.leave(&j.room, &j.peer_id),
                None => self.error(ErrorCode::NotJoined, "leave before join"),
            },
            ClientMessage::Signal { to, data, .. } => match &self.joined {
                Some(j) => {
                    if let Err(code) = self.app.hub.relay(&j.room, &j.peer_id, to.as_deref(), data)
                    {
                        self.error(code, "no such peer in this room");
                    }
                }
                None => self.error(ErrorCode::NotJoined, "signal before join"),
            },
            ClientMessage::Ping { .. } => self.send(&ServerMessage::Pong {
                v: PROTOCOL_VERSION,
            }),
        }
        None
    }

    fn on_join(&mut self, room: String, name: String, token: Option<String>) {
        if self.joined.is_some() {
            return self.error(ErrorCode::AlreadyJoined, "already in a room; leave first");
        }
        if let Some(secret) = &self.app.config.secret {
            let Some(token) = token else {
                return self.error(ErrorCode::BadToken, "this server requires a join token");
            };
            match verify(secret, &token, &room, &name, unix_now()) {
                Ok(()) => {}
                Err(TokenError::Expired) => {
                    return self.error(ErrorCode::TokenExpired, "join token expired");
                }
                Err(e) => return self.error(ErrorCode::BadToken, e.to_string()),
            }
        }
        let handle = PeerHandle {
            tx: self.tx.clone(),
            kick: self.kick.clone(),
        };
        match self.app.hub.join(&room, &name, handle) {
            Ok((peer_id, peers)) => {
                tracing::info!(peer = %peer_id, room = %room, "joined");
                self.send(&ServerMessage::Welcome {
                    v: PROTOCOL_VERSION,
                    peer_id: peer_id.to_string(),
                    room: room.clone(),
                    peers,
                });
                self.joined = Some(Joined { room, peer_id });
            }
            Err(code) => self.error(code, "room is full"),
        }
    }
}

/// Sends an error message and a close frame, ignoring a client that is already gone.
async fn close_with(
    sink: &mut (impl SinkExt<Message> + Unpin),
    app: &App,
    close: Close,
    detail: &str,
) {
    app.metrics.error(close.code);
    let msg = encode(&ServerMessage::Error {
        v: PROTOCOL_VERSION,
        code: close.code,
        message: detail.to_string(),
    });
    let _ = sink.send(Message::Text(msg)).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close.ws_code,
            reason: Utf8Bytes::from_static(close.reason),
        })))
        .await;
}

/// Refuses a connection beyond the server's connection limit, politely.
pub(crate) async fn refuse_full(socket: WebSocket, app: Arc<App>) {
    let (mut sink, _) = socket.split();
    let close = Close {
        code: ErrorCode::ServerFull,
        ws_code: 1013,
        reason: "server full",
    };
    close_with(
        &mut sink,
        &app,
        close,
        "too many connections; try again later",
    )
    .await;
}

/// Serves one client until it leaves, misbehaves, idles out or the server shuts down.
pub(crate) async fn run(socket: WebSocket, app: Arc<App>) {
    let limits = app.config.limits.clone();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(limits.outbound_queue);
    let kick = app.shutdown.child_token();
    let mut conn = Conn {
        app: app.clone(),
        tx,
        kick: kick.clone(),
        joined: None,
        bucket: Bucket::new(limits.rate_per_sec, limits.rate_burst),
        last_rate_error: None,
    };
    let mut heartbeat = tokio::time::interval(limits.heartbeat);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();

    let close: Option<(Close, &str)> = loop {
        tokio::select! {
            biased;
            () = kick.cancelled() => {
                break Some(if app.shutdown.is_cancelled() {
                    (Close { code: ErrorCode::ShuttingDown, ws_code: 1001, reason: "server shutting down" },
                     "the server is shutting down")
                } else {
                    (Close { code: ErrorCode::SlowConsumer, ws_code: 1008, reason: "too slow" },
                     "messages queued faster than they were read")
                });
            }
            Some(frame) = rx.recv() => {
                if sink.send(Message::Text(frame)).await.is_err() {
                    break None;
                }
            }
            inbound = stream.next() => {
                let Some(Ok(msg)) = inbound else { break None };
                let now = Instant::now();
                last_seen = now;
                match msg {
                    Message::Text(text) => {
                        if let Some(close) = conn.on_text(text.as_str(), now) {
                            break Some((close, "message exceeds the size limit"));
                        }
                    }
                    Message::Binary(_) => conn.error(ErrorCode::BadMessage, "binary frames are not supported"),
                    Message::Close(_) => break None,
                    // Pings are answered by the WebSocket layer; pongs only refresh `last_seen`.
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > limits.idle_timeout {
                    break Some((Close { code: ErrorCode::IdleTimeout, ws_code: 1000, reason: "idle" },
                                "no traffic within the idle timeout"));
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };

    if let Some(j) = conn.joined.take() {
        app.hub.leave(&j.room, &j.peer_id);
        tracing::info!(peer = %j.peer_id, room = %j.room, "left");
    }
    if let Some((close, detail)) = close {
        // Flush what was queued before the reason, so the client sees both in order.
        while let Ok(frame) = rx.try_recv() {
            if sink.send(Message::Text(frame)).await.is_err() {
                break;
            }
        }
        close_with(&mut sink, &app, close, detail).await;
    }
}
