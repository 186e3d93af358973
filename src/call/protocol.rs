//! The call protocol's messages (`docs/call-protocol.md`): what peers send each other through
//! the signaling server, and what travels (sealed) on the control channel. Parsing is
//! Sans-I/O, bounded and never panics.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::handshake::MAX_MESSAGE_LEN;
use crate::messages::ChatWire;
use crate::transport::MAX_CONTROL_MESSAGE;

/// Largest SDP accepted from the peer, in bytes (well under the server's message limit).
pub const MAX_SDP_LEN: usize = 32 * 1024;

/// A signaling payload of the call protocol, as sent.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutgoingSignal<'a> {
    /// One handshake message, embedded as the JSON object it is.
    Handshake {
        /// The handshake message.
        message: &'a RawValue,
    },
    /// The initiator's SDP offer.
    Offer {
        /// Complete SDP text.
        sdp: &'a str,
    },
    /// The responder's SDP answer.
    Answer {
        /// Complete SDP text.
        sdp: &'a str,
    },
    /// The responder answers ICE-restart offers (sent once, after its first answer).
    #[serde(rename = "can_restart")]
    CanRestart,
    /// A control frame sealed under the pair's control key, hex: how the members of a group
    /// call talk pairwise (key bundles, acks, mute, hang-up) without a data channel.
    Control {
        /// The sealed frame, lowercase hex.
        frame: &'a str,
    },
}

/// A signaling payload of the call protocol, as received.
#[derive(Debug, PartialEq, Eq)]
pub enum IncomingSignal {
    /// A handshake message (raw JSON bytes for the handshake machine).
    Handshake(Vec<u8>),
    /// An SDP offer.
    Offer(String),
    /// An SDP answer.
    Answer(String),
    /// The peer answers ICE-restart offers.
    CanRestart,
    /// A sealed control frame (group calls), still sealed.
    Control(Vec<u8>),
}

/// Why a signaling payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not a JSON object of a known kind with the right fields.
    #[error("malformed call payload: {0}")]
    Malformed(String),
    /// A field is over its size limit.
    #[error("call payload field too large: {0}")]
    TooLarge(&'static str),
}

/// The payload as it parses: a flat struct, because serde's tagged enums cannot carry a raw
/// JSON value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    kind: &'a str,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    sdp: Option<String>,
    #[serde(default)]
    frame: Option<&'a str>,
}

/// Parses a relayed `data` payload.
pub fn parse_signal(data: &str) -> Result<IncomingSignal, PayloadError> {
    if data.len() > MAX_SDP_LEN + 1024 {
        return Err(PayloadError::TooLarge("payload"));
    }
    let wire: Wire<'_> =
        serde_json::from_str(data).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let malformed = |what: &str| PayloadError::Malformed(what.to_string());
    if wire.kind == "control" {
        return match (wire.frame, wire.message, wire.sdp) {
            (Some(frame), None, None) if frame.len() > 2 * MAX_CONTROL_MESSAGE => {
                Err(PayloadError::TooLarge("control frame"))
            }
            (Some(frame), None, None) => hex::decode(frame)
                .map(IncomingSignal::Control)
                .map_err(|_| malformed("control frame is not hex")),
            _ => Err(malformed("wrong fields for its kind")),
        };
    }
    if wire.frame.is_some() {
        return Err(malformed("wrong fields for its kind"));
    }
    match (wire.kind, wire.message, wire.sdp) {
        ("handshake", Some(message), None) => {
            let bytes = message.get().as_bytes();
            if bytes.len() > MAX_MESSAGE_LEN {
                return Err(PayloadError::TooLarge("handshake message"));
            }
            Ok(IncomingSignal::Handshake(bytes.to_vec()))
        }
        ("offer" | "answer", None, Some(sdp)) if sdp.len() > MAX_SDP_LEN => {
            Err(PayloadError::TooLarge("sdp"))
        }
        ("offer", None, Some(sdp)) => Ok(IncomingSignal::Offer(sdp)),
        ("answer", None, Some(sdp)) => Ok(IncomingSignal::Answer(sdp)),
        ("can_restart", None, None) => Ok(IncomingSignal::CanRestart),
        ("handshake" | "offer" | "answer" | "can_restart", _, _) => {
            Err(malformed("wrong fields for its kind"))
        }
        _ => Err(malformed("unknown kind")),
    }
}

/// A control message (plaintext inside a sealed control-channel frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ControlMessage {
    /// The sender muted or unmuted its microphone.
    Mute {
        /// Muted now.
        muted: bool,
    },
    /// The sender ends the call.
    Hangup,
    /// Asks for a `Pong` with the same id (round-trip time).
    Ping {
        /// Echoed back.
        id: u64,
    },
    /// Answers a `Ping`.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// Group calls: a key bundle for the recipient (`docs/call-protocol.md`, "Group keys"),
    /// hex. Holds a secret: wiped once used.
    #[serde(rename = "group_key")]
    GroupKey {
        /// The bundle body, lowercase hex.
        body: String,
    },
    /// Group calls: the acknowledgement of a key bundle, hex.
    #[serde(rename = "group_ack")]
    GroupAck {
        /// The ack body, lowercase hex.
        body: String,
    },
    /// A text message, its acknowledgement, or a timer change (`message`, `delivered`,
    /// `timer`: the chat item carries its own `type`).
    #[serde(untagged)]
    Chat(ChatWire),
}

/// The `type`s of chat items: a plaintext of one of these that does not parse is a
/// malformed message (refused and counted), not an unknown type to ignore.
const CHAT_TYPES: [&str; 3] = ["message", "delivered", "timer"];

impl ControlMessage {
    /// The JSON text that gets sealed.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses decrypted control plaintext; `None` for unknown or malformed messages, which
    /// the protocol says to ignore.
    pub fn parse(plaintext: &[u8]) -> Option<Self> {
        serde_json::from_slice(plaintext).ok()
    }

    /// Whether `plaintext` claims to be a chat item (by its `type`), parsed or not.
    pub fn claims_chat(plaintext: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Type<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        serde_json::from_slice::<Type<'_>>(plaintext)
            .is_ok_and(|t| CHAT_TYPES.contains(&t.kind.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_payloads_round_trip() {
        let msg = RawValue::from_string(r#"{"type":"hello","v":1}"#.into()).unwrap();
        let out = serde_json::to_string(&OutgoingSignal::Handshake { message: &msg }).unwrap();
        assert_eq!(
            out,
            r#"{"kind":"handshake","message":{"type":"hello","v":1}}"#
        );
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::Handshake(br#"{"type":"hello","v":1}"#.to_vec())
        );
        let out = serde_json::to_string(&OutgoingSignal::Offer { sdp: "v=0\r\n" }).unwrap();
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::Offer("v=0\r\n".into())
        );
        let out = serde_json::to_string(&OutgoingSignal::Answer { sdp: "v=0" }).unwrap();
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::Answer("v=0".into())
        );
        let out = serde_json::to_string(&OutgoingSignal::CanRestart).unwrap();
        assert_eq!(out, r#"{"kind":"can_restart"}"#);
        assert_eq!(parse_signal(&out).unwrap(), IncomingSignal::CanRestart);
        assert!(parse_signal(r#"{"kind":"can_restart","sdp":"x"}"#).is_err());
        let out = serde_json::to_string(&OutgoingSignal::Control { frame: "00ff" }).unwrap();
        assert_eq!(out, r#"{"kind":"control","frame":"00ff"}"#);
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::Control(vec![0, 0xff])
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        for bad in [
            "",
            "null",
            "[]",
            r#"{"kind":"offer"}"#,
            r#"{"kind":"offer","sdp":5}"#,
            r#"{"kind":"bye"}"#,
            r#"{"kind":"answer","sdp":"x","extra":1}"#,
            r#"{"sdp":"x"}"#,
            r#"{"kind":"control"}"#,
            r#"{"kind":"control","frame":"xyz"}"#,
            r#"{"kind":"control","frame":"00","sdp":"x"}"#,
            r#"{"kind":"offer","sdp":"x","frame":"00"}"#,
        ] {
            assert!(
                matches!(parse_signal(bad), Err(PayloadError::Malformed(_))),
                "{bad}"
            );
        }
        let huge = format!(
            r#"{{"kind":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_SDP_LEN + 1)
        );
        assert_eq!(parse_signal(&huge), Err(PayloadError::TooLarge("sdp")));
        let big_hs = format!(
            r#"{{"kind":"handshake","message":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_MESSAGE_LEN)
        );
        assert_eq!(
            parse_signal(&big_hs),
            Err(PayloadError::TooLarge("handshake message"))
        );
    }

    #[test]
    fn control_messages_match_the_protocol_text() {
        assert_eq!(
            ControlMessage::Mute { muted: true }.to_json(),
            br#"{"type":"mute","muted":true}"#
        );
        assert_eq!(ControlMessage::Hangup.to_json(), br#"{"type":"hangup"}"#);
        assert_eq!(
            ControlMessage::parse(br#"{"type":"ping","id":7}"#),
            Some(ControlMessage::Ping { id: 7 })
        );
        assert_eq!(ControlMessage::parse(br#"{"type":"dance"}"#), None);
        assert_eq!(ControlMessage::parse(b"\xff\x00"), None);
        let id = "ab".repeat(16);
        let chat = format!(
            r#"{{"type":"message","id":"{id}","seq":3,"from":"bob","text":"hi","ttl_s":30}}"#
        );
        let parsed = ControlMessage::parse(chat.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            ControlMessage::Chat(ChatWire::Message {
                id: id.clone(),
                seq: 3,
                from: "bob".into(),
                text: "hi".into(),
                ttl_s: Some(30)
            })
        );
        assert_eq!(parsed.to_json(), chat.as_bytes());
        let ack = format!(r#"{{"type":"delivered","id":"{id}"}}"#);
        assert_eq!(
            ControlMessage::parse(ack.as_bytes()).unwrap().to_json(),
            ack.as_bytes()
        );
        // A chat item with a wrong field type is malformed, not unknown.
        let bad = br#"{"type":"message","id":"x","seq":1,"from":"bob","text":5}"#;
        assert_eq!(ControlMessage::parse(bad), None);
        assert!(ControlMessage::claims_chat(bad));
        assert!(!ControlMessage::claims_chat(br#"{"type":"dance"}"#));
        assert!(!ControlMessage::claims_chat(br#"{"type":"ping","id":1}"#));
    }
}
