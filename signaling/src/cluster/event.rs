//! What nodes send each other on their channels (`sotto:n:<node>`).

use serde::{Deserialize, Serialize};

use crate::hub::MemberRecord;

/// One message on a node's channel. Unknown kinds and fields are refused.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", deny_unknown_fields)]
pub(crate) enum Event {
    /// Deliver text frame `f` to member `to` of room `r`, if it is connected here.
    #[serde(rename = "s")]
    Signal { r: String, to: String, f: String },
    /// `m` joined room `r`; the joiner's own node also gets the members already there.
    #[serde(rename = "j")]
    Joined {
        r: String,
        m: MemberRecord,
        #[serde(default)]
        roster: Option<Vec<MemberRecord>>,
    },
    /// Member `id` left room `r` (or was reaped with its node).
    #[serde(rename = "l")]
    Left { r: String, id: String },
    /// Room `r`'s members after a node put back what Redis had lost.
    #[serde(rename = "roster")]
    Roster {
        r: String,
        members: Vec<MemberRecord>,
    },
}

#[derive(Serialize)]
struct SignalOut<'a> {
    t: &'static str,
    r: &'a str,
    to: &'a str,
    f: &'a str,
}

/// A signal event, encoded.
pub(crate) fn signal(room: &str, to: &str, frame: &str) -> String {
    serde_json::to_string(&SignalOut {
        t: "s",
        r: room,
        to,
        f: frame,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_garbage_is_refused() {
        let s = signal("room \"1\"", "p1", "{\"type\":\"signal\"}");
        assert!(matches!(
            serde_json::from_str::<Event>(&s).unwrap(),
            Event::Signal { r, to, f } if r == "room \"1\"" && to == "p1" && f == "{\"type\":\"signal\"}"
        ));
        let j = r#"{"t":"j","r":"a","m":{"id":"p1","name":"al","skel":"al","slot":0,"node":"n1","tok":""},"roster":[]}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(j).unwrap(),
            Event::Joined { roster: Some(v), .. } if v.is_empty()
        ));
        for bad in [
            "",
            "{}",
            r#"{"t":"x"}"#,
            r#"{"t":"s","r":"a","to":"b"}"#,
            r#"{"t":"j","r":"a","m":{"id":"p1","name":"al","skel":"al","slot":300,"node":"n","tok":""}}"#,
            r#"{"t":"l","r":"a","id":"b","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
        }
    }
}
