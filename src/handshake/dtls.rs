//! The DTLS certificate fingerprint each side signs in the handshake, and the check that the
//! peer's SDP carries exactly that fingerprint. This binds the WebRTC transport to the peer's
//! identity key: a server that rewrites SDP to sit in the DTLS path is caught.

use super::HandshakeError;

/// Longest `dtls` field accepted, in bytes.
pub const MAX_DTLS_LEN: usize = 160;

/// A SHA-256 DTLS certificate fingerprint in normal form: `sha-256 AB:CD:…` (32 upper-case hex
/// bytes joined by colons), as SDP's `a=fingerprint:` carries it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DtlsFingerprint([u8; 32]);

impl DtlsFingerprint {
    /// The fingerprint of `digest`, a certificate's SHA-256.
    pub const fn from_sha256(digest: [u8; 32]) -> Self {
        DtlsFingerprint(digest)
    }

    /// Parses `<hash function> <hex bytes joined by colons>`, in any letter case. Only
    /// `sha-256` is accepted: weaker hashes would let an attacker find a second certificate.
    pub fn parse(text: &str) -> Result<Self, HandshakeError> {
        let bad = |why: &str| HandshakeError::Malformed(format!("dtls fingerprint: {why}"));
        if text.len() > MAX_DTLS_LEN {
            return Err(bad("too long"));
        }
        let (function, value) = text.trim().split_once(' ').ok_or_else(|| bad("no value"))?;
        if !function.eq_ignore_ascii_case("sha-256") {
            return Err(bad("only sha-256 is accepted"));
        }
        let mut out = [0u8; 32];
        let mut parts = value.trim().split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| bad("too short"))?;
            // Exactly two hex digits (from_str_radix alone would take a sign, "+A").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("each byte is two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not hex"))?;
        }
        if parts.next().is_some() {
            return Err(bad("too long"));
        }
        Ok(DtlsFingerprint(out))
    }

    /// Every `a=fingerprint:` value in `sdp` (session and media level), in order.
    pub fn all_in_sdp(sdp: &str) -> Result<Vec<Self>, HandshakeError> {
        sdp.lines()
            .filter_map(|line| line.trim_end_matches('\r').strip_prefix("a=fingerprint:"))
            .map(DtlsFingerprint::parse)
            .collect()
    }

    /// Checks that `sdp` carries at least one fingerprint and that every one is `self` (the
    /// fingerprint the peer signed in the handshake).
    pub fn check_sdp(&self, sdp: &str) -> Result<(), HandshakeError> {
        let found = DtlsFingerprint::all_in_sdp(sdp).map_err(|_| HandshakeError::DtlsMismatch)?;
        if found.is_empty() || found.iter().any(|f| f != self) {
            return Err(HandshakeError::DtlsMismatch);
        }
        Ok(())
    }

    /// The raw SHA-256 digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for DtlsFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha-256 ")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for DtlsFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DtlsFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DtlsFingerprint {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        DtlsFingerprint::from_sha256(d)
    }

    #[test]
    fn normal_form_round_trips_in_any_case() {
        let f = sample();
        let text = f.to_string();
        assert!(text.starts_with("sha-256 A5:"), "{text}");
        assert_eq!(text.len(), 8 + 32 * 3 - 1);
        assert_eq!(DtlsFingerprint::parse(&text).unwrap(), f);
        assert_eq!(DtlsFingerprint::parse(&text.to_lowercase()).unwrap(), f);
        assert_eq!(
            DtlsFingerprint::parse(&text.replace("sha-256", "SHA-256")).unwrap(),
            f
        );
    }

    #[test]
    fn refuses_other_hashes_and_bad_forms() {
        let text = sample().to_string();
        for bad in [
            text.replace("sha-256", "sha-1"),
            text[..text.len() - 3].to_string(),
            format!("{text}:00"),
            text.replace(':', ""),
            text.replacen("A5", "G5", 1),
            text.replacen("A5", "+A", 1),
            "sha-256".to_string(),
            String::new(),
            "x".repeat(MAX_DTLS_LEN + 1),
        ] {
            assert!(DtlsFingerprint::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sdp_must_carry_exactly_the_signed_fingerprint() {
        let f = sample();
        let other = DtlsFingerprint::from_sha256([7; 32]);
        let sdp = |fps: &[&DtlsFingerprint]| {
            let mut s = String::from("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n");
            for fp in fps {
                s.push_str(&format!(
                    "a=fingerprint:{}\r\n",
                    fp.to_string().to_lowercase()
                ));
            }
            s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
            s
        };
        assert!(f.check_sdp(&sdp(&[&f])).is_ok());
        assert!(f.check_sdp(&sdp(&[&f, &f])).is_ok());
        assert!(matches!(
            f.check_sdp(&sdp(&[&other])),
            Err(HandshakeError::DtlsMismatch)
        ));
        assert!(f.check_sdp(&sdp(&[&f, &other])).is_err());
        assert!(f.check_sdp(&sdp(&[])).is_err());
        assert!(f.check_sdp("a=fingerprint:sha-1 00:11\r\n").is_err());
    }
}
