//! Rooms of several [`GroupKeys`] wired together in memory, with time passed in by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;
use crate::sframe::{CipherSuite, Header, SenderContext, SframeError};

const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

fn slot(n: u8) -> Slot {
    Slot::new(n).unwrap()
}

/// Members by slot, and a router for what they output.
struct Room {
    members: BTreeMap<Slot, GroupKeys>,
    /// Acks from these members are kept back (in `held_acks`) instead of delivered.
    hold_acks_from: BTreeSet<Slot>,
    held_acks: Vec<(Slot, Slot, Vec<u8>)>,
    /// Every bundle delivered: (from, to, gen).
    bundles: Vec<(Slot, Slot, u64)>,
    /// Every secret each member was given, as an eavesdropper would keep them.
    given: BTreeMap<Slot, Vec<GroupSecret>>,
    /// Every switch: (member, gen, when).
    switches: Vec<(Slot, u64, Instant)>,
}

impl Room {
    fn new() -> Self {
        Room {
            members: BTreeMap::new(),
            hold_acks_from: BTreeSet::new(),
            held_acks: Vec::new(),
            bundles: Vec::new(),
            given: BTreeMap::new(),
            switches: Vec::new(),
        }
    }

    /// `n` members joining one after another (slots 1..=n).
    fn with(n: u8, now: Instant) -> Self {
        let mut room = Room::new();
        for s in 1..=n {
            room.join(now, slot(s));
        }
        // The joins' own switches are setup, not what tests look at.
        room.switches.clear();
        room
    }

    fn member(&mut self, s: u8) -> &mut GroupKeys {
        self.members.get_mut(&slot(s)).unwrap()
    }

    fn join(&mut self, now: Instant, new: Slot) {
        let mut keys = GroupKeys::new(SUITE, new).unwrap();
        for (&s, m) in self.members.iter_mut() {
            m.member_joined(now, new, JoinKind::NewJoiner).unwrap();
            keys.member_joined(now, s, JoinKind::AlreadyPresent)
                .unwrap();
        }
        self.members.insert(new, keys);
        self.deliver(now);
    }

    /// `gone` leaves: it stops taking part but is returned with every key it had.
    fn leave(&mut self, now: Instant, gone: Slot) -> GroupKeys {
        let leaver = self.members.remove(&gone).unwrap();
        for m in self.members.values_mut() {
            m.member_left(now, gone).unwrap();
        }
        self.deliver(now);
        leaver
    }

    /// Runs every output until none is left.
    fn deliver(&mut self, now: Instant) {
        loop {
            let mut outs = Vec::new();
            for (&s, m) in self.members.iter_mut() {
                while let Some(o) = m.poll_output() {
                    outs.push((s, o));
                }
            }
            if outs.is_empty() {
                return;
            }
            for (from, out) in outs {
                match out {
                    GroupOutput::SendBundle { to_slot, body } => {
                        let bundle = KeyBundle::parse(&body).unwrap();
                        self.bundles.push((from, to_slot, bundle.generation));
                        if let Some(to) = self.members.get_mut(&to_slot) {
                            self.given.entry(to_slot).or_default().push(bundle.secret);
                            to.bundle_received(now, from, &body).unwrap();
                        }
                    }
                    GroupOutput::SendAck { to_slot, body } => {
                        if self.hold_acks_from.contains(&from) {
                            self.held_acks.push((from, to_slot, body));
                        } else if let Some(to) = self.members.get_mut(&to_slot) {
                            to.ack_received(now, from, &body).unwrap();
                        }
                    }
                    GroupOutput::SwitchedSendKey { generation } => {
                        self.switches.push((from, generation, now))
                    }
                    GroupOutput::Event(_) => {}
                }
            }
        }
    }

    fn release_acks(&mut self, now: Instant) {
        self.release_acks_of(now, |_, _| true);
    }

    /// Delivers the held acks of the generations `pick` chooses.
    fn release_acks_of(&mut self, now: Instant, pick: impl Fn(Slot, u64) -> bool) {
        let (go, keep) = std::mem::take(&mut self.held_acks)
            .into_iter()
            .partition(|(_, to, body)| pick(*to, KeyAck::parse(body).unwrap().generation));
        self.held_acks = keep;
        for (from, to, body) in go {
            if let Some(m) = self.members.get_mut(&to) {
                m.ack_received(now, from, &body).unwrap();
            }
        }
        self.deliver(now);
    }

    fn timeout(&mut self, now: Instant) {
        for m in self.members.values_mut() {
            m.handle_timeout(now).unwrap();
        }
        self.deliver(now);
    }

    fn switches_of(&self, s: u8) -> Vec<u64> {
        self.switches
            .iter()
            .filter(|(m, _, _)| *m == slot(s))
            .map(|(_, g, _)| *g)
            .collect()
    }
}

fn opened(outcome: Result<OpenOutcome, GroupError>) -> Option<OpenedFrame> {
    match outcome {
        Ok(OpenOutcome::Opened(o)) => Some(o),
        _ => None,
    }
}

/// Whether `keys` gets `frame`'s plaintext in any way: at once, or released later once
/// everything it holds has run out of time.
fn ever_opens(keys: &mut GroupKeys, now: Instant, frame: &[u8]) -> bool {
    if opened(keys.open(now, frame)).is_some() {
        return true;
    }
    keys.handle_timeout(now + Duration::from_secs(5)).unwrap();
    keys.poll_released().is_some()
}

/// Whether anyone holding every secret `s` was ever given (ratcheted forward too, under any
/// KID) can open `frame`: what a leaver or joiner that keeps its keys could do by hand.
fn secrets_open(room: &Room, s: Slot, frame: &[u8]) -> bool {
    let kid = Header::parse(frame).unwrap().0.kid;
    room.given.get(&s).into_iter().flatten().any(|secret| {
        let mut secret = secret.clone();
        (0..=MAX_DERIVE).any(|_| {
            let mut rx = crate::sframe::ReceiverContext::new();
            rx.add_key(SUITE, kid, secret.as_bytes()).unwrap();
            let ok = rx.decrypt_to_vec(&[], frame).is_ok();
            secret = secret.ratchet().unwrap();
            ok
        })
    })
}

fn kid_of(frame: &[u8]) -> GroupKid {
    GroupKid::parse(Header::parse(frame).unwrap().0.kid).unwrap()
}

#[test]
fn four_members_open_each_others_audio_and_video() {
    let now = Instant::now();
    let mut room = Room::with(4, now);
    for round in 0..3u8 {
        for s in 1..=4u8 {
            let generation = room.member(s).send_generation();
            for kind in [KeyKind::Audio, KeyKind::Video] {
                let payload = [s, round, kind.bits(), 0xee];
                let frame = room.member(s).seal(kind, &payload).unwrap();
                let kid = kid_of(&frame);
                assert_eq!(
                    (kid.slot, kid.generation, kid.kind),
                    (slot(s), generation, kind)
                );
                for r in (1..=4u8).filter(|r| *r != s) {
                    let o = opened(room.member(r).open(now, &frame))
                        .unwrap_or_else(|| panic!("{r} could not open {s}'s {kind:?}"));
                    assert_eq!((o.slot, o.kind, o.generation), (slot(s), kind, generation));
                    assert_eq!(o.payload, payload);
                }
            }
        }
    }
    for r in 1..=4u8 {
        for s in (1..=4u8).filter(|s| *s != r) {
            let st = room.member(r).stats(slot(s)).unwrap();
            assert_eq!(st.frames_decrypted, 6, "{r} from {s}");
            assert_eq!(
                (st.decrypt_failures, st.unknown_key, st.held, st.replays),
                (0, 0, 0, 0)
            );
        }
    }
    // Each member ratcheted once per later joiner: the first is at generation 3.
    assert_eq!(room.member(1).send_generation(), 3);
    assert_eq!(room.member(4).send_generation(), 0);
}

#[test]
fn existing_members_derive_a_joins_ratchet_without_a_bundle() {
    let now = Instant::now();
    let mut room = Room::with(3, now);
    let before = room.bundles.len();
    room.join(now, slot(4));
    // Only the joiner was sent keys: one bundle from each member, and its own to each.
    let new: Vec<_> = room.bundles[before..].to_vec();
    assert_eq!(new.len(), 6);
    assert!(
        new.iter()
            .all(|(from, to, _)| *from == slot(4) || *to == slot(4))
    );
    let frame = room.member(1).seal(KeyKind::Audio, b"after").unwrap();
    assert_eq!(kid_of(&frame).generation, 3);
    // Member 2 was given generation 1 of member 1's key and derives 3 itself (two steps).
    assert_eq!(room.member(2).keyring().generations(slot(1)), vec![1]);
    let o = opened(room.member(2).open(now, &frame)).unwrap();
    assert_eq!(o.payload, b"after");
    assert_eq!(room.member(2).keyring().generations(slot(1)), vec![3]);
    assert_eq!(room.member(2).stats(slot(1)).unwrap().decrypt_failures, 0);
}

#[test]
fn a_leaver_with_all_its_keys_opens_nothing_after_the_switch_on_acks() {
    let now = Instant::now();
    let mut room = Room::with(4, now);
    let before = room.member(1).send_generation();
    let gens: Vec<u64> = (1..=3u8)
        .map(|s| room.member(s).send_generation())
        .collect();
    let sent = room.bundles.len();
    let mut leaver = room.leave(now, slot(4));
    // Every remaining member acked at once: all switched without waiting.
    for s in 1..=3u8 {
        assert_eq!(room.switches_of(s).len(), 1, "member {s}");
        assert_eq!(room.member(s).pending_generation(), None);
    }
    assert_eq!(room.member(1).send_generation(), before + 1);
    // The fresh keys went to the three others only.
    let fresh = &room.bundles[sent..];
    assert_eq!(fresh.len(), 6);
    assert!(
        fresh
            .iter()
            .all(|(from, to, g)| *to != slot(4) && *g == gens[from.get() as usize - 1] + 1)
    );
    for s in 1..=3u8 {
        for kind in [KeyKind::Audio, KeyKind::Video, KeyKind::Chat] {
            let frame = room.member(s).seal(kind, b"secret").unwrap();
            assert!(
                !ever_opens(&mut leaver, now, &frame),
                "leaver opened {s}'s {kind:?}"
            );
            for r in (1..=3u8).filter(|r| *r != s) {
                assert!(opened(room.member(r).open(now, &frame)).is_some());
            }
        }
        // Its keys of the leaver are gone.
        assert!(room.member(s).keyring().generations(slot(4)).is_empty());
        assert!(room.member(s).stats(slot(4)).is_none());
    }
}

#[test]
fn the_switch_happens_at_two_seconds_when_a_member_never_acks() {
    let t0 = Instant::now();
    let mut room = Room::with(4, t0);
    room.hold_acks_from.insert(slot(3));
    let before = room.member(1).send_generation();
    let mut leaver = room.leave(t0, slot(4));
    assert_eq!(room.member(1).pending_generation(), Some(before + 1));
    assert_eq!(room.member(1).switch_deadline(), Some(t0 + SWITCH_TIMEOUT));
    // Frames sent before the switch still use the old key (the leaver may open those).
    let early = room.member(1).seal(KeyKind::Audio, b"early").unwrap();
    assert_eq!(kid_of(&early).generation, before);
    room.timeout(t0 + SWITCH_TIMEOUT - Duration::from_millis(1));
    assert!(room.switches_of(1).is_empty());
    room.timeout(t0 + SWITCH_TIMEOUT);
    assert_eq!(room.switches_of(1), vec![before + 1]);
    // Member 3's own key was acked by the others, so it switched at once.
    let when: Vec<(Slot, Instant)> = room.switches.iter().map(|(m, _, t)| (*m, *t)).collect();
    assert_eq!(
        when,
        vec![
            (slot(3), t0),
            (slot(1), t0 + SWITCH_TIMEOUT),
            (slot(2), t0 + SWITCH_TIMEOUT)
        ]
    );
    let late = room.member(1).seal(KeyKind::Audio, b"late").unwrap();
    assert!(!ever_opens(&mut leaver, t0 + SWITCH_TIMEOUT, &late));
    assert!(!secrets_open(&room, slot(4), &late));
    assert!(
        secrets_open(&room, slot(4), &early),
        "the check itself must work"
    );
    // The silent member has the key all the same.
    assert!(opened(room.member(3).open(t0 + SWITCH_TIMEOUT, &late)).is_some());
}

#[test]
fn a_joiner_opens_none_of_the_ciphertext_recorded_before_it_came() {
    let now = Instant::now();
    let mut room = Room::with(3, now);
    let mut recorded = Vec::new();
    for s in 1..=3u8 {
        for kind in [KeyKind::Audio, KeyKind::Video, KeyKind::Control] {
            recorded.push(room.member(s).seal(kind, b"before").unwrap());
        }
    }
    room.join(now, slot(4));
    // Recorded frames first (nothing known yet), then live ones, then the recording again.
    for frame in &recorded {
        assert!(opened(room.member(4).open(now, frame)).is_none());
    }
    for s in 1..=3u8 {
        let live = room.member(s).seal(KeyKind::Audio, b"live").unwrap();
        assert_eq!(
            opened(room.member(4).open(now, &live)).unwrap().payload,
            b"live"
        );
    }
    for frame in &recorded {
        assert!(!ever_opens(room.member(4), now, frame));
        assert!(!secrets_open(&room, slot(4), frame));
    }
    assert!(room.member(4).poll_released().is_none());
    let unknown: u64 = (1..=3u8)
        .map(|s| room.member(4).stats(slot(s)).unwrap().unknown_key)
        .sum();
    assert_eq!(unknown, 2 * recorded.len() as u64);
}

#[test]
fn two_leaves_in_quick_succession_make_one_switch_with_the_first_deadline() {
    let t0 = Instant::now();
    let mut room = Room::with(5, t0);
    room.hold_acks_from.insert(slot(3));
    let before = room.member(1).send_generation();
    let gens: Vec<u64> = (1..=3u8)
        .map(|s| room.member(s).send_generation())
        .collect();
    let mut first = room.leave(t0, slot(4));
    let t1 = t0 + Duration::from_millis(300);
    let mut second = room.leave(t1, slot(5));
    // The second leaver was given the first fresh key; it was replaced, the deadline kept.
    assert!(
        room.bundles
            .iter()
            .any(|&(from, to, generation)| from == slot(1)
                && to == slot(5)
                && generation == before + 1)
    );
    assert_eq!(room.member(1).pending_generation(), Some(before + 2));
    assert_eq!(room.member(1).switch_deadline(), Some(t0 + SWITCH_TIMEOUT));
    // Member 3's late acks of the replaced key do not count for the new one.
    room.release_acks_of(t1, |to, g| {
        gens.get(to.get() as usize - 1)
            .is_some_and(|before| g == before + 1)
    });
    assert!(room.switches_of(1).is_empty());
    room.timeout(t0 + SWITCH_TIMEOUT - Duration::from_millis(1));
    // Member 3 never acks, so 1 and 2 wait; 3's own keys were acked at once, each time.
    assert!(room.switches_of(1).is_empty() && room.switches_of(2).is_empty());
    assert_eq!(room.switches_of(3).len(), 2);
    room.timeout(t0 + SWITCH_TIMEOUT);
    for s in 1..=3u8 {
        let generation = room.member(s).send_generation();
        if s != 3 {
            assert_eq!(
                room.switches_of(s),
                vec![generation],
                "member {s}: one switch"
            );
        }
        let frame = room.member(s).seal(KeyKind::Audio, b"after both").unwrap();
        assert!(!ever_opens(&mut first, t0 + SWITCH_TIMEOUT, &frame));
        assert!(!ever_opens(&mut second, t0 + SWITCH_TIMEOUT, &frame));
        assert!(!secrets_open(&room, slot(4), &frame));
        assert!(!secrets_open(&room, slot(5), &frame));
        for r in (1..=3u8).filter(|r| *r != s) {
            assert!(opened(room.member(r).open(t0 + SWITCH_TIMEOUT, &frame)).is_some());
        }
    }
}

#[test]
fn a_join_during_a_pending_switch_gets_the_pending_key_ratcheted() {
    let t0 = Instant::now();
    let mut room = Room::with(4, t0);
    room.hold_acks_from.insert(slot(3));
    let g = room.member(1).send_generation();
    let mut leaver = room.leave(t0, slot(4));
    assert_eq!(room.member(1).pending_generation(), Some(g + 1));
    let t1 = t0 + Duration::from_millis(100);
    room.join(t1, slot(5));
    // The joiner got only the ratcheted pending key; sending has not moved yet.
    let to_joiner: Vec<u64> = room
        .bundles
        .iter()
        .filter(|(from, to, _)| *from == slot(1) && *to == slot(5))
        .map(|(_, _, generation)| *generation)
        .collect();
    assert_eq!(to_joiner, vec![g + 2]);
    assert_eq!(room.member(1).send_generation(), g);
    let pre = room.member(1).seal(KeyKind::Audio, b"pre").unwrap();
    assert!(!ever_opens(room.member(5), t1, &pre));
    // Member 3's ack of g + 1 (made before the join) still counts: it can derive g + 2.
    assert!(room.switches_of(1).is_empty());
    let t2 = t1 + Duration::from_millis(100);
    room.release_acks(t2);
    assert_eq!(room.switches_of(1), vec![g + 2]);
    let post = room.member(1).seal(KeyKind::Audio, b"post").unwrap();
    for r in [2u8, 3, 5] {
        let o = opened(room.member(r).open(t2, &post)).unwrap_or_else(|| panic!("{r}"));
        assert_eq!(o.payload, b"post");
    }
    assert!(!ever_opens(&mut leaver, t2, &post));
    assert!(!secrets_open(&room, slot(4), &post));
    assert!(secrets_open(&room, slot(5), &post));
    assert!(!secrets_open(&room, slot(5), &pre));
}

#[test]
fn frames_before_the_joiners_bundle_are_held_then_opened() {
    let now = Instant::now();
    let mut a = GroupKeys::new(SUITE, slot(1)).unwrap();
    let mut b = GroupKeys::new(SUITE, slot(2)).unwrap();
    a.member_joined(now, slot(2), JoinKind::NewJoiner).unwrap();
    b.member_joined(now, slot(1), JoinKind::AlreadyPresent)
        .unwrap();
    // A's frames reach B before A's bundle does.
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|i| a.seal(KeyKind::Audio, &[i; 10]).unwrap())
        .collect();
    for f in &frames {
        assert!(matches!(b.open(now, f), Ok(OpenOutcome::Held)));
    }
    assert!(b.poll_released().is_none());
    assert_eq!(b.poll_timeout(), Some(now + HOLD_TIME));
    let later = now + Duration::from_millis(100);
    while let Some(out) = a.poll_output() {
        if let GroupOutput::SendBundle { body, .. } = out {
            b.bundle_received(later, slot(1), &body).unwrap();
        }
    }
    let released: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_released())
        .map(|o| o.payload)
        .collect();
    assert_eq!(released, vec![vec![0u8; 10], vec![1; 10], vec![2; 10]]);
    let st = b.stats(slot(1)).unwrap();
    assert_eq!((st.held, st.frames_decrypted, st.unknown_key), (3, 3, 0));
    // A held frame released is not accepted a second time.
    assert!(matches!(
        b.open(later, &frames[0]),
        Err(GroupError::Sframe(SframeError::Replay { .. }))
    ));
}

fn sealer(secret: &GroupSecret, s: Slot, generation: u64) -> SenderContext {
    let kid = GroupKid::new(generation, s, KeyKind::Audio)
        .unwrap()
        .to_u64();
    SenderContext::new(SUITE, kid, secret.as_bytes()).unwrap()
}

#[test]
fn held_frames_beyond_the_bound_or_the_time_are_dropped_and_counted() {
    let now = Instant::now();
    let s = slot(1);
    let secret = GroupSecret::from_bytes([4; 32]);
    let mut tx = sealer(&secret, s, 0);
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    for i in 0..MAX_HELD_FRAMES {
        let f = tx.encrypt_to_vec(&[], &[i as u8]).unwrap();
        assert!(matches!(ring.open(now, &[], &f), Ok(OpenOutcome::Held)));
    }
    let over = tx.encrypt_to_vec(&[], b"over").unwrap();
    assert_eq!(
        ring.open(now, &[], &over).unwrap_err(),
        GroupError::UnknownKey {
            slot: s,
            generation: 0
        }
    );
    assert_eq!(ring.stats(s).unwrap().unknown_key, 1);
    // Time runs out before the key comes: all dropped, none released afterwards.
    ring.handle_timeout(now + HOLD_TIME);
    assert_eq!(ring.held_frames(s), 0);
    assert_eq!(
        ring.stats(s).unwrap().unknown_key,
        1 + MAX_HELD_FRAMES as u64
    );
    ring.insert(now + HOLD_TIME, s, 0, 0, secret.clone())
        .unwrap();
    assert!(ring.poll_released().is_none());
    // A frame that waited past its time is not opened by a key arriving late either.
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    let late = tx.encrypt_to_vec(&[], b"late").unwrap();
    assert!(matches!(ring.open(now, &[], &late), Ok(OpenOutcome::Held)));
    ring.insert(now + HOLD_TIME, s, 0, 0, secret).unwrap();
    assert!(ring.poll_released().is_none());
    assert_eq!(ring.stats(s).unwrap().unknown_key, 1);
    // Frames too large to hold are dropped at once.
    let big = tx.encrypt_to_vec(&[], &vec![0u8; MAX_HELD_BYTES]).unwrap();
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    assert!(matches!(
        ring.open(now, &[], &big),
        Err(GroupError::UnknownKey { .. })
    ));
}

#[test]
fn out_of_order_bundles_never_overwrite_a_newer_key_and_replays_are_refused() {
    let now = Instant::now();
    let s = slot(7);
    let g3 = GroupSecret::from_bytes([3; 32]);
    let g2 = GroupSecret::from_bytes([2; 32]);
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    ring.insert(now, s, 3, 10, g3.clone()).unwrap();
    // Gen 2 comes later with a newer sequence: kept beside gen 3, replacing nothing.
    assert_eq!(ring.insert(now, s, 2, 11, g2.clone()), Ok(Inserted::New));
    assert_eq!(ring.generations(s), vec![2, 3]);
    // A bundle for gen 3 with another secret does not replace it.
    let imposter = GroupSecret::from_bytes([9; 32]);
    assert_eq!(
        ring.insert(now, s, 3, 12, imposter.clone()),
        Ok(Inserted::AlreadyHeld)
    );
    let mut tx3 = sealer(&g3, s, 3);
    let frame = tx3.encrypt_to_vec(&[], b"three").unwrap();
    assert_eq!(
        opened(ring.open(now, &[], &frame)).unwrap().payload,
        b"three"
    );
    let forged = sealer(&imposter, s, 3)
        .with_counter(100)
        .encrypt_to_vec(&[], b"x")
        .unwrap();
    assert_eq!(
        ring.open(now, &[], &forged).unwrap_err(),
        GroupError::Sframe(SframeError::AuthenticationFailed)
    );
    // Gen 2 still opens (it is the previous generation: frames in flight).
    let f2 = sealer(&g2, s, 2).encrypt_to_vec(&[], b"two").unwrap();
    assert_eq!(opened(ring.open(now, &[], &f2)).unwrap().payload, b"two");
    // The same frame again is a replay.
    assert!(matches!(
        ring.open(now, &[], &frame),
        Err(GroupError::Sframe(SframeError::Replay { .. }))
    ));
    // An older sequence, or a generation below the kept window, is refused.
    assert_eq!(
        ring.insert(now, s, 4, 9, GroupSecret::from_bytes([4; 32])),
        Err(GroupError::StaleBundle { seq: 9, last: 12 })
    );
    assert_eq!(
        ring.insert(now, s, 1, 13, GroupSecret::from_bytes([1; 32])),
        Err(GroupError::StaleGeneration {
            generation: 1,
            floor: 2
        })
    );
    let st = ring.stats(s).unwrap();
    assert_eq!(
        (st.frames_decrypted, st.decrypt_failures, st.replays),
        (2, 1, 1)
    );
    // Gen 3's key was never replaced: another frame of it still opens.
    let again = tx3.encrypt_to_vec(&[], b"three again").unwrap();
    assert!(opened(ring.open(now, &[], &again)).is_some());
}

#[test]
fn members_check_who_sends_what() {
    let now = Instant::now();
    let mut room = Room::with(3, now);
    let mut stranger = GroupKeys::new(SUITE, slot(9)).unwrap();
    stranger
        .member_joined(now, slot(1), JoinKind::AlreadyPresent)
        .unwrap();
    let Some(GroupOutput::SendBundle { body, .. }) = stranger.poll_output() else {
        panic!()
    };
    // A bundle from a non-member, and one whose slot is not its channel's.
    assert_eq!(
        room.member(1).bundle_received(now, slot(9), &body),
        Err(GroupError::UnknownMember(slot(9)))
    );
    assert_eq!(
        room.member(1).bundle_received(now, slot(2), &body),
        Err(GroupError::SlotMismatch {
            from: slot(2),
            claimed: slot(9)
        })
    );
    let ack = KeyAck {
        slot: slot(3),
        generation: 0,
    }
    .encode();
    assert_eq!(
        room.member(1).ack_received(now, slot(2), &ack),
        Err(GroupError::AckNotForUs(slot(3)))
    );
    assert_eq!(
        room.member(1)
            .member_joined(now, slot(2), JoinKind::NewJoiner),
        Err(GroupError::SlotTaken(slot(2)))
    );
    assert_eq!(
        room.member(1).member_left(now, slot(9)),
        Err(GroupError::UnknownMember(slot(9)))
    );
    // Our own frames reflected back are not from a member.
    let mine = room.member(1).seal(KeyKind::Audio, b"me").unwrap();
    assert_eq!(
        room.member(1).open(now, &mine).unwrap_err(),
        GroupError::UnknownMember(slot(1))
    );
}

#[test]
fn garbage_bundles_acks_and_frames_get_errors_never_plaintext() {
    let now = Instant::now();
    let mut room = Room::with(3, now);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1414);
    let m = room.member(1);
    for i in 0..5_000 {
        let len = rng.random_range(0..80);
        let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 && v.len() > 2 {
            // Heads of real bodies and frames of real members, so parsing goes further.
            v[0] = 2;
            v[1] = [1u8, 2][i % 2];
        }
        assert!(m.bundle_received(now, slot(2), &v).is_err() || v.len() == BUNDLE_LEN);
        let _ = m.ack_received(now, slot(2), &v);
        if let Ok(OpenOutcome::Opened(o)) = m.open(now, &v) {
            panic!("random bytes opened: {o:?}");
        }
        let _ = GroupKid::parse(rng.random());
    }
    m.handle_timeout(now + Duration::from_secs(1)).unwrap();
    assert!(m.poll_released().is_none());
    assert_eq!(m.stats(slot(2)).unwrap().frames_decrypted, 0);
    // Real frames still open after all that.
    let f = room.member(2).seal(KeyKind::Audio, b"ok").unwrap();
    assert!(opened(room.member(1).open(now, &f)).is_some());
}

#[test]
fn a_failed_derivation_is_not_a_failure_and_does_not_stick() {
    // A sender switched to a fresh key whose bundle is late: its frames wait, the receiver's
    // own ratchet guess (wrong here) is not counted as a failed frame.
    let now = Instant::now();
    let s = slot(1);
    let old = GroupSecret::from_bytes([1; 32]);
    let fresh = GroupSecret::from_bytes([5; 32]);
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    ring.insert(now, s, 0, 0, old).unwrap();
    let f = sealer(&fresh, s, 1).encrypt_to_vec(&[], b"fresh").unwrap();
    assert!(matches!(ring.open(now, &[], &f), Ok(OpenOutcome::Held)));
    assert_eq!(ring.generations(s), vec![0]);
    ring.insert(now, s, 1, 1, fresh).unwrap();
    assert_eq!(ring.poll_released().unwrap().payload, b"fresh");
    let st = ring.stats(s).unwrap();
    assert_eq!(
        (st.decrypt_failures, st.held, st.frames_decrypted),
        (0, 1, 1)
    );
}

#[test]
fn frames_with_reserved_kinds_are_refused_and_generations_stay_bounded() {
    let now = Instant::now();
    let s = slot(2);
    let secret = GroupSecret::from_bytes([8; 32]);
    let mut ring = Keyring::new(SUITE);
    ring.add_sender(s).unwrap();
    ring.insert(now, s, 0, 0, secret.clone()).unwrap();
    // Same secret, slot and generation, but kind 5: refused before any key is looked up.
    let reserved = (2 << 3) | 5;
    let mut tx = SenderContext::new(SUITE, reserved, secret.as_bytes()).unwrap();
    let frame = tx.encrypt_to_vec(&[], b"x").unwrap();
    assert_eq!(
        ring.open(now, &[], &frame).unwrap_err(),
        GroupError::Kid(KidError::ReservedKind(5))
    );
    // A sender flooding bundles of ever newer generations: at most MAX_GENERATIONS are held,
    // the newest among them, and the one frames use now is kept.
    let f0 = sealer(&secret, s, 0).encrypt_to_vec(&[], b"zero").unwrap();
    assert!(opened(ring.open(now, &[], &f0)).is_some());
    for g in 1..40u64 {
        ring.insert(now, s, g, g, GroupSecret::from_bytes([g as u8; 32]))
            .unwrap();
        let held = ring.generations(s);
        assert!(held.len() <= MAX_GENERATIONS, "{held:?}");
        assert_eq!(held.first(), Some(&0));
        assert_eq!(held.last(), Some(&g));
    }
    let f0 = sealer(&secret, s, 0)
        .with_counter(1)
        .encrypt_to_vec(&[], b"zero")
        .unwrap();
    assert!(opened(ring.open(now, &[], &f0)).is_some());
}

#[test]
fn a_lost_bundle_is_sent_again_until_acked() {
    let now = Instant::now();
    let mut a = GroupKeys::new(SUITE, slot(1)).unwrap();
    let mut b = GroupKeys::new(SUITE, slot(2)).unwrap();
    a.member_joined(now, slot(2), JoinKind::NewJoiner).unwrap();
    b.member_joined(now, slot(1), JoinKind::AlreadyPresent)
        .unwrap();
    // B's bundle reaches A and is acked; A's first bundle to B is lost.
    while let Some(out) = b.poll_output() {
        if let GroupOutput::SendBundle { body, .. } = out {
            a.bundle_received(now, slot(2), &body).unwrap();
        }
    }
    while let Some(out) = a.poll_output() {
        if let GroupOutput::SendAck { body, .. } = out {
            b.ack_received(now, slot(1), &body).unwrap();
        }
    }
    let frame = a.seal(KeyKind::Audio, b"hello").unwrap();
    assert!(matches!(b.open(now, &frame), Ok(OpenOutcome::Held)));
    // Nothing is due before the resend time; at it, the same bundle goes again.
    assert_eq!(a.poll_timeout(), Some(now + RESEND_AFTER));
    assert_eq!(b.poll_timeout(), Some(now + HOLD_TIME));
    a.handle_timeout(now + RESEND_AFTER - Duration::from_millis(1))
        .unwrap();
    assert!(a.poll_output().is_none());
    let t1 = now + RESEND_AFTER;
    a.handle_timeout(t1).unwrap();
    let mut resent = 0;
    let mut acks = Vec::new();
    while let Some(out) = a.poll_output() {
        if let GroupOutput::SendBundle { to_slot, body } = out {
            assert_eq!(to_slot, slot(2));
            resent += 1;
            // Its ack is lost too: B acks the same bundle again when it comes back.
            b.bundle_received(t1, slot(1), &body).unwrap();
            b.bundle_received(t1, slot(1), &body).unwrap();
        }
    }
    assert_eq!((resent, a.bundles_resent()), (1, 1));
    while let Some(out) = b.poll_output() {
        if let GroupOutput::SendAck { body, .. } = out {
            acks.push(body);
        }
    }
    assert_eq!(
        acks.len(),
        2,
        "a resent bundle is acked again, and changes nothing"
    );
    // B can now hear A (the frame held since before the bundle opens too).
    let again = a.seal(KeyKind::Audio, b"again").unwrap();
    assert!(opened(b.open(t1, &again)).is_some());
    // The next resend waits twice as long; the ack ends it.
    assert_eq!(a.poll_timeout(), Some(t1 + RESEND_AFTER * 2));
    a.ack_received(t1, slot(2), &acks[0]).unwrap();
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(t1 + RESEND_MAX * 4).unwrap();
    assert!(a.poll_output().is_none());
}
