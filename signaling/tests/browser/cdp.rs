//! A small Chrome DevTools Protocol driver for headless Chromium: launch, open isolated pages,
//! evaluate JavaScript, poll for conditions. Only what the browser tests need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// Whether a missing Chromium must fail the tests (CI sets `SOTTO_REQUIRE_BROWSER=1`).
pub fn browser_required() -> bool {
    std::env::var("SOTTO_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// The Chromium binary: `$SOTTO_CHROMIUM`, else `chromium` (Debian) or `chromium-browser`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SOTTO_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}

/// Console messages and uncaught exceptions of every page, for failure reports.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// Everything logged so far, one line per entry.
    pub fn dump(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A running headless Chromium with a fresh profile; killed and cleaned up on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    conn: Conn,
    log: Log,
}

#[derive(Clone)]
struct Conn {
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

impl Conn {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools connection open");
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => panic!("DevTools {method} failed: {e}"),
            Ok(Err(_)) => panic!("DevTools connection closed during {method}"),
            Err(_) => panic!("DevTools {method}: no answer in 60 s"),
        }
    }
}

static PROFILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// How to start Chromium, beyond the defaults of [`Browser::launch`].
#[derive(Default)]
pub struct Launch<'a> {
    /// The WAV file its fake microphone plays.
    pub fake_audio: Option<&'a Path>,
    /// The Y4M file its fake camera plays.
    pub fake_video: Option<&'a Path>,
    /// Runs it inside this network namespace (`ip netns exec`); DevTools is reached there.
    pub netns: Option<&'a str>,
    /// More command-line flags.
    pub args: Vec<String>,
}

/// A TCP connection to `addr` made inside network namespace `ns` (a socket keeps the
/// namespace it was made in, so only a short-lived thread enters it).
fn connect_in_netns(ns: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; only this short-lived thread changes.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nonblocking(true).unwrap();
        stream
    })
    .join()
    .unwrap()
}

impl Browser {
    /// Starts Chromium with the flags of `../shared/notes/platform-notes.md`; `fake_audio` is
    /// the WAV file its fake microphone plays. `None` when Chromium is not installed and not
    /// required (the caller skips).
    pub async fn launch(fake_audio: Option<&Path>) -> Option<Browser> {
        Self::launch_with(fake_audio, None).await
    }

    /// As `launch`, and `fake_video` is the Y4M file its fake camera plays (in a loop, at the
    /// file's own size and rate) instead of Chromium's built-in pattern.
    pub async fn launch_with(
        fake_audio: Option<&Path>,
        fake_video: Option<&Path>,
    ) -> Option<Browser> {
        Self::launch_opts(Launch {
            fake_audio,
            fake_video,
            ..Launch::default()
        })
        .await
    }

    /// Starts Chromium as `opts` says.
    pub async fn launch_opts(opts: Launch<'_>) -> Option<Browser> {
        let Launch {
            fake_audio,
            fake_video,
            netns,
            args,
        } = opts;
        let Some(binary) = find_chromium() else {
            assert!(
                !browser_required(),
                "SOTTO_REQUIRE_BROWSER=1 but no Chromium found (scripts/setup installs it)"
            );
            return None;
        };
        let profile = std::env::temp_dir().join(format!(
            "sotto-chromium-{}-{}",
            std::process::id(),
            PROFILE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                // `ip netns exec` execs Chromium in place: the child is Chromium itself.
                cmd.args(["netns", "exec", ns]).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
        if let Some(wav) = fake_audio {
            cmd.arg(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ));
        }
        if let Some(y4m) = fake_video {
            cmd.arg(format!(
                "--use-file-for-fake-video-capture={}",
                y4m.display()
            ));
        }
        if netns.is_none() {
            // Calls within one machine. Not in a namespace of the simulated networks: there it
            // would only add a path that never works, and a TURN allocation from loopback
            // never completes, which holds up gathering for its whole timeout.
            cmd.arg("--allow-loopback-in-peer-connection");
        }
        cmd.args(&args);
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));

        // Chromium writes its DevTools port and browser path into the profile once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (port, url) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next())
                    && let Ok(port) = port.parse::<u16>()
                {
                    break (port, format!("ws://127.0.0.1:{port}{path}"));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Chromium exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not open DevTools in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = match netns {
            Some(ns) => {
                let tcp = connect_in_netns(ns, ([127, 0, 0, 1], port).into());
                let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
                let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
                tokio_tungstenite::client_async(&url, stream)
                    .await
                    .expect("connect to DevTools")
            }
            None => tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect to DevTools"),
        };
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let log = Log::default();
        let (reader_pending, reader_log) = (pending.clone(), log.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = reader_pending.lock().unwrap().remove(&id) {
                        let result = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v["result"].clone()),
                        };
                        let _ = tx.send(result);
                    }
                } else {
                    log_event(&reader_log, &v);
                }
            }
        });
        Some(Browser {
            child,
            profile,
            conn: Conn {
                sink: Arc::new(tokio::sync::Mutex::new(sink)),
                pending,
                next_id: Arc::new(AtomicU64::new(1)),
            },
            log,
        })
    }

    /// A blank page in its own browser context (own storage, so its own IndexedDB identity),
    /// with `init_script` (if any) run before every document's own scripts.
    pub async fn new_page(&self, init_script: Option<&str>) -> Page {
        let ctx = self
            .conn
            .call(None, "Target.createBrowserContext", json!({}))
            .await;
        let target = self
            .conn
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": ctx["browserContextId"] }),
            )
            .await;
        let attached = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let page = Page {
            conn: self.conn.clone(),
            log: self.log.clone(),
            session: attached["sessionId"].as_str().unwrap().to_string(),
        };
        page.call("Runtime.enable", json!({})).await;
        // The browser's own messages too: failed loads, certificate and network errors.
        page.call("Log.enable", json!({})).await;
        page.call("Page.enable", json!({})).await;
        if let Some(script) = init_script {
            page.call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": script }),
            )
            .await;
        }
        page
    }
}

fn log_event(log: &Log, v: &Value) {
    match v["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = v["params"]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.get("value").unwrap_or(&a["description"]).to_string())
                .collect();
            log.push(format!(
                "console.{}: {}",
                v["params"]["type"],
                args.join(" ")
            ));
        }
        Some("Log.entryAdded") => {
            let e = &v["params"]["entry"];
            log.push(format!(
                "log.{} ({}): {} {}",
                e["level"], e["source"], e["text"], e["url"]
            ));
        }
        Some("Runtime.exceptionThrown") => log.push(format!(
            "exception: {}",
            v["params"]["exceptionDetails"]["exception"]["description"]
        )),
        _ => {}
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still write into the profile for a moment after the browser.
        for _ in 0..40 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One tab, attached through a flat DevTools session.
pub struct Page {
    conn: Conn,
    log: Log,
    session: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Runs `script` before every later document's own scripts.
    pub async fn add_init_script(&self, script: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": script }),
        )
        .await;
    }

    /// Accepts any server certificate in this page (a self-signed test server's).
    pub async fn ignore_certificate_errors(&self) {
        self.call(
            "Security.setIgnoreCertificateErrors",
            json!({ "ignore": true }),
        )
        .await;
    }

    /// Turns this page's Content-Security-Policy off, for a test that needs what the policy
    /// forbids (a WebSocket to another origin).
    pub async fn bypass_csp(&self) {
        self.call("Page.setBypassCSP", json!({ "enabled": true }))
            .await;
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates `expr` (awaiting a promise) and returns its JSON value, or the exception.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        match r.get("exceptionDetails") {
            Some(e) => Err(e["exception"]["description"]
                .as_str()
                .map_or_else(|| e.to_string(), str::to_string)),
            None => Ok(r["result"].get("value").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Evaluates `expr`; panics on an exception.
    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Polls `expr` every 100 ms until it gives something other than null/false (and no
    /// exception); returns that value. Panics with `what` after `timeout`.
    pub async fn wait_for(&self, expr: &str, timeout: Duration, what: &str) -> Value {
        self.wait_until(
            expr,
            |v| !v.is_null() && *v != Value::Bool(false),
            timeout,
            what,
        )
        .await
    }

    /// Polls `expr` every 100 ms until `done` holds for its value; returns that value.
    /// Panics with `what`, the last value and the page log after `timeout`.
    pub async fn wait_until(
        &self,
        expr: &str,
        done: impl Fn(&Value) -> bool,
        timeout: Duration,
        what: &str,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Err("not evaluated".to_string());
        loop {
            // A page load in progress can swallow an evaluation; poll again.
            if let Ok(v) = tokio::time::timeout(Duration::from_secs(10), self.try_eval(expr)).await
            {
                if let Ok(v) = &v
                    && done(v)
                {
                    return v.clone();
                }
                last = v;
            }
            if Instant::now() >= deadline {
                let status = self
                    .try_eval("document.getElementById('status')?.textContent")
                    .await;
                // What the page loaded, and how long each load took (a load that hangs shows).
                let loads = self
                    .try_eval("performance.getEntriesByType('resource').map((r) => `${r.name.split('/').pop()} ${Math.round(r.startTime)}+${Math.round(r.duration)} ms`).join(', ')")
                    .await;
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({expr}): last {last:?}, #status {status:?}, loads {loads:?}\npage log:\n{}",
                    self.log.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element with `id`, or null.
    pub async fn text(&self, id: &str) -> Value {
        self.eval(&format!(
            "document.getElementById({id:?})?.textContent ?? null"
        ))
        .await
    }
}
