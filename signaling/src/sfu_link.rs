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
}

/// The answer signal's `data` (serialising a JSON object of two strings cannot fail).
pub(crate) fn answer_data(sdp: &str) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(&serde_json::json!({ "kind": "sfu_answer", "sdp": sdp })).ok()
}
