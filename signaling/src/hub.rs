//! Rooms and their peers, and delivery of messages to them.
//!
//! One mutex over the room map: every operation under it is a few map lookups and
//! non-blocking queue pushes, never I/O. Each peer has an outbound queue bounded in messages
//! and in bytes; a peer whose queue is full is too slow to keep up and is disconnected rather
//! than allowed to grow the server's memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::value::RawValue;
use sotto::signal::ErrorCode;
use sotto::signal::protocol::{MAX_SLOTS, PROTOCOL_VERSION, PeerInfo, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Serialises a server message (infallible for these types).
pub fn encode(msg: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// The queue was full; the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The sending side of one connection's outbound queue, bounded in messages and bytes.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    queued: Arc<AtomicUsize>,
    /// Why the hub disconnected the peer, when it was not for being slow.
    ended: Arc<std::sync::OnceLock<ErrorCode>>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The receiving side of an [`Outbox`]; dropping it releases what is still queued.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Utf8Bytes>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A queue holding at most `max_messages` frames and `max_bytes` bytes (but always one frame,
/// so a message larger than the byte bound can still be delivered to a reading client).
pub fn outbox(max_messages: usize, max_bytes: usize, metrics: Arc<Metrics>) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            ended: Arc::default(),
            max_bytes,
            metrics: metrics.clone(),
        },
        Inbox {
            rx,
            queued,
            metrics,
        },
    )
}

impl Outbox {
    /// Queues `frame` without waiting, or says the queue is full (or closed).
    pub fn try_push(&self, frame: Utf8Bytes) -> Result<(), QueueFull> {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Relaxed);
        if before > 0 && before.saturating_add(len) > self.max_bytes {
            self.queued.fetch_sub(len, Relaxed);
            return Err(QueueFull);
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.metrics.queued_bytes.fetch_add(len as u64, Relaxed);
                Ok(())
            }
            Err(_) => {
                self.queued.fetch_sub(len, Relaxed);
                Err(QueueFull)
            }
        }
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// Why the hub disconnected this peer (other than being too slow), if it did.
    pub fn end_reason(&self) -> Option<ErrorCode> {
        self.ended.get().copied()
    }
}

impl Inbox {
    fn taken(&self, frame: &Utf8Bytes) {
        self.queued.fetch_sub(frame.len(), Relaxed);
        self.metrics
            .queued_bytes
            .fetch_sub(frame.len() as u64, Relaxed);
    }

    /// The next frame; `None` when every [`Outbox`] is gone.
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.taken(&frame);
        Some(frame)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    /// Bounded queue of text frames to send.
    pub outbox: Outbox,
    /// Cancelled to disconnect the peer (for example when it is too slow).
    pub kick: CancellationToken,
}

/// How a member is reached: through its connection here, or through the node it is on.
#[derive(Debug)]
enum Reach {
    /// Connected to this process.
    Local(PeerHandle),
    /// Connected to another node of the cluster (`--redis`): a copy of its record.
    Remote(Arc<str>),
}

#[derive(Debug)]
struct Member {
    id: Arc<str>,
    /// Below `MAX_SLOTS`, unique in the room; freed when the member leaves.
    slot: u8,
    name: String,
    /// `sotto::names::skeleton(name)`: names with equal skeletons look alike.
    skeleton: String,
    /// Joined as a group member (`join` with `"group": true`).
    group: bool,
    reach: Reach,
}

impl Member {
    fn is_local(&self) -> bool {
        matches!(self.reach, Reach::Local(_))
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            peer_id: self.id.to_string(),
            name: self.name.clone(),
            slot: Some(self.slot),
            group: self.group,
        }
    }
}

#[derive(Debug, Default)]
struct Room {
    members: Vec<Member>,
}

impl Room {
    fn has_local(&self) -> bool {
        self.members.iter().any(Member::is_local)
    }
}

/// Makes a joiner's `welcome` from its id, its slot and the members already there.
pub type WelcomeFn = Box<dyn FnOnce(&Arc<str>, u8, Vec<PeerInfo>) -> Utf8Bytes + Send>;

/// What a join through the cluster ends with: the joiner's id and slot, or a refusal.
pub type JoinOutcome = Result<(Arc<str>, u8), ErrorCode>;

/// A local member whose join the cluster has not confirmed yet.
struct PendingJoin {
    handle: PeerHandle,
    welcome: WelcomeFn,
    done: tokio::sync::oneshot::Sender<JoinOutcome>,
}

impl std::fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingJoin")
    }
}

/// A member as the cluster records it (see [`crate::cluster`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    /// Peer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The name's skeleton.
    pub skel: String,
    /// Slot in the room.
    pub slot: u8,
    /// The node the member is connected to.
    pub node: String,
    /// SHA-256 of its join token (hex), or empty.
    #[serde(default)]
    pub tok: String,
    /// Joined as a group member (`join` with `"group": true`).
    #[serde(default)]
    pub grp: bool,
}

/// Where signals for members on other nodes go (the cluster's publisher).
pub trait RemoteDelivery: Send + Sync + std::fmt::Debug {
    /// Queues `frame` for member `to` of `room`, connected to `node`; false if the queue
    /// towards the cluster is full (the frame is dropped).
    fn deliver(&self, node: &str, room: &str, to: &str, frame: &Utf8Bytes) -> bool;
}

/// All rooms of a server, and the join tokens held by open connections.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    /// Local joins waiting for the cluster (only with `--redis`); locked after `rooms`.
    pending: Mutex<HashMap<Arc<str>, PendingJoin>>,
    remote: std::sync::OnceLock<Arc<dyn RemoteDelivery>>,
    tokens: Mutex<HashSet<String>>,
    rng: SystemRandom,
    max_peers_per_room: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub.
    pub fn new(max_peers_per_room: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            remote: std::sync::OnceLock::new(),
            tokens: Mutex::new(HashSet::new()),
            rng: SystemRandom::new(),
            max_peers_per_room,
            metrics,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Arc<str>, PendingJoin>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends signals for members on other nodes through `remote` (set once, at start).
    pub fn set_remote(&self, remote: Arc<dyn RemoteDelivery>) {
        let _ = self.remote.set(remote);
    }

    fn tokens(&self) -> MutexGuard<'_, HashSet<String>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `token` as held by a connection; false if another connection holds it.
    pub fn claim_token(&self, token: &str) -> bool {
        let mut tokens = self.tokens();
        if tokens.contains(token) {
            return false;
        }
        tokens.insert(token.to_string())
    }

    /// Frees a token claimed with [`Hub::claim_token`].
    pub fn release_token(&self, token: &str) {
        self.tokens().remove(token);
    }

    fn deliver(&self, room: &str, to: &Member, frame: &Utf8Bytes) {
        match &to.reach {
            Reach::Local(handle) => Self::push(&to.id, handle, frame),
            Reach::Remote(node) => {
                let queued = self
                    .remote
                    .get()
                    .is_some_and(|r| r.deliver(node, room, &to.id, frame));
                if !queued {
                    self.metrics.cluster_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn push(id: &str, handle: &PeerHandle, frame: &Utf8Bytes) {
        if handle.outbox.try_push(frame.clone()).is_err() && !handle.kick.is_cancelled() {
            // The connection counts the `slow_consumer` error once, when it closes.
            tracing::warn!(peer = %id, "outbound queue full; disconnecting slow peer");
            handle.kick.cancel();
        }
    }

    /// Tells the members connected here (but `except`) that something happened in the room.
    /// Membership news for members on other nodes comes from their own nodes.
    fn announce(&self, room: &Room, except: &str, frame: &Utf8Bytes) {
        for m in &room.members {
            if let (Reach::Local(handle), true) = (&m.reach, &*m.id != except) {
                Self::push(&m.id, handle, frame);
            }
        }
    }

    /// `p` and 16 random hex digits: ids say nothing about when or in which order peers came.
    fn new_id(&self, room: &Room) -> Option<Arc<str>> {
        loop {
            let mut bytes = [0u8; 8];
            self.rng.fill(&mut bytes).ok()?;
            let id = format!("p{}", hex::encode(bytes));
            if room.members.iter().all(|m| *m.id != *id) {
                return Some(id.into());
            }
        }
    }

    /// Adds a peer to `room`, tells the others, and queues for the peer the welcome that
    /// `welcome` makes from its id, its slot and the peers already there. Returns its id.
    ///
    /// The welcome is queued under the rooms' lock, so a peer joining right after cannot get
    /// its `peer_joined` into this peer's queue ahead of this peer's welcome.
    ///
    /// Refused with `room_full`, with `name_taken` when a member's name is confusable with
    /// `name` (equal [`sotto::names::skeleton`]), or with `server_full` if no random id can be
    /// drawn.
    pub fn join(
        &self,
        room: &str,
        name: &str,
        group: bool,
        handle: PeerHandle,
        welcome: impl FnOnce(&Arc<str>, u8, Vec<PeerInfo>) -> Utf8Bytes,
    ) -> Result<Arc<str>, ErrorCode> {
        // Outside the lock: the skeleton is the costly part of a join.
        let skeleton = sotto::names::skeleton(name);
        let mut rooms = self.rooms();
        let is_new = !rooms.contains_key(room);
        let entry = rooms.entry(room.to_string()).or_default();
        // The lowest free slot; a room never holds more members than slots.
        let slot = (0..MAX_SLOTS)
            .find(|s| entry.members.iter().all(|m| usize::from(m.slot) != *s))
            .and_then(|s| u8::try_from(s).ok());
        let refusal = if entry.members.len() >= self.max_peers_per_room || slot.is_none() {
            Some(ErrorCode::RoomFull)
        } else if entry.members.iter().any(|m| m.skeleton == skeleton) {
            Some(ErrorCode::NameTaken)
        } else {
            None
        };
        let (id, slot) = match (refusal, self.new_id(entry), slot) {
            (None, Some(id), Some(slot)) => (id, slot),
            (refusal, _, _) => {
                let code = refusal.unwrap_or(ErrorCode::ServerFull);
                if is_new {
                    rooms.remove(room);
                }
                return Err(code);
            }
        };
        let mut existing: Vec<PeerInfo> = entry.members.iter().map(Member::info).collect();
        existing.sort_by_key(|p| p.slot);
        let announce = encode(&ServerMessage::PeerJoined {
            v: PROTOCOL_VERSION,
            peer_id: id.to_string(),
            name: name.to_string(),
            slot: Some(slot),
            group,
        });
        self.announce(entry, "", &announce);
        if handle
            .outbox
            .try_push(welcome(&id, slot, existing))
            .is_err()
        {
            // A joining connection's queue holds little; if the welcome does not fit, the
            // client is not reading.
            handle.kick.cancel();
        }
        entry.members.push(Member {
            id: id.clone(),
            slot,
            name: name.to_string(),
            skeleton,
            group,
            reach: Reach::Local(handle),
        });
        if is_new {
            self.metrics.rooms.fetch_add(1, Relaxed);
        }
        self.metrics.peers.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Removes a peer and tells the rest of its room (those connected here: the others hear
    /// it from their own nodes).
    pub fn leave(&self, room: &str, peer_id: &str) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let Some(at) = entry.members.iter().position(|m| &*m.id == peer_id) else {
            return;
        };
        let gone = entry.members.remove(at);
        if gone.is_local() {
            self.metrics.peers.fetch_sub(1, Relaxed);
        }
        let announce = encode(&ServerMessage::PeerLeft {
            v: PROTOCOL_VERSION,
            peer_id: peer_id.to_string(),
        });
        self.announce(entry, "", &announce);
        if !entry.has_local() {
            // Copies of other nodes' members are kept only for rooms with members here.
            rooms.remove(room);
            self.metrics.rooms.fetch_sub(1, Relaxed);
        }
    }

    /// Queues `frame` for member `peer` of `room` if it is connected here; false if not.
    pub fn send_to(&self, room: &str, peer: &str, frame: &Utf8Bytes) -> bool {
        let rooms = self.rooms();
        let Some(Member {
            reach: Reach::Local(handle),
            ..
        }) = rooms
            .get(room)
            .and_then(|r| r.members.iter().find(|m| &*m.id == peer))
        else {
            return false;
        };
        Self::push(peer, handle, frame);
        true
    }

    /// Queues `frame` for every member of `room` connected here.
    pub fn send_to_room(&self, room: &str, frame: &Utf8Bytes) {
        let rooms = self.rooms();
        if let Some(entry) = rooms.get(room) {
            self.announce(entry, "", frame);
        }
    }

    /// Relays `data` from `from` to peer `to`, or to every other peer in the room. Returns
    /// how many peers it was queued for.
    pub fn relay(
        &self,
        room: &str,
        from: &str,
        to: Option<&str>,
        data: Box<RawValue>,
    ) -> Result<usize, ErrorCode> {
        let frame = encode(&ServerMessage::Signal {
            v: PROTOCOL_VERSION,
            from: from.to_string(),
            data,
        });
        let rooms = self.rooms();
        let Some(entry) = rooms.get(room) else {
            return Err(ErrorCode::NotJoined);
        };
        let mut delivered = 0;
        match to {
            Some(to) => {
                let target = entry
                    .members
                    .iter()
                    .find(|m| &*m.id == to && &*m.id != from)
                    .ok_or(ErrorCode::UnknownPeer)?;
                self.deliver(room, target, &frame);
                delivered = 1;
            }
            None => {
                for m in entry.members.iter().filter(|m| &*m.id != from) {
                    self.deliver(room, m, &frame);
                    delivered += 1;
                }
            }
        }
        self.metrics
            .messages_relayed
            .fetch_add(delivered as u64, Relaxed);
        Ok(delivered)
    }

    // ---- The cluster's side (`--redis`): see `crate::cluster`. ----

    /// Draws a peer id for a join through the cluster (it checks the id is free).
    pub fn draw_id(&self) -> Option<Arc<str>> {
        self.new_id(&Room::default())
    }

    /// Holds a local joiner until the cluster confirms its join with [`Hub::cluster_joined`]
    /// or refuses it with [`Hub::cluster_refused`]; `done` then tells the connection.
    pub fn hold_join(
        &self,
        id: Arc<str>,
        handle: PeerHandle,
        welcome: WelcomeFn,
        done: tokio::sync::oneshot::Sender<JoinOutcome>,
    ) {
        self.pending().insert(
            id,
            PendingJoin {
                handle,
                welcome,
                done,
            },
        );
    }

    /// The cluster refused (or could not make) a held join.
    pub fn cluster_refused(&self, id: &str, code: ErrorCode) {
        if let Some(p) = self.pending().remove(id) {
            let _ = p.done.send(Err(code));
        }
    }

    /// The cluster added `member` to `room`. `roster` (the members already there) comes with
    /// the joiner's own node's copy. Returns false when the joiner is ours but no longer
    /// waits (its connection ended): the cluster must remove it again.
    pub fn cluster_joined(
        &self,
        room: &str,
        member: MemberRecord,
        roster: Option<Vec<MemberRecord>>,
        this_node: &str,
    ) -> bool {
        let mut rooms = self.rooms();
        if member.node == this_node {
            let Some(p) = self.pending().remove(member.id.as_str()) else {
                return false;
            };
            let is_new = !rooms.contains_key(room);
            let entry = rooms.entry(room.to_string()).or_default();
            for r in roster.into_iter().flatten() {
                // Members of this node are here already (or have left, their leave queued).
                if r.node != this_node && r.id != member.id {
                    self.add_remote(room, entry, r);
                }
            }
            let id: Arc<str> = member.id.as_str().into();
            let mut existing: Vec<PeerInfo> = entry.members.iter().map(Member::info).collect();
            existing.sort_by_key(|p| p.slot);
            let announce = encode(&ServerMessage::PeerJoined {
                v: PROTOCOL_VERSION,
                peer_id: member.id.clone(),
                name: member.name.clone(),
                slot: Some(member.slot),
                group: member.grp,
            });
            self.announce(entry, "", &announce);
            // The connection learns it joined before it writes the welcome (see `connection`).
            let _ = p.done.send(Ok((id.clone(), member.slot)));
            if p.handle
                .outbox
                .try_push((p.welcome)(&id, member.slot, existing))
                .is_err()
            {
                p.handle.kick.cancel();
            }
            entry.members.push(Member {
                id,
                slot: member.slot,
                name: member.name,
                skeleton: member.skel,
                group: member.grp,
                reach: Reach::Local(p.handle),
            });
            if is_new {
                self.metrics.rooms.fetch_add(1, Relaxed);
            }
            self.metrics.peers.fetch_add(1, Relaxed);
            return true;
        }
        if let Some(entry) = rooms.get_mut(room) {
            self.add_remote(room, entry, member);
        }
        true
    }

    /// Adds a copy of another node's member and tells the members here; ignored if known.
    fn add_remote(&self, _room: &str, entry: &mut Room, r: MemberRecord) {
        if entry.members.iter().any(|m| *m.id == *r.id) {
            return;
        }
        let announce = encode(&ServerMessage::PeerJoined {
            v: PROTOCOL_VERSION,
            peer_id: r.id.clone(),
            name: r.name.clone(),
            slot: Some(r.slot),
            group: r.grp,
        });
        self.announce(entry, "", &announce);
        entry.members.push(Member {
            id: r.id.as_str().into(),
            slot: r.slot,
            name: r.name,
            skeleton: r.skel,
            group: r.grp,
            reach: Reach::Remote(r.node.as_str().into()),
        });
    }

    /// The cluster's full roster of `room`, sent when a node put its members back (Redis
    /// restarted, or a node's channel dropped and events may have been missed). Members not
    /// known here are added. A copy of another node's member is removed when that node's
    /// members are in the roster but it is not (it left while events were missed); members of
    /// nodes absent from the roster stay until those nodes put theirs back or are reaped.
    pub fn cluster_roster(&self, room: &str, roster: Vec<MemberRecord>, this_node: &str) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let listed: HashSet<&str> = roster.iter().map(|r| r.node.as_str()).collect();
        let gone: Vec<Arc<str>> = entry
            .members
            .iter()
            .filter(|m| match &m.reach {
                Reach::Remote(node) => {
                    listed.contains(&**node) && !roster.iter().any(|r| *r.id == *m.id)
                }
                Reach::Local(_) => false,
            })
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            entry.members.retain(|m| m.id != id);
            let announce = encode(&ServerMessage::PeerLeft {
                v: PROTOCOL_VERSION,
                peer_id: id.to_string(),
            });
            self.announce(entry, "", &announce);
        }
        for r in roster {
            if r.node != this_node {
                self.add_remote(room, entry, r);
            }
        }
    }

    /// The members connected here, per room, as the cluster records them (to rebuild what a
    /// restarted Redis lost).
    pub fn local_records(&self, this_node: &str) -> Vec<(String, Vec<MemberRecord>)> {
        let rooms = self.rooms();
        rooms
            .iter()
            .map(|(room, entry)| {
                let members = entry
                    .members
                    .iter()
                    .filter(|m| m.is_local())
                    .map(|m| MemberRecord {
                        id: m.id.to_string(),
                        name: m.name.clone(),
                        skel: m.skeleton.clone(),
                        slot: m.slot,
                        node: this_node.to_string(),
                        tok: String::new(),
                        grp: m.group,
                    })
                    .collect();
                (room.clone(), members)
            })
            .collect()
    }

    /// Other nodes with members in rooms here, and those rooms.
    pub fn remote_nodes(&self) -> HashMap<Arc<str>, Vec<String>> {
        let rooms = self.rooms();
        let mut nodes: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (room, entry) in rooms.iter() {
            let mut seen = HashSet::new();
            for m in &entry.members {
                if let Reach::Remote(node) = &m.reach
                    && seen.insert(node.clone())
                {
                    nodes.entry(node.clone()).or_default().push(room.clone());
                }
            }
        }
        nodes
    }

    /// Disconnects every member connected here, telling each `code` (this node lost the
    /// cluster), and refuses the joins waiting for it.
    pub fn disconnect_all(&self, code: ErrorCode) {
        let rooms = self.rooms();
        for m in rooms.values().flat_map(|r| &r.members) {
            if let Reach::Local(handle) = &m.reach {
                let _ = handle.outbox.ended.set(code);
                handle.kick.cancel();
            }
        }
        drop(rooms);
        for (_, p) in self.pending().drain() {
            let _ = p.done.send(Err(code));
        }
    }

    /// Whether `peer` of `room` is connected here.
    pub fn is_local(&self, room: &str, peer: &str) -> bool {
        self.rooms()
            .get(room)
            .and_then(|r| r.members.iter().find(|m| &*m.id == peer))
            .is_some_and(Member::is_local)
    }

    /// Disconnects local member `peer` of `room`, telling it `code`.
    pub fn disconnect(&self, room: &str, peer: &str, code: ErrorCode) {
        let rooms = self.rooms();
        if let Some(Member {
            reach: Reach::Local(handle),
            ..
        }) = rooms
            .get(room)
            .and_then(|r| r.members.iter().find(|m| &*m.id == peer))
        {
            let _ = handle.outbox.ended.set(code);
            handle.kick.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Utf8Bytes {
        Utf8Bytes::from("x".repeat(n))
    }

    #[tokio::test]
    async fn queues_are_bounded_in_bytes_and_release_what_they_held() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, mut inbox) = outbox(100, 1000, metrics.clone());
        // A frame larger than the bound still fits an empty queue.
        outbox.try_push(frame(1500)).unwrap();
        assert_eq!(outbox.try_push(frame(1)), Err(QueueFull));
        assert_eq!(inbox.recv().await.unwrap().len(), 1500);
        for _ in 0..4 {
            outbox.try_push(frame(250)).unwrap();
        }
        assert_eq!(outbox.try_push(frame(1)), Err(QueueFull));
        assert_eq!(outbox.queued_bytes(), 1000);
        assert_eq!(metrics.queued_bytes.load(Relaxed), 1000);
        drop(inbox);
        assert_eq!(metrics.queued_bytes.load(Relaxed), 0);
        assert_eq!(outbox.try_push(frame(1)), Err(QueueFull));
    }
}
