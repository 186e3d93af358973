//! Our own sending key: one base secret per generation, and the rules that move it.
//!
//! - Join: the secret ratchets one way (`gen + 1`) and sending moves to it at once; the
//!   joiner is given only the new generation, the others derive it from the one they hold.
//! - Leave: a fresh random secret (`gen + 1`) goes to every remaining member; sending moves to
//!   it once all of them acked it, or at the deadline (2 s after it was made).
//! - Leave while a switch is pending: another fresh secret (`pending gen + 1`) replaces the
//!   pending one (the leaver had it), every remaining member must ack it again, and the first
//!   deadline stays.
//! - Join while a switch is pending: the pending secret ratchets (`pending gen + 1`) and the
//!   joiner gets only that. Members that hold the pending generation derive the next one, so
//!   their acks of it still count; the joiner must ack too. Sending stays on the current
//!   generation until the switch, so the joiner hears us at the switch (within the deadline).
//! - The generation sending left is erased at the switch.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::error::GroupError;
use super::kid::{MAX_GENERATION, Slot};
use super::secret::GroupSecret;

/// A fresh key waiting for acks before sending moves to it.
struct Pending {
    generation: u64,
    /// Generation of the fresh secret `secret` was ratcheted from (joins during the wait).
    fresh_gen: u64,
    secret: GroupSecret,
    deadline: Instant,
    awaiting: BTreeSet<Slot>,
}

/// Our base secrets: the one we send with and the one we are moving to.
pub(crate) struct SenderKeys {
    generation: u64,
    secret: GroupSecret,
    pending: Option<Pending>,
}

impl std::fmt::Debug for SenderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeys")
            .field("generation", &self.generation)
            .field("pending", &self.pending.as_ref().map(|p| p.generation))
            .finish_non_exhaustive()
    }
}

fn next_gen(generation: u64) -> Result<u64, GroupError> {
    generation
        .checked_add(1)
        .filter(|g| *g <= MAX_GENERATION)
        .ok_or(GroupError::GenerationsExhausted)
}

impl SenderKeys {
    /// Starts at generation 0 of `secret`.
    pub fn new(secret: GroupSecret) -> Self {
        SenderKeys {
            generation: 0,
            secret,
            pending: None,
        }
    }

    /// The generation we send with, and its secret.
    pub fn current(&self) -> (u64, &GroupSecret) {
        (self.generation, &self.secret)
    }

    /// The generation we are moving to, and its secret.
    pub fn pending(&self) -> Option<(u64, &GroupSecret)> {
        self.pending.as_ref().map(|p| (p.generation, &p.secret))
    }

    /// When a pending switch happens at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// A member joined: returns the generation and secret to give it, and whether sending
    /// moved to it now.
    pub fn join(&mut self, joiner: Slot) -> Result<(u64, GroupSecret, bool), GroupError> {
        if let Some(p) = &mut self.pending {
            let generation = next_gen(p.generation)?;
            p.secret = p.secret.ratchet()?;
            p.generation = generation;
            p.awaiting.insert(joiner);
            return Ok((generation, p.secret.clone(), false));
        }
        let generation = next_gen(self.generation)?;
        // The old secret is zeroized as it is replaced.
        self.secret = self.secret.ratchet()?;
        self.generation = generation;
        Ok((generation, self.secret.clone(), true))
    }

    /// A member that was already in the room when we came: it must also ack a pending key.
    pub fn add_present(&mut self, slot: Slot) {
        if let Some(p) = &mut self.pending {
            p.awaiting.insert(slot);
        }
    }

    /// A member left; `remaining` are the others. Returns the fresh generation and secret to
    /// give every remaining member.
    pub fn leave(
        &mut self,
        now: Instant,
        timeout: Duration,
        remaining: &BTreeSet<Slot>,
    ) -> Result<(u64, GroupSecret), GroupError> {
        let (generation, deadline) = match &self.pending {
            Some(p) => (next_gen(p.generation)?, p.deadline),
            None => (next_gen(self.generation)?, now + timeout),
        };
        let secret = GroupSecret::random()?;
        self.pending = Some(Pending {
            generation,
            fresh_gen: generation,
            secret: secret.clone(),
            deadline,
            awaiting: remaining.clone(),
        });
        Ok((generation, secret))
    }

    /// `from` acked `generation`; counts if it is the pending key or one it ratchets to.
    pub fn ack(&mut self, from: Slot, generation: u64) {
        if let Some(p) = &mut self.pending
            && (p.fresh_gen..=p.generation).contains(&generation)
        {
            p.awaiting.remove(&from);
        }
    }

    /// Whether a pending switch should happen now (all acked, or its deadline passed).
    pub fn due(&self, now: Instant) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.awaiting.is_empty() || now >= p.deadline)
    }

    /// Moves sending to the pending key; the old secret is zeroized. Returns the new
    /// generation.
    pub fn switch(&mut self) -> Option<u64> {
        let p = self.pending.take()?;
        self.generation = p.generation;
        self.secret = p.secret;
        Some(self.generation)
    }
}
