//! `sotto call`: one side of a two-party E2EE call through a signaling server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sotto::call::{CallBuilder, CallConfig, CallEvent, CallState, CallStats, EndReason, PeerInfo};
use sotto::handshake::PeerTrust;
use sotto::handshake::{Identity, KnownPeers, TrustPolicy, default_identity_path};
use sotto::media::{
    AudioSink, AudioSource, DeviceSink, DeviceSource, ToneSource, WavSink, WavSource,
};
use sotto::transport::IceServer;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Signaling server URL, as the server prints it (ws://HOST:PORT/ws).
    #[arg(long, value_name = "WS-URL")]
    server: String,
    /// Room to meet the other peer in.
    #[arg(long, value_name = "NAME")]
    room: String,
    /// Display name shown to the peer.
    #[arg(long, value_name = "DISPLAY-NAME", default_value = "sotto")]
    name: String,
    /// Identity file (default: $XDG_CONFIG_HOME/sotto/identity.json); created if missing.
    /// Known peers are pinned in known_peers.json next to it.
    #[arg(long, value_name = "PATH")]
    identity: Option<PathBuf>,
    /// Send this WAV file (any rate, mono or stereo) instead of the microphone.
    #[arg(long, value_name = "WAV", group = "source")]
    input: Option<PathBuf>,
    /// Capture from this input device (see `sotto devices`) instead of the default one.
    #[arg(long, value_name = "NAME", group = "source")]
    input_device: Option<String>,
    /// Send a sine tone of this frequency instead of the microphone.
    #[arg(long, value_name = "HZ", group = "source",
          value_parser = parse_tone)]
    tone: Option<f64>,
    /// Write what the peer says to this WAV file (48 kHz mono) instead of the speaker.
    #[arg(long, value_name = "WAV", group = "sink")]
    output: Option<PathBuf>,
    /// Play to this output device instead of the default one.
    #[arg(long, value_name = "NAME", group = "sink")]
    output_device: Option<String>,
    /// Hang up after this many seconds (counted from start) and exit 0.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// On exit, write the call's figures as one JSON object to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
    /// Join token, for servers with a secret.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Local UDP address for media (repeatable). The default, 0.0.0.0:0, offers every
    /// interface but loopback; use 127.0.0.1:0 for two peers on one machine without a network.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    bind: Vec<std::net::SocketAddr>,
    /// STUN or TURN server URL, e.g. stun:stun.example.org:3478 (repeatable).
    #[arg(long, value_name = "URL")]
    ice_server: Vec<String>,
    /// User name for the TURN servers.
    #[arg(long, value_name = "NAME", default_value = "")]
    ice_username: String,
    /// Credential for the TURN servers.
    #[arg(long, value_name = "SECRET", default_value = "")]
    ice_credential: String,
    /// Refuse, before any media, a peer whose identity is not verified (see `sotto peers
    /// verify`): new, unverified, changed and lookalike peers end the call with exit 1.
    #[arg(long)]
    require_verified: bool,
}

fn parse_tone(s: &str) -> Result<f64, String> {
    let hz: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if (20.0..=20_000.0).contains(&hz) {
        Ok(hz)
    } else {
        Err("tone must be 20-20000 Hz".into())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err("duration must be between 0 and 86400 seconds".into())
    }
}

/// What `--stats-json` writes.
#[derive(Debug, Serialize)]
struct Report {
    e2ee: bool,
    cipher_suite: &'static str,
    room: String,
    name: String,
    identity: String,
    safety_code: Option<String>,
    peer_name: Option<String>,
    peer_identity: Option<String>,
    peer_fingerprint: Option<String>,
    peer_trust: Option<&'static str>,
    /// The peer's name mixes scripts, as lookalikes do.
    peer_name_mixed_script: Option<bool>,
    /// The peer's media failed authentication for over a second at some point.
    undecryptable: bool,
    ended: String,
    #[serde(flatten)]
    stats: CallStats,
}

fn open_source(args: &CallArgs) -> Result<Box<dyn AudioSource>, String> {
    if let Some(path) = &args.input {
        return WavSource::open(path)
            .map(|s| Box::new(s) as Box<dyn AudioSource>)
            .map_err(|e| format!("--input {}: {e}", path.display()));
    }
    if let Some(hz) = args.tone {
        return Ok(Box::new(ToneSource::new(hz, 0.3)));
    }
    DeviceSource::open(args.input_device.as_deref())
        .map(|s| Box::new(s) as Box<dyn AudioSource>)
        .map_err(|e| format!("{e} (or use --input file.wav or --tone 440)"))
}

fn open_sink(args: &CallArgs) -> Result<Box<dyn AudioSink>, String> {
    if let Some(path) = &args.output {
        return WavSink::create(path)
            .map(|s| Box::new(s) as Box<dyn AudioSink>)
            .map_err(|e| format!("--output {}: {e}", path.display()));
    }
    DeviceSink::open(args.output_device.as_deref())
        .map(|s| Box::new(s) as Box<dyn AudioSink>)
        .map_err(|e| format!("{e} (or use --output file.wav)"))
}

fn write_json(path: &Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("--stats-json {}: {e}", path.display()))
}

fn print_stats(s: &CallStats) {
    let rtt = s
        .rtt_ms
        .map_or_else(|| "-".to_string(), |r| format!("{r:.1} ms"));
    println!(
        "stats: rtt {rtt}, loss {:.1} %, jitter {:.1} ms, playout {:.0} ms, send {:.1} kbit/s, \
         recv {:.1} kbit/s, frames sent {} received {} decrypted {}, decrypt failures {}, \
         replays {}, reordered {}",
        s.loss_percent,
        s.jitter_ms,
        s.playout_delay_ms,
        s.send_kbps,
        s.recv_kbps,
        s.frames_sent,
        s.frames_received,
        s.frames_decrypted,
        s.decrypt_failures,
        s.replays_rejected,
        s.reorder_rejected
    );
}

fn state_text(state: CallState) -> &'static str {
    match state {
        CallState::Joining => "joining the room",
        CallState::WaitingForPeer => "waiting for the other peer",
        CallState::Handshaking => "agreeing keys with the peer",
        CallState::Connecting => "connecting media",
        CallState::Connected => "connected (end-to-end encrypted)",
        CallState::Undecryptable => {
            "connected, but the peer's media cannot be decrypted: keys differ (possible interception)"
        }
        CallState::Reconnecting => "connection lost, reconnecting",
        CallState::Ended => "ended",
        _ => "unknown",
    }
}

pub fn run(args: CallArgs) -> Result<(), String> {
    if !(args.server.starts_with("ws://") || args.server.starts_with("wss://")) {
        return Err(format!(
            "--server must be a ws:// or wss:// URL, got {:?}",
            args.server
        ));
    }
    // Open devices and files first, so a bad one fails before anything is created or joined.
    let source = open_source(&args)?;
    let sink = open_sink(&args)?;
    let id_path = args.identity.clone().unwrap_or_else(default_identity_path);
    let (identity, created) = Identity::load_or_create(&id_path).map_err(|e| e.to_string())?;
    if created {
        println!("created a new identity at {}", id_path.display());
    }
    let known_peers = KnownPeers::load(&crate::peers_cmd::known_peers_path(&id_path))
        .map_err(|e| e.to_string())?;

    let runtime = crate::runtime()?;
    runtime.block_on(call(args, identity, known_peers, source, sink))
}

async fn call(
    args: CallArgs,
    identity: Identity,
    known_peers: KnownPeers,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
) -> Result<(), String> {
    let fingerprint = identity.public_key().fingerprint();
    println!(
        "joining room {:?} on {} as {:?} (identity {fingerprint})",
        args.room, args.server, args.name
    );
    let mut config = CallConfig::new(args.server.clone(), args.room.clone());
    config.transport.udp_addrs = args.bind.iter().map(|a| a.to_string()).collect();
    if !args.ice_server.is_empty() {
        config.transport.ice_servers = vec![IceServer {
            urls: args.ice_server.clone(),
            username: args.ice_username.clone(),
            credential: args.ice_credential.clone(),
        }];
    }
    if args.require_verified {
        config.trust = TrustPolicy::RequireVerified;
    }
    let suite = config.suite;
    let mut builder = CallBuilder::with_config(config)
        .name(args.name.clone())
        .identity(Arc::new(identity))
        .known_peers(known_peers)
        .source(source)
        .sink(sink);
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    let mut call = builder.start().map_err(|e| e.to_string())?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut peer: Option<PeerInfo> = None;
    let mut undecryptable = false;
    let (reason, stats) = loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            event = call.next_event() => match event {
                Some(CallEvent::State(state)) => {
                    undecryptable |= state == CallState::Undecryptable;
                    println!("state: {}", state_text(state));
                }
                Some(CallEvent::SafetyCode(info)) => {
                    println!(
                        "safety code: {}   (compare it with {:?}; peer identity {}, {})",
                        info.safety_code,
                        info.name,
                        info.identity.fingerprint(),
                        info.trust.as_str()
                    );
                    if let PeerTrust::Renamed { pinned_name, .. } = &info.trust {
                        println!(
                            "note: this identity is known as {pinned_name:?}, not {:?}",
                            info.name
                        );
                    }
                    if info.mixed_script {
                        println!(
                            "WARNING: the name {:?} mixes writing systems (for example Latin and \
                             Cyrillic), as names that imitate others do.",
                            info.name
                        );
                    }
                    peer = Some(info);
                }
                Some(CallEvent::PeerIdentityChanged { name, pinned_name, pinned, presented }) => {
                    let whose = if name == pinned_name {
                        format!("{name:?}")
                    } else {
                        format!("{name:?}, which looks like the known peer {pinned_name:?},")
                    };
                    println!(
                        "WARNING: {whose} presents identity {} but {} was pinned: someone may \
                         be in the middle. Compare safety codes before you talk.",
                        presented.fingerprint(),
                        pinned.fingerprint()
                    );
                }
                Some(CallEvent::FirstAudio { setup_ms }) => {
                    println!("first audio from the peer after {setup_ms:.0} ms");
                }
                Some(CallEvent::Stats(s)) => print_stats(&s),
                Some(CallEvent::AuthenticationFailures { new, total }) => {
                    println!("refused {new} frames that failed authentication ({total} in all)");
                }
                Some(CallEvent::PeerMuted(m)) => {
                    println!("the peer {}", if m { "muted" } else { "unmuted" });
                }
                Some(CallEvent::Ended { reason, stats }) => break (reason, stats),
                Some(_) => {}
                None => break (EndReason::LocalHangup, call.stats()),
            },
            _ = timer => {
                // Hang up through the command channel; the Ended event follows.
                let reason = call.hang_up().await;
                let stats = call.stats();
                break (reason, stats);
            }
            _ = tokio::signal::ctrl_c() => {
                let reason = call.hang_up().await;
                break (reason, call.stats());
            }
        }
    };
    println!("call ended: {reason}");
    print_stats(&stats);
    if let Some(path) = &args.stats_json {
        let report = Report {
            e2ee: true,
            cipher_suite: suite.name(),
            room: args.room.clone(),
            name: args.name.clone(),
            identity: fingerprint,
            safety_code: peer.as_ref().map(|p| p.safety_code.clone()),
            peer_name: peer.as_ref().map(|p| p.name.clone()),
            peer_identity: peer.as_ref().map(|p| p.identity.to_hex()),
            peer_fingerprint: peer.as_ref().map(|p| p.identity.fingerprint()),
            peer_trust: peer.as_ref().map(|p| p.trust.as_str()),
            peer_name_mixed_script: peer.as_ref().map(|p| p.mixed_script),
            undecryptable,
            ended: reason.to_string(),
            stats,
        };
        write_json(path, &report)?;
    }
    match reason {
        EndReason::LocalHangup | EndReason::RemoteHangup | EndReason::PeerLeft => Ok(()),
        other => Err(format!("call failed: {other}")),
    }
}
