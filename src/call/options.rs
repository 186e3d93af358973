//! The settings of one call as a person or an application gives them: the flags of
//! `sotto call`, and the same keys as a JSON object (the C ABI's `sotto_call_start`), so one
//! document covers both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    CallBuilder, CallConfig, CallStats, EndReason, PeerInfo, VideoSettings, VideoSinkFactory,
};
use crate::handshake::{Identity, KnownPeers, TrustPolicy, default_identity_path};
use crate::media::video::{
    CameraSource, TestPattern, VideoSink, VideoSource, WindowSink, Y4mSink, Y4mSource,
};
use crate::media::{
    AudioSink, AudioSource, DeviceSink, DeviceSource, ToneSource, WavSink, WavSource,
};
use crate::messages::History;
use crate::messages::history::history_key_path;
use crate::sframe::CipherSuite;
use crate::transport::IceServer;

/// Why call options could not be used. The texts are what `sotto call` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// A value is out of range or the options contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// An audio device or file could not be opened.
    #[error("{0}")]
    Audio(String),
    /// A video source or sink could not be opened.
    #[error("{0}")]
    Video(String),
    /// The identity or the known-peers file could not be loaded or created.
    #[error("{0}")]
    Identity(String),
    /// The `--stats-json` report could not be written.
    #[error("{0}")]
    Report(String),
}

/// The settings of one call: the flags of `sotto call`, or a JSON object with the same
/// (long flag) names as keys.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct CallOptions {
    /// Signaling server URL, as the server prints it (ws://HOST:PORT/ws); or several nodes of
    /// one deployment, comma-separated (ws://a/ws,ws://b/ws), tried in turn when the
    /// connection drops or cannot be made.
    #[arg(long, value_name = "WS-URL")]
    pub server: String,
    /// Room to meet the other peer in.
    #[arg(long, value_name = "NAME")]
    pub room: String,
    /// Display name shown to the peer.
    #[arg(long, value_name = "DISPLAY-NAME", default_value = "sotto")]
    #[serde(default = "default_name")]
    pub name: String,
    /// Identity file (default: $XDG_CONFIG_HOME/sotto/identity.json); created if missing.
    /// Known peers are pinned in known_peers.json next to it.
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// Send this WAV file (any rate, mono or stereo) instead of the microphone.
    #[arg(long, value_name = "WAV", group = "source")]
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// Capture from this input device (see `sotto devices`) instead of the default one.
    #[arg(long, value_name = "NAME", group = "source")]
    #[serde(default)]
    pub input_device: Option<String>,
    /// Send a sine tone of this frequency instead of the microphone.
    #[arg(long, value_name = "HZ", group = "source",
          value_parser = parse_tone)]
    #[serde(default)]
    pub tone: Option<f64>,
    /// Write what the peer says to this WAV file (48 kHz mono) instead of the speaker.
    #[arg(long, value_name = "WAV", group = "sink")]
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Play to this output device instead of the default one.
    #[arg(long, value_name = "NAME", group = "sink")]
    #[serde(default)]
    pub output_device: Option<String>,
    /// Hang up after this many seconds (counted from start) and exit 0.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_secs")]
    pub duration: Option<Duration>,
    /// On exit, write the call's figures as one JSON object to this file.
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub stats_json: Option<PathBuf>,
    /// Join token, for servers with a secret.
    #[arg(long, value_name = "TOKEN")]
    #[serde(default)]
    pub token: Option<String>,
    /// Trust only the certificates in this PEM file for a wss:// --server (a private CA, or
    /// the certificate a `sotto-signaling --tls-self-signed` wrote with --tls-cert-out).
    #[arg(long, value_name = "PEM")]
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Local UDP address for media (repeatable). The default, 0.0.0.0:0, offers every
    /// interface but loopback; use 127.0.0.1:0 for two peers on one machine without a network.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    #[serde(default = "default_bind", deserialize_with = "one_or_many")]
    pub bind: Vec<SocketAddr>,
    /// STUN or TURN server URL, e.g. stun:stun.example.org:3478 (repeatable).
    #[arg(long, value_name = "URL")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub ice_server: Vec<String>,
    /// User name for the TURN servers.
    #[arg(long, value_name = "NAME", default_value = "")]
    #[serde(default)]
    pub ice_username: String,
    /// Credential for the TURN servers.
    #[arg(long, value_name = "SECRET", default_value = "")]
    #[serde(default)]
    pub ice_credential: String,
    /// Send media only through a TURN relay, so the peer never learns this machine's
    /// addresses (needs a TURN server: --ice-server turn:..., or one the signaling server
    /// offers).
    #[arg(long)]
    #[serde(default)]
    pub relay_only: bool,
    /// Join a group call: every member of the room meets every other one through the
    /// server's SFU (`sotto-signaling --sfu`), which forwards sealed audio it cannot decrypt.
    /// Each member's keys are agreed pairwise; one group safety code covers everyone.
    #[arg(long)]
    #[serde(default)]
    pub group: bool,
    /// Refuse, before any media, a peer whose identity is not verified (see `sotto peers
    /// verify`): new, unverified, changed and lookalike peers end the call with exit 1.
    #[arg(long)]
    #[serde(default)]
    pub require_verified: bool,
    /// Send video: a moving test pattern (`test-pattern`, with the frame number as a barcode),
    /// a Y4M file, or a camera (`camera`, or `camera:NAME`). Without it the call sends audio
    /// only (and still shows the peer's video).
    #[arg(long, value_name = "test-pattern|FILE.y4m|camera[:NAME]")]
    #[serde(default)]
    pub video: Option<String>,
    /// Write the peer's video to this Y4M file (each decoded picture once). In a group call
    /// (`--group`, or a two-party call a third joined) each member's goes to
    /// `FILE-<name>.y4m`.
    #[arg(long, value_name = "FILE.y4m")]
    #[serde(default)]
    pub video_output: Option<PathBuf>,
    /// Show the peer's video in a desktop window (in a group call, one window per member).
    #[arg(long)]
    #[serde(default)]
    pub video_window: bool,
    /// Send video at this size, e.g. 640x360 (default: the source's size; the test pattern's
    /// is 640x360).
    #[arg(long, value_name = "WxH", value_parser = parse_video_size)]
    #[serde(default, deserialize_with = "video_size")]
    pub video_size: Option<(u32, u32)>,
    /// Send at most this many video frames per second (1-60; default: the source's rate, 30
    /// for the test pattern).
    #[arg(long, value_name = "N", value_parser = parse_fps)]
    #[serde(default, deserialize_with = "fps")]
    pub fps: Option<u32>,
    /// Most bitrate the video may use, kbit/s (50-20000; default: what suits the size).
    #[arg(long, value_name = "N", value_parser = parse_max_video_kbps)]
    #[serde(default, deserialize_with = "max_video_kbps")]
    pub max_video_kbps: Option<u32>,
    /// Text chat on standard input: each line is a message; `/timer 5s|30m|24h|off` sets the
    /// disappearing timer, `/quit` hangs up. Messages, timer changes, deliveries and expiries
    /// are printed.
    #[arg(long)]
    #[serde(default)]
    pub chat: bool,
    /// Write the chat's events to this file, one JSON object per line (texts are blanked
    /// there when their message expires).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub chat_json: Option<PathBuf>,
    /// Keep live messages in this directory across restarts, encrypted at rest under a key
    /// kept next to the identity (history.key), and erased at expiry.
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub history: Option<PathBuf>,
}

/// Parses `--video-size`: `WxH`, both even, 16 to 4096.
pub fn parse_video_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("video size must be WxH with even sides of 16-4096, got {s:?}");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |v: &str| -> Result<u32, String> {
        let n: u32 = v.trim().parse().map_err(|_| bad())?;
        if (16..=4096).contains(&n) && n.is_multiple_of(2) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    Ok((side(w)?, side(h)?))
}

/// Parses `--fps`: 1 to 60.
pub fn parse_fps(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=60).contains(&n) => Ok(n),
        _ => Err(format!("fps must be 1-60, got {s:?}")),
    }
}

/// Parses `--max-video-kbps`: 50 to 20000.
pub fn parse_max_video_kbps(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (50..=20_000).contains(&n) => Ok(n),
        _ => Err(format!("max-video-kbps must be 50-20000, got {s:?}")),
    }
}

fn video_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, u32)>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_video_size(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn fps<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u64>::deserialize(d)?
        .map(|n| parse_fps(&n.to_string()).map_err(serde::de::Error::custom))
        .transpose()
}

fn max_video_kbps<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u64>::deserialize(d)?
        .map(|n| parse_max_video_kbps(&n.to_string()).map_err(serde::de::Error::custom))
        .transpose()
}

/// The test pattern's size when `--video-size` is not given.
pub const DEFAULT_VIDEO_SIZE: (u32, u32) = (640, 360);

/// The test pattern's and camera's frame rate when `--fps` is not given.
pub const DEFAULT_FPS: u32 = 30;

/// What `--video` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VideoChoice {
    TestPattern,
    File(PathBuf),
    Camera(Option<String>),
}

impl VideoChoice {
    fn parse(s: &str) -> Result<Self, OptionsError> {
        match s {
            "test-pattern" => Ok(Self::TestPattern),
            "camera" => Ok(Self::Camera(None)),
            _ => {
                if let Some(name) = s.strip_prefix("camera:") {
                    return Ok(Self::Camera(Some(name.to_owned())));
                }
                if s.to_ascii_lowercase().ends_with(".y4m") {
                    return Ok(Self::File(PathBuf::from(s)));
                }
                Err(OptionsError::Invalid(format!(
                    "--video must be test-pattern, a .y4m file, camera or camera:NAME, got {s:?}"
                )))
            }
        }
    }
}

fn default_name() -> String {
    "sotto".into()
}

fn default_bind() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 0))]
}

/// A JSON value that is either one item or an array of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}

fn duration_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(secs) => check_duration(secs)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses `--tone`: a frequency in Hz, 20 to 20000.
pub fn parse_tone(s: &str) -> Result<f64, String> {
    let hz: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    check_tone(hz)
}

/// Checks a tone frequency: 20 to 20000 Hz.
pub fn check_tone(hz: f64) -> Result<f64, String> {
    if (20.0..=20_000.0).contains(&hz) {
        Ok(hz)
    } else {
        Err("tone must be 20-20000 Hz".into())
    }
}

/// Parses `--duration`: seconds, more than 0 and at most a day.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    check_duration(secs)
}

/// Checks a duration in seconds: more than 0 and at most a day.
pub fn check_duration(secs: f64) -> Result<Duration, String> {
    if secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err("duration must be between 0 and 86400 seconds".into())
    }
}

/// Where the known peers of the identity at `identity` are pinned: `known_peers.json` next to
/// it.
pub fn known_peers_path(identity: &Path) -> PathBuf {
    identity.with_file_name("known_peers.json")
}

/// The identity of a call, loaded or created, with its known peers.
#[derive(Debug)]
pub struct LoadedIdentity {
    /// Our identity.
    pub identity: Identity,
    /// Where it is stored.
    pub path: PathBuf,
    /// It did not exist and was created now.
    pub created: bool,
    /// The peers pinned next to it.
    pub known_peers: KnownPeers,
}

impl CallOptions {
    /// Options for `room` on `server` with every other setting at its default.
    pub fn new(server: impl Into<String>, room: impl Into<String>) -> Self {
        CallOptions {
            server: server.into(),
            room: room.into(),
            name: default_name(),
            identity: None,
            input: None,
            input_device: None,
            tone: None,
            output: None,
            output_device: None,
            duration: None,
            stats_json: None,
            token: None,
            ca_cert: None,
            bind: default_bind(),
            ice_server: Vec::new(),
            ice_username: String::new(),
            ice_credential: String::new(),
            require_verified: false,
            relay_only: false,
            group: false,
            video: None,
            video_output: None,
            video_window: false,
            video_size: None,
            fps: None,
            max_video_kbps: None,
            chat: false,
            chat_json: None,
            history: None,
        }
    }

    /// Parses a JSON object whose keys are the long flag names; unknown keys are refused.
    /// The values are checked as the flags are ([`validate`](Self::validate)).
    pub fn from_json(json: &str) -> Result<Self, OptionsError> {
        let options: CallOptions = serde_json::from_str(json)
            .map_err(|e| OptionsError::Invalid(format!("call options: {e}")))?;
        options.validate()?;
        Ok(options)
    }

    /// Checks what the flag parser checks (for options that did not come through it) and the
    /// server URL.
    pub fn validate(&self) -> Result<(), OptionsError> {
        for url in self.server_urls() {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(OptionsError::Invalid(format!(
                    "--server must be a ws:// or wss:// URL (or several, comma-separated), got {url:?}"
                )));
            }
            if self.ca_cert.is_some() && !url.starts_with("wss://") {
                return Err(OptionsError::Invalid(
                    "--ca-cert is for a wss:// --server".into(),
                ));
            }
        }
        if let Some(hz) = self.tone {
            check_tone(hz).map_err(OptionsError::Invalid)?;
        }
        if let Some(d) = self.duration {
            check_duration(d.as_secs_f64()).map_err(OptionsError::Invalid)?;
        }
        let sources = [
            self.input.is_some(),
            self.input_device.is_some(),
            self.tone.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(OptionsError::Invalid(
                "give at most one of input, input-device and tone".into(),
            ));
        }
        if self.output.is_some() && self.output_device.is_some() {
            return Err(OptionsError::Invalid(
                "give at most one of output and output-device".into(),
            ));
        }
        if self.video_output.is_some() && self.video_window {
            return Err(OptionsError::Invalid(
                "give at most one of video-output and video-window".into(),
            ));
        }
        if let Some(video) = &self.video {
            VideoChoice::parse(video)?;
        }
        if self.group && (self.chat || self.chat_json.is_some()) {
            return Err(OptionsError::Invalid(
                "--group carries no text messages for now: no --chat or --chat-json".into(),
            ));
        }
        Ok(())
    }

    /// Opens the video source `--video` names, if any.
    pub fn open_video_source(&self) -> Result<Option<Box<dyn VideoSource>>, OptionsError> {
        let Some(video) = &self.video else {
            return Ok(None);
        };
        let (w, h) = self.video_size.unwrap_or(DEFAULT_VIDEO_SIZE);
        let fps = self.fps.unwrap_or(DEFAULT_FPS);
        let err = |e: &dyn std::fmt::Display| OptionsError::Video(format!("--video {video}: {e}"));
        let source: Box<dyn VideoSource> = match VideoChoice::parse(video)? {
            VideoChoice::TestPattern => Box::new(TestPattern::new(w, h, fps).map_err(|e| err(&e))?),
            VideoChoice::File(path) => Box::new(Y4mSource::open(&path).map_err(|e| err(&e))?),
            VideoChoice::Camera(name) => Box::new(
                CameraSource::open(name.as_deref(), w, h, fps)
                    .map_err(|e| OptionsError::Video(e.to_string()))?,
            ),
        };
        Ok(Some(source))
    }

    /// Opens the video sink the options name: a Y4M file, a window, or none (the peer's video
    /// is then decoded and counted only).
    pub fn open_video_sink(&self) -> Result<Option<Box<dyn VideoSink>>, OptionsError> {
        if let Some(path) = &self.video_output {
            return Y4mSink::create(path, self.fps.unwrap_or(DEFAULT_FPS))
                .map(|s| Some(Box::new(s) as Box<dyn VideoSink>))
                .map_err(|e| {
                    OptionsError::Video(format!("--video-output {}: {e}", path.display()))
                });
        }
        if self.video_window {
            return WindowSink::open("sotto")
                .map(|s| Some(Box::new(s) as Box<dyn VideoSink>))
                .map_err(|e| OptionsError::Video(format!("--video-window: {e}")));
        }
        Ok(None)
    }

    /// Opens the audio source the options name: a WAV file, a tone, or a capture device.
    pub fn open_source(&self) -> Result<Box<dyn AudioSource>, OptionsError> {
        if let Some(path) = &self.input {
            return WavSource::open(path)
                .map(|s| Box::new(s) as Box<dyn AudioSource>)
                .map_err(|e| OptionsError::Audio(format!("--input {}: {e}", path.display())));
        }
        if let Some(hz) = self.tone {
            return Ok(Box::new(ToneSource::new(hz, 0.3)));
        }
        DeviceSource::open(self.input_device.as_deref())
            .map(|s| Box::new(s) as Box<dyn AudioSource>)
            .map_err(|e| {
                OptionsError::Audio(format!("{e} (or use --input file.wav or --tone 440)"))
            })
    }

    /// Opens the audio sink the options name: a WAV file or a playback device.
    pub fn open_sink(&self) -> Result<Box<dyn AudioSink>, OptionsError> {
        if let Some(path) = &self.output {
            return WavSink::create(path)
                .map(|s| Box::new(s) as Box<dyn AudioSink>)
                .map_err(|e| OptionsError::Audio(format!("--output {}: {e}", path.display())));
        }
        DeviceSink::open(self.output_device.as_deref())
            .map(|s| Box::new(s) as Box<dyn AudioSink>)
            .map_err(|e| OptionsError::Audio(format!("{e} (or use --output file.wav)")))
    }

    /// Loads the identity file (creating it if missing) and the known peers next to it.
    pub fn load_identity(&self) -> Result<LoadedIdentity, OptionsError> {
        let path = self.identity.clone().unwrap_or_else(default_identity_path);
        let (identity, created) =
            Identity::load_or_create(&path).map_err(|e| OptionsError::Identity(e.to_string()))?;
        let known_peers = KnownPeers::load(&known_peers_path(&path))
            .map_err(|e| OptionsError::Identity(e.to_string()))?;
        Ok(LoadedIdentity {
            identity,
            path,
            created,
            known_peers,
        })
    }

    /// Opens the message history `--history` names, if any, under the master key next to the
    /// identity at `identity` (see [`LoadedIdentity::path`]).
    pub fn open_history(&self, identity: &Path) -> Result<Option<History>, OptionsError> {
        let Some(dir) = &self.history else {
            return Ok(None);
        };
        History::open(dir, &history_key_path(identity), &self.room)
            .map(Some)
            .map_err(|e| OptionsError::Invalid(format!("--history: {e}")))
    }

    /// The signaling servers `--server` names: one URL, or several comma-separated.
    pub fn server_urls(&self) -> Vec<&str> {
        self.server.split(',').map(str::trim).collect()
    }

    /// The engine settings these options give.
    pub fn config(&self) -> CallConfig {
        let urls = self.server_urls();
        let (first, rest) = urls
            .split_first()
            .map_or((self.server.as_str(), &[][..]), |(f, r)| (*f, r));
        let mut config = CallConfig::new(first, self.room.clone());
        config.fallback_servers = rest.iter().map(|u| (*u).to_owned()).collect();
        config.transport.udp_addrs = self.bind.iter().map(|a| a.to_string()).collect();
        config.ca_cert = self.ca_cert.clone();
        if !self.ice_server.is_empty() {
            config.transport.ice_servers = vec![IceServer {
                urls: self.ice_server.clone(),
                username: self.ice_username.clone(),
                credential: self.ice_credential.clone(),
            }];
        }
        config.transport.relay_only = self.relay_only;
        config.group = self.group;
        if self.require_verified {
            config.trust = TrustPolicy::RequireVerified;
        }
        config.video = VideoSettings {
            size: self.video_size,
            fps: self.fps,
            max_kbps: self.max_video_kbps,
        };
        config
    }

    /// Opens the video source and sinks the options name (see [`open_video_source`] and
    /// [`open_video_sink`]; with `--group` no two-party sink, and without it both the
    /// two-party sink and the members' sinks for a move into a group call); open them before
    /// anything is created or joined, so a bad one fails first.
    ///
    /// [`open_video_source`]: Self::open_video_source
    /// [`open_video_sink`]: Self::open_video_sink
    pub fn open_video(&self) -> Result<VideoIo, OptionsError> {
        if self.group {
            return Ok(VideoIo {
                source: self.open_video_source()?,
                sink: None,
                group_sinks: self.group_video_sinks()?,
            });
        }
        // A two-party call moves into a group call when a third member comes: there each
        // member's video goes to its own sink, as with `--group`.
        Ok(VideoIo {
            source: self.open_video_source()?,
            sink: self.open_video_sink()?,
            group_sinks: self.group_video_sinks()?,
        })
    }

    /// In a group call (with `--group`, or a two-party call a third member joined), each
    /// member's video goes to its own sink: `--video-output PATH`
    /// writes `PATH` with `-<name>` before its extension (`out.y4m`: `out-alice.y4m`; the
    /// name's characters other than letters, digits, `-` and `_` become `_`), and
    /// `--video-window` opens a window per member. The directory must exist (checked now).
    fn group_video_sinks(&self) -> Result<Option<VideoSinkFactory>, OptionsError> {
        if let Some(path) = &self.video_output {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(OptionsError::Video(format!(
                    "--video-output {}: {} is not a directory",
                    path.display(),
                    dir.display()
                )));
            }
            let path = path.clone();
            let fps = self.fps.unwrap_or(DEFAULT_FPS);
            return Ok(Some(Box::new(move |name: &str| {
                let file = member_video_path(&path, name);
                tracing::info!(member = %name, file = %file.display(), "member's video file");
                Ok(Box::new(Y4mSink::create(file, fps)?) as Box<dyn VideoSink>)
            })));
        }
        if self.video_window {
            return Ok(Some(Box::new(|name: &str| {
                Ok(Box::new(WindowSink::open(&format!("sotto: {name}"))?) as Box<dyn VideoSink>)
            })));
        }
        Ok(None)
    }

    /// A builder for the call, ready to start.
    pub fn builder(
        &self,
        identity: Identity,
        known_peers: KnownPeers,
        source: Box<dyn AudioSource>,
        sink: Box<dyn AudioSink>,
        video: VideoIo,
    ) -> CallBuilder {
        let mut builder = CallBuilder::with_config(self.config())
            .name(self.name.clone())
            .identity(Arc::new(identity))
            .known_peers(known_peers)
            .source(source)
            .sink(sink);
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(video) = video.source {
            builder = builder.boxed_video_source(video);
        }
        if let Some(video) = video.sink {
            builder = builder.boxed_video_sink(video);
        }
        if let Some(factory) = video.group_sinks {
            builder = builder.group_video_sinks(factory);
        }
        builder
    }
}

/// Where a group member's video goes for `--video-output path`: `path` with `-<name>`
/// before its extension, the name made safe for a file name.
pub fn member_video_path(path: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = match path.extension() {
        Some(ext) => format!("{stem}-{safe}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{safe}"),
    };
    path.with_file_name(file)
}

/// The video source and sink a call's options name.
#[derive(Default)]
#[non_exhaustive]
pub struct VideoIo {
    /// What we send, if we send video.
    pub source: Option<Box<dyn VideoSource>>,
    /// Where the peer's video goes (`None`: decoded and counted only).
    pub sink: Option<Box<dyn VideoSink>>,
    /// In a group call: the sink for each member's video (`None`: decoded and counted only).
    pub group_sinks: Option<VideoSinkFactory>,
}

impl std::fmt::Debug for VideoIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoIo")
            .field("source", &self.source.is_some())
            .field("sink", &self.sink.is_some())
            .field("group_sinks", &self.group_sinks.is_some())
            .finish()
    }
}

/// Whether a call that ended for `reason` ended normally (`sotto call` exits 0).
pub fn ended_ok(reason: &EndReason) -> bool {
    matches!(
        reason,
        EndReason::LocalHangup | EndReason::RemoteHangup | EndReason::PeerLeft
    )
}

/// What `sotto call --stats-json` writes: the call's figures as one JSON object.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CallReport {
    /// Always true: every call is end-to-end encrypted.
    pub e2ee: bool,
    /// The SFrame cipher suite's name.
    pub cipher_suite: &'static str,
    /// The room.
    pub room: String,
    /// Our display name.
    pub name: String,
    /// Our identity's fingerprint.
    pub identity: String,
    /// The safety code, once keys were agreed.
    pub safety_code: Option<String>,
    /// The peer's name (canonical).
    pub peer_name: Option<String>,
    /// The peer's identity key, hex.
    pub peer_identity: Option<String>,
    /// The peer's identity fingerprint.
    pub peer_fingerprint: Option<String>,
    /// What the known-peers store said about the peer.
    pub peer_trust: Option<&'static str>,
    /// The peer's name mixes scripts, as lookalikes do.
    pub peer_name_mixed_script: Option<bool>,
    /// The peer's media failed authentication for over a second at some point.
    pub undecryptable: bool,
    /// Why the call ended.
    pub ended: String,
    /// The final figures.
    #[serde(flatten)]
    pub stats: CallStats,
}

impl CallReport {
    /// The report of a call with these options, suite and identity fingerprint, the peer (if
    /// keys were agreed), and how it ended.
    pub fn new(
        options: &CallOptions,
        suite: CipherSuite,
        fingerprint: String,
        peer: Option<&PeerInfo>,
        undecryptable: bool,
        reason: &EndReason,
        stats: CallStats,
    ) -> Self {
        CallReport {
            e2ee: true,
            cipher_suite: suite.name(),
            room: options.room.clone(),
            name: options.name.clone(),
            identity: fingerprint,
            safety_code: peer
                .map(|p| p.safety_code.clone())
                .or_else(|| stats.group_safety_code.clone()),
            peer_name: peer.map(|p| p.name.clone()),
            peer_identity: peer.map(|p| p.identity.to_hex()),
            peer_fingerprint: peer.map(|p| p.identity.fingerprint()),
            peer_trust: peer.map(|p| p.trust.as_str()),
            peer_name_mixed_script: peer.map(|p| p.mixed_script),
            undecryptable,
            ended: reason.to_string(),
            stats,
        }
    }

    /// Writes the report to `path` (through a temporary file, so readers never see half).
    pub fn write(&self, path: &Path) -> Result<(), OptionsError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| OptionsError::Report(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| OptionsError::Report(format!("--stats-json {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_the_long_flag_names() {
        let o = CallOptions::from_json(
            r#"{"server":"ws://h:1/ws","room":"r","tone":440,"duration":1.5,
                "bind":"127.0.0.1:0","ice-server":["stun:a","stun:b"],"require-verified":true,
                "stats-json":"/tmp/x.json","ice-username":"u"}"#,
        )
        .unwrap();
        assert_eq!(o.name, "sotto");
        assert_eq!(o.tone, Some(440.0));
        assert_eq!(o.duration, Some(Duration::from_millis(1500)));
        assert_eq!(o.bind, vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
        assert_eq!(o.ice_server, ["stun:a", "stun:b"]);
        assert!(o.require_verified);
        assert_eq!(o.ice_username, "u");
        let defaults = CallOptions::from_json(r#"{"server":"ws://h/ws","room":"r"}"#).unwrap();
        assert_eq!(defaults.bind, default_bind());
        assert_eq!(defaults.video, None);
        let v = CallOptions::from_json(
            r#"{"server":"ws://h/ws","room":"r","video":"camera:USB Cam","video-size":"1280x720",
                "fps":15,"max-video-kbps":900,"video-output":"out.y4m"}"#,
        )
        .unwrap();
        assert_eq!(v.video.as_deref(), Some("camera:USB Cam"));
        assert_eq!(v.video_size, Some((1280, 720)));
        assert_eq!(v.fps, Some(15));
        assert_eq!(v.max_video_kbps, Some(900));
        let c = v.config();
        assert_eq!(c.video.size, Some((1280, 720)));
        assert_eq!(c.video.max_kbps, Some(900));
    }

    #[test]
    fn ca_cert_is_for_wss_servers_and_reaches_the_call() {
        let o = CallOptions::from_json(
            r#"{"server":"wss://h/ws","room":"r","ca-cert":"/etc/sotto/ca.pem"}"#,
        )
        .unwrap();
        assert_eq!(
            o.config().ca_cert.as_deref(),
            Some(std::path::Path::new("/etc/sotto/ca.pem"))
        );
        let plain = CallOptions::from_json(r#"{"server":"ws://h/ws","room":"r","ca-cert":"a"}"#);
        assert!(
            matches!(plain, Err(OptionsError::Invalid(ref m)) if m.contains("--ca-cert")),
            "{plain:?}"
        );
    }

    #[test]
    fn several_servers_are_the_first_and_its_fallbacks() {
        let one = CallOptions::from_json(r#"{"server":"ws://a:1/ws","room":"r"}"#).unwrap();
        let config = one.config();
        assert_eq!(config.server_url, "ws://a:1/ws");
        assert!(config.fallback_servers.is_empty());
        let three = CallOptions::from_json(
            r#"{"server":"ws://a:1/ws, ws://b:2/ws,wss://c/ws","room":"r"}"#,
        )
        .unwrap();
        let config = three.config();
        assert_eq!(config.server_url, "ws://a:1/ws");
        assert_eq!(config.fallback_servers, ["ws://b:2/ws", "wss://c/ws"]);
        for bad in [
            r#"{"server":"ws://a/ws,http://b/ws","room":"r"}"#,
            r#"{"server":"ws://a/ws,","room":"r"}"#,
            r#"{"server":"wss://a/ws,ws://b/ws","room":"r","ca-cert":"c.pem"}"#,
        ] {
            assert!(CallOptions::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_refuses_what_the_flags_refuse() {
        for bad in [
            r#"{"server":"ws://h/ws","room":"r","colour":"red"}"#,
            r#"{"server":"http://h/ws","room":"r"}"#,
            r#"{"server":"ws://h/ws","room":"r","tone":5}"#,
            r#"{"server":"ws://h/ws","room":"r","duration":0}"#,
            r#"{"server":"ws://h/ws","room":"r","tone":440,"input":"a.wav"}"#,
            r#"{"server":"ws://h/ws","room":"r","output":"a.wav","output-device":"x"}"#,
            r#"{"server":"ws://h/ws","room":"r","bind":"nonsense"}"#,
            r#"{"room":"r"}"#,
            r#"[1]"#,
            r#"{"server":"ws://h/ws","room":"r","video":"webcam"}"#,
            r#"{"server":"ws://h/ws","room":"r","video-size":"641x360"}"#,
            r#"{"server":"ws://h/ws","room":"r","fps":0}"#,
            r#"{"server":"ws://h/ws","room":"r","max-video-kbps":10}"#,
            r#"{"server":"ws://h/ws","room":"r","video-output":"a.y4m","video-window":true}"#,
        ] {
            assert!(
                matches!(CallOptions::from_json(bad), Err(OptionsError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_group_member_s_video_file_is_the_path_with_its_name_before_the_extension() {
        let p = |path: &str, name: &str| member_video_path(Path::new(path), name);
        assert_eq!(
            p("out/video.y4m", "alice"),
            Path::new("out/video-alice.y4m")
        );
        assert_eq!(p("video", "bob"), Path::new("video-bob"));
        // Nothing in a name leaves the directory or makes a hidden path.
        assert_eq!(p("/tmp/v.y4m", "../x y"), Path::new("/tmp/v-___x_y.y4m"));
        assert_eq!(p("v.y4m", "zoë-k_9"), Path::new("v-zoë-k_9.y4m"));
    }

    #[test]
    fn a_two_party_call_s_video_output_names_each_member_s_file_for_a_group_stretch() {
        let dir = std::env::temp_dir().join(format!("sotto-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.y4m");
        let json = |group: bool| {
            serde_json::json!({
                "server": "ws://h/ws", "room": "r", "group": group, "video-output": out,
            })
            .to_string()
        };
        // Without --group: the two-party file, and a member's own file once it shows.
        let io = CallOptions::from_json(&json(false))
            .unwrap()
            .open_video()
            .unwrap();
        assert!(io.sink.is_some() && out.exists());
        let mut factory = io
            .group_sinks
            .expect("the members' sinks for a group stretch");
        factory("bob").unwrap();
        assert!(dir.join("out-bob.y4m").exists());
        // With --group: the members' sinks only.
        let io = CallOptions::from_json(&json(true))
            .unwrap()
            .open_video()
            .unwrap();
        assert!(io.sink.is_none() && io.group_sinks.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_group_call_may_send_video_but_not_text() {
        let video = r#"{"server":"ws://h/ws","room":"r","group":true,"video":"test-pattern"}"#;
        assert!(CallOptions::from_json(video).is_ok());
        let chat = r#"{"server":"ws://h/ws","room":"r","group":true,"chat":true}"#;
        assert!(matches!(
            CallOptions::from_json(chat),
            Err(OptionsError::Invalid(_))
        ));
    }
}
