//! `sotto-sfu --signaling <ws-url>`: the SFU as a WebSocket client of a signaling hub.
//!
//! The SFU connects, sends `sfu_attach` with its token and capacity, and then serves the
//! offers the hub forwards (`signal` from a member's peer id, `data` `{"kind":"sfu_offer",
//! "room","sdp"}`) by answering to that peer id (`{"kind":"sfu_answer","room","sdp"}` or
//! `{"kind":"sfu_refused","room","reason","message"}`), and the leaves (`sfu_leave`). See
//! `signaling/PROTOCOL.md`, section SFU. Blocking I/O on one thread: each offer is answered
//! within milliseconds by [`Sfu::join`], one at a time.
//!
//! If the hub goes away, every member seated through it is dropped (the hub has told them
//! `sfu` left, and they offer again) and the SFU reconnects with back-off. A bad URL, an
//! unreadable CA file, an untrusted certificate or a refused token end it with an error.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tungstenite::http::Uri;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::Sfu;

/// How long connecting (TCP, TLS, WebSocket upgrade, the hub's reply to `sfu_attach`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a message from the hub for this long, the SFU sends a `ping`.
const PING_AFTER: Duration = Duration::from_secs(20);
/// Without a message from the hub for this long, the connection counts as dead.
const DEAD_AFTER: Duration = Duration::from_secs(60);
/// First and longest wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest message accepted from the hub (a forwarded offer is at most the hub's limit).
const MAX_MESSAGE: usize = 256 * 1024;

/// Where and how to attach.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// `ws://HOST:PORT/ws` or `wss://HOST:PORT/ws`.
    pub url: String,
    /// A token minted for the empty room and the name `sfu` (`sotto-signaling token --sfu`).
    pub token: String,
    /// The most rooms the hub may pin to this SFU.
    pub capacity: u32,
    /// For `wss://`: trust only the certificates in this PEM file (else Mozilla's roots).
    pub ca_cert: Option<PathBuf>,
}

/// Why attaching stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The URL is not `ws://` or `wss://` with a host.
    #[error("bad --signaling URL: {0}")]
    BadUrl(String),
    /// The CA file could not be used.
    #[error("--ca-cert {path}: {reason}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The hub's certificate is not trusted.
    #[error("the hub's TLS certificate is not trusted ({0}); give its CA with --ca-cert")]
    Certificate(String),
    /// The hub refused the token (`bad_token`, `token_expired`) or does not take SFUs.
    #[error("the hub refused to attach this SFU: {code}: {message}")]
    Refused {
        /// The hub's error code.
        code: String,
        /// The hub's explanation.
        message: String,
    },
}

/// A reason to reconnect (logged), or to stop.
enum SessionEnd {
    Retry(String),
    Fatal(AttachError),
}

/// The parsed URL and TLS settings.
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Runs until a fatal error: attaches `sfu` to the hub at `config.url`, serves it, and
/// reconnects with back-off whenever the connection ends.
pub fn run(sfu: &Sfu, config: &AttachConfig) -> Result<(), AttachError> {
    let target = target(config)?;
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut seated = HashSet::new();
        let end = session(sfu, config, &target, &mut seated, &mut backoff);
        // The hub has told these members that `sfu` left; they will offer again.
        for (room, peer) in seated.drain() {
            sfu.leave(&room, &peer);
        }
        match end {
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Retry(why) => {
                tracing::warn!(reason = %why, retry_in = ?backoff, "signaling connection ended");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn target(config: &AttachConfig) -> Result<Target, AttachError> {
    let uri: Uri = config
        .url
        .parse()
        .map_err(|e| AttachError::BadUrl(format!("{:?}: {e}", config.url)))?;
    let (tls, default_port) = match uri.scheme_str() {
        Some("ws") => (false, 80),
        Some("wss") => (true, 443),
        _ => {
            return Err(AttachError::BadUrl(format!(
                "{:?} is not a ws:// or wss:// URL",
                config.url
            )));
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AttachError::BadUrl(format!("{:?} has no host", config.url)))?;
    // `[::1]` in a URL is `::1` to the resolver and to the certificate check.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    let tls = if tls {
        ServerName::try_from(host.clone())
            .map_err(|e| AttachError::BadUrl(format!("{host:?} is not a TLS server name: {e}")))?;
        Some(tls_config(config.ca_cert.as_deref())?)
    } else {
        None
    };
    Ok(Target {
        uri,
        host,
        port,
        tls,
    })
}

fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AttachError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_cert {
        let bad = |reason: String| AttachError::CaCert {
            path: path.to_owned(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AttachError::Certificate(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The byte stream under the WebSocket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn open(target: &Target) -> Result<Stream, SessionEnd> {
    let retry = |what: &str, e: &dyn std::fmt::Display| SessionEnd::Retry(format!("{what}: {e}"));
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| retry("resolve", &e))?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut tcp) = tcp else {
        return Err(match last {
            Some(e) => retry("connect", &e),
            None => SessionEnd::Retry("the host has no address".into()),
        });
    };
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .map_err(|e| retry("socket", &e))?;
    let Some(tls) = &target.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| SessionEnd::Fatal(AttachError::BadUrl(e.to_string())))?;
    let mut conn = rustls::ClientConnection::new(tls.clone(), name)
        .map_err(|e| SessionEnd::Fatal(AttachError::Certificate(e.to_string())))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let tls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            return Err(match tls_error {
                Some(rustls::Error::InvalidCertificate(why)) => {
                    SessionEnd::Fatal(AttachError::Certificate(format!("{why:?}")))
                }
                _ => retry("TLS handshake", &e),
            });
        }
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// What the hub sends (only the fields the SFU uses; unknown ones are ignored).
#[derive(Debug, Deserialize)]
struct FromHub {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    data: Option<Forwarded>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A member's signal as the hub forwards it.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Forwarded {
    SfuOffer { room: String, sdp: String },
    SfuLeave { room: String },
}

fn text(socket: &mut WebSocket<Stream>, value: &serde_json::Value) -> Result<(), SessionEnd> {
    socket
        .send(Message::text(value.to_string()))
        .map_err(|e| SessionEnd::Retry(format!("send: {e}")))
}

fn session(
    sfu: &Sfu,
    config: &AttachConfig,
    target: &Target,
    seated: &mut HashSet<(String, String)>,
    backoff: &mut Duration,
) -> SessionEnd {
    match attach(config, target) {
        Ok(mut socket) => {
            tracing::info!(url = %config.url, capacity = config.capacity, "attached to the hub");
            *backoff = BACKOFF_MIN;
            serve(sfu, &mut socket, seated)
        }
        Err(end) => end,
    }
}

/// Connects and attaches; the socket is ready to serve when this returns.
fn attach(config: &AttachConfig, target: &Target) -> Result<WebSocket<Stream>, SessionEnd> {
    let stream = open(target)?;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (mut socket, _) =
        tungstenite::client::client_with_config(target.uri.clone(), stream, Some(ws_config))
            .map_err(|e| SessionEnd::Retry(format!("WebSocket upgrade: {e}")))?;
    text(
        &mut socket,
        &serde_json::json!({
            "v": 1, "type": "sfu_attach", "capacity": config.capacity, "token": config.token,
        }),
    )?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err(SessionEnd::Retry("no answer to sfu_attach".into()));
        }
        let msg = socket
            .read()
            .map_err(|e| SessionEnd::Retry(format!("read: {e}")))?;
        let Message::Text(msg) = msg else { continue };
        let Ok(reply) = serde_json::from_str::<FromHub>(msg.as_str()) else {
            return Err(SessionEnd::Retry(
                "the hub sent something that is not JSON".into(),
            ));
        };
        match (reply.kind.as_str(), reply.code.as_deref()) {
            ("sfu_attached", _) => break,
            ("error", Some(code @ ("bad_token" | "token_expired" | "bad_message"))) => {
                return Err(SessionEnd::Fatal(AttachError::Refused {
                    code: code.to_owned(),
                    message: reply.message.unwrap_or_default(),
                }));
            }
            // A hub that predates attaching, with a type it does not know.
            ("error", Some(code @ "unknown_type")) => {
                return Err(SessionEnd::Fatal(AttachError::Refused {
                    code: code.to_owned(),
                    message: "this hub does not take attached SFUs".into(),
                }));
            }
            // `token_in_use` (our previous connection is not gone yet), `server_full`.
            ("error", code) => {
                return Err(SessionEnd::Retry(format!(
                    "refused for now: {}: {}",
                    code.unwrap_or("?"),
                    reply.message.unwrap_or_default()
                )));
            }
            _ => {}
        }
    }
    let tcp = socket.get_ref().tcp();
    tcp.set_read_timeout(Some(PING_AFTER))
        .map_err(|e| SessionEnd::Retry(format!("socket: {e}")))?;
    Ok(socket)
}

/// Answers forwarded offers and leaves until the connection ends.
fn serve(
    sfu: &Sfu,
    socket: &mut WebSocket<Stream>,
    seated: &mut HashSet<(String, String)>,
) -> SessionEnd {
    let mut last_heard = Instant::now();
    loop {
        let msg = match socket.read() {
            Ok(msg) => msg,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if last_heard.elapsed() > DEAD_AFTER {
                    return SessionEnd::Retry("the hub went silent".into());
                }
                if let Err(end) = text(socket, &serde_json::json!({"v": 1, "type": "ping"})) {
                    return end;
                }
                continue;
            }
            Err(e) => return SessionEnd::Retry(format!("read: {e}")),
        };
        last_heard = Instant::now();
        // Sends the pong for a ping the hub sent, if one is pending.
        if let Err(e) = socket.flush() {
            return SessionEnd::Retry(format!("send: {e}"));
        }
        let Message::Text(msg) = msg else { continue };
        let reply = match serde_json::from_str::<FromHub>(msg.as_str()) {
            Ok(FromHub {
                kind,
                from: Some(peer),
                data: Some(data),
                ..
            }) if kind == "signal" => handle(sfu, seated, &peer, data),
            Ok(FromHub {
                kind,
                code,
                message,
                ..
            }) if kind == "error" => {
                tracing::warn!(code = ?code, message = ?message, "the hub refused a message");
                None
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!("ignoring a message from the hub: {e}");
                None
            }
        };
        if let Some(reply) = reply
            && let Err(end) = text(socket, &reply)
        {
            return end;
        }
    }
}

/// Acts on one forwarded signal; returns the reply to send.
fn handle(
    sfu: &Sfu,
    seated: &mut HashSet<(String, String)>,
    peer: &str,
    data: Forwarded,
) -> Option<serde_json::Value> {
    let data = match data {
        Forwarded::SfuLeave { room } => {
            sfu.leave(&room, peer);
            seated.remove(&(room, peer.to_owned()));
            return None;
        }
        Forwarded::SfuOffer { room, sdp } => match sfu.join(&room, peer, &sdp) {
            Ok(answer) => {
                let data = serde_json::json!({"kind": "sfu_answer", "room": room, "sdp": answer});
                seated.insert((room, peer.to_owned()));
                data
            }
            Err(e) => {
                tracing::info!(%room, %peer, reason = %e, "refused an offer");
                serde_json::json!({
                    "kind": "sfu_refused", "room": room, "reason": e.code(), "message": e.to_string(),
                })
            }
        },
    };
    Some(serde_json::json!({"v": 1, "type": "signal", "to": peer, "data": data}))
}
