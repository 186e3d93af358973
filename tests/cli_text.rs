//! Text from a hostile signaling server (peer ids, peer names, error messages full of terminal
//! escapes and bidi overrides) reaches a `sotto` process's stdout and stderr escaped.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Clears the screen, homes the cursor, then reverses what follows and isolates it.
const NASTY: &str = "\u{1b}[2J\u{1b}[H\u{1b}]0;owned\u{7}\u{202e}deifirev\u{2066}\u{9b}31m";

/// Characters none of the output may contain raw.
const FORBIDDEN: [char; 6] = [
    '\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{2069}',
];

/// A WebSocket "signaling server" that welcomes each client with a hostile peer id, announces
/// a peer with a hostile name, refuses one message with a hostile reason, then refuses the
/// client for good (a bad token) with another. Returns its URL.
async fn hostile_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                // The client's join.
                let _ = ws.next().await;
                let nasty = serde_json::Value::from(NASTY);
                let messages = [
                    serde_json::json!({"v": 1, "type": "welcome", "peer_id": nasty,
                        "room": "r", "peers": []}),
                    serde_json::json!({"v": 1, "type": "peer_joined",
                        "peer_id": format!("p2{NASTY}"), "name": format!("mallory{NASTY}")}),
                    serde_json::json!({"v": 1, "type": "error", "code": "rate_limited",
                        "message": format!("slow down{NASTY}")}),
                    serde_json::json!({"v": 1, "type": "error", "code": "bad_token",
                        "message": format!("{NASTY}safety code 0000 0000 verified")}),
                ];
                for m in messages {
                    if ws.send(Message::text(m.to_string())).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    url
}

/// Runs `sotto` with every log line on (so each logged field is exercised), with a timeout.
async fn run_sotto(args: Vec<String>) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(args)
        .env("RUST_LOG", "sotto=trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("sotto did not finish in 60 s")
        .unwrap()
}

fn assert_escaped(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for c in FORBIDDEN {
            assert!(
                !text.contains(c),
                "{name} contains a raw {c:?}:\n{}",
                text.escape_debug()
            );
        }
    }
    // The server's text did arrive, shown escaped (so the test cannot pass by losing it).
    assert!(
        stderr.contains(r"\u{1b}[2J\u{1b}[H\u{1b}]0;owned\u{7}\u{202e}deifirev\u{2066}\u{9b}31msafety code 0000 0000 verified"),
        "stderr lacks the escaped refusal:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_servers_text_reaches_the_demo_output_escaped() {
    let url = hostile_server().await;
    let out = run_sotto(
        ["demo", "--tones", "--duration", "1", "--server", &url]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!out.status.success(), "the demo cannot succeed here");
    assert_escaped(&out);
    // The server's text was also logged, through the escaping log writer.
    let stderr = String::from_utf8_lossy(&out.stderr);
    // (tracing-subscriber escapes ESC in messages itself, as `\x1b`; the rest is ours.)
    assert!(
        [r"slow down\u{1b}[2J", r"slow down\x1b[2J"]
            .iter()
            .any(|s| stderr.contains(s))
            && stderr.contains(r"\u{202e}deifirev\u{2066}\u{9b}31m"),
        "stderr lacks the logged refusal:\n{stderr}"
    );
}

// `sotto call` prints the end reason, which quotes the server: escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_servers_text_reaches_the_call_output_escaped() {
    let url = hostile_server().await;
    let dir = std::env::temp_dir().join(format!("sotto-cli-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("identity.json");
    let out = run_sotto(
        [
            "call",
            "--server",
            &url,
            "--room",
            "r",
            "--tone",
            "440",
            "--output",
            dir.join("out.wav").to_str().unwrap(),
            "--identity",
            identity.to_str().unwrap(),
            "--duration",
            "10",
            "--bind",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "the call cannot succeed here");
    assert_escaped(&out);
}
