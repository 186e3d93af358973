//! `sotto`: the command-line front end of the sotto call engine.

mod call_cmd;
mod chat;
mod demo;
mod devices;
mod group_demo;
mod hexarg;
mod identity_cmd;
mod latency_cmd;
mod peers_cmd;
mod relay_demo;
mod sframe_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sotto::text::{EscapingWriter, Printable};

/// sotto: end-to-end encrypted calls (SFrame, RFC 9605).
#[derive(Debug, Parser)]
#[command(name = "sotto", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encrypt or decrypt single SFrame frames (for interop and debugging).
    Sframe(sframe_cmd::SframeArgs),
    /// List audio input and output devices with their supported configurations.
    Devices(devices::DevicesArgs),
    /// Create (on first use) and show this device's identity key.
    Identity(identity_cmd::IdentityArgs),
    /// List the known peers (pinned identity keys), verify one, or forget one.
    Peers(peers_cmd::PeersArgs),
    /// Call a peer: join a room on a signaling server, agree keys, talk end-to-end encrypted.
    Call(Box<call_cmd::CallArgs>),
    /// A local two-party E2EE call: starts a signaling server and two peers, then reports.
    Demo(demo::DemoArgs),
    /// Measure mouth-to-ear (audio) or glass-to-glass (`--video`) latency per stage, with and
    /// without E2EE, over WebRTC loopback.
    Latency(latency_cmd::LatencyArgs),
    /// The handshake and frame protection against a hostile relay, in one process.
    RelayDemo(relay_demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    init_logging();
    let result = match cli.command {
        Command::Sframe(args) => sframe_cmd::run(args),
        Command::Devices(args) => devices::run(args).map_err(|e| e.to_string()),
        Command::Identity(args) => identity_cmd::run(args),
        Command::Peers(args) => peers_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::RelayDemo(args) => relay_demo::run(args),
        Command::Call(args) => call_cmd::run(*args),
        Command::Latency(args) => latency_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Errors can quote a peer or the signaling server.
            eprintln!("sotto: {}", Printable(&message));
            ExitCode::FAILURE
        }
    }
}

/// The async runtime of the commands that run calls: two workers (media threads are
/// separate OS threads).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Logs go to stderr; `RUST_LOG` chooses what (our warnings by default, and only the errors of
/// the WebRTC crates, whose warnings are about packets on the wire). Log lines quote peers,
/// servers and libraries, so every control and format character in them is escaped on the
/// way out (which rules out colours).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rtc=error,webrtc=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| EscapingWriter(std::io::stderr()))
        .try_init();
}

/// Help and version go to stdout with status 0; any other parse error is one line on stderr
/// and status 1, so scripts see the same failure shape as for every other error.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    // clap's first paragraph, on one line ("... not provided: --server <WS-URL>").
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let first = if first.is_empty() {
        "invalid arguments".to_string()
    } else {
        first.join(" ")
    };
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    eprintln!("sotto: {first} (see --help)");
    ExitCode::FAILURE
}
