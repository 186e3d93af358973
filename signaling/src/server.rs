//! The HTTP side: accepting connections (with caps on raw connections, in total and per
//! address, and a header timeout), routes, the WebSocket upgrade with its `Origin` check, and
//! graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Body};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sotto::signal::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::ServerConfig;
use crate::connection;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Shared state of one server.
#[derive(Debug)]
pub struct App {
    /// Rooms and peers.
    pub hub: Hub,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: ServerConfig,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// The SFU in this process, if the server has one.
    pub sfu: Option<Arc<dyn crate::SfuLink>>,
    /// Attached SFUs, and which SFU each group room is pinned to.
    pub sfus: crate::sfu_pool::SfuPool,
    /// This process's id among the nodes sharing rooms through Redis (`n` and 16 random hex
    /// digits); drawn at start, so a restarted node is a new node.
    pub node_id: Arc<str>,
    /// With `--redis`: the link to the other nodes, set once at start.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// With `--redis`: group rooms placed on the SFUs registered in Redis (see
    /// [`crate::cluster_sfu`]); they take every offer then.
    pub sfu_cluster: Option<Arc<crate::cluster_sfu::ClusterSfu>>,
    tracker: TaskTracker,
    raw: Mutex<RawConnections>,
    refusing: AtomicUsize,
}

/// Open TCP connections on the call listener, in total and per source.
#[derive(Debug, Default)]
struct RawConnections {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl App {
    /// State for a server with `config`, stopped by `shutdown`.
    pub fn new(config: ServerConfig, shutdown: CancellationToken) -> Arc<Self> {
        Self::with_sfu(config, shutdown, None)
    }

    /// State for a server that hands group-call offers to `sfu` (see [`crate::sfu_link`]).
    pub fn with_sfu(
        config: ServerConfig,
        shutdown: CancellationToken,
        sfu: Option<Arc<dyn crate::SfuLink>>,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let node_id = new_node_id();
        let sfu_cluster = config.redis.as_deref().and_then(|url| {
            match crate::cluster_sfu::ClusterSfu::new(url, node_id.clone()) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::error!(error = %e, "--redis: no SFU placement through Redis");
                    None
                }
            }
        });
        Arc::new(App {
            sfus: crate::sfu_pool::SfuPool::new(
                sfu.clone(),
                config.limits.max_attached_sfus,
                metrics.clone(),
            ),
            sfu,
            node_id,
            cluster: std::sync::OnceLock::new(),
            sfu_cluster,
            hub: Hub::new(config.limits.max_peers_per_room, metrics.clone()),
            metrics,
            config,
            shutdown,
            tracker: TaskTracker::new(),
            raw: Mutex::new(RawConnections::default()),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on the blocking pool; shutdown waits for it like for connections.
    pub(crate) fn spawn_blocking(&self, f: impl FnOnce() + Send + 'static) {
        self.tracker.spawn_blocking(f);
    }

    fn raw(&self) -> MutexGuard<'_, RawConnections> {
        self.raw.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `n` and 16 random hex digits.
fn new_node_id() -> Arc<str> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // Without randomness the id is still unique enough per host and start time.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    format!("n{}", hex::encode(bytes)).into()
}

/// The key per-address limits count under: the address itself, except that IPv6 hosts are
/// grouped by /64 (one subscriber usually has a whole /64) and IPv4-mapped addresses count as
/// IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One accepted TCP connection's place in the caps; freed when the last clone is dropped
/// (the HTTP connection and, after an upgrade, the WebSocket each hold one).
#[derive(Debug, Clone)]
struct Slot {
    _held: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    app: Arc<App>,
    source: IpAddr,
}

impl Slot {
    fn take(app: &Arc<App>, ip: IpAddr) -> Result<Slot, ErrorCode> {
        let limits = &app.config.limits;
        let source = source_key(ip);
        let mut raw = app.raw();
        if raw.total >= limits.max_raw_connections {
            return Err(ErrorCode::ServerFull);
        }
        let from_source = raw.per_source.entry(source).or_default();
        if limits.max_connections_per_ip > 0 && *from_source >= limits.max_connections_per_ip {
            return Err(ErrorCode::TooManyConnections);
        }
        *from_source += 1;
        raw.total += 1;
        app.metrics.raw_connections.fetch_add(1, Relaxed);
        Ok(Slot {
            _held: Arc::new(SlotInner {
                app: app.clone(),
                source,
            }),
        })
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut raw = self.app.raw();
        raw.total = raw.total.saturating_sub(1);
        if let Some(n) = raw.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                raw.per_source.remove(&self.source);
            }
        }
        self.app.metrics.raw_connections.fetch_sub(1, Relaxed);
    }
}

/// Whether a WebSocket request may be served, by its `Origin`. Native clients send none;
/// browsers always do, and a page from another site must not use a visitor's browser (and
/// network position) to reach this server.
fn origin_allowed(config: &ServerConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if !config.allowed_origins.is_empty() {
        return config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    // Same origin: the page came from the host the request was sent to.
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    authority.eq_ignore_ascii_case(host)
        || host
            .strip_suffix(default_port)
            .is_some_and(|h| authority.eq_ignore_ascii_case(h))
}

/// Checks that `origin` is `http(s)://host[:port]`, as browsers send it, and returns it
/// without a trailing slash; `None` otherwise. For validating `--allowed-origin`.
pub fn parse_origin(origin: &str) -> Option<String> {
    let origin = origin.trim_end_matches('/');
    let (scheme, authority) = origin.split_once("://")?;
    let ok = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| origin.to_ascii_lowercase())
}

async fn ws(
    upgrade: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    slot: Option<Extension<Slot>>,
) -> Response {
    if !origin_allowed(&app.config, &headers) {
        app.metrics.origins_refused.fetch_add(1, Relaxed);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    // Frames a little over the limit still arrive, so the client gets a `too_large` error
    // rather than a bare protocol close; far larger ones are cut off by the WebSocket layer.
    let cap = app
        .config
        .limits
        .max_message_bytes
        .saturating_mul(2)
        .max(1024);
    // Small per-connection buffers: signaling messages are small, and tungstenite's 128 KiB
    // defaults cost ~140 MB per 1000 idle clients. Writes go out as they are queued.
    upgrade
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| async move {
            // The TCP connection stays counted for as long as the WebSocket lives.
            let _slot = slot;
            let _tracked = app.tracker.token();
            let open = app.metrics.connections.fetch_add(1, Relaxed);
            app.metrics.connections_total.fetch_add(1, Relaxed);
            if open as usize >= app.config.limits.max_connections {
                connection::refuse_full(socket, app.clone()).await;
            } else {
                connection::run(socket, app.clone()).await;
            }
            app.metrics.connections.fetch_sub(1, Relaxed);
        })
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        match &app.sfu {
            Some(sfu) => app.metrics.render() + &sfu.render_metrics(),
            None => app.metrics.render(),
        } + &app
            .sfu_cluster
            .as_ref()
            .map(|c| c.metrics.render())
            .unwrap_or_default(),
    )
}

/// The call listener's routes: `/ws`, `/healthz`, and the web client's files at `/`, every
/// response with the security headers of [`crate::web`].
/// `/metrics` is not among them: see [`metrics_router`].
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz));
    if let Some(dir) = &app.config.web_dir {
        router = router.fallback_service(tower_http::services::ServeDir::new(dir));
    } else if app.config.embedded_web {
        router = router.fallback(crate::web::embedded);
    }
    router
        .layer(axum::middleware::map_response(crate::web::security_headers))
        .with_state(app)
}

/// The operator's routes, for a separate (private) listener: `/metrics` and `/healthz`.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(app)
}

/// A client's byte stream: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Refused connections being answered at one time; past this, they are just closed.
const MAX_REFUSING: usize = 64;

/// Refuses a connection over a cap with a minimal HTTP response and closes it. The answer gets
/// up to a second, so that a client whose request arrived is not reset before it reads why
/// (closing a socket with unread input resets it); only a few are answered at a time.
fn refuse(mut tcp: TcpStream, app: &Arc<App>, code: ErrorCode) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    app.metrics.error(code);
    let status = match code {
        ErrorCode::TooManyConnections => "429 Too Many Requests",
        _ => "503 Service Unavailable",
    };
    let body = code.as_str();
    let response = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    if app.refusing.fetch_add(1, Relaxed) >= MAX_REFUSING {
        app.refusing.fetch_sub(1, Relaxed);
        let _ = tcp.try_write(response.as_bytes());
        return;
    }
    let app = app.clone();
    app.tracker.clone().spawn(async move {
        let answer = async {
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        app.refusing.fetch_sub(1, Relaxed);
    });
}

/// Serves HTTP/1.1 on `listener` with `router` until `app.shutdown` is cancelled. With
/// `capped` (the call listener), connections count against the raw and per-address caps and
/// speak TLS if the server has it.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    app: Arc<App>,
    capped: bool,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.config.limits.header_timeout)
        // Headers of a signaling request are small; do not buffer more than this per socket.
        .max_buf_size(16 * 1024);
    loop {
        let accepted = tokio::select! {
            () = app.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or similar: pause rather than spin; resets are per
                // connection and harmless.
                tracing::debug!("accept: {e}");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let slot = if capped {
            match Slot::take(&app, peer.ip()) {
                Ok(slot) => Some(slot),
                Err(code) => {
                    refuse(tcp, &app, code);
                    continue;
                }
            }
        } else {
            None
        };
        // Signaling messages are small and latency-bound: send each at once (no Nagle delay).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let router = router.clone();
        let shutdown = app.shutdown.clone();
        let http = http.clone();
        let tls = app.config.tls.clone().filter(|_| capped);
        let handshake_timeout = app.config.limits.header_timeout;
        app.tracker.spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                // The handshake gets the header timeout: a client that stalls in it holds a
                // slot no longer than one that stalls in its request headers.
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        done = tokio::time::timeout(handshake_timeout, accept) => match done {
                            Ok(Ok(stream)) => Box::new(stream),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                    }
                }
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                if let Some(slot) = &slot {
                    req.extensions_mut().insert(slot.clone());
                }
                let mut router = router.clone();
                async move {
                    let response: Result<Response, Infallible> =
                        router.call(req.map(Body::new)).await;
                    response
                }
            });
            let conn = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    Ok(())
}

/// Serves the call listener (`/ws`, `/healthz`, web files) on `listener` until `app.shutdown`
/// is cancelled, then closes every connection with a reason and waits (up to 5 s) for them
/// to finish.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    if let Some(cluster) = &app.sfu_cluster {
        cluster.start(&app);
    }
    let result = accept_loop(listener, router(app.clone()), app.clone(), true).await;
    app.tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; exiting anyway");
    }
    result
}

/// Serves `/metrics` (and `/healthz`) on its own `listener`, meant for a private address,
/// until `app.shutdown` is cancelled.
pub async fn serve_metrics(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    accept_loop(listener, metrics_router(app.clone()), app, false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origins_same_host_by_default_or_the_allow_list() {
        let open = ServerConfig::default();
        assert!(origin_allowed(&open, &headers(None, "a.example:8787")));
        assert!(origin_allowed(
            &open,
            &headers(Some("http://a.example:8787"), "a.example:8787")
        ));
        assert!(origin_allowed(
            &open,
            &headers(Some("https://A.example"), "a.example")
        ));
        assert!(origin_allowed(
            &open,
            &headers(Some("https://a.example"), "a.example:443")
        ));
        for bad in [
            "http://evil.example",
            "http://a.example:9999",
            "null",
            "http://a.example:8787.evil.example",
            "file://",
        ] {
            assert!(
                !origin_allowed(&open, &headers(Some(bad), "a.example:8787")),
                "{bad}"
            );
        }
        let listed = ServerConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..ServerConfig::default()
        };
        assert!(origin_allowed(&listed, &headers(None, "a.example")));
        assert!(origin_allowed(
            &listed,
            &headers(Some("https://app.example"), "a.example")
        ));
        assert!(!origin_allowed(
            &listed,
            &headers(Some("https://a.example"), "a.example")
        ));
    }

    #[test]
    fn origin_flags_are_checked() {
        assert_eq!(
            parse_origin("https://App.example:8443/").as_deref(),
            Some("https://app.example:8443")
        );
        for bad in [
            "app.example",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://u@x",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
