//! Real webrtc-rs clients in one room through the SFU, in-process via `Sfu::join`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Received, SentLog, open};
use sotto_sfu::{DropReason, ForwardConfig, JoinError, Sfu, SfuConfig};

const FRAME: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(60);

fn sfu(forward: ForwardConfig) -> Arc<Sfu> {
    Arc::new(
        Sfu::start(SfuConfig {
            workers: 2,
            forward,
            ..SfuConfig::default()
        })
        .unwrap(),
    )
}

fn sfu_with_rooms(max_rooms: usize) -> Arc<Sfu> {
    Arc::new(
        Sfu::start(SfuConfig {
            workers: 2,
            max_rooms,
            ..SfuConfig::default()
        })
        .unwrap(),
    )
}

/// Joins `levels.len()` clients (KIDs 0..) to `room`, each offering `slots` audio m-lines.
async fn join_all(sfu: &Arc<Sfu>, room: &str, slots: usize, levels: &[u8]) -> Vec<Client> {
    let mut clients = Vec::new();
    for (kid, level) in levels.iter().enumerate() {
        let (client, offer) = Client::new(kid as u64, slots, *level).await;
        let s = Arc::clone(sfu);
        let room = room.to_owned();
        let answer = tokio::task::spawn_blocking(move || s.join(&room, &format!("m{kid}"), &offer))
            .await
            .unwrap()
            .unwrap();
        client.accept(answer).await;
        clients.push(client);
    }
    clients
}

/// Receives until `done` says so over everything received so far, or panics after PATIENCE.
async fn receive_until(
    client: &mut Client,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, client.packets.recv()).await {
            Ok(Some(p)) => got.push(p),
            _ => panic!(
                "member {} timed out after {} packets",
                client.kid,
                got.len()
            ),
        }
    }
    got
}

/// KID of each received packet, checking that the payload is byte for byte one that another
/// member sealed and sent.
fn senders(client: &Client, got: &[Received], log: &SentLog, members: u64) -> Vec<u64> {
    let log = log.lock().unwrap();
    got.iter()
        .map(|p| {
            let sent_by = *log
                .get(&p.payload)
                .expect("every payload is byte-identical to one a member sent");
            let (kid, plain) = open(&p.payload, members).expect("authenticates under a member key");
            assert_eq!(kid, sent_by, "the SFrame KID names the sender");
            assert!(plain.starts_with(format!("member {kid} frame ").as_bytes()));
            assert_ne!(kid, client.kid, "never its own media");
            kid
        })
        .collect()
}

fn count_by(kids: &[u64]) -> HashMap<u64, usize> {
    let mut m = HashMap::new();
    for k in kids {
        *m.entry(*k).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_receive_every_other_member_byte_identical() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    let mut clients = join_all(&sfu, "room", 3, &[30, 30, 30]).await;
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
    }
    for c in clients.iter_mut() {
        let me = c.kid;
        let log2 = Arc::clone(&log);
        let got = receive_until(c, |got| {
            let kids: Vec<u64> = {
                let log = log2.lock().unwrap();
                got.iter()
                    .filter_map(|p| log.get(&p.payload).copied())
                    .collect()
            };
            let counts = count_by(&kids);
            (0..3)
                .filter(|k| *k != me)
                .all(|k| counts.get(&k).is_some_and(|n| *n >= 25))
        })
        .await;
        let kids = senders(c, &got, &log, 3);
        let counts = count_by(&kids);
        assert_eq!(counts.len(), 2, "member {me} hears both others: {counts:?}");
    }
    for c in &clients {
        c.stop_sending();
    }
    let text = sfu.render_metrics();
    assert!(text.contains("sotto_sfu_participants 3\n"), "{text}");
    assert!(
        sfu.metrics()
            .packets_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 150
    );
    for c in &clients {
        let _ = c.pc.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_each_hear_the_three_loudest_others_and_a_new_loudest_takes_over() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    // Member k at 10 + 15k -dBov: member 0 loudest, member 4 quietest.
    let levels: Vec<u8> = (0..5).map(|k| 10 + 15 * k).collect();
    let mut clients = join_all(&sfu, "top", 3, &levels).await;
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
    }
    let expected = |me: u64, loud: &[u64]| -> BTreeSet<u64> {
        loud.iter().copied().filter(|k| *k != me).take(3).collect()
    };
    // Per receiving track, every sequence number received, in order, across both phases.
    let mut seqs: Vec<HashMap<u32, Vec<u16>>> = vec![HashMap::new(); 5];
    for (i, c) in clients.iter_mut().enumerate() {
        let want = expected(c.kid, &[0, 1, 2, 3, 4]);
        let got = settle(c, &log, &want).await;
        for p in &got {
            seqs[i].entry(p.ssrc).or_default().push(p.seq);
        }
    }
    // Member 4 becomes the loudest by far.
    clients[4]
        .level
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let changed = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        let want = expected(c.kid, &[4, 0, 1, 2, 3]);
        let got = settle(c, &log, &want).await;
        for p in &got {
            seqs[i].entry(p.ssrc).or_default().push(p.seq);
        }
    }
    eprintln!(
        "speaker change settled everywhere after {:?}",
        changed.elapsed()
    );
    for c in &clients {
        c.stop_sending();
    }
    for (i, tracks) in seqs.iter().enumerate() {
        assert_eq!(tracks.len(), 3, "member {i} receives on three tracks");
        for (ssrc, s) in tracks {
            for w in s.windows(2) {
                let step = w[1].wrapping_sub(w[0]);
                // Continuous across speaker changes (a lost loopback packet at most).
                assert!(
                    (1..=3).contains(&step),
                    "member {i} track {ssrc:08x}: {} then {}",
                    w[0],
                    w[1]
                );
            }
        }
    }
    for c in &clients {
        let _ = c.pc.close().await;
    }
}

/// Receives until the last 40 packets came from exactly `want` (every one of them), then
/// returns everything received. Checks payloads as it goes.
async fn settle(client: &mut Client, log: &SentLog, want: &BTreeSet<u64>) -> Vec<Received> {
    let log2 = Arc::clone(log);
    let me = client.kid;
    let got = receive_until(client, |got| {
        if got.len() < 40 {
            return false;
        }
        let log = log2.lock().unwrap();
        let recent: BTreeSet<u64> = got[got.len() - 40..]
            .iter()
            .filter_map(|p| log.get(&p.payload).copied())
            .collect();
        &recent == want
    })
    .await;
    let kids = senders(client, &got, log, 5);
    assert!(kids.iter().all(|k| *k != me));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_sent_to_the_sfu_does_not_disturb_the_call_and_is_counted() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    let mut clients = join_all(&sfu, "noise", 3, &[30, 30, 30]).await;
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
    }
    // Everyone hears the others before the garbage.
    for c in clients.iter_mut() {
        receive_until(c, |got| got.len() >= 20).await;
    }
    let stray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent = 0u64;
    for addr in sfu.local_addrs() {
        for i in 0..300 {
            let len = 1 + (next() % 1200) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match i % 4 {
                // RTP-looking, RTCP-looking, STUN-looking with a bogus ufrag, random.
                0 => d[0] = 0x80,
                1 => {
                    d[0] = 0x81;
                    if d.len() > 1 {
                        d[1] = 200;
                    }
                }
                2 => {
                    d = vec![0, 1, 0, 8, 0x21, 0x12, 0xA4, 0x42];
                    d.extend_from_slice(&[1; 12]);
                    d.extend_from_slice(&[0, 6, 0, 4, b'n', b'o', b':', b'x']);
                }
                _ => {}
            }
            stray.send_to(&d, addr).unwrap();
            sent += 1;
            // In batches the socket buffer holds, so the kernel drops none of them first.
            if sent.is_multiple_of(50) {
                wait_for_drops(&sfu, sent).await;
            }
        }
    }
    // Binding requests naming a live participant's real ufrag, without its password: refused
    // and counted, and the stray address gets no route to that participant.
    let answer = clients[0].pc.remote_description().await.unwrap().sdp;
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_owned();
    let username = format!("{ufrag}:forged");
    for i in 0..100u8 {
        let mut attrs = vec![0, 6];
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // A MESSAGE-INTEGRITY that is not the right one.
        attrs.extend_from_slice(&[0, 8, 0, 20]);
        attrs.extend_from_slice(&[i; 20]);
        let mut d = vec![0, 1];
        d.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        d.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        d.extend_from_slice(&[i; 12]);
        d.extend_from_slice(&attrs);
        for addr in sfu.local_addrs() {
            stray.send_to(&d, addr).unwrap();
            sent += 1;
        }
        if i % 25 == 24 {
            wait_for_drops(&sfu, sent).await;
        }
    }
    // The call keeps flowing: each member again hears both others after the garbage.
    for c in clients.iter_mut() {
        let me = c.kid;
        let log2 = Arc::clone(&log);
        let got = receive_until(c, |got| {
            let log = log2.lock().unwrap();
            let counts = count_by(
                &got.iter()
                    .filter_map(|p| log.get(&p.payload).copied())
                    .collect::<Vec<_>>(),
            );
            (0..3)
                .filter(|k| *k != me)
                .all(|k| counts.get(&k).is_some_and(|n| *n >= 20))
        })
        .await;
        senders(c, &got, &log, 3);
    }
    let dropped = sfu.metrics().dropped(DropReason::UnknownSource);
    assert!(
        dropped >= sent,
        "{dropped} of {sent} garbage datagrams counted"
    );
    assert!(
        sfu.render_metrics()
            .contains(&format!("reason=\"unknown_source\"}} {dropped}\n"))
    );
    for c in &clients {
        c.stop_sending();
        let _ = c.pc.close().await;
    }
}

/// Waits until the SFU has counted `n` datagrams from unknown sources.
async fn wait_for_drops(sfu: &Sfu, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while sfu.metrics().dropped(DropReason::UnknownSource) < n {
        assert!(Instant::now() < deadline, "garbage never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_participant_over_the_limit_is_refused_and_a_fast_sender_is_rate_limited() {
    let sfu = sfu(ForwardConfig {
        max_participants: 2,
        max_pps: 20,
        ..ForwardConfig::default()
    });
    let log: SentLog = Arc::default();
    let mut clients = join_all(&sfu, "small", 3, &[30, 30]).await;
    let (_third, offer) = Client::new(2, 3, 30).await;
    let s = Arc::clone(&sfu);
    let refused = tokio::task::spawn_blocking(move || s.join("small", "m2", &offer))
        .await
        .unwrap();
    assert_eq!(refused, Err(JoinError::RoomFull { limit: 2 }));
    // Member 0 sends 100 packets a second against a limit of 20.
    clients[0].start_sending(Duration::from_millis(10), Arc::clone(&log));
    let started = Instant::now();
    let got = receive_until(&mut clients[1], |got| got.len() >= 30).await;
    let elapsed = started.elapsed();
    senders(&clients[1], &got, &log, 2);
    // 30 packets at 20 a second need more than one second; unlimited they take 0.3 s.
    assert!(elapsed > Duration::from_millis(1000), "{elapsed:?}");
    assert!(sfu.metrics().dropped(DropReason::RateLimit) > 0);
    // Room ids and limits are per room: another room still opens.
    let (other, offer) = Client::new(5, 3, 30).await;
    let s = Arc::clone(&sfu);
    let answer = tokio::task::spawn_blocking(move || s.join("other", "m5", &offer))
        .await
        .unwrap()
        .unwrap();
    other.accept(answer).await;
    assert!(sfu.leave("other", "m5"));
    assert!(!sfu.leave("other", "m5"));
    // Rooms: with a limit of one, a second room is refused until the first empties.
    let one = sfu_with_rooms(1);
    let (_a, offer_a) = Client::new(6, 3, 30).await;
    let (_b, offer_b) = Client::new(7, 3, 30).await;
    let o = Arc::clone(&one);
    let offer_b2 = offer_b.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        (o.join("a", "m6", &offer_a), o.join("b", "m7", &offer_b2))
    })
    .await
    .unwrap();
    assert!(first.is_ok());
    assert_eq!(second, Err(JoinError::TooManyRooms { limit: 1 }));
    assert!(one.leave("a", "m6"));
    let o = Arc::clone(&one);
    let third = tokio::task::spawn_blocking(move || o.join("b", "m7", &offer_b))
        .await
        .unwrap();
    assert!(third.is_ok());
    let _ = other.pc.close().await;
    clients[0].stop_sending();
    for c in &clients {
        let _ = c.pc.close().await;
    }
}

/// How much of `pcm` is a sine at `hz` (1 for a pure tone, near 0 for noise or silence).
fn tone_share(pcm: &[i16], hz: f64) -> f64 {
    let (mut s, mut c, mut energy) = (0.0, 0.0, 0.0);
    for (i, x) in pcm.iter().enumerate() {
        let x = f64::from(*x);
        let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0;
        s += x * phase.sin();
        c += x * phase.cos();
        energy += x * x;
    }
    if energy == 0.0 {
        return 0.0;
    }
    (s * s + c * c) / (energy * pcm.len() as f64 / 2.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_sfu_forwards_does_not_decode_as_the_senders_tone() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    let mut clients = join_all(&sfu, "tone", 3, &[30, 30]).await;
    // Member 0 sends real Opus frames of a 440 Hz tone, sealed.
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    clients[0].start_sending_with(FRAME, Arc::clone(&log), move |n| {
        let pcm: Vec<i16> = (0..960)
            .map(|i| {
                let t = (n * 960 + i) as f64 / 48_000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect();
        let mut out = vec![0u8; 400];
        let len = encoder.encode(&pcm, &mut out).unwrap();
        out.truncate(len);
        out
    });
    let got = receive_until(&mut clients[1], |got| got.len() >= 60).await;
    let mut opened = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut forwarded = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let (mut tone_after_opening, mut tone_as_forwarded) = (0, 0);
    let mut pcm = vec![0i16; 5760];
    for (i, p) in got.iter().enumerate() {
        assert_eq!(
            log.lock().unwrap().get(&p.payload),
            Some(&0),
            "the sealed bytes"
        );
        // What a member does: open the frame, then decode it.
        let (kid, frame) = open(&p.payload, 2).unwrap();
        assert_eq!(kid, 0);
        let n = opened.decode(&frame, &mut pcm, false).unwrap();
        if i >= 10 && tone_share(&pcm[..n], 440.0) > 0.5 {
            tone_after_opening += 1;
        }
        // What the SFU (or a tap on it) has: the forwarded payload, fed straight to Opus.
        if let Ok(n) = forwarded.decode(&p.payload, &mut pcm, false)
            && tone_share(&pcm[..n], 440.0) > 0.5
        {
            tone_as_forwarded += 1;
        }
    }
    assert!(
        tone_after_opening >= 40,
        "{tone_after_opening} frames carry the tone once opened"
    );
    assert_eq!(
        tone_as_forwarded, 0,
        "the forwarded payload is not the tone"
    );
    clients[0].stop_sending();
    for c in &clients {
        let _ = c.pc.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn video_reaches_every_other_member_and_a_pli_reaches_only_its_publisher() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    let mut clients = Vec::new();
    for kid in 0..3u64 {
        let (client, offer) = Client::with_video(kid, 3, 30, 2).await;
        let s = Arc::clone(&sfu);
        let answer =
            tokio::task::spawn_blocking(move || s.join("video", &format!("m{kid}"), &offer))
                .await
                .unwrap()
                .unwrap();
        client.accept(answer).await;
        clients.push(client);
    }
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
        c.start_sending_video(Duration::from_millis(33), Arc::clone(&log));
    }
    // Each member gets both others' video, byte-identical, and none of its own.
    let mut video_ssrc_of = HashMap::new();
    for c in clients.iter_mut() {
        let me = c.kid;
        let log2 = Arc::clone(&log);
        let got = receive_until(c, |got| {
            let log = log2.lock().unwrap();
            let counts = count_by(
                &got.iter()
                    .filter(|p| p.video)
                    .filter_map(|p| log.get(&p.payload).copied())
                    .collect::<Vec<_>>(),
            );
            (0..3u64)
                .filter(|k| *k != me)
                .all(|k| counts.get(&(100 + k)).is_some_and(|n| *n >= 15))
        })
        .await;
        let log = log.lock().unwrap();
        for p in got.iter().filter(|p| p.video) {
            let kid = *log.get(&p.payload).expect("byte-identical video payload");
            let (opened, plain) = open(&p.payload, 3).unwrap();
            assert_eq!(opened, kid);
            assert!(plain.starts_with(format!("member {} video ", kid - 100).as_bytes()));
            assert_ne!(kid, 100 + me);
            video_ssrc_of.insert((me, kid - 100), p.ssrc);
        }
    }
    // Member 1 asks for a keyframe on the track that carries member 0's video.
    let before = sfu
        .metrics()
        .keyframe_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let at_0 = clients[0]
        .keyframe_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let at_2 = clients[2]
        .keyframe_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let ssrc = video_ssrc_of[&(1, 0)];
    let track = {
        let tracks = clients[1].remote_video.lock().unwrap().clone();
        let mut found = None;
        for t in tracks {
            if t.ssrcs().await.contains(&ssrc) {
                found = Some(t);
            }
        }
        found.expect("the remote track carrying member 0's video")
    };
    track
        .write_rtcp(vec![Box::new(
            rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            },
        )])
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while clients[0]
        .keyframe_requests
        .load(std::sync::atomic::Ordering::SeqCst)
        == at_0
    {
        assert!(Instant::now() < deadline, "the PLI never reached member 0");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Exactly one request relayed, to member 0 only.
    assert_eq!(
        sfu.metrics()
            .keyframe_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    assert_eq!(
        clients[2]
            .keyframe_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        at_2
    );
    for c in &clients {
        c.stop_sending();
        let _ = c.pc.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_a_loud_member_leaves_its_slots_go_to_the_next_speakers() {
    let sfu = sfu(ForwardConfig {
        audio_slots: 2,
        ..ForwardConfig::default()
    });
    let log: SentLog = Arc::default();
    // Member 0 loudest, then 1, 2, 3.
    let mut clients = join_all(&sfu, "leave", 2, &[10, 25, 40, 55]).await;
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
    }
    let before: [&[u64]; 4] = [&[1, 2], &[0, 2], &[0, 1], &[0, 1]];
    for (c, want) in clients.iter_mut().zip(before) {
        settle(c, &log, &want.iter().copied().collect()).await;
    }
    let s = Arc::clone(&sfu);
    assert!(
        tokio::task::spawn_blocking(move || s.leave("leave", "m0"))
            .await
            .unwrap()
    );
    clients[0].stop_sending();
    assert!(sfu.render_metrics().contains("sotto_sfu_participants 3\n"));
    let after: [&[u64]; 3] = [&[2, 3], &[1, 3], &[1, 2]];
    for (c, want) in clients.iter_mut().skip(1).zip(after) {
        settle(c, &log, &want.iter().copied().collect()).await;
    }
    for c in &clients {
        c.stop_sending();
        let _ = c.pc.close().await;
    }
}

/// A UDP relay between one client and the SFU that drops every third large SRTP packet
/// towards the client (its video), as a congested downlink would.
async fn lossy_downlink(sfu_addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let client_side = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let sfu_side = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = client_side.local_addr().unwrap();
    let client_addr = Arc::new(std::sync::Mutex::new(None));
    {
        let (c, s, who) = (
            Arc::clone(&client_side),
            Arc::clone(&sfu_side),
            Arc::clone(&client_addr),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = c.recv_from(&mut buf).await {
                *who.lock().unwrap() = Some(from);
                let _ = s.send_to(&buf[..n], sfu_addr).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut large = 0u64;
        while let Ok((n, _)) = sfu_side.recv_from(&mut buf).await {
            let srtp = (128..=191).contains(&buf[0]);
            if srtp && n > 500 {
                large += 1;
                if large.is_multiple_of(3) {
                    continue;
                }
            }
            let to = *client_addr.lock().unwrap();
            if let Some(to) = to {
                let _ = client_side.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_losing_video_packets_keeps_audio_and_loses_video_others_keep_both() {
    let sfu = sfu(ForwardConfig::default());
    let log: SentLog = Arc::default();
    let mut clients = Vec::new();
    for kid in 0..3u64 {
        let (client, offer) = Client::with_video(kid, 3, 30, 2).await;
        let s = Arc::clone(&sfu);
        let mut answer =
            tokio::task::spawn_blocking(move || s.join("lossy", &format!("m{kid}"), &offer))
                .await
                .unwrap()
                .unwrap();
        if kid == 2 {
            // Member 2 reaches the SFU through a lossy relay: point its candidate there.
            let sfu_addr = sfu
                .local_addrs()
                .into_iter()
                .find(|a| answer.contains(&format!("{} {} typ host", a.ip(), a.port())))
                .expect("the answer names a worker");
            let relay = lossy_downlink(sfu_addr).await;
            answer = answer.replace(
                &format!("{} {} typ host", sfu_addr.ip(), sfu_addr.port()),
                &format!("{} {} typ host", relay.ip(), relay.port()),
            );
        }
        client.accept(answer).await;
        clients.push(client);
    }
    for c in &clients {
        c.start_sending(FRAME, Arc::clone(&log));
        c.start_sending_video(Duration::from_millis(33), Arc::clone(&log));
    }
    let deadline = Instant::now() + PATIENCE;
    while sfu.metrics().dropped(DropReason::Bandwidth) < 10 {
        assert!(
            Instant::now() < deadline,
            "the lossy receiver's video never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What member 2 got before the pause does not count.
    while clients[2].packets.try_recv().is_ok() {}
    // Member 2 still hears both others, and gets (almost) no video now.
    let log2 = Arc::clone(&log);
    let got = receive_until(&mut clients[2], |got| {
        let log = log2.lock().unwrap();
        let counts = count_by(
            &got.iter()
                .filter(|p| !p.video)
                .filter_map(|p| log.get(&p.payload).copied())
                .collect::<Vec<_>>(),
        );
        [0, 1]
            .iter()
            .all(|k| counts.get(k).is_some_and(|n| *n >= 40))
    })
    .await;
    let audio = got.iter().filter(|p| !p.video).count();
    let video = got.iter().filter(|p| p.video).count();
    // While paused (5 s from the last lossy report) nothing but stragglers arrives: 80 audio
    // packets take 0.8 s, in which two publishers would send about 48 video packets.
    assert!(
        video < 10,
        "{video} video packets beside {audio} audio packets"
    );
    // Member 0's downlink is clean: it gets member 1's video all along.
    let log2 = Arc::clone(&log);
    receive_until(&mut clients[0], |got| {
        let log = log2.lock().unwrap();
        got.iter()
            .filter(|p| p.video && log.get(&p.payload) == Some(&101))
            .count()
            >= 20
    })
    .await;
    for c in &clients {
        c.stop_sending();
        let _ = c.pc.close().await;
    }
}
