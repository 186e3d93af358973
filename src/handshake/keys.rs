//! Media keys from a handshake, and their rotation.
//!
//! Each sending direction has its own base key and its own KIDs, so a key of one direction
//! says nothing about the other. Rotation ratchets a direction's base key one way with HKDF
//! (`base' = HKDF-Expand(base, "sotto v1 ratchet", 32)`) and moves to the next KID:
//! `KID = epoch << 1 | direction`. Senders rotate on demand and periodically; receivers hold
//! the next epochs' keys in advance, advance when an authenticated frame uses one, and erase
//! the old epoch's key after an overlap so frames in flight still decrypt.
//!
//! Video uses the same base keys under its own KIDs (`VIDEO_KID_BASE | epoch << 1 |
//! direction`): SFrame puts the KID into the key and salt labels, so each kind gets an
//! independent key and its own counter, and both rotate on the same epochs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::HandshakeError;
use super::machine::Role;
use super::transcript::Schedule;
use crate::sframe::{
    CipherSuite, Decrypted, ReceiverConfig, ReceiverContext, SenderContext, SframeError,
};

/// A sending direction of a two-party call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Media sent by the handshake's initiator.
    InitiatorToResponder = 0,
    /// Media sent by the responder.
    ResponderToInitiator = 1,
}

/// The SFrame KID of `direction`'s audio at rotation step `epoch`.
pub const fn kid_for(epoch: u64, direction: Direction) -> u64 {
    (epoch << 1) | direction as u64
}

/// What a key protects: audio and video of a direction share base keys but never KIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MediaKind {
    /// Opus frames (KID = `epoch << 1 | direction`).
    #[default]
    Audio,
    /// Video frames (KID = `VIDEO_KID_BASE | epoch << 1 | direction`).
    Video,
}

/// The bit that sets video KIDs apart from audio ones (`docs/call-protocol.md`).
pub const VIDEO_KID_BASE: u64 = 1 << 24;

/// Epochs stay below this, so video KIDs never reach into the audio KID space.
const MAX_EPOCH: u64 = 1 << 23;

/// The SFrame KID of `kind` in `direction` at rotation step `epoch`.
pub const fn kind_kid_for(kind: MediaKind, epoch: u64, direction: Direction) -> u64 {
    match kind {
        MediaKind::Audio => kid_for(epoch, direction),
        MediaKind::Video => VIDEO_KID_BASE | kid_for(epoch, direction),
    }
}

/// The epoch and direction bit of `kid` if it is a KID of `kind`.
fn epoch_of(kind: MediaKind, kid: u64) -> Option<(u64, u64)> {
    let rest = match kind {
        MediaKind::Audio if kid < VIDEO_KID_BASE => kid,
        MediaKind::Video if kid & VIDEO_KID_BASE != 0 && kid < VIDEO_KID_BASE << 1 => {
            kid & !VIDEO_KID_BASE
        }
        _ => return None,
    };
    Some((rest >> 1, rest & 1))
}

/// One direction's base key. Zeroized on drop; `Debug` hides it.
pub struct DirectionKey {
    base: Zeroizing<[u8; 32]>,
    direction: Direction,
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKey")
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl DirectionKey {
    /// The direction this key protects.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// A direction key from raw bytes, for applications with their own key agreement.
    pub fn from_bytes(base: [u8; 32], direction: Direction) -> Self {
        DirectionKey {
            base: Zeroizing::new(base),
            direction,
        }
    }

    /// A second copy of this key, for the other media kind (zeroized on drop like this one).
    pub fn duplicate(&self) -> DirectionKey {
        DirectionKey {
            base: self.base.clone(),
            direction: self.direction,
        }
    }

    /// Whether two keys are equal (constant time); for tests and diagnostics.
    pub fn ct_eq(&self, other: &DirectionKey) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.base.as_slice().ct_eq(other.base.as_slice()))
    }
}

impl DirectionKey {
    /// The key of this direction's control channel (`docs/call-protocol.md`): derived from the
    /// epoch-0 media base key with its own label, so it never collides with a media key.
    pub fn control_key(&self) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(self.base.as_ref())
            .ok()
            .and_then(|hk| hk.expand(b"sotto v1 control", key.as_mut()).ok())
            .ok_or(HandshakeError::Sframe(SframeError::Crypto))?;
        Ok(key)
    }
}

/// The media keys one side takes from a handshake: what it sends with and what it receives
/// with.
#[derive(Debug)]
pub struct CallKeys {
    /// Our sending direction.
    pub send: DirectionKey,
    /// The peer's sending direction.
    pub recv: DirectionKey,
}

impl CallKeys {
    pub(crate) fn new(role: Role, s: &Schedule) -> Self {
        let initiator = DirectionKey {
            base: s.media_initiator.clone(),
            direction: Direction::InitiatorToResponder,
        };
        let responder = DirectionKey {
            base: s.media_responder.clone(),
            direction: Direction::ResponderToInitiator,
        };
        match role {
            Role::Initiator => CallKeys {
                send: initiator,
                recv: responder,
            },
            Role::Responder => CallKeys {
                send: responder,
                recv: initiator,
            },
        }
    }
}

fn ratchet(base: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    let mut next = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::from_prk(base)
        .ok()
        .and_then(|hk| hk.expand(b"sotto v1 ratchet", next.as_mut()).ok())
        .ok_or(HandshakeError::Sframe(SframeError::Crypto))?;
    Ok(next)
}

/// How often keys rotate and how long an old key stays after a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationConfig {
    /// Rotate the sending key this often; `None` only on demand.
    pub interval: Option<Duration>,
    /// Keep a receiving key this long after the sender moved on, for frames in flight.
    pub overlap: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            interval: Some(Duration::from_secs(60)),
            overlap: Duration::from_secs(2),
        }
    }
}

/// Epochs a receiver holds ahead of the newest one it has seen.
const LOOKAHEAD: u64 = 2;
/// Old epochs kept at most while their overlap runs.
const MAX_RETIRING: usize = 8;

/// The sending half of a call's media encryption, with rotation (Sans-I/O: time comes in).
pub struct MediaSender {
    base: Zeroizing<[u8; 32]>,
    direction: Direction,
    kind: MediaKind,
    epoch: u64,
    context: SenderContext,
    config: RotationConfig,
    last_rotation: Instant,
}

impl std::fmt::Debug for MediaSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSender")
            .field("direction", &self.direction)
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl MediaSender {
    /// An audio sender at epoch 0 of `key`.
    pub fn new(
        suite: CipherSuite,
        key: DirectionKey,
        config: RotationConfig,
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        Self::for_kind(MediaKind::Audio, suite, key, config, now)
    }

    /// A sender of `kind` at epoch 0 of `key`.
    pub fn for_kind(
        kind: MediaKind,
        suite: CipherSuite,
        key: DirectionKey,
        config: RotationConfig,
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        let kid = kind_kid_for(kind, 0, key.direction);
        let context = SenderContext::new(suite, kid, key.base.as_ref())?;
        Ok(MediaSender {
            base: key.base,
            direction: key.direction,
            kind,
            epoch: 0,
            context,
            config,
            last_rotation: now,
        })
    }

    /// The SFrame context that encrypts frames under the current key.
    pub fn context(&mut self) -> &mut SenderContext {
        &mut self.context
    }

    /// The current rotation step.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The KID frames carry now.
    pub fn kid(&self) -> u64 {
        self.context.kid()
    }

    /// Moves to the next key now; the previous base key is erased. Returns the new KID.
    pub fn rotate(&mut self, now: Instant) -> Result<u64, HandshakeError> {
        let epoch = self
            .epoch
            .checked_add(1)
            .filter(|e| *e < MAX_EPOCH)
            .ok_or(HandshakeError::Sframe(SframeError::CounterExhausted))?;
        let next = ratchet(&self.base)?;
        let kid = kind_kid_for(self.kind, epoch, self.direction);
        self.context.rotate(kid, next.as_ref())?;
        self.base = next;
        self.epoch = epoch;
        self.last_rotation = now;
        Ok(kid)
    }

    /// Rotates if the interval has passed; returns the new KID if it did.
    pub fn poll(&mut self, now: Instant) -> Result<Option<u64>, HandshakeError> {
        match self.config.interval {
            Some(every) if now.saturating_duration_since(self.last_rotation) >= every => {
                self.rotate(now).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The receiving half, following the peer's rotations (Sans-I/O: time comes in).
pub struct MediaReceiver {
    suite: CipherSuite,
    direction: Direction,
    kind: MediaKind,
    context: ReceiverContext,
    /// Newest epoch an authenticated frame used.
    current: u64,
    /// Base key of the furthest epoch installed (`current + LOOKAHEAD`).
    furthest_base: Zeroizing<[u8; 32]>,
    furthest: u64,
    retiring: VecDeque<(u64, Instant)>,
    config: RotationConfig,
}

impl std::fmt::Debug for MediaReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaReceiver")
            .field("direction", &self.direction)
            .field("kind", &self.kind)
            .field("current", &self.current)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl MediaReceiver {
    /// An audio receiver holding epochs 0 to 2 of `key`.
    pub fn new(
        suite: CipherSuite,
        key: DirectionKey,
        config: RotationConfig,
    ) -> Result<Self, HandshakeError> {
        Self::for_kind(MediaKind::Audio, suite, key, config)
    }

    /// A receiver of `kind` holding epochs 0 to 2 of `key`.
    pub fn for_kind(
        kind: MediaKind,
        suite: CipherSuite,
        key: DirectionKey,
        config: RotationConfig,
    ) -> Result<Self, HandshakeError> {
        let context = ReceiverContext::with_config(ReceiverConfig {
            max_keys: (LOOKAHEAD as usize + 1) + MAX_RETIRING,
            ..ReceiverConfig::default()
        })?;
        let mut rx = MediaReceiver {
            suite,
            direction: key.direction,
            kind,
            context,
            current: 0,
            furthest_base: key.base,
            furthest: 0,
            retiring: VecDeque::with_capacity(MAX_RETIRING + 1),
            config,
        };
        rx.context.add_key(
            suite,
            kind_kid_for(kind, 0, rx.direction),
            rx.furthest_base.as_ref(),
        )?;
        rx.install_through(LOOKAHEAD)?;
        Ok(rx)
    }

    fn install_through(&mut self, epoch: u64) -> Result<(), HandshakeError> {
        while self.furthest < epoch {
            self.furthest_base = ratchet(&self.furthest_base)?;
            self.furthest += 1;
            self.context.add_key(
                self.suite,
                kind_kid_for(self.kind, self.furthest, self.direction),
                self.furthest_base.as_ref(),
            )?;
        }
        Ok(())
    }

    /// The SFrame receiver (for its stats).
    pub fn context(&self) -> &ReceiverContext {
        &self.context
    }

    /// The newest epoch seen.
    pub fn epoch(&self) -> u64 {
        self.current
    }

    /// Erases keys whose overlap has ended.
    pub fn poll(&mut self, now: Instant) {
        while let Some(&(kid, deadline)) = self.retiring.front() {
            if now < deadline {
                break;
            }
            self.context.remove_key(kid);
            self.retiring.pop_front();
        }
    }

    /// Decrypts a frame in place; a frame of a newer epoch (once authenticated) moves the
    /// receiver forward and starts the old epochs' overlap.
    pub fn decrypt_in_place<'a>(
        &mut self,
        metadata: &[u8],
        frame: &'a mut [u8],
        now: Instant,
    ) -> Result<Decrypted<'a>, HandshakeError> {
        self.poll(now);
        let decrypted = self.context.decrypt_in_place(metadata, frame)?;
        let Some((epoch, direction)) = epoch_of(self.kind, decrypted.header.kid) else {
            return Ok(decrypted);
        };
        if direction == self.direction as u64 && epoch > self.current {
            for old in self.current..epoch {
                if self.retiring.len() == MAX_RETIRING
                    && let Some((oldest, _)) = self.retiring.pop_front()
                {
                    self.context.remove_key(oldest);
                }
                self.retiring.push_back((
                    kind_kid_for(self.kind, old, self.direction),
                    now + self.config.overlap,
                ));
            }
            self.current = epoch;
            self.install_through(epoch + LOOKAHEAD)?;
        }
        Ok(decrypted)
    }
}
