//! The receiving side: every other member's keys, by slot and generation.
//!
//! Rules (see `docs/call-protocol.md`, "Group keys"):
//! - A key never replaces one already held for the same (slot, gen), and a key older than the
//!   sender's `floor` is refused. The floor is the generation the sender used before its
//!   newest one (frames in flight), so the previous used generation stays, older ones go.
//! - Bundles carry a per-sender sequence; one older than the newest accepted is refused.
//! - Ratchets on join are not announced to existing members: a frame whose generation is up to
//!   [`MAX_DERIVE`] steps past a held one is tried under the ratcheted key, which is kept only
//!   if the frame authenticates.
//! - A frame under a key not held is held (at most [`MAX_HELD_FRAMES`] per sender, for
//!   [`HOLD_TIME`]) and opened when its key arrives, or dropped and counted; never returned
//!   unopened.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::error::GroupError;
use super::kid::{GroupKid, KeyKind, Slot};
use super::secret::GroupSecret;
use crate::sframe::{CipherSuite, Header, ReceiverConfig, ReceiverContext, SframeError};

/// Generations held per sender at most.
pub const MAX_GENERATIONS: usize = 8;
/// How many ratchet steps past a held generation a receiver derives by itself.
pub const MAX_DERIVE: u64 = 8;
/// Frames held per sender while their key is missing.
pub const MAX_HELD_FRAMES: usize = 16;
/// Bytes held per sender at most (frames and metadata).
pub const MAX_HELD_BYTES: usize = 1 << 20;
/// How long a frame waits for its key.
pub const HOLD_TIME: Duration = Duration::from_millis(500);

/// What happened to one sender's frames so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Frames that authenticated and were decrypted (held ones included once opened).
    pub frames_decrypted: u64,
    /// Frames under a held key whose tag did not verify, or otherwise malformed.
    pub decrypt_failures: u64,
    /// Frames refused as replays or as older than the replay window.
    pub replays: u64,
    /// Frames dropped because their key never came (at once, or from the hold queue).
    pub unknown_key: u64,
    /// Frames put in the hold queue.
    pub held: u64,
}

/// A frame that opened.
pub struct OpenedFrame {
    /// The sender.
    pub slot: Slot,
    /// What the frame carries.
    pub kind: KeyKind,
    /// The sender's key generation.
    pub generation: u64,
    /// The SFrame counter (authenticated).
    pub ctr: u64,
    /// The plaintext.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for OpenedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload may be a chat message: not printed.
        f.debug_struct("OpenedFrame")
            .field("slot", &self.slot)
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .field("ctr", &self.ctr)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// The outcome of [`Keyring::open`] that is not an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenOutcome {
    /// The frame opened.
    Opened(OpenedFrame),
    /// Its key is missing: the frame waits; it comes out of [`Keyring::poll_released`] if
    /// the key arrives in time.
    Held,
}

/// Whether [`Keyring::insert`] added a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new generation.
    New,
    /// This generation was already held; nothing changed.
    AlreadyHeld,
}

struct HeldFrame {
    kid: GroupKid,
    metadata: Vec<u8>,
    frame: Vec<u8>,
    deadline: Instant,
}

struct SenderRing {
    gens: BTreeMap<u64, GroupSecret>,
    context: ReceiverContext,
    /// Newest generation an authenticated frame used.
    active: Option<u64>,
    /// Generations below this are refused.
    floor: u64,
    last_seq: Option<u64>,
    held: VecDeque<HeldFrame>,
    held_bytes: usize,
    stats: SenderStats,
}

enum Attempt {
    Opened(OpenedFrame),
    NoKey,
    Failed(GroupError),
}

/// Other members' keys and their frames' decryption (Sans-I/O: time comes in).
pub struct Keyring {
    suite: CipherSuite,
    senders: BTreeMap<Slot, SenderRing>,
    released: VecDeque<OpenedFrame>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("suite", &self.suite)
            .field("senders", &self.senders.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn kid(generation: u64, slot: Slot, kind: KeyKind) -> Result<u64, GroupError> {
    Ok(GroupKid::new(generation, slot, kind)?.to_u64())
}

impl SenderRing {
    fn new() -> Result<Self, GroupError> {
        Ok(SenderRing {
            gens: BTreeMap::new(),
            context: ReceiverContext::with_config(ReceiverConfig {
                max_keys: MAX_GENERATIONS * KeyKind::ALL.len(),
                ..ReceiverConfig::default()
            })?,
            active: None,
            floor: 0,
            last_seq: None,
            held: VecDeque::new(),
            held_bytes: 0,
            stats: SenderStats::default(),
        })
    }

    /// Installs `secret` as generation `generation` (all kinds); never replaces a held one.
    fn install(
        &mut self,
        suite: CipherSuite,
        slot: Slot,
        generation: u64,
        secret: GroupSecret,
    ) -> Result<Inserted, GroupError> {
        if self.gens.contains_key(&generation) {
            return Ok(Inserted::AlreadyHeld);
        }
        if generation < self.floor {
            return Err(GroupError::StaleGeneration {
                generation,
                floor: self.floor,
            });
        }
        if self.gens.len() >= MAX_GENERATIONS {
            // Make room by dropping the oldest generation that frames are not using now,
            // only if it is older than the new one.
            let victim = self
                .gens
                .keys()
                .copied()
                .find(|g| Some(*g) != self.active)
                .filter(|g| *g < generation)
                .ok_or(GroupError::TooManyGenerations(slot))?;
            self.erase(slot, victim);
            if self.active.is_some_and(|a| victim < a) {
                // It may have opened frames: never install it again (its replay window is gone).
                self.floor = self.floor.max(victim + 1);
            }
        }
        for kind in KeyKind::ALL {
            self.context
                .add_key(suite, kid(generation, slot, kind)?, secret.as_bytes())?;
        }
        self.gens.insert(generation, secret);
        Ok(Inserted::New)
    }

    fn erase(&mut self, slot: Slot, generation: u64) {
        self.gens.remove(&generation);
        for kind in KeyKind::ALL {
            if let Ok(kid) = kid(generation, slot, kind) {
                self.context.remove_key(kid);
            }
        }
    }

    /// An authenticated frame used `generation`: keep it and the previous used generation.
    fn advance(&mut self, slot: Slot, generation: u64) {
        let floor = match self.active {
            Some(a) if generation > a => a,
            Some(_) => return,
            None => generation.saturating_sub(1),
        };
        self.active = Some(generation);
        self.floor = self.floor.max(floor);
        let old: Vec<u64> = self.gens.range(..self.floor).map(|(g, _)| *g).collect();
        for g in old {
            self.erase(slot, g);
        }
    }

    /// Tries to open `frame` (of `generation`): under a held key, or under one ratcheted from the
    /// newest held generation below it.
    fn attempt(
        &mut self,
        suite: CipherSuite,
        k: GroupKid,
        metadata: &[u8],
        frame: &[u8],
    ) -> Attempt {
        if !self.gens.contains_key(&k.generation) {
            if k.generation < self.floor {
                return Attempt::NoKey;
            }
            match self.derive(suite, k, metadata, frame) {
                Ok(true) => {}
                Ok(false) => return Attempt::NoKey,
                Err(e) => return Attempt::Failed(e),
            }
        }
        match self.context.decrypt_to_vec(metadata, frame) {
            Ok((header, payload)) => {
                self.stats.frames_decrypted += 1;
                self.advance(k.slot, k.generation);
                Attempt::Opened(OpenedFrame {
                    slot: k.slot,
                    kind: k.kind,
                    generation: k.generation,
                    ctr: header.ctr,
                    payload,
                })
            }
            Err(e) => {
                match e {
                    SframeError::Replay { .. } | SframeError::TooOld { .. } => {
                        self.stats.replays += 1
                    }
                    _ => self.stats.decrypt_failures += 1,
                }
                Attempt::Failed(e.into())
            }
        }
    }

    /// Ratchets forward from the newest held generation below `k.gen` and keeps the result if
    /// it opens the frame. A wrong guess is not a failure: the key may still come in a bundle.
    fn derive(
        &mut self,
        suite: CipherSuite,
        k: GroupKid,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<bool, GroupError> {
        let Some((&base_gen, base)) = self.gens.range(..k.generation).next_back() else {
            return Ok(false);
        };
        if k.generation - base_gen > MAX_DERIVE {
            return Ok(false);
        }
        let mut secret = base.ratchet()?;
        for _ in base_gen + 1..k.generation {
            secret = secret.ratchet()?;
        }
        let mut trial = ReceiverContext::with_config(ReceiverConfig {
            max_keys: 1,
            ..ReceiverConfig::default()
        })?;
        trial.add_key(suite, k.to_u64(), secret.as_bytes())?;
        if trial.decrypt_to_vec(metadata, frame).is_err() {
            return Ok(false);
        }
        self.install(suite, k.slot, k.generation, secret)?;
        Ok(true)
    }

    fn hold(&mut self, kid: GroupKid, metadata: &[u8], frame: &[u8], now: Instant) -> bool {
        let size = metadata.len() + frame.len();
        if self.held.len() >= MAX_HELD_FRAMES || self.held_bytes + size > MAX_HELD_BYTES {
            return false;
        }
        self.held.push_back(HeldFrame {
            kid,
            metadata: metadata.to_vec(),
            frame: frame.to_vec(),
            deadline: now + HOLD_TIME,
        });
        self.held_bytes += size;
        self.stats.held += 1;
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(front) = self.held.front() {
            if now < front.deadline {
                break;
            }
            if let Some(f) = self.held.pop_front() {
                self.held_bytes -= f.metadata.len() + f.frame.len();
                self.stats.unknown_key += 1;
            }
        }
    }

    /// Opens what waits and now has a key; the rest keeps waiting.
    fn retry_held(&mut self, suite: CipherSuite, out: &mut VecDeque<OpenedFrame>) {
        let waiting = std::mem::take(&mut self.held);
        for f in waiting {
            match self.attempt(suite, f.kid, &f.metadata, &f.frame) {
                Attempt::Opened(o) => {
                    self.held_bytes -= f.metadata.len() + f.frame.len();
                    out.push_back(o);
                }
                Attempt::NoKey => self.held.push_back(f),
                Attempt::Failed(_) => {
                    self.held_bytes -= f.metadata.len() + f.frame.len();
                }
            }
        }
    }
}

impl Keyring {
    /// An empty keyring for `suite`.
    pub fn new(suite: CipherSuite) -> Self {
        Keyring {
            suite,
            senders: BTreeMap::new(),
            released: VecDeque::new(),
        }
    }

    /// Starts tracking `slot`'s keys.
    pub fn add_sender(&mut self, slot: Slot) -> Result<(), GroupError> {
        if self.senders.contains_key(&slot) {
            return Err(GroupError::SlotTaken(slot));
        }
        self.senders.insert(slot, SenderRing::new()?);
        Ok(())
    }

    /// Erases every key of `slot` (zeroized) and its held frames; returns whether it was there.
    pub fn remove_sender(&mut self, slot: Slot) -> bool {
        self.senders.remove(&slot).is_some()
    }

    /// Adds generation `generation` of `slot`'s key, received in a bundle with sequence `seq`.
    /// Frames waiting for it are opened and come out of [`poll_released`](Self::poll_released).
    pub fn insert(
        &mut self,
        now: Instant,
        slot: Slot,
        generation: u64,
        seq: u64,
        secret: GroupSecret,
    ) -> Result<Inserted, GroupError> {
        let suite = self.suite;
        let ring = self
            .senders
            .get_mut(&slot)
            .ok_or(GroupError::UnknownMember(slot))?;
        match ring.last_seq {
            Some(last) if seq < last => return Err(GroupError::StaleBundle { seq, last }),
            Some(last) if seq == last => {
                // The same bundle again (e.g. resent after a lost ack): fine if it is held.
                return if ring.gens.contains_key(&generation) {
                    Ok(Inserted::AlreadyHeld)
                } else {
                    Err(GroupError::StaleBundle { seq, last })
                };
            }
            _ => {}
        }
        ring.expire(now);
        ring.last_seq = Some(seq);
        let inserted = ring.install(suite, slot, generation, secret)?;
        if inserted == Inserted::New {
            ring.retry_held(suite, &mut self.released);
        }
        Ok(inserted)
    }

    /// Opens a frame from any member (`metadata` is the SFrame metadata, empty for audio).
    pub fn open(
        &mut self,
        now: Instant,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<OpenOutcome, GroupError> {
        let (header, _) = Header::parse(frame)?;
        let k = GroupKid::parse(header.kid)?;
        let suite = self.suite;
        let ring = self
            .senders
            .get_mut(&k.slot)
            .ok_or(GroupError::UnknownMember(k.slot))?;
        ring.expire(now);
        let had = ring.gens.len();
        match ring.attempt(suite, k, metadata, frame) {
            Attempt::Opened(o) => {
                if ring.gens.len() > had && !ring.held.is_empty() {
                    // A derived key may open frames that waited for it.
                    ring.retry_held(suite, &mut self.released);
                }
                Ok(OpenOutcome::Opened(o))
            }
            Attempt::Failed(e) => Err(e),
            Attempt::NoKey if k.generation >= ring.floor && ring.hold(k, metadata, frame, now) => {
                Ok(OpenOutcome::Held)
            }
            Attempt::NoKey => {
                ring.stats.unknown_key += 1;
                Err(GroupError::UnknownKey {
                    slot: k.slot,
                    generation: k.generation,
                })
            }
        }
    }

    /// The next held frame whose key arrived.
    pub fn poll_released(&mut self) -> Option<OpenedFrame> {
        self.released.pop_front()
    }

    /// Drops held frames whose time is up (counted as `unknown_key`).
    pub fn handle_timeout(&mut self, now: Instant) {
        for ring in self.senders.values_mut() {
            ring.expire(now);
        }
    }

    /// When the next held frame expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.senders
            .values()
            .filter_map(|r| r.held.front().map(|f| f.deadline))
            .min()
    }

    /// `slot`'s counts.
    pub fn stats(&self, slot: Slot) -> Option<SenderStats> {
        self.senders.get(&slot).map(|r| r.stats)
    }

    /// The generations held for `slot`, oldest first.
    pub fn generations(&self, slot: Slot) -> Vec<u64> {
        self.senders
            .get(&slot)
            .map(|r| r.gens.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Frames of `slot` waiting for a key.
    pub fn held_frames(&self, slot: Slot) -> usize {
        self.senders.get(&slot).map_or(0, |r| r.held.len())
    }
}
