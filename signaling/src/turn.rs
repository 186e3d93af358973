//! STUN and TURN servers offered to peers in `welcome`: TURN with time-limited credentials in
//! the TURN REST scheme that coturn's `use-auth-secret` checks (user name `<expiry>:<peer id>`,
//! credential base64(HMAC-SHA1(secret, user name))). The secret never leaves the server; a
//! credential is good for one peer until it expires.

use std::time::Duration;

use base64::Engine;
use sotto::signal::IceServerInfo;

/// How long handed-out TURN credentials stay valid by default: a long call's ICE restarts
/// need them too.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The servers a signaling server offers, and the TURN secret.
#[derive(Clone, Default)]
pub struct IceOffer {
    /// `stun:` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:` URLs (one TURN server, maybe over several transports).
    pub turn_urls: Vec<String>,
    /// The secret coturn was started with (`--static-auth-secret`).
    pub turn_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// How long a credential lasts.
    pub turn_ttl: Duration,
}

impl std::fmt::Debug for IceOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceOffer")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "<set>"))
            .field("turn_ttl", &self.turn_ttl)
            .finish()
    }
}

impl IceOffer {
    /// The servers for `peer_id`, with TURN credentials that expire `turn_ttl` after
    /// `now_unix` (seconds since the epoch).
    pub fn servers_for(&self, peer_id: &str, now_unix: u64) -> Vec<IceServerInfo> {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServerInfo {
                urls: self.stun_urls.clone(),
                username: String::new(),
                credential: String::new(),
            });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let expiry = now_unix.saturating_add(self.turn_ttl.as_secs());
            let username = format!("{expiry}:{peer_id}");
            servers.push(IceServerInfo {
                urls: self.turn_urls.clone(),
                credential: rest_credential(secret, &username),
                username,
            });
        }
        servers
    }
}

/// The TURN REST credential for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_credential(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// Checks a `stun:`/`turn:`/`turns:` URL as an operator typed it: the scheme, a host, and
/// nothing a client would choke on.
pub fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(format!("{url:?}: expected {}:HOST[:PORT]", schemes[0]));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("{url:?}: the scheme must be one of {schemes:?}"));
    }
    let host = rest.split(['?', ':']).next().unwrap_or_default();
    if host.is_empty()
        || rest.len() > 256
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{url:?}: expected {scheme}:HOST[:PORT][?transport=udp|tcp]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // Computed independently: printf '1700000000:p1' | openssl dgst -sha1 -hmac secret
        // -binary | base64
        assert_eq!(
            rest_credential(b"secret", "1700000000:p1"),
            "0eBzZq6Gbz8vtWCnJTCAn+awJQI="
        );
        let offer = IceOffer {
            stun_urls: vec!["stun:203.0.113.10:3478".into()],
            turn_urls: vec!["turn:203.0.113.10:3478?transport=udp".into()],
            turn_secret: Some(zeroize::Zeroizing::new(b"secret".to_vec())),
            turn_ttl: Duration::from_secs(3600),
        };
        let servers = offer.servers_for("p1", 1_700_000_000);
        assert_eq!(servers.len(), 2);
        assert!(servers[0].username.is_empty());
        assert_eq!(servers[1].username, "1700003600:p1");
        assert_eq!(
            servers[1].credential,
            rest_credential(b"secret", "1700003600:p1")
        );
        // No secret: no TURN at all (a TURN URL without credentials is no use).
        let stun_only = IceOffer {
            turn_secret: None,
            ..offer
        };
        assert_eq!(stun_only.servers_for("p1", 0).len(), 1);
    }

    #[test]
    fn urls_are_checked() {
        assert!(
            check_url(
                "turn:turn.example.org:3478?transport=tcp",
                &["turn", "turns"]
            )
            .is_ok()
        );
        assert!(check_url("stun:1.2.3.4", &["stun"]).is_ok());
        assert!(check_url("http://x", &["turn"]).is_err());
        assert!(check_url("turn:", &["turn"]).is_err());
        assert!(check_url("turn:a b", &["turn"]).is_err());
    }
}
