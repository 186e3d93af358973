//! The signaling client: joins a room, relays messages, and reconnects with exponential
//! backoff and jitter when the connection drops, rejoining the room each time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::protocol::{
    ClientMessage, ErrorCode, IceServerInfo, PROTOCOL_VERSION, PeerInfo, ServerMessage,
};
use super::tls::{self, ConnectError, Io};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    /// The server's WebSocket URL, as it prints it (`ws://HOST:PORT/ws`).
    pub url: String,
    /// Other servers of the same deployment (nodes sharing rooms), tried in turn after `url`
    /// when a connection drops or cannot be made. Empty: `url` only.
    pub fallback_urls: Vec<String>,
    /// Room to join.
    pub room: String,
    /// Display name.
    pub name: String,
    /// Join token, for servers with a secret.
    pub token: Option<String>,
    /// Join as a group member (`join` with `"group": true`): set by calls that are group
    /// calls from the start, so the others know to meet them on the SFU.
    pub group: bool,
    /// First reconnect delay; doubles per round of failed attempts over the server list.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Give up after this many consecutive failed attempts (`None`: never).
    pub max_attempts: Option<u32>,
    /// Once joined, reconnect without limit: `max_attempts` then bounds the first join only
    /// (a call in progress keeps trying to get its signaling back while its media flows).
    pub retry_forever_once_joined: bool,
    /// Time allowed for one connection attempt.
    pub connect_timeout: Duration,
    /// For `wss://`: trust only the certificates in this PEM file (a private CA, or a
    /// self-signed server's own certificate) instead of the usual public roots.
    pub ca_cert: Option<PathBuf>,
}

impl SignalConfig {
    /// Defaults for `url`, `room` and `name`: backoff from 200 ms to 10 s, retrying forever.
    pub fn new(url: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        SignalConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            room: room.into(),
            name: name.into(),
            token: None,
            group: false,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_attempts: None,
            retry_forever_once_joined: false,
            connect_timeout: Duration::from_secs(5),
            ca_cert: None,
        }
    }

    /// The URL of attempt number `attempt` (0 first): `url`, then each fallback, in a ring.
    fn url_for(&self, attempt: usize) -> &str {
        let count = 1 + self.fallback_urls.len();
        match attempt % count {
            0 => &self.url,
            i => self
                .fallback_urls
                .get(i - 1)
                .map_or(&self.url, String::as_str),
        }
    }
}

/// What happens on the signaling connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignalEvent {
    /// Joined (or rejoined) the room.
    Joined {
        /// Our id in the room.
        peer_id: String,
        /// Our slot in the room (see [`PeerInfo::slot`]).
        slot: Option<u8>,
        /// Peers already there.
        peers: Vec<PeerInfo>,
        /// STUN and TURN servers the server offers.
        ice_servers: Vec<IceServerInfo>,
        /// Whether the server has an SFU (peer id `sfu`) for group calls.
        sfu: bool,
    },
    /// A peer joined.
    PeerJoined(PeerInfo),
    /// A peer left.
    PeerLeft {
        /// Its id.
        peer_id: String,
    },
    /// A relayed message.
    Message {
        /// Sender's peer id (stamped by the server).
        from: String,
        /// The payload as the sender sent it.
        data: Box<RawValue>,
    },
    /// The server refused something.
    ServerError {
        /// Why.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The connection dropped.
    Disconnected {
        /// What happened.
        reason: String,
    },
    /// Waiting before the next connection attempt.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// How long until the next one.
        delay: Duration,
    },
    /// The client stopped for good (closed, gave up, or refused by the server).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Errors of the client API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignalError {
    /// Not currently joined to the room; the message was not sent.
    #[error("not connected to the signaling server")]
    NotConnected,
    /// The payload could not be serialised.
    #[error("payload is not serialisable: {0}")]
    Payload(String),
    /// The client was closed.
    #[error("signaling client closed")]
    Closed,
}

enum Command {
    Send(String),
    Close,
}

/// A running signaling client. Dropping it closes the connection.
#[derive(Debug)]
pub struct SignalClient {
    commands: mpsc::Sender<Command>,
    joined: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

/// Errors after which reconnecting cannot help.
fn is_fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken
            | ErrorCode::TokenExpired
            | ErrorCode::RoomFull
            | ErrorCode::UnsupportedVersion
    )
}

/// Join refusals because our seat is held: by our own previous connection that the server
/// has not yet seen drop (it frees the seat when it does), or by someone else with our name or
/// token. Retried with backoff; every refusal is reported as a `ServerError` event.
fn is_seat_taken(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::NameTaken | ErrorCode::TokenInUse)
}

fn jitter(delay: Duration) -> Duration {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 2];
    let r = SystemRandom::new().fill(&mut b).map_or(0.5, |()| {
        f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX)
    });
    // Between half and all of the delay, so clients dropped together do not return together.
    delay.mul_f64(0.5 + 0.5 * r)
}

enum SessionEnd {
    Dropped(String),
    Fatal(String),
    ClosedByUser,
}

impl SignalClient {
    /// Starts connecting on the current tokio runtime; events arrive on the returned channel.
    pub fn connect(config: SignalConfig) -> (Self, mpsc::Receiver<SignalEvent>) {
        let (commands, command_rx) = mpsc::channel(256);
        let (events, event_rx) = mpsc::channel(256);
        let joined = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(config, command_rx, events, joined.clone()));
        (
            SignalClient {
                commands,
                joined,
                task: Some(task),
            },
            event_rx,
        )
    }

    /// Whether the client is in the room right now.
    pub fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    async fn signal(&self, to: Option<&str>, data: &impl Serialize) -> Result<(), SignalError> {
        if !self.is_joined() {
            return Err(SignalError::NotConnected);
        }
        let data = serde_json::value::to_raw_value(data)
            .map_err(|e| SignalError::Payload(e.to_string()))?;
        let msg = ClientMessage::Signal {
            v: PROTOCOL_VERSION,
            to: to.map(str::to_string),
            data,
        };
        let text = serde_json::to_string(&msg).map_err(|e| SignalError::Payload(e.to_string()))?;
        self.commands
            .send(Command::Send(text))
            .await
            .map_err(|_| SignalError::Closed)
    }

    /// Relays `data` to one peer.
    pub async fn send_to(&self, peer_id: &str, data: &impl Serialize) -> Result<(), SignalError> {
        self.signal(Some(peer_id), data).await
    }

    /// Relays `data` to every other peer in the room.
    pub async fn broadcast(&self, data: &impl Serialize) -> Result<(), SignalError> {
        self.signal(None, data).await
    }

    /// Leaves the room, closes the connection and waits for the client to stop.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SignalClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    config: SignalConfig,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<SignalEvent>,
    joined: Arc<AtomicBool>,
) {
    let mut failures: u32 = 0;
    // Which server of the list the next attempt uses: the one that last worked stays, and a
    // drop or a failed attempt moves on to the next (the node may be gone).
    let mut server: usize = 0;
    let mut ever_joined = false;
    loop {
        let url = config.url_for(server);
        tracing::debug!(url, "connecting to signaling");
        let end = session(&config, url, &mut commands, &events, &joined, &mut failures).await;
        ever_joined |= joined.swap(false, Ordering::AcqRel);
        let limit = if ever_joined && config.retry_forever_once_joined {
            None
        } else {
            config.max_attempts
        };
        let reason = match end {
            SessionEnd::ClosedByUser => "closed".to_string(),
            SessionEnd::Fatal(reason) => reason,
            SessionEnd::Dropped(reason) => {
                server = server.wrapping_add(1);
                let _ = events
                    .send(SignalEvent::Disconnected {
                        reason: reason.clone(),
                    })
                    .await;
                failures = failures.saturating_add(1);
                if limit.is_some_and(|max| failures >= max) {
                    format!("gave up after {failures} attempts: {reason}")
                } else {
                    // The delay grows per round of the server list: a dead node does not
                    // hold up trying the next one.
                    let servers = u32::try_from(1 + config.fallback_urls.len()).unwrap_or(u32::MAX);
                    let round = (failures - 1) / servers;
                    let exp = config.backoff_initial.saturating_mul(1u32 << round.min(16));
                    let delay = jitter(exp.min(config.backoff_max));
                    let _ = events
                        .send(SignalEvent::Reconnecting {
                            attempt: failures,
                            delay,
                        })
                        .await;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        cmd = commands.recv() => match cmd {
                            Some(Command::Close) | None => "closed".to_string(),
                            // Nothing can be sent while disconnected; callers see NotConnected.
                            Some(Command::Send(_)) => continue,
                        },
                    }
                }
            }
        };
        let _ = events.send(SignalEvent::Closed { reason }).await;
        return;
    }
}

/// Opens the WebSocket: `ws://` over TCP, `wss://` over TLS.
async fn connect(
    config: &SignalConfig,
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, ConnectError> {
    let request = url
        .into_client_request()
        .map_err(|e| ConnectError::Fatal(format!("bad server URL {url:?}: {e}")))?;
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(ConnectError::Fatal(format!(
                "server URL {url:?} is not ws:// or wss://"
            )));
        }
    };
    let Some(host) = uri.host().map(str::to_string) else {
        return Err(ConnectError::Fatal(format!(
            "server URL {url:?} has no host"
        )));
    };
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tls = if secure {
        Some(tls::client_config(config.ca_cert.as_deref()).map_err(ConnectError::Fatal)?)
    } else {
        None
    };
    let io = tls::open(&host, port, tls.as_ref()).await?;
    match tokio_tungstenite::client_async(request, io).await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(ConnectError::Transient(format!("connect failed: {e}"))),
    }
}

/// One connection: connect, join, relay until it ends.
async fn session(
    config: &SignalConfig,
    url: &str,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<SignalEvent>,
    joined: &AtomicBool,
    failures: &mut u32,
) -> SessionEnd {
    let ws = match tokio::time::timeout(config.connect_timeout, connect(config, url)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(ConnectError::Transient(e))) => return SessionEnd::Dropped(e),
        Ok(Err(ConnectError::Fatal(e))) => return SessionEnd::Fatal(e),
        Err(_) => return SessionEnd::Dropped("connect timed out".into()),
    };
    let (mut sink, mut stream) = ws.split();
    let join = ClientMessage::Join {
        v: PROTOCOL_VERSION,
        room: config.room.clone(),
        name: config.name.clone(),
        token: config.token.clone(),
        group: config.group,
    };
    let Ok(join) = serde_json::to_string(&join) else {
        return SessionEnd::Fatal("cannot encode join".into());
    };
    if let Err(e) = sink.send(Message::text(join)).await {
        return SessionEnd::Dropped(format!("send failed: {e}"));
    }
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Send(text)) => {
                    if let Err(e) = sink.send(Message::text(text)).await {
                        return SessionEnd::Dropped(format!("send failed: {e}"));
                    }
                }
                Some(Command::Close) | None => {
                    let _ = sink.send(Message::text(format!(r#"{{"v":{PROTOCOL_VERSION},"type":"leave"}}"#))).await;
                    let _ = sink.close().await;
                    return SessionEnd::ClosedByUser;
                }
            },
            inbound = stream.next() => {
                let text = match inbound {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(|| "closed by server".to_string(), |f| format!("closed by server: {}", f.reason));
                        return SessionEnd::Dropped(why);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return SessionEnd::Dropped(format!("connection error: {e}")),
                    None => return SessionEnd::Dropped("connection closed".into()),
                };
                let Ok(msg) = ServerMessage::parse(text.as_str()) else {
                    tracing::warn!("ignoring an unparseable message from the signaling server");
                    continue;
                };
                let event = match msg {
                    ServerMessage::Welcome { peer_id, slot, peers, ice_servers, sfu, .. } => {
                        joined.store(true, Ordering::Release);
                        *failures = 0;
                        SignalEvent::Joined { peer_id, slot, peers, ice_servers, sfu }
                    }
                    ServerMessage::PeerJoined { peer_id, name, slot, group, .. } => SignalEvent::PeerJoined(PeerInfo { peer_id, name, slot, group }),
                    ServerMessage::PeerLeft { peer_id, .. } => SignalEvent::PeerLeft { peer_id },
                    ServerMessage::Signal { from, data, .. } => SignalEvent::Message { from, data },
                    ServerMessage::Pong { .. } => continue,
                    ServerMessage::Error { code, message, .. } => {
                        let fatal = is_fatal(code);
                        let _ = events.send(SignalEvent::ServerError { code, message: message.clone() }).await;
                        if fatal {
                            return SessionEnd::Fatal(format!("refused by server: {}: {message}", code.as_str()));
                        }
                        if is_seat_taken(code) {
                            return SessionEnd::Dropped(format!("join refused: {}: {message}", code.as_str()));
                        }
                        continue;
                    }
                };
                if events.send(event).await.is_err() {
                    // Nobody listens any more.
                    return SessionEnd::ClosedByUser;
                }
            }
        }
    }
}
