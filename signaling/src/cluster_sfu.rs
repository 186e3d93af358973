//! `sotto-signaling --redis`: group rooms placed on the SFU nodes registered in Redis
//! (`sotto-sfu --redis`, or `sotto-signaling --sfu --redis`; see `sotto_sfu::redis_node`).
//!
//! A member's `sfu_offer` goes to its room's SFU. A room with no live placement is placed, by
//! one Lua script (atomic), on the least-loaded live SFU below its capacity: the key
//! `sotto:place:<room>` holds the SFU's id, with `PX 5000`, refreshed every second by each node
//! that has members of the room seated there. The offer and later the member's leave are
//! published on the SFU's channel `sotto:s:<sfu_id>`; the SFU answers on this node's channel
//! `sotto:n:<node_id>` with a `t: "s"` message, which [`crate::cluster`] delivers to the
//! member as it is.
//!
//! Once a second this node checks the SFUs of the rooms where it has members seated. An SFU
//! whose key is gone, or whose channel has no subscriber, is dead: the room's placement is
//! removed if it still names that SFU (compare-and-delete), and this node's members of the room
//! hear `peer_left` from `sfu`, so they offer again and land on a live SFU. A room whose
//! placement names another SFU than the one its members here are on has moved (another node
//! found the SFU dead first, or Redis lost the key): they hear `peer_left` too, and their old
//! SFU their leave. An offer published to an SFU that nobody receives is treated the same way at
//! once, and placed again elsewhere.
//!
//! Ops of all members run one after the other on one task, so a member's leave and its next
//! offer reach the SFUs in that order.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use sotto::signal::ErrorCode;
use sotto::signal::protocol::{PROTOCOL_VERSION, SFU_PEER_ID, ServerMessage};
use sotto_sfu::redis_node::{SFUS_KEY, sfu_channel, sfu_key};
use tokio::sync::mpsc;

use crate::hub::encode;
use crate::server::App;

/// How long a placement lives without a refresh.
pub const PLACEMENT_TTL: Duration = Duration::from_millis(5000);
/// How often placements and SFUs are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Each Redis command may take this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Offers waiting for Redis, over all members; more are refused (`unavailable`).
const MAX_QUEUED_OFFERS: usize = 4096;
/// Leaves waiting for Redis; more are not sent (the seat is forgotten at once).
const MAX_QUEUED_LEAVES: usize = 16_384;
/// How long the ops task leaves Redis alone after a failed command.
const REST_AFTER_ERROR: Duration = Duration::from_secs(1);
/// SFUs an offer is tried on before it is refused, when the chosen one turns out dead.
const ATTEMPTS: usize = 3;

/// The key holding the id of the SFU a room is placed on.
pub fn placement_key(room: &str) -> String {
    format!("sotto:place:{room}")
}

/// Places a room: its live placement, or a new one on the least-loaded live SFU below its
/// capacity. Load is the rooms the SFU reports plus the rooms placed on it in the last 2 s
/// (`sotto:sfurecent:<id>`), which its report may not count yet.
const PLACE: &str = r"
local function usable(id)
  for i = 2, #ARGV do
    if ARGV[i] == id then return false end
  end
  return redis.call('EXISTS', 'sotto:sfu:' .. id) == 1
end
local cur = redis.call('GET', KEYS[1])
if cur and usable(cur) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {'on', cur}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best, best_rooms, best_seated = false, 0, 0
local any = false
for _, id in ipairs(redis.call('SMEMBERS', 'sotto:sfus')) do
  local v = redis.call('GET', 'sotto:sfu:' .. id)
  if not v then
    redis.call('SREM', 'sotto:sfus', id)
  elseif usable(id) then
    any = true
    local ok, load = pcall(cjson.decode, v)
    if ok and type(load) == 'table' then
      local recent = 'sotto:sfurecent:' .. id
      redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - 2000)
      local rooms = (tonumber(load.rooms) or 0) + redis.call('ZCARD', recent)
      local seated = tonumber(load.seated) or 0
      local capacity = tonumber(load.capacity) or 0
      if rooms < capacity and (not best or rooms < best_rooms
          or (rooms == best_rooms and (seated < best_seated
            or (seated == best_seated and id < best)))) then
        best, best_rooms, best_seated = id, rooms, seated
      end
    end
  end
end
if best then
  redis.call('SET', KEYS[1], best, 'PX', ARGV[1])
  local recent = 'sotto:sfurecent:' .. best
  redis.call('ZADD', recent, now, KEYS[1])
  redis.call('PEXPIRE', recent, 2000)
  return {'new', best}
end
if any then return {'full', ''} end
return {'none', ''}
";

/// Checks a room this node has members of on SFU `ARGV[1]`: `dead` (the SFU's key is gone, or
/// `ARGV[3]` is `1`; the placement is deleted if it still names the SFU), `moved` (the
/// placement names another SFU) or `ok` (the placement is refreshed, or restored if missing).
const CHECK: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or redis.call('EXISTS', 'sotto:sfu:' .. ARGV[1]) == 0 then
  if cur == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 'dead'
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'ok'
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'ok'
end
return 'moved'
";

/// Counters of the Redis SFU path, appended to `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterSfuMetrics {
    /// Live SFUs registered in Redis, as last checked.
    pub sfus_live: AtomicU64,
    /// Rooms where this node has members seated in an SFU.
    pub rooms: AtomicU64,
    /// Rooms this node placed on an SFU.
    pub placements: AtomicU64,
    /// Offers published to SFUs.
    pub offers: AtomicU64,
    /// Leaves published to SFUs.
    pub leaves: AtomicU64,
    /// SFUs this node found dead.
    pub sfus_dead: AtomicU64,
    /// Rooms whose members here were moved off a dead SFU (or followed a room that moved).
    pub moves: AtomicU64,
    /// Failed Redis commands.
    pub redis_errors: AtomicU64,
}

impl ClusterSfuMetrics {
    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP sotto_signaling_cluster_{name} {help}");
            let _ = writeln!(out, "# TYPE sotto_signaling_cluster_{name} {kind}");
            let _ = writeln!(out, "sotto_signaling_cluster_{name} {}", v.load(Relaxed));
        };
        metric(
            "sfus",
            "gauge",
            "Live SFUs registered in Redis.",
            &self.sfus_live,
        );
        metric(
            "sfu_rooms",
            "gauge",
            "Rooms with members of this node seated in an SFU.",
            &self.rooms,
        );
        metric(
            "sfu_placements_total",
            "counter",
            "Rooms this node placed on an SFU.",
            &self.placements,
        );
        metric(
            "sfu_offers_total",
            "counter",
            "Offers routed to SFUs over Redis.",
            &self.offers,
        );
        metric(
            "sfu_leaves_total",
            "counter",
            "Leaves routed to SFUs over Redis.",
            &self.leaves,
        );
        metric(
            "sfu_dead_total",
            "counter",
            "SFUs this node found dead.",
            &self.sfus_dead,
        );
        metric(
            "sfu_moves_total",
            "counter",
            "Rooms whose members here were moved to another SFU.",
            &self.moves,
        );
        metric(
            "sfu_redis_errors_total",
            "counter",
            "Failed Redis commands on the SFU path.",
            &self.redis_errors,
        );
        out
    }
}

/// A member's request, in the order it came.
#[derive(Debug)]
enum Op {
    Offer {
        room: String,
        peer: Arc<str>,
        sdp: String,
    },
    Leave {
        room: String,
        peer: Arc<str>,
    },
}

/// This node's members of one room that are seated in an SFU.
#[derive(Debug)]
struct Seating {
    sfu: Arc<str>,
    peers: HashSet<Arc<str>>,
}

/// The offers queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The Redis SFU path of one signaling node.
#[derive(Debug)]
pub struct ClusterSfu {
    client: redis::Client,
    node_id: Arc<str>,
    ops: mpsc::UnboundedSender<Op>,
    ops_rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    queued_offers: AtomicUsize,
    queued_leaves: AtomicUsize,
    rooms: Mutex<HashMap<String, Seating>>,
    /// SFUs found dead whose key may not have expired yet: no room is placed on them.
    dead: Mutex<HashSet<Arc<str>>>,
    /// The counters.
    pub metrics: ClusterSfuMetrics,
}

/// A request on an SFU's channel.
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request<'a> {
    Offer {
        room: &'a str,
        peer: &'a str,
        node: &'a str,
        sdp: &'a str,
    },
    Leave {
        room: &'a str,
        peer: &'a str,
    },
}

fn request(r: &Request<'_>) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Where the place script put a room.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    On { sfu: Arc<str>, new: bool },
    Full,
    NoSfu,
}

impl ClusterSfu {
    /// The SFU path of node `node_id` through the Redis server at `url`; nothing connects
    /// before the server starts it (`serve`).
    pub fn new(url: &str, node_id: Arc<str>) -> redis::RedisResult<ClusterSfu> {
        let client = redis::Client::open(url)?;
        let (ops, rx) = mpsc::unbounded_channel();
        Ok(ClusterSfu {
            client,
            node_id,
            ops,
            ops_rx: Mutex::new(Some(rx)),
            queued_offers: AtomicUsize::new(0),
            queued_leaves: AtomicUsize::new(0),
            rooms: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashSet::new()),
            metrics: ClusterSfuMetrics::default(),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Seating>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a live SFU was registered at the last check.
    pub fn any_live(&self) -> bool {
        self.metrics.sfus_live.load(Relaxed) > 0
    }

    /// Live SFUs registered, as last checked.
    pub fn live_sfus(&self) -> u64 {
        self.metrics.sfus_live.load(Relaxed)
    }

    /// Queues `peer`'s offer to its room's SFU; `Busy` when too many wait.
    pub(crate) fn offer(&self, room: &str, peer: &Arc<str>, sdp: String) -> Result<(), Busy> {
        if self.queued_offers.fetch_add(1, Relaxed) >= MAX_QUEUED_OFFERS {
            self.queued_offers.fetch_sub(1, Relaxed);
            return Err(Busy);
        }
        let op = Op::Offer {
            room: room.to_owned(),
            peer: peer.clone(),
            sdp,
        };
        if self.ops.send(op).is_err() {
            self.queued_offers.fetch_sub(1, Relaxed);
            return Err(Busy);
        }
        Ok(())
    }

    /// Queues `peer`'s leave from its room's SFU (ignored if it is not seated by then).
    pub(crate) fn leave(&self, room: &str, peer: &Arc<str>) {
        if self.queued_leaves.fetch_add(1, Relaxed) >= MAX_QUEUED_LEAVES {
            // Redis is far behind: forget the seat now; the SFU drops the member when its
            // connection times out.
            self.queued_leaves.fetch_sub(1, Relaxed);
            tracing::warn!("too many leaves waiting for Redis; one is not sent");
            self.unseat(room, peer);
            return;
        }
        let op = Op::Leave {
            room: room.to_owned(),
            peer: peer.clone(),
        };
        if self.ops.send(op).is_err() {
            self.queued_leaves.fetch_sub(1, Relaxed);
        }
    }

    /// Starts the tasks: the ops and the checks. They end when the server shuts down. The
    /// SFUs' replies come on the node's channel, which [`crate::cluster`] delivers.
    pub(crate) fn start(self: &Arc<Self>, app: &Arc<App>) {
        let Some(rx) = self.ops_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return; // started already
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_connection_timeout(Some(REDIS_TIMEOUT));
        let con = match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(con) => con,
            Err(e) => {
                tracing::error!(error = %e, "redis: the SFU path cannot start");
                return;
            }
        };
        tokio::spawn(ops(app.clone(), self.clone(), con.clone(), rx));
        tokio::spawn(checks(app.clone(), self.clone(), con));
    }

    /// Seats `peer` in `room` on `sfu`. If this node's members of the room are on another SFU,
    /// the room moved: returns that SFU and those members (to be told), without `peer`.
    fn seat(
        &self,
        room: &str,
        sfu: &Arc<str>,
        peer: &Arc<str>,
    ) -> Option<(Arc<str>, Vec<Arc<str>>)> {
        let mut rooms = self.rooms();
        let before = rooms.len();
        let seating = rooms.entry(room.to_owned()).or_insert_with(|| Seating {
            sfu: sfu.clone(),
            peers: HashSet::new(),
        });
        let mut moved = None;
        if seating.sfu != *sfu {
            let old = std::mem::replace(&mut seating.sfu, sfu.clone());
            let peers: Vec<Arc<str>> = seating.peers.drain().collect();
            moved = Some((old, peers));
        }
        seating.peers.insert(peer.clone());
        self.metrics.rooms.store(rooms.len() as u64, Relaxed);
        if rooms.len() > before {
            tracing::debug!(%room, %sfu, "room seated on an SFU");
        }
        moved
    }

    /// Takes `peer` out of `room`; returns its SFU if it was seated.
    fn unseat(&self, room: &str, peer: &str) -> Option<Arc<str>> {
        let mut rooms = self.rooms();
        let seating = rooms.get_mut(room)?;
        if !seating.peers.remove(peer) {
            return None;
        }
        let sfu = seating.sfu.clone();
        if seating.peers.is_empty() {
            rooms.remove(room);
        }
        self.metrics.rooms.store(rooms.len() as u64, Relaxed);
        Some(sfu)
    }

    /// Takes every member of `room` out if the room is still on `sfu`; returns them.
    fn take_room(&self, room: &str, sfu: &str) -> Vec<Arc<str>> {
        let mut rooms = self.rooms();
        let Some(seating) = rooms.get(room).filter(|s| &*s.sfu == sfu) else {
            return Vec::new();
        };
        let peers = seating.peers.iter().cloned().collect();
        rooms.remove(room);
        self.metrics.rooms.store(rooms.len() as u64, Relaxed);
        peers
    }

    fn dead(&self) -> MutexGuard<'_, HashSet<Arc<str>>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `sfu` as dead (counted once).
    fn mark_dead(&self, sfu: &Arc<str>) {
        if self.dead().insert(sfu.clone()) {
            tracing::warn!(%sfu, "an SFU is dead: moving its rooms");
            self.metrics.sfus_dead.fetch_add(1, Relaxed);
        }
    }

    fn known_dead(&self) -> Vec<Arc<str>> {
        self.dead().iter().cloned().collect()
    }

    fn snapshot(&self) -> Vec<(String, Arc<str>)> {
        self.rooms()
            .iter()
            .map(|(room, s)| (room.clone(), s.sfu.clone()))
            .collect()
    }

    fn redis_error(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "redis: {what}");
    }
}

/// Runs a Redis command future with the path's timeout.
async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
    }
}

fn peer_left_sfu() -> Utf8Bytes {
    encode(&ServerMessage::PeerLeft {
        v: PROTOCOL_VERSION,
        peer_id: SFU_PEER_ID.to_owned(),
    })
}

/// Sends an error to local member `peer` of `room`.
fn tell_error(app: &App, room: &str, peer: &str, code: ErrorCode, message: String) {
    app.metrics.error(code);
    let frame = encode(&ServerMessage::Error {
        v: PROTOCOL_VERSION,
        code,
        message,
    });
    app.hub.send_to(room, peer, &frame);
}

/// Tells `peers` of `room` that `sfu` left; with `leave_on`, also takes them out of that SFU
/// (it is alive, but the room is elsewhere now).
async fn move_off(
    app: &App,
    cluster: &ClusterSfu,
    con: &mut ConnectionManager,
    room: &str,
    peers: &[Arc<str>],
    leave_on: Option<&str>,
) {
    if peers.is_empty() {
        return;
    }
    cluster.metrics.moves.fetch_add(1, Relaxed);
    tracing::info!(%room, members = peers.len(), "moving the room's members off their SFU");
    let gone = peer_left_sfu();
    for peer in peers {
        app.hub.send_to(room, peer, &gone);
        if let Some(sfu) = leave_on {
            publish_leave(cluster, con, sfu, room, peer).await;
        }
    }
}

async fn publish_leave(
    cluster: &ClusterSfu,
    con: &mut ConnectionManager,
    sfu: &str,
    room: &str,
    peer: &str,
) {
    let msg = request(&Request::Leave { room, peer });
    let sent: redis::RedisResult<i64> = timed(
        redis::cmd("PUBLISH")
            .arg(sfu_channel(sfu))
            .arg(msg)
            .query_async(con),
    )
    .await;
    match sent {
        Ok(_) => {
            cluster.metrics.leaves.fetch_add(1, Relaxed);
        }
        Err(e) => cluster.redis_error("publishing a leave", &e),
    }
}

async fn place(
    con: &mut ConnectionManager,
    room: &str,
    exclude: &[Arc<str>],
) -> redis::RedisResult<Placed> {
    let script = redis::Script::new(PLACE);
    let mut call = script.key(placement_key(room));
    call.arg(PLACEMENT_TTL.as_millis() as u64);
    for sfu in exclude {
        call.arg(&**sfu);
    }
    let (what, sfu): (String, String) = timed(call.invoke_async(con)).await?;
    Ok(match what.as_str() {
        "on" | "new" if !sfu.is_empty() => Placed::On {
            sfu: sfu.into(),
            new: what == "new",
        },
        "full" => Placed::Full,
        _ => Placed::NoSfu,
    })
}

/// The ops task: each member's offers and leaves, in order.
async fn ops(
    app: Arc<App>,
    cluster: Arc<ClusterSfu>,
    mut con: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    // After a failed command, Redis is left alone for a moment: what queues up meanwhile (a
    // fenced node's members all leaving, say) must not wait out a timeout each.
    let mut resting_until: Option<tokio::time::Instant> = None;
    loop {
        let op = tokio::select! {
            () = app.shutdown.cancelled() => return,
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
        };
        let resting = resting_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let errors = cluster.metrics.redis_errors.load(Relaxed);
        match op {
            Op::Offer { room, peer, sdp } => {
                cluster.queued_offers.fetch_sub(1, Relaxed);
                if resting {
                    tell_error(
                        &app,
                        &room,
                        &peer,
                        ErrorCode::SfuRefused,
                        "unavailable: the SFUs cannot be reached now".into(),
                    );
                } else {
                    route_offer(&app, &cluster, &mut con, &room, &peer, &sdp).await;
                }
            }
            Op::Leave { room, peer } => {
                cluster.queued_leaves.fetch_sub(1, Relaxed);
                // Not sent while resting: the SFU drops the member when its connection times out.
                if let Some(sfu) = cluster.unseat(&room, &peer)
                    && !resting
                {
                    publish_leave(&cluster, &mut con, &sfu, &room, &peer).await;
                }
            }
        }
        if cluster.metrics.redis_errors.load(Relaxed) > errors {
            resting_until = Some(tokio::time::Instant::now() + REST_AFTER_ERROR);
        }
    }
}

async fn route_offer(
    app: &App,
    cluster: &ClusterSfu,
    con: &mut ConnectionManager,
    room: &str,
    peer: &Arc<str>,
    sdp: &str,
) {
    let mut exclude = cluster.known_dead();
    for _ in 0..ATTEMPTS {
        let sfu = match place(con, room, &exclude).await {
            Ok(Placed::On { sfu, new }) => {
                if new {
                    cluster.metrics.placements.fetch_add(1, Relaxed);
                    tracing::info!(%room, %sfu, "room placed");
                }
                sfu
            }
            Ok(Placed::NoSfu) => {
                return tell_error(
                    app,
                    room,
                    peer,
                    ErrorCode::NoSfu,
                    "no SFU is registered".into(),
                );
            }
            Ok(Placed::Full) => {
                return tell_error(
                    app,
                    room,
                    peer,
                    ErrorCode::SfuRefused,
                    "too_many_rooms: every SFU is at its room limit".into(),
                );
            }
            Err(e) => {
                cluster.redis_error("placing a room", &e);
                return tell_error(
                    app,
                    room,
                    peer,
                    ErrorCode::SfuRefused,
                    "unavailable: the SFUs cannot be reached now".into(),
                );
            }
        };
        if let Some((old, peers)) = cluster.seat(room, &sfu, peer) {
            // Another node moved the room: ours follow it. The offering member has left its
            // old SFU itself if it was there, or leaves it now.
            let (me, others): (Vec<_>, Vec<_>) = peers.into_iter().partition(|p| p == peer);
            move_off(app, cluster, con, room, &others, Some(&old)).await;
            for p in me {
                publish_leave(cluster, con, &old, room, &p).await;
            }
        }
        let msg = request(&Request::Offer {
            room,
            peer,
            node: &cluster.node_id,
            sdp,
        });
        let sent: redis::RedisResult<i64> = timed(
            redis::cmd("PUBLISH")
                .arg(sfu_channel(&sfu))
                .arg(msg)
                .query_async(con),
        )
        .await;
        match sent {
            Ok(0) => {
                // Nobody takes the SFU's requests: it is dead, whatever its key says.
                tracing::warn!(%sfu, %room, "the SFU has no subscriber: placing the room again");
                cluster.mark_dead(&sfu);
                let others: Vec<Arc<str>> = cluster
                    .take_room(room, &sfu)
                    .into_iter()
                    .filter(|p| p != peer)
                    .collect();
                if let Err(e) = drop_placement(con, room, &sfu).await {
                    cluster.redis_error("removing a placement", &e);
                }
                move_off(app, cluster, con, room, &others, None).await;
                exclude.push(sfu);
            }
            Ok(_) => {
                cluster.metrics.offers.fetch_add(1, Relaxed);
                return;
            }
            Err(e) => {
                cluster.unseat(room, peer);
                cluster.redis_error("publishing an offer", &e);
                return tell_error(
                    app,
                    room,
                    peer,
                    ErrorCode::SfuRefused,
                    "unavailable: the SFU cannot be reached now".into(),
                );
            }
        }
    }
    tell_error(
        app,
        room,
        peer,
        ErrorCode::SfuRefused,
        "unavailable: no live SFU took the offer".into(),
    );
}

/// Deletes `room`'s placement if it still names `sfu`.
async fn drop_placement(
    con: &mut ConnectionManager,
    room: &str,
    sfu: &str,
) -> redis::RedisResult<String> {
    let script = redis::Script::new(CHECK);
    let mut call = script.key(placement_key(room));
    call.arg(sfu).arg(PLACEMENT_TTL.as_millis() as u64).arg("1");
    timed(call.invoke_async(con)).await
}

/// The checks task: once a second, which SFUs are live, and whether the rooms with members
/// here are still on a live one.
async fn checks(app: Arc<App>, cluster: Arc<ClusterSfu>, mut con: ConnectionManager) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check = redis::Script::new(CHECK);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = check_once(&app, &cluster, &mut con, &check).await {
            cluster.redis_error("checking the SFUs", &e);
        }
    }
}

async fn check_once(
    app: &App,
    cluster: &ClusterSfu,
    con: &mut ConnectionManager,
    check: &redis::Script,
) -> redis::RedisResult<()> {
    let ids: Vec<String> = timed(redis::cmd("SMEMBERS").arg(SFUS_KEY).query_async(con)).await?;
    let mut live: HashSet<&str> = HashSet::new();
    if !ids.is_empty() {
        let keys: Vec<String> = ids.iter().map(|id| sfu_key(id)).collect();
        let loads: Vec<Option<String>> =
            timed(redis::cmd("MGET").arg(&keys).query_async(con)).await?;
        live.extend(
            ids.iter()
                .zip(&loads)
                .filter(|(_, load)| load.is_some())
                .map(|(id, _)| id.as_str()),
        );
    }

    // The SFUs of our rooms, and those found dead before: which still take requests?
    let rooms = cluster.snapshot();
    let mut sfus: HashSet<Arc<str>> = rooms.iter().map(|(_, sfu)| sfu.clone()).collect();
    sfus.extend(cluster.known_dead());
    let mut dead: HashSet<Arc<str>> = HashSet::new();
    if !sfus.is_empty() {
        let sfus: Vec<Arc<str>> = sfus.into_iter().collect();
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB");
        for sfu in &sfus {
            numsub.arg(sfu_channel(sfu));
        }
        let counts: Vec<(String, i64)> = timed(numsub.query_async(con)).await?;
        let listening: HashSet<String> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(channel, _)| channel)
            .collect();
        for sfu in sfus {
            let has_key = live.contains(&*sfu);
            if has_key && listening.contains(&sfu_channel(&sfu)) {
                // Back (it subscribed again, and dropped its members meanwhile).
                cluster.dead().remove(&sfu);
                continue;
            }
            cluster.mark_dead(&sfu);
            if !has_key {
                // Its key is gone: no placement can choose it any more.
                cluster.dead().remove(&sfu);
            }
            dead.insert(sfu);
        }
    }
    let usable = live.iter().filter(|id| !dead.contains(**id)).count();
    cluster.metrics.sfus_live.store(usable as u64, Relaxed);
    if rooms.is_empty() {
        return Ok(());
    }

    // The script is sent by its hash in the pipeline, so load it first (Redis may have
    // restarted and forgotten it).
    timed(check.prepare_invoke().load_async(con)).await?;
    let mut pipe = redis::pipe();
    for (room, sfu) in &rooms {
        let is_dead = if dead.contains(sfu) { "1" } else { "0" };
        pipe.invoke_script(
            check
                .key(placement_key(room))
                .arg(&**sfu)
                .arg(PLACEMENT_TTL.as_millis() as u64)
                .arg(is_dead),
        );
    }
    let outcomes: Vec<String> = timed(pipe.query_async(con)).await?;
    for ((room, sfu), outcome) in rooms.iter().zip(outcomes) {
        let leave_on = match outcome.as_str() {
            "dead" => None,
            "moved" => Some(&**sfu),
            _ => continue,
        };
        let peers = cluster.take_room(room, sfu);
        move_off(app, cluster, con, room, &peers, leave_on).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seating_follows_a_room_that_moved() {
        let c = ClusterSfu::new("redis://127.0.0.1:1", "n1".into()).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("pa".into(), "pb".into());
        let (s1, s2): (Arc<str>, Arc<str>) = ("s1".into(), "s2".into());
        assert!(c.seat("red", &s1, &a).is_none());
        assert!(c.seat("red", &s1, &b).is_none());
        assert_eq!(c.metrics.rooms.load(Relaxed), 1);
        // The room is on s2 now: both were on s1.
        let (old, mut peers) = c.seat("red", &s2, &a).unwrap();
        peers.sort();
        assert_eq!((&*old, peers), ("s1", vec![a.clone(), b.clone()]));
        assert_eq!(c.unseat("red", "pb"), None);
        assert!(c.take_room("red", "s1").is_empty());
        assert_eq!(c.take_room("red", "s2"), vec![a.clone()]);
        assert_eq!(c.unseat("red", "pa"), None);
        assert_eq!(c.metrics.rooms.load(Relaxed), 0);
    }
}
