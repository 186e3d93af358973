//! Text messages between the browser and `sotto call --chat`: both ways, acknowledged, the
//! chat panel (`#chat-log` `.message[data-id]`, `#chat-input`, `#timer-select`), countdowns,
//! and removal from the page and the CLI's log at expiry.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cdp::{Browser, Page};
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, Server, room, skip, tone_wav, wait_status};

/// The CLI's `--chat-json` lines so far.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls the CLI's log (another process writes it) until a line matches.
async fn wait_line(path: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CONNECT;
    loop {
        if let Some(v) = lines(path).into_iter().find(&f) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never came: {:?}",
            lines(path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser's chat event matching a JS predicate on `e`.
async fn wait_event(page: &Page, pred: &str, what: &str) -> Value {
    page.wait_for(
        &format!("window.sotto.chat.events.find((e) => {pred}) ?? null"),
        CONNECT,
        what,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_and_sotto_call_chat_both_ways_with_disappearing_messages() {
    let test = "browser_chat_cli";
    let _media = crate::MEDIA.lock().await;
    let wav = tone_wav(440.0, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("chat.jsonl");
    let mut cli = Command::new(sotto_bin());
    cli.args(["call", "--server", &server.ws_url(), "--room", &room])
        .args([
            "--name",
            "cli",
            "--bind",
            "127.0.0.1:0",
            "--tone",
            "660",
            "--chat",
        ])
        .arg("--identity")
        .arg(dir.join("identity.json"))
        .arg("--output")
        .arg(dir.join("heard.wav"))
        .arg("--chat-json")
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let mut child = cli.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut type_line = |line: &str| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    };
    wait_status(&page, "connected", CONNECT).await;
    page.wait_for(
        "window.sotto.rttMs !== null",
        CONNECT,
        "the control channel",
    )
    .await;

    // Browser to CLI, through the panel's input, acknowledged.
    page.eval(
        "(() => { const i = document.getElementById('chat-input'); i.value = 'MARKER hello from the browser'; \
         document.getElementById('chat-form').requestSubmit(); return true; })()",
    )
    .await;
    let got = wait_line(&log, "the browser's message", |v| {
        v["event"] == "message" && v["text"] == "MARKER hello from the browser"
    })
    .await;
    assert_eq!(got["from"], "web");
    assert_eq!(got["ttl_s"], Value::Null);
    let id = got["id"].as_str().unwrap().to_owned();
    wait_event(
        &page,
        &format!("e.event === 'delivered' && e.id === {id:?} && e.to === 'cli'"),
        "the CLI's acknowledgement",
    )
    .await;
    assert_eq!(
        page.eval(&format!(
            "document.querySelector('#chat-log .message[data-id=\"{id}\"] .text')?.textContent"
        ))
        .await,
        "MARKER hello from the browser"
    );

    // CLI to browser.
    type_line("hello from the CLI");
    let m = wait_event(
        &page,
        "e.event === 'message' && e.text === 'hello from the CLI'",
        "the CLI's message",
    )
    .await;
    assert_eq!(m["from"], "cli");
    let cli_id = m["id"].as_str().unwrap().to_owned();
    wait_line(&log, "the browser's acknowledgement", |v| {
        v["event"] == "delivered" && v["id"] == cli_id.as_str() && v["to"] == "web"
    })
    .await;

    // The browser sets 5 s with #timer-select; the CLI is told; the next message disappears
    // on both sides, with a countdown in the page meanwhile.
    page.eval(
        "(() => { const s = document.getElementById('timer-select'); s.value = '5'; \
         s.dispatchEvent(new Event('change')); return true; })()",
    )
    .await;
    wait_line(&log, "the browser's timer", |v| {
        v["event"] == "timer" && v["from"] == "web" && v["ttl_s"] == 5
    })
    .await;
    let timed = page
        .eval("window.sotto.chat.send('MARKER burns in five')")
        .await;
    let timed = timed.as_str().expect("an id").to_owned();
    let countdown = page
        .wait_for(
            &format!(
                "document.querySelector('#chat-log .message[data-id=\"{timed}\"] .countdown')?.textContent || null"
            ),
            CONNECT,
            "a countdown",
        )
        .await;
    assert!(countdown.as_str().unwrap().ends_with(" s)"), "{countdown}");
    let got = wait_line(&log, "the timed message", |v| {
        v["event"] == "message" && v["id"] == timed.as_str()
    })
    .await;
    assert_eq!(got["ttl_s"], 5);
    page.wait_for(
        &format!("document.querySelector('#chat-log .message[data-id=\"{timed}\"]') === null"),
        CONNECT,
        "the message to leave the page",
    )
    .await;
    wait_line(&log, "the CLI's expiry", |v| {
        v["event"] == "expired" && v["id"] == timed.as_str()
    })
    .await;
    // Gone from the page's event list and the CLI's log too.
    let texts = page.eval("JSON.stringify(window.sotto.chat.events)").await;
    assert!(
        !texts.as_str().unwrap().contains("burns in five"),
        "{texts}"
    );
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("burns in five")
    );

    // The CLI sets the timer back to off; the browser's select follows.
    type_line("/timer off");
    wait_event(
        &page,
        "e.event === 'timer' && e.from === 'cli' && e.ttl_s === null",
        "the CLI's timer",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('timer-select').value")
            .await,
        ""
    );
    // An oversize message is refused in the page with a clear error; nothing is sent.
    let refused = page.eval("window.sotto.chat.send('x'.repeat(4097))").await;
    assert_eq!(refused, false);
    assert!(
        page.text("chat-error")
            .await
            .as_str()
            .unwrap()
            .contains("too long"),
        "no error shown"
    );

    type_line("/quit");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("web set messages to disappear after 5 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("message from web: MARKER hello from the browser"),
        "{stdout}"
    );
    let counters = page.eval("window.sotto.chat.counters").await;
    assert_eq!(counters["sent"], 2, "{counters}");
    assert_eq!(counters["received"], 1, "{counters}");
    assert_eq!(counters["expired"], 1, "{counters}");
    assert_eq!(counters["rejected"], 0, "{counters}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
