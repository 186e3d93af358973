//! [`GroupKeys`]: one member's group key state machine (Sans-I/O: time and bytes come in,
//! commands come out).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::bundle::{KeyAck, KeyBundle};
use super::error::GroupError;
use super::keyring::{Inserted, Keyring, OpenOutcome, OpenedFrame, SenderStats};
use super::kid::{GroupKid, KeyKind, Slot, kind_index};
use super::secret::GroupSecret;
use super::sender::SenderKeys;
use crate::sframe::{CipherSuite, SenderContext};

/// How long a leave's fresh key waits for acks before sending moves to it anyway.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a bundle waits for its ack before it goes again; the wait doubles each time.
pub const RESEND_AFTER: Duration = Duration::from_secs(1);
/// The longest wait between two sends of one bundle.
pub const RESEND_MAX: Duration = Duration::from_secs(8);

/// A bundle sent and not yet acknowledged: sent again, byte for byte (same sequence number,
/// so a receiver that has it acks it again and changes nothing).
struct Unacked {
    body: Zeroizing<Vec<u8>>,
    next: Instant,
    wait: Duration,
}

/// How a member came into our view of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// It joined after us: our key ratchets first, so it cannot open what we sent before.
    NewJoiner,
    /// It was in the room when we arrived: it gets our key as it is.
    AlreadyPresent,
}

/// What the driver must do or may show, polled with [`GroupKeys::poll_output`].
#[non_exhaustive]
pub enum GroupOutput {
    /// Seal `body` for `to_slot` on the pair's authenticated channel and send it.
    SendBundle {
        /// The recipient.
        to_slot: Slot,
        /// The bundle body (holds a secret: zeroized on drop).
        body: Zeroizing<Vec<u8>>,
    },
    /// Seal `body` for `to_slot` on the pair's authenticated channel and send it.
    SendAck {
        /// The recipient (the key's owner).
        to_slot: Slot,
        /// The ack body.
        body: Vec<u8>,
    },
    /// Our frames are now sealed under generation `generation` (send a video keyframe).
    SwitchedSendKey {
        /// The new generation.
        generation: u64,
    },
    /// Something to show or count.
    Event(GroupEvent),
}

impl std::fmt::Debug for GroupOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupOutput::SendBundle { to_slot, body } => f
                .debug_struct("SendBundle")
                .field("to_slot", to_slot)
                .field("len", &body.len())
                .finish_non_exhaustive(),
            GroupOutput::SendAck { to_slot, body } => f
                .debug_struct("SendAck")
                .field("to_slot", to_slot)
                .field("body", body)
                .finish(),
            GroupOutput::SwitchedSendKey { generation } => f
                .debug_struct("SwitchedSendKey")
                .field("generation", generation)
                .finish(),
            GroupOutput::Event(e) => f.debug_tuple("Event").field(e).finish(),
        }
    }
}

/// Key events for the UI and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// A leave made a fresh key of `generation`; sending moves to it when acked, at
    /// `deadline` at the latest.
    RekeyPending {
        /// The fresh key's generation.
        generation: u64,
        /// When sending moves to it at the latest.
        deadline: Instant,
    },
    /// A member's key arrived (new generation).
    KeyReceived {
        /// Its owner.
        slot: Slot,
        /// Its generation.
        generation: u64,
    },
}

/// One member's group keys: its own sending key with join/leave rekeying, and every other
/// member's keys to open their frames.
///
/// The driver calls [`member_joined`](Self::member_joined) once a member's pairwise
/// handshake is done, passes the bodies that arrive on pair channels to
/// [`bundle_received`](Self::bundle_received) and [`ack_received`](Self::ack_received),
/// calls [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout), and
/// executes [`poll_output`](Self::poll_output) until it returns `None` after each call.
pub struct GroupKeys {
    my_slot: Slot,
    timeout: Duration,
    sender: SenderKeys,
    /// One SFrame sender per [`KeyKind`], all on the current generation.
    contexts: Vec<SenderContext>,
    members: BTreeSet<Slot>,
    keyring: Keyring,
    outputs: VecDeque<GroupOutput>,
    next_seq: u64,
    switches: u64,
    /// Bundles awaiting their ack, by (recipient, generation).
    unacked: BTreeMap<(Slot, u64), Unacked>,
    resent: u64,
}

impl std::fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupKeys")
            .field("my_slot", &self.my_slot)
            .field("sender", &self.sender)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

fn contexts(
    suite: CipherSuite,
    slot: Slot,
    generation: u64,
    secret: &GroupSecret,
) -> Result<Vec<SenderContext>, GroupError> {
    KeyKind::ALL
        .iter()
        .map(|&kind| {
            let kid = GroupKid::new(generation, slot, kind)?.to_u64();
            Ok(SenderContext::new(suite, kid, secret.as_bytes())?)
        })
        .collect()
}

impl GroupKeys {
    /// A member in `my_slot` with a fresh random key at generation 0.
    pub fn new(suite: CipherSuite, my_slot: Slot) -> Result<Self, GroupError> {
        Self::with_secret(suite, my_slot, GroupSecret::random()?)
    }

    /// A member whose generation-0 key is `secret`.
    pub fn with_secret(
        suite: CipherSuite,
        my_slot: Slot,
        secret: GroupSecret,
    ) -> Result<Self, GroupError> {
        let contexts = contexts(suite, my_slot, 0, &secret)?;
        Ok(GroupKeys {
            my_slot,
            timeout: SWITCH_TIMEOUT,
            sender: SenderKeys::new(secret),
            contexts,
            members: BTreeSet::new(),
            keyring: Keyring::new(suite),
            outputs: VecDeque::new(),
            next_seq: 0,
            switches: 0,
            unacked: BTreeMap::new(),
            resent: 0,
        })
    }

    /// Our slot.
    pub fn slot(&self) -> Slot {
        self.my_slot
    }

    /// The other members.
    pub fn members(&self) -> impl Iterator<Item = Slot> + '_ {
        self.members.iter().copied()
    }

    /// The generation our frames are sealed under.
    pub fn send_generation(&self) -> u64 {
        self.sender.current().0
    }

    /// The generation a pending switch moves to.
    pub fn pending_generation(&self) -> Option<u64> {
        self.sender.pending().map(|(g, _)| g)
    }

    /// How many times sending moved to a new key (the stats' `rekeys`).
    pub fn rekeys(&self) -> u64 {
        self.switches
    }

    /// When sending moves to the pending key at the latest (a leave's switch).
    pub fn switch_deadline(&self) -> Option<Instant> {
        self.sender.deadline()
    }

    /// Bundles sent again because no ack came.
    pub fn bundles_resent(&self) -> u64 {
        self.resent
    }

    fn send_bundle(&mut self, now: Instant, to_slot: Slot, generation: u64, secret: GroupSecret) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = KeyBundle {
            slot: self.my_slot,
            generation,
            seq,
            secret,
        }
        .encode();
        self.unacked.insert(
            (to_slot, generation),
            Unacked {
                body: body.clone(),
                next: now + RESEND_AFTER,
                wait: RESEND_AFTER,
            },
        );
        self.outputs
            .push_back(GroupOutput::SendBundle { to_slot, body });
    }

    /// Sends again every bundle whose ack is overdue (a bundle lost on a reconnect would
    /// otherwise leave that member unable to hear us for good).
    fn resend_due(&mut self, now: Instant) {
        for (&(to_slot, _), u) in self.unacked.iter_mut() {
            if u.next > now {
                continue;
            }
            u.wait = (u.wait * 2).min(RESEND_MAX);
            u.next = now + u.wait;
            self.resent += 1;
            self.outputs.push_back(GroupOutput::SendBundle {
                to_slot,
                body: u.body.clone(),
            });
        }
    }

    fn rotate(&mut self) -> Result<(), GroupError> {
        let (generation, secret) = self.sender.current();
        for (ctx, kind) in self.contexts.iter_mut().zip(KeyKind::ALL) {
            let kid = GroupKid::new(generation, self.my_slot, kind)?.to_u64();
            ctx.rotate(kid, secret.as_bytes())?;
        }
        self.switches += 1;
        self.outputs
            .push_back(GroupOutput::SwitchedSendKey { generation });
        Ok(())
    }

    fn switch_if_due(&mut self, now: Instant) -> Result<(), GroupError> {
        if self.sender.due(now) && self.sender.switch().is_some() {
            self.rotate()?;
        }
        Ok(())
    }

    /// `slot` is a member now (its pairwise handshake is done). It is sent our key: the
    /// ratcheted one if it is a [`JoinKind::NewJoiner`].
    pub fn member_joined(
        &mut self,
        now: Instant,
        slot: Slot,
        kind: JoinKind,
    ) -> Result<(), GroupError> {
        if slot == self.my_slot || self.members.contains(&slot) {
            return Err(GroupError::SlotTaken(slot));
        }
        self.keyring.add_sender(slot)?;
        self.members.insert(slot);
        match kind {
            JoinKind::NewJoiner => {
                let (generation, secret, switched) = self.sender.join(slot)?;
                if switched {
                    self.rotate()?;
                }
                self.send_bundle(now, slot, generation, secret);
            }
            JoinKind::AlreadyPresent => {
                let (generation, secret) = self.sender.current();
                let secret = secret.clone();
                self.send_bundle(now, slot, generation, secret);
                if let Some((generation, secret)) = self.sender.pending() {
                    let secret = secret.clone();
                    self.send_bundle(now, slot, generation, secret);
                    self.sender.add_present(slot);
                }
            }
        }
        Ok(())
    }

    /// `slot` left: its keys are erased and a fresh key goes to everyone else.
    pub fn member_left(&mut self, now: Instant, slot: Slot) -> Result<(), GroupError> {
        if !self.members.remove(&slot) {
            return Err(GroupError::UnknownMember(slot));
        }
        self.keyring.remove_sender(slot);
        self.unacked.retain(|(to, _), _| *to != slot);
        let (generation, secret) = self.sender.leave(now, self.timeout, &self.members)?;
        let to: Vec<Slot> = self.members.iter().copied().collect();
        for member in to {
            self.send_bundle(now, member, generation, secret.clone());
        }
        if let Some(deadline) = self.sender.deadline() {
            self.outputs
                .push_back(GroupOutput::Event(GroupEvent::RekeyPending {
                    generation,
                    deadline,
                }));
        }
        // With nobody left to ack, the switch is immediate.
        self.switch_if_due(now)
    }

    /// A bundle body arrived from `from_slot` over its authenticated pair channel. A key
    /// we hold (new or already held) is acked.
    pub fn bundle_received(
        &mut self,
        now: Instant,
        from_slot: Slot,
        body: &[u8],
    ) -> Result<(), GroupError> {
        if !self.members.contains(&from_slot) {
            return Err(GroupError::UnknownMember(from_slot));
        }
        let bundle = KeyBundle::parse(body)?;
        if bundle.slot != from_slot {
            return Err(GroupError::SlotMismatch {
                from: from_slot,
                claimed: bundle.slot,
            });
        }
        let generation = bundle.generation;
        let inserted =
            self.keyring
                .insert(now, from_slot, generation, bundle.seq, bundle.secret)?;
        if inserted == Inserted::New {
            self.outputs
                .push_back(GroupOutput::Event(GroupEvent::KeyReceived {
                    slot: from_slot,
                    generation,
                }));
        }
        let body = KeyAck {
            slot: from_slot,
            generation,
        }
        .encode();
        self.outputs.push_back(GroupOutput::SendAck {
            to_slot: from_slot,
            body,
        });
        Ok(())
    }

    /// An ack body arrived from `from_slot` over its authenticated pair channel.
    pub fn ack_received(
        &mut self,
        now: Instant,
        from_slot: Slot,
        body: &[u8],
    ) -> Result<(), GroupError> {
        if !self.members.contains(&from_slot) {
            return Err(GroupError::UnknownMember(from_slot));
        }
        let ack = KeyAck::parse(body)?;
        if ack.slot != self.my_slot {
            return Err(GroupError::AckNotForUs(ack.slot));
        }
        self.sender.ack(from_slot, ack.generation);
        // This member holds that generation, and so has no use for older ones from us.
        self.unacked
            .retain(|&(to, g), _| !(to == from_slot && g <= ack.generation));
        self.switch_if_due(now)
    }

    /// Runs what is due at `now`: a pending switch past its deadline, held frames past theirs.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), GroupError> {
        self.keyring.handle_timeout(now);
        self.resend_due(now);
        self.switch_if_due(now)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let resend = self.unacked.values().map(|u| u.next).min();
        [self.sender.deadline(), self.keyring.poll_timeout(), resend]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<GroupOutput> {
        self.outputs.pop_front()
    }

    /// The SFrame sender of `kind`, on the current generation (zero-allocation sealing).
    pub fn sender(&mut self, kind: KeyKind) -> &mut SenderContext {
        &mut self.contexts[kind_index(kind)]
    }

    /// Seals `payload` as a frame of `kind`. Allocates: the media path uses
    /// [`sender`](Self::sender).
    pub fn seal(&mut self, kind: KeyKind, payload: &[u8]) -> Result<Vec<u8>, GroupError> {
        Ok(self.sender(kind).encrypt_to_vec(&[], payload)?)
    }

    /// Opens a frame from another member (no SFrame metadata).
    pub fn open(&mut self, now: Instant, frame: &[u8]) -> Result<OpenOutcome, GroupError> {
        self.keyring.open(now, &[], frame)
    }

    /// Opens a frame whose SFrame metadata is `metadata` (e.g. a video prefix).
    pub fn open_with_metadata(
        &mut self,
        now: Instant,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<OpenOutcome, GroupError> {
        self.keyring.open(now, metadata, frame)
    }

    /// The next held frame that opened once its key arrived.
    pub fn poll_released(&mut self) -> Option<OpenedFrame> {
        self.keyring.poll_released()
    }

    /// `slot`'s receive counts.
    pub fn stats(&self, slot: Slot) -> Option<SenderStats> {
        self.keyring.stats(slot)
    }

    /// The receiver keyring (generations held, frames waiting).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}
