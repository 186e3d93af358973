//! Group keys against an attacker who records what the SFU forwards. A tap joins the room as
//! a peer that never runs a handshake and takes the SFU's output, byte for byte, as any
//! member's connection gets it. Two engine members keep their group keys after the call
//! (the test-only `insecure_group_keys_for_tests` handle): one that leaves, and one that joins
//! later. Neither may open what the tap recorded outside its membership: the leaver nothing sent
//! more than 2 s after it left, the joiner nothing from before it joined.

use std::time::{Duration, Instant};

use serde_json::json;
use sotto::call::{CallBuilder, CallEvent, EndReason, GroupKeysTap};
use sotto::group::{GroupKeys, GroupKid, OpenOutcome, Slot};
use sotto::media::{NullSink, ToneSource};
use sotto::sframe::Header;
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use sotto::transport::{SfuTransport, SfuTransportConfig};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{CONNECT, MEDIA, Server, room};

/// A running member: how many others its latest group code covers, and its hang-up.
struct Member {
    others: watch::Receiver<usize>,
    hang_up: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn leave(mut self) {
        if let Some(h) = self.hang_up.take() {
            let _ = h.send(());
        }
        self.done.await.unwrap();
    }
}

fn start(
    url: &str,
    room: &str,
    name: &'static str,
    hz: f64,
    keys: Option<&GroupKeysTap>,
) -> Member {
    let keys = keys.cloned();
    let mut call = CallBuilder::new(url, room)
        .name(name)
        .source(ToneSource::new(hz, 0.3))
        .sink(NullSink::default())
        .configure(move |c| {
            c.group = true;
            c.insecure_group_keys_for_tests = keys;
        })
        .start()
        .unwrap();
    let (others_tx, others) = watch::channel(0);
    let (hang_up, mut hang_up_rx) = oneshot::channel::<()>();
    let done = tokio::spawn({
        async move {
            let mut hung_up = false;
            loop {
                let event = tokio::select! {
                    e = call.next_event() => e,
                    _ = &mut hang_up_rx, if !hung_up => {
                        hung_up = true;
                        assert_eq!(call.hang_up().await, EndReason::LocalHangup, "{name}");
                        continue;
                    }
                };
                match event {
                    Some(CallEvent::GroupSafetyCode { members, .. }) => {
                        others_tx.send_replace(members.len());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
    });
    Member {
        others,
        hang_up: Some(hang_up),
        done,
    }
}

/// Waits until each member's group code covers `others` other members.
async fn until_codes_cover(members: &[&Member], others: usize) {
    for m in members {
        let mut rx = m.others.clone();
        tokio::time::timeout(CONNECT, rx.wait_for(|n| *n == others))
            .await
            .expect("group codes in time")
            .expect("the member runs");
    }
}

/// Joins `room` as a peer that runs no handshake, takes the SFU's output and sends every
/// forwarded frame, with its arrival time, to `out`. Returns once it receives media.
async fn start_tap(url: &str, room: &str, out: mpsc::UnboundedSender<(Instant, Vec<u8>)>) {
    let (signal, mut events) = SignalClient::connect(SignalConfig::new(url, room, "tap"));
    let mut transport = SfuTransport::new(SfuTransportConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        audio_slots: 3,
        ..SfuTransportConfig::default()
    })
    .await
    .unwrap();
    let offer = transport.create_offer().await.unwrap();
    let answer = loop {
        let event = tokio::time::timeout(CONNECT, events.recv())
            .await
            .expect("signaling in time")
            .expect("signaling open");
        match event {
            SignalEvent::Joined { .. } => signal
                .send_to("sfu", &json!({"kind": "sfu_offer", "sdp": offer}))
                .await
                .unwrap(),
            SignalEvent::Message { from, data } if from == "sfu" => {
                let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
                assert_eq!(v["kind"], "sfu_answer", "{v}");
                break v["sdp"].as_str().unwrap().to_owned();
            }
            SignalEvent::ServerError { code, message } => panic!("{code:?}: {message}"),
            _ => {}
        }
    };
    transport.accept_answer(&answer).await.unwrap();
    transport.connected(CONNECT).await.unwrap();
    let mut frames = transport.take_frames().unwrap();
    tokio::spawn(async move {
        // The members' handshake hellos to the tap go unanswered. The client and the
        // transport live as long as this task: the tap stays in the room until the test ends.
        let _keep = (signal, transport);
        loop {
            tokio::select! {
                f = frames.recv() => match f {
                    Some(f) => if out.send((f.arrival, f.payload.to_vec())).is_err() { return },
                    None => return,
                },
                e = events.recv() => if e.is_none() { return },
            }
        }
    });
}

/// The sender slot and key generation a frame names.
fn kid_of(frame: &[u8]) -> (Slot, u64) {
    let (header, _) = Header::parse(frame).unwrap();
    let kid = GroupKid::parse(header.kid).unwrap();
    (kid.slot, kid.generation)
}

/// What a member's `keys` make of the recorded frames `pick` selects, from senders other than
/// itself: (frames tried, frames opened, frames under a generation it holds). The generations
/// are read before any opening.
fn attack(
    keys: &mut GroupKeys,
    recorded: &[(Instant, Vec<u8>)],
    pick: impl Fn(Instant) -> bool,
) -> (usize, usize, usize) {
    let own = keys.slot();
    let frames: Vec<&(Instant, Vec<u8>)> = recorded
        .iter()
        .filter(|(at, f)| pick(*at) && kid_of(f).0 != own)
        .collect();
    let held = frames
        .iter()
        .filter(|(_, f)| {
            let (slot, generation) = kid_of(f);
            keys.keyring().generations(slot).contains(&generation)
        })
        .count();
    let opened = frames
        .iter()
        .filter(|(at, f)| matches!(keys.open(*at, f), Ok(OpenOutcome::Opened(_))))
        .count();
    (frames.len(), opened, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_and_a_joiner_with_a_tap_on_the_sfu_open_nothing_outside_their_membership() {
    let _media = MEDIA.lock().await;
    let server = Server::start_with_sfu().await;
    let (url, room) = (server.ws_url(), room("tap"));
    let (dave_keys, erin_keys) = (GroupKeysTap::new(), GroupKeysTap::new());
    let alice = start(&url, &room, "alice", 440.0, None);
    let bob = start(&url, &room, "bob", 660.0, None);
    let carol = start(&url, &room, "carol", 880.0, None);
    let dave = start(&url, &room, "dave", 550.0, Some(&dave_keys));
    until_codes_cover(&[&alice, &bob, &carol, &dave], 3).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    start_tap(&url, &room, tx).await;
    let mut recorded: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut record_for = async |secs: f64, recorded: &mut Vec<(Instant, Vec<u8>)>| {
        let until = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        while let Ok(Some(f)) = tokio::time::timeout_at(until, rx.recv()).await {
            recorded.push(f);
        }
    };
    // All four talk; then Dave leaves (and keeps his keys), and the three go on.
    record_for(1.5, &mut recorded).await;
    let left = Instant::now();
    dave.leave().await;
    record_for(4.0, &mut recorded).await;
    // Erin joins (keeping her keys); she never saw what came before.
    let joined = Instant::now();
    let erin = start(&url, &room, "erin", 330.0, Some(&erin_keys));
    until_codes_cover(&[&alice, &bob, &carol, &erin], 3).await;
    let keyed = Instant::now();
    record_for(1.5, &mut recorded).await;
    // Erin first: a member erases the keys of whoever leaves, and her keys are wanted as they
    // were in the call.
    for m in [erin, alice, bob, carol] {
        m.leave().await;
    }

    // Dave: his keys opened the frames of his time in the call (the generations he holds are
    // the ones the tap saw then), and nothing sent more than 2 s after he left. Arrival at
    // the tap stands for the sending time, with 0.2 s for the path.
    let dave_keys = dave_keys.keys().expect("dave's keys");
    let mut dave_keys = dave_keys.lock().unwrap();
    let (before, _, held_before) = attack(&mut dave_keys, &recorded, |at| at < left);
    eprintln!("dave, before he left: {before} frames, {held_before} under generations he holds");
    assert!(
        before >= 50 && held_before * 10 >= before * 9,
        "{before} {held_before}"
    );
    let after = left + Duration::from_millis(2200);
    let (tried, opened, held) = attack(&mut dave_keys, &recorded, |at| at > after);
    eprintln!("dave, 2 s after he left: {tried} frames, {opened} opened, {held} held gens");
    assert!(
        tried >= 200,
        "the tap recorded the others after Dave left: {tried}"
    );
    assert_eq!((opened, held), (0, 0));

    // Erin: nothing from before she joined; the frames after her keys came are under
    // generations she holds (the tap and her keys are real).
    let erin_keys = erin_keys.keys().expect("erin's keys");
    let mut erin_keys = erin_keys.lock().unwrap();
    let (tried, opened, held) = attack(&mut erin_keys, &recorded, |at| at < joined);
    eprintln!("erin, before she joined: {tried} frames, {opened} opened, {held} held gens");
    assert!(tried >= 300, "{tried}");
    assert_eq!((opened, held), (0, 0));
    let settled = keyed + Duration::from_millis(500);
    let (since, _, held_since) = attack(&mut erin_keys, &recorded, |at| at > settled);
    eprintln!("erin, once keyed: {since} frames, {held_since} under generations she holds");
    assert!(
        since >= 50 && held_since * 10 >= since * 9,
        "{since} {held_since}"
    );
}
