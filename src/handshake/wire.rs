//! The handshake's JSON wire messages (documented in `docs/handshake.md`).
//!
//! Every message carries `"v": 2` and a `"type"`. Binary fields are lowercase hex of a fixed
//! length. Messages are limited to [`MAX_MESSAGE_LEN`] bytes and checked for size before
//! parsing; unknown fields are refused.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::HandshakeError;
use super::dtls::DtlsFingerprint;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest handshake message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest call id, in bytes.
pub const MAX_CALL_ID_LEN: usize = 256;
/// Longest peer name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Fixed-length binary data carried as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hex<const N: usize>(pub(crate) [u8; N]);

impl<const N: usize> std::fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.as_bytes(), &mut out)
            .map_err(|_| serde::de::Error::custom(format!("expected {} hex digits", 2 * N)))?;
        Ok(Hex(out))
    }
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Message {
    /// Initiator to responder: who I am, and a commitment to my ephemeral key.
    Hello {
        v: u32,
        call_id: String,
        name: String,
        identity: Hex<32>,
        /// The initiator's DTLS certificate fingerprint, as its SDP carries it.
        dtls: String,
        commitment: Hex<32>,
    },
    /// Responder to initiator: who I am, and my ephemeral key.
    Reply {
        v: u32,
        name: String,
        identity: Hex<32>,
        /// The responder's DTLS certificate fingerprint.
        dtls: String,
        ephemeral: Hex<32>,
    },
    /// Initiator to responder: my ephemeral key, signature over the transcript, and proof that
    /// I derived the keys.
    Reveal {
        v: u32,
        ephemeral: Hex<32>,
        signature: Hex<64>,
        confirm: Hex<32>,
    },
    /// Responder to initiator: my signature over the transcript and key confirmation.
    Confirm {
        v: u32,
        signature: Hex<64>,
        confirm: Hex<32>,
    },
}

impl Message {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Reply { .. } => "reply",
            Message::Reveal { .. } => "reveal",
            Message::Confirm { .. } => "confirm",
        }
    }

    fn version(&self) -> u32 {
        match self {
            Message::Hello { v, .. }
            | Message::Reply { v, .. }
            | Message::Reveal { v, .. }
            | Message::Confirm { v, .. } => *v,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an untrusted message: size first, then the version, then the fields.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::MessageTooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        #[derive(Deserialize)]
        struct Envelope {
            v: u32,
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        if envelope.v != PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion {
                got: envelope.v,
                supported: PROTOCOL_VERSION,
            });
        }
        let msg: Message =
            serde_json::from_slice(bytes).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        debug_assert_eq!(msg.version(), PROTOCOL_VERSION);
        match &msg {
            Message::Hello {
                call_id,
                name,
                dtls,
                ..
            } => {
                check_text("call_id", call_id, MAX_CALL_ID_LEN)?;
                check_text("name", name, MAX_NAME_LEN)?;
                DtlsFingerprint::parse(dtls)?;
            }
            Message::Reply { name, dtls, .. } => {
                check_text("name", name, MAX_NAME_LEN)?;
                DtlsFingerprint::parse(dtls)?;
            }
            _ => {}
        }
        Ok(msg)
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), HandshakeError> {
    if value.len() > max {
        return Err(HandshakeError::Malformed(format!(
            "{field} is {} bytes, limit {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(HandshakeError::Malformed(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_shape() {
        let m = Message::Reply {
            v: PROTOCOL_VERSION,
            name: "bob".into(),
            identity: Hex([1; 32]),
            dtls: DtlsFingerprint::from_sha256([3; 32]).to_string(),
            ephemeral: Hex([2; 32]),
        };
        let bytes = m.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"type\":\"reply\""));
        assert!(text.contains("\"v\":2"));
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn rejects_bad_messages() {
        let cases: &[&str] = &[
            "",
            "{",
            "[]",
            r#"{"v":2}"#,
            r#"{"v":2,"type":"nope"}"#,
            r#"{"v":2,"type":"confirm","signature":"00","confirm":"00"}"#,
            r#"{"v":2,"type":"reply","name":"b","identity":"zz","ephemeral":"00"}"#,
        ];
        for c in cases {
            assert!(
                matches!(
                    Message::decode(c.as_bytes()),
                    Err(HandshakeError::Malformed(_))
                ),
                "{c}"
            );
        }
        for old in [1, 3] {
            let msg = format!(r#"{{"v":{old},"type":"hello"}}"#);
            assert!(matches!(
                Message::decode(msg.as_bytes()),
                Err(HandshakeError::UnsupportedVersion { got, .. }) if got == old
            ));
        }
        let big = vec![b' '; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            Message::decode(&big),
            Err(HandshakeError::MessageTooLarge { .. })
        ));
        let extra = format!(
            r#"{{"v":2,"type":"confirm","signature":"{}","confirm":"{}","extra":1}}"#,
            "00".repeat(64),
            "00".repeat(32)
        );
        assert!(Message::decode(extra.as_bytes()).is_err());
        let control = format!(
            r#"{{"v":2,"type":"reply","name":"a\u0007b","identity":"{}","dtls":"{}","ephemeral":"{}"}}"#,
            "00".repeat(32),
            DtlsFingerprint::from_sha256([3; 32]),
            "00".repeat(32)
        );
        assert!(Message::decode(control.as_bytes()).is_err());
        let bad_dtls = format!(
            r#"{{"v":2,"type":"reply","name":"b","identity":"{}","dtls":"sha-1 00:11","ephemeral":"{}"}}"#,
            "00".repeat(32),
            "00".repeat(32)
        );
        assert!(matches!(
            Message::decode(bad_dtls.as_bytes()),
            Err(HandshakeError::Malformed(_))
        ));
    }
}
