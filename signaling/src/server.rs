//! The HTTP side: routes, the WebSocket upgrade, and a serve loop with graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    tracker: TaskTracker,
}

impl App {
    /// State for a server with `config`, stopped by `shutdown`.
    pub fn new(config: ServerConfig, shutdown: CancellationToken) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        Arc::new(App {
            hub: Hub::new(config.limits.max_peers_per_room, metrics.clone()),
            metrics,
            config,
            shutdown,
            tracker: TaskTracker::new(),
        })
    }
}

async fn ws(upgrade: WebSocketUpgrade, State(app): State<Arc<App>>) -> Response {
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
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// The routes: `/ws`, `/healthz`, `/metrics`, and the web client's files at `/`.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if let Some(dir) = &app.config.web_dir {
        router = router.fallback_service(tower_http::services::ServeDir::new(dir));
    }
    router.with_state(app)
}

/// Serves on `listener` until `app.shutdown` is cancelled, then closes every connection with
/// a reason and waits (up to 5 s) for them to finish.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let shutdown = app.shutdown.clone();
    // Signaling messages are small and latency-bound: send each at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    app.tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; exiting anyway");
    }
    Ok(())
}
