//! `sotto-signaling`: run the relay, or mint a join token.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sotto_signaling::config::RAW_HEADROOM;
use sotto_signaling::server::parse_origin;
use sotto_signaling::token::{mint, unix_now};
use sotto_signaling::{App, Limits, ServerConfig, serve, serve_metrics};
use tokio_util::sync::CancellationToken;

/// The sotto signaling relay: rooms and message relay for end-to-end encrypted calls.
#[derive(Debug, Parser)]
#[command(
    name = "sotto-signaling",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a join token for a user in a room (HMAC-SHA256 with the server's secret).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Require join tokens minted with this secret.
    #[arg(long, env = "SOTTO_SIGNALING_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// TURN server offered to peers, with time-limited credentials made with --turn-secret
    /// (the TURN REST scheme of coturn's use-auth-secret): turn:HOST:PORT[?transport=udp|tcp]
    /// or turns:...; repeat it for more transports of the same server.
    #[arg(long = "turn-url", value_name = "URL")]
    turn_urls: Vec<String>,
    /// The shared secret of the TURN server (coturn's static-auth-secret).
    #[arg(long, env = "SOTTO_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// How long handed-out TURN credentials stay valid, in seconds.
    #[arg(long, default_value_t = sotto_signaling::turn::DEFAULT_TURN_TTL.as_secs())]
    turn_ttl_secs: u64,
    /// STUN server offered to peers: stun:HOST[:PORT] (repeatable).
    #[arg(long = "stun-url", value_name = "URL")]
    stun_urls: Vec<String>,
    /// Serve the web client at `/` from this directory instead of the copy built into the
    /// binary (for development; a path that is not a directory serves no page).
    #[arg(long, value_name = "DIR")]
    web_dir: Option<PathBuf>,
    /// Largest client message, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Peers per room (at most 128: the slots a group call's key ids can name).
    #[arg(long, default_value_t = Limits::default().max_peers_per_room,
          value_parser = peers_per_room)]
    max_peers_per_room: usize,
    /// Open WebSocket connections.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Open TCP connections, upgraded or not [default: --max-connections plus 1024].
    #[arg(long)]
    max_raw_connections: Option<usize>,
    /// Open TCP connections from one IP address (IPv6: one /64); 0 for no limit.
    #[arg(long, default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Seconds a WebSocket may stay without joining a room.
    #[arg(long, default_value_t = Limits::default().join_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    join_timeout_secs: u64,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = Limits::default().header_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Seconds one write to a client may take before it counts as too slow.
    #[arg(long, default_value_t = Limits::default().write_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    write_timeout_secs: u64,
    /// Bytes queued towards one client before it counts as too slow.
    #[arg(long, default_value_t = Limits::default().outbound_queue_bytes)]
    outbound_queue_bytes: usize,
    /// Browser origin (`https://host[:port]`) allowed to open a WebSocket; repeatable.
    /// Without any, only pages from this server itself (and clients without an Origin).
    #[arg(long = "allowed-origin", value_name = "URL", value_parser = origin)]
    allowed_origins: Vec<String>,
    /// Serve HTTPS and WSS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS and WSS with a certificate made at start for this host's names and
    /// addresses (for a LAN test); prints its SHA-256 fingerprint.
    #[arg(long)]
    tls_self_signed: bool,
    /// With --tls-self-signed: also write the certificate (PEM, no key) to FILE, for clients'
    /// `--ca-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_self_signed")]
    tls_cert_out: Option<PathBuf>,
    /// Serve `/metrics` on this address (keep it private); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Host an SFU for group calls in this process (signals to the peer `sfu`).
    #[arg(long)]
    sfu: bool,
    /// Share rooms with other nodes through this Redis server (`redis://HOST:PORT`):
    /// membership, presence and the signals between peers on different nodes.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The SFU's first UDP media socket [default: the --listen address's IP, a free port];
    /// worker N binds port + N.
    #[arg(long, value_name = "IP:PORT", requires = "sfu")]
    sfu_listen: Option<SocketAddr>,
    /// The address put in the SFU's ICE candidates when it listens on 0.0.0.0 or ::.
    #[arg(long, value_name = "IP", requires = "sfu")]
    sfu_announce_ip: Option<std::net::IpAddr>,
    /// SFU worker threads, one UDP socket each [default: one per core].
    #[arg(long, value_name = "N", requires = "sfu")]
    sfu_workers: Option<usize>,
    /// Speakers each member receives (the N loudest others).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "sfu")]
    sfu_audio_slots: usize,
    /// SFUs that may attach at once (`sotto-sfu --signaling`, with a token from
    /// `sotto-signaling token --sfu`).
    #[arg(long, default_value_t = Limits::default().max_attached_sfus)]
    max_attached_sfus: usize,
    /// Sustained messages per second per connection.
    #[arg(long, default_value_t = Limits::default().rate_per_sec)]
    rate_limit: u32,
    /// Burst of messages per connection above the sustained rate.
    #[arg(long, default_value_t = Limits::default().rate_burst)]
    rate_burst: u32,
    /// Seconds between server pings.
    #[arg(long, default_value_t = Limits::default().heartbeat.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_secs: u64,
    /// Seconds of silence after which a client is disconnected.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The server's secret.
    #[arg(long, env = "SOTTO_SIGNALING_SECRET", hide_env_values = true)]
    secret: String,
    /// Room the token admits to.
    #[arg(long, required_unless_present = "sfu", conflicts_with = "sfu")]
    room: Option<String>,
    /// User (display name) the token admits.
    #[arg(long, required_unless_present = "sfu", conflicts_with = "sfu")]
    user: Option<String>,
    /// A token for `sotto-sfu --signaling` to attach with (the empty room, the name `sfu`).
    #[arg(long)]
    sfu: bool,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Token(t)) => {
            if t.secret.is_empty() {
                eprintln!("sotto-signaling: the secret must not be empty");
                return ExitCode::FAILURE;
            }
            let expiry = unix_now().saturating_add(t.ttl_secs);
            let (room, user) = if t.sfu {
                (String::new(), "sfu".to_owned())
            } else {
                (t.room.unwrap_or_default(), t.user.unwrap_or_default())
            };
            println!("{}", mint(t.secret.as_bytes(), &room, &user, expiry));
            ExitCode::SUCCESS
        }
        None => match run(cli.serve) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sotto-signaling: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ice = ice_offer(&args)?;
    let secret = match args.secret {
        Some(s) if s.is_empty() => return Err("the secret must not be empty".into()),
        other => other.map(String::into_bytes),
    };
    let tls = if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        Some(sotto_signaling::tls::from_pem_files(cert, key).map_err(|e| e.to_string())?)
    } else if args.tls_self_signed {
        let names = sotto_signaling::tls::host_names(args.listen.ip());
        let setup = sotto_signaling::tls::self_signed(&names).map_err(|e| e.to_string())?;
        if let Some(out) = &args.tls_cert_out {
            std::fs::write(out, setup.certificate_pem())
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        }
        tracing::info!(names = ?names, "self-signed certificate made");
        Some(setup)
    } else {
        None
    };
    if let Some(dir) = args.web_dir.as_ref().filter(|dir| !dir.is_dir()) {
        tracing::warn!(dir = %dir.display(), "--web-dir is not a directory: serving no page");
    }
    let config = ServerConfig {
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
            max_peers_per_room: args.max_peers_per_room,
            max_connections: args.max_connections,
            max_raw_connections: args
                .max_raw_connections
                .unwrap_or(args.max_connections.saturating_add(RAW_HEADROOM)),
            max_connections_per_ip: args.max_connections_per_ip,
            join_timeout: Duration::from_secs(args.join_timeout_secs),
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            write_timeout: Duration::from_secs(args.write_timeout_secs),
            outbound_queue_bytes: args.outbound_queue_bytes,
            rate_per_sec: args.rate_limit,
            rate_burst: args.rate_burst,
            heartbeat: Duration::from_secs(args.heartbeat_secs),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            max_attached_sfus: args.max_attached_sfus,
            ..Limits::default()
        },
        secret,
        embedded_web: args.web_dir.is_none(),
        web_dir: args.web_dir.filter(|dir| dir.is_dir()),
        allowed_origins: args.allowed_origins,
        ice,
        tls: tls.as_ref().map(|t| t.config.clone()),
        redis: args.redis.clone(),
    };
    let sfu = if args.sfu {
        let defaults = sotto_sfu::SfuConfig::default();
        let config = sotto_sfu::SfuConfig {
            listen: args
                .sfu_listen
                .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0)),
            workers: args.sfu_workers.unwrap_or(defaults.workers).max(1),
            announce_ip: args.sfu_announce_ip,
            forward: sotto_sfu::ForwardConfig {
                audio_slots: args.sfu_audio_slots.clamp(1, 16),
                max_participants: args.max_peers_per_room,
                ..defaults.forward
            },
            ..defaults
        };
        if config.listen.ip().is_unspecified() && config.announce_ip.is_none() {
            return Err(format!(
                "--sfu listening on {} needs --sfu-announce-ip (the address members reach)",
                config.listen.ip()
            ));
        }
        let max_rooms = config.max_rooms;
        let sfu = sotto_sfu::Sfu::start(config).map_err(|e| format!("--sfu: {e}"))?;
        Some((std::sync::Arc::new(sfu), max_rooms))
    } else {
        None
    };
    // With --redis, the SFU here registers there and serves the rooms any node places on it.
    let _sfu_node = match (&sfu, &args.redis) {
        (Some((sfu, max_rooms)), Some(url)) => Some(
            sotto_sfu::redis_node::RedisNode::start(
                sfu.clone(),
                &sotto_sfu::redis_node::RedisNodeConfig {
                    url: url.clone(),
                    capacity: u32::try_from(*max_rooms).unwrap_or(u32::MAX),
                },
            )
            .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let sfu = sfu.map(|(sfu, _)| sfu);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics_listener = match args.metrics_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| format!("cannot listen on {at} for metrics: {e}"))?,
            ),
            None => None,
        };
        tracing::info!(%addr, tokens = config.secret.is_some(), "sotto-signaling started");
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let sfu_addrs: Option<Vec<String>> = sfu
            .as_ref()
            .map(|sfu| sfu.local_addrs().iter().map(|a| a.to_string()).collect());
        let sfu = sfu.map(|sfu| sfu as std::sync::Arc<dyn sotto_signaling::SfuLink>);
        let redis = config.redis.clone();
        let app = App::with_sfu(config, shutdown, sfu);
        if let Some(url) = redis {
            // Before the first line: a node that cannot reach Redis does not start.
            let cluster = sotto_signaling::cluster::Cluster::start(&url, &app)
                .await
                .map_err(|e| format!("--redis: {e}"))?;
            let _ = app.cluster.set(cluster);
        }
        // One parseable line on stdout: tools wait for it to learn the port.
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        println!("listening on {scheme}://{addr}/ws");
        if let Some(tls) = &tls {
            // Second line with TLS: what a visitor compares with the browser's certificate view.
            println!("certificate SHA-256 fingerprint {}", tls.fingerprint());
        }
        let _ = std::io::stdout().flush();
        if let Some(listener) = metrics_listener {
            let at = listener.local_addr().map_err(|e| e.to_string())?;
            // Another line, only with the flag: the first stays the call address.
            println!("metrics on http://{at}/metrics");
            let _ = std::io::stdout().flush();
            tokio::spawn(serve_metrics(listener, app.clone()));
        }
        if let Some(addrs) = sfu_addrs {
            // The last line, only with the flag.
            println!("sfu media on udp {}", addrs.join(","));
            let _ = std::io::stdout().flush();
        }
        serve(listener, app).await.map_err(|e| e.to_string())?;
        tracing::info!("sotto-signaling stopped");
        Ok(())
    })
}

fn origin(s: &str) -> Result<String, String> {
    parse_origin(s).ok_or_else(|| format!("{s:?} is not an origin like https://host[:port]"))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// The STUN/TURN servers to offer, checked.
fn ice_offer(args: &ServeArgs) -> Result<sotto_signaling::turn::IceOffer, String> {
    use sotto_signaling::turn::{IceOffer, check_url};
    for url in &args.stun_urls {
        check_url(url, &["stun", "stuns"]).map_err(|e| format!("--stun-url {e}"))?;
    }
    for url in &args.turn_urls {
        check_url(url, &["turn", "turns"]).map_err(|e| format!("--turn-url {e}"))?;
    }
    let secret = match &args.turn_secret {
        Some(s) if s.is_empty() => return Err("--turn-secret must not be empty".into()),
        Some(s) => Some(zeroize::Zeroizing::new(s.clone().into_bytes())),
        None => None,
    };
    match (args.turn_urls.is_empty(), secret.is_some()) {
        (false, false) => return Err("--turn-url needs --turn-secret".into()),
        (true, true) => return Err("--turn-secret needs --turn-url".into()),
        _ => {}
    }
    if args.turn_ttl_secs == 0 {
        return Err("--turn-ttl-secs must be at least 1".into());
    }
    Ok(IceOffer {
        stun_urls: args.stun_urls.clone(),
        turn_urls: args.turn_urls.clone(),
        turn_secret: secret,
        turn_ttl: Duration::from_secs(args.turn_ttl_secs),
    })
}

/// `--max-peers-per-room`: 1 to 128.
fn peers_per_room(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=sotto::signal::protocol::MAX_SLOTS).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a number from 1 to {}",
            sotto::signal::protocol::MAX_SLOTS
        )),
    }
}
