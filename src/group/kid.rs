//! KID layout v2: `KID = gen << 10 | slot << 3 | kind`.
//!
//! The slot (7 bits) is the sender's place in the room, the kind (3 bits) what the key
//! protects, and the generation (the remaining 54 bits) the step of the sender's key. SFrame
//! puts the whole KID into its key and salt labels, so one base secret per (member, gen)
//! yields independent keys and counters for every kind.

use super::error::KidError;

/// Highest slot number.
pub const MAX_SLOT: u8 = 127;
/// Highest key generation a KID can carry.
pub const MAX_GENERATION: u64 = u64::MAX >> 10;

const KIND_BITS: u32 = 3;
const SLOT_BITS: u32 = 7;
const GEN_SHIFT: u32 = KIND_BITS + SLOT_BITS;

/// What a key protects. Kinds 4 to 7 are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyKind {
    /// Opus frames.
    Audio = 0,
    /// Video frames.
    Video = 1,
    /// Room control messages.
    Control = 2,
    /// Chat messages.
    Chat = 3,
}

impl KeyKind {
    /// Every kind in use, in KID order.
    pub const ALL: [KeyKind; 4] = [
        KeyKind::Audio,
        KeyKind::Video,
        KeyKind::Control,
        KeyKind::Chat,
    ];

    /// The kind of a 3-bit value.
    pub fn from_bits(bits: u8) -> Result<Self, KidError> {
        match bits {
            0 => Ok(KeyKind::Audio),
            1 => Ok(KeyKind::Video),
            2 => Ok(KeyKind::Control),
            3 => Ok(KeyKind::Chat),
            other => Err(KidError::ReservedKind(other)),
        }
    }

    /// The kind's 3-bit value.
    pub const fn bits(self) -> u8 {
        self as u8
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A member's place in the room (0 to 127), assigned by the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u8);

impl Slot {
    /// The slot `n`, if it fits 7 bits.
    pub fn new(n: u8) -> Result<Self, KidError> {
        if n > MAX_SLOT {
            return Err(KidError::SlotOutOfRange(n.into()));
        }
        Ok(Slot(n))
    }

    /// The slot number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed v2 KID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKid {
    /// Generation of the sender's key.
    pub generation: u64,
    /// The sender.
    pub slot: Slot,
    /// What the key protects.
    pub kind: KeyKind,
}

impl GroupKid {
    /// A KID, if `generation` fits.
    pub fn new(generation: u64, slot: Slot, kind: KeyKind) -> Result<Self, KidError> {
        if generation > MAX_GENERATION {
            return Err(KidError::GenerationOutOfRange(generation));
        }
        Ok(GroupKid {
            generation,
            slot,
            kind,
        })
    }

    /// The KID as SFrame carries it.
    pub const fn to_u64(self) -> u64 {
        (self.generation << GEN_SHIFT) | ((self.slot.0 as u64) << KIND_BITS) | self.kind as u64
    }

    /// Parses a KID from a frame; a reserved kind is refused.
    pub fn parse(kid: u64) -> Result<Self, KidError> {
        let kind = KeyKind::from_bits((kid & ((1 << KIND_BITS) - 1)) as u8)?;
        let slot = Slot(((kid >> KIND_BITS) & ((1 << SLOT_BITS) - 1)) as u8);
        Ok(GroupKid {
            generation: kid >> GEN_SHIFT,
            slot,
            kind,
        })
    }
}

/// Index of a kind in per-kind arrays.
pub(crate) fn kind_index(kind: KeyKind) -> usize {
    kind.index()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_gen_slot_kind() {
        let kid = GroupKid::new(5, Slot::new(9).unwrap(), KeyKind::Video).unwrap();
        assert_eq!(kid.to_u64(), (5 << 10) | (9 << 3) | 1);
        assert_eq!(GroupKid::parse(kid.to_u64()).unwrap(), kid);
        // The first 64 generations keep the KID within two bytes.
        let top = GroupKid::new(63, Slot::new(MAX_SLOT).unwrap(), KeyKind::Chat).unwrap();
        assert!(top.to_u64() <= u16::MAX as u64);
        let max = GroupKid::new(MAX_GENERATION, Slot::new(MAX_SLOT).unwrap(), KeyKind::Chat);
        assert_eq!(
            GroupKid::parse(max.unwrap().to_u64()).unwrap(),
            max.unwrap()
        );
    }

    #[test]
    fn reserved_kinds_and_out_of_range_fields_are_refused() {
        for kind in 4..8u64 {
            assert_eq!(
                GroupKid::parse((3 << 10) | (2 << 3) | kind),
                Err(KidError::ReservedKind(kind as u8))
            );
        }
        assert_eq!(Slot::new(128), Err(KidError::SlotOutOfRange(128)));
        assert_eq!(
            GroupKid::new(MAX_GENERATION + 1, Slot::new(0).unwrap(), KeyKind::Audio),
            Err(KidError::GenerationOutOfRange(MAX_GENERATION + 1))
        );
        for kind in KeyKind::ALL {
            assert_eq!(KeyKind::from_bits(kind.bits()), Ok(kind));
        }
    }
}
