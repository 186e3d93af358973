//! The web server: the web client compiled into the binary, the security headers on every
//! response, HTTPS and WSS with rustls, and clients that refuse an unknown certificate.

#[path = "support/sotto_bin.rs"]
mod sotto_bin;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use sotto_signaling::tls::{TlsSetup, fingerprint, self_signed};
use sotto_signaling::web::{CONTENT_SECURITY_POLICY, embedded_files};
use sotto_signaling::{App, ServerConfig, serve};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Generous: a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = App::new(config, shutdown.clone());
        tokio::spawn(serve(listener, app));
        Server { addr, shutdown }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A temporary directory of this test, removed first if an earlier run left it.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-web-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for the loopback names, and its PEM in `dir`.
fn loopback_certificate(dir: &Path, file: &str) -> (TlsSetup, PathBuf) {
    let setup = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = dir.join(file);
    std::fs::write(&pem, setup.certificate_pem()).unwrap();
    (setup, pem)
}

struct Response {
    status: u16,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// `GET path` over `io` with `Connection: close`.
async fn get(mut io: impl AsyncRead + AsyncWrite + Unpin, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    io.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the response; what arrived is complete.
    let _ = tokio::time::timeout(WAIT, io.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status: status.parse().unwrap(),
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get_plain(addr: SocketAddr, path: &str) -> Response {
    get(TcpStream::connect(addr).await.unwrap(), path).await
}

fn client_tls(pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_stream(addr: SocketAddr, pem: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_tls(pem))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The headers that make the page its own trust root, checked by meaning rather than by
/// comparing with the constant alone.
fn assert_hardened(path: &str, r: &Response) {
    let csp = r
        .headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{path}: no CSP"));
    assert_eq!(csp, CONTENT_SECURITY_POLICY, "{path}");
    let directives: HashMap<&str, &str> = csp
        .split(';')
        .filter_map(|d| d.trim().split_once(' '))
        .collect();
    assert_eq!(directives["default-src"], "'none'", "{path}");
    assert_eq!(directives["script-src"], "'self'", "{path}");
    assert_eq!(directives["style-src"], "'self'", "{path}");
    assert!(!csp.contains("unsafe"), "{path}: {csp}");
    assert_eq!(r.headers["x-content-type-options"], "nosniff", "{path}");
    assert_eq!(r.headers["referrer-policy"], "no-referrer", "{path}");
    let permissions = &r.headers["permissions-policy"];
    for feature in permissions.split(',').map(str::trim) {
        let (name, allow) = feature.split_once('=').unwrap();
        match name {
            "microphone" | "camera" => assert_eq!(allow, "(self)", "{path}: {feature}"),
            _ => assert_eq!(allow, "()", "{path}: {feature}"),
        }
    }
    assert!(permissions.contains("microphone=(self)") && permissions.contains("camera=(self)"));
}

/// Files the page and its modules load: `from './x.js'`, `import './x.js'`, `new Worker('x')`,
/// `src="x"`, `href="x"`.
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in [
        "from './",
        "import './",
        "new Worker('",
        "src=\"",
        "href=\"",
    ] {
        for piece in text.split(marker).skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| !matches!(c, '\'' | '"'))
                .collect();
            if !name.is_empty() && !name.contains(':') {
                out.push(name);
            }
        }
    }
    out
}

#[tokio::test]
async fn the_embedded_client_is_served_whole_with_its_security_headers() {
    // No web directory: the copy compiled into the binary.
    let server = Server::start(ServerConfig {
        embedded_web: true,
        ..ServerConfig::default()
    })
    .await;
    let page = get_plain(server.addr, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.body, include_bytes!("../web/index.html"));
    assert_hardened("/", &page);
    let html = String::from_utf8(page.body).unwrap();
    // Nothing inline for the CSP to block: every script has a source, no style element or
    // attribute.
    for tag in html.split("<script").skip(1) {
        assert!(tag.split('>').next().unwrap().contains("src="), "{tag}");
    }
    assert!(!html.contains("<style") && !html.contains(" style="));

    // Every file the page loads, and every module those load, is there and hardened.
    let mut queue = references(&html);
    let mut seen = Vec::new();
    while let Some(name) = queue.pop() {
        if seen.contains(&name) {
            continue;
        }
        let r = get_plain(server.addr, &format!("/{name}")).await;
        assert_eq!(r.status, 200, "{name} is referenced but not served");
        assert_hardened(&name, &r);
        if name.ends_with(".js") {
            assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
            queue.extend(references(&String::from_utf8(r.body).unwrap()));
        }
        seen.push(name);
    }
    for needed in ["app.js", "style.css", "sframe-worker.js"] {
        assert!(seen.iter().any(|s| s == needed), "{needed} not reached");
    }
    assert_eq!(seen.len() + 1, embedded_files().count(), "{seen:?}");

    // Not compiled in: the test pages, anything else; errors carry the headers too.
    for missing in ["/test/unit-checks.html", "/nothing.js", "/../Cargo.toml"] {
        let r = get_plain(server.addr, missing).await;
        assert_eq!(r.status, 404, "{missing}");
        assert_hardened(missing, &r);
    }
}

#[tokio::test]
async fn a_development_web_dir_is_served_with_the_same_headers() {
    let server = Server::start(ServerConfig {
        web_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("web")),
        embedded_web: true,
        ..ServerConfig::default()
    })
    .await;
    // Only the directory has the test pages: it wins over the embedded copy.
    let r = get_plain(server.addr, "/test/unit-checks.html").await;
    assert_eq!(r.status, 200);
    assert_hardened("/test/unit-checks.html", &r);
    let r = get_plain(server.addr, "/app.js").await;
    assert_eq!(r.status, 200);
    assert_hardened("/app.js", &r);
}

async fn next_event(events: &mut tokio::sync::mpsc::Receiver<SignalEvent>) -> SignalEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the client is running")
}

#[tokio::test]
async fn https_and_wss_with_a_self_signed_certificate_and_ca_cert() {
    let dir = temp_dir("https-wss");
    let (tls, pem) = loopback_certificate(&dir, "server.pem");
    let server = Server::start(ServerConfig {
        tls: Some(tls.config.clone()),
        embedded_web: true,
        ..ServerConfig::default()
    })
    .await;

    let page = get(tls_stream(server.addr, &pem).await, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body, include_bytes!("../web/index.html"));
    assert_hardened("/ over HTTPS", &page);
    // Nothing in the clear on the TLS port.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP answered");

    // Two Rust clients meet over wss:// (by name, checked against the certificate).
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        let mut config = SignalConfig::new(url.clone(), "tls-room", name);
        config.ca_cert = Some(pem.clone());
        let (client, mut events) = SignalClient::connect(config);
        match next_event(&mut events).await {
            SignalEvent::Joined { .. } => {}
            other => panic!("{name}: expected Joined, got {other:?}"),
        }
        clients.push((client, events));
    }
    let bob_id = match next_event(&mut clients[0].1).await {
        SignalEvent::PeerJoined(peer) => peer.peer_id,
        other => panic!("expected PeerJoined, got {other:?}"),
    };
    clients[0]
        .0
        .send_to(&bob_id, &serde_json::json!({"over": "tls"}))
        .await
        .unwrap();
    match next_event(&mut clients[1].1).await {
        SignalEvent::Message { data, .. } => assert_eq!(data.get(), r#"{"over":"tls"}"#),
        other => panic!("expected the message, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Events until `Closed`: an unknown certificate ends the client at once, never retried.
async fn refused(config: SignalConfig) -> String {
    let (_client, mut events) = SignalClient::connect(config);
    match next_event(&mut events).await {
        SignalEvent::Closed { reason } => reason,
        other => panic!("expected Closed at once, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_certificates_are_refused_at_once() {
    let dir = temp_dir("untrusted");
    let (tls, _) = loopback_certificate(&dir, "server.pem");
    let (_, other_pem) = loopback_certificate(&dir, "other.pem");
    let server = Server::start(ServerConfig {
        tls: Some(tls.config.clone()),
        ..ServerConfig::default()
    })
    .await;
    let url = format!("wss://localhost:{}/ws", server.addr.port());

    // The public roots, and another server's certificate: neither vouches for this one.
    for ca_cert in [None, Some(other_pem)] {
        let mut config = SignalConfig::new(url.clone(), "r", "n");
        config.ca_cert = ca_cert.clone();
        let reason = refused(config).await;
        assert!(
            reason.contains("certificate is not trusted") && reason.contains("--ca-cert"),
            "{ca_cert:?}: {reason}"
        );
    }
    let mut config = SignalConfig::new(url, "r", "n");
    config.ca_cert = Some(dir.join("missing.pem"));
    let reason = refused(config).await;
    assert!(reason.contains("missing.pem"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn websocket_origin_over_tls_same_origin_only() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = temp_dir("origin");
    let (tls, pem) = loopback_certificate(&dir, "server.pem");
    let server = Server::start(ServerConfig {
        tls: Some(tls.config.clone()),
        ..ServerConfig::default()
    })
    .await;
    let port = server.addr.port();
    for (origin, allowed) in [
        (format!("https://localhost:{port}"), true),
        (format!("http://localhost:{port}.evil.example"), false),
        ("https://evil.example".to_string(), false),
    ] {
        let mut request = format!("wss://localhost:{port}/ws")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let io = tls_stream(server.addr, &pem).await;
        match tokio_tungstenite::client_async(request, io).await {
            Ok(_) => assert!(allowed, "{origin} was let in"),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert!(!allowed, "{origin}: {}", r.status());
                assert_eq!(r.status(), 403, "{origin}");
            }
            Err(e) => panic!("{origin}: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads `child`'s stdout lines until one satisfies `done`; all lines so far.
fn read_until(out: &mut impl BufRead, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            return lines;
        }
        let finished = done(line.trim());
        lines.push(line.trim().to_string());
        if finished {
            return lines;
        }
    }
}

#[test]
fn the_binary_serves_wss_with_a_self_signed_certificate_that_sotto_call_needs() {
    let dir = temp_dir("binary");
    let pem = dir.join("cert.pem");
    let mut server = Command::new(env!("CARGO_BIN_EXE_sotto-signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--tls-cert-out",
        ])
        .arg(&pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    assert!(
        url.starts_with("wss://127.0.0.1:") && url.ends_with("/ws"),
        "{url}"
    );
    let printed = second
        .trim()
        .strip_prefix("certificate SHA-256 fingerprint ")
        .expect("fingerprint line")
        .to_string();
    let der = CertificateDer::from_pem_file(&pem).unwrap();
    assert_eq!(printed, fingerprint(&der));
    assert_eq!(printed.len(), 95, "{printed}");

    let call = |ca_cert: Option<&Path>| {
        let mut cmd = Command::new(sotto_bin::sotto_bin());
        cmd.args([
            "call",
            "--server",
            &url,
            "--room",
            "binary-tls",
            "--name",
            "cli",
        ])
        .args(["--bind", "127.0.0.1:0", "--tone", "440", "--duration", "60"])
        .arg("--identity")
        .arg(dir.join("identity.json"))
        .arg("--output")
        .arg(dir.join("heard.wav"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(pem) = ca_cert {
            cmd.arg("--ca-cert").arg(pem);
        }
        cmd
    };
    // Without --ca-cert: a clear reason and a failure exit, long before --duration.
    let refused = call(None).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("certificate is not trusted"), "{text}");

    // With it: joined and waiting for the peer.
    let mut joined = call(Some(&pem)).spawn().unwrap();
    let mut out = BufReader::new(joined.stdout.take().unwrap());
    let lines = read_until(&mut out, |l| l == "state: waiting for the other peer");
    let _ = joined.kill();
    let _ = joined.wait();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("state: waiting for the other peer"),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
