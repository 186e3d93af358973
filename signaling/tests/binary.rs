//! The `sotto-signaling` binary as operators run it: the printed address, SIGTERM, tokens.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sotto_signaling::token::{unix_now, verify};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn prints_its_address_and_shuts_down_gracefully_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/ws"),
        "{url}"
    );

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"v":1,"type":"join","room":"r","name":"n"}"#,
    ))
    .await
    .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut saw_reason = false;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let Message::Text(t) = msg {
            saw_reason |= t.as_str().contains("shutting_down");
        }
    }
    assert!(saw_reason, "clients are told why the connection ends");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn token_subcommand_mints_verifiable_tokens_and_bad_flags_fail() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args([
            "token",
            "--secret",
            "s3cret",
            "--room",
            "r",
            "--user",
            "alice",
            "--ttl-secs",
            "60",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        verify(b"s3cret", token.trim(), "r", "alice", unix_now()),
        Ok(())
    );

    // `--sfu`: the token an attached SFU presents, for the empty room and the name `sfu`.
    let out = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["token", "--sfu", "--secret", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        verify(b"s3cret", token.trim(), "", "sfu", unix_now()),
        Ok(())
    );
    let both = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["token", "--sfu", "--secret", "s3cret", "--room", "r"])
        .output()
        .unwrap();
    assert!(!both.status.success());

    let bad = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));

    let bad = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["--allowed-origin", "https://app.example/path"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--allowed-origin"));
}

/// The server binary with `args`, and the lines it prints before serving.
struct Running {
    child: std::process::Child,
    lines: Vec<String>,
}

impl Running {
    fn start(args: &[&str], lines: usize) -> Self {
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--web-dir", "/nonexistent"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let lines = (0..lines)
            .map(|_| {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                line.trim().to_string()
            })
            .collect();
        Running { child, lines }
    }

    fn addr(&self) -> String {
        self.lines[0]
            .strip_prefix("listening on ws://")
            .and_then(|s| s.strip_suffix("/ws"))
            .expect("address line")
            .to_string()
    }

    /// Peak resident memory so far, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> String {
    env!("CARGO_BIN_EXE_sotto-signaling").to_string()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_are_served_only_on_the_metrics_address() {
    let plain = Running::start(&[], 1);
    let body = http_get(&plain.addr(), "/metrics");
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");

    let server = Running::start(&["--metrics-listen", "127.0.0.1:0"], 2);
    assert!(server.lines[0].starts_with("listening on ws://127.0.0.1:"));
    let metrics = server.lines[1]
        .strip_prefix("metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .expect("metrics line")
        .to_string();
    let body = http_get(&server.addr(), "/metrics");
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
    let body = http_get(&metrics, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("sotto_signaling_connections 0"), "{body}");
}

#[test]
fn sfu_flag_hosts_an_sfu_whose_metrics_join_the_servers() {
    let server = Running::start(&["--sfu", "--metrics-listen", "127.0.0.1:0"], 3);
    let udp = server.lines[2]
        .strip_prefix("sfu media on udp ")
        .expect("sfu line");
    for addr in udp.split(',') {
        let addr: std::net::SocketAddr = addr.parse().expect("an address");
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    }
    let metrics = server.lines[1]
        .strip_prefix("metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .expect("metrics line")
        .to_string();
    let body = http_get(&metrics, "/metrics");
    assert!(body.contains("sotto_signaling_connections 0"), "{body}");
    assert!(body.contains("sotto_sfu_rooms 0"), "{body}");

    // An SFU on every address needs to know which one members reach; SFU flags need --sfu.
    for (args, says) in [
        (&["--sfu", "--listen", "0.0.0.0:0"][..], "--sfu-announce-ip"),
        (&["--sfu-workers", "2"][..], "--sfu"),
    ] {
        let out = Command::new(binary()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{out:?}"
        );
    }
}

/// Eight clients that join and then never read, while another member sends each of them
/// large messages: the server drops them and its memory stays bounded. (Before the fix they
/// stayed connected and each held up to 256 queued messages: over 120 MB here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_cannot_grow_the_server() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    let server = Running::start(
        &[
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
            "--heartbeat-secs",
            "600",
            "--idle-timeout-secs",
            "600",
            "--write-timeout-secs",
            "600",
        ],
        1,
    );
    let addr = server.addr();
    let url = format!("ws://{addr}/ws");
    let baseline_kib = server.peak_rss_kib();

    let mut stalled = Vec::new();
    let mut ids = Vec::new();
    for i in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        ws.send(Message::text(format!(
            r#"{{"v":1,"type":"join","room":"flood","name":"stalled{i}"}}"#
        )))
        .await
        .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
        ids.push(welcome["peer_id"].as_str().unwrap().to_string());
        stalled.push(ws);
    }
    let (flooder, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (mut sink, mut stream) = flooder.split();
    sink.send(Message::text(
        r#"{"v":1,"type":"join","room":"flood","name":"flooder"}"#,
    ))
    .await
    .unwrap();
    let left = Arc::new(Mutex::new(HashSet::new()));
    let reader = {
        let left = left.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "peer_left" {
                    let mut left = left.lock().unwrap();
                    left.insert(v["peer_id"].as_str().unwrap().to_string());
                    if left.len() == 8 {
                        return;
                    }
                }
            }
        })
    };
    let payload = "x".repeat(60 * 1024);
    // Up to ~300 MB in all, paced so that the server's writes, not its queues, fill first.
    for round in 0..600 {
        let remaining: Vec<&String> = {
            let left = left.lock().unwrap();
            ids.iter().filter(|id| !left.contains(*id)).collect()
        };
        if remaining.is_empty() {
            break;
        }
        for id in remaining {
            let msg = format!(r#"{{"v":1,"type":"signal","to":"{id}","data":"{payload}"}}"#);
            if sink.send(Message::text(msg)).await.is_err() {
                break;
            }
        }
        if round % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("every stalled client is dropped")
        .unwrap();
    let peak_kib = server.peak_rss_kib();
    assert!(
        peak_kib < baseline_kib + 48 * 1024,
        "peak RSS {peak_kib} KiB, {baseline_kib} KiB before the flood"
    );
    drop(stalled);
}

/// The connection-limit flags reach the server.
#[tokio::test]
async fn limit_flags_reach_the_server() {
    use tokio::io::AsyncReadExt;
    let server = Running::start(
        &[
            "--join-timeout-secs",
            "1",
            "--header-timeout-secs",
            "1",
            "--max-connections-per-ip",
            "2",
            "--max-raw-connections",
            "100",
        ],
        1,
    );
    let url = format!("ws://{}/ws", server.addr());
    // Never joins: told why, then closed.
    let (mut idle, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // Never finishes its headers: closed.
    let mut silent = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    let mut told = false;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), idle.next()).await {
        if let Message::Text(t) = msg {
            told |= t.as_str().contains("join_timeout");
        }
    }
    assert!(told);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest))
        .await
        .expect("closed after the header timeout")
        .unwrap();
    assert!(rest.is_empty());
}
