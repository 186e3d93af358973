//! `sotto call --chat` as users run it: two processes typing to each other through a real
//! signaling server, with `--chat-json` logs, a disappearing timer, and `--history` kept across
//! a restart.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::{TestServer, sotto_cli};
use serde_json::Value;

fn chat_args(cmd: &mut Command, url: &str, room: &str, name: &str, dir: &Path) {
    cmd.args(["call", "--server", url, "--room", room, "--name", name])
        .args(["--bind", "127.0.0.1:0", "--tone", "440", "--chat"])
        .arg("--identity")
        .arg(dir.join(name).join("identity.json"))
        .arg("--output")
        .arg(dir.join(format!("{name}.wav")))
        .arg("--chat-json")
        .arg(dir.join(format!("{name}.jsonl")))
        .arg("--stats-json")
        .arg(dir.join(format!("{name}.json")))
        .arg("--history")
        .arg(dir.join(name).join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// The `--chat-json` lines written so far.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (polling the file another process writes) until a line matches `f`.
async fn wait_line(path: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(v) = lines(path).into_iter().find(&f) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never came in {}: {:?}",
            path.display(),
            lines(path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn type_line(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

/// A child process killed if the test fails before it exits.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn finish(who: &str, mut running: Running) {
    let out = running.0.take().unwrap().wait_with_output().unwrap();
    common::show(who, &out);
    assert!(out.status.success(), "{who} failed");
}

fn event<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    (v["event"] == name).then_some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cli_peers_chat_with_a_timer_and_keep_history_across_a_restart() {
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-chat");
    let (alice_log, bob_log) = (dir.join("alice.jsonl"), dir.join("bob.jsonl"));

    let mut alice = sotto_cli();
    chat_args(&mut alice, &server.url, "chat", "alice", &dir);
    let mut alice = Running(Some(alice.spawn().unwrap()));
    let mut alice_in = alice.0.as_mut().unwrap().stdin.take().unwrap();
    // Typed before the peer is there: held until the call is connected.
    type_line(&mut alice_in, "MARKER-kept hello bob");
    type_line(&mut alice_in, "/timer 2s");
    let mut bob = sotto_cli();
    chat_args(&mut bob, &server.url, "chat", "bob", &dir);
    let mut bob = Running(Some(bob.spawn().unwrap()));
    let mut bob_in = bob.0.as_mut().unwrap().stdin.take().unwrap();

    let kept = wait_line(&bob_log, "alice's message", |v| {
        event(v, "message").is_some_and(|m| m["text"] == "MARKER-kept hello bob")
    })
    .await;
    assert_eq!(kept["from"], "alice");
    assert_eq!(kept["ttl_s"], Value::Null);
    assert!(kept["received_at"].as_u64().unwrap() > 1_600_000_000_000);
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    wait_line(&alice_log, "the delivery", |v| {
        event(v, "delivered").is_some_and(|d| d["id"] == kept_id.as_str() && d["to"] == "bob")
    })
    .await;
    // The bad timer was refused with a clear error, and changed nothing.
    let err = wait_line(&alice_log, "the timer error", |v| {
        event(v, "error").is_some()
    })
    .await;
    assert!(err["reason"].as_str().unwrap().contains("5 s"), "{err}");

    // And back, before any timer: it never disappears.
    type_line(&mut bob_in, "and back to alice");
    wait_line(&alice_log, "bob's message", |v| {
        event(v, "message").is_some_and(|m| m["text"] == "and back to alice" && m["from"] == "bob")
    })
    .await;

    // Bob sets 5 s; Alice's next message carries it and disappears on both sides.
    type_line(&mut bob_in, "/timer 5s");
    wait_line(&alice_log, "bob's timer", |v| {
        event(v, "timer").is_some_and(|t| t["from"] == "bob" && t["ttl_s"] == 5)
    })
    .await;
    type_line(&mut alice_in, "MARKER-burn gone in five");
    let sent = wait_line(&alice_log, "the timed message", |v| {
        event(v, "sent").is_some_and(|s| s["ttl_s"] == 5)
    })
    .await;
    let burn_id = sent["id"].as_str().unwrap().to_owned();
    let got = wait_line(&bob_log, "the timed message", |v| {
        event(v, "message").is_some_and(|m| m["id"] == burn_id.as_str())
    })
    .await;
    assert_eq!(got["ttl_s"], 5);
    for log in [&alice_log, &bob_log] {
        wait_line(log, "the expiry", |v| {
            event(v, "expired").is_some_and(|e| e["id"] == burn_id.as_str())
        })
        .await;
        // The expired text is gone from the log; the untimed one stays.
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.contains("MARKER-burn"), "{text}");
        assert!(text.contains("MARKER-kept"));
    }
    type_line(&mut alice_in, "/quit");
    finish("alice", alice);
    drop(bob_in);
    finish("bob", bob);
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("alice.json")).unwrap()).unwrap();
    assert_eq!(stats["messages_sent"], 2);
    assert_eq!(stats["messages_received"], 1);
    assert_eq!(stats["messages_expired"], 1);
    assert_eq!(stats["messages_rejected"], 0);

    // Restarted alone with her history, Alice sees the live messages again and not the
    // expired one (`messages::history`'s unit tests grep the files for what expiry erases).
    let mut again = sotto_cli();
    chat_args(&mut again, &server.url, "chat-again", "alice", &dir);
    again.args(["--duration", "1"]).stdin(Stdio::null());
    let out = again.output().unwrap();
    common::show("alice again", &out);
    // Alone in the room, the call ends with "no peer joined" (exit 1); the history is shown
    // at start all the same.
    assert!(String::from_utf8_lossy(&out.stdout).contains("no peer joined"));
    let restored: Vec<_> = lines(&alice_log)
        .into_iter()
        .filter(|v| v["restored"] == true)
        .collect();
    assert_eq!(restored.len(), 0, "history is per room");
    let mut again = sotto_cli();
    chat_args(&mut again, &server.url, "chat", "alice", &dir);
    again.args(["--duration", "1"]).stdin(Stdio::null());
    let out = again.output().unwrap();
    common::show("alice again", &out);
    // Alone in the room, the call ends with "no peer joined" (exit 1); the history is shown
    // at start all the same.
    assert!(String::from_utf8_lossy(&out.stdout).contains("no peer joined"));
    let restored: Vec<_> = lines(&alice_log)
        .into_iter()
        .filter(|v| v["restored"] == true)
        .collect();
    // Her own untimed message and Bob's reply; the expired one is gone.
    assert_eq!(restored.len(), 2, "{restored:?}");
    assert_eq!(restored[0]["event"], "sent");
    assert_eq!(restored[0]["text"], "MARKER-kept hello bob");
    assert_eq!(restored[1]["event"], "message");
    assert_eq!(restored[1]["from"], "bob");
    assert_eq!(restored[1]["text"], "and back to alice");
    assert!(String::from_utf8_lossy(&out.stdout).contains("MARKER-kept hello bob"));
    let _ = std::fs::remove_dir_all(&dir);
}
