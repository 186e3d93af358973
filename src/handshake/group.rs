//! The group safety code: one code for a whole room, shown to every member.
//!
//! ```text
//! gh   = SHA-256("sotto v2 group" || room || count || key_1 || ... || key_n)
//!        (each field length-prefixed; keys are the members' identity public keys, sorted)
//! code = SHA-256("sotto safety code" || gh), first 8 bytes, as 8 decimal digits
//! ```
//! Each key is authenticated pairwise by a handshake, so members who see the same code saw the
//! same room and the same roster: a server that shows someone a different roster, or sits in
//! the middle of a pair (which swaps that pair's identity key), makes the codes differ.

use ring::digest;

use super::identity::IdentityKey;
use super::transcript::SafetyCode;
use super::wire::MAX_CALL_ID_LEN;

/// Members a group code covers at most (one per slot).
pub const MAX_GROUP_MEMBERS: usize = 128;

/// Why a group code could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupCodeError {
    /// No members.
    #[error("a group code needs at least one member")]
    Empty,
    /// More members than slots.
    #[error("{0} members, at most {MAX_GROUP_MEMBERS}")]
    TooManyMembers(usize),
    /// The same identity key appears twice.
    #[error("identity key {0} appears twice in the roster")]
    Duplicate(String),
    /// The room name is longer than a call id may be.
    #[error("room name of {0} bytes is too long")]
    RoomTooLong(usize),
}

fn field(ctx: &mut digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u32).to_be_bytes());
    ctx.update(bytes);
}

/// The group safety code of `room` with the members whose identity keys are `members`
/// (ourselves included), in any order; duplicates are refused.
pub fn group_safety_code(
    room: &str,
    members: &[IdentityKey],
) -> Result<SafetyCode, GroupCodeError> {
    if room.len() > MAX_CALL_ID_LEN {
        return Err(GroupCodeError::RoomTooLong(room.len()));
    }
    if members.is_empty() {
        return Err(GroupCodeError::Empty);
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(GroupCodeError::TooManyMembers(members.len()));
    }
    let mut keys: Vec<&[u8; 32]> = members.iter().map(IdentityKey::as_bytes).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(GroupCodeError::Duplicate(
            IdentityKey::from_bytes(*pair[0]).fingerprint(),
        ));
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    field(&mut ctx, b"sotto v2 group");
    field(&mut ctx, room.as_bytes());
    field(&mut ctx, &(keys.len() as u32).to_be_bytes());
    for key in keys {
        field(&mut ctx, key);
    }
    let mut gh = [0u8; 32];
    gh.copy_from_slice(ctx.finish().as_ref());
    Ok(SafetyCode::from_transcript(&gh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> IdentityKey {
        IdentityKey::from_bytes([n; 32])
    }

    #[test]
    fn every_member_computes_the_same_code_in_any_order() {
        let roster = [key(1), key(2), key(3), key(4)];
        let code = group_safety_code("standup", &roster).unwrap();
        // Each member lists itself first, then the others as it learned them.
        for me in 0..roster.len() {
            let mut view = vec![roster[me]];
            view.extend(roster.iter().rev().filter(|k| **k != roster[me]).copied());
            assert_eq!(group_safety_code("standup", &view).unwrap(), code);
        }
        let shown = code.as_str();
        assert_eq!(shown.len(), 9);
        assert_eq!(shown.as_bytes()[4], b' ');
        assert!(
            shown
                .chars()
                .filter(|c| *c != ' ')
                .all(|c| c.is_ascii_digit())
        );
    }

    #[test]
    fn a_different_roster_or_room_gives_a_different_code() {
        let roster = [key(1), key(2), key(3)];
        let code = group_safety_code("standup", &roster).unwrap();
        // A server that shows one member a fourth member, drops one, or substitutes a key
        // (a man in the middle of one pair).
        let more = [key(1), key(2), key(3), key(9)];
        let fewer = [key(1), key(2)];
        let swapped = [key(1), key(2), key(7)];
        for other in [&more[..], &fewer[..], &swapped[..]] {
            assert_ne!(group_safety_code("standup", other).unwrap(), code);
        }
        assert_ne!(group_safety_code("standup2", &roster).unwrap(), code);
        assert_ne!(group_safety_code("", &roster).unwrap(), code);
    }

    #[test]
    fn bad_rosters_are_refused() {
        assert_eq!(group_safety_code("r", &[]), Err(GroupCodeError::Empty));
        assert!(matches!(
            group_safety_code("r", &[key(1), key(2), key(1)]),
            Err(GroupCodeError::Duplicate(_))
        ));
        let many: Vec<IdentityKey> = (0..=MAX_GROUP_MEMBERS)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&(i as u64).to_be_bytes());
                IdentityKey::from_bytes(b)
            })
            .collect();
        assert_eq!(
            group_safety_code("r", &many),
            Err(GroupCodeError::TooManyMembers(MAX_GROUP_MEMBERS + 1))
        );
        assert!(group_safety_code("r", &many[..MAX_GROUP_MEMBERS]).is_ok());
        let long = "x".repeat(MAX_CALL_ID_LEN + 1);
        assert_eq!(
            group_safety_code(&long, &[key(1)]),
            Err(GroupCodeError::RoomTooLong(MAX_CALL_ID_LEN + 1))
        );
    }
}
