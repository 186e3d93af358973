//! The hub's side of a selective forwarding unit: signals addressed to
//! [`SFU_PEER_ID`](sotto::signal::protocol::SFU_PEER_ID) go to it.
//!
//! A client sends `{"kind": "sfu_offer", "sdp": "..."}` to `sfu`; the server answers as the
//! peer `sfu` with `{"kind": "sfu_answer", "sdp": "..."}`, or with `no_sfu` / `sfu_refused`.
//! The SFU only ever sees SDP and SFrame-sealed media: keys travel between the peers.

use serde::Deserialize;

/// Why an SFU refused a participant, as told to the client (`sfu_refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuRefusal(pub String);

/// An SFU the server hands group-call offers to: in the same process (`--sfu`) or attached.
pub trait SfuLink: Send + Sync + std::fmt::Debug {
    /// Seats `peer` in `room` with its SDP offer and returns the SDP answer. May block for a
    /// few milliseconds; the server calls it off its async threads.
    fn join(&self, room: &str, peer: &str, offer_sdp: &str) -> Result<String, SfuRefusal>;
    /// Removes `peer` from `room` (it left, or its connection ended). Unknown peers are ignored.
    fn leave(&self, room: &str, peer: &str);
    /// The SFU's counters in the Prometheus text format, appended to `/metrics`.
    fn render_metrics(&self) -> String;
    /// Whether it may take one more room (below its room limit); new rooms go elsewhere, to an
    /// attached SFU, when it may not.
    fn can_take_room(&self) -> bool {
        true
    }
}

/// The signals a client may send to the SFU.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum SfuSignal {
    /// Join the room's media with this offer.
    SfuOffer {
        /// The offer.
        sdp: String,
    },
    /// Leave the room's media (and stay in the room).
    SfuLeave {},
}

/// The SFU hosted in this process (`sotto-signaling --sfu`).
impl SfuLink for sotto_sfu::Sfu {
    fn join(&self, room: &str, peer: &str, offer_sdp: &str) -> Result<String, SfuRefusal> {
        sotto_sfu::Sfu::join(self, room, peer, offer_sdp).map_err(|e| SfuRefusal(e.to_string()))
    }

    fn leave(&self, room: &str, peer: &str) {
        sotto_sfu::Sfu::leave(self, room, peer);
    }

    fn render_metrics(&self) -> String {
        sotto_sfu::Sfu::render_metrics(self)
    }

    fn can_take_room(&self) -> bool {
        !sotto_sfu::Sfu::is_full(self)
    }
}

/// The answer signal's `data` (serialising a JSON object of two strings cannot fail).
pub(crate) fn answer_data(sdp: &str) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(&serde_json::json!({ "kind": "sfu_answer", "sdp": sdp })).ok()
}

/// `sfu_attach`: the first message of an SFU attaching to this hub (see PROTOCOL.md, "SFU").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SfuAttach {
    /// Protocol version (checked before this is parsed).
    #[serde(rename = "v")]
    _v: u32,
    #[serde(rename = "type")]
    _kind: serde::de::IgnoredAny,
    /// The most rooms the SFU takes.
    pub capacity: u32,
    /// A token for the empty room and the name `sfu`.
    #[serde(default)]
    pub token: Option<String>,
}

/// Whether `text` is an `sfu_attach` message (by its `type` alone).
pub(crate) fn is_attach(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Kind<'_>>(text).is_ok_and(|k| k.kind.as_deref() == Some("sfu_attach"))
}

/// What an attached SFU sends back about one member: the `data` of its `signal`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum SfuReply {
    /// The member's answer.
    SfuAnswer {
        /// The member's room.
        room: String,
        /// The SDP answer.
        sdp: String,
    },
    /// The SFU refused the member's offer.
    SfuRefused {
        /// The member's room.
        room: String,
        /// `room_full`, `too_many_rooms`, `bad_offer` or `unavailable`.
        reason: String,
        /// Human-readable detail.
        #[serde(default)]
        message: String,
    },
}

/// Longest refusal detail relayed from an attached SFU to a member, in characters.
const MAX_REFUSAL_CHARS: usize = 200;

/// The `message` of the `sfu_refused` error a member gets for an attached SFU's refusal:
/// the known reason, and its detail cut short and without control characters.
pub(crate) fn refusal_text(reason: &str, message: &str) -> String {
    let reason = match reason {
        "room_full" | "too_many_rooms" | "bad_offer" | "unavailable" => reason,
        _ => "unavailable",
    };
    let detail: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REFUSAL_CHARS)
        .collect();
    if detail.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {detail}")
    }
}

/// The `data` of a member's offer as forwarded to an attached SFU.
pub(crate) fn forwarded_offer(room: &str, sdp: &str) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(
        &serde_json::json!({ "kind": "sfu_offer", "room": room, "sdp": sdp }),
    )
    .ok()
}

/// The `data` of a member's leave as forwarded to an attached SFU.
pub(crate) fn forwarded_leave(room: &str) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(&serde_json::json!({ "kind": "sfu_leave", "room": room })).ok()
}
