//! Video in group calls, with the engine's real pipeline (VP8, group video keys, SFrame,
//! WebRTC to the SFU that `sotto-signaling --sfu` hosts, per-member decoding): three members
//! each send a picture tagged with their own number, and each member sees both others'
//! pictures on the sink made for that member's name, never anyone else's, with no decrypt
//! failures; a member that joins late gets a keyframe and sees pictures soon.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CaptureSink, TestServer};
use sotto::call::{Call, CallBuilder, CallEvent, CallStats, EndReason};
use sotto::media::ToneSource;
use sotto::media::video::{
    TestPattern, VideoError, VideoFrame, VideoSink, VideoSource, read_code, write_code,
};
use tokio::sync::oneshot;

const W: u32 = 640;
const H: u32 = 360;
const FPS: u32 = 15;
const WAIT: Duration = Duration::from_secs(30);

/// Pictures each member must see of each other member.
const ENOUGH: u64 = 15;

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sotto=info,sotto_sfu=info,sotto_signaling=warn")
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// The test pattern with the sender's number in the top 4 bits of its barcode (the frame
/// number in the other 12), so a receiver can tell whose picture it decoded.
struct Tagged {
    pattern: TestPattern,
    id: u16,
    n: u16,
}

impl VideoSource for Tagged {
    fn read_frame(&mut self, out: &mut VideoFrame) -> Result<bool, VideoError> {
        let more = self.pattern.read_frame(out)?;
        write_code(out, (self.id << 12) | (self.n & 0x0fff));
        self.n = self.n.wrapping_add(1);
        Ok(more)
    }
    fn frame_rate(&self) -> f64 {
        f64::from(FPS)
    }
    fn size(&self) -> (u32, u32) {
        (W, H)
    }
}

/// What one receiver's sink for one member saw.
#[derive(Debug, Default, Clone)]
struct Shown {
    pictures: u64,
    /// Pictures whose tag named the member the sink is for.
    right: u64,
    /// Pictures whose tag named someone else.
    wrong: u64,
    first: Option<Instant>,
}

type Log = Arc<Mutex<HashMap<String, Shown>>>;

/// The sink a receiver's call makes for the member `name` (whose tag is `expected`).
struct Recording {
    name: String,
    expected: Option<u16>,
    log: Log,
}

impl VideoSink for Recording {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        let mut log = self.log.lock().unwrap();
        let s = log.entry(self.name.clone()).or_default();
        s.pictures += 1;
        s.first.get_or_insert_with(Instant::now);
        if let Some(code) = read_code(frame) {
            if Some(code >> 12) == self.expected {
                s.right += 1;
            } else {
                s.wrong += 1;
            }
        }
        Ok(())
    }
}

fn id_of(name: &str) -> Option<u16> {
    match name {
        "alice" => Some(1),
        "bob" => Some(2),
        "carol" => Some(3),
        _ => None,
    }
}

/// Each member's picture sizes as shown, and how its call ended.
type Outcome = (Vec<(String, u32, u32)>, Option<(EndReason, CallStats)>);

struct Member {
    name: &'static str,
    log: Log,
    started: Instant,
    hang_up: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Outcome>,
}

fn start(server: &TestServer, room: &str, name: &'static str) -> Member {
    let log = Log::default();
    let sinks_log = Arc::clone(&log);
    let call = CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(300.0, 0.3))
        .sink(CaptureSink::default())
        .video_source(Tagged {
            pattern: TestPattern::new(W, H, FPS).unwrap(),
            id: id_of(name).unwrap(),
            n: 0,
        })
        .group_video_sinks(move |member: &str| {
            Ok(Box::new(Recording {
                name: member.to_owned(),
                expected: id_of(member),
                log: Arc::clone(&sinks_log),
            }) as Box<dyn VideoSink>)
        })
        .configure(|c| c.group = true)
        .start()
        .unwrap();
    let (hang_up, rx) = oneshot::channel();
    let done = tokio::spawn(observe(call, name, rx));
    Member {
        name,
        log,
        started: Instant::now(),
        hang_up: Some(hang_up),
        done,
    }
}

async fn observe(
    mut call: Call,
    name: &'static str,
    mut hang_up: oneshot::Receiver<()>,
) -> Outcome {
    let mut sizes = Vec::new();
    let mut ended = None;
    let mut hung_up = false;
    loop {
        let event = tokio::select! {
            e = call.next_event() => e,
            _ = &mut hang_up, if !hung_up => {
                hung_up = true;
                let reason = call.hang_up().await;
                assert_eq!(reason, EndReason::LocalHangup, "{name}");
                continue;
            }
        };
        match event {
            None => break,
            Some(CallEvent::ParticipantVideoSize {
                name,
                width,
                height,
            }) => sizes.push((name, width, height)),
            Some(CallEvent::Ended { reason, stats }) => ended = Some((reason, stats)),
            Some(_) => {}
        }
    }
    (sizes, ended)
}

fn shown(m: &Member, of: &str) -> Shown {
    m.log.lock().unwrap().get(of).cloned().unwrap_or_default()
}

/// Waits until each of `members` has shown `ENOUGH` pictures of every other one.
async fn until_everyone_sees_everyone(members: &[&Member]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let missing: Vec<String> = members
            .iter()
            .flat_map(|m| {
                members
                    .iter()
                    .filter(|o| o.name != m.name)
                    .filter(|o| shown(m, o.name).right < ENOUGH)
                    .map(|o| format!("{} of {}: {:?}", m.name, o.name, shown(m, o.name)))
                    .collect::<Vec<_>>()
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "pictures missing: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_see_each_others_video_and_a_late_joiner_gets_a_keyframe() {
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let room = "group-video";
    let alice = start(&server, room, "alice");
    let bob = start(&server, room, "bob");
    until_everyone_sees_everyone(&[&alice, &bob]).await;

    let carol = start(&server, room, "carol");
    until_everyone_sees_everyone(&[&alice, &bob, &carol]).await;
    let first_of = |from: &str| {
        let at = shown(&carol, from).first.expect("a picture");
        at.saturating_duration_since(carol.started)
    };
    let (of_alice, of_bob) = (first_of("alice"), first_of("bob"));
    println!(
        "late joiner: first picture of alice after {} ms, of bob after {} ms (from its start)",
        of_alice.as_millis(),
        of_bob.as_millis()
    );

    let mut members = [alice, bob, carol];
    for m in &mut members {
        let _ = m.hang_up.take().unwrap().send(());
    }
    for m in members {
        let (sizes, ended) = m.done.await.unwrap();
        let (reason, stats) = ended.expect("ended");
        assert_eq!(reason, EndReason::LocalHangup, "{}", m.name);
        println!(
            "{}: video sent {} ({} keyframes, {} asked for), received {}, shown {}, \
             keyframe requests sent {}, skipped {}",
            m.name,
            stats.video_frames_sent,
            stats.video_keyframes_sent,
            stats.video_keyframes_requested,
            stats.video_frames_received,
            stats.video_frames_rendered,
            stats.video_keyframe_requests_sent,
            stats.video_frames_skipped
        );
        let others: Vec<&str> = ["alice", "bob", "carol"]
            .into_iter()
            .filter(|n| *n != m.name)
            .collect();
        let log = m.log.lock().unwrap().clone();
        // Pictures only on the sinks of the others, each showing that member's tag only.
        let mut sinks: Vec<&str> = log.keys().map(String::as_str).collect();
        sinks.sort();
        assert_eq!(sinks, others, "{}: sinks", m.name);
        for (of, s) in &log {
            assert_eq!(
                s.wrong, 0,
                "{} showed someone else on {of}'s sink: {s:?}",
                m.name
            );
            assert!(s.right >= ENOUGH, "{} of {of}: {s:?}", m.name);
        }
        for other in &others {
            assert!(
                sizes.contains(&(other.to_string(), W, H)),
                "{}: no video size event for {other}: {sizes:?}",
                m.name
            );
            let p = stats
                .participants
                .iter()
                .find(|p| p.name == *other && p.present)
                .unwrap_or_else(|| panic!("{}: no figures for {other}", m.name));
            assert!(
                p.video_frames_decrypted >= ENOUGH,
                "{} of {other}: {p:?}",
                m.name
            );
            assert_eq!(p.video_decrypt_failures, 0, "{} of {other}: {p:?}", m.name);
            assert_eq!(p.decrypt_failures, 0, "{} of {other}: {p:?}", m.name);
            // Every kind counts in frames_decrypted: audio came too.
            assert!(
                p.frames_decrypted > p.video_frames_decrypted,
                "{} of {other}: {p:?}",
                m.name
            );
        }
        assert_eq!(stats.video_decrypt_failures, 0, "{}: {stats:?}", m.name);
        let summed: u64 = stats
            .participants
            .iter()
            .map(|p| p.video_frames_decrypted)
            .sum();
        assert!(stats.video_frames_decrypted >= summed, "{}", m.name);
        assert!(stats.video_frames_sent > 0, "{}", m.name);
        assert!(stats.video_frames_rendered >= 2 * ENOUGH, "{}", m.name);
    }
}

/// `sotto call --group --video test-pattern --video-output DIR/video.y4m`: each member's video
/// lands in `DIR/video-<name>.y4m`, readable, with the pattern's frame numbers in order, and
/// the stats JSON counts it per participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_members_write_each_others_video_to_one_file_per_member() {
    use common::temp_dir;
    use sotto::media::video::Y4mSource;
    let server = TestServer::start_with_sfu().await;
    let dir = temp_dir("cli-group-video");
    let names = ["alice", "bob"];
    let mut children = Vec::new();
    for name in names {
        let mut cmd = video_member(&server.url, "duo-video", name, &dir, "5");
        cmd.arg("--group")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push((name, cmd.spawn().unwrap()));
    }
    for (name, child) in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        common::show(name, &out);
        assert!(out.status.success(), "{name} failed");
    }
    for (name, other) in [("alice", "bob"), ("bob", "alice")] {
        let own = dir.join(name);
        // Only the other member's file: no two-party file, none for ourselves.
        let mut files: Vec<String> = std::fs::read_dir(&own)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".y4m"))
            .collect();
        files.sort();
        assert_eq!(files, [format!("video-{other}.y4m")], "{name}");
        let mut source = Y4mSource::open(own.join(format!("video-{other}.y4m"))).unwrap();
        let mut picture = VideoFrame::black(2, 2).unwrap();
        let mut codes = Vec::new();
        while source.read_frame(&mut picture).unwrap() {
            assert_eq!(picture.size(), (640, 360), "{name}");
            codes.extend(read_code(&picture));
        }
        assert!(
            codes.len() >= 20,
            "{name}: {} pictures of {other}",
            codes.len()
        );
        assert!(
            codes.windows(2).all(|w| w[1] > w[0]),
            "{name}: {other}'s pictures out of order: {codes:?}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(own.join("stats.json")).unwrap())
                .unwrap();
        assert_eq!(report["mode"], "sfu", "{name}: {report}");
        assert_eq!(report["video_decrypt_failures"], 0, "{name}: {report}");
        let p = &report["participants"][0];
        assert_eq!(p["name"], other, "{name}: {report}");
        assert!(p["video_frames_decrypted"].as_u64().unwrap() >= 20, "{p}");
        assert_eq!(p["video_decrypt_failures"], 0, "{p}");
        assert!(
            report["video_frames_decrypted"].as_u64().unwrap()
                >= p["video_frames_decrypted"].as_u64().unwrap(),
            "{report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Which sink of a receiver showed a picture: the two-party one, or a member's in a group.
const TWO_PARTY: &str = "(two-party)";

/// Every picture a receiver showed: when, on which sink, and the sender's tag it carried.
#[derive(Debug, Default)]
struct Timeline {
    pictures: Vec<(Instant, String, Option<u16>)>,
    /// When each sink was finished.
    finished: Vec<(Instant, String)>,
    /// The call's mode (`p2p` or `sfu`) each time it changed, as the stats say.
    modes: Vec<(Instant, &'static str)>,
}

type SharedTimeline = Arc<Mutex<Timeline>>;

/// A sink that adds what it shows to the receiver's timeline.
struct Timed {
    sink: String,
    timeline: SharedTimeline,
}

impl VideoSink for Timed {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        let tag = read_code(frame).map(|c| c >> 12);
        let mut t = self.timeline.lock().unwrap();
        t.pictures.push((Instant::now(), self.sink.clone(), tag));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), VideoError> {
        let mut t = self.timeline.lock().unwrap();
        t.finished.push((Instant::now(), self.sink.clone()));
        Ok(())
    }
}

struct Mover {
    name: &'static str,
    timeline: SharedTimeline,
    hang_up: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Option<(EndReason, CallStats)>>,
}

impl Mover {
    /// Pictures of `of` shown on `sink` since `since`, with the right tag, and with another.
    fn shown(&self, sink: &str, of: &str, since: Instant) -> (u64, u64) {
        let expected = id_of(of);
        let t = self.timeline.lock().unwrap();
        let on: Vec<_> = t
            .pictures
            .iter()
            .filter(|(at, s, tag)| *at >= since && s == sink && tag.is_some())
            .collect();
        let right = on.iter().filter(|p| p.2 == expected).count() as u64;
        (right, on.len() as u64 - right)
    }

    /// When the call's mode became `mode` at or after `since`.
    fn mode_since(&self, mode: &str, since: Instant) -> Option<Instant> {
        let t = self.timeline.lock().unwrap();
        t.modes
            .iter()
            .find(|(at, m)| *at >= since && *m == mode)
            .map(|(at, _)| *at)
    }

    fn mode(&self) -> Option<&'static str> {
        self.timeline.lock().unwrap().modes.last().map(|m| m.1)
    }

    /// The last picture of `of` on `sink` before `at`, and the first one on `then` after it.
    fn around(&self, at: Instant, sink: &str, then: &str, of: &str) -> (Instant, Instant) {
        let expected = id_of(of);
        let t = self.timeline.lock().unwrap();
        let of_sender = |s: &str| -> Vec<Instant> {
            t.pictures
                .iter()
                .filter(|p| p.1 == s && p.2 == expected)
                .map(|p| p.0)
                .collect()
        };
        let before = of_sender(sink).into_iter().rfind(|p| *p < at);
        let after = of_sender(then).into_iter().find(|p| *p >= at);
        (
            before.unwrap_or_else(|| panic!("{}: no picture of {of} before the move", self.name)),
            after.unwrap_or_else(|| panic!("{}: no picture of {of} after the move", self.name)),
        )
    }
}

/// Starts `name` as a call without `--group` (two-party, moving to the SFU when a third comes)
/// that sends its tagged picture, shows the peer's on the two-party sink and each member's on
/// its own sink in a group.
fn start_mover(server: &TestServer, room: &str, name: &'static str) -> Mover {
    let timeline = SharedTimeline::default();
    let members = Arc::clone(&timeline);
    let mut call = CallBuilder::new(server.url.clone(), room)
        .name(name)
        .source(ToneSource::new(300.0, 0.3))
        .sink(CaptureSink::default())
        .video_source(Tagged {
            pattern: TestPattern::new(W, H, FPS).unwrap(),
            id: id_of(name).unwrap(),
            n: 0,
        })
        .video_sink(Timed {
            sink: TWO_PARTY.into(),
            timeline: Arc::clone(&timeline),
        })
        .group_video_sinks(move |member: &str| {
            Ok(Box::new(Timed {
                sink: member.to_owned(),
                timeline: Arc::clone(&members),
            }) as Box<dyn VideoSink>)
        })
        .start()
        .unwrap();
    let (hang_up, mut hang_up_rx) = oneshot::channel::<()>();
    let modes = Arc::clone(&timeline);
    let done = tokio::spawn(async move {
        let mut ended = None;
        let mut hung_up = false;
        // The stats say the mode: looked at often, so a move is seen within a few ms.
        let mut look = tokio::time::interval(Duration::from_millis(5));
        loop {
            let event = tokio::select! {
                e = call.next_event() => e,
                _ = look.tick() => {
                    let mode = call.stats().mode;
                    let mut t = modes.lock().unwrap();
                    if t.modes.last().is_none_or(|m| m.1 != mode) {
                        t.modes.push((Instant::now(), mode));
                    }
                    continue;
                }
                _ = &mut hang_up_rx, if !hung_up => {
                    hung_up = true;
                    assert_eq!(call.hang_up().await, EndReason::LocalHangup, "{name}");
                    continue;
                }
            };
            match event {
                None => break,
                Some(CallEvent::Ended { reason, stats }) => ended = Some((reason, stats)),
                Some(_) => {}
            }
        }
        ended
    });
    Mover {
        name,
        timeline,
        hang_up: Some(hang_up),
        done,
    }
}

/// Waits until `check` holds, looking every 50 ms, for at most `WAIT` twice over (the moves
/// agree new keys and connect anew, on a loaded machine too).
async fn until(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_party_video_call_moves_to_the_sfu_when_a_third_comes_and_back_when_it_leaves() {
    capture_logs();
    let server = TestServer::start_with_sfu().await;
    let room = "video-moves";
    let t0 = Instant::now();
    let alice = start_mover(&server, room, "alice");
    let bob = start_mover(&server, room, "bob");
    let pair = [(&alice, "bob"), (&bob, "alice")];
    until("the two-party pictures", || {
        for (m, of) in pair {
            let (right, _) = m.shown(TWO_PARTY, of, t0);
            if right < ENOUGH || m.mode() != Some("p2p") {
                return Err(format!("{} of {of}: {right}, mode {:?}", m.name, m.mode()));
            }
        }
        Ok(())
    })
    .await;

    // A third comes, sending video too: everyone moves to the SFU, each member's pictures on
    // that member's sink.
    let joined = Instant::now();
    let carol = start_mover(&server, room, "carol");
    let trio = [
        (&alice, ["bob", "carol"]),
        (&bob, ["alice", "carol"]),
        (&carol, ["alice", "bob"]),
    ];
    until("the group's pictures", || {
        for (m, others) in trio {
            for of in others {
                let (right, _) = m.shown(of, of, joined);
                if right < ENOUGH || m.mode() != Some("sfu") {
                    return Err(format!("{} of {of}: {right}, mode {:?}", m.name, m.mode()));
                }
            }
        }
        Ok(())
    })
    .await;
    let mut up = Vec::new();
    for (m, of) in pair {
        let switch = m.mode_since("sfu", joined).expect("moved to the SFU");
        let (last, first) = m.around(switch, TWO_PARTY, of, of);
        println!(
            "to the SFU: {} shows {of} {} ms after its move ({} ms without a picture)",
            m.name,
            ms(first - switch),
            ms(first - last)
        );
        up.push(first - switch);
    }

    // The third leaves: alice and bob meet peer to peer again, with new pictures on the
    // two-party sink.
    let left = Instant::now();
    let _ = carol.hang_up.unwrap().send(());
    let (reason, carol_stats) = tokio::time::timeout(2 * WAIT, carol.done)
        .await
        .unwrap()
        .unwrap()
        .expect("carol ended");
    assert_eq!(reason, EndReason::LocalHangup);
    assert_eq!(carol_stats.video_decrypt_failures, 0, "{carol_stats:?}");
    until("the two-party pictures again", || {
        for (m, of) in pair {
            let Some(back) = m.mode_since("p2p", joined) else {
                return Err(format!("{} is still {:?}", m.name, m.mode()));
            };
            let (right, _) = m.shown(TWO_PARTY, of, back);
            if right < ENOUGH {
                return Err(format!("{} of {of} since the move back: {right}", m.name));
            }
        }
        Ok(())
    })
    .await;
    let mut down = Vec::new();
    for (m, of) in pair {
        let switch = m.mode_since("p2p", joined).expect("back to two-party");
        let (last, first) = m.around(switch, of, TWO_PARTY, of);
        println!(
            "back to two-party: {} shows {of} {} ms after its move ({} ms without a picture, \
             {} ms after carol hung up)",
            m.name,
            ms(first - switch),
            ms(first - last),
            ms(first.saturating_duration_since(left))
        );
        down.push(first - switch);
    }

    let mut pair = [alice, bob];
    for m in &mut pair {
        let _ = m.hang_up.take().unwrap().send(());
    }
    for m in pair {
        let (reason, stats) = tokio::time::timeout(2 * WAIT, m.done)
            .await
            .unwrap()
            .unwrap()
            .expect("ended");
        assert_eq!(reason, EndReason::LocalHangup, "{}", m.name);
        assert_eq!(stats.mode, "p2p", "{} ends two-party", m.name);
        assert_eq!(stats.video_decrypt_failures, 0, "{}: {stats:?}", m.name);
        println!(
            "{}: video sent {} ({} keyframes, {} asked for), shown {}, keyframe requests sent {}",
            m.name,
            stats.video_frames_sent,
            stats.video_keyframes_sent,
            stats.video_keyframes_requested,
            stats.video_frames_rendered,
            stats.video_keyframe_requests_sent
        );
        let t = m.timeline.lock().unwrap();
        // Never anyone's picture on another's sink, in any mode.
        for (at, sink, tag) in &t.pictures {
            let expected = if sink == TWO_PARTY {
                id_of(if m.name == "alice" { "bob" } else { "alice" })
            } else {
                id_of(sink)
            };
            assert!(
                tag.is_none() || *tag == expected,
                "{}: tag {tag:?} on {sink}'s sink at {:?}",
                m.name,
                at.duration_since(t0)
            );
        }
        // Each sink finished once, at the end: the two-party one was kept through the group.
        let last_picture = t.pictures.last().map(|p| p.0).unwrap();
        let mut finished: Vec<&str> = t.finished.iter().map(|f| f.1.as_str()).collect();
        finished.sort();
        let mut sinks = vec![TWO_PARTY, "carol"];
        sinks.push(if m.name == "alice" { "bob" } else { "alice" });
        sinks.sort();
        assert_eq!(finished, sinks, "{}: finished sinks", m.name);
        assert!(
            t.finished.iter().all(|f| f.0 >= last_picture),
            "{}: a sink finished before the call ended: {:?}",
            m.name,
            t.finished
        );
    }
    let show = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{} ms", ms(*d)))
            .collect::<Vec<_>>()
    };
    println!(
        "video back after the move: to the SFU {:?}, back to two-party {:?}",
        show(&up),
        show(&down)
    );
}

/// `sotto call` for member `name` of `room`: a 440 Hz tone and the test pattern at 15 fps
/// for `secs` seconds, its files (video output, identity, stats, audio) in `dir/name/`.
fn video_member(
    server: &str,
    room: &str,
    name: &str,
    dir: &std::path::Path,
    secs: &str,
) -> std::process::Command {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    let mut cmd = common::sotto_cli();
    cmd.args(["call", "--server", server, "--room", room])
        .args(["--name", name, "--bind", "127.0.0.1:0"])
        .args(["--tone", "440", "--duration", secs])
        .args(["--video", "test-pattern", "--fps", "15"])
        .arg("--video-output")
        .arg(own.join("video.y4m"))
        .arg("--identity")
        .arg(own.join("identity.json"))
        .arg("--stats-json")
        .arg(own.join("stats.json"))
        .arg("--output")
        .arg(own.join("audio.wav"));
    cmd
}

/// A `sotto call` child whose stdout lines arrive as they are printed.
struct Cli {
    name: &'static str,
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Cli {
    /// `sotto call` without `--group`, sending the test pattern and writing what it shows to
    /// `dir/name/video.y4m`.
    fn spawn(server: &TestServer, room: &str, name: &'static str, dir: &std::path::Path) -> Cli {
        use std::io::BufRead;
        let mut cmd = video_member(&server.url, room, name, dir, "120");
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.join(name).join("stderr.log")).unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Cli {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until lines holding each of `texts` were printed (after those already read).
    async fn until(&mut self, texts: &[&str]) {
        let deadline = tokio::time::Instant::now() + 2 * WAIT;
        let mut missing: Vec<&str> = texts.to_vec();
        while !missing.is_empty() {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: no {missing:?} in time: {:#?}", self.name, self.seen)
                })
                .unwrap_or_else(|| {
                    panic!("{}: ended before {missing:?}: {:#?}", self.name, self.seen)
                });
            missing.retain(|t| !line.contains(t));
            self.seen.push(line);
        }
    }

    /// Hangs up as Ctrl-C does and waits for the process to end well.
    async fn hang_up(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{}: {status}", self.name);
    }
}

/// The test pattern's frame numbers in a Y4M file, each picture 640x360.
fn codes_in(path: &std::path::Path) -> Vec<u16> {
    let mut source = sotto::media::video::Y4mSource::open(path).unwrap();
    let mut picture = VideoFrame::black(2, 2).unwrap();
    let mut codes = Vec::new();
    while source.read_frame(&mut picture).unwrap() {
        assert_eq!(picture.size(), (640, 360), "{}", path.display());
        codes.extend(read_code(&picture));
    }
    codes
}

/// `sotto call --video test-pattern --video-output DIR/video.y4m` without `--group`: alice and
/// bob start two-party, carol joins and leaves. Each of the first two writes the other's
/// pictures to `video.y4m` before and after the group stretch (one file, kept open through
/// it), and each member's from the group stretch to `video-<name>.y4m`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_calls_without_group_keep_the_two_party_file_and_write_one_per_member_in_the_group() {
    let server = TestServer::start_with_sfu().await;
    let dir = common::temp_dir("cli-video-moves");
    let room = "video-moves-cli";
    let mut alice = Cli::spawn(&server, room, "alice", &dir);
    let mut bob = Cli::spawn(&server, room, "bob", &dir);
    alice.until(&["the peer's video"]).await;
    bob.until(&["the peer's video"]).await;
    // Pictures written to `who`'s file `file` so far (the header is shorter than a picture).
    let frames = |who: &str, file: &str| {
        std::fs::metadata(dir.join(who).join(file)).map_or(0, |m| m.len()) / (6 + 640 * 360 * 3 / 2)
    };
    let until_written = |files: Vec<(&'static str, &'static str, u64)>| async move {
        let deadline = Instant::now() + 2 * WAIT;
        while let Some((who, file, n)) = files
            .iter()
            .find(|(who, file, n)| frames(who, file) < n + ENOUGH)
        {
            assert!(
                Instant::now() < deadline,
                "{who}: {file} stays at {n} pictures"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until_written(vec![("alice", "video.y4m", 0), ("bob", "video.y4m", 0)]).await;
    let carol = Cli::spawn(&server, room, "carol", &dir);
    alice.until(&["bob's video", "carol's video"]).await;
    bob.until(&["alice's video", "carol's video"]).await;
    until_written(vec![
        ("alice", "video-bob.y4m", 0),
        ("alice", "video-carol.y4m", 0),
        ("bob", "video-alice.y4m", 0),
        ("bob", "video-carol.y4m", 0),
    ])
    .await;
    carol.hang_up().await;
    // Back two-party: the peer's picture shows again, on the file of the first stretch.
    alice.until(&["the peer's video"]).await;
    bob.until(&["the peer's video"]).await;
    let back = (frames("alice", "video.y4m"), frames("bob", "video.y4m"));
    until_written(vec![
        ("alice", "video.y4m", back.0),
        ("bob", "video.y4m", back.1),
    ])
    .await;
    alice.hang_up().await;
    bob.hang_up().await;
    for (name, other) in [("alice", "bob"), ("bob", "alice")] {
        let own = dir.join(name);
        let mut files: Vec<String> = std::fs::read_dir(&own)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".y4m"))
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "video-alice.y4m",
                "video-bob.y4m",
                "video-carol.y4m",
                "video.y4m"
            ]
            .into_iter()
            .filter(|f| *f != format!("video-{name}.y4m"))
            .collect::<Vec<_>>(),
            "{name}"
        );
        let two_party = codes_in(&own.join("video.y4m"));
        let group = codes_in(&own.join(format!("video-{other}.y4m")));
        let of_carol = codes_in(&own.join("video-carol.y4m"));
        assert!(
            group.len() >= 5 && of_carol.len() >= 5,
            "{name}: {group:?} {of_carol:?}"
        );
        // The other's source went on through both moves: its pictures before the group
        // stretch, in it, and after it, in order, the first and last on the two-party file.
        let (first, last) = (group[0], group[group.len() - 1]);
        let before = two_party.iter().filter(|c| **c < first).count() as u64;
        let after = two_party.iter().filter(|c| **c > last).count() as u64;
        assert!(
            before >= ENOUGH && after >= ENOUGH,
            "{name}: {before} pictures of {other} before the group, {after} after: {two_party:?}"
        );
        assert!(
            two_party.windows(2).all(|w| w[1] > w[0]) && group.windows(2).all(|w| w[1] > w[0]),
            "{name}: {other}'s pictures out of order: {two_party:?} {group:?}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(own.join("stats.json")).unwrap())
                .unwrap();
        assert_eq!(report["mode"], "p2p", "{name}: {report}");
        assert_eq!(report["video_decrypt_failures"], 0, "{name}: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
