//! The page under its Content-Security-Policy, as deployed: the web client compiled into the
//! server, over HTTPS with a self-signed certificate, the WebSocket over WSS.

use std::time::Duration;

use sotto_signaling::{App, ServerConfig, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cdp::Browser;
use crate::{CONNECT, room, skip, wait_status};

/// Records every CSP violation the page reports, before its own scripts run.
const RECORD_VIOLATIONS: &str = "window.cspViolations = []; \
    document.addEventListener('securitypolicyviolation', \
      (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_page_works_over_https_under_its_csp_and_the_csp_blocks_inline_code() {
    let test = "the_embedded_page_works_over_https_under_its_csp";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let tls = sotto_signaling::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        tls: Some(tls.config.clone()),
        embedded_web: true,
        ..ServerConfig::default()
    };
    let app = App::new(config, shutdown.clone());
    tokio::spawn(serve(listener, app.clone()));
    let _stop = shutdown.drop_guard();

    let page = browser.new_page(Some(RECORD_VIOLATIONS)).await;
    page.ignore_certificate_errors().await;
    page.goto(&format!(
        "https://localhost:{}/?room={}&name=web",
        addr.port(),
        room(test)
    ))
    .await;
    // Joined over wss:// (connect-src 'self'), modules and styles from files.
    wait_status(&page, "waiting for someone", CONNECT).await;
    assert_eq!(
        app.metrics.peers.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(page.eval("location.protocol").await, "https:");
    let weight = page
        .eval("getComputedStyle(document.getElementById('status')).fontWeight")
        .await;
    assert_eq!(weight, "700", "style.css applies");
    let violations = page.eval("window.cspViolations").await;
    assert_eq!(
        violations,
        serde_json::json!([]),
        "the page itself breaks no rule"
    );

    // The policy is in force: inline script and eval are refused, and reported.
    let inline_ran = page
        .eval(
            "(() => { const s = document.createElement('script'); \
               s.textContent = 'window.inlineRan = true'; document.body.append(s); \
               return window.inlineRan === true; })()",
        )
        .await;
    assert_eq!(inline_ran, false, "inline script ran");
    // Later, in a task of the page's own: DevTools' evaluation itself may eval.
    page.eval(
        "setTimeout(() => { try { window.evalResult = eval('6 * 7'); } \
           catch (e) { window.evalResult = e.name; } }, 0); true",
    )
    .await;
    let eval = page
        .wait_for("window.evalResult", Duration::from_secs(30), "eval tried")
        .await;
    assert_eq!(eval, "EvalError");
    // A WebSocket to any other origin (a hostile relay) is refused.
    page.eval(
        "try { window.elsewhere = new WebSocket('ws://127.0.0.1:9/ws'); } \
           catch (e) { window.elsewhere = e.name; } true",
    )
    .await;
    let violations = page
        .wait_for(
            "window.cspViolations.length >= 3 ? window.cspViolations : null",
            Duration::from_secs(30),
            "the violations reported",
        )
        .await;
    let text = violations.to_string();
    assert!(text.contains("script-src"), "{text}");
    assert!(text.contains("connect-src ws://127.0.0.1:9/ws"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_https_calls_sotto_call_over_wss_with_ca_cert() {
    let _media = crate::MEDIA.lock().await;
    let test = "a_page_over_https_calls_sotto_call_over_wss_with_ca_cert";
    let wav = crate::tone_wav(440.0, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tls = sotto_signaling::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = dir.join("cert.pem");
    std::fs::write(&pem, tls.certificate_pem()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        tls: Some(tls.config.clone()),
        embedded_web: true,
        ..ServerConfig::default()
    };
    tokio::spawn(serve(listener, App::new(config, shutdown.clone())));
    let _stop = shutdown.drop_guard();

    let room = room(test);
    let page = browser.new_page(Some(RECORD_VIOLATIONS)).await;
    page.ignore_certificate_errors().await;
    page.goto(&format!("https://localhost:{port}/?room={room}&name=web"))
        .await;
    wait_status(&page, "waiting for someone", CONNECT).await;

    let stats_json = dir.join("stats.json");
    let cli = std::process::Command::new(crate::sotto_bin::sotto_bin())
        .args(["call", "--server", &format!("wss://localhost:{port}/ws")])
        .args(["--room", &room, "--name", "cli", "--ca-cert"])
        .arg(&pem)
        .args(["--bind", "127.0.0.1:0", "--tone", "660", "--duration", "8"])
        .arg("--identity")
        .arg(dir.join("identity.json"))
        .arg("--output")
        .arg(dir.join("heard.wav"))
        .arg("--stats-json")
        .arg(&stats_json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cli = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap());
    assert_eq!(
        wait_status(&page, "connected", CONNECT).await,
        "connected: end-to-end encrypted"
    );
    let browser_stats = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["media"]["decrypted"].as_u64() >= Some(100),
            CONNECT,
            "decrypted audio in the browser",
        )
        .await;
    let code = page.eval("window.sotto.safetyCode").await;
    let out = tokio::time::timeout(CONNECT + Duration::from_secs(8), cli)
        .await
        .expect("sotto call exits")
        .unwrap();
    assert!(
        out.status.success(),
        "sotto call failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_json).unwrap()).unwrap();
    assert_eq!(stats["safety_code"], code, "{stats}");
    assert_eq!(stats["decrypt_failures"], 0, "{stats}");
    assert!(stats["frames_decrypted"].as_u64() >= Some(100), "{stats}");
    assert_eq!(
        browser_stats["media"]["decryptFailures"], 0,
        "{browser_stats}"
    );
    // The SFrame worker and the call ran under the CSP without breaking a rule.
    assert_eq!(
        page.eval("window.cspViolations").await,
        serde_json::json!([])
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
