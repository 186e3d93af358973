//! Join tokens: HMAC-SHA256 over room, user and expiry, minted by `sotto-signaling token` or
//! an application's backend with the server's secret.
//!
//! Format: `v1.<expiry, unix seconds>.<hex HMAC>`, with exactly one accepted spelling: the
//! expiry in decimal without leading zeros or sign, the MAC as 64 lower-case hex digits. So a
//! token string names one grant, and "this token is in use" cannot be dodged by re-spelling it.
//! The MAC covers
//! `"sotto-signaling token v1" || len(room) || room || len(user) || user || expiry` (lengths as
//! 4-byte big endian, expiry as 8-byte big endian).

use ring::hmac;
use thiserror::Error;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of the form `v1.<expiry>.<hex>`.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not verify for this room and user under the server's secret.
    #[error("token signature does not verify for this room and user")]
    BadSignature,
    /// The token is genuine but its expiry has passed.
    #[error("token expired")]
    Expired,
}

fn mac_input(room: &str, user: &str, expiry: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + room.len() + user.len());
    m.extend_from_slice(b"sotto-signaling token v1");
    for field in [room.as_bytes(), user.as_bytes()] {
        m.extend_from_slice(&(field.len() as u32).to_be_bytes());
        m.extend_from_slice(field);
    }
    m.extend_from_slice(&expiry.to_be_bytes());
    m
}

/// A token for `user` in `room`, valid until `expiry` (unix seconds).
pub fn mint(secret: &[u8], room: &str, user: &str, expiry: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &mac_input(room, user, expiry));
    format!("v1.{expiry}.{}", hex::encode(tag.as_ref()))
}

/// Checks a token in constant time (ring's HMAC verification), then its expiry.
pub fn verify(
    secret: &[u8],
    token: &str,
    room: &str,
    user: &str,
    now: u64,
) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(expiry), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    if !is_canonical_decimal(expiry) || !is_lower_hex(mac, 64) {
        return Err(TokenError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(mac, &mut tag).map_err(|_| TokenError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &mac_input(room, user, expiry), &tag)
        .map_err(|_| TokenError::BadSignature)?;
    if now > expiry {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// Digits only, no leading zero (except `0` itself): how `mint` writes the expiry.
fn is_canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let t = mint(b"secret", "room", "alice", 1000);
        assert_eq!(verify(b"secret", &t, "room", "alice", 999), Ok(()));
        assert_eq!(
            verify(b"secret", &t, "room", "alice", 1001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(b"other", &t, "room", "alice", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"secret", &t, "room2", "alice", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"secret", &t, "room", "bob", 0),
            Err(TokenError::BadSignature)
        );
        // Field boundaries are length-prefixed: ("ab","c") is not ("a","bc").
        let t2 = mint(b"secret", "ab", "c", 1000);
        assert_eq!(
            verify(b"secret", &t2, "a", "bc", 0),
            Err(TokenError::BadSignature)
        );
        let forged_expiry = t.replacen("1000", "9999", 1);
        assert_eq!(
            verify(b"secret", &forged_expiry, "room", "alice", 0),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "v1", "v1.x.00", "v2.1.00", "v1.1.zz", "v1.1.00"] {
            assert_eq!(
                verify(b"secret", bad, "room", "alice", 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_the_canonical_spelling_is_accepted() {
        let t = mint(b"secret", "room", "alice", 1000);
        assert_eq!(verify(b"secret", &t, "room", "alice", 0), Ok(()));
        let mac = t.rsplit('.').next().unwrap();
        assert!(mac.bytes().any(|b| b.is_ascii_alphabetic()), "{t}");
        let variants = [
            format!("v1.01000.{mac}"),
            format!("v1.+1000.{mac}"),
            format!("v1.1000.{}", mac.to_ascii_uppercase()),
            format!("V1.1000.{mac}"),
            format!("v1.1000.{mac}0"),
            format!("v1.1000.{mac}."),
            format!(" v1.1000.{mac}"),
        ];
        for bad in &variants {
            assert_eq!(
                verify(b"secret", bad, "room", "alice", 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let zero = mint(b"secret", "room", "alice", 0);
        assert!(zero.starts_with("v1.0."), "{zero}");
        assert_eq!(verify(b"secret", &zero, "room", "alice", 0), Ok(()));
    }
}
