//! The latency benchmark measures what it says: clicks go through the real pipeline over
//! WebRTC, come out, and every stage of their frame is accounted for. No timing targets here
//! (those are for `sotto latency` on a quiet machine); only structure and consistency.

mod common;

use std::process::Command;
use std::time::Duration;

use sotto::latency::{LatencyConfig, VideoLatencyConfig, measure, measure_video};
use sotto::media::FrameDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_come_through_and_the_stages_add_up() {
    for e2ee in [true, false] {
        let run = measure(LatencyConfig::new(
            FrameDuration::Ms20,
            e2ee,
            Duration::from_secs(3),
        ))
        .await
        .unwrap();
        let summary = run.summary();
        eprintln!("e2ee {e2ee}: {summary:?}");
        assert!(
            run.samples.len() >= 6,
            "only {} clicks came through",
            run.samples.len()
        );
        // Loopback loses nothing, unless a loaded machine stalls the receiving runtime long
        // enough for a socket buffer to overflow: a click whose frame was concealed has no
        // stages. Allow one; the test is about structure, not the machine.
        let lost = run.samples.iter().filter(|s| s.stages.is_none()).count();
        assert!(
            lost <= 1,
            "{lost} of {} clicks lost on loopback",
            run.samples.len()
        );
        for s in &run.samples {
            // At least what the frame needs to exist; far below the click spacing.
            assert!(s.total > Duration::from_millis(5) && s.total < Duration::from_millis(200));
            let Some(st) = s.stages else { continue };
            let sum = st.capture_buffering
                + st.encode
                + st.encrypt
                + st.network
                + st.decrypt
                + st.playout_wait
                + st.decode
                + st.playback_buffering;
            assert!(
                sum <= s.total + Duration::from_micros(100),
                "{sum:?} > {:?}: {st:?}",
                s.total
            );
            assert!(
                s.total.saturating_sub(sum) < Duration::from_millis(5),
                "{st:?} vs {:?}",
                s.total
            );
            assert_eq!(st.encrypt.is_zero(), !e2ee, "{st:?}");
            assert_eq!(st.decrypt.is_zero(), !e2ee, "{st:?}");
        }
        assert!(summary.p50_ms <= summary.p95_ms && summary.p95_ms <= summary.p99_ms);
        assert!(summary.codec_lookahead_ms > 0.0);
    }
}

/// Video glass to glass: every shown picture is matched by the barcode read from it, once and
/// in order, and its stages follow each other within the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_frames_are_matched_by_barcode_and_the_stages_add_up() {
    let run = measure_video(VideoLatencyConfig::new(true, Duration::from_secs(3)))
        .await
        .unwrap();
    let summary = run.summary();
    eprintln!("{summary:?}");
    // About 75 frames in 2.5 s after the warm-up; a loaded machine may show fewer.
    assert!(run.samples.len() >= 15, "only {} frames", run.samples.len());
    assert_eq!(run.unreadable, 0, "barcodes that did not read");
    assert_eq!(run.unmatched, 0, "barcodes of frames never sent");
    assert!(run.frames_shown >= run.samples.len() as u64);
    assert!(run.frames_sent >= run.frames_shown);
    // Matched by what the picture shows: each frame once, in capture order.
    for pair in run.samples.windows(2) {
        assert!(
            pair[0].code < pair[1].code,
            "{} then {}",
            pair[0].code,
            pair[1].code
        );
    }
    assert!(u64::from(run.samples.last().unwrap().code) < run.frames_sent + 30);
    for s in &run.samples {
        let st = s.stages;
        let sum = st.encode + st.seal + st.network + st.handoff + st.open + st.decode + st.render;
        assert!(sum <= s.total, "{sum:?} > {:?}: {st:?}", s.total);
        assert!(!st.encode.is_zero() && !st.decode.is_zero(), "{st:?}");
        assert!(!st.seal.is_zero() && !st.open.is_zero(), "E2EE on: {st:?}");
        assert!(s.bytes > 10, "{s:?}");
    }
    assert!(summary.p50_ms <= summary.p90_ms && summary.p90_ms <= summary.p99_ms);
    assert!(summary.p99_ms <= summary.max_ms);
    assert_eq!((summary.width, summary.height, summary.fps), (640, 360, 30));
}

/// `--video` alone: only the video runs, E2EE on and off, under `video_runs`; the audio keys
/// stay.
#[test]
fn the_latency_command_measures_video_alone() {
    let json =
        std::env::temp_dir().join(format!("sotto-latency-video-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["latency", "--video", "--duration", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("glass to glass") && stdout.contains("E2EE on video"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 0, "no audio runs");
    assert!(report["e2ee_p50_cost_ms"].is_array() && report["impaired_runs"].is_array());
    let video = report["video_runs"].as_array().unwrap();
    assert_eq!(video.len(), 2);
    assert_eq!(video[0]["e2ee"], true);
    assert_eq!(video[1]["e2ee"], false);
    for run in video {
        for key in [
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "samples",
            "frames_unmatched",
        ] {
            assert!(run[key].is_number(), "{key}: {run}");
        }
        assert!(run["samples"].as_u64().unwrap() > 0, "{run}");
        for stage in [
            "capture_to_encoded",
            "seal",
            "network",
            "handoff",
            "open",
            "decode",
            "render",
        ] {
            assert!(run["stages"][stage].is_number(), "{stage}: {run}");
        }
    }
    assert_eq!(video[1]["stages"]["seal"], 0.0, "no seal without E2EE");
    assert!(report["video_e2ee_p50_cost_ms"].is_number());
    let _ = std::fs::remove_file(&json);
}

#[test]
fn the_latency_command_writes_json_and_a_plot() {
    let dir = std::env::temp_dir().join(format!("sotto-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("latency.json"), dir.join("latency.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["latency", "--duration", "2", "--frame-ms", "10", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("p50") && stdout.contains("E2EE on"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "10 ms with E2EE on and off");
    for run in runs {
        for key in [
            "frame_ms", "e2ee", "p50_ms", "p95_ms", "p99_ms", "samples", "stages",
        ] {
            assert!(run.get(key).is_some(), "{key} missing: {run}");
        }
        assert_eq!(run["frame_ms"], 10);
        for stage in [
            "capture_buffering",
            "encode",
            "encrypt",
            "network",
            "playout_wait",
            "decrypt",
            "decode",
            "playback_buffering",
        ] {
            assert!(run["stages"][stage].is_number(), "{stage}: {run}");
        }
    }
    assert_eq!(report["impaired_runs"].as_array().unwrap().len(), 1);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("polyline"),
        "not an SVG plot"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["latency", "--frame-ms", "15"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--spike-ms`: a run under loss and jitter with one stall, reported with the time the
/// playout delay took to recover; every run reports its late loss.
#[test]
fn the_latency_command_reports_late_loss_and_recovery_from_a_spike() {
    let json =
        std::env::temp_dir().join(format!("sotto-latency-spike-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args([
            "latency",
            "--duration",
            "4",
            "--frame-ms",
            "20",
            "--no-impaired",
            "--spike-ms",
            "200",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("late%") && stdout.contains("200 ms spike"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let impaired = report["impaired_runs"].as_array().unwrap();
    assert_eq!((runs.len(), impaired.len()), (2, 1), "{report}");
    for run in runs.iter().chain(impaired) {
        let late = run["late_loss_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&late), "{run}");
        assert!(run["accelerated_ms"].is_number() && run["expanded_ms"].is_number());
    }
    for run in runs {
        assert_eq!(run["spike_ms"], 0.0);
        assert!(run["recovery_ms"].is_null(), "no spike, no recovery: {run}");
    }
    let spike = &impaired[0];
    assert_eq!(spike["spike_ms"], 200.0);
    assert_eq!(spike["loss_percent"], 5.0);
    // The stall built up delay that the playout then shed (a loaded machine may take longer
    // than the target, but the delay must come back within the run).
    assert!(spike["recovery_ms"].as_f64().unwrap() >= 0.0, "{spike}");
    assert!(spike["accelerated_ms"].as_f64().unwrap() > 50.0, "{spike}");
    let _ = std::fs::remove_file(&json);
}

/// `--devices`: clicks played on the PulseAudio output, heard by its input, sent through the
/// pipeline and played on a second output (scripts/pulse's `sotto_ear`).
#[test]
fn the_latency_command_measures_through_real_devices() {
    if sotto::media::DeviceSource::open(None).is_err() && !common::devices_required() {
        common::skip(
            "the_latency_command_measures_through_real_devices",
            "no audio device",
        );
        return;
    }
    let json = std::env::temp_dir().join(format!("sotto-latency-dev-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args([
            "latency",
            "--devices",
            "--duration",
            "3",
            "--frame-ms",
            "20",
            "--no-impaired",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    eprintln!("{report}");
    for run in report["runs"].as_array().unwrap() {
        assert!(run["samples"].as_u64().unwrap() >= 5, "{run}");
        // Through real device buffers it takes longer than a frame, and far less than a second.
        let p50 = run["p50_ms"].as_f64().unwrap();
        assert!(p50 > 20.0 && p50 < 1000.0, "{run}");
    }
    let _ = std::fs::remove_file(&json);
}
