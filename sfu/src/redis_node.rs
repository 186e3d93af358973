//! `sotto-sfu --redis redis://HOST:PORT` (and `sotto-signaling --sfu --redis ...`): the SFU as
//! a node that signaling nodes find through Redis.
//!
//! The SFU draws an id (`s` and 16 hex digits, new per process) and
//! - keeps the key `sotto:sfu:<id>` (its load as JSON: `rooms`, `seated`, `capacity`) alive
//!   with `PX 3000`, refreshed every second while it is subscribed, and its id in the set
//!   `sotto:sfus`;
//! - serves the requests published on the channel `sotto:s:<id>`:
//!   `{"op":"offer","room","peer","node","sdp"}` and `{"op":"leave","room","peer"}`;
//! - answers an offer by publishing `{"t":"s","r":<room>,"to":<peer>,"f":<frame>}` on
//!   `sotto:n:<node>`, where the frame is the text the member gets from the peer `sfu`: a
//!   `signal` with `sfu_answer`, or an `sfu_refused` error.
//!
//! Signaling nodes count an SFU dead when its key is gone or its channel has no subscriber, and
//! move its rooms. So the SFU, for its part, drops every member it seated through Redis when its
//! subscription breaks or when it finds its key had expired: those members have been told that
//! `sfu` left and offer again. Blocking I/O on two threads (requests, registration), like the
//! rest of the SFU; each offer is answered within milliseconds by [`Sfu::join`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Sfu;

/// The set of registered SFU ids.
pub const SFUS_KEY: &str = "sotto:sfus";
/// How long a registration lives without a refresh.
pub const REGISTRATION_TTL: Duration = Duration::from_millis(3000);
/// How often the registration is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Largest request accepted from the channel (an offer is at most 64 KiB, escaped in JSON).
const MAX_REQUEST: usize = 256 * 1024;
/// Longest signaling node id accepted as a reply address.
const MAX_NODE_ID: usize = 64;
/// Connecting and each command may take this long.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The request thread wakes this often to see whether it should stop.
const POLL: Duration = Duration::from_millis(250);
/// First and longest wait before connecting again.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Without a successful refresh for this long, the registration may have expired.
const LAPSE: Duration = Duration::from_millis(2500);

/// The key an SFU registers under.
pub fn sfu_key(sfu_id: &str) -> String {
    format!("sotto:sfu:{sfu_id}")
}

/// The channel an SFU takes requests on.
pub fn sfu_channel(sfu_id: &str) -> String {
    format!("sotto:s:{sfu_id}")
}

/// The channel of a signaling node.
pub fn node_channel(node_id: &str) -> String {
    format!("sotto:n:{node_id}")
}

/// What an SFU says about itself in its registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Rooms open on it.
    pub rooms: u64,
    /// Members seated in them.
    pub seated: u64,
    /// The most rooms it takes.
    pub capacity: u64,
}

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct RedisNodeConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// The most rooms signaling nodes may place on this SFU (its `--max-rooms`).
    pub capacity: u32,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisNodeError {
    /// The URL is not one the Redis client takes.
    #[error("bad --redis URL: {0}")]
    BadUrl(String),
    /// A thread could not start.
    #[error("redis thread: {0}")]
    Thread(std::io::Error),
}

struct Shared {
    sfu: Arc<Sfu>,
    client: redis::Client,
    id: Arc<str>,
    capacity: u32,
    stop: AtomicBool,
    /// The request thread is subscribed: only then is the SFU registered.
    subscribed: AtomicBool,
    /// Set by the registration thread when Redis was out of reach too long: the request thread
    /// subscribes anew (its connection may be dead without knowing it).
    resubscribe: AtomicBool,
    /// Members seated through Redis: (room, peer).
    seated: Mutex<HashSet<(String, String)>>,
}

impl Shared {
    fn seated(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.seated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes out of the SFU every member seated through Redis: they were told `sfu` left.
    fn drop_all(&self, why: &str) {
        let members: Vec<(String, String)> = self.seated().drain().collect();
        if members.is_empty() {
            return;
        }
        tracing::warn!(
            members = members.len(),
            reason = why,
            "dropping the members seated through Redis"
        );
        for (room, peer) in &members {
            self.sfu.leave(room, peer);
        }
        self.sfu
            .metrics()
            .redis_dropped_members
            .fetch_add(members.len() as u64, Ordering::Relaxed);
    }

    fn load(&self) -> Load {
        let m = self.sfu.metrics();
        Load {
            rooms: m.rooms.load(Ordering::Relaxed),
            seated: m.participants.load(Ordering::Relaxed),
            capacity: u64::from(self.capacity),
        }
    }
}

/// A running node: its threads stop, and it deregisters, when this is dropped.
pub struct RedisNode {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNode")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl RedisNode {
    /// Starts serving `sfu` through the Redis server at `config.url`. Connecting is retried
    /// in the background for as long as the node runs; only a malformed URL fails here.
    pub fn start(sfu: Arc<Sfu>, config: &RedisNodeConfig) -> Result<RedisNode, RedisNodeError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| RedisNodeError::BadUrl(format!("{:?}: {e}", config.url)))?;
        let id: Arc<str> = format!("s{:016x}", rand::random::<u64>()).into();
        let shared = Arc::new(Shared {
            sfu,
            client,
            id,
            capacity: config.capacity.max(1),
            stop: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            resubscribe: AtomicBool::new(false),
            seated: Mutex::new(HashSet::new()),
        });
        let mut node = RedisNode {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let s = shared.clone();
        node.threads.push(
            std::thread::Builder::new()
                .name("sotto-sfu-redis".into())
                .spawn(move || requests(&s))
                .map_err(RedisNodeError::Thread)?,
        );
        node.threads.push(
            std::thread::Builder::new()
                .name("sotto-sfu-register".into())
                .spawn(move || register(&shared))
                .map_err(RedisNodeError::Thread)?,
        );
        tracing::info!(sfu = %node.shared.id, url = %config.url, "serving group rooms through Redis");
        Ok(node)
    }

    /// This SFU's id (`s` and 16 hex digits).
    pub fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Sleeps `d` in short steps; false if the node is stopping.
fn nap(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !shared.stop.load(Ordering::Relaxed)
}

/// The request thread: subscribe, serve, and start over whenever the connection ends.
fn requests(shared: &Shared) {
    let channel = sfu_channel(&shared.id);
    let mut backoff = BACKOFF_MIN;
    while !shared.stop.load(Ordering::Relaxed) {
        match subscribed_session(shared, &channel) {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "redis: request channel"),
        }
        shared.subscribed.store(false, Ordering::Relaxed);
        shared.drop_all("the subscription to its channel ended");
        if !nap(shared, backoff) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One subscription: serves requests until the connection fails or the node stops.
fn subscribed_session(shared: &Shared, channel: &str) -> redis::RedisResult<()> {
    let mut sub = connect(&shared.client)?;
    let mut out = Some(connect(&shared.client)?);
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe(channel)?;
    pubsub.set_read_timeout(Some(POLL))?;
    shared.resubscribe.store(false, Ordering::Relaxed);
    shared.subscribed.store(true, Ordering::Relaxed);
    tracing::info!(%channel, "redis: subscribed");
    loop {
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if shared.resubscribe.load(Ordering::Relaxed) {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "registration lapsed",
                    )));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((to, reply)) = serve(shared, msg.get_payload_bytes()) else {
            continue;
        };
        // One more try on a fresh connection if the reply connection broke.
        for _ in 0..2 {
            let con = match out.as_mut() {
                Some(con) => con,
                None => match connect(&shared.client) {
                    Ok(con) => out.insert(con),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis: reply connection");
                        continue;
                    }
                },
            };
            match redis::cmd("PUBLISH").arg(&to).arg(&reply).query::<i64>(con) {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "redis: publishing a reply");
                    out = None;
                }
            }
        }
    }
}

/// A request on the SFU's channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Offer {
        room: String,
        peer: String,
        node: String,
        sdp: String,
    },
    Leave {
        room: String,
        peer: String,
    },
}

/// What a signaling node delivers to its member `to` of room `r`: the text frame `f`.
#[derive(Debug, Serialize)]
struct Delivery<'a> {
    t: &'static str,
    r: &'a str,
    to: &'a str,
    f: String,
}

/// The frame a member gets with the SFU's answer, field for field as the hub encodes it.
#[derive(Serialize)]
struct AnswerFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    v: u32,
    from: &'static str,
    data: AnswerData<'a>,
}

#[derive(Serialize)]
struct AnswerData<'a> {
    kind: &'static str,
    sdp: &'a str,
}

/// The frame a member gets when the SFU refuses it.
#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    v: u32,
    code: &'static str,
    message: &'a str,
}

/// Whether `node` can be a signaling node's id (it names the channel the reply goes to).
fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= MAX_NODE_ID
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Acts on one request; returns the channel and message of the reply, if there is one.
/// Anything that is not a request this SFU serves is counted and ignored.
fn serve(shared: &Shared, payload: &[u8]) -> Option<(String, String)> {
    let metrics = shared.sfu.metrics();
    let bad = |why: &str| {
        metrics.redis_bad_messages.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("redis: ignoring a request: {why}");
        None
    };
    if payload.len() > MAX_REQUEST {
        return bad("too large");
    }
    let request = match serde_json::from_slice::<Request>(payload) {
        Ok(r) => r,
        Err(e) => return bad(&e.to_string()),
    };
    match request {
        Request::Leave { room, peer } => {
            metrics.redis_leaves.fetch_add(1, Ordering::Relaxed);
            shared.sfu.leave(&room, &peer);
            shared.seated().remove(&(room, peer));
            None
        }
        Request::Offer { node, .. } if !valid_node(&node) => bad("not a node id"),
        Request::Offer {
            room,
            peer,
            node,
            sdp,
        } => {
            metrics.redis_offers.fetch_add(1, Ordering::Relaxed);
            let frame = match shared.sfu.join(&room, &peer, &sdp) {
                Ok(answer) => {
                    shared.seated().insert((room.clone(), peer.clone()));
                    serde_json::to_string(&AnswerFrame {
                        kind: "signal",
                        v: 1,
                        from: "sfu",
                        data: AnswerData {
                            kind: "sfu_answer",
                            sdp: &answer,
                        },
                    })
                }
                Err(e) => {
                    tracing::info!(%room, %peer, reason = %e, "refused an offer");
                    serde_json::to_string(&ErrorFrame {
                        kind: "error",
                        v: 1,
                        code: "sfu_refused",
                        message: &format!("{}: {e}", e.code()),
                    })
                }
            }
            .ok()?;
            let reply = serde_json::to_string(&Delivery {
                t: "s",
                r: &room,
                to: &peer,
                f: frame,
            })
            .ok()?;
            Some((node_channel(&node), reply))
        }
    }
}

/// The registration thread: refreshes `sotto:sfu:<id>` every second while the request thread
/// is subscribed; deregisters when the node stops.
fn register(shared: &Shared) {
    let key = sfu_key(&shared.id);
    let metrics = shared.sfu.metrics();
    let mut con: Option<redis::Connection> = None;
    let mut last_ok = Instant::now();
    // The next refresh: due at once when the request thread has (again) subscribed.
    let mut next: Option<Instant> = None;
    while nap(shared, POLL) {
        if !shared.subscribed.load(Ordering::Relaxed) {
            metrics.redis_registered.store(0, Ordering::Relaxed);
            last_ok = Instant::now();
            next = None;
            continue;
        }
        if next.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        next = Some(Instant::now() + REFRESH_EVERY);
        let mut refresh = || -> redis::RedisResult<Option<String>> {
            let c = match con.as_mut() {
                Some(c) => c,
                None => con.insert(connect(&shared.client)?),
            };
            let load = serde_json::to_string(&shared.load()).unwrap_or_default();
            let (before, _): (Option<String>, i64) = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(load)
                .arg("PX")
                .arg(REGISTRATION_TTL.as_millis() as u64)
                .arg("GET")
                .cmd("SADD")
                .arg(SFUS_KEY)
                .arg(&*shared.id)
                .query(c)
                .inspect_err(|_| con = None)?;
            Ok(before)
        };
        // A connection that broke since the last refresh gets one fresh try at once.
        let result = refresh().or_else(|_| refresh());
        match result {
            Ok(before) => {
                metrics.redis_registered.store(1, Ordering::Relaxed);
                last_ok = Instant::now();
                if before.is_none() {
                    // Registered anew: any member seated before belongs to a lapsed
                    // registration, and signaling nodes may have moved its room.
                    shared.drop_all("its registration had expired");
                }
            }
            Err(e) => {
                metrics.redis_registered.store(0, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis: refreshing the registration");
                if last_ok.elapsed() > LAPSE {
                    shared.resubscribe.store(true, Ordering::Relaxed);
                    shared.drop_all("Redis out of reach");
                }
            }
        }
    }
    metrics.redis_registered.store(0, Ordering::Relaxed);
    // Stopping: let signaling nodes see at once that this SFU is gone.
    if let Ok(mut c) = connect(&shared.client) {
        let _: redis::RedisResult<()> = redis::pipe()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("SREM")
            .arg(SFUS_KEY)
            .arg(&*shared.id)
            .ignore()
            .query(&mut c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SfuConfig;

    fn shared() -> Shared {
        let sfu = Sfu::start(SfuConfig {
            workers: 1,
            ..SfuConfig::default()
        })
        .unwrap();
        Shared {
            sfu: Arc::new(sfu),
            client: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            id: "s0000000000000001".into(),
            capacity: 10,
            stop: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            resubscribe: AtomicBool::new(false),
            seated: Mutex::new(HashSet::new()),
        }
    }

    #[test]
    fn garbage_on_the_channel_is_counted_and_never_answered() {
        let s = shared();
        let huge = vec![b'x'; MAX_REQUEST + 1];
        let garbage: [&[u8]; 9] = [
            b"",
            b"\xff\xfe",
            b"{not json",
            b"[1,2,3]",
            br#"{"op":"dance","room":"r","peer":"p"}"#,
            br#"{"op":"offer","room":"r","peer":"p","sdp":"v=0"}"#,
            br#"{"op":"offer","room":"r","peer":"p","node":"n:evil","sdp":"v=0"}"#,
            br#"{"op":"offer","room":"r","peer":"p","node":"","sdp":"v=0"}"#,
            &huge,
        ];
        for g in garbage {
            assert!(serve(&s, g).is_none());
        }
        let m = s.sfu.metrics();
        assert_eq!(m.redis_bad_messages.load(Ordering::Relaxed), 9);
        assert_eq!(m.redis_offers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_bad_offer_is_refused_to_the_node_that_sent_it() {
        let s = shared();
        let (to, reply) = serve(
            &s,
            br#"{"op":"offer","room":"red","peer":"p1","node":"n00ff","sdp":"not sdp"}"#,
        )
        .unwrap();
        assert_eq!(to, "sotto:n:n00ff");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["t"], "s");
        assert_eq!(v["r"], "red");
        assert_eq!(v["to"], "p1");
        let f: serde_json::Value = serde_json::from_str(v["f"].as_str().unwrap()).unwrap();
        assert_eq!(f["type"], "error");
        assert_eq!(f["code"], "sfu_refused");
        assert!(
            f["message"].as_str().unwrap().starts_with("bad_offer: "),
            "{f}"
        );
        assert!(s.seated().is_empty());
        // A leave needs no reply, even for a member the SFU does not have.
        assert!(serve(&s, br#"{"op":"leave","room":"red","peer":"p1"}"#).is_none());
        let m = s.sfu.metrics();
        assert_eq!(m.redis_offers.load(Ordering::Relaxed), 1);
        assert_eq!(m.redis_leaves.load(Ordering::Relaxed), 1);
        assert_eq!(m.redis_bad_messages.load(Ordering::Relaxed), 0);
    }
}
