//! Rooms and their peers, and delivery of messages to them.
//!
//! One mutex over the room map: every operation under it is a few map lookups and
//! non-blocking queue pushes, never I/O. Each peer has a bounded outbound queue; a peer whose
//! queue is full is too slow to keep up and is disconnected rather than allowed to grow the
//! server's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use sotto::signal::ErrorCode;
use sotto::signal::protocol::{PROTOCOL_VERSION, PeerInfo, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Serialises a server message (infallible for these types).
pub fn encode(msg: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(msg).unwrap_or_default())
}

/// How the hub reaches one connection.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    /// Bounded queue of text frames to send.
    pub tx: mpsc::Sender<Utf8Bytes>,
    /// Cancelled to disconnect the peer (for example when it is too slow).
    pub kick: CancellationToken,
}

#[derive(Debug)]
struct Member {
    id: Arc<str>,
    name: String,
    handle: PeerHandle,
}

#[derive(Debug, Default)]
struct Room {
    members: Vec<Member>,
}

/// All rooms of a server.
#[derive(Debug)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
    max_peers_per_room: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub.
    pub fn new(max_peers_per_room: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_peers_per_room,
            metrics,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, to: &Member, frame: &Utf8Bytes) {
        match to.handle.tx.try_send(frame.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.error(ErrorCode::SlowConsumer);
                tracing::warn!(peer = %to.id, "outbound queue full; disconnecting slow peer");
                to.handle.kick.cancel();
            }
            // The connection is already closing.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Adds a peer to `room`; returns its id and the peers already there, and tells them.
    pub fn join(
        &self,
        room: &str,
        name: &str,
        handle: PeerHandle,
    ) -> Result<(Arc<str>, Vec<PeerInfo>), ErrorCode> {
        let mut rooms = self.rooms();
        let is_new = !rooms.contains_key(room);
        let entry = rooms.entry(room.to_string()).or_default();
        if entry.members.len() >= self.max_peers_per_room {
            return Err(ErrorCode::RoomFull);
        }
        let id: Arc<str> = format!("p{}", self.next_id.fetch_add(1, Relaxed)).into();
        let existing = entry
            .members
            .iter()
            .map(|m| PeerInfo {
                peer_id: m.id.to_string(),
                name: m.name.clone(),
            })
            .collect();
        let announce = encode(&ServerMessage::PeerJoined {
            v: PROTOCOL_VERSION,
            peer_id: id.to_string(),
            name: name.to_string(),
        });
        for m in &entry.members {
            self.deliver(m, &announce);
        }
        entry.members.push(Member {
            id: id.clone(),
            name: name.to_string(),
            handle,
        });
        if is_new {
            self.metrics.rooms.fetch_add(1, Relaxed);
        }
        self.metrics.peers.fetch_add(1, Relaxed);
        Ok((id, existing))
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
