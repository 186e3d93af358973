//! `sotto call` as users run it: two processes through a real signaling server, with tones,
//! WAV files and the PulseAudio devices; bad input fails cleanly.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, assert_hears, sotto_cli, wav_tail};
use sotto::media::AudioSource;

/// The calls of this binary run one at a time (real-time audio on 2 cores; one sound server).
static DEVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Starts `alice`, waits until she is in the room, then runs `bob` to the end; returns both
/// outputs.
async fn two_calls(alice: &mut Command, bob: &mut Command) -> (Output, Output) {
    let alice = alice
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Alice's "waiting" line would need a reader thread; a short pause is enough since
    // the protocol also works the other way round (whoever is second initiates).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob = bob.output().unwrap();
    let alice = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap())
        .await
        .unwrap();
    (alice, bob)
}

fn call_args(cmd: &mut Command, url: &str, room: &str, name: &str, dir: &Path) {
    cmd.args(["call", "--server", url, "--room", room, "--name", name])
        .args(["--bind", "127.0.0.1:0"])
        .arg("--identity")
        .arg(dir.join(name).join("identity.json"))
        .arg("--stats-json")
        .arg(dir.join(format!("{name}.json")));
}

fn check_report(report: &serde_json::Value, min_frames: u64) {
    for key in [
        "safety_code",
        "peer_identity",
        "frames_sent",
        "frames_received",
        "frames_decrypted",
        "decrypt_failures",
        "replays_rejected",
        "e2ee",
        "cipher_suite",
    ] {
        assert!(
            report.get(key).is_some(),
            "stats JSON lacks {key}: {report}"
        );
    }
    assert_eq!(report["e2ee"], true);
    assert_eq!(report["cipher_suite"], "AES_128_GCM_SHA256_128");
    assert_eq!(report["decrypt_failures"], 0);
    assert_eq!(report["replays_rejected"], 0);
    assert!(
        report["frames_sent"].as_u64().unwrap() >= min_frames,
        "{report}"
    );
    assert!(
        report["frames_decrypted"].as_u64().unwrap() >= min_frames,
        "{report}"
    );
    assert_eq!(report["peer_identity"].as_str().unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cli_peers_exchange_tones_and_agree_on_the_safety_code() {
    let _one = DEVICES.lock().await;
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-call-tones");
    let mut alice = sotto_cli();
    call_args(&mut alice, &server.url, "cli", "alice", &dir);
    alice
        .args(["--tone", "440", "--duration", "6", "--output"])
        .arg(dir.join("alice.wav"));
    let mut bob = sotto_cli();
    call_args(&mut bob, &server.url, "cli", "bob", &dir);
    bob.args(["--tone", "660", "--duration", "5", "--output"])
        .arg(dir.join("bob.wav"));
    let (a, b) = two_calls(&mut alice, &mut bob).await;
    common::show("alice", &a);
    common::show("bob", &b);
    assert!(a.status.success() && b.status.success());

    let (ra, rb) = (stats(&dir.join("alice.json")), stats(&dir.join("bob.json")));
    check_report(&ra, 150);
    check_report(&rb, 150);
    assert_eq!(ra["safety_code"], rb["safety_code"]);
    assert!(
        String::from_utf8_lossy(&a.stdout).contains(ra["safety_code"].as_str().unwrap()),
        "the safety code is not printed"
    );
    // Each identity is the one the other side saw.
    let alice_key = sotto::handshake::Identity::load(&dir.join("alice/identity.json"))
        .unwrap()
        .public_key()
        .to_hex();
    assert_eq!(rb["peer_identity"], alice_key.as_str());

    let heard_by_alice = wav_tail(&dir.join("alice.wav"), 2.0);
    let heard_by_bob = wav_tail(&dir.join("bob.wav"), 3.0);
    eprintln!("alice: {ra}\nbob: {rb}");
    assert_hears(&heard_by_alice, 660.0, "alice");
    assert_hears(&heard_by_bob, 440.0, "bob");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alice talks into the PulseAudio microphone (the null sink's monitor, where this test plays
/// a 1 kHz tone) and plays Bob through a real output device; Bob sends a tone and records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_pulseaudio_devices() {
    use sotto::media::{AudioSink, DeviceSink, ToneSource};
    let _one = DEVICES.lock().await;
    let player = match DeviceSink::open(None) {
        Ok(p) => p,
        Err(e) if !common::devices_required() => {
            common::skip("a_call_over_the_pulseaudio_devices", &e.to_string());
            return;
        }
        Err(e) => panic!("audio devices required but: {e}"),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_player = stop.clone();
    let player = std::thread::spawn(move || {
        let mut player = player;
        let mut tone = ToneSource::new(1000.0, 0.4);
        let mut frame = [0f32; 480];
        while !stop_player.load(std::sync::atomic::Ordering::Relaxed) {
            tone.read_frame(&mut frame).unwrap();
            player.write_frame(&frame).unwrap();
        }
    });
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-call-pulse");
    let mut alice = sotto_cli();
    call_args(&mut alice, &server.url, "pulse", "alice", &dir);
    alice.args([
        "--input-device",
        "default",
        "--output-device",
        "default",
        "--duration",
        "6",
    ]);
    // Alice's speaker is the second null sink, so Bob's voice does not loop back into her
    // microphone.
    alice.env("PULSE_SINK", "sotto_keepalive");
    let mut bob = sotto_cli();
    call_args(&mut bob, &server.url, "pulse", "bob", &dir);
    bob.args(["--tone", "660", "--duration", "5", "--output"])
        .arg(dir.join("bob.wav"));
    let (a, b) = two_calls(&mut alice, &mut bob).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    player.join().unwrap();
    common::show("alice", &a);
    common::show("bob", &b);
    assert!(a.status.success() && b.status.success());
    let (ra, rb) = (stats(&dir.join("alice.json")), stats(&dir.join("bob.json")));
    check_report(&ra, 150);
    check_report(&rb, 150);
    assert_eq!(ra["safety_code"], rb["safety_code"]);
    assert!(ra["frames_played"].as_u64().unwrap() >= 150, "{ra}");
    // What Alice's real microphone captured reached Bob intact.
    let heard_by_bob = wav_tail(&dir.join("bob.wav"), 2.5);
    assert_hears(&heard_by_bob, 1000.0, "bob (alice's microphone)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_call_arguments_fail_with_one_clear_line() {
    let dir = common::temp_dir("cli-call-bad");
    let missing = dir.join("missing.wav");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["call".into(), "--room".into(), "r".into()], "--server"),
        (
            vec![
                "call".into(),
                "--server".into(),
                "http://example".into(),
                "--room".into(),
                "r".into(),
                "--tone".into(),
                "440".into(),
                "--output".into(),
                dir.join("x.wav").display().to_string(),
            ],
            "ws://",
        ),
        (
            vec![
                "call".into(),
                "--server".into(),
                "ws://127.0.0.1:9/ws".into(),
                "--room".into(),
                "r".into(),
                "--input".into(),
                missing.display().to_string(),
                "--output".into(),
                dir.join("x.wav").display().to_string(),
                "--identity".into(),
                dir.join("id.json").display().to_string(),
            ],
            "missing.wav",
        ),
        (
            vec![
                "call".into(),
                "--server".into(),
                "ws://127.0.0.1:9/ws".into(),
                "--room".into(),
                "r".into(),
                "--tone".into(),
                "5".into(),
            ],
            "tone",
        ),
        (
            vec![
                "call".into(),
                "--server".into(),
                "ws://x/ws".into(),
                "--room".into(),
                "r".into(),
                "--tone".into(),
                "440".into(),
                "--input".into(),
                "a.wav".into(),
            ],
            "cannot be used with",
        ),
    ];
    for (args, expect) in cases {
        let out = sotto_cli().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_server_ends_the_call_with_an_error() {
    let dir = common::temp_dir("cli-call-unreachable");
    let start = Instant::now();
    let out = sotto_cli()
        .args([
            "call",
            "--server",
            "ws://127.0.0.1:9/ws",
            "--room",
            "r",
            "--tone",
            "440",
        ])
        .arg("--output")
        .arg(dir.join("x.wav"))
        .arg("--identity")
        .arg(dir.join("id.json"))
        .arg("--stats-json")
        .arg(dir.join("s.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("signaling"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30));
    // The stats file is written on every exit.
    assert_eq!(stats(&dir.join("s.json"))["frames_sent"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--duration` running out before media ever connected is a failed call, not a hang-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_connects_exits_non_zero_and_says_why() {
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-call-never");
    let mut cmd = sotto_cli();
    call_args(&mut cmd, &server.url, "alone", "alice", &dir);
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            cmd.args(["--tone", "440", "--duration", "2", "--output"])
                .arg(dir.join("alice.wav"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(
        err.contains("media never connected: no peer joined"),
        "{err}"
    );
    let report = stats(&dir.join("alice.json"));
    assert_eq!(
        report["ended"], "media never connected: no peer joined",
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_call_and_reports_matching_codes() {
    let _one = DEVICES.lock().await;
    let server = TestServer::start().await;
    let out = sotto_cli()
        .args([
            "demo",
            "--tones",
            "--json",
            "--duration",
            "2",
            "--server",
            &server.url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(report["safety_codes_match"], true, "{report}");
    assert_eq!(report["e2ee"], true);
    for (side, hz) in [("alice", 660.0), ("bob", 440.0)] {
        let s = &report[side];
        assert_eq!(s["decrypt_failures"], 0, "{report}");
        assert!(s["frames_decrypted"].as_u64().unwrap() >= 75, "{report}");
        assert!(
            (s["heard_hz"].as_f64().unwrap() - hz).abs() <= 3.0,
            "{report}"
        );
    }
}
