//! The signaling wire protocol, version 1 (documented in `signaling/PROTOCOL.md`).
//!
//! JSON text messages over a WebSocket. Every message has `"v": 1` and a `"type"`. The server
//! relays `data` of `signal` messages without reading it: SDP, ICE candidates and handshake
//! messages are opaque to it, and it never holds a media key.
//!
//! ```
//! use sotto::signal::protocol::{ClientMessage, ServerMessage, parse_client_message};
//! use sotto::signal::ErrorCode;
//!
//! let join = parse_client_message(r#"{"v":1,"type":"join","room":"standup","name":"alice"}"#);
//! assert!(matches!(join, Ok(ClientMessage::Join { .. })));
//! let refused = parse_client_message(r#"{"v":1,"type":"join","room":"standup"}"#);
//! assert_eq!(refused.unwrap_err().code, ErrorCode::BadMessage);
//! let welcome = ServerMessage::parse(r#"{"v":1,"type":"welcome","peer_id":"p1","room":"standup","peers":[]}"#);
//! assert!(matches!(welcome, Ok(ServerMessage::Welcome { .. })));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// The `to`/`from` of signals to and from the server's SFU (peer ids start with `p`, so no
/// peer has it).
pub const SFU_PEER_ID: &str = "sfu";
/// Longest display name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What a client sends.
///
/// Parsed with [`parse_client_message`] (serde cannot keep `data` raw inside an internally
/// tagged enum, so each type is parsed on its own).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join a room (once per connection).
    Join {
        /// Protocol version.
        v: u32,
        /// Room name.
        room: String,
        /// Display name shown to the other peers.
        name: String,
        /// Join token, required when the server has a secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Whether we are in the room's group call whatever the room holds (`--group`), so
        /// members that are not move to it even while the room holds two (see
        /// [`PeerInfo::group`]). Left out when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        group: bool,
    },
    /// Leave the room (the connection stays open).
    Leave {
        /// Protocol version.
        v: u32,
    },
    /// Relay `data` to one peer (`to`) or to everyone else in the room (no `to`).
    Signal {
        /// Protocol version.
        v: u32,
        /// Recipient peer id; absent for the whole room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Opaque payload (any JSON value).
        data: Box<RawValue>,
    },
    /// Application-level keepalive; answered with `pong`.
    Ping {
        /// Protocol version.
        v: u32,
    },
}

impl ClientMessage {
    /// The message's version field.
    pub fn version(&self) -> u32 {
        match self {
            ClientMessage::Join { v, .. }
            | ClientMessage::Leave { v }
            | ClientMessage::Signal { v, .. }
            | ClientMessage::Ping { v } => *v,
        }
    }
}

/// A peer as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Server-assigned random id (`p` and 16 hex digits), unique in the room.
    pub peer_id: String,
    /// The server's attestation of the peer's name: the name it joined with, checked against
    /// its token when the server has a secret, and not confusable with any other name in the
    /// room. Compare it with the name the peer claims in the handshake.
    pub name: String,
    /// The peer's slot in the room (below [`MAX_SLOTS`], unique among its members), which a
    /// group call puts into the peer's key ids; absent from servers that predate group calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
    /// Whether the peer joined as a group member (`join` with `"group": true`): it is always
    /// in the group call, so a call with it goes through the SFU even while the room holds two.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group: bool,
}

/// Slots a room hands out, so also the most peers a room can hold.
pub const MAX_SLOTS: usize = 128;

/// Most ICE servers a `welcome` may offer.
pub const MAX_ICE_SERVERS: usize = 8;
/// Longest URL, user name or credential of an offered ICE server, in bytes.
pub const MAX_ICE_FIELD: usize = 512;

/// A STUN or TURN server offered in `welcome` (see PROTOCOL.md, "Relay credentials").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServerInfo {
    /// `stun:` or `turn:` URLs of one server.
    pub urls: Vec<String>,
    /// TURN user name (`<expiry>:<peer id>` in the TURN REST scheme); empty for STUN.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// TURN credential; empty for STUN.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

impl IceServerInfo {
    fn within_bounds(&self) -> bool {
        !self.urls.is_empty()
            && self.urls.len() <= 4
            && self.urls.iter().all(|u| u.len() <= MAX_ICE_FIELD)
            && self.username.len() <= MAX_ICE_FIELD
            && self.credential.len() <= MAX_ICE_FIELD
    }
}

/// What the server sends. Parsed with [`ServerMessage::parse`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `join`: our id and who is already in the room.
    Welcome {
        /// Protocol version.
        v: u32,
        /// Our peer id.
        peer_id: String,
        /// Our slot (see [`PeerInfo::slot`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<u8>,
        /// The room joined.
        room: String,
        /// Peers already in the room, oldest first.
        peers: Vec<PeerInfo>,
        /// STUN and TURN servers the server offers (TURN with short-lived credentials); left
        /// out when it offers none.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServerInfo>,
        /// Whether the server has an SFU for group calls (peer id [`SFU_PEER_ID`]); left out
        /// when it has none.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        sfu: bool,
    },
    /// Someone joined our room.
    PeerJoined {
        /// Protocol version.
        v: u32,
        /// The new peer's id.
        peer_id: String,
        /// The new peer's name as the server attests it (see [`PeerInfo::name`]).
        name: String,
        /// The new peer's slot (see [`PeerInfo::slot`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<u8>,
        /// Whether it joined as a group member (see [`PeerInfo::group`]).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        group: bool,
    },
    /// Someone left our room (or disconnected).
    PeerLeft {
        /// Protocol version.
        v: u32,
        /// The peer's id.
        peer_id: String,
    },
    /// Relayed data; `from` is stamped by the server.
    Signal {
        /// Protocol version.
        v: u32,
        /// Sender peer id.
        from: String,
        /// The payload exactly as sent.
        data: Box<RawValue>,
    },
    /// Answer to `ping`.
    Pong {
        /// Protocol version.
        v: u32,
    },
    /// Something was wrong; see `code`.
    Error {
        /// Protocol version.
        v: u32,
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail (never contains payload data).
        message: String,
    },
}

/// Why the server refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not valid JSON.
    BadJson,
    /// A `type` the server does not know.
    UnknownType,
    /// Valid JSON of a known type, but a field is missing, unknown or malformed.
    BadMessage,
    /// A version the server does not speak.
    UnsupportedVersion,
    /// The message exceeds the size limit (the connection is closed).
    TooLarge,
    /// Too many messages; this one was dropped.
    RateLimited,
    /// The room has as many peers as allowed.
    RoomFull,
    /// The server has as many connections as allowed (the connection is closed).
    ServerFull,
    /// A token is required and was missing or did not verify.
    BadToken,
    /// The token has expired.
    TokenExpired,
    /// `signal` or `leave` before `join`.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined,
    /// `to` names no peer in the room.
    UnknownPeer,
    /// No traffic for too long (the connection is closed).
    IdleTimeout,
    /// The connection could not keep up with its messages (it is closed).
    SlowConsumer,
    /// The server is shutting down.
    ShuttingDown,
    /// The connection did not join a room in time (the connection is closed).
    JoinTimeout,
    /// The join token is in use by another open connection.
    TokenInUse,
    /// A peer with this name, or one confusable with it, is already in the room.
    NameTaken,
    /// Too many connections from this address (refused before the WebSocket upgrade).
    TooManyConnections,
    /// A signal to the SFU on a server that has none.
    NoSfu,
    /// The SFU refused the offer (room or server full, or an offer it cannot serve).
    SfuRefused,
    /// The server cannot reach the state it shares with other nodes (`--redis`); try again,
    /// here or at another node (a joined connection is closed after it).
    Unavailable,
}

impl ErrorCode {
    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::BadMessage,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::RoomFull,
        ErrorCode::ServerFull,
        ErrorCode::BadToken,
        ErrorCode::TokenExpired,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::UnknownPeer,
        ErrorCode::IdleTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::ShuttingDown,
        ErrorCode::JoinTimeout,
        ErrorCode::TokenInUse,
        ErrorCode::NameTaken,
        ErrorCode::TooManyConnections,
        ErrorCode::NoSfu,
        ErrorCode::SfuRefused,
        ErrorCode::Unavailable,
    ];

    /// The snake_case name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::JoinTimeout => "join_timeout",
            ErrorCode::TokenInUse => "token_in_use",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NoSfu => "no_sfu",
            ErrorCode::SfuRefused => "sfu_refused",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Why a client message could not be parsed, as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The code to send back.
    pub code: ErrorCode,
    /// Detail without payload content.
    pub message: String,
}

/// Parses one client message, classifying failures into error codes. The payload is not
/// echoed into error messages.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        v: Option<u32>,
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let err = |code, message: String| ParseError { code, message };
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        err(
            ErrorCode::BadJson,
            format!(
                "not a JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    match envelope.v {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(err(
                ErrorCode::UnsupportedVersion,
                format!("version {v} is not supported; this server speaks {PROTOCOL_VERSION}"),
            ));
        }
        None => return Err(err(ErrorCode::BadMessage, "missing field `v`".into())),
    }
    match envelope.kind.as_deref() {
        Some("join" | "leave" | "signal" | "ping") => {}
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(err(
                ErrorCode::UnknownType,
                format!("unknown message type {shown:?}"),
            ));
        }
        None => return Err(err(ErrorCode::BadMessage, "missing field `type`".into())),
    }
    let bad = |e: serde_json::Error| {
        // serde's messages name fields and expectations, never values of `data`.
        let detail = e.to_string();
        let detail = detail
            .split(" at line")
            .next()
            .unwrap_or("malformed message");
        err(ErrorCode::BadMessage, detail.to_string())
    };
    let msg = match envelope.kind.as_deref() {
        Some("join") => {
            let m: wire::Join = serde_json::from_str(text).map_err(bad)?;
            ClientMessage::Join {
                v: m.v,
                room: m.room,
                name: m.name,
                token: m.token,
                group: m.group,
            }
        }
        Some("signal") => {
            let m: wire::Signal = serde_json::from_str(text).map_err(bad)?;
            ClientMessage::Signal {
                v: m.v,
                to: m.to,
                data: m.data,
            }
        }
        Some("leave") => {
            let m: wire::Bare = serde_json::from_str(text).map_err(bad)?;
            ClientMessage::Leave { v: m.v }
        }
        _ => {
            let m: wire::Bare = serde_json::from_str(text).map_err(bad)?;
            ClientMessage::Ping { v: m.v }
        }
    };
    if let ClientMessage::Join { room, name, .. } = &msg {
        check_text("room", room, MAX_ROOM_LEN).map_err(|m| err(ErrorCode::BadMessage, m))?;
        check_text("name", name, MAX_NAME_LEN).map_err(|m| err(ErrorCode::BadMessage, m))?;
    }
    Ok(msg)
}

/// Per-type shapes for parsing: strict (unknown fields refused), with `data` kept raw.
mod wire {
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;

    use super::PeerInfo;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Join {
        pub v: u32,
        #[serde(rename = "type")]
        pub _kind: IgnoredAny,
        pub room: String,
        pub name: String,
        #[serde(default)]
        pub token: Option<String>,
        #[serde(default)]
        pub group: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Signal {
        pub v: u32,
        #[serde(rename = "type")]
        pub _kind: IgnoredAny,
        #[serde(default)]
        pub to: Option<String>,
        pub data: Box<RawValue>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Bare {
        pub v: u32,
        #[serde(rename = "type")]
        pub _kind: IgnoredAny,
    }

    // Server messages: lenient (a newer server may add fields).
    #[derive(Deserialize)]
    pub(super) struct Welcome {
        pub peer_id: String,
        #[serde(default)]
        pub slot: Option<u8>,
        pub room: String,
        pub peers: Vec<PeerInfo>,
        #[serde(default)]
        pub ice_servers: Vec<super::IceServerInfo>,
        #[serde(default)]
        pub sfu: bool,
    }

    #[derive(Deserialize)]
    pub(super) struct PeerJoined {
        pub peer_id: String,
        pub name: String,
        #[serde(default)]
        pub slot: Option<u8>,
        #[serde(default)]
        pub group: bool,
    }

    #[derive(Deserialize)]
    pub(super) struct PeerLeft {
        pub peer_id: String,
    }

    #[derive(Deserialize)]
    pub(super) struct SignalFrom {
        pub from: String,
        pub data: Box<RawValue>,
    }

    #[derive(Deserialize)]
    pub(super) struct Error {
        pub code: super::ErrorCode,
        pub message: String,
    }
}

impl ServerMessage {
    /// Parses a message from the server. Unknown types and versions are errors.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Envelope {
            v: u32,
            #[serde(rename = "type")]
            kind: String,
        }
        let env: Envelope = serde_json::from_str(text)?;
        if env.v != PROTOCOL_VERSION {
            return Err(serde::de::Error::custom(format!(
                "unsupported version {}",
                env.v
            )));
        }
        let v = env.v;
        Ok(match env.kind.as_str() {
            "welcome" => {
                let m: wire::Welcome = serde_json::from_str(text)?;
                if m.ice_servers.len() > MAX_ICE_SERVERS
                    || !m.ice_servers.iter().all(IceServerInfo::within_bounds)
                {
                    return Err(serde::de::Error::custom("ice_servers out of bounds"));
                }
                ServerMessage::Welcome {
                    v,
                    peer_id: m.peer_id,
                    slot: m.slot,
                    room: m.room,
                    peers: m.peers,
                    ice_servers: m.ice_servers,
                    sfu: m.sfu,
                }
            }
            "peer_joined" => {
                let m: wire::PeerJoined = serde_json::from_str(text)?;
                ServerMessage::PeerJoined {
                    v,
                    peer_id: m.peer_id,
                    name: m.name,
                    slot: m.slot,
                    group: m.group,
                }
            }
            "peer_left" => {
                let m: wire::PeerLeft = serde_json::from_str(text)?;
                ServerMessage::PeerLeft {
                    v,
                    peer_id: m.peer_id,
                }
            }
            "signal" => {
                let m: wire::SignalFrom = serde_json::from_str(text)?;
                ServerMessage::Signal {
                    v,
                    from: m.from,
                    data: m.data,
                }
            }
            "pong" => ServerMessage::Pong { v },
            "error" => {
                let m: wire::Error = serde_json::from_str(text)?;
                ServerMessage::Error {
                    v,
                    code: m.code,
                    message: m.message,
                }
            }
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown message type {other:?}"
                )));
            }
        })
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("`{field}` must be 1 to {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{field}` contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bad_input() {
        let code = |t: &str| parse_client_message(t).map(|_| ()).unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":2,"type":"join"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"v":1,"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"r"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(code(r#"{"v":1,"type":"signal"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"","name":"a"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"v":1,"type":"ping","x":1}"#),
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn error_codes_are_snake_case_on_the_wire() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
        }
        assert_eq!(ErrorCode::JoinTimeout.as_str(), "join_timeout");
        assert_eq!(ErrorCode::TokenInUse.as_str(), "token_in_use");
        assert_eq!(ErrorCode::NameTaken.as_str(), "name_taken");
        assert_eq!(
            ErrorCode::TooManyConnections.as_str(),
            "too_many_connections"
        );
    }

    #[test]
    fn server_messages_roundtrip() {
        let data = RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap();
        let msg = ServerMessage::Signal {
            v: 1,
            from: "p1".into(),
            data,
        };
        let text = serde_json::to_string(&msg).unwrap();
        let ServerMessage::Signal { from, data, .. } = ServerMessage::parse(&text).unwrap() else {
            panic!("not a signal");
        };
        assert_eq!((from.as_str(), data.get()), ("p1", r#"{"a":[1,2]}"#));
        assert!(ServerMessage::parse(r#"{"v":1,"type":"nope"}"#).is_err());
        assert!(ServerMessage::parse(r#"{"v":3,"type":"pong"}"#).is_err());
    }

    #[test]
    fn signal_data_passes_through_untouched() {
        let text = r#"{"v":1,"type":"signal","to":"p2","data":{"sdp":"v=0\r\n","n":[1,2]}}"#;
        let ClientMessage::Signal { to, data, .. } = parse_client_message(text).unwrap() else {
            panic!("not a signal");
        };
        assert_eq!(to.as_deref(), Some("p2"));
        assert_eq!(data.get(), r#"{"sdp":"v=0\r\n","n":[1,2]}"#);
    }
}
