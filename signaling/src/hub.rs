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

#[derive(Debug)]
struct Member {
    id: Arc<str>,
    /// Below `MAX_SLOTS`, unique in the room; freed when the member leaves.
    slot: u8,
    name: String,
    /// `sotto::names::skeleton(name)`: names with equal skeletons look alike.
    skeleton: String,
    handle: PeerHandle,
}

#[derive(Debug, Default)]
struct Room {
    members: Vec<Member>,
}

/// All rooms of a server, and the join tokens held by open connections.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
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

    fn deliver(&self, to: &Member, frame: &Utf8Bytes) {
        if to.handle.outbox.try_push(frame.clone()).is_err() && !to.handle.kick.is_cancelled() {
            // The connection counts the `slow_consumer` error once, when it closes.
            tracing::warn!(peer = %to.id, "outbound queue full; disconnecting slow peer");
            to.handle.kick.cancel();
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
        let existing = entry
            .members
            .iter()
            .map(|m| PeerInfo {
                peer_id: m.id.to_string(),
                name: m.name.clone(),
                slot: Some(m.slot),
            })
            .collect();
        let announce = encode(&ServerMessage::PeerJoined {
            v: PROTOCOL_VERSION,
            peer_id: id.to_string(),
            name: name.to_string(),
            slot: Some(slot),
        });
        for m in &entry.members {
            self.deliver(m, &announce);
        }
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
            handle,
        });
        if is_new {
            self.metrics.rooms.fetch_add(1, Relaxed);
        }
        self.metrics.peers.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Removes a peer and tells the rest of its room.
    pub fn leave(&self, room: &str, peer_id: &str) {
        let mut rooms = self.rooms();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let before = entry.members.len();
        entry.members.retain(|m| &*m.id != peer_id);
        if entry.members.len() == before {
            return;
        }
        self.metrics.peers.fetch_sub(1, Relaxed);
        let announce = encode(&ServerMessage::PeerLeft {
            v: PROTOCOL_VERSION,
            peer_id: peer_id.to_string(),
        });
        for m in &entry.members {
            self.deliver(m, &announce);
        }
        if entry.members.is_empty() {
            rooms.remove(room);
            self.metrics.rooms.fetch_sub(1, Relaxed);
        }
    }

    /// Queues `frame` for member `peer` of `room`; false if there is no such member.
    pub fn send_to(&self, room: &str, peer: &str, frame: &Utf8Bytes) -> bool {
        let rooms = self.rooms();
        let Some(member) = rooms
            .get(room)
            .and_then(|r| r.members.iter().find(|m| &*m.id == peer))
        else {
            return false;
        };
        self.deliver(member, frame);
        true
    }

    /// Queues `frame` for every member of `room`.
    pub fn send_to_room(&self, room: &str, frame: &Utf8Bytes) {
        let rooms = self.rooms();
        for m in rooms.get(room).into_iter().flat_map(|r| &r.members) {
            self.deliver(m, frame);
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
                self.deliver(target, &frame);
                delivered = 1;
            }
            None => {
                for m in entry.members.iter().filter(|m| &*m.id != from) {
                    self.deliver(m, &frame);
                    delivered += 1;
                }
            }
        }
        self.metrics
            .messages_relayed
            .fetch_add(delivered as u64, Relaxed);
        Ok(delivered)
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
