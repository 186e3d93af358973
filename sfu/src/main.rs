//! `sotto-sfu`: the selective forwarding unit as its own process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use clap::Parser;
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
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let defaults = SfuConfig::default();
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
    match args.metrics {
        Some(addr) => serve_metrics(addr, &sfu)?,
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

/// A minimal HTTP responder: every request gets the metrics page.
fn serve_metrics(addr: SocketAddr, sfu: &Sfu) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    tracing::info!(%addr, "metrics");
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
    Ok(())
}
