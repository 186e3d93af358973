//! The Sans-I/O conversation: sending, receiving, acknowledging and expiring messages.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use super::{
    ChatEvent, ChatWire, DisappearingTimer, MAX_TEXT_LEN, MessageError, MessageId, MessageText,
    ReceivedMessage, Rejection,
};

/// How many peer message ids are remembered to refuse duplicates (sequence numbers refuse
/// anything older anyway).
const SEEN_IDS: usize = 4096;

/// A message we hold, until it expires.
#[derive(Debug)]
struct Live {
    id: MessageId,
    text: MessageText,
    expires: Option<Instant>,
}

/// What a conversation has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversationCounters {
    /// Messages we sent.
    pub sent: u64,
    /// Messages from the peer accepted.
    pub received: u64,
    /// Messages from the peer refused.
    pub rejected: u64,
    /// Messages (ours and the peer's) that expired.
    pub expired: u64,
}

/// One two-party conversation: our sequence numbers, the peer's, the timer, the messages held
/// until they expire, and the ones not yet acknowledged.
#[derive(Debug)]
pub struct Conversation {
    me: String,
    peer: Option<String>,
    timer: DisappearingTimer,
    next_seq: u64,
    peer_seq: u64,
    seen: HashSet<MessageId>,
    seen_order: VecDeque<MessageId>,
    pending: Vec<MessageId>,
    live: Vec<Live>,
    events: VecDeque<ChatEvent>,
    counters: ConversationCounters,
}

impl Conversation {
    /// A conversation in which we are `me` (the name we send as `from`).
    pub fn new(me: impl Into<String>) -> Self {
        Conversation {
            me: me.into(),
            peer: None,
            timer: DisappearingTimer::OFF,
            next_seq: 1,
            peer_seq: 0,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            pending: Vec::new(),
            live: Vec::new(),
            events: VecDeque::new(),
            counters: ConversationCounters::default(),
        }
    }

    /// The authenticated peer (canonical name): only its messages are accepted.
    pub fn set_peer(&mut self, name: impl Into<String>) {
        self.peer = Some(name.into());
    }

    /// The timer in force for the next message we send.
    pub fn timer(&self) -> DisappearingTimer {
        self.timer
    }

    /// The counters so far.
    pub fn counters(&self) -> ConversationCounters {
        self.counters
    }

    /// Checks a text for sending: UTF-8 (by type), not empty, at most 4096 bytes.
    pub fn check_text(text: &str) -> Result<(), MessageError> {
        if text.is_empty() {
            return Err(MessageError::Empty);
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(MessageError::TooLong { len: text.len() });
        }
        Ok(())
    }

    /// Sends `text` as message `id` at `now`: gives the wire item to seal and send, and
    /// reports [`ChatEvent::Sent`]. Our copy expires at `now` + the timer in force. Refused
    /// texts change nothing.
    pub fn send(
        &mut self,
        id: MessageId,
        text: &str,
        now: Instant,
    ) -> Result<ChatWire, MessageError> {
        Self::check_text(text)?;
        let seq = self.take_seq();
        let ttl = self.timer;
        let shared = MessageText::new(Zeroizing::new(text.to_owned()));
        self.hold(id, shared.clone(), ttl, now);
        self.pending.push(id);
        self.counters.sent += 1;
        self.events.push_back(ChatEvent::Sent {
            id,
            text: shared,
            ttl,
            restored: false,
        });
        Ok(ChatWire::Message {
            id: id.to_string(),
            seq,
            from: self.me.clone(),
            text: text.to_owned(),
            ttl_s: ttl.secs(),
        })
    }

    /// Sets the timer for the messages we send from now on; gives the wire item that tells
    /// the peer.
    pub fn set_timer(&mut self, timer: DisappearingTimer) -> ChatWire {
        self.timer = timer;
        self.events.push_back(ChatEvent::TimerChanged {
            from: self.me.clone(),
            ttl: timer,
        });
        ChatWire::Timer {
            seq: self.take_seq(),
            from: self.me.clone(),
            ttl_s: timer.secs(),
        }
    }

    /// Handles a wire item from the peer (already authenticated by the channel) received at
    /// `now` (monotonic, starts the TTL) and `wall` (shown only). Gives the acknowledgement
    /// to send back, if any. The sender's clock plays no part in expiry.
    pub fn receive(
        &mut self,
        mut wire: ChatWire,
        now: Instant,
        wall: SystemTime,
    ) -> Option<ChatWire> {
        match wire {
            ChatWire::Delivered { ref id } => {
                let id = MessageId::parse(id)?;
                let at = self.pending.iter().position(|p| *p == id)?;
                self.pending.remove(at);
                let to = self.peer.clone().unwrap_or_default();
                self.events.push_back(ChatEvent::Delivered { id, to });
                None
            }
            ChatWire::Timer {
                seq,
                ref from,
                ttl_s,
            } => {
                let checked = self
                    .check_sender(from)
                    .and_then(|()| {
                        DisappearingTimer::from_secs(ttl_s).map_err(|_| Rejection::BadTimer)
                    })
                    .and_then(|timer| self.check_seq(seq).map(|()| timer));
                match checked {
                    Ok(timer) => {
                        self.peer_seq = seq;
                        self.timer = timer;
                        self.events.push_back(ChatEvent::TimerChanged {
                            from: self.peer.clone().unwrap_or_default(),
                            ttl: timer,
                        });
                    }
                    Err(r) => self.reject(r),
                }
                None
            }
            ChatWire::Message {
                ref id,
                seq,
                ref from,
                ref mut text,
                ttl_s,
            } => {
                let checked = self.check_message(id, seq, from, text, ttl_s);
                let (id, ttl) = match checked {
                    Ok(ok) => ok,
                    Err(r) => {
                        self.reject(r);
                        return None;
                    }
                };
                self.peer_seq = seq;
                self.remember(id);
                // Move the text out; the wire item's copy is wiped on drop anyway.
                let owned = Zeroizing::new(std::mem::take(text));
                let shared = MessageText::new(owned);
                self.hold(id, shared.clone(), ttl, now);
                self.counters.received += 1;
                self.events.push_back(ChatEvent::Message(ReceivedMessage {
                    id,
                    from: self.peer.clone().unwrap_or_default(),
                    text: shared,
                    ttl,
                    received_at: wall,
                    restored: false,
                }));
                Some(ChatWire::Delivered { id: id.to_string() })
            }
        }
    }

    /// Holds a message loaded from history that expires at `expires` (`None`: never).
    pub fn restore(
        &mut self,
        id: MessageId,
        from: Option<String>,
        text: Zeroizing<String>,
        ttl: DisappearingTimer,
        expires: Option<Instant>,
        received_at: SystemTime,
    ) {
        let shared = MessageText::new(text);
        self.live.push(Live {
            id,
            text: shared.clone(),
            expires,
        });
        if from.is_some() {
            self.remember(id);
        }
        self.events.push_back(match from {
            Some(from) => ChatEvent::Message(ReceivedMessage {
                id,
                from,
                text: shared,
                ttl,
                received_at,
                restored: true,
            }),
            None => ChatEvent::Sent {
                id,
                text: shared,
                ttl,
                restored: true,
            },
        });
    }

    /// Expires every message whose time has come: wipes its text and reports
    /// [`ChatEvent::Expired`].
    pub fn poll(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.live.len() {
            if self.live[i].expires.is_some_and(|e| e <= now) {
                let live = self.live.swap_remove(i);
                live.text.wipe();
                self.counters.expired += 1;
                self.events.push_back(ChatEvent::Expired { id: live.id });
            } else {
                i += 1;
            }
        }
    }

    /// When [`poll`](Self::poll) must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.live.iter().filter_map(|l| l.expires).min()
    }

    /// The call ended: every message the peer has not acknowledged is reported
    /// [`ChatEvent::Undelivered`].
    pub fn end(&mut self) {
        for id in std::mem::take(&mut self.pending) {
            self.events.push_back(ChatEvent::Undelivered { id });
        }
    }

    /// Wipes every text held now (nobody will enforce their timers any more).
    pub fn wipe_all(&mut self) {
        for live in self.live.drain(..) {
            live.text.wipe();
        }
    }

    /// The next event to report.
    pub fn next_event(&mut self) -> Option<ChatEvent> {
        self.events.pop_front()
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn hold(&mut self, id: MessageId, text: MessageText, ttl: DisappearingTimer, now: Instant) {
        let expires = ttl.ttl().and_then(|t: Duration| now.checked_add(t));
        self.live.push(Live { id, text, expires });
    }

    fn remember(&mut self, id: MessageId) {
        if self.seen.insert(id) {
            self.seen_order.push_back(id);
            if self.seen_order.len() > SEEN_IDS
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
    }

    /// Refuses a message the channel found malformed before it reached the conversation.
    pub fn refuse(&mut self, why: Rejection) {
        self.reject(why);
    }

    fn reject(&mut self, why: Rejection) {
        self.counters.rejected += 1;
        self.events.push_back(ChatEvent::Rejected(why));
    }

    fn check_sender(&self, from: &str) -> Result<(), Rejection> {
        match &self.peer {
            Some(peer) if crate::names::canonical(from) == *peer => Ok(()),
            _ => Err(Rejection::WrongSender),
        }
    }

    fn check_seq(&self, seq: u64) -> Result<(), Rejection> {
        if seq > self.peer_seq {
            Ok(())
        } else {
            Err(Rejection::Reordered)
        }
    }

    fn check_message(
        &self,
        id: &str,
        seq: u64,
        from: &str,
        text: &str,
        ttl_s: Option<u64>,
    ) -> Result<(MessageId, DisappearingTimer), Rejection> {
        let id = MessageId::parse(id).ok_or(Rejection::Malformed)?;
        if text.len() > MAX_TEXT_LEN {
            return Err(Rejection::TooLong);
        }
        if text.is_empty() {
            return Err(Rejection::Malformed);
        }
        let ttl = DisappearingTimer::from_secs(ttl_s).map_err(|_| Rejection::BadTimer)?;
        self.check_sender(from)?;
        self.check_seq(seq)?;
        if self.seen.contains(&id) {
            return Err(Rejection::Duplicate);
        }
        Ok((id, ttl))
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.wipe_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    fn events(c: &mut Conversation) -> Vec<ChatEvent> {
        std::iter::from_fn(|| c.next_event()).collect()
    }

    /// Alice and Bob, with the peer names set as an authenticated call would.
    fn pair() -> (Conversation, Conversation) {
        let mut a = Conversation::new("alice");
        let mut b = Conversation::new("bob");
        a.set_peer("bob");
        b.set_peer("alice");
        (a, b)
    }

    fn expired_ids(evs: &[ChatEvent]) -> Vec<MessageId> {
        evs.iter()
            .filter_map(|e| match e {
                ChatEvent::Expired { id } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_message_is_delivered_and_acknowledged() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let wire = a.send(id(1), "hello bob", t0).unwrap();
        let ack = b.receive(wire, t0, SystemTime::now()).unwrap();
        match events(&mut b).as_slice() {
            [ChatEvent::Message(m)] => {
                assert_eq!(m.from, "alice");
                assert_eq!(
                    m.text.get().as_deref().map(String::as_str),
                    Some("hello bob")
                );
                assert_eq!(m.ttl, DisappearingTimer::OFF);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.receive(ack, t0, SystemTime::now()), None);
        let evs = events(&mut a);
        assert!(matches!(&evs[0], ChatEvent::Sent { id: i, .. } if *i == id(1)));
        assert!(
            matches!(&evs[1], ChatEvent::Delivered { id: i, to } if *i == id(1) && to == "bob")
        );
        a.end();
        assert!(
            events(&mut a).is_empty(),
            "a delivered message is not undelivered"
        );
        assert_eq!(a.counters().sent, 1);
        assert_eq!(b.counters().received, 1);
    }

    #[test]
    fn five_seconds_expire_both_copies_on_time_and_wipe_the_text() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        a.set_timer(DisappearingTimer::parse("5s").unwrap());
        // The receiver gets it 300 ms later: its copy lives 5 s from its receipt.
        let wire = a.set_timer(DisappearingTimer::parse("5s").unwrap());
        b.receive(wire, t0, SystemTime::now());
        let wire = a.send(id(7), "burn after reading", t0).unwrap();
        let t1 = t0 + Duration::from_millis(300);
        b.receive(wire, t1, SystemTime::now()).unwrap();
        let sent_text = match events(&mut a).pop() {
            Some(ChatEvent::Sent { text, .. }) => text,
            other => panic!("{other:?}"),
        };
        let got_text = match events(&mut b).pop() {
            Some(ChatEvent::Message(m)) => m.text,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(b.next_deadline(), Some(t1 + Duration::from_secs(5)));
        a.poll(t0 + Duration::from_millis(4999));
        b.poll(t1 + Duration::from_millis(4999));
        assert!(events(&mut a).is_empty() && events(&mut b).is_empty());
        assert!(!sent_text.is_expired() && !got_text.is_expired());
        a.poll(t0 + Duration::from_secs(5));
        b.poll(t1 + Duration::from_secs(5));
        assert_eq!(expired_ids(&events(&mut a)), [id(7)]);
        assert_eq!(expired_ids(&events(&mut b)), [id(7)]);
        // The text is gone from every event that carried it.
        assert!(sent_text.is_expired() && got_text.is_expired());
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.counters().expired, 1);
    }

    #[test]
    fn a_receiver_clock_ten_minutes_off_still_expires_on_time() {
        // Wall clocks 10 min fast and 10 min slow: only the monotonic receipt time counts.
        for skew in [600i64, -600] {
            let (mut a, mut b) = pair();
            let t0 = Instant::now();
            a.set_timer(DisappearingTimer::parse("5s").unwrap());
            let wire = a.send(id(3), "clock skew", t0).unwrap();
            let wall = if skew > 0 {
                SystemTime::now() + Duration::from_secs(600)
            } else {
                SystemTime::now() - Duration::from_secs(600)
            };
            b.receive(wire, t0, wall).unwrap();
            let m = match events(&mut b).pop() {
                Some(ChatEvent::Message(m)) => m,
                other => panic!("{other:?}"),
            };
            assert_eq!(m.received_at, wall);
            b.poll(t0 + Duration::from_millis(4999));
            assert!(!m.text.is_expired(), "skew {skew}: expired early");
            b.poll(t0 + Duration::from_secs(5));
            assert!(m.text.is_expired(), "skew {skew}: not expired at 5 s");
        }
    }

    #[test]
    fn a_timer_change_applies_to_the_next_message_only() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let first = a.send(id(1), "before", t0).unwrap();
        b.receive(first, t0, SystemTime::now());
        // Bob sets the timer; Alice learns of it, and her next message carries it.
        let timer = b.set_timer(DisappearingTimer::parse("30s").unwrap());
        a.receive(timer, t0, SystemTime::now());
        let evs = events(&mut a);
        assert!(evs.iter().any(|e| matches!(e,
            ChatEvent::TimerChanged { from, ttl } if from == "bob" && ttl.secs() == Some(30))));
        let second = a.send(id(2), "after", t0).unwrap();
        assert!(matches!(
            &second,
            ChatWire::Message {
                ttl_s: Some(30),
                ..
            }
        ));
        b.receive(second, t0, SystemTime::now());
        let ttls: Vec<_> = events(&mut b)
            .into_iter()
            .filter_map(|e| match e {
                ChatEvent::Message(m) => Some(m.ttl.secs()),
                _ => None,
            })
            .collect();
        assert_eq!(ttls, [None, Some(30)]);
        // The first message never expires; the second does at 30 s.
        b.poll(t0 + Duration::from_secs(30));
        assert_eq!(expired_ids(&events(&mut b)), [id(2)]);
    }

    #[test]
    fn replayed_reordered_duplicated_forged_and_oversize_messages_are_refused() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let now = SystemTime::now();
        let m1 = a.send(id(1), "one", t0).unwrap();
        let m2 = a.send(id(2), "two", t0).unwrap();
        let m3 = a.send(id(3), "three", t0).unwrap();
        assert!(b.receive(m2.clone(), t0, now).is_some());
        // m1 arrives after m2: reordered. m2 again: replayed.
        assert_eq!(b.receive(m1, t0, now), None);
        assert_eq!(b.receive(m2, t0, now), None);
        // A fresh sequence number with a used id: duplicate.
        let dup = ChatWire::Message {
            id: id(2).to_string(),
            seq: 50,
            from: "alice".into(),
            text: "again".into(),
            ttl_s: None,
        };
        assert_eq!(b.receive(dup, t0, now), None);
        let mut forged = m3.clone();
        if let ChatWire::Message { from, .. } = &mut forged {
            *from = "mallory".into();
        }
        assert_eq!(b.receive(forged, t0, now), None);
        let huge = ChatWire::Message {
            id: id(9).to_string(),
            seq: 60,
            from: "alice".into(),
            text: "x".repeat(MAX_TEXT_LEN + 1),
            ttl_s: None,
        };
        assert_eq!(b.receive(huge, t0, now), None);
        let bad_ttl = ChatWire::Message {
            id: id(10).to_string(),
            seq: 61,
            from: "alice".into(),
            text: "x".into(),
            ttl_s: Some(1),
        };
        assert_eq!(b.receive(bad_ttl, t0, now), None);
        let bad_id = ChatWire::Message {
            id: "nope".into(),
            seq: 62,
            from: "alice".into(),
            text: "x".into(),
            ttl_s: None,
        };
        assert_eq!(b.receive(bad_id, t0, now), None);
        // Nothing else was lost: m3 still arrives.
        assert!(b.receive(m3, t0, now).is_some());
        let evs = events(&mut b);
        let rejected: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                ChatEvent::Rejected(r) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            [
                Rejection::Reordered,
                Rejection::Reordered,
                Rejection::Duplicate,
                Rejection::WrongSender,
                Rejection::TooLong,
                Rejection::BadTimer,
                Rejection::Malformed
            ]
        );
        let texts: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                ChatEvent::Message(m) => m.text.get().map(|t| t.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["two", "three"]);
        assert_eq!(b.counters().rejected, 7);
        assert_eq!(b.counters().received, 2);
    }

    #[test]
    fn oversize_and_empty_texts_are_refused_before_sending() {
        let (mut a, _) = pair();
        let t0 = Instant::now();
        let long = "é".repeat(MAX_TEXT_LEN / 2 + 1);
        assert_eq!(
            a.send(id(1), &long, t0),
            Err(MessageError::TooLong { len: long.len() })
        );
        assert_eq!(a.send(id(1), "", t0), Err(MessageError::Empty));
        assert!(events(&mut a).is_empty());
        // Exactly 4 KiB is fine, and it is the first sequence number.
        let ok = a.send(id(1), &"a".repeat(MAX_TEXT_LEN), t0).unwrap();
        assert!(matches!(ok, ChatWire::Message { seq: 1, .. }));
    }

    #[test]
    fn unacknowledged_messages_are_reported_undelivered_at_the_end() {
        let (mut a, mut b) = pair();
        let t0 = Instant::now();
        let m1 = a.send(id(1), "one", t0).unwrap();
        a.send(id(2), "two", t0).unwrap();
        let ack = b.receive(m1, t0, SystemTime::now()).unwrap();
        a.receive(ack, t0, SystemTime::now());
        events(&mut a);
        a.end();
        let undelivered: Vec<_> = events(&mut a)
            .into_iter()
            .filter_map(|e| match e {
                ChatEvent::Undelivered { id } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(undelivered, [id(2)]);
    }

    #[test]
    fn a_timer_from_the_peer_out_of_range_is_refused() {
        let (mut a, mut b) = pair();
        let bad = ChatWire::Timer {
            seq: 1,
            from: "alice".into(),
            ttl_s: Some(86_401),
        };
        b.receive(bad, Instant::now(), SystemTime::now());
        assert_eq!(b.timer(), DisappearingTimer::OFF);
        assert!(matches!(
            events(&mut b).as_slice(),
            [ChatEvent::Rejected(Rejection::BadTimer)]
        ));
        let good = a.set_timer(DisappearingTimer::OFF);
        b.receive(good, Instant::now(), SystemTime::now());
        assert!(matches!(
            events(&mut b).as_slice(),
            [ChatEvent::TimerChanged { .. }]
        ));
    }
}
