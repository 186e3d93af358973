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

/// First byte of a message carrying several events: each follows as a 4-byte big-endian
/// length and that many bytes. (A single event is a JSON object: `{`.)
pub(crate) const BATCH: u8 = b'B';

/// The most bytes of events put in one batch.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One message carrying `events`: the event itself when there is one, else a [`BATCH`].
pub(crate) fn batch<'a>(events: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let events: Vec<&[u8]> = events.collect();
    if let [one] = events.as_slice() {
        return one.to_vec();
    }
    let mut out = Vec::with_capacity(1 + events.iter().map(|e| e.len() + 4).sum::<usize>());
    out.push(BATCH);
    for e in events {
        out.extend_from_slice(&u32::try_from(e.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The events in a [`BATCH`] message, in order; an item is `None` where the framing breaks
/// (the rest cannot be read). `None` when `msg` is not a batch.
pub(crate) fn unbatch(msg: &[u8]) -> Option<impl Iterator<Item = Option<&[u8]>>> {
    let mut rest = msg.strip_prefix(&[BATCH])?;
    let mut broken = false;
    Some(std::iter::from_fn(move || {
        if rest.is_empty() || broken {
            return None;
        }
        let item = rest.split_first_chunk::<4>().and_then(|(len, tail)| {
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            (len <= tail.len()).then(|| tail.split_at(len))
        });
        match item {
            Some((event, tail)) => {
                rest = tail;
                Some(Some(event))
            }
            None => {
                broken = true;
                Some(None)
            }
        }
    }))
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
    fn batches_carry_events_in_order_and_broken_framing_stops_reading() {
        let events: [&[u8]; 3] = [b"{\"a\":1}", b"", b"{\"b\":2}"];
        let msg = batch(events.iter().copied());
        let back: Vec<Option<&[u8]>> = unbatch(&msg).unwrap().collect();
        assert_eq!(back, events.iter().map(|e| Some(*e)).collect::<Vec<_>>());
        // One event travels as itself, and is not a batch.
        assert_eq!(batch([&b"{}"[..]].into_iter()), b"{}");
        assert!(unbatch(b"{}").is_none());
        // A length past the end, or a cut length, ends the batch with one `None`.
        let mut cut = batch(events.iter().copied());
        cut.truncate(cut.len() - 2);
        let back: Vec<_> = unbatch(&cut).unwrap().collect();
        assert_eq!(back.last(), Some(&None));
        assert_eq!(back.len(), 3);
        let back: Vec<_> = unbatch(&[BATCH, 0, 0]).unwrap().collect();
        assert_eq!(back, vec![None]);
    }

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
