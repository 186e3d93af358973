//! A signaling node in the test's process, sharing rooms through Redis (`--redis`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use sotto_signaling::cluster::Cluster;
use sotto_signaling::{App, ServerConfig, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A node serving on a free loopback port until dropped.
pub struct Node {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: CancellationToken,
}

impl Node {
    /// A node with the default settings.
    pub async fn start(redis_url: &str) -> Node {
        Self::with_config(redis_url, ServerConfig::default()).await
    }

    /// A node with `config` (its `redis` is set here).
    pub async fn with_config(redis_url: &str, mut config: ServerConfig) -> Node {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "sotto_signaling=info".into()),
            )
            .with_test_writer()
            .try_init();
        config.redis = Some(redis_url.to_string());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = App::new(config, shutdown.clone());
        let cluster = Cluster::start(redis_url, &app).await.unwrap();
        app.cluster.set(cluster).unwrap();
        tokio::spawn(serve(listener, app.clone()));
        Node {
            addr,
            app,
            shutdown,
        }
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
