//! Calls across signaling nodes that share rooms through a real Redis: `sotto call` peers on
//! different nodes agree keys and talk end to end encrypted exactly as on one node.

#[path = "support/cluster_node.rs"]
mod cluster_node;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/sotto_bin.rs"]
mod sotto_bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cluster_node::Node;
use redis_server::{Redis, available};
use sotto::media::AudioSource;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn call(dir: &Path, server: &str, room: &str, who: &str, hz: u32, seconds: u32) -> Command {
    let mut cmd = Command::new(sotto_bin::sotto_bin());
    cmd.args(["call", "--server", server, "--room", room, "--name", who])
        .args(["--bind", "127.0.0.1:0"])
        .args([
            "--tone",
            &hz.to_string(),
            "--duration",
            &seconds.to_string(),
        ])
        .arg("--identity")
        .arg(dir.join(who).join("identity.json"))
        .arg("--output")
        .arg(dir.join(format!("{who}.wav")))
        .arg("--stats-json")
        .arg(dir.join(format!("{who}.json")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn show(who: &str, out: &Output) -> String {
    format!(
        "{who}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Share of `hz` in the last two seconds of a 48 kHz WAV.
fn tail_share(path: &Path, hz: f64) -> f64 {
    let mut src = sotto::media::WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    let tail = &all[all.len().saturating_sub(96_000)..];
    sotto::media::tone_share(tail, 48_000.0, hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_peers_on_two_nodes_hold_an_e2ee_call() {
    if !available() {
        return;
    }
    let redis = Redis::start();
    let a = Node::start(&redis.url()).await;
    let b = Node::start(&redis.url()).await;
    let dir = temp_dir("cluster-call");
    let alice = call(&dir, &a.url(), "across", "alice", 440, 5)
        .spawn()
        .unwrap();
    let bob = call(&dir, &b.url(), "across", "bob", 660, 5)
        .spawn()
        .unwrap();
    let alice = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap());
    let bob = tokio::task::spawn_blocking(move || bob.wait_with_output().unwrap());
    let (alice, bob) = (alice.await.unwrap(), bob.await.unwrap());
    let mut codes = Vec::new();
    for (who, out, hears) in [("alice", &alice, 660.0), ("bob", &bob, 440.0)] {
        let shown = show(who, out);
        assert!(out.status.success(), "{shown}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{who}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["e2ee"], true, "{report}");
        assert_eq!(report["decrypt_failures"], 0, "{report}");
        assert!(
            report["frames_decrypted"].as_u64().unwrap() >= 100,
            "{report}\n{shown}"
        );
        codes.push(report["safety_code"].as_str().unwrap().to_string());
        let share = tail_share(&dir.join(format!("{who}.wav")), hears);
        assert!(share > 0.5, "{who} heard {hears} Hz at {share:.2}\n{shown}");
    }
    // One key agreement between them, through two nodes.
    assert_eq!(codes[0], codes[1]);
    assert!(
        a.app
            .metrics
            .cluster_published
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
