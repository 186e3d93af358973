//! One client's WebSocket: parse, rate-limit and act on its messages; deliver what the hub
//! queues for it; keep it alive with pings and drop it when idle, too slow or shutting down.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sotto::signal::ErrorCode;
use sotto::signal::protocol::{
    ClientMessage, PROTOCOL_VERSION, PeerInfo, SFU_PEER_ID, ServerMessage, parse_client_message,
};
use tokio_util::sync::CancellationToken;

use crate::hub::{Inbox, Outbox, PeerHandle, encode, outbox};
use crate::server::App;
use crate::sfu_link::{
    SfuAttach, SfuRefusal, SfuReply, SfuSignal, answer_data, forwarded_leave, forwarded_offer,
    is_attach, refusal_text,
};
use crate::sfu_pool::{NoRoute, Route};
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

/// A join waiting for the cluster: the room, the drawn id, the token claim to keep, and the
/// answer (taken by the connection's loop).
struct Joining {
    room: String,
    peer_id: Arc<str>,
    claim: Option<TokenClaim>,
    answer: Option<tokio::sync::oneshot::Receiver<crate::hub::JoinOutcome>>,
}

/// How long a join may wait for the cluster before it is refused as `unavailable`.
const CLUSTER_JOIN_WAIT: Duration = Duration::from_secs(5);

struct Joined {
    room: String,
    peer_id: Arc<str>,
    /// This member's calls to the in-process SFU, in order.
    sfu_jobs: SfuJobs,
}

/// A member's calls to the in-process SFU, run one after the other on the blocking pool: a
/// leave and the offer right after it (a member reconnecting) must reach the SFU in that order.
/// A thread is used only while there is work.
#[derive(Clone, Default)]
struct SfuJobs(Arc<std::sync::Mutex<JobQueue>>);

#[derive(Default)]
struct JobQueue {
    jobs: std::collections::VecDeque<Box<dyn FnOnce() + Send>>,
    running: bool,
}

/// Offers waiting for the in-process SFU, per member; more are refused (`unavailable`).
const MAX_QUEUED_OFFERS: usize = 8;

impl SfuJobs {
    fn queue(&self) -> std::sync::MutexGuard<'_, JobQueue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an offer may be queued now.
    fn has_room(&self) -> bool {
        self.queue().jobs.len() < MAX_QUEUED_OFFERS
    }

    /// Runs `job` after the jobs queued before it.
    fn run(&self, app: &App, job: impl FnOnce() + Send + 'static) {
        let mut queue = self.queue();
        queue.jobs.push_back(Box::new(job));
        if queue.running {
            return;
        }
        queue.running = true;
        drop(queue);
        let jobs = self.clone();
        app.spawn_blocking(move || {
            loop {
                let next = {
                    let mut queue = jobs.queue();
                    let next = queue.jobs.pop_front();
                    queue.running = next.is_some();
                    next
                };
                match next {
                    Some(job) => job(),
                    None => return,
                }
            }
        });
    }
}

/// Attached SFUs may send this many times the per-connection message rate: one SFU answers
/// the offers of many members.
const ATTACHED_RATE_FACTOR: u32 = 100;

/// The name an SFU's token is minted for (with the empty room, which no `join` can name).
pub(crate) const SFU_TOKEN_NAME: &str = "sfu";

/// A join token held by this connection; freed when the connection ends or joins with another.
struct TokenClaim {
    app: Arc<App>,
    token: String,
}

impl Drop for TokenClaim {
    fn drop(&mut self) {
        self.app.hub.release_token(&self.token);
    }
}

struct Conn {
    app: Arc<App>,
    outbox: Outbox,
    kick: CancellationToken,
    joined: Option<Joined>,
    /// Set when this connection is an attached SFU: its id in the pool.
    attached: Option<u64>,
    claim: Option<TokenClaim>,
    /// A join the cluster (`--redis`) has not answered yet.
    joining: Option<Joining>,
    bucket: Bucket,
    last_rate_error: Option<Instant>,
}

impl Conn {
    fn send(&self, msg: &ServerMessage) {
        if self.outbox.try_push(encode(msg)).is_err() {
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
            Ok(msg) if self.attached.is_some() => {
                self.on_sfu_message(msg);
                return None;
            }
            Ok(msg) => msg,
            Err(e) if e.code == ErrorCode::UnknownType && is_attach(text) => {
                self.on_attach(text);
                return None;
            }
            Err(e) => {
                if self.attached.is_some() {
                    self.app.metrics.sfu_bad_messages.fetch_add(1, Relaxed);
                }
                self.error(e.code, e.message);
                return None;
            }
        };
        match msg {
            ClientMessage::Join {
                room,
                name,
                token,
                group,
                ..
            } => self.on_join(room, name, token, group),
            ClientMessage::Leave { .. } => match self.joined.take() {
                Some(j) => {
                    leave_room(&self.app, &j);
                    leave_sfu(&self.app, &j);
                }
                None => self.error(ErrorCode::NotJoined, "leave before join"),
            },
            ClientMessage::Signal { to, data, .. } if to.as_deref() == Some(SFU_PEER_ID) => {
                self.on_sfu_signal(&data);
            }
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

    /// A signal to the SFU: an offer, handed to the room's SFU. The in-process one answers
    /// from a blocking task (its worker replies within milliseconds) so this connection keeps
    /// reading meanwhile; an attached one answers later over its own connection.
    fn on_sfu_signal(&mut self, data: &serde_json::value::RawValue) {
        let Some(j) = self.joined.as_ref() else {
            return self.error(ErrorCode::NotJoined, "signal before join");
        };
        if let Some(cluster) = self.app.sfu_cluster.clone() {
            return self.on_cluster_sfu_signal(&cluster, data);
        }
        if !self.app.sfus.available() {
            return self.error(ErrorCode::NoSfu, "this server has no SFU");
        }
        let offer = match serde_json::from_str::<SfuSignal>(data.get()) {
            Ok(SfuSignal::SfuOffer { sdp }) => sdp,
            Ok(SfuSignal::SfuLeave {}) => return leave_sfu(&self.app, j),
            Err(_) => {
                return self.error(
                    ErrorCode::BadMessage,
                    "the SFU takes sfu_offer (with sdp) or sfu_leave",
                );
            }
        };
        let (room, peer) = (j.room.clone(), j.peer_id.clone());
        let route = match self.app.sfus.seat(&room, &peer) {
            Ok(route) => route,
            Err(NoRoute::NoSfu) => return self.error(ErrorCode::NoSfu, "this server has no SFU"),
            Err(NoRoute::Full) => {
                self.app.metrics.error(ErrorCode::SfuRefused);
                return self.send(&ServerMessage::Error {
                    v: PROTOCOL_VERSION,
                    code: ErrorCode::SfuRefused,
                    message: "too_many_rooms: every SFU is at its room limit".into(),
                });
            }
        };
        let sfu = match route {
            Route::InProcess(sfu) => sfu,
            Route::Attached(to) => {
                let forwarded = forwarded_offer(&room, &offer).map(|data| {
                    encode(&ServerMessage::Signal {
                        v: PROTOCOL_VERSION,
                        from: peer.to_string(),
                        data,
                    })
                });
                if forwarded.is_none_or(|f| to.outbox.try_push(f).is_err()) {
                    // An SFU that does not keep up is dropped; its rooms hear `peer_left`.
                    to.kick.cancel();
                    self.app.sfus.unseat(&room, &peer);
                    self.app.metrics.error(ErrorCode::SfuRefused);
                    self.send(&ServerMessage::Error {
                        v: PROTOCOL_VERSION,
                        code: ErrorCode::SfuRefused,
                        message: "unavailable: the SFU is not keeping up".into(),
                    });
                }
                return;
            }
        };
        if !j.sfu_jobs.has_room() {
            self.app.sfus.unseat(&room, &peer);
            self.app.metrics.error(ErrorCode::SfuRefused);
            return self.send(&ServerMessage::Error {
                v: PROTOCOL_VERSION,
                code: ErrorCode::SfuRefused,
                message: "unavailable: too many offers waiting".into(),
            });
        }
        let (outbox, kick, app) = (self.outbox.clone(), self.kick.clone(), self.app.clone());
        j.sfu_jobs.clone().run(&self.app, move || {
            let reply = match sfu.join(&room, &peer, &offer) {
                Ok(answer) => answer_data(&answer).map(|data| ServerMessage::Signal {
                    v: PROTOCOL_VERSION,
                    from: SFU_PEER_ID.to_owned(),
                    data,
                }),
                Err(SfuRefusal(why)) => {
                    tracing::info!(peer = %peer, room = %room, reason = %why, "SFU refused");
                    app.sfus.unseat(&room, &peer);
                    app.metrics.error(ErrorCode::SfuRefused);
                    Some(ServerMessage::Error {
                        v: PROTOCOL_VERSION,
                        code: ErrorCode::SfuRefused,
                        message: why,
                    })
                }
            };
            if let Some(reply) = reply
                && outbox.try_push(encode(&reply)).is_err()
            {
                kick.cancel();
            }
        });
    }

    /// With `--redis`: the offer or leave goes to the room's SFU through Redis; the answer
    /// comes back through Redis too.
    fn on_cluster_sfu_signal(
        &self,
        cluster: &crate::cluster_sfu::ClusterSfu,
        data: &serde_json::value::RawValue,
    ) {
        let Some(j) = self.joined.as_ref() else {
            return;
        };
        match serde_json::from_str::<SfuSignal>(data.get()) {
            Ok(SfuSignal::SfuOffer { sdp }) => {
                if cluster.offer(&j.room, &j.peer_id, sdp).is_err() {
                    self.app.metrics.error(ErrorCode::SfuRefused);
                    self.send(&ServerMessage::Error {
                        v: PROTOCOL_VERSION,
                        code: ErrorCode::SfuRefused,
                        message: "unavailable: too many offers waiting".into(),
                    });
                }
            }
            Ok(SfuSignal::SfuLeave {}) => cluster.leave(&j.room, &j.peer_id),
            Err(_) => self.error(
                ErrorCode::BadMessage,
                "the SFU takes sfu_offer (with sdp) or sfu_leave",
            ),
        }
    }

    /// `sfu_attach`: this connection becomes an attached SFU, if its token says so.
    fn on_attach(&mut self, text: &str) {
        if self.joined.is_some() || self.attached.is_some() {
            return self.error(ErrorCode::AlreadyJoined, "already in a room or attached");
        }
        if self.app.sfu_cluster.is_some() {
            // Rooms are placed through Redis here; an attached SFU would never get one.
            return self.error(
                ErrorCode::BadMessage,
                "this server places group rooms through Redis: start the SFU with --redis",
            );
        }
        let attach = match serde_json::from_str::<SfuAttach>(text) {
            Ok(a) if a.capacity > 0 => a,
            _ => {
                return self.error(
                    ErrorCode::BadMessage,
                    "sfu_attach takes capacity (1 or more) and token",
                );
            }
        };
        let Some(secret) = &self.app.config.secret else {
            return self.error(
                ErrorCode::BadToken,
                "this server has no secret; attaching an SFU needs a token minted with one",
            );
        };
        let Some(token) = attach.token else {
            return self.error(ErrorCode::BadToken, "attaching an SFU needs a token");
        };
        match verify(secret, &token, "", SFU_TOKEN_NAME, unix_now()) {
            Ok(()) => {}
            Err(TokenError::Expired) => {
                return self.error(ErrorCode::TokenExpired, "token expired");
            }
            Err(e) => return self.error(ErrorCode::BadToken, e.to_string()),
        }
        // Not bound to one connection: several SFUs may attach with one token.
        let handle = PeerHandle {
            outbox: self.outbox.clone(),
            kick: self.kick.clone(),
        };
        let capacity = usize::try_from(attach.capacity).unwrap_or(usize::MAX);
        match self.app.sfus.attach(handle, capacity) {
            Ok(id) => {
                tracing::info!(sfu = id, capacity, "SFU attached");
                self.attached = Some(id);
                let limits = &self.app.config.limits;
                self.bucket = Bucket::new(
                    limits.rate_per_sec.saturating_mul(ATTACHED_RATE_FACTOR),
                    limits.rate_burst.saturating_mul(ATTACHED_RATE_FACTOR),
                );
                // Only SFUs get this message, so it is not among the engine's types.
                let attached = format!(r#"{{"v":{PROTOCOL_VERSION},"type":"sfu_attached"}}"#);
                if self.outbox.try_push(Utf8Bytes::from(attached)).is_err() {
                    self.kick.cancel();
                }
            }
            Err(code) => self.error(code, "too many SFUs attached"),
        }
    }

    /// A message from an attached SFU: answers and refusals for members of its rooms, pings.
    fn on_sfu_message(&mut self, msg: ClientMessage) {
        let Some(id) = self.attached else { return };
        let (to, data) = match msg {
            ClientMessage::Ping { .. } => {
                return self.send(&ServerMessage::Pong {
                    v: PROTOCOL_VERSION,
                });
            }
            ClientMessage::Join { .. } => {
                return self.error(ErrorCode::AlreadyJoined, "an attached SFU joins no room");
            }
            ClientMessage::Signal {
                to: Some(to), data, ..
            } => (to, data),
            _ => return self.sfu_bad("an attached SFU sends signal (with to) or ping"),
        };
        let reply = match serde_json::from_str::<SfuReply>(data.get()) {
            Ok(reply) => reply,
            Err(_) => return self.sfu_bad("sfu_answer or sfu_refused, with room"),
        };
        let room = match &reply {
            SfuReply::SfuAnswer { room, .. } | SfuReply::SfuRefused { room, .. } => room.clone(),
        };
        if !self.app.sfus.serves(id, &room, &to) {
            // Late (the member left meanwhile) or not this SFU's member: not for us to relay.
            self.app.metrics.sfu_bad_messages.fetch_add(1, Relaxed);
            return;
        }
        let frame = match reply {
            SfuReply::SfuAnswer { sdp, .. } => match answer_data(&sdp) {
                Some(data) => encode(&ServerMessage::Signal {
                    v: PROTOCOL_VERSION,
                    from: SFU_PEER_ID.to_owned(),
                    data,
                }),
                None => return,
            },
            SfuReply::SfuRefused {
                reason, message, ..
            } => {
                tracing::info!(peer = %to, room = %room, reason = %refusal_text(&reason, ""), "SFU refused");
                self.app.sfus.unseat(&room, &to);
                self.app.metrics.error(ErrorCode::SfuRefused);
                encode(&ServerMessage::Error {
                    v: PROTOCOL_VERSION,
                    code: ErrorCode::SfuRefused,
                    message: refusal_text(&reason, &message),
                })
            }
        };
        if self.app.hub.send_to(&room, &to, &frame) {
            self.app.metrics.messages_relayed.fetch_add(1, Relaxed);
        }
    }

    fn sfu_bad(&self, message: &'static str) {
        self.app.metrics.sfu_bad_messages.fetch_add(1, Relaxed);
        self.error(ErrorCode::BadMessage, message);
    }

    fn on_join(&mut self, room: String, name: String, token: Option<String>, group: bool) {
        if self.joined.is_some() || self.attached.is_some() {
            return self.error(ErrorCode::AlreadyJoined, "already in a room; leave first");
        }
        let mut claim = None;
        // With a secret, the cluster keeps one member per token (`token_in_use`), as the
        // claim below does on one node.
        let token_hash = match (&self.app.config.secret, &token) {
            (Some(_), Some(token)) if self.app.cluster.get().is_some() => {
                crate::cluster::token_hash(token)
            }
            _ => String::new(),
        };
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
            // One open connection per token; rejoining on this connection keeps its claim.
            if self.claim.as_ref().is_none_or(|c| c.token != token) {
                if !self.app.hub.claim_token(&token) {
                    return self.error(
                        ErrorCode::TokenInUse,
                        "this join token is in use by another connection",
                    );
                }
                claim = Some(TokenClaim {
                    app: self.app.clone(),
                    token,
                });
            }
        }
        if self.joining.is_some() {
            return self.error(ErrorCode::AlreadyJoined, "a join is in progress");
        }
        if let Some(cluster) = self.app.cluster.get().cloned() {
            return self.join_cluster(&cluster, room, name, group, token_hash, claim);
        }
        let handle = PeerHandle {
            outbox: self.outbox.clone(),
            kick: self.kick.clone(),
        };
        let app = &self.app;
        // Asked before the hub's lock is taken: the SFU pool has a lock of its own.
        let sfu = sfu_available(app);
        let welcome = |peer_id: &Arc<str>, slot: u8, peers: Vec<PeerInfo>| {
            encode(&ServerMessage::Welcome {
                v: PROTOCOL_VERSION,
                peer_id: peer_id.to_string(),
                slot: Some(slot),
                room: room.clone(),
                peers,
                ice_servers: app
                    .config
                    .ice
                    .servers_for(peer_id.as_ref(), crate::token::unix_now()),
                sfu,
            })
        };
        match app.hub.join(&room, &name, group, handle, welcome) {
            Ok(peer_id) => {
                tracing::info!(peer = %peer_id, room = %room, "joined");
                self.joined = Some(Joined {
                    room,
                    peer_id,
                    sfu_jobs: SfuJobs::default(),
                });
                if claim.is_some() {
                    self.claim = claim;
                }
            }
            // A new claim is dropped (freed) here; the connection's earlier one stays.
            Err(code) => self.error(code, refusal_message(code)),
        }
    }
}

impl Conn {
    /// A join through the cluster: the hub holds the joiner, the cluster adds it to the room
    /// in Redis, and the join completes when the cluster's event comes back (with the
    /// `welcome`), in [`Conn::joined_cluster`].
    fn join_cluster(
        &mut self,
        cluster: &crate::cluster::Cluster,
        room: String,
        name: String,
        group: bool,
        tok: String,
        claim: Option<TokenClaim>,
    ) {
        if cluster.is_fenced() {
            return self.error(
                ErrorCode::Unavailable,
                "this server cannot reach the cluster now; try again or another server",
            );
        }
        let Some(peer_id) = self.app.hub.draw_id() else {
            return self.error(ErrorCode::ServerFull, "no peer id could be drawn");
        };
        let app = self.app.clone();
        let sfu = sfu_available(&app);
        let welcome_room = room.clone();
        let welcome: crate::hub::WelcomeFn = Box::new(move |peer_id, slot, peers| {
            encode(&ServerMessage::Welcome {
                v: PROTOCOL_VERSION,
                peer_id: peer_id.to_string(),
                slot: Some(slot),
                room: welcome_room,
                peers,
                ice_servers: app
                    .config
                    .ice
                    .servers_for(peer_id.as_ref(), crate::token::unix_now()),
                sfu,
            })
        });
        let (done, answer) = tokio::sync::oneshot::channel();
        let handle = PeerHandle {
            outbox: self.outbox.clone(),
            kick: self.kick.clone(),
        };
        self.app
            .hub
            .hold_join(peer_id.clone(), handle, welcome, done);
        let skel = sotto::names::skeleton(&name);
        if !cluster.join(&room, peer_id.clone(), &name, skel, tok, group) {
            self.app
                .hub
                .cluster_refused(&peer_id, ErrorCode::Unavailable);
        }
        self.joining = Some(Joining {
            room,
            peer_id,
            claim,
            answer: Some(answer),
        });
    }

    /// The cluster answered a join (or it waited too long: `None`).
    fn joined_cluster(&mut self, outcome: Option<crate::hub::JoinOutcome>) {
        let Some(joining) = self.joining.take() else {
            return;
        };
        match outcome {
            Some(Ok((peer_id, _slot))) => {
                tracing::info!(peer = %peer_id, room = %joining.room, "joined");
                self.joined = Some(Joined {
                    room: joining.room,
                    peer_id,
                    sfu_jobs: SfuJobs::default(),
                });
                if joining.claim.is_some() {
                    self.claim = joining.claim;
                }
            }
            Some(Err(code)) => self.error(code, refusal_message(code)),
            None => {
                // Late answers are undone: the hub forgets the joiner, the cluster removes it.
                self.app
                    .hub
                    .cluster_refused(&joining.peer_id, ErrorCode::Unavailable);
                if let Some(cluster) = self.app.cluster.get() {
                    cluster.leave(&joining.room, &joining.peer_id);
                }
                self.error(
                    ErrorCode::Unavailable,
                    refusal_message(ErrorCode::Unavailable),
                );
            }
        }
    }
}

/// Removes `j` from its room: here, and in the cluster's copy with `--redis`.
fn leave_room(app: &Arc<App>, j: &Joined) {
    app.hub.leave(&j.room, &j.peer_id);
    if let Some(cluster) = app.cluster.get() {
        cluster.leave(&j.room, &j.peer_id);
    }
}

/// Waits for the cluster's answer to a join, at most [`CLUSTER_JOIN_WAIT`]; never resolves
/// without a join waiting.
async fn join_answer(
    answer: &mut Option<tokio::sync::oneshot::Receiver<crate::hub::JoinOutcome>>,
) -> Option<crate::hub::JoinOutcome> {
    let Some(rx) = answer.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = tokio::time::timeout(CLUSTER_JOIN_WAIT, rx).await;
    *answer = None;
    match outcome {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(_)) => Some(Err(ErrorCode::Unavailable)),
        Err(_) => None,
    }
}

/// Whether group calls have an SFU now (the `welcome`'s `sfu`): with `--redis`, a live SFU
/// registered there (or this node's own); else the in-process or an attached one.
fn sfu_available(app: &App) -> bool {
    match &app.sfu_cluster {
        Some(cluster) => cluster.any_live() || app.sfu.is_some(),
        None => app.sfus.available(),
    }
}

/// Tells the room's SFU that `j` left it, if it had offered to it.
fn leave_sfu(app: &Arc<App>, j: &Joined) {
    if let Some(cluster) = &app.sfu_cluster {
        return cluster.leave(&j.room, &j.peer_id);
    }
    match app.sfus.unseat(&j.room, &j.peer_id) {
        Some(Route::InProcess(sfu)) => {
            let (room, peer) = (j.room.clone(), j.peer_id.clone());
            j.sfu_jobs.run(app, move || sfu.leave(&room, &peer));
        }
        Some(Route::Attached(to)) => {
            let leave = forwarded_leave(&j.room).map(|data| {
                encode(&ServerMessage::Signal {
                    v: PROTOCOL_VERSION,
                    from: j.peer_id.to_string(),
                    data,
                })
            });
            if leave.is_none_or(|f| to.outbox.try_push(f).is_err()) {
                to.kick.cancel();
            }
        }
        None => {}
    }
}

/// An attached SFU's connection ended: its rooms are unpinned and their members hear that
/// `sfu` left (they offer again, to another SFU).
fn detach_sfu(app: &Arc<App>, id: u64) {
    let rooms = app.sfus.detach(id);
    tracing::info!(sfu = id, rooms = rooms.len(), "SFU detached");
    let gone = encode(&ServerMessage::PeerLeft {
        v: PROTOCOL_VERSION,
        peer_id: SFU_PEER_ID.to_owned(),
    });
    for room in rooms {
        app.hub.send_to_room(&room, &gone);
    }
}

fn refusal_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::RoomFull => "room is full",
        ErrorCode::NameTaken => {
            "a peer with this name, or one that looks like it, is already in the room"
        }
        _ => "cannot join now; try again later",
    }
}

/// Sends an error message and a close frame, ignoring a client that is already gone.
async fn close_with(sink: &mut (impl SinkExt<Message> + Unpin), close: Close, detail: &str) {
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
    app.metrics.error(close.code);
    let grace = close_grace(&app.config.limits);
    let _ = tokio::time::timeout(
        grace,
        close_with(&mut sink, close, "too many connections; try again later"),
    )
    .await;
}

/// How long the goodbye (queued messages, the reason, the close frame) may take.
fn close_grace(limits: &crate::config::Limits) -> Duration {
    limits.write_timeout.min(Duration::from_secs(2))
}

/// Why a write did not complete.
enum WriteFailed {
    /// The hub or the server asked us to stop.
    Kicked,
    /// The client did not take the frame within the write timeout.
    TimedOut,
    /// The socket failed.
    Io,
}

/// Writes one frame, giving up when `kick` fires or `timeout` passes: a client that stops
/// reading must not hold this task (and its queue) hostage.
async fn write(
    sink: &mut (impl SinkExt<Message> + Unpin),
    msg: Message,
    kick: &CancellationToken,
    timeout: Duration,
) -> Result<(), WriteFailed> {
    tokio::select! {
        biased;
        () = kick.cancelled() => Err(WriteFailed::Kicked),
        sent = tokio::time::timeout(timeout, sink.send(msg)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Io),
            Err(_) => Err(WriteFailed::TimedOut),
        },
    }
}

/// How a connection ends: quietly (the client went away) or with a reason for the client.
enum End {
    Quiet,
    Tell {
        close: Close,
        detail: &'static str,
        /// Send what is still queued first (pointless for a client that is not reading).
        flush: bool,
    },
}

fn slow_consumer() -> End {
    End::Tell {
        close: Close {
            code: ErrorCode::SlowConsumer,
            ws_code: 1008,
            reason: "too slow",
        },
        detail: "messages queued faster than they were read",
        flush: false,
    }
}

fn kicked(app: &App, reason: Option<ErrorCode>) -> End {
    if let Some(code) = reason {
        End::Tell {
            close: Close {
                code,
                // 1013: try again later.
                ws_code: 1013,
                reason: "join again",
            },
            detail: match code {
                ErrorCode::Unavailable => "this server lost the cluster's shared state; join again",
                _ => "the room changed while this server was away; join again",
            },
            flush: true,
        }
    } else if app.shutdown.is_cancelled() {
        End::Tell {
            close: Close {
                code: ErrorCode::ShuttingDown,
                ws_code: 1001,
                reason: "server shutting down",
            },
            detail: "the server is shutting down",
            flush: true,
        }
    } else {
        slow_consumer()
    }
}

fn write_failed(app: &App, reason: Option<ErrorCode>, e: WriteFailed) -> End {
    match e {
        WriteFailed::Kicked => kicked(app, reason),
        WriteFailed::TimedOut => slow_consumer(),
        WriteFailed::Io => End::Quiet,
    }
}

/// Serves one client until it leaves, misbehaves, idles out or the server shuts down.
pub(crate) async fn run(socket: WebSocket, app: Arc<App>) {
    let limits = app.config.limits.clone();
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut inbox) = outbox(
        limits.outbound_queue,
        limits.outbound_queue_bytes,
        app.metrics.clone(),
    );
    let kick = app.shutdown.child_token();
    let mut conn = Conn {
        app: app.clone(),
        outbox,
        kick: kick.clone(),
        joined: None,
        attached: None,
        claim: None,
        joining: None,
        bucket: Bucket::new(limits.rate_per_sec, limits.rate_burst),
        last_rate_error: None,
    };
    let mut heartbeat = tokio::time::interval(limits.heartbeat);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();
    // Restarted whenever the connection is not in a room: a socket must join to keep its slot.
    let join_deadline = tokio::time::sleep(limits.join_timeout);
    let mut join_wait = None;
    tokio::pin!(join_deadline);

    let end = loop {
        tokio::select! {
            biased;
            () = kick.cancelled() => break kicked(&app, conn.outbox.end_reason()),
            () = &mut join_deadline, if conn.joined.is_none() && conn.attached.is_none() => {
                break End::Tell {
                    close: Close { code: ErrorCode::JoinTimeout, ws_code: 1008, reason: "no join" },
                    detail: "no room joined within the join timeout",
                    flush: true,
                };
            }
            // Before the inbox: the connection knows it joined before it writes the welcome.
            outcome = join_answer(&mut join_wait) => conn.joined_cluster(outcome),
            Some(frame) = inbox.recv() => {
                if let Err(e) = write(&mut sink, Message::Text(frame), &kick, limits.write_timeout).await {
                    break write_failed(&app, conn.outbox.end_reason(), e);
                }
            }
            inbound = stream.next() => {
                let Some(Ok(msg)) = inbound else { break End::Quiet };
                let now = Instant::now();
                last_seen = now;
                match msg {
                    Message::Text(text) => {
                        let was_joined = conn.joined.is_some();
                        if let Some(close) = conn.on_text(text.as_str(), now) {
                            break End::Tell { close, detail: "message exceeds the size limit", flush: true };
                        }
                        if let Some(answer) = conn.joining.as_mut().and_then(|j| j.answer.take()) {
                            join_wait = Some(answer);
                        }
                        if was_joined && conn.joined.is_none() {
                            join_deadline.as_mut().reset(tokio::time::Instant::now() + limits.join_timeout);
                        }
                    }
                    Message::Binary(_) => {
                        if conn.attached.is_some() {
                            app.metrics.sfu_bad_messages.fetch_add(1, Relaxed);
                        }
                        conn.error(ErrorCode::BadMessage, "binary frames are not supported");
                    }
                    Message::Close(_) => break End::Quiet,
                    // Pings are answered by the WebSocket layer; pongs only refresh `last_seen`.
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > limits.idle_timeout {
                    break End::Tell {
                        close: Close { code: ErrorCode::IdleTimeout, ws_code: 1000, reason: "idle" },
                        detail: "no traffic within the idle timeout",
                        flush: true,
                    };
                }
                if let Err(e) = write(&mut sink, Message::Ping(Default::default()), &kick, limits.write_timeout).await {
                    break write_failed(&app, conn.outbox.end_reason(), e);
                }
            }
        }
    };

    // Before the room hears `peer_left`: what a client that is not reading had queued, and
    // its token (which may then join again).
    let mut inbox = if matches!(end, End::Tell { flush: true, .. }) {
        Some(inbox)
    } else {
        drop(inbox);
        None
    };
    drop(conn.claim.take());
    if let Some(j) = conn.joined.take() {
        leave_room(&app, &j);
        leave_sfu(&app, &j);
        tracing::info!(peer = %j.peer_id, room = %j.room, "left");
    }
    if let Some(joining) = conn.joining.take() {
        // The cluster may still add it: the hub's answer then finds no joiner and undoes it.
        app.hub
            .cluster_refused(&joining.peer_id, ErrorCode::Unavailable);
    }
    if let Some(id) = conn.attached.take() {
        detach_sfu(&app, id);
    }
    drop(conn);
    let End::Tell { close, detail, .. } = end else {
        return;
    };
    app.metrics.error(close.code);
    if close.code == ErrorCode::SlowConsumer {
        tracing::warn!("disconnecting a client that does not read its messages");
    }
    let goodbye = async {
        // Queued messages first, so the client sees them and the reason in order.
        while let Some(frame) = inbox.as_mut().and_then(Inbox::try_recv) {
            if sink.send(Message::Text(frame)).await.is_err() {
                return;
            }
        }
        close_with(&mut sink, close, detail).await;
    };
    // Bounded: a client that does not read gets no more than the grace period.
    let _ = tokio::time::timeout(close_grace(&limits), goodbye).await;
}
