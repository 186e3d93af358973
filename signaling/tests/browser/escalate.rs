//! The page without `&group=1` moves between two-party and group calls as the engine does
//! (docs/call-protocol.md, "Moving between two-party and group calls"): a page and a
//! `sotto call` peer to peer, a third `sotto call` moves all three to the SFU, and its leaving
//! brings the page and the first CLI back peer to peer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto::media::{AudioSource, WavSource};

use crate::cdp::Page;
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, Server, room, skip, tone_wav, wait_status};

/// A `sotto call` without `--group`, its stdout collected line by line as it runs.
struct Cli {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    errors: std::thread::JoinHandle<String>,
}

impl Cli {
    fn spawn(
        server: &Server,
        room: &str,
        dir: &Path,
        name: &'static str,
        hz: f64,
        secs: u32,
    ) -> Cli {
        Cli::spawn_with(server, room, dir, name, hz, secs, &[])
    }

    /// As `spawn`, with more arguments (`--video test-pattern`).
    fn spawn_with(
        server: &Server,
        room: &str,
        dir: &Path,
        name: &'static str,
        hz: f64,
        secs: u32,
        extra: &[&str],
    ) -> Cli {
        let mut child = Command::new(sotto_bin())
            .args(["call", "--server", &server.ws_url(), "--room", room])
            .args(["--name", name, "--bind", "127.0.0.1:0"])
            .args(["--tone", &hz.to_string(), "--duration", &secs.to_string()])
            .args(extra)
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        let mut err = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        });
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Cli {
            name,
            child,
            lines,
            reader: Some(reader),
            errors,
        }
    }

    fn stdout(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The codes it printed after `prefix` ("safety code: " or "group safety code: ").
    fn codes(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| Some(l.strip_prefix(prefix)?.get(..9)?.to_owned()))
            .collect()
    }

    /// Waits until it printed at least `n` codes after `prefix`; returns the last.
    async fn wait_code(&self, prefix: &str, n: usize) -> String {
        let deadline = Instant::now() + CONNECT;
        loop {
            let codes = self.codes(prefix);
            if codes.len() >= n {
                return codes[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{} never printed {n} x {prefix:?}:\n{}",
                self.name,
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until it printed a group code over `others` (sorted); returns it.
    async fn wait_group_code(&self, others: &[&str]) -> String {
        let deadline = Instant::now() + CONNECT;
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|l| {
                let rest = l.strip_prefix("group safety code: ")?;
                let mut members: Vec<&str> = rest
                    .split("members besides us: ")
                    .nth(1)?
                    .trim_end_matches(')')
                    .split(", ")
                    .collect();
                members.sort_unstable();
                (members == others).then(|| rest.get(..9).map(str::to_owned))?
            });
            if let Some(code) = found {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "{} never printed a group code over {others:?}:\n{}",
                self.name,
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self, dir: &Path) -> (String, Value, Vec<f32>) {
        let Cli {
            name,
            mut child,
            lines,
            reader,
            errors,
        } = self;
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            let stderr = errors.join().unwrap();
            if let Some(r) = reader {
                r.join().unwrap();
            }
            (status, stderr)
        })
        .await
        .unwrap();
        let stdout = lines.lock().unwrap().join("\n");
        assert!(status.success(), "{name} failed:\n{stdout}\n{stderr}");
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        (stdout, report, read_wav(&dir.join(format!("{name}.wav"))))
    }
}

fn read_wav(path: &PathBuf) -> Vec<f32> {
    let mut src = WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    all
}

/// The largest share of `hz` over any 1 s block of `x`.
fn best_share(x: &[f32], hz: f64) -> f64 {
    x.chunks_exact(48_000)
        .map(|b| sotto::media::tone_share(b, 48_000.0, hz))
        .fold(0.0, f64::max)
}

/// Mean share of `hz` over 100 ms blocks.
fn share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    blocks
        .iter()
        .map(|b| sotto::media::tone_share(b, 48_000.0, hz))
        .sum::<f64>()
        / blocks.len().max(1) as f64
}

/// Records, every 50 ms, the page's time, its mode and how many frames its worker opened
/// (two-party and group alike): the gaps around each move are read from it.
const RECORDER: &str = r#"(() => {
    window.moveLog = [];
    const tick = async () => {
        const s = await window.sotto.stats().catch(() => null);
        if (s) window.moveLog.push([performance.now(), window.sotto.mode, s.media.decrypted]);
        setTimeout(tick, 50);
    };
    tick();
    return true;
})()"#;

/// The longest time without a newly opened frame from 1 s before the `change`th mode change
/// in the log to 10 s after it (or the log's end).
fn gap_at(log: &Value, change: usize) -> Option<Duration> {
    let rows = log.as_array()?;
    let at = (1..rows.len())
        .filter(|&i| rows[i][1] != rows[i - 1][1])
        .nth(change - 1)?;
    let t = |i: usize| rows[i][0].as_f64().unwrap_or(0.0);
    let count = |i: usize| rows[i][2].as_u64().unwrap_or(0);
    let (from, to) = (t(at) - 1000.0, t(at) + 10_000.0);
    let grew: Vec<f64> = (1..rows.len())
        .filter(|&i| t(i) >= from && t(i) <= to && count(i) > count(i - 1))
        .map(t)
        .collect();
    let longest = grew.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Some(Duration::from_millis(longest as u64))
}

async fn page_pair_code(page: &Page) -> String {
    page.wait_for(
        "window.sotto.mode === 'p2p' && window.sotto.status.startsWith('connected') ? window.sotto.safetyCode : null",
        CONNECT,
        "a two-party call with keys",
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

/// The pair code once the page is peer to peer again after `moves` moves, with keys.
async fn page_pair_code_after(page: &Page, moves: u64) -> String {
    page.wait_for(
        &format!("window.sotto.mode === 'p2p' && window.sotto.moves >= {moves} && window.sotto.status.startsWith('connected') ? window.sotto.safetyCode : null"),
        CONNECT,
        "the page back in a two-party call",
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_cli_move_to_the_sfu_when_a_third_comes_and_back_when_it_leaves() {
    let test = "a_page_and_cli_move_to_the_sfu_when_a_third_comes_and_back_when_it_leaves";
    let _media = crate::MEDIA.lock().await;
    let page_hz = 880.0;
    let wav = tone_wav(page_hz, 5);
    let Some(browser) = crate::cdp::Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let room = room("escalate");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The page first, then alice: a two-party call.
    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    page.eval(RECORDER).await;
    let alice = Cli::spawn(&server, &room, &dir, "alice", 440.0, 26);
    let first_pair = page_pair_code(&page).await;
    assert_eq!(alice.wait_code("safety code: ", 1).await, first_pair);
    assert_eq!(page.text("safety-code").await, first_pair.as_str());
    // Audio flows peer to peer before the move, so the move's gap is measured.
    page.wait_until(
        "window.sotto.stats()",
        |s| {
            s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                && s["media"]["decrypted"].as_u64() >= Some(50)
        },
        CONNECT,
        "alice's audio peer to peer",
    )
    .await;

    // carol comes: all three in one group call through the SFU.
    let carol = Cli::spawn(&server, &room, &dir, "carol", 660.0, 9);
    let in_group = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["mode"] == "sfu"
                    && s["participants"].as_array().is_some_and(|p| {
                        p.len() == 2
                            && p.iter()
                                .all(|p| p["frames_decrypted"].as_u64() >= Some(100))
                    })
            },
            CONNECT,
            "100 frames from alice and from carol through the SFU",
        )
        .await;
    for p in in_group["participants"].as_array().unwrap() {
        assert_eq!(p["decrypt_failures"], 0, "{in_group}");
    }
    assert_eq!(
        in_group["media"]["group"]["failureKinds"]["auth"],
        Value::Null,
        "{in_group}"
    );
    let group_code = page
        .wait_for(
            "(() => { const c = window.sotto.group.codes.find((c) => c.members.length === 2); return c ? c.code : null; })()",
            CONNECT,
            "the page's code over alice and carol",
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        page.eval("document.querySelector('#safety-code .code').textContent")
            .await,
        group_code.as_str()
    );
    // It says the code changed: the pair's code is gone.
    assert_eq!(
        page.eval(
            "document.querySelector('#safety-code .changed').textContent.includes('changed')"
        )
        .await,
        true
    );
    let tiles = page
        .eval("Array.from(document.querySelectorAll('#tiles .tile[data-peer]'), (t) => t.dataset.peer).sort()")
        .await;
    assert_eq!(tiles, serde_json::json!(["alice", "carol", "web"]));
    assert_eq!(alice.wait_group_code(&["carol", "web"]).await, group_code);
    assert_eq!(carol.wait_group_code(&["alice", "web"]).await, group_code);

    // carol leaves: the page and alice are peer to peer again, with a new handshake.
    let (carol_out, carol_report, carol_heard) = carol.finish(&dir).await;
    let second_pair = page_pair_code_after(&page, 2).await;
    assert_eq!(alice.wait_code("safety code: ", 2).await, second_pair);
    assert_eq!(page.text("safety-code").await, second_pair.as_str());
    let back = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                    && s["inbound"]["packetsReceived"].as_u64() >= Some(100)
            },
            CONNECT,
            "alice's audio peer to peer again",
        )
        .await;
    assert_eq!(back["media"]["decryptFailures"], 0, "{back}");
    assert_eq!(back["media"]["reorderRejected"], 0, "{back}");
    let log = page.eval("window.moveLog").await;
    let (up, down) = (gap_at(&log, 1), gap_at(&log, 2));
    let (alice_out, alice_report, alice_heard) = alice.finish(&dir).await;

    // Everyone heard everyone's tone: carol (in the group all along) heard alice and the page;
    // alice heard carol (only ever through the SFU) and the page at the end, peer to peer.
    let carol_tail = &carol_heard[..carol_heard.len().saturating_sub(48_000)];
    for (who, hz) in [("alice", 440.0), ("web", page_hz)] {
        let s = best_share(carol_tail, hz);
        assert!(s > 0.15, "carol barely heard {who}: {s:.2}\n{carol_out}");
    }
    let s = best_share(&alice_heard, 660.0);
    assert!(s > 0.15, "alice never heard carol: {s:.2}\n{alice_out}");
    let end = alice_heard.len().saturating_sub(48_000);
    let last = share(&alice_heard[end.saturating_sub(2 * 48_000)..end], page_hz);
    assert!(
        last > 0.15,
        "alice barely hears the page at the end: {last:.2}"
    );
    for (name, report) in [("alice", &alice_report), ("carol", &carol_report)] {
        assert_eq!(report["decrypt_failures"], 0, "{name}: {report}");
    }
    assert_eq!(alice_report["mode"], "p2p", "{alice_report}");
    eprintln!(
        "moves: gap to the group {up:?}, gap back to two-party {down:?}; pair codes {first_pair} / {second_pair}, group {group_code}; alice hears the page at {last:.2} at the end"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}

/// A page that joins a room where two `sotto call` talk peer to peer goes straight into the
/// group call (it starts both handshakes; the two move to the SFU), and back peer to peer with
/// the one that stays when the other leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_joining_two_cli_in_a_call_makes_it_a_group_call() {
    let test = "a_page_joining_two_cli_in_a_call_makes_it_a_group_call";
    let _media = crate::MEDIA.lock().await;
    let wav = tone_wav(880.0, 5);
    let Some(browser) = crate::cdp::Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let room = room("escalate-join");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let alice = Cli::spawn(&server, &room, &dir, "alice", 440.0, 22);
    let bob = Cli::spawn(&server, &room, &dir, "bob", 660.0, 10);
    let pair = alice.wait_code("safety code: ", 1).await;
    assert_eq!(bob.wait_code("safety code: ", 1).await, pair);

    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    let stats = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["mode"] == "sfu"
                    && s["participants"].as_array().is_some_and(|p| {
                        p.len() == 2 && p.iter().all(|p| p["frames_decrypted"].as_u64() >= Some(50))
                    })
            },
            CONNECT,
            "50 frames from alice and from bob through the SFU",
        )
        .await;
    for p in stats["participants"].as_array().unwrap() {
        assert_eq!(p["decrypt_failures"], 0, "{stats}");
    }
    let code = page
        .wait_for(
            "(() => { const c = window.sotto.group.codes.find((c) => c.members.length === 2); return c ? c.code : null; })()",
            CONNECT,
            "the page's code over alice and bob",
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(alice.wait_group_code(&["bob", "web"]).await, code);
    assert_eq!(bob.wait_group_code(&["alice", "web"]).await, code);
    // Straight into the group: the page never had a two-party call.
    assert_eq!(page.eval("window.sotto.moves").await, 1);

    let (_, bob_report, bob_heard) = bob.finish(&dir).await;
    let second = page_pair_code_after(&page, 2).await;
    assert_eq!(alice.wait_code("safety code: ", 2).await, second);
    let back = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                    && s["media"]["decrypted"].as_u64() >= Some(50)
            },
            CONNECT,
            "alice's audio peer to peer",
        )
        .await;
    assert_eq!(back["media"]["reorderRejected"], 0, "{back}");
    let (_, alice_report, alice_heard) = alice.finish(&dir).await;
    assert_eq!(bob_report["decrypt_failures"], 0, "{bob_report}");
    assert_eq!(alice_report["decrypt_failures"], 0, "{alice_report}");
    // bob heard the page in the group; alice heard it at the end, peer to peer.
    let s = best_share(&bob_heard, 880.0);
    assert!(s > 0.15, "bob never heard the page: {s:.2}");
    let end = alice_heard.len().saturating_sub(48_000);
    let last = share(&alice_heard[end.saturating_sub(2 * 48_000)..end], 880.0);
    assert!(
        last > 0.15,
        "alice barely hears the page at the end: {last:.2}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}

/// Records, every 50 ms, the page's time, its mode and how many of alice's pictures it
/// decoded on the current connection (the peer connection's, or her tile's slot in the group).
const VIDEO_RECORDER: &str = r#"(() => {
    window.videoLog = [];
    const tick = async () => {
        let n = null;
        if (window.sotto.mode === 'sfu') {
            const v = await window.sotto.group?.videoStats?.().catch(() => null);
            n = v?.alice?.framesDecoded ?? 0;
        } else {
            const s = await window.sotto.stats().catch(() => null);
            n = s?.videoInbound?.framesDecoded ?? 0;
        }
        window.videoLog.push([performance.now(), window.sotto.mode, n]);
        setTimeout(tick, 50);
    };
    tick();
    return true;
})()"#;

/// The page's stats once its current peer connection decoded and encoded 30 pictures.
async fn p2p_video(page: &Page, what: &str) -> Value {
    page.wait_until(
        "window.sotto.stats().then((s) => ({ ...s, mode: window.sotto.mode }))",
        |s| {
            s["mode"] == "p2p"
                && s["videoInbound"]["framesDecoded"].as_u64() >= Some(30)
                && s["videoOutbound"]["framesEncoded"].as_u64() >= Some(30)
        },
        CONNECT,
        what,
    )
    .await
}

/// A page sending its camera and a `sotto call` sending its test pattern, peer to peer; a
/// third `sotto call` (audio only) moves all three to the SFU and its leaving brings the two
/// back. In every stretch the page sends its camera sealed and shows alice's picture (her tile
/// in the group), and nothing fails to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sending_video_moves_to_the_sfu_and_back_with_its_camera() {
    let test = "a_page_sending_video_moves_to_the_sfu_and_back_with_its_camera";
    let _media = crate::MEDIA.lock().await;
    let wav = tone_wav(880.0, 5);
    // Chromium's own fake camera (640x480, moving).
    let Some(browser) = crate::cdp::Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let room = room("escalate-video");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let video = ["--video", "test-pattern"];

    let page = browser.new_page(None).await;
    page.goto(&format!("{}&video=1", server.page_url(&room, "web")))
        .await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let alice = Cli::spawn_with(&server, &room, &dir, "alice", 440.0, 30, &video);
    page_pair_code(&page).await;
    page.eval(VIDEO_RECORDER).await;
    let first = p2p_video(&page, "30 pictures each way peer to peer").await;
    let sealed_before = first["media"]["video"]["sealed"].as_u64().unwrap();
    assert!(sealed_before >= 30, "{first}");

    // carol comes: the page moves with its camera and shows alice's picture on her tile.
    let carol = Cli::spawn(&server, &room, &dir, "carol", 660.0, 10);
    page.wait_until(
        "window.sotto.group?.videoStats?.()",
        |v| v["alice"]["framesDecoded"].as_u64() >= Some(30),
        CONNECT,
        "30 of alice's pictures on her tile through the SFU",
    )
    .await;
    let in_group = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["mode"] == "sfu" && s["media"]["group"]["video"]["sealed"].as_u64() >= Some(30),
            CONNECT,
            "30 of the page's pictures sealed under its group key",
        )
        .await;
    assert_eq!(
        in_group["media"]["group"]["video"]["failed"], 0,
        "{in_group}"
    );
    let tile = page
        .eval("(() => { const v = document.querySelector('#tiles .tile[data-peer=\"web\"] video'); return v && !v.hidden ? v.dataset.track : null; })()")
        .await;
    assert_eq!(tile, "local", "the page's own tile shows its camera");
    let (carol_out, carol_report, _) = carol.finish(&dir).await;
    let from_page = carol_report["participants"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "web"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        from_page["video_frames_decrypted"].as_u64() >= Some(10)
            && from_page["video_decrypt_failures"] == 0,
        "carol decrypted too few of the page's pictures: {from_page}\n{carol_out}"
    );

    // Back peer to peer: a new peer connection, the same camera, alice's picture again.
    page_pair_code_after(&page, 2).await;
    let back = p2p_video(&page, "30 pictures each way peer to peer again").await;
    assert!(
        back["media"]["video"]["sealed"].as_u64() > Some(sealed_before),
        "{back}"
    );
    assert_eq!(back["media"]["video"]["failed"], 0, "{back}");
    assert_eq!(page.eval("window.sotto.camera").await, true);
    let log = page.eval("window.videoLog").await;
    let (up, down) = (gap_at(&log, 1), gap_at(&log, 2));
    // The page hangs up: alice's call ends there (her --duration is only a bound).
    page.eval("window.sotto.hangup()").await;
    let (alice_out, alice_report, _) = alice.finish(&dir).await;
    assert_eq!(alice_report["video_decrypt_failures"], 0, "{alice_report}");
    assert!(
        alice_report["video_frames_decrypted"].as_u64() >= Some(30),
        "alice decrypted too few of the page's pictures: {alice_report}\n{alice_out}"
    );
    eprintln!(
        "moves with video: the page went without a picture of alice for {up:?} to the group, {down:?} back"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}

/// A page without `&group=1` and a `sotto call --group`, alone together in a room: the page
/// meets it on the SFU whether it was there first (the member joins it) or came second (it
/// finds the member in `welcome`), and both show one group code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_meets_a_group_member_on_the_sfu_in_a_room_of_two() {
    let test = "a_page_meets_a_group_member_on_the_sfu_in_a_room_of_two";
    let _media = crate::MEDIA.lock().await;
    let wav = tone_wav(880.0, 5);
    let Some(browser) = crate::cdp::Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let group = ["--group"];

    // The page first, then the group member.
    let first = room("mix-page-first");
    let page1 = browser.new_page(None).await;
    page1.goto(&server.page_url(&first, "web")).await;
    wait_status(&page1, "waiting for someone", CONNECT).await;
    let gina = Cli::spawn_with(&server, &first, &dir, "gina", 440.0, 8, &group);
    // The group member first, then the page.
    let second = room("mix-member-first");
    let gabe = Cli::spawn_with(&server, &second, &dir, "gabe", 660.0, 8, &group);
    // The page, gina (or not yet) and gabe: gabe is in once the server counts three.
    crate::group::wait_peers(&server, 3).await;
    let page2 = browser.new_page(None).await;
    page2.goto(&server.page_url(&second, "web")).await;

    for (page, cli) in [(&page1, &gina), (&page2, &gabe)] {
        let stats = page
            .wait_until(
                "window.sotto.stats()",
                |s| {
                    s["mode"] == "sfu"
                        && s["participants"].as_array().is_some_and(|p| {
                            p.len() == 1 && p[0]["frames_decrypted"].as_u64() >= Some(50)
                        })
                },
                CONNECT,
                &format!("50 frames from {} through the SFU", cli.name),
            )
            .await;
        assert_eq!(stats["participants"][0]["decrypt_failures"], 0, "{stats}");
        // Straight into the group: no two-party call on the way.
        assert_eq!(page.eval("window.sotto.moves").await, 1);
        let code = page
            .wait_for(
                "(() => { const c = window.sotto.group.codes.find((c) => c.members.length === 1); return c ? c.code : null; })()",
                CONNECT,
                "the page's code over the member",
            )
            .await;
        assert_eq!(cli.wait_group_code(&["web"]).await, code.as_str().unwrap());
    }
    for cli in [gina, gabe] {
        let name = cli.name;
        let (out, report, heard) = cli.finish(&dir).await;
        assert_eq!(report["mode"], "sfu", "{name}: {report}");
        assert_eq!(report["decrypt_failures"], 0, "{name}: {report}");
        let s = best_share(&heard, 880.0);
        assert!(s > 0.15, "{name} never heard the page: {s:.2}\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
