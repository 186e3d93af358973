//! `sotto demo`: the main job on embedded defaults. Starts a local signaling server and two
//! peers, Alice and Bob, who call each other over real WebRTC on loopback with E2EE, then
//! reports what each side heard and the call's figures.
//!
//! Alice uses the real microphone and speaker when they exist (else a 440 Hz tone and a
//! recorder); Bob sends a 660 Hz tone and records what he hears. Bob never plays to a speaker,
//! so Alice's microphone cannot pick him up in a feedback loop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sotto::call::{Call, CallBuilder, CallEvent, CallState, CallStats, EndReason};
use sotto::handshake::Identity;
use sotto::media::video::{ProbeHandle, ProbeReport, TestPattern, VideoProbe};
use sotto::media::{
    AudioSink, AudioSource, DeviceSink, DeviceSource, MediaError, ToneSource, dbfs, dominant_hz,
};
use sotto::text::Printable;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds the two peers talk once connected.
    #[arg(long, default_value_t = 5.0, value_parser = parse_secs)]
    duration: f64,
    /// Use this signaling server instead of starting one (ws://HOST:PORT/ws or wss://).
    #[arg(long, value_name = "WS-URL")]
    server: Option<String>,
    /// With a wss:// --server: trust only the certificates in this PEM file (a private CA, or
    /// a self-signed server's certificate).
    #[arg(long, value_name = "PEM", requires = "server")]
    ca_cert: Option<PathBuf>,
    /// Use tones even where audio devices exist.
    #[arg(long)]
    tones: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Add video: each side sends a moving 640x360 test pattern (30 fps, its frame number as
    /// a barcode) and checks the pictures it receives.
    #[arg(long)]
    video: bool,
    /// Run a group call of N members (3-8) through the signaling server's SFU instead: each
    /// sends its own tone, and the summary says what each member heard and the group code.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(3..=8), conflicts_with = "video")]
    group: Option<u8>,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=3600.0).contains(&v) => Ok(v),
        _ => Err("duration must be 1-3600 seconds".into()),
    }
}

/// Keeps the most recent audio played, for the summary.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<f32>>>);

/// Seconds of audio a recorder keeps.
const RECORD_SECS: usize = 3;

impl AudioSink for Recorder {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(frame);
        let cap = RECORD_SECS * 48_000;
        if buf.len() > 2 * cap {
            let cut = buf.len() - cap;
            buf.drain(..cut);
        }
        Ok(())
    }
}

impl Recorder {
    pub(crate) fn last_two_seconds(&self) -> Vec<f32> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf[buf.len().saturating_sub(2 * 48_000)..].to_vec()
    }
}

/// The signaling server child; killed when dropped.
pub(crate) struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SOTTO_SIGNALING_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("sotto-signaling");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p sotto-signaling`, or pass --server",
            path.display()
        ))
    }
}

/// Starts `sotto-signaling` on a free loopback port (with its SFU for a group call) and
/// reads the URL it prints.
pub(crate) fn start_server(sfu: bool) -> Result<(ServerProcess, String), String> {
    let bin = server_binary()?;
    let mut command = Command::new(&bin);
    command.args(["--listen", "127.0.0.1:0"]);
    if sfu {
        command.arg("--sfu");
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no server stdout")?;
    let server = ServerProcess(child);
    let mut line = String::new();
    let mut stdout = BufReader::new(stdout);
    stdout
        .read_line(&mut line)
        .map_err(|e| format!("reading the server's address: {e}"))?;
    // The server prints more (its SFU's addresses); a closed pipe would stop it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .filter(|u| u.starts_with("ws://"))
        .ok_or_else(|| format!("unexpected server output: {line:?}"))?
        .to_string();
    Ok((server, url))
}

#[derive(Debug, Serialize)]
struct Side {
    name: &'static str,
    sends: String,
    hears_on: String,
    safety_code: Option<String>,
    peer_fingerprint: Option<String>,
    /// Dominant frequency of what was played (recorders only).
    heard_hz: Option<f64>,
    heard_dbfs: Option<f32>,
    ended: String,
    /// What the received video looked like (with `--video`).
    video: Option<ProbeReport>,
    #[serde(flatten)]
    stats: CallStats,
}

#[derive(Debug, Serialize)]
struct Report {
    e2ee: bool,
    cipher_suite: &'static str,
    server: String,
    safety_codes_match: bool,
    alice: Side,
    bob: Side,
}

struct Peer {
    name: &'static str,
    sends: String,
    hears_on: String,
    recorder: Option<Recorder>,
    video: Option<ProbeHandle>,
}

const DEMO_VIDEO: (u32, u32, u32) = (640, 360, 30);

fn demo_pattern() -> Result<TestPattern, String> {
    TestPattern::new(DEMO_VIDEO.0, DEMO_VIDEO.1, DEMO_VIDEO.2).map_err(|e| e.to_string())
}

/// Adds the test pattern and a probe of the peer's video to `builder`.
fn with_video(builder: CallBuilder, peer: &mut Peer) -> Result<CallBuilder, String> {
    let (probe, handle) = VideoProbe::new(Some(demo_pattern()?), 5).map_err(|e| e.to_string())?;
    peer.video = Some(handle);
    peer.sends.push_str(" and a 640x360 test pattern");
    Ok(builder.video_source(demo_pattern()?).video_sink(probe))
}

fn alice_io(tones: bool) -> (Box<dyn AudioSource>, Box<dyn AudioSink>, Peer) {
    let (source, sends): (Box<dyn AudioSource>, String) =
        match (!tones).then(|| DeviceSource::open(None)) {
            Some(Ok(mic)) => {
                let name = format!("microphone ({})", Printable(mic.name()));
                (Box::new(mic), name)
            }
            _ => (Box::new(ToneSource::new(440.0, 0.3)), "440 Hz tone".into()),
        };
    let recorder = Recorder::default();
    let (sink, hears_on, recorder): (Box<dyn AudioSink>, String, Option<Recorder>) =
        match (!tones).then(|| DeviceSink::open(None)) {
            Some(Ok(speaker)) => {
                let name = format!("speaker ({})", Printable(speaker.name()));
                (Box::new(speaker), name, None)
            }
            _ => (
                Box::new(recorder.clone()),
                "recorder".into(),
                Some(recorder),
            ),
        };
    (
        source,
        sink,
        Peer {
            name: "alice",
            sends,
            hears_on,
            recorder,
            video: None,
        },
    )
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let (server, url) = match &args.server {
        Some(url) => (None, url.clone()),
        None => {
            let (s, url) = start_server(args.group.is_some())?;
            (Some(s), url)
        }
    };
    let runtime = crate::runtime()?;
    let result = match args.group {
        Some(n) => runtime.block_on(crate::group_demo::demo(
            usize::from(n),
            args.duration,
            args.json,
            &url,
            args.ca_cert.as_ref(),
        )),
        None => runtime.block_on(demo(&args, &url)),
    };
    drop(server);
    result
}

pub(crate) fn builder(
    url: &str,
    ca_cert: Option<&PathBuf>,
    room: &str,
    name: &str,
) -> Result<CallBuilder, String> {
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let builder = CallBuilder::new(url, room)
        .name(name)
        .identity(Arc::new(identity));
    Ok(match ca_cert {
        Some(pem) => builder.ca_cert(pem.clone()),
        None => builder,
    })
}

/// Reads events until `Connected`; keeps the safety code seen on the way.
async fn until_connected(
    call: &mut Call,
    code: &mut Option<(String, String)>,
) -> Result<(), String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), call.next_event()).await {
            Ok(Some(CallEvent::State(CallState::Connected))) => return Ok(()),
            Ok(Some(CallEvent::SafetyCode(p))) => {
                *code = Some((p.safety_code, p.identity.fingerprint()));
            }
            Ok(Some(CallEvent::Ended { reason, .. })) => return Err(reason.to_string()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("call ended".into()),
            Err(_) => return Err("no connection after 30 s".into()),
        }
    }
}

async fn demo(args: &DemoArgs, url: &str) -> Result<(), String> {
    let room = format!("demo-{}", std::process::id());
    let (a_source, a_sink, mut alice_peer) = alice_io(args.tones);
    let bob_recorder = Recorder::default();
    let mut bob_peer = Peer {
        name: "bob",
        sends: "660 Hz tone".into(),
        hears_on: "recorder".into(),
        recorder: Some(bob_recorder.clone()),
        video: None,
    };
    let mut alice_builder = builder(url, args.ca_cert.as_ref(), &room, "alice")?;
    let mut bob_builder = builder(url, args.ca_cert.as_ref(), &room, "bob")?;
    if args.video {
        alice_builder = with_video(alice_builder, &mut alice_peer)?;
        bob_builder = with_video(bob_builder, &mut bob_peer)?;
    }
    if !args.json {
        println!("signaling server: {url} (relays messages; never holds a media key)");
        println!(
            "alice sends {}, hears on {}; bob sends {}, hears on {}",
            alice_peer.sends, alice_peer.hears_on, bob_peer.sends, bob_peer.hears_on
        );
    }
    let mut alice = alice_builder
        .source(a_source)
        .sink(a_sink)
        .start()
        .map_err(|e| e.to_string())?;
    loop {
        match alice.next_event().await {
            Some(CallEvent::State(CallState::WaitingForPeer)) => break,
            Some(CallEvent::Ended { reason, .. }) => return Err(format!("alice: {reason}")),
            Some(_) => {}
            None => return Err("alice: call ended".into()),
        }
    }
    let mut bob = bob_builder
        .source(ToneSource::new(660.0, 0.3))
        .sink(bob_recorder)
        .start()
        .map_err(|e| e.to_string())?;
    let (mut a_code, mut b_code) = (None, None);
    until_connected(&mut alice, &mut a_code)
        .await
        .map_err(|e| format!("alice: {e}"))?;
    until_connected(&mut bob, &mut b_code)
        .await
        .map_err(|e| format!("bob: {e}"))?;
    if !args.json {
        for (who, code) in [("alice", &a_code), ("bob", &b_code)] {
            if let Some((code, peer)) = code {
                println!("{who} sees safety code {code} (peer identity {peer})");
            }
        }
        println!("talking for {} s, end-to-end encrypted ...", args.duration);
    }
    // Drain events while they talk, so the queues never fill.
    let talk = tokio::time::sleep(Duration::from_secs_f64(args.duration));
    tokio::pin!(talk);
    loop {
        tokio::select! {
            _ = &mut talk => break,
            ev = alice.next_event() => if let Some(CallEvent::Ended { reason, .. }) = ev {
                return Err(format!("alice: {reason}"));
            },
            ev = bob.next_event() => if let Some(CallEvent::Ended { reason, .. }) = ev {
                return Err(format!("bob: {reason}"));
            },
        }
    }
    let a_reason = alice.hang_up().await;
    let a_stats = alice.stats();
    let b_reason = tokio::time::timeout(Duration::from_secs(10), bob.ended())
        .await
        .unwrap_or(EndReason::Timeout("bob's hang-up"));
    let b_stats = bob.stats();

    let side = |peer: Peer, code: Option<(String, String)>, reason: EndReason, stats| {
        let heard = peer.recorder.as_ref().map(Recorder::last_two_seconds);
        Side {
            name: peer.name,
            sends: peer.sends,
            hears_on: peer.hears_on,
            safety_code: code.as_ref().map(|c| c.0.clone()),
            peer_fingerprint: code.map(|c| c.1),
            heard_hz: heard.as_ref().map(|h| dominant_hz(h, 48_000.0)),
            heard_dbfs: heard.as_ref().map(|h| dbfs(h)),
            // May quote the signaling server (a `--server` of someone else).
            ended: Printable(&reason.to_string()).to_string(),
            video: peer.video.as_ref().map(ProbeHandle::report),
            stats,
        }
    };
    let alice = side(alice_peer, a_code, a_reason, a_stats);
    let bob = side(bob_peer, b_code, b_reason, b_stats);
    let report = Report {
        e2ee: true,
        cipher_suite: sotto::call::CallConfig::new(url, &room).suite.name(),
        server: url.to_string(),
        safety_codes_match: alice.safety_code.is_some() && alice.safety_code == bob.safety_code,
        alice,
        bob,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_summary(&report);
    }
    let clean = |s: &Side| {
        let video_ok = s.video.as_ref().is_none_or(|v| {
            v.frames > 0
                && v.out_of_order == 0
                && s.stats.video_decrypt_failures == 0
                && v.psnr_min_db.is_some_and(|p| p >= 30.0)
        });
        s.stats.decrypt_failures == 0 && s.stats.frames_decrypted > 0 && video_ok
    };
    if report.safety_codes_match && clean(&report.alice) && clean(&report.bob) {
        Ok(())
    } else {
        Err("the demo call did not complete cleanly (see the summary)".into())
    }
}

fn print_summary(r: &Report) {
    println!();
    println!(
        "safety codes: alice {} / bob {} -> {}",
        r.alice.safety_code.as_deref().unwrap_or("-"),
        r.bob.safety_code.as_deref().unwrap_or("-"),
        if r.safety_codes_match {
            "match: nobody is in the middle"
        } else {
            "DIFFER: someone is in the middle"
        }
    );
    let what = if r.alice.video.is_some() {
        "Opus frame and every VP8 frame (VP8 payload header in the clear, authenticated)"
    } else {
        "Opus frame"
    };
    println!("E2EE: SFrame {} on every {what}", r.cipher_suite);
    println!(
        "{:<6} {:>6} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9}  heard",
        "", "sent", "decrypted", "failures", "set-up", "rtt", "jitter", "playout"
    );
    for s in [&r.alice, &r.bob] {
        let heard = match (s.heard_hz, s.heard_dbfs) {
            (Some(hz), Some(db)) if db > -60.0 => format!("{hz:.0} Hz at {db:.1} dBFS"),
            (Some(_), Some(_)) => "silence".into(),
            _ => format!("played on the {}", s.hears_on),
        };
        println!(
            "{:<6} {:>6} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9}  {heard}",
            s.name,
            s.stats.frames_sent,
            s.stats.frames_decrypted,
            s.stats.decrypt_failures,
            s.stats
                .setup_ms
                .map_or("-".into(), |v| format!("{v:.0} ms")),
            s.stats.rtt_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
            format!("{:.1} ms", s.stats.jitter_ms),
            format!("{:.0} ms", s.stats.playout_delay_ms),
        );
    }
    for s in [&r.alice, &r.bob] {
        if let Some(v) = &s.video {
            println!(
                "{:<6} video: sent {} frames ({} keyframes); received {}, decrypted {}, \
                 failures {}; shown {} at {}, barcodes in order: {}, PSNR min {} / mean {}, \
                 freezes {}, a/v offset {}",
                s.name,
                s.stats.video_frames_sent,
                s.stats.video_keyframes_sent,
                s.stats.video_frames_received,
                s.stats.video_frames_decrypted,
                s.stats.video_decrypt_failures,
                v.frames,
                v.last_size.map_or("-".into(), |(w, h)| format!("{w}x{h}")),
                if v.out_of_order == 0 { "yes" } else { "NO" },
                v.psnr_min_db.map_or("-".into(), |p| format!("{p:.1} dB")),
                v.psnr_mean_db.map_or("-".into(), |p| format!("{p:.1} dB")),
                v.freezes,
                s.stats
                    .av_sync_offset_ms
                    .map_or("-".into(), |o| format!("{o:+.0} ms")),
            );
        }
    }
    println!("alice: {}; bob: {}", r.alice.ended, r.bob.ended);
}
