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

    let bad = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));
}
