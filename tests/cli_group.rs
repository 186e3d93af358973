//! `sotto call --group` as users run it: three processes in one room of a server with an SFU,
//! each sending its own tone. Each hears both others and not itself, all print one group
//! safety code, and the stats JSON carries the group keys (`mode`, `group_safety_code`,
//! `participants`, `rekeys`). A server without an SFU is refused with a clear error.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{TestServer, sotto_cli, temp_dir, tone_ratio};
use sotto::media::AudioSource;

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The WAV `path` (48 kHz mono) from `from_end` seconds before its end, for `seconds`.
fn wav_window(path: &Path, from_end: f64, seconds: f64) -> Vec<f32> {
    let mut src = sotto::media::WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    let end = all.len().saturating_sub((from_end * 48_000.0) as usize);
    let start = end.saturating_sub((seconds * 48_000.0) as usize);
    all[start..end].to_vec()
}

/// Mean share of `hz` over 100 ms blocks.
fn share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    blocks
        .iter()
        .map(|b| tone_ratio(b, 48_000.0, hz))
        .sum::<f64>()
        / blocks.len().max(1) as f64
}

/// The group codes a member printed with the members they covered.
fn printed_codes(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("group safety code: ")?;
            let code = rest.get(..9)?.to_owned();
            let members = rest.split("members besides us: ").nth(1)?;
            Some((code, members.trim_end_matches(')').to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cli_members_hear_each_other_and_print_one_group_code() {
    let server = TestServer::start_with_sfu().await;
    let dir = temp_dir("cli-group");
    let tones = [("alice", 440.0), ("bob", 660.0), ("carol", 880.0)];
    let mut children = Vec::new();
    for (name, hz) in tones {
        let mut cmd = sotto_cli();
        cmd.args(["call", "--group", "--server", &server.url, "--room", "trio"])
            .args(["--name", name, "--bind", "127.0.0.1:0"])
            .args(["--tone", &hz.to_string(), "--duration", "6"])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((name, cmd.spawn().unwrap()));
    }
    let mut outputs = Vec::new();
    for (name, child) in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        common::show(name, &out);
        assert!(out.status.success(), "{name} failed");
        outputs.push((name, out));
    }
    let mut full_codes = Vec::new();
    for ((name, out), (_, hz)) in outputs.iter().zip(tones) {
        let report = stats(&dir.join(format!("{name}.json")));
        assert_eq!(report["mode"], "sfu", "{name}: {report}");
        assert_eq!(report["e2ee"], true);
        assert_eq!(report["decrypt_failures"], 0, "{name}: {report}");
        assert!(report["rekeys"].is_u64(), "{name}: {report}");
        assert!(report["group_safety_code"].is_string(), "{name}: {report}");
        // In a group, the report's safety code is the group code.
        assert_eq!(report["safety_code"], report["group_safety_code"]);
        let participants = report["participants"].as_array().unwrap();
        // Everyone it met, whether still there when it hung up or not.
        assert_eq!(participants.len(), 2, "{name}: {report}");
        for p in participants {
            for key in [
                "name",
                "identity",
                "trust",
                "frames_decrypted",
                "decrypt_failures",
                "speaking",
                "present",
            ] {
                assert!(p.get(key).is_some(), "{name}: participant lacks {key}: {p}");
            }
            assert_eq!(p["decrypt_failures"], 0, "{name}: {p}");
            assert!(
                p["frames_decrypted"].as_u64().unwrap() >= 100,
                "{name}: {p}"
            );
        }
        // The code each printed once everyone was in.
        let codes = printed_codes(out);
        let full = codes
            .iter()
            .find(|(_, members)| members.split(", ").count() == 2)
            .unwrap_or_else(|| panic!("{name} never printed a code over both others"));
        full_codes.push(full.0.clone());
        // A window before anyone hung up: both other tones, not our own.
        let heard = wav_window(&dir.join(format!("{name}.wav")), 1.5, 2.0);
        for (other, other_hz) in tones {
            let s = share(&heard, other_hz);
            eprintln!("{name} hears {other} ({other_hz} Hz) at share {s:.2}");
            if other_hz == hz {
                assert!(s < 0.05, "{name} hears itself: {s:.2}");
            } else {
                assert!(s > 0.2, "{name} barely hears {other}: {s:.2}");
            }
        }
    }
    assert!(
        full_codes.windows(2).all(|w| w[0] == w[1]),
        "the members printed different group codes: {full_codes:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_on_a_server_without_an_sfu_fails_clearly() {
    let server = TestServer::start().await;
    let dir = temp_dir("cli-group-nosfu");
    let out = sotto_cli()
        .args(["call", "--group", "--server", &server.url, "--room", "r"])
        .args(["--name", "alice", "--tone", "440", "--duration", "5"])
        .arg("--output")
        .arg(dir.join("alice.wav"))
        .arg("--identity")
        .arg(dir.join("identity.json"))
        .output()
        .unwrap();
    common::show("alice", &out);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no SFU") && stderr.contains("--sfu"),
        "unclear error: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
