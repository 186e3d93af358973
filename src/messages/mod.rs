//! End-to-end encrypted text messages with disappearing timers.
//!
//! The logic is Sans-I/O: a [`Conversation`] takes what the application sends and what the
//! peer's sealed channel delivers, together with the current time, and gives back what to
//! send and [`ChatEvent`]s; expiry is driven by [`Conversation::poll`] and
//! [`Conversation::next_deadline`], so it runs on virtual time in tests. The call
//! (`crate::call`) carries the [`ChatWire`] items on its sealed control channel; the optional
//! [`History`] keeps live messages across restarts, encrypted at rest.
//!
//! The message body (`id`, `seq`, `from`, `text`, `ttl_s`) does not depend on the channel: in
//! a group call the same object is sealed once under the sender's message key and relayed.

mod conversation;
pub mod history;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use conversation::{Conversation, ConversationCounters};
pub use history::{History, HistoryError, StoredMessage};

/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 4096;

/// Shortest disappearing timer.
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// Longest disappearing timer.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a message or a timer could not be sent or set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The text is longer than [`MAX_TEXT_LEN`] bytes.
    #[error("message too long: {len} bytes (at most {MAX_TEXT_LEN})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The text is empty.
    #[error("message is empty")]
    Empty,
    /// The text is not valid UTF-8.
    #[error("message is not valid UTF-8")]
    NotUtf8,
    /// A timer outside 5 s..24 h.
    #[error("disappearing timer must be off or between 5 s and 24 h, got {0}")]
    TimerOutOfRange(String),
    /// A timer that does not parse (`5s`, `30m`, `24h` or `off`).
    #[error("disappearing timer must be a number with s, m or h (5s..24h) or off, got {0:?}")]
    BadTimer(String),
    /// The call is not connected (yet, or any more).
    #[error("the call is not connected")]
    NotConnected,
    /// No random number could be drawn for the message id.
    #[error("no randomness for a message id")]
    Random,
    /// Text messages are two-party only for now; group calls carry voice.
    #[error("text messages are not available in group calls yet")]
    NotInGroupCalls,
}

/// Why a message from the peer was refused (each one is counted in `messages_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Its id was seen before.
    #[error("duplicate message id")]
    Duplicate,
    /// Its sequence number is not above the last one accepted: replayed or reordered.
    #[error("replayed or reordered message")]
    Reordered,
    /// It claims another sender than the authenticated peer.
    #[error("message claims another sender")]
    WrongSender,
    /// Its text is over [`MAX_TEXT_LEN`] bytes.
    #[error("message too long")]
    TooLong,
    /// Its TTL is outside 5 s..24 h.
    #[error("message timer out of range")]
    BadTimer,
    /// It is not a well-formed message (bad id, empty text, wrong field types).
    #[error("malformed message")]
    Malformed,
}

/// A conversation's disappearing timer: off, or 5 s to 24 h in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DisappearingTimer(Option<u32>);

impl DisappearingTimer {
    /// Messages never disappear.
    pub const OFF: Self = DisappearingTimer(None);

    /// A timer of `ttl` (`None`: off). Refused outside 5 s..24 h or with a fraction of a
    /// second.
    pub fn new(ttl: Option<Duration>) -> Result<Self, MessageError> {
        match ttl {
            None => Ok(Self::OFF),
            Some(d) if d.subsec_nanos() != 0 => {
                Err(MessageError::TimerOutOfRange(format!("{d:?}")))
            }
            Some(d) => Self::from_secs(Some(d.as_secs())),
        }
    }

    /// A timer of `secs` seconds (`None`: off), as carried on the wire.
    pub fn from_secs(secs: Option<u64>) -> Result<Self, MessageError> {
        match secs {
            None => Ok(Self::OFF),
            Some(s) if (MIN_TTL.as_secs()..=MAX_TTL.as_secs()).contains(&s) => {
                Ok(DisappearingTimer(u32::try_from(s).ok()))
            }
            Some(s) => Err(MessageError::TimerOutOfRange(format!("{s} s"))),
        }
    }

    /// Parses `5s`, `30m`, `24h` (units s, m, h) or `off`.
    pub fn parse(s: &str) -> Result<Self, MessageError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let bad = || MessageError::BadTimer(t.to_owned());
        let split = t.len().checked_sub(1).ok_or_else(bad)?;
        let (number, unit) = (t.get(..split).ok_or_else(bad)?, t.get(split..));
        let scale = match unit {
            Some("s" | "S") => 1,
            Some("m" | "M") => 60,
            Some("h" | "H") => 3600,
            _ => return Err(bad()),
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = number
            .parse()
            .map_err(|_| MessageError::TimerOutOfRange(t.to_owned()))?;
        let secs = n
            .checked_mul(scale)
            .ok_or_else(|| MessageError::TimerOutOfRange(t.to_owned()))?;
        Self::from_secs(Some(secs)).map_err(|_| MessageError::TimerOutOfRange(t.to_owned()))
    }

    /// The time to live, `None` when off.
    pub fn ttl(self) -> Option<Duration> {
        self.0.map(|s| Duration::from_secs(u64::from(s)))
    }

    /// The time to live in seconds, `None` when off (the wire's `ttl_s`).
    pub fn secs(self) -> Option<u64> {
        self.0.map(u64::from)
    }
}

impl fmt::Display for DisappearingTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(s) if s % 3600 == 0 => write!(f, "{} h", s / 3600),
            Some(s) if s % 60 == 0 => write!(f, "{} min", s / 60),
            Some(s) => write!(f, "{s} s"),
        }
    }
}

/// A message id: 16 random bytes, 32 lowercase hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Result<Self, MessageError> {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| MessageError::Random)?;
        Ok(MessageId(id))
    }

    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(MessageId(id))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A message's text, shared between the conversation and the events that show it, and wiped
/// (zeroized) by the conversation when the message expires: an event still queued or kept by
/// the application then holds nothing.
#[derive(Clone)]
pub struct MessageText(Arc<Mutex<Option<Zeroizing<String>>>>);

impl MessageText {
    pub(crate) fn new(text: Zeroizing<String>) -> Self {
        MessageText(Arc::new(Mutex::new(Some(text))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Zeroizing<String>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the text; `None` once the message has expired.
    pub fn with<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        self.lock().as_deref().map(|s| f(s))
    }

    /// A copy of the text (the copy is the caller's to wipe); `None` once expired.
    pub fn get(&self) -> Option<Zeroizing<String>> {
        self.lock().clone()
    }

    /// The message expired and its text was wiped.
    pub fn is_expired(&self) -> bool {
        self.lock().is_none()
    }

    /// Wipes the text now.
    pub(crate) fn wipe(&self) {
        // Zeroizing wipes the String's bytes when it drops here.
        self.lock().take();
    }
}

impl fmt::Debug for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never log message texts.
        f.write_str(if self.is_expired() {
            "MessageText(expired)"
        } else {
            "MessageText(..)"
        })
    }
}

/// A message received from the peer.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Its id.
    pub id: MessageId,
    /// The sender (the authenticated peer's canonical name).
    pub from: String,
    /// The text, wiped at expiry.
    pub text: MessageText,
    /// The TTL it carries; `None`: it does not disappear.
    pub ttl: DisappearingTimer,
    /// When it arrived, on our wall clock (only for display: expiry runs on the monotonic
    /// clock from the receipt).
    pub received_at: SystemTime,
    /// It was loaded from the history at start, not received in this call.
    pub restored: bool,
}

/// What a conversation reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChatEvent {
    /// A message from the peer.
    Message(ReceivedMessage),
    /// We sent a message (or, with `restored`, one we sent earlier was loaded from history).
    Sent {
        /// Its id.
        id: MessageId,
        /// The text, wiped at expiry.
        text: MessageText,
        /// The TTL it carries.
        ttl: DisappearingTimer,
        /// Loaded from the history at start.
        restored: bool,
    },
    /// The peer acknowledged our message.
    Delivered {
        /// The message.
        id: MessageId,
        /// Who acknowledged it.
        to: String,
    },
    /// Someone set the disappearing timer; it applies to messages sent after it.
    TimerChanged {
        /// Who set it (our name when we did).
        from: String,
        /// The new timer.
        ttl: DisappearingTimer,
    },
    /// A message expired: its text is gone from memory (and history).
    Expired {
        /// The message.
        id: MessageId,
    },
    /// The call ended before the peer acknowledged this message.
    Undelivered {
        /// The message.
        id: MessageId,
    },
    /// A message from the peer was refused.
    Rejected(Rejection),
}

/// The chat items carried sealed on the call's control channel (JSON, `type` tag; see
/// `docs/call-protocol.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ChatWire {
    /// A text message.
    Message {
        /// 32 lowercase hex digits, random.
        id: String,
        /// The sender's sequence number (shared with `timer`), from 1, only growing.
        seq: u64,
        /// The sender's name.
        from: String,
        /// UTF-8 text, at most 4096 bytes.
        text: String,
        /// Time to live in seconds (5..=86400), or null.
        ttl_s: Option<u64>,
    },
    /// Acknowledges a message.
    Delivered {
        /// The message's id.
        id: String,
    },
    /// Sets the conversation's disappearing timer.
    Timer {
        /// The sender's sequence number.
        seq: u64,
        /// The sender's name.
        from: String,
        /// Seconds (5..=86400), or null for off.
        ttl_s: Option<u64>,
    },
}

impl fmt::Debug for ChatWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text stays out of logs.
        match self {
            ChatWire::Message { id, seq, ttl_s, .. } => f
                .debug_struct("Message")
                .field("id", id)
                .field("seq", seq)
                .field("ttl_s", ttl_s)
                .finish_non_exhaustive(),
            ChatWire::Delivered { id } => f.debug_struct("Delivered").field("id", id).finish(),
            ChatWire::Timer { seq, ttl_s, .. } => f
                .debug_struct("Timer")
                .field("seq", seq)
                .field("ttl_s", ttl_s)
                .finish_non_exhaustive(),
        }
    }
}

impl Drop for ChatWire {
    fn drop(&mut self) {
        if let ChatWire::Message { text, .. } = self {
            zeroize::Zeroize::zeroize(text);
        }
    }
}

/// The JSON object of a chat event, as `sotto call --chat-json` writes it and the C ABI
/// reports it (`docs/call-protocol.md`, "Messages"); `None` for events it does not carry. A
/// text that has expired already is `null`. `received_at` is Unix time in milliseconds on
/// our clock.
pub fn chat_event_json(event: &ChatEvent) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let text = |t: &MessageText| t.get().map_or(Value::Null, |s| Value::from(s.as_str()));
    let ttl = |t: &DisappearingTimer| t.secs().map_or(Value::Null, Value::from);
    let mut value = match event {
        ChatEvent::Message(m) => json!({
            "event": "message",
            "id": m.id.to_string(),
            "from": m.from,
            "text": text(&m.text),
            "ttl_s": ttl(&m.ttl),
            "received_at": unix_ms(m.received_at),
        }),
        ChatEvent::Sent {
            id,
            text: t,
            ttl: l,
            ..
        } => json!({
            "event": "sent",
            "id": id.to_string(),
            "text": text(t),
            "ttl_s": ttl(l),
        }),
        ChatEvent::Delivered { id, to } => {
            json!({"event": "delivered", "id": id.to_string(), "to": to})
        }
        ChatEvent::TimerChanged { from, ttl: l } => {
            json!({"event": "timer", "from": from, "ttl_s": ttl(l)})
        }
        ChatEvent::Expired { id } => json!({"event": "expired", "id": id.to_string()}),
        ChatEvent::Undelivered { id } => json!({"event": "undelivered", "id": id.to_string()}),
        ChatEvent::Rejected(why) => json!({"event": "rejected", "reason": why.to_string()}),
    };
    let restored = match event {
        ChatEvent::Message(m) => m.restored,
        ChatEvent::Sent { restored, .. } => *restored,
        _ => false,
    };
    if restored {
        value["restored"] = Value::Bool(true);
    }
    Some(value)
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_parse_in_range_and_refuse_the_rest() {
        assert_eq!(DisappearingTimer::parse("5s").unwrap().secs(), Some(5));
        assert_eq!(DisappearingTimer::parse("30m").unwrap().secs(), Some(1800));
        assert_eq!(
            DisappearingTimer::parse("24h").unwrap().secs(),
            Some(86_400)
        );
        assert_eq!(
            DisappearingTimer::parse(" off ").unwrap(),
            DisappearingTimer::OFF
        );
        for out in [
            "4s",
            "0s",
            "25h",
            "1441m",
            "86401s",
            "99999999999999999999h",
        ] {
            assert!(
                matches!(
                    DisappearingTimer::parse(out),
                    Err(MessageError::TimerOutOfRange(_))
                ),
                "{out}"
            );
        }
        for bad in ["", "s", "5", "5d", "-5s", "5.5s", "five s", "5 s", "é"] {
            assert!(
                matches!(
                    DisappearingTimer::parse(bad),
                    Err(MessageError::BadTimer(_))
                ),
                "{bad}"
            );
        }
        assert!(DisappearingTimer::new(Some(Duration::from_millis(5500))).is_err());
        assert!(DisappearingTimer::new(Some(Duration::from_secs(4))).is_err());
        assert_eq!(
            DisappearingTimer::new(Some(Duration::from_secs(30)))
                .unwrap()
                .to_string(),
            "30 s"
        );
        assert_eq!(DisappearingTimer::parse("1h").unwrap().to_string(), "1 h");
        assert_eq!(DisappearingTimer::parse("5m").unwrap().to_string(), "5 min");
    }

    #[test]
    fn ids_are_lowercase_hex_of_sixteen_bytes() {
        let id = MessageId::random().unwrap();
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
        assert_ne!(MessageId::random().unwrap(), id);
        assert_eq!(MessageId::parse(&"A".repeat(32)), None);
        assert_eq!(MessageId::parse(&"a".repeat(31)), None);
        assert_eq!(MessageId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn wire_matches_the_protocol_text() {
        let wire = ChatWire::Message {
            id: "00".repeat(16),
            seq: 1,
            from: "alice".into(),
            text: "hi".into(),
            ttl_s: None,
        };
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            format!(
                r#"{{"type":"message","id":"{}","seq":1,"from":"alice","text":"hi","ttl_s":null}}"#,
                "00".repeat(16)
            )
        );
        let timer: ChatWire =
            serde_json::from_str(r#"{"type":"timer","seq":2,"from":"bob","ttl_s":30}"#).unwrap();
        assert_eq!(
            timer,
            ChatWire::Timer {
                seq: 2,
                from: "bob".into(),
                ttl_s: Some(30)
            }
        );
        // The text never reaches a log through Debug.
        assert!(!format!("{wire:?}").contains("hi"));
    }

    #[test]
    fn a_wiped_text_is_gone_from_every_handle() {
        let text = MessageText::new(Zeroizing::new("secret".into()));
        let copy = text.clone();
        assert_eq!(copy.with(str::len), Some(6));
        text.wipe();
        assert!(copy.is_expired());
        assert_eq!(copy.get(), None);
        assert_eq!(format!("{copy:?}"), "MessageText(expired)");
    }
}
