//! The browser and `sotto call` (the Rust CLI) in one call: safety codes, audio both ways,
//! the control channel both ways.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto::media::{AudioSource, WavSource};

use crate::cdp::{Browser, Page};
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, Server, room, skip, tone_wav, wait_status};

/// 48 kHz mono samples of a WAV file as `--output` writes it.
fn read_wav(path: &Path) -> Vec<f32> {
    let mut src = WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    all
}

async fn wait_peers(server: &Server, n: u64) {
    let deadline = Instant::now() + CONNECT;
    while server.app.metrics.peers.load(Relaxed) < n {
        assert!(Instant::now() < deadline, "nobody joined the room");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn browser_stats_when_flowing(page: &Page) -> Value {
    page.wait_until(
        "window.sotto.stats()",
        |s| {
            s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                && s["media"]["decrypted"].as_u64() >= Some(100)
        },
        CONNECT,
        "decoded audio in the browser",
    )
    .await
}

pub async fn call_with_cli(test: &str, browser_first: bool) {
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
    let (out_wav, stats_json) = (dir.join("heard.wav"), dir.join("stats.json"));
    let secs = 8;
    let mut cli = Command::new(sotto_bin());
    cli.args([
        "call",
        "--server",
        &server.ws_url(),
        "--room",
        &room,
        "--name",
        "cli",
    ])
    .args(["--bind", "127.0.0.1:0", "--tone", "660"])
    .args(["--duration", &secs.to_string()])
    .arg("--identity")
    .arg(dir.join("identity.json"))
    .arg("--output")
    .arg(&out_wav)
    .arg("--stats-json")
    .arg(&stats_json)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());

    let page = browser.new_page(None).await;
    let start = Instant::now();
    let child = if browser_first {
        page.goto(&server.page_url(&room, "web")).await;
        wait_status(&page, "waiting for someone", CONNECT).await;
        cli.spawn().unwrap()
    } else {
        let child = cli.spawn().unwrap();
        wait_peers(&server, 1).await;
        page.goto(&server.page_url(&room, "web")).await;
        child
    };
    let cli = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    wait_status(&page, "connected", CONNECT).await;
    let connected = start.elapsed();
    // Mute and unmute over the control channel once it is open (a ping came back); the CLI
    // prints both.
    page.wait_for(
        "window.sotto.rttMs !== null",
        CONNECT,
        "the control channel",
    )
    .await;
    page.eval("document.getElementById('mute').click()").await;
    page.eval("document.getElementById('mute').click()").await;
    let browser_stats = browser_stats_when_flowing(&page).await;
    let code = page.eval("window.sotto.safetyCode").await;
    let timings = page.eval("window.sotto.timings").await;

    // The CLI hangs up after --duration; the browser hears that over the control channel.
    let ended = wait_status(&page, "ended", CONNECT + Duration::from_secs(secs)).await;
    let out = tokio::time::timeout(CONNECT, cli)
        .await
        .expect("sotto call exits")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sotto call failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The CLI sends `hangup` and leaves 150 ms later; on a loaded machine `peer_left` may
    // still win. The channel's CLI-to-browser direction is proven by the pongs (rttMs) either way.
    assert!(
        ended == "ended: the peer hung up" || ended == "ended: the peer left",
        "{ended}"
    );
    assert!(stdout.contains("the peer muted"), "{stdout}");
    assert!(stdout.contains("the peer unmuted"), "{stdout}");

    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_json).unwrap()).unwrap();
    assert_eq!(stats["safety_code"], code, "{stats}");
    assert_eq!(stats["peer_name"], "web");
    assert_eq!(stats["decrypt_failures"], 0, "{stats}");
    assert_eq!(stats["control_failures"], 0, "{stats}");
    assert!(stats["frames_decrypted"].as_u64() >= Some(100), "{stats}");
    assert_eq!(
        browser_stats["media"]["decryptFailures"], 0,
        "{browser_stats}"
    );
    assert_eq!(
        browser_stats["control"]["decryptFailures"], 0,
        "{browser_stats}"
    );

    // What the CLI played out carries the browser's microphone tone.
    let heard = read_wav(&out_wav);
    let tail = &heard[heard.len().saturating_sub(2 * 48_000)..];
    let dominant = sotto::media::dominant_hz(tail, 48_000.0);
    let share = sotto::media::tone_share(tail, 48_000.0, 440.0);
    // The same tolerance as the engine's tests (`assert_hears`): a loaded machine glitches.
    assert!(
        (dominant - 440.0).abs() <= 5.0 && share > 0.3,
        "the CLI heard {dominant} Hz, 440 Hz share {share:.3}"
    );
    eprintln!(
        "browser <-> sotto call ({}): connected in {connected:?}; browser timings {timings}; {ended}; CLI hears {dominant:.0} Hz (share {share:.3}), decrypted {} failures {} setup {} ms; browser stats {browser_stats}",
        if browser_first {
            "browser first"
        } else {
            "CLI first"
        },
        stats["frames_decrypted"],
        stats["decrypt_failures"],
        stats["setup_ms"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
