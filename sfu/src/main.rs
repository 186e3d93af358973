//! `sotto-sfu`: the selective forwarding unit as its own process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sotto_sfu::attach::AttachConfig;
use sotto_sfu::redis_node::{RedisNode, RedisNodeConfig};
use sotto_sfu::{ForwardConfig, Sfu, SfuConfig};

/// Forwards SFrame-sealed group-call media it cannot decrypt.
#[derive(Debug, Parser)]
#[command(name = "sotto-sfu", version)]
struct Args {
    /// UDP address for media; worker i uses port + i.
    #[arg(long, default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// The IP address put in ICE candidates when --listen is unspecified.
    #[arg(long)]
    announce_ip: Option<IpAddr>,
    /// Worker threads, one UDP socket each (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Audio tracks per receiver: the N loudest other speakers.
    #[arg(long, default_value_t = 3)]
    audio_slots: usize,
    /// The most rooms at once.
    #[arg(long, default_value_t = 1000)]
    max_rooms: usize,
    /// The most participants per room.
    #[arg(long, default_value_t = 50)]
    max_participants: usize,
    /// Packets per second each sender may send; the excess is dropped and counted.
    #[arg(long, default_value_t = 500)]
    max_pps: u32,
    /// Serve Prometheus metrics over HTTP at this address (any path).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Attach to the signaling hub at this URL (ws://HOST:PORT/ws or wss://...), which then
    /// hands this SFU group rooms; reconnects with back-off when the hub goes away.
    #[arg(
        long,
        value_name = "WS-URL",
        requires = "token",
        conflicts_with = "redis"
    )]
    signaling: Option<String>,
    /// Register in this Redis server (redis://HOST:PORT) and serve the group rooms that
    /// signaling nodes sharing it (`sotto-signaling --redis`) place here.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The hub's token for this SFU (`sotto-signaling token --sfu`).
    #[arg(
        long,
        env = "SOTTO_SFU_TOKEN",
        hide_env_values = true,
        requires = "signaling"
    )]
    token: Option<String>,
    /// With a wss:// --signaling URL: trust only the certificates in this PEM file.
    #[arg(long, value_name = "FILE", requires = "signaling")]
    ca_cert: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto-sfu: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let defaults = SfuConfig::default();
    let capacity = u32::try_from(args.max_rooms).unwrap_or(u32::MAX).max(1);
    let attach = match (args.signaling, args.token) {
        (Some(url), Some(token)) => Some(AttachConfig {
            url,
            token,
            capacity,
            ca_cert: args.ca_cert,
        }),
        _ => None,
    };
    let sfu = Arc::new(Sfu::start(SfuConfig {
        listen: args.listen,
        workers: args.workers.unwrap_or(defaults.workers),
        max_rooms: args.max_rooms,
        announce_ip: args.announce_ip,
        forward: ForwardConfig {
            audio_slots: args.audio_slots,
            max_participants: args.max_participants,
            max_pps: args.max_pps,
            ..ForwardConfig::default()
        },
    })?);
    tracing::info!(addrs = ?sfu.local_addrs(), "sotto-sfu listening");
    // One parseable line on stdout, as `sotto-signaling --sfu` prints it.
    let addrs: Vec<String> = sfu.local_addrs().iter().map(|a| a.to_string()).collect();
    println!("sfu media on udp {}", addrs.join(","));
    std::io::stdout().flush()?;
    if let Some(addr) = args.metrics {
        let listener = TcpListener::bind(addr)?;
        tracing::info!(%addr, "metrics");
        let sfu = sfu.clone();
        std::thread::Builder::new()
            .name("sotto-sfu-metrics".into())
            .spawn(move || serve_metrics(&listener, &sfu))?;
    }
    // Stops (and deregisters) when dropped, which only an error exit does.
    let _node = match &args.redis {
        Some(url) => {
            let node = RedisNode::start(
                sfu.clone(),
                &RedisNodeConfig {
                    url: url.clone(),
                    capacity,
                },
            )?;
            // A second line, only with the flag: the id signaling nodes know this SFU by.
            println!("redis id {}", node.id());
            std::io::stdout().flush()?;
            Some(node)
        }
        None => None,
    };
    match attach {
        Some(config) => sotto_sfu::attach::run(&sfu, &config)?,
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

/// A minimal HTTP responder: every request gets the metrics page.
fn serve_metrics(listener: &TcpListener, sfu: &Sfu) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        // Read the request head (bounded) and ignore it.
        let mut reader = BufReader::new((&mut stream).take(8192));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let body = sfu.render_metrics();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
