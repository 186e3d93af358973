//! Two-party end-to-end encrypted calls: the object applications embed.
//!
//! A [`Call`] joins a room on a signaling server, runs the authenticated handshake with the
//! other peer through it, sets up WebRTC, and then carries Opus audio sealed with SFrame both
//! ways. Nothing is sent before keys exist, and every received frame is authenticated before
//! it reaches the playout buffer. The wire contract is `docs/call-protocol.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sotto::call::CallError> {
//! use sotto::call::{CallBuilder, CallEvent};
//! use sotto::media::{NullSink, ToneSource};
//!
//! let mut call = CallBuilder::new("ws://127.0.0.1:8787/ws", "standup")
//!     .name("alice")
//!     .source(ToneSource::new(440.0, 0.3))
//!     .sink(NullSink::default())
//!     .start()?;
//! while let Some(event) = call.next_event().await {
//!     match event {
//!         CallEvent::SafetyCode(peer) => println!("compare: {}", peer.safety_code),
//!         CallEvent::Ended { reason, .. } => { println!("{reason}"); break }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod control;
mod events;
mod group;
#[cfg(feature = "insecure-test-hooks")]
pub use group::GroupKeysTap;
pub use group::VideoSinkFactory;
mod media_loop;
mod options;
mod participant_audio;
mod protocol;
mod session;
mod stats;
mod trickle;
mod video;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use control::{ControlCrypto, ControlError};
pub use events::{CallEvent, CallState, EndReason, PeerInfo};
pub use options::{
    CallOptions, CallReport, LoadedIdentity, OptionsError, VideoIo, check_duration, check_tone,
    ended_ok, known_peers_path, member_video_path, parse_duration, parse_tone,
};
pub use participant_audio::ParticipantAudio;
pub use protocol::{
    ControlMessage, IncomingSignal, MAX_SDP_LEN, OutgoingSignal, PayloadError, parse_signal,
};
pub use stats::{CallStats, ParticipantStats};
pub use video::VideoSettings;

use crate::handshake::{
    HandshakeError, Identity, KnownPeers, PeerTrust, RotationConfig, TrustPolicy, VerifyError,
};
use crate::media::video::{NullVideoSink, VideoCodec, VideoSink, VideoSource};
use crate::media::{AudioSink, AudioSource, OpusConfig};
use crate::messages::{Conversation, DisappearingTimer, History, MessageError, MessageId};
use crate::playout::PlayoutConfig;
use crate::sframe::CipherSuite;
use crate::transport::{TransportConfig, VideoDirection};

use stats::SharedStats;

/// Errors starting a call. Once a call runs, failures end it with an [`EndReason`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// A required part was not given.
    #[error("call is missing {0}")]
    Missing(&'static str),
    /// A setting is out of range.
    #[error("invalid call setting: {0}")]
    Invalid(String),
    /// The identity could not be created or loaded.
    #[error(transparent)]
    Identity(#[from] HandshakeError),
    /// Not inside a tokio runtime.
    #[error("a call must be started inside a tokio runtime")]
    NoRuntime,
}

/// Everything a call needs to know, with defaults for a loopback or LAN call.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Signaling server URL as it prints it (`ws://HOST:PORT/ws`).
    pub server_url: String,
    /// Other signaling servers of the same deployment (nodes sharing rooms), tried in turn
    /// after `server_url` when the connection drops or cannot be made.
    pub fallback_servers: Vec<String>,
    /// Room to meet the peer in; also the handshake's call id.
    pub room: String,
    /// Our display name.
    pub name: String,
    /// Join token, for servers with a secret.
    pub token: Option<String>,
    /// For a `wss://` server: trust only the certificates in this PEM file (a private CA, or a
    /// self-signed server's certificate) instead of the public roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// SFrame cipher suite (both peers must use the same).
    pub suite: CipherSuite,
    /// Opus settings; `opus.frame` is the frame length of the whole call.
    pub opus: OpusConfig,
    /// Playout buffer settings.
    pub playout: PlayoutConfig,
    /// Key rotation.
    pub rotation: RotationConfig,
    /// ICE servers and local addresses.
    pub transport: TransportConfig,
    /// Which peer identities to accept.
    pub trust: TrustPolicy,
    /// How often [`CallEvent::Stats`] is emitted (and RTT measured).
    pub stats_interval: Duration,
    /// Time from finding the peer to media flowing, before the call gives up.
    pub setup_timeout: Duration,
    /// How our video is sent (when there is a video source).
    pub video: VideoSettings,
    /// The video codec we send.
    pub video_codec: VideoCodec,
    /// A group call through the server's SFU (`sotto-signaling --sfu`) instead of a two-party
    /// peer-to-peer call. Every member of the room must use the same mode.
    pub group: bool,
    /// Test only (`insecure-test-hooks`): receives a handle on our group keys.
    #[cfg(feature = "insecure-test-hooks")]
    pub insecure_group_keys_for_tests: Option<GroupKeysTap>,
}

impl CallConfig {
    /// Defaults for `server_url` and `room`.
    pub fn new(server_url: impl Into<String>, room: impl Into<String>) -> Self {
        CallConfig {
            server_url: server_url.into(),
            fallback_servers: Vec::new(),
            room: room.into(),
            name: "sotto".into(),
            token: None,
            ca_cert: None,
            suite: CipherSuite::AesGcm128Sha256,
            opus: OpusConfig::default(),
            playout: PlayoutConfig::default(),
            rotation: RotationConfig::default(),
            transport: TransportConfig::default(),
            trust: TrustPolicy::TrustOnFirstUse,
            stats_interval: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(20),
            video: VideoSettings::default(),
            video_codec: VideoCodec::Vp8,
            group: false,
            #[cfg(feature = "insecure-test-hooks")]
            insecure_group_keys_for_tests: None,
        }
    }
}

/// Builds a [`Call`].
pub struct CallBuilder {
    config: CallConfig,
    identity: Option<Arc<Identity>>,
    known_peers: Option<KnownPeers>,
    source: Option<Box<dyn AudioSource>>,
    sink: Option<Box<dyn AudioSink>>,
    video_source: Option<Box<dyn VideoSource>>,
    video_sink: Option<Box<dyn VideoSink>>,
    group_video_sinks: Option<VideoSinkFactory>,
    participant_audio: Option<Box<dyn ParticipantAudio>>,
    history: Option<History>,
}

impl std::fmt::Debug for CallBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CallBuilder {
    /// A call to `room` on the signaling server at `server_url`.
    pub fn new(server_url: impl Into<String>, room: impl Into<String>) -> Self {
        Self::with_config(CallConfig::new(server_url, room))
    }

    /// A call with every setting given.
    pub fn with_config(config: CallConfig) -> Self {
        CallBuilder {
            config,
            identity: None,
            known_peers: None,
            source: None,
            sink: None,
            video_source: None,
            video_sink: None,
            group_video_sinks: None,
            participant_audio: None,
            history: None,
        }
    }

    /// Our display name (default "sotto").
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Join token for servers with a secret.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// For a `wss://` server: trust only the certificates in this PEM file (a private CA, or
    /// a self-signed server's certificate) instead of the public roots.
    pub fn ca_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.ca_cert = Some(path.into());
        self
    }

    /// Other signaling servers sharing the rooms, tried in turn when the connection to the
    /// current one drops (default: none).
    pub fn fallback_servers(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.fallback_servers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Our long-term identity (default: a fresh one for this call only).
    pub fn identity(mut self, identity: Arc<Identity>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The known-peers store to check and pin the peer against (default: in memory).
    pub fn known_peers(mut self, peers: KnownPeers) -> Self {
        self.known_peers = Some(peers);
        self
    }

    /// Where our audio comes from (required).
    pub fn source(mut self, source: impl AudioSource + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Where the peer's audio goes (required).
    pub fn sink(mut self, sink: impl AudioSink + 'static) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// Sends video from `source` (default: none; the call is audio-only our way, and still
    /// receives the peer's video).
    pub fn video_source(mut self, source: impl VideoSource + 'static) -> Self {
        self.video_source = Some(Box::new(source));
        self
    }

    /// Shows the peer's video on `sink` (default: decoded and counted, not shown). A
    /// two-party call that moves into a group call keeps it, unfinished, and goes on writing
    /// to it when it comes back to two; it is finished when the call ends.
    pub fn video_sink(mut self, sink: impl VideoSink + 'static) -> Self {
        self.video_sink = Some(Box::new(sink));
        self
    }

    /// Sends video from an already boxed source.
    pub fn boxed_video_source(mut self, source: Box<dyn VideoSource>) -> Self {
        self.video_source = Some(source);
        self
    }

    /// Shows the peer's video on an already boxed sink.
    pub fn boxed_video_sink(mut self, sink: Box<dyn VideoSink>) -> Self {
        self.video_sink = Some(sink);
        self
    }

    /// In a group call (started as one, or a two-party call a third member joined), shows
    /// each member's video on the sink `factory` makes for it (called with the member's name
    /// the first time its video shows; the sinks last until the call ends). Default: decoded
    /// and counted, not shown. The two-party [`video_sink`](Self::video_sink) is not used in a
    /// group.
    pub fn group_video_sinks(
        mut self,
        factory: impl FnMut(&str) -> Result<Box<dyn VideoSink>, crate::media::video::VideoError>
        + Send
        + 'static,
    ) -> Self {
        self.group_video_sinks = Some(Box::new(factory));
        self
    }

    /// In group calls, also hands each member's voice, before mixing, to `receiver` (see
    /// [`ParticipantAudio`]). Default: only the mix, on the sink.
    pub fn participant_audio(mut self, receiver: impl ParticipantAudio + 'static) -> Self {
        self.participant_audio = Some(Box::new(receiver));
        self
    }

    /// Keeps this call's messages in `history` across restarts (encrypted at rest, erased at
    /// expiry); its live messages are shown again at start as restored [`CallEvent::Chat`]
    /// events. Default: messages live in memory only.
    pub fn history(mut self, history: History) -> Self {
        self.history = Some(history);
        self
    }

    /// Changes any setting.
    pub fn configure(mut self, f: impl FnOnce(&mut CallConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Starts the call on the current tokio runtime. Events arrive through
    /// [`Call::next_event`].
    pub fn start(self) -> Result<Call, CallError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CallError::NoRuntime)?;
        let source = self.source.ok_or(CallError::Missing("an audio source"))?;
        let sink = self.sink.ok_or(CallError::Missing("an audio sink"))?;
        let c = &self.config;
        if c.room.is_empty() || c.name.is_empty() {
            return Err(CallError::Invalid("room and name must not be empty".into()));
        }
        if c.playout.frame != c.opus.frame.duration() {
            return Err(CallError::Invalid(
                "playout frame and Opus frame differ".into(),
            ));
        }
        let identity = match self.identity {
            Some(id) => id,
            None => Arc::new(Identity::generate()?),
        };
        let mut config = self.config;
        // The video m-line is always there, so the peer can send video to an audio-only side.
        config.transport.video = if self.video_source.is_some() {
            VideoDirection::SendReceive
        } else {
            VideoDirection::ReceiveOnly
        };
        let video_sink = self
            .video_sink
            .unwrap_or_else(|| Box::new(NullVideoSink::default()));
        let config_name = config.name.clone();
        let (events_tx, events) = mpsc::channel(256);
        let (commands_tx, commands) = mpsc::channel(16);
        let shared = Arc::new(SharedStats::default());
        let session = session::Session {
            config,
            identity,
            known_peers: self.known_peers.unwrap_or_else(KnownPeers::in_memory),
            audio: Arc::new(media_loop::AudioHome::new(source, sink)),
            video: Arc::new(video::VideoHome::new(self.video_source, video_sink)),
            group_video: Arc::new(group::GroupVideoHome::new(self.group_video_sinks)),
            participant_audio: self
                .participant_audio
                .map(|p| Arc::new(std::sync::Mutex::new(p))),
            events: events_tx,
            commands,
            shared: Arc::clone(&shared),
            started: Instant::now(),
            chat: Conversation::new(config_name),
            had_media: false,
            history: std::sync::Mutex::new(self.history),
        };
        let task = runtime.spawn(session.run());
        Ok(Call {
            commands: commands_tx,
            events,
            shared,
            task: Some(task),
        })
    }
}

/// Commands from the application to the running call.
#[derive(Debug)]
pub(crate) enum Command {
    Mute(bool),
    HangUp,
    SendMessage(
        zeroize::Zeroizing<String>,
        tokio::sync::oneshot::Sender<Result<MessageId, MessageError>>,
    ),
    SetTimer(
        DisappearingTimer,
        tokio::sync::oneshot::Sender<Result<(), MessageError>>,
    ),
    Verify(
        String,
        tokio::sync::oneshot::Sender<Result<PeerTrust, VerifyError>>,
    ),
    /// Test only: restart ICE now (the initiator of a two-party call); told `true` when the
    /// peer's answer has been applied, `false` if the restart could not be made.
    #[cfg(feature = "insecure-test-hooks")]
    RestartIce(tokio::sync::oneshot::Sender<bool>),
}

/// A running call. Dropping it hangs up.
#[derive(Debug)]
pub struct Call {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<CallEvent>,
    shared: Arc<SharedStats>,
    task: Option<tokio::task::JoinHandle<EndReason>>,
}

impl Call {
    /// The next event; `None` after [`CallEvent::Ended`] has been delivered.
    pub async fn next_event(&mut self) -> Option<CallEvent> {
        self.events.recv().await
    }

    /// Mutes or unmutes our microphone (silence is sent; the peer is told).
    pub async fn set_muted(&self, muted: bool) {
        let _ = self.commands.send(Command::Mute(muted)).await;
    }

    /// Sends a text message to the peer, sealed on the encrypted control channel, with the
    /// disappearing timer in force. UTF-8, 1 to 4096 bytes; a refused text changes nothing.
    /// The peer's acknowledgement arrives as [`ChatEvent::Delivered`]; a message not
    /// acknowledged when the call ends is reported [`ChatEvent::Undelivered`].
    ///
    /// [`ChatEvent::Delivered`]: crate::messages::ChatEvent::Delivered
    /// [`ChatEvent::Undelivered`]: crate::messages::ChatEvent::Undelivered
    pub async fn send_message(&self, text: &str) -> Result<MessageId, MessageError> {
        Conversation::check_text(text)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let text = zeroize::Zeroizing::new(text.to_owned());
        self.commands
            .send(Command::SendMessage(text, reply))
            .await
            .map_err(|_| MessageError::NotConnected)?;
        answer.await.unwrap_or(Err(MessageError::NotConnected))
    }

    /// Sets the conversation's disappearing timer (`None`: off; otherwise 5 s to 24 h in
    /// whole seconds) for the messages sent after it, by either side; the peer is told.
    pub async fn set_disappearing_timer(&self, ttl: Option<Duration>) -> Result<(), MessageError> {
        let timer = DisappearingTimer::new(ttl)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::SetTimer(timer, reply))
            .await
            .map_err(|_| MessageError::NotConnected)?;
        answer.await.unwrap_or(Err(MessageError::NotConnected))
    }

    /// Marks `name` verified (the people compared the safety code, or the group code, and it
    /// matched): the identity key it proved in this call is pinned as verified in the
    /// known-peers store, and [`CallEvent::TrustChanged`] follows. `name` is the peer's or a
    /// member's name as the events show it.
    pub async fn verify(&self, name: &str) -> Result<PeerTrust, VerifyError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Verify(crate::names::canonical(name), reply))
            .await
            .map_err(|_| VerifyError::CallEnded)?;
        answer.await.unwrap_or(Err(VerifyError::CallEnded))
    }

    /// Test only (`insecure-test-hooks`): restarts ICE now, as a lost path would. The
    /// receiver is told `true` once the peer's answer (through signaling) has been applied;
    /// `false` (or dropped) if no restart was made: only the two-party call's initiator
    /// restarts, with media running, while its signaling is connected.
    #[cfg(feature = "insecure-test-hooks")]
    pub async fn restart_ice_for_tests(&self) -> tokio::sync::oneshot::Receiver<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let _ = self.commands.send(Command::RestartIce(reply)).await;
        answer
    }

    /// Hangs up (the peer is told over the encrypted control channel) and waits until the
    /// call has ended.
    pub async fn hang_up(&mut self) -> EndReason {
        let _ = self.commands.send(Command::HangUp).await;
        self.ended().await
    }

    /// Waits until the call has ended, however it ends.
    pub async fn ended(&mut self) -> EndReason {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| EndReason::MediaFailed(format!("call task failed: {e}"))),
            None => EndReason::LocalHangup,
        }
    }

    /// The figures right now (bitrates come with [`CallEvent::Stats`]).
    pub fn stats(&self) -> CallStats {
        self.shared.snapshot()
    }
}
