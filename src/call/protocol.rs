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

/// Largest trickled candidate accepted (`candidate:...`), in bytes.
pub const MAX_CANDIDATE_LEN: usize = 512;
/// Longest ICE user fragment (RFC 8839: 4 to 256 characters).
pub const MAX_UFRAG_LEN: usize = 256;
/// Shortest ICE user fragment.
pub const MIN_UFRAG_LEN: usize = 4;
/// Longest media id (`sdp_mid`) accepted.
pub const MAX_MID_LEN: usize = 32;

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
    /// The sender trickles ICE: it sends candidates as it gathers them and takes the peer's.
    /// Sent once, before its first offer or answer.
    Trickle,
    /// One ICE candidate of the sender's (trickle ICE).
    Candidate {
        /// `candidate:...` (RFC 8839 without the `a=`).
        candidate: &'a str,
        /// The media id of the m-line it belongs to (the first: everything is bundled).
        sdp_mid: &'a str,
        /// That m-line's index.
        sdp_mline_index: u16,
        /// The ICE user fragment of the description it belongs to (its ICE generation).
        ufrag: &'a str,
    },
    /// The sender's gathering for this ICE generation is over.
    #[serde(rename = "end_of_candidates")]
    EndOfCandidates {
        /// The ICE user fragment of that generation.
        ufrag: &'a str,
    },
}

/// An ICE candidate from the peer (trickle ICE), checked for size and form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCandidate {
    /// `candidate:...`: printable ASCII, at most [`MAX_CANDIDATE_LEN`] bytes.
    pub candidate: String,
    /// The ICE user fragment of the peer's description it belongs to.
    pub ufrag: String,
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
    /// The peer trickles ICE.
    Trickle,
    /// One of the peer's ICE candidates.
    Candidate(RemoteCandidate),
    /// The peer's gathering for the ICE generation of this user fragment is over.
    EndOfCandidates(String),
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
    #[serde(default)]
    candidate: Option<String>,
    #[serde(default)]
    sdp_mid: Option<String>,
    #[serde(default)]
    sdp_mline_index: Option<u16>,
    #[serde(default)]
    ufrag: Option<String>,
}

/// Whether `ufrag` is an ICE user fragment: 4 to 256 `ice-char`s (RFC 8839).
fn is_ufrag(ufrag: &str) -> bool {
    (MIN_UFRAG_LEN..=MAX_UFRAG_LEN).contains(&ufrag.len())
        && ufrag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The trickle kinds (`trickle`, `candidate`, `end_of_candidates`), checked.
fn parse_trickle(wire: Wire<'_>) -> Result<IncomingSignal, PayloadError> {
    let malformed = |what: &str| PayloadError::Malformed(what.to_string());
    if wire.message.is_some() || wire.sdp.is_some() || wire.frame.is_some() {
        return Err(malformed("wrong fields for its kind"));
    }
    let ufrag = match wire.ufrag {
        Some(u) if u.len() > MAX_UFRAG_LEN => return Err(PayloadError::TooLarge("ufrag")),
        Some(u) if !is_ufrag(&u) => return Err(malformed("ufrag is not an ICE user fragment")),
        u => u,
    };
    match (wire.kind, wire.candidate, ufrag) {
        ("trickle", None, None) if wire.sdp_mid.is_none() && wire.sdp_mline_index.is_none() => {
            Ok(IncomingSignal::Trickle)
        }
        ("end_of_candidates", None, Some(ufrag))
            if wire.sdp_mid.is_none() && wire.sdp_mline_index.is_none() =>
        {
            Ok(IncomingSignal::EndOfCandidates(ufrag))
        }
        ("candidate", Some(candidate), Some(ufrag)) => {
            if candidate.len() > MAX_CANDIDATE_LEN {
                return Err(PayloadError::TooLarge("candidate"));
            }
            if wire.sdp_mid.as_ref().is_some_and(|m| m.len() > MAX_MID_LEN) {
                return Err(PayloadError::TooLarge("sdp_mid"));
            }
            // Printable ASCII only: no line breaks or control characters into anything that
            // parses or logs it.
            let printable = candidate.bytes().all(|b| (0x20..0x7f).contains(&b));
            let value = candidate.strip_prefix("candidate:").unwrap_or_default();
            if !printable || value.trim().is_empty() {
                return Err(malformed("not a candidate"));
            }
            Ok(IncomingSignal::Candidate(RemoteCandidate {
                candidate,
                ufrag,
            }))
        }
        _ => Err(malformed("wrong fields for its kind")),
    }
}

/// Parses a relayed `data` payload.
pub fn parse_signal(data: &str) -> Result<IncomingSignal, PayloadError> {
    if data.len() > MAX_SDP_LEN + 1024 {
        return Err(PayloadError::TooLarge("payload"));
    }
    let wire: Wire<'_> =
        serde_json::from_str(data).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let malformed = |what: &str| PayloadError::Malformed(what.to_string());
    if matches!(wire.kind, "trickle" | "candidate" | "end_of_candidates") {
        return parse_trickle(wire);
    }
    if wire.candidate.is_some()
        || wire.sdp_mid.is_some()
        || wire.sdp_mline_index.is_some()
        || wire.ufrag.is_some()
    {
        return Err(malformed("wrong fields for its kind"));
    }
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
    /// Two-party calls: the sender's signaling connection was made anew and it is in the room
    /// again under this peer id; signals for it go there from now on. Sent sealed, so the
    /// server can neither forge nor redirect it.
    Rejoined {
        /// The sender's new peer id in the room.
        peer_id: String,
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

/// Longest peer id a `rejoined` message may carry (the server's are 17 characters).
const MAX_PEER_ID_LEN: usize = 64;

/// Whether `id` can be a peer id the server gave (ASCII letters and digits, bounded): a
/// `rejoined` message with anything else is ignored. `sfu` is the SFU's, never a peer's.
pub(crate) fn is_peer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PEER_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && id != "sfu"
}

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
    fn trickle_payloads_round_trip() {
        let out = serde_json::to_string(&OutgoingSignal::Trickle).unwrap();
        assert_eq!(out, r#"{"kind":"trickle"}"#);
        assert_eq!(parse_signal(&out).unwrap(), IncomingSignal::Trickle);
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
        let out = serde_json::to_string(&OutgoingSignal::Candidate {
            candidate: line,
            sdp_mid: "0",
            sdp_mline_index: 0,
            ufrag: "AbCd+/09",
        })
        .unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"kind":"candidate","candidate":"{line}","sdp_mid":"0","sdp_mline_index":0,"ufrag":"AbCd+/09"}}"#
            )
        );
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::Candidate(RemoteCandidate {
                candidate: line.into(),
                ufrag: "AbCd+/09".into()
            })
        );
        // What a browser sends: sdp_mid and sdp_mline_index are optional.
        assert!(matches!(
            parse_signal(&format!(
                r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcd"}}"#
            )),
            Ok(IncomingSignal::Candidate(_))
        ));
        let out =
            serde_json::to_string(&OutgoingSignal::EndOfCandidates { ufrag: "wxyz" }).unwrap();
        assert_eq!(out, r#"{"kind":"end_of_candidates","ufrag":"wxyz"}"#);
        assert_eq!(
            parse_signal(&out).unwrap(),
            IncomingSignal::EndOfCandidates("wxyz".into())
        );
    }

    #[test]
    fn bad_trickle_payloads_are_refused() {
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
        for bad in [
            r#"{"kind":"trickle","ufrag":"abcd"}"#.to_string(),
            r#"{"kind":"trickle","sdp":"x"}"#.to_string(),
            r#"{"kind":"end_of_candidates"}"#.to_string(),
            r#"{"kind":"end_of_candidates","ufrag":"abcd","candidate":"candidate:1"}"#.to_string(),
            // No ufrag, a short one, one with characters ICE does not allow.
            format!(r#"{{"kind":"candidate","candidate":"{line}"}}"#),
            format!(r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abc"}}"#),
            format!(r#"{{"kind":"candidate","candidate":"{line}","ufrag":"ab cd"}}"#),
            format!(r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcdé"}}"#),
            // Not a candidate, an empty one, a line break or control character in it.
            r#"{"kind":"candidate","candidate":"a=candidate:1","ufrag":"abcd"}"#.to_string(),
            r#"{"kind":"candidate","candidate":"candidate: ","ufrag":"abcd"}"#.to_string(),
            r#"{"kind":"candidate","candidate":"","ufrag":"abcd"}"#.to_string(),
            format!(
                r#"{{"kind":"candidate","candidate":"{line}
a=x","ufrag":"abcd"}}"#
            ),
            format!(r#"{{"kind":"candidate","candidate":"{line}[2J","ufrag":"abcd"}}"#),
            r#"{"kind":"candidate","candidate":5,"ufrag":"abcd"}"#.to_string(),
            format!(r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcd","sdp":"x"}}"#),
            format!(
                r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcd","sdp_mline_index":70000}}"#
            ),
            format!(r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcd","x":1}}"#),
            // Trickle fields on other kinds.
            r#"{"kind":"offer","sdp":"v=0","ufrag":"abcd"}"#.to_string(),
            r#"{"kind":"answer","sdp":"v=0","candidate":"candidate:1"}"#.to_string(),
            r#"{"kind":"control","frame":"00","sdp_mid":"0"}"#.to_string(),
        ] {
            assert!(
                matches!(parse_signal(&bad), Err(PayloadError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!("candidate:{}", "1".repeat(MAX_CANDIDATE_LEN));
        assert_eq!(
            parse_signal(&format!(
                r#"{{"kind":"candidate","candidate":"{long}","ufrag":"abcd"}}"#
            )),
            Err(PayloadError::TooLarge("candidate"))
        );
        let ufrag = "a".repeat(MAX_UFRAG_LEN + 1);
        assert_eq!(
            parse_signal(&format!(
                r#"{{"kind":"candidate","candidate":"{line}","ufrag":"{ufrag}"}}"#
            )),
            Err(PayloadError::TooLarge("ufrag"))
        );
        let mid = "m".repeat(MAX_MID_LEN + 1);
        assert_eq!(
            parse_signal(&format!(
                r#"{{"kind":"candidate","candidate":"{line}","ufrag":"abcd","sdp_mid":"{mid}"}}"#
            )),
            Err(PayloadError::TooLarge("sdp_mid"))
        );
        // The longest of each is fine.
        let ufrag = "a".repeat(MAX_UFRAG_LEN);
        let long = format!("candidate:{}", "1".repeat(MAX_CANDIDATE_LEN - 10));
        assert!(matches!(
            parse_signal(&format!(
                r#"{{"kind":"candidate","candidate":"{long}","ufrag":"{ufrag}"}}"#
            )),
            Ok(IncomingSignal::Candidate(_))
        ));
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
        let rejoined = ControlMessage::Rejoined {
            peer_id: "p0123456789abcdef".into(),
        };
        assert_eq!(
            rejoined.to_json(),
            br#"{"type":"rejoined","peer_id":"p0123456789abcdef"}"#
        );
        assert_eq!(ControlMessage::parse(&rejoined.to_json()), Some(rejoined));
        assert!(is_peer_id("p0123456789abcdef"));
        for bad in ["", "sfu", "p 1", "p\u{0}", &"p".repeat(65)] {
            assert!(!is_peer_id(bad), "{bad:?}");
        }
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
