//! Nodes that share rooms through Redis (`sotto-signaling --redis redis://HOST:PORT`).
//!
//! Each node keeps its own members' connections and a copy of the other members of the rooms
//! it serves ([`crate::hub`]). Redis holds the rooms themselves:
//! - `sotto:room:<room>`: a hash from peer id to the member's record (name, slot, node).
//! - `sotto:node:<node>`: the node's heartbeat, refreshed every second with a 4 s lifetime.
//!   Members of a node whose key is gone are reaped by the others.
//! - channel `sotto:n:<node>`: everything for one node, in order: membership events and the
//!   signals for its members. Signals are never stored: a publish reaches the node's
//!   subscriber or is retried briefly, then dropped.
//!
//! Joins, leaves and reaps are Lua scripts (`scripts.rs`) that change a room and publish the
//! events about it in one atomic step, so every node applies them in one order, and a joiner's
//! `welcome` (sent when its own join event comes back) precedes any later member's
//! `peer_joined`. Everything a node sends goes through one publisher task, which batches what
//! is queued into one pipelined round trip.
//!
//! A node that has not reached Redis for [`FENCE_AFTER`] disconnects its clients and refuses
//! joins until it does again: its key lives 4 s, so by the time other nodes can reap its
//! members, it serves none of them, and no room exists twice. When Redis comes back empty (a
//! restart), each node puts its members back and the rooms are whole again.

mod event;
mod scripts;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use sotto::signal::ErrorCode;
use sotto::signal::protocol::MAX_SLOTS;
use tokio::sync::mpsc;

use crate::hub::RemoteDelivery;
use crate::server::App;
use event::Event;

/// How long a node's heartbeat key lives; others reap its members once it is gone.
const NODE_TTL: Duration = Duration::from_secs(4);
/// How often the heartbeat is refreshed.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Without a heartbeat through for this long, the node stops serving (before its key can
/// expire at `NODE_TTL`, 4 s).
pub const FENCE_AFTER: Duration = Duration::from_millis(2500);
/// How long a signal for another node may wait for that node's subscriber (a node
/// reconnecting to Redis) before it is dropped.
const DELIVERY_WINDOW: Duration = Duration::from_millis(2500);
/// Jobs waiting for the publisher; more are dropped (signals) or refused (joins).
const QUEUE: usize = 65_536;
/// Most jobs in one round trip.
const MAX_BATCH: usize = 512;
/// How long the publisher lets jobs gather before a round trip (unless a full batch waits).
const GATHER: Duration = Duration::from_micros(500);
/// Longest message accepted from the cluster.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Room hashes expire unless a node with members in them refreshes them.
const ROOM_TTL_MS: u64 = 120_000;

/// One thing for the publisher to send.
#[derive(Debug)]
enum Job {
    /// A signal for a member on `node` (an `event::Event::Signal`, encoded).
    Publish {
        node: Arc<str>,
        payload: String,
        since: Instant,
    },
    Join {
        room: String,
        id: Arc<str>,
        name: String,
        skel: String,
        tok: String,
        /// A group member (`join` with `"group": true`).
        group: bool,
        since: Instant,
    },
    Leave {
        room: String,
        id: Arc<str>,
    },
    Reap {
        room: String,
        node: Arc<str>,
    },
    Restore {
        room: String,
        records: Vec<String>,
    },
}

/// The scripts' full texts, built once.
struct Scripts {
    join: String,
    leave: String,
    reap: String,
    restore: String,
    heartbeat: String,
}

/// This node's link to the cluster.
#[derive(Debug)]
pub struct Cluster {
    node: Arc<str>,
    jobs: mpsc::Sender<Job>,
    fenced: AtomicBool,
    /// Set when the subscriber came back after losing Redis: the node's members are put back.
    resubscribed: AtomicBool,
    /// When a heartbeat last went through (sent at).
    last_ok: Mutex<Instant>,
    /// Tells the subscriber to drop its connection and subscribe again: after the node was
    /// cut off (a silently dead connection may still look open), or when the node's own join
    /// events find no subscriber.
    renew: tokio::sync::Notify,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripts")
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error("bad Redis URL: {0}")]
    Url(String),
    /// Redis did not answer.
    #[error("cannot reach Redis: {0}")]
    Connect(String),
}

fn room_key(room: &str) -> String {
    format!("sotto:room:{room}")
}

fn node_key(node: &str) -> String {
    format!("sotto:node:{node}")
}

fn channel(node: &str) -> String {
    format!("sotto:n:{node}")
}

/// SHA-256 of a join token, hex: what the cluster stores to keep one token to one member.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

impl Cluster {
    /// Connects `app`'s node to the Redis at `url`, subscribes to its channel, sends its first
    /// heartbeat and starts the tasks that keep it in the cluster until `app` shuts down.
    pub async fn start(url: &str, app: &Arc<App>) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let writer = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let beat = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let scripts = Arc::new(Scripts {
            join: scripts::script(scripts::JOIN_BODY),
            leave: scripts::script(scripts::LEAVE_BODY),
            reap: scripts::script(scripts::REAP_BODY),
            restore: scripts::script(scripts::RESTORE_BODY),
            heartbeat: scripts::script(scripts::HEARTBEAT_BODY),
        });
        let (jobs, job_rx) = mpsc::channel(QUEUE);
        let cluster = Arc::new(Cluster {
            node: app.node_id.clone(),
            jobs,
            fenced: AtomicBool::new(false),
            resubscribed: AtomicBool::new(false),
            last_ok: Mutex::new(Instant::now()),
            renew: tokio::sync::Notify::new(),
        });
        // Subscribed before the first heartbeat: once other nodes can see this node, what
        // they send it arrives.
        let pubsub = subscribe(&client, &cluster.node)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let mut beat_conn = beat.clone();
        heartbeat(&mut beat_conn, &scripts, &cluster.node, app)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        app.hub.set_remote(Arc::new(Publisher {
            jobs: cluster.jobs.clone(),
        }));
        tokio::spawn(run_publisher(
            app.clone(),
            cluster.clone(),
            writer,
            scripts.clone(),
            job_rx,
        ));
        tokio::spawn(run_subscriber(app.clone(), cluster.clone(), client, pubsub));
        tokio::spawn(run_heartbeat(app.clone(), cluster.clone(), beat, scripts));
        tracing::info!(node = %cluster.node, "joined the cluster");
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Whether the node has lost Redis and serves no rooms now.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Relaxed)
    }

    /// Asks the cluster to add a member held with [`crate::hub::Hub::hold_join`]. The hub
    /// completes (or refuses) it when the cluster answers.
    pub fn join(
        &self,
        room: &str,
        id: Arc<str>,
        name: &str,
        skel: String,
        tok: String,
        group: bool,
    ) -> bool {
        self.jobs
            .try_send(Job::Join {
                room: room.to_string(),
                id,
                name: name.to_string(),
                skel,
                tok,
                group,
                since: Instant::now(),
            })
            .is_ok()
    }

    /// Removes a member from the cluster's room (the hub's copy is removed by the caller).
    pub fn leave(&self, room: &str, id: &Arc<str>) {
        if self
            .jobs
            .try_send(Job::Leave {
                room: room.to_string(),
                id: id.clone(),
            })
            .is_err()
        {
            // The record stays until this node's key expires, or until Redis is reachable
            // and another join reaps it; a full queue means Redis is far behind anyway.
            tracing::warn!("cluster queue full; a leave was not sent");
        }
    }

    fn last_ok(&self) -> Instant {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's way to members on other nodes.
#[derive(Debug)]
struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl RemoteDelivery for Publisher {
    fn deliver(&self, node: &str, room: &str, to: &str, frame: &Utf8Bytes) -> bool {
        let payload = event::signal(room, to, frame.as_str());
        self.jobs
            .try_send(Job::Publish {
                node: node.into(),
                payload,
                since: Instant::now(),
            })
            .is_ok()
    }
}

async fn subscribe(client: &redis::Client, node: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel(node)).await?;
    Ok(pubsub)
}

/// Receives this node's channel and applies what comes; resubscribes when Redis comes back.
async fn run_subscriber(
    app: Arc<App>,
    cluster: Arc<Cluster>,
    client: redis::Client,
    first: redis::aio::PubSub,
) {
    let mut pubsub = Some(first);
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(mut ps) = pubsub.take() {
            delay = Duration::from_millis(50);
            let mut stream = ps.on_message();
            loop {
                let msg = tokio::select! {
                    msg = stream.next() => msg,
                    () = cluster.renew.notified() => None,
                    () = app.shutdown.cancelled() => return,
                };
                let Some(msg) = msg else { break };
                app.metrics.cluster_received.fetch_add(1, Relaxed);
                on_message(&app, &cluster, msg.get_payload_bytes());
            }
            tracing::warn!("lost the cluster's channel; reconnecting");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = app.shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_millis(500));
        match subscribe(&client, &cluster.node).await {
            Ok(ps) => {
                tracing::info!("cluster channel back");
                cluster.resubscribed.store(true, Relaxed);
                pubsub = Some(ps);
            }
            Err(e) => tracing::debug!("cluster channel: {e}"),
        }
    }
}

fn on_message(app: &Arc<App>, cluster: &Cluster, payload: &[u8]) {
    if payload.len() > MAX_EVENT_BYTES {
        tracing::warn!(len = payload.len(), "oversized cluster message dropped");
        return;
    }
    match event::unbatch(payload) {
        Some(events) => {
            for one in events {
                match one {
                    Some(e) => on_event(app, cluster, e),
                    None => {
                        tracing::warn!("malformed batch from the cluster; the rest dropped");
                        return;
                    }
                }
            }
        }
        None => on_event(app, cluster, payload),
    }
}

fn on_event(app: &Arc<App>, cluster: &Cluster, payload: &[u8]) {
    let event = match serde_json::from_slice::<Event>(payload) {
        Ok(e) => e,
        Err(e) => {
            // Never the payload itself: it may carry a peer's signal.
            tracing::warn!(
                "malformed cluster message dropped ({:?} at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            );
            return;
        }
    };
    match event {
        Event::Signal { r, to, f } => {
            app.hub.send_to(&r, &to, &Utf8Bytes::from(f));
        }
        Event::Joined { r, m, roster } => {
            let id: Arc<str> = m.id.as_str().into();
            let ours = m.node == *cluster.node;
            if !app.hub.cluster_joined(&r, m, roster, &cluster.node) && ours {
                // Our joiner gave up before the cluster answered: take it out again.
                cluster.leave(&r, &id);
            }
        }
        Event::Left { r, id } => {
            if app.hub.is_local(&r, &id) {
                // This node was taken for dead (it lost Redis for too long): its member must
                // join again.
                app.hub.disconnect(&r, &id, ErrorCode::Unavailable);
            }
            app.hub.leave(&r, &id);
        }
        Event::Roster { r, members } => app.hub.cluster_roster(&r, members, &cluster.node),
    }
}

/// Sends the queued jobs in pipelined batches, in order.
async fn run_publisher(
    app: Arc<App>,
    cluster: Arc<Cluster>,
    mut conn: ConnectionManager,
    scripts: Arc<Scripts>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut retry: VecDeque<Job> = VecDeque::new();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job { Some(j) => Some(j), None => return },
            () = tokio::time::sleep(Duration::from_millis(20)), if !retry.is_empty() => None,
            () = app.shutdown.cancelled() => return,
        };
        batch.extend(retry.drain(..retry.len().min(MAX_BATCH)));
        batch.extend(first);
        if batch.len() < MAX_BATCH && rx.len() < MAX_BATCH {
            // A moment for more to queue: under load one round trip then carries many
            // signals, and each node's share in one message (fewer wakeups everywhere).
            tokio::time::sleep(GATHER).await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut units = group(std::mem::take(&mut batch));
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut pipe = redis::pipe();
            for unit in &units {
                match unit {
                    Unit::Signals { node, payload, .. } => {
                        pipe.cmd("PUBLISH")
                            .arg(channel(node))
                            .arg(payload.as_slice());
                    }
                    Unit::Other(job) => add_job(&mut pipe, job, &scripts, &cluster.node, &app),
                }
            }
            app.metrics.cluster_round_trips.fetch_add(1, Relaxed);
            match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
                Ok(values) => {
                    for (unit, value) in units.drain(..).zip(values) {
                        match unit {
                            Unit::Signals { jobs, .. } => {
                                for job in jobs {
                                    on_result(&app, &cluster, job, value.clone(), &mut retry);
                                }
                            }
                            Unit::Other(job) => on_result(&app, &cluster, job, value, &mut retry),
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!("cluster publish failed: {e}");
                    units = expire_units(&app, units);
                    if units.is_empty() {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = app.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(400));
                }
            }
        }
    }
}

/// What one pipelined command carries: the signals for one node (one message), or another job.
enum Unit {
    Signals {
        node: Arc<str>,
        payload: Vec<u8>,
        jobs: Vec<Job>,
    },
    Other(Job),
}

/// Signals for one node that follow each other in the batch go out as one message (a
/// [`event::BATCH`] of them when there are several); other jobs keep their place.
fn group(batch: Vec<Job>) -> Vec<Unit> {
    let mut units = Vec::new();
    // The current run of signals, per node (few nodes: a short list).
    let mut run: Vec<(Arc<str>, Vec<Job>)> = Vec::new();
    let flush = |run: &mut Vec<(Arc<str>, Vec<Job>)>, units: &mut Vec<Unit>| {
        for (node, jobs) in run.drain(..) {
            let mut chunk: Vec<Job> = Vec::new();
            let mut bytes = 0;
            for job in jobs {
                let len = match &job {
                    Job::Publish { payload, .. } => payload.len(),
                    _ => 0,
                };
                if !chunk.is_empty() && bytes + len > event::MAX_BATCH_BYTES {
                    units.push(signals(&node, std::mem::take(&mut chunk)));
                    bytes = 0;
                }
                bytes += len;
                chunk.push(job);
            }
            if !chunk.is_empty() {
                units.push(signals(&node, chunk));
            }
        }
    };
    for job in batch {
        match job {
            Job::Publish { ref node, .. } => {
                let node = node.clone();
                match run.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, jobs)) => jobs.push(job),
                    None => run.push((node, vec![job])),
                }
            }
            other => {
                flush(&mut run, &mut units);
                units.push(Unit::Other(other));
            }
        }
    }
    flush(&mut run, &mut units);
    units
}

/// One message for `node` carrying the signals of `jobs`.
fn signals(node: &Arc<str>, jobs: Vec<Job>) -> Unit {
    let payload = event::batch(jobs.iter().filter_map(|j| match j {
        Job::Publish { payload, .. } => Some(payload.as_bytes()),
        _ => None,
    }));
    Unit::Signals {
        node: node.clone(),
        payload,
        jobs,
    }
}

/// [`expire_jobs`] over units: signals that waited too long leave their unit (which is
/// rebuilt from the rest).
fn expire_units(app: &App, units: Vec<Unit>) -> Vec<Unit> {
    let mut jobs = Vec::new();
    for unit in units {
        match unit {
            Unit::Signals { jobs: held, .. } => jobs.extend(held),
            Unit::Other(job) => jobs.push(job),
        }
    }
    expire_jobs(app, &mut jobs);
    group(jobs)
}

/// Drops signals and refuses joins that waited too long for Redis; leaves, reaps and
/// restores stay (they must happen when Redis is back).
fn expire_jobs(app: &App, batch: &mut Vec<Job>) {
    batch.retain(|job| match job {
        Job::Publish { since, .. } if since.elapsed() > DELIVERY_WINDOW => {
            app.metrics.cluster_dropped.fetch_add(1, Relaxed);
            false
        }
        Job::Join { since, id, .. } if since.elapsed() > DELIVERY_WINDOW => {
            app.hub.cluster_refused(id, ErrorCode::Unavailable);
            false
        }
        _ => true,
    });
}

fn add_job(pipe: &mut redis::Pipeline, job: &Job, scripts: &Scripts, node: &str, app: &App) {
    match job {
        Job::Publish { node, payload, .. } => {
            pipe.cmd("PUBLISH").arg(channel(node)).arg(payload);
        }
        Job::Join {
            room,
            id,
            name,
            skel,
            tok,
            group,
            ..
        } => {
            pipe.cmd("EVAL")
                .arg(&scripts.join)
                .arg(1)
                .arg(room_key(room))
                .arg(&**id)
                .arg(name)
                .arg(skel)
                .arg(node)
                .arg(tok)
                .arg(app.config.limits.max_peers_per_room)
                .arg(MAX_SLOTS)
                .arg(room)
                .arg(if *group { "1" } else { "0" });
        }
        Job::Leave { room, id } => {
            pipe.cmd("EVAL")
                .arg(&scripts.leave)
                .arg(1)
                .arg(room_key(room))
                .arg(&**id)
                .arg(room);
        }
        Job::Reap { room, node } => {
            pipe.cmd("EVAL")
                .arg(&scripts.reap)
                .arg(1)
                .arg(room_key(room))
                .arg(&**node)
                .arg(room);
        }
        Job::Restore { room, records } => {
            pipe.cmd("EVAL")
                .arg(&scripts.restore)
                .arg(1)
                .arg(room_key(room))
                .arg(room)
                .arg(records);
        }
    }
}

fn on_result(
    app: &App,
    cluster: &Cluster,
    job: Job,
    value: redis::Value,
    retry: &mut VecDeque<Job>,
) {
    match job {
        Job::Publish { since, .. } => {
            app.metrics.cluster_published.fetch_add(1, Relaxed);
            if matches!(value, redis::Value::Int(0)) {
                // No subscriber on that node's channel now: it is reconnecting, or dead.
                if since.elapsed() <= DELIVERY_WINDOW && retry.len() < QUEUE {
                    retry.push_back(job);
                } else {
                    app.metrics.cluster_dropped.fetch_add(1, Relaxed);
                }
            }
        }
        Job::Join { ref id, since, .. } => match value {
            // The joiner's own join event completes it.
            redis::Value::Int(_) => {}
            other => {
                let answer = redis::from_redis_value::<String>(other);
                if answer.as_deref() == Ok("retry") && since.elapsed() <= DELIVERY_WINDOW {
                    // Our own channel is not subscribed (Redis just came back, or the
                    // subscriber's connection died unnoticed): subscribe again, then retry.
                    cluster.renew.notify_one();
                    retry.push_back(job);
                    return;
                }
                let code = match answer.as_deref() {
                    Ok("room_full") => ErrorCode::RoomFull,
                    Ok("token_in_use") => ErrorCode::TokenInUse,
                    Ok("name_taken") => ErrorCode::NameTaken,
                    Ok("id_taken") => ErrorCode::ServerFull,
                    _ => ErrorCode::Unavailable,
                };
                app.hub.cluster_refused(id, code);
            }
        },
        Job::Reap { .. } => {
            if let redis::Value::Int(n) = value {
                app.metrics
                    .cluster_reaped
                    .fetch_add(u64::try_from(n).unwrap_or(0), Relaxed);
            }
        }
        Job::Restore { room, .. } => {
            let refused: Vec<String> = redis::from_redis_value(value).unwrap_or_default();
            for id in refused {
                tracing::warn!(peer = %id, "seat taken while Redis was away; disconnecting");
                app.hub.disconnect(&room, &id, ErrorCode::NameTaken);
            }
        }
        Job::Leave { .. } => {}
    }
}

async fn heartbeat(
    conn: &mut ConnectionManager,
    scripts: &Scripts,
    node: &str,
    app: &App,
) -> redis::RedisResult<i64> {
    let load = serde_json::json!({
        "peers": app.metrics.peers.load(Relaxed),
        "rooms": app.metrics.rooms.load(Relaxed),
    })
    .to_string();
    redis::cmd("EVAL")
        .arg(&scripts.heartbeat)
        .arg(1)
        .arg(node_key(node))
        .arg(load)
        .arg(NODE_TTL.as_millis() as u64)
        .query_async(conn)
        .await
}

/// Keeps the node's key alive, fences the node when Redis is gone too long, puts the node's
/// members back after Redis returns, and reaps the members of dead nodes.
async fn run_heartbeat(
    app: Arc<App>,
    cluster: Arc<Cluster>,
    mut conn: ConnectionManager,
    scripts: Arc<Scripts>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_beat = Instant::now() + HEARTBEAT_EVERY;
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = app.shutdown.cancelled() => return,
        }
        let now = Instant::now();
        // Right away when the channel came back: the members are put back after it.
        if now >= next_beat || cluster.resubscribed.load(Relaxed) {
            // A failed beat is retried at the next tick, well before the fence.
            next_beat = now + Duration::from_millis(250);
            let beat = tokio::time::timeout(
                Duration::from_millis(900),
                heartbeat(&mut conn, &scripts, &cluster.node, &app),
            )
            .await;
            match beat {
                Ok(Ok(_)) => {
                    next_beat = now + HEARTBEAT_EVERY;
                    *cluster.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = now;
                    if cluster.fenced.swap(false, Relaxed) {
                        app.metrics.cluster_fenced.store(0, Relaxed);
                        tracing::info!("Redis is back; serving rooms again");
                        cluster.renew.notify_one();
                    }
                    if cluster.resubscribed.swap(false, Relaxed) {
                        restore(&app, &cluster);
                    }
                    beats += 1;
                    reap(&app, &cluster, &mut conn).await;
                    if beats.is_multiple_of(10) {
                        refresh_rooms(&app, &cluster, &mut conn).await;
                    }
                }
                Ok(Err(e)) => tracing::warn!("cluster heartbeat failed: {e}"),
                Err(_) => tracing::warn!("cluster heartbeat timed out"),
            }
        }
        if !cluster.is_fenced() && cluster.last_ok().elapsed() > FENCE_AFTER {
            cluster.fenced.store(true, Relaxed);
            app.metrics.cluster_fenced.store(1, Relaxed);
            tracing::error!(
                "Redis unreachable; disconnecting this node's clients until it is back"
            );
            app.hub.disconnect_all(ErrorCode::Unavailable);
        }
    }
}

/// Puts this node's members back into Redis (it restarted, or lost them).
fn restore(app: &App, cluster: &Cluster) {
    for (room, members) in app.hub.local_records(&cluster.node) {
        let records = members
            .iter()
            .filter_map(|m| serde_json::to_string(m).ok())
            .collect();
        if cluster
            .jobs
            .try_send(Job::Restore { room, records })
            .is_err()
        {
            tracing::warn!("cluster queue full; a room was not restored");
        }
    }
}

/// Reaps the members of nodes whose heartbeat key is gone, in the rooms this node serves.
async fn reap(app: &App, cluster: &Cluster, conn: &mut ConnectionManager) {
    let nodes: Vec<_> = app.hub.remote_nodes().into_iter().collect();
    if nodes.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (node, _) in &nodes {
        pipe.cmd("EXISTS").arg(node_key(node));
    }
    let Ok(alive) = pipe.query_async::<Vec<i64>>(conn).await else {
        return;
    };
    for ((node, rooms), alive) in nodes.into_iter().zip(alive) {
        if alive != 0 {
            continue;
        }
        tracing::info!(%node, rooms = rooms.len(), "node gone; reaping its members");
        for room in rooms {
            let _ = cluster.jobs.try_send(Job::Reap {
                room,
                node: node.clone(),
            });
        }
    }
}

/// Keeps the hashes of the rooms this node serves from expiring.
async fn refresh_rooms(app: &App, cluster: &Cluster, conn: &mut ConnectionManager) {
    let rooms = app.hub.local_records(&cluster.node);
    for chunk in rooms.chunks(1000) {
        let mut pipe = redis::pipe();
        for (room, _) in chunk {
            pipe.cmd("PEXPIRE")
                .arg(room_key(room))
                .arg(ROOM_TTL_MS)
                .ignore();
        }
        let _ = pipe.query_async::<()>(conn).await;
    }
}
