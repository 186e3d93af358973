//! `sotto call --video` and `sotto demo --video` as users run them: two processes through a
//! real signaling server, one sending the test pattern and one a Y4M file, each writing what
//! it receives to a Y4M file; bad video flags fail with one clear line.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestServer, sotto_cli};
use sotto::media::video::{
    TestPattern, VideoFrame, VideoProbe, VideoSink, VideoSource, Y4mSink, Y4mSource,
};

/// One video call at a time: each encodes and decodes in real time on 2 cores.
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn call_args(cmd: &mut Command, url: &str, name: &str, dir: &Path) {
    cmd.args(["call", "--server", url, "--room", "video", "--name", name])
        .args(["--bind", "127.0.0.1:0", "--tone", "440"])
        .arg("--identity")
        .arg(dir.join(name).join("identity.json"))
        .arg("--stats-json")
        .arg(dir.join(format!("{name}.json")))
        .arg("--output")
        .arg(dir.join(format!("{name}.wav")));
}

/// Reads a Y4M file through a probe that compares it with `pattern`.
fn probe_file(path: &Path, pattern: TestPattern) -> sotto::media::video::ProbeReport {
    let (mut probe, handle) = VideoProbe::new(Some(pattern), 1).unwrap();
    let mut src = Y4mSource::open(path).unwrap();
    let mut frame = VideoFrame::black(2, 2).unwrap();
    while src.read_frame(&mut frame).unwrap() {
        probe.write_frame(&frame).unwrap();
    }
    handle.report()
}

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cli_peers_send_video_both_ways_and_record_it() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-video-both");
    // Bob sends a file: 90 pictures of a 512x288 pattern (the barcode needs 512 pixels) at 30 fps.
    let small = TestPattern::new(512, 288, 30).unwrap();
    let source = dir.join("source.y4m");
    {
        let mut sink = Y4mSink::create(&source, 30).unwrap();
        let mut frame = VideoFrame::black(2, 2).unwrap();
        for n in 0..90 {
            small.draw(n, &mut frame).unwrap();
            sink.write_frame(&frame).unwrap();
        }
        sink.finish().unwrap();
    }
    let mut alice = sotto_cli();
    call_args(&mut alice, &server.url, "alice", &dir);
    alice
        .args([
            "--duration",
            "6",
            "--video",
            "test-pattern",
            "--video-output",
        ])
        .arg(dir.join("alice.y4m"));
    let mut bob = sotto_cli();
    call_args(&mut bob, &server.url, "bob", &dir);
    bob.args(["--duration", "5", "--video"])
        .arg(&source)
        .arg("--video-output")
        .arg(dir.join("bob.y4m"));
    let alice = alice
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = bob.output().unwrap();
    let a = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap())
        .await
        .unwrap();
    common::show("alice", &a);
    common::show("bob", &b);
    assert!(a.status.success() && b.status.success());

    let (ra, rb) = (stats(&dir.join("alice.json")), stats(&dir.join("bob.json")));
    eprintln!("alice: {ra}\nbob: {rb}");
    for r in [&ra, &rb] {
        for key in [
            "video_frames_sent",
            "video_frames_received",
            "video_frames_decrypted",
            "video_decrypt_failures",
            "video_keyframes_sent",
            "video_keyframes_requested",
            "video_width",
            "video_height",
            "video_fps_received",
            "video_send_kbps",
            "video_freezes",
            "av_sync_offset_ms",
        ] {
            assert!(r.get(key).is_some(), "stats JSON lacks {key}: {r}");
        }
        assert_eq!(r["video_decrypt_failures"], 0, "{r}");
        assert!(r["video_frames_decrypted"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(
        (&rb["video_width"], &rb["video_height"]),
        (&640.into(), &360.into())
    );
    assert_eq!(
        (&ra["video_width"], &ra["video_height"]),
        (&512.into(), &288.into())
    );

    // What each side recorded is the other's pictures, in order and faithful.
    let bob_saw = probe_file(
        &dir.join("bob.y4m"),
        TestPattern::new(640, 360, 30).unwrap(),
    );
    let alice_saw = probe_file(&dir.join("alice.y4m"), small);
    eprintln!("bob saw {bob_saw:?}\nalice saw {alice_saw:?}");
    for (who, seen) in [("bob", &bob_saw), ("alice", &alice_saw)] {
        assert_eq!(seen.out_of_order, 0, "{who}");
        assert_eq!(seen.codes_read, seen.frames, "{who}");
        assert!(seen.psnr_min_db.unwrap() >= 30.0, "{who}: {seen:?}");
        // Of the pictures sent while both were in the call, 90 % or more were recorded. Alice
        // goes on sending until she learns Bob hung up, so her sent count is no baseline.
        assert!(seen.frames * 10 >= seen.code_span() * 9, "{who}: {seen:?}");
    }
    // Bob recorded Alice's pattern from its start for most of his 5 s.
    assert!(bob_saw.first_code.unwrap() <= 30, "{bob_saw:?}");
    assert!(bob_saw.code_span() >= 100, "{bob_saw:?}");
    // The file ran out after 3 s: Bob's call went on, Alice saw all 90 pictures.
    assert_eq!(rb["video_frames_sent"], 90, "{rb}");
    assert_eq!(alice_saw.code_span(), 90);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_a_video_call() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let out = sotto_cli()
        .args(["demo", "--tones", "--video", "--json", "--duration", "2"])
        .args(["--server", &server.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    for side in ["alice", "bob"] {
        let s = &report[side];
        assert_eq!(s["video_decrypt_failures"], 0, "{report}");
        assert!(s["video"]["frames"].as_u64().unwrap() >= 30, "{report}");
        assert_eq!(s["video"]["out_of_order"], 0, "{report}");
        assert!(
            s["video"]["psnr_min_db"].as_f64().unwrap() >= 30.0,
            "{report}"
        );
    }
}

#[test]
fn bad_video_flags_fail_with_one_clear_line() {
    let dir = common::temp_dir("cli-video-bad");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "call",
            "--server",
            "ws://127.0.0.1:9/ws",
            "--room",
            "r",
            "--tone",
            "440",
            "--output",
        ];
        let out = dir.join("x.wav").display().to_string();
        let id = dir.join("id.json").display().to_string();
        let mut owned: Vec<String> = args.drain(..).map(String::from).collect();
        owned.push(out);
        owned.push("--identity".into());
        owned.push(id);
        owned.extend(extra.iter().map(|s| s.to_string()));
        owned
    };
    let missing = dir.join("missing.y4m").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(&["--video", "webcam"]), "test-pattern"),
        (base(&["--video", &missing]), "missing.y4m"),
        (
            base(&["--video", "camera:Nonexistent Cam"]),
            "Nonexistent Cam",
        ),
        (
            base(&["--video", "test-pattern", "--video-size", "641x360"]),
            "video size",
        ),
        (base(&["--video", "test-pattern", "--fps", "0"]), "fps"),
        (
            base(&["--video", "test-pattern", "--max-video-kbps", "5"]),
            "max-video-kbps",
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
