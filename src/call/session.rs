//! The call task: signaling, handshake, WebRTC negotiation, control channel and the media
//! threads' lifecycle. All protocol decisions live in the Sans-I/O pieces (handshake machine,
//! payload parsing, control crypto); this is the I/O edge that drives them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::group::JoinKind;
use crate::handshake::MediaKind;
use crate::handshake::{
    CallKeys, DtlsFingerprint, Established, Handshake, Identity, IdentityKey, KnownPeers,
    MediaReceiver, MediaSender, PeerTrust, Role, VerifyError,
};
use crate::media::video::VideoEncoderConfig;
use crate::media::{OpusDecoder, OpusEncoder};
use crate::messages::{
    ChatEvent, Conversation, DisappearingTimer, History, MessageError, MessageId, Rejection,
    StoredMessage, unix_ms,
};
use crate::names;
use crate::playout::AudioPlayout;
use crate::signal::{IceServerInfo, PeerInfo as SignalPeer};
use crate::signal::{SignalClient, SignalConfig, SignalEvent};
use crate::transport::{
    IceServer, LocalCandidate, MediaTransport, PathAction, RECONNECT_GIVE_UP, Reconnector,
    RestartRole, TransportConfig, TransportState, has_turn,
};

use super::control::{ControlCrypto, ControlError};
use super::events::{CallEvent, CallState, EndReason, PeerInfo};
use super::media_loop::{self, AudioHome, Capture, MediaNotice, PLAYBACK_QUEUE, Playback};
use super::protocol::{ControlMessage, IncomingSignal, OutgoingSignal, parse_signal};
use super::stats::{RateMeter, SharedStats};
use super::trickle::{LocalTrickle, RemoteTrickle, Verdict, ice_ufrag};
use super::video::{self, VideoCapture, VideoControl, VideoHome, VideoOpener, VideoRender};
use super::{CallConfig, Command};

/// How long a hang-up message gets to leave before the connection closes.
const HANGUP_LINGER: Duration = Duration::from_millis(150);

/// How long after the server says the peer left its hang-up may still arrive (the room's
/// `peer_left` can overtake the control channel's `hangup` on a loaded machine, by one SCTP
/// retransmission (about 1 s) when the hang-up's first packet was lost, as right after an
/// ICE restart).
const HANGUP_GRACE: Duration = Duration::from_millis(1500);

/// After the grace, how often a peer that left the room while its media still flows is
/// checked: its signaling reconnects (and it says its new id), or its media stops and the
/// call ends.
const AWAY_CHECK: Duration = Duration::from_secs(1);

/// Signals kept from peers not in the call (the peer's from a new id may come before its
/// `rejoined` message).
const STRAY_SIGNALS: usize = 16;

/// How many signaling attempts in a row may fail before a call that never joined the room
/// gives up (once joined, it keeps trying: the media may still flow).
pub(crate) const SIGNAL_ATTEMPTS: u32 = 5;

/// The threads and tasks of one media kind.
type Workers = (
    Vec<std::thread::JoinHandle<()>>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// Least time between two keyframe requests (PLI) we send.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(300);

pub(crate) struct Session {
    pub config: CallConfig,
    pub identity: Arc<Identity>,
    pub known_peers: KnownPeers,
    /// The application's audio I/O while no media thread holds it.
    pub audio: Arc<AudioHome>,
    /// The same for two-party video (the source moves to `group_video` for a group stretch
    /// and back).
    pub video: Arc<VideoHome>,
    /// Group calls' video source and per-member sinks.
    pub group_video: Arc<super::group::GroupVideoHome>,
    /// Where each group member's voice goes before mixing, if the application asked.
    pub participant_audio: Option<super::participant_audio::SharedParticipantAudio>,
    pub events: mpsc::Sender<CallEvent>,
    pub commands: mpsc::Receiver<Command>,
    pub shared: Arc<SharedStats>,
    pub started: Instant,
    /// The text messages of this call.
    pub chat: Conversation,
    /// Media flowed at some point of this call (in any mode): a later stretch that ends
    /// before its own media is not a call that never happened.
    pub had_media: bool,
    /// Where live messages are kept across restarts, if anywhere (a mutex only so the
    /// session is `Sync`; never held across an await).
    pub history: std::sync::Mutex<Option<History>>,
}

/// How long the peer's frames must keep failing authentication, with none decrypting, before
/// the call says its media cannot be decrypted.
const UNDECRYPTABLE_AFTER: Duration = Duration::from_secs(1);

/// The peer we are calling and how far we got with it.
struct Peer {
    id: String,
    /// Its slot in the room (servers with an SFU give one).
    slot: Option<u8>,
    /// The name the server attested for this peer (its join name, checked against the token).
    attested_name: String,
    handshake: Handshake,
    /// When both of us were in the room, as seen here (set-up time starts here).
    since: Instant,
    /// The peer's SDP, kept until its DTLS fingerprint can be checked against the handshake.
    remote_sdp: Option<String>,
    /// The DTLS fingerprint the peer signed in the handshake.
    signed_dtls: Option<DtlsFingerprint>,
}

impl Peer {
    fn new(info: SignalPeer, handshake: Handshake, since: Instant) -> Self {
        let SignalPeer {
            peer_id: id,
            name: attested_name,
            slot,
            ..
        } = info;
        Peer {
            id,
            slot,
            attested_name,
            handshake,
            since,
            remote_sdp: None,
            signed_dtls: None,
        }
    }

    /// Once both the signed fingerprint and the peer's SDP are known: every fingerprint in
    /// the SDP must be the signed one.
    fn check_transport_binding(&self) -> Result<(), EndReason> {
        match (&self.signed_dtls, &self.remote_sdp) {
            (Some(signed), Some(sdp)) => signed
                .check_sdp(sdp)
                .map_err(|e| EndReason::TransportNotBound(e.to_string())),
            _ => Ok(()),
        }
    }
}

/// Media threads and tasks once running.
pub(crate) struct MediaThreads {
    pub stop: Arc<AtomicBool>,
    /// Raised before `stop` when the call changes mode: the sink goes back home unfinished.
    pub handover: Arc<AtomicBool>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The transport's video streams, until the video side starts.
struct VideoStreams {
    frames: Option<mpsc::Receiver<crate::transport::ReceivedVideoFrame>>,
    keyframe_requests: Option<mpsc::Receiver<()>>,
}

/// Mutable state of one run.
struct Run {
    signal: Option<SignalClient>,
    transport: Arc<MediaTransport>,
    peer: Option<Peer>,
    /// Set once the handshake completed.
    established: bool,
    /// The media keys, until the media threads take them.
    keys: Option<CallKeys>,
    control: Option<ControlCrypto>,
    media: Option<MediaThreads>,
    state: CallState,
    ping: Option<(u64, Instant)>,
    next_ping: u64,
    reported_failures: u64,
    /// Decrypted frames at the last stats tick.
    last_decrypted: u64,
    /// Since when the peer's frames fail authentication with none decrypting.
    failing_since: Option<Instant>,
    /// The server said the peer left: the call ends then, unless its hang-up arrives first
    /// or its media still flows (its signaling reconnects: then this is the next check).
    peer_left_at: Option<tokio::time::Instant>,
    /// Frames decrypted (audio and video) when the peer's leave was seen or last checked:
    /// more since then mean its media is alive though it left the room.
    peer_left_frames: u64,
    /// Our peer id after a rejoin, until the peer has been told over the control channel.
    announce_id: Option<String>,
    /// The peer back in the room under a new id as the server says it, until the peer itself
    /// says so over the control channel (the server cannot redirect the call).
    rejoin_seen: Option<SignalPeer>,
    /// Signals from peers not in the call, kept a moment: the peer's from its new id can
    /// arrive before its `rejoined` message.
    stray_signals: std::collections::VecDeque<(String, Box<RawValue>)>,
    /// Test only: told when the answer to a restart asked for by the application arrives.
    #[cfg(feature = "insecure-test-hooks")]
    restart_waiter: Option<tokio::sync::oneshot::Sender<bool>>,
    signaling_up: bool,
    /// Chat items waiting for the control channel to open (sealed when they leave, so the
    /// peer sees them in order).
    chat_outbox: std::collections::VecDeque<ControlMessage>,
    /// Control frames that arrived before our keys were agreed: the peer may finish the
    /// handshake first and send at once over the data channel, which can overtake the last
    /// handshake message relayed by the server. Opened once the keys exist.
    early_controls: Vec<bytes::Bytes>,
    /// A control frame from the peer authenticated: its end of the channel is open, so what
    /// we send now is not lost (a data channel drops messages that reach a side not open
    /// yet, and the two sides open at different times).
    peer_heard: bool,
    /// Whether the path is lost, and when to restart ICE or give up.
    path: Reconnector,
    /// The peer's name and the identity it proved, once keys are agreed.
    agreed: Option<(String, IdentityKey)>,
    /// The room as the server described it to us (for a move to a group call).
    room: Option<RoomInfo>,
    /// Set when the call moves to a group call: the members to agree keys with there.
    escalate: Option<Vec<HandoverPeer>>,
    /// The signaling events, kept for the next mode when the call moves.
    signal_events: Option<mpsc::Receiver<SignalEvent>>,
    /// Trickle ICE: which of our candidates the peer has.
    local_ice: LocalTrickle,
    /// Trickle ICE: the peer's candidates.
    remote_ice: RemoteTrickle,
    /// Whether the peer trickles: `Some(true)` once it said so, `Some(false)` once its first
    /// description came without that.
    peer_trickles: Option<bool>,
    /// Our first gathering is over.
    gathered: bool,
    /// The complete offer for a peer that does not trickle went out.
    offered_again: bool,
}

/// What the server's `welcome` said about the room and us.
#[derive(Debug, Clone)]
pub(crate) struct RoomInfo {
    pub our_id: String,
    pub slot: Option<u8>,
    pub ice_servers: Vec<IceServerInfo>,
    pub sfu: bool,
}

/// A member the next mode meets, and how.
#[derive(Debug, Clone)]
pub(crate) struct HandoverPeer {
    pub info: SignalPeer,
    /// We start its handshake (else it starts it with us).
    pub initiate: bool,
    /// It came after the previous mode started (it gets a ratcheted group key).
    pub join: JoinKind,
}

/// What a call hands to its next mode: the signaling connection (our place in the room stays)
/// and the room as we know it.
pub(crate) struct RoomHandover {
    pub signal: SignalClient,
    pub events: mpsc::Receiver<SignalEvent>,
    pub room: RoomInfo,
    pub peers: Vec<HandoverPeer>,
}

/// How one mode of a call ended.
pub(crate) enum Outcome {
    /// The call is over.
    Ended(EndReason),
    /// A third member came (to a group call through the SFU) or only one other member is
    /// left (back to a two-party call).
    Switch(Mode),
}

/// A call's mode, with what the previous mode hands over.
pub(crate) enum Mode {
    TwoParty(Option<RoomHandover>),
    Group(Option<RoomHandover>),
}

/// Whether we start the handshake with a member that was in the room as long as we were: the
/// later of the two (the higher slot), as a joiner does.
pub(crate) fn we_initiate(our_slot: Option<u8>, theirs: Option<u8>) -> bool {
    our_slot > theirs
}

/// Control frames kept at most until the keys are agreed.
const EARLY_CONTROLS: usize = 32;

/// Chat items held at most while the control channel opens.
const CHAT_OUTBOX: usize = 256;

/// Pins `key`, the identity `name` proved in this call, as verified, and saves the store.
pub(crate) fn verify_key(
    session: &mut Session,
    name: &str,
    key: &IdentityKey,
) -> Result<PeerTrust, VerifyError> {
    session.known_peers.verify(name, Some(&key.fingerprint()))?;
    if let Err(e) = session.known_peers.save() {
        tracing::warn!("could not save known peers: {e}");
    }
    Ok(session.known_peers.check(name, key))
}

impl Session {
    /// Runs the call to its end, through every change of mode; always emits `Ended` last.
    pub(crate) async fn run(mut self) -> EndReason {
        let mut mode = if self.config.group {
            Mode::Group(None)
        } else {
            Mode::TwoParty(None)
        };
        let reason = loop {
            let outcome = match mode {
                Mode::TwoParty(handover) => self.run_two_party(handover).await,
                Mode::Group(handover) => super::group::run(&mut self, handover).await,
            };
            match outcome {
                Outcome::Ended(reason) => break reason,
                Outcome::Switch(next) => {
                    let to = if matches!(next, Mode::Group(_)) {
                        "a group call through the SFU"
                    } else {
                        "a two-party call"
                    };
                    tracing::info!("the call moves to {to}");
                    mode = next;
                }
            }
        };
        // Sinks a change of mode left at home are finished now (a call that ends in a group
        // stretch still holds the two-party sink, and one that ends two-party the members').
        self.video.finish();
        self.group_video.finish();
        // Messages the peer did not acknowledge are reported, never silently lost; texts held
        // in memory are wiped (the history, if any, keeps and expires its copies).
        self.chat.end();
        self.flush_chat().await;
        self.chat.wipe_all();
        let stats = self.shared.snapshot();
        tracing::info!(%reason, "call ended");
        // The last events wait for room in the queue, but not forever: an application that
        // stopped reading still gets the reason from `Call::ended`.
        for event in [
            CallEvent::State(CallState::Ended),
            CallEvent::Ended {
                reason: reason.clone(),
                stats,
            },
        ] {
            let send = self.events.send(event);
            if tokio::time::timeout(Duration::from_secs(1), send)
                .await
                .is_err()
            {
                tracing::debug!("event queue full at the end of the call");
            }
        }
        reason
    }

    /// One two-party stretch of the call: to its end, or to the move to a group call.
    async fn run_two_party(&mut self, handover: Option<RoomHandover>) -> Outcome {
        self.shared.group_mode.store(false, Relaxed);
        // Back from a group stretch, our video source is in the group's home.
        if let Some(source) = self.group_video.take_source() {
            self.video.put_source(source);
        }
        let (reason, run) = self.run_inner(handover).await;
        let Some(mut run) = run else {
            return Outcome::Ended(reason);
        };
        if run.escalate.is_some()
            && let Some(handover) = self.hand_over(&mut run).await
        {
            return Outcome::Switch(Mode::Group(Some(handover)));
        }
        self.shutdown(&mut run, &reason).await;
        Outcome::Ended(reason)
    }

    /// Stops this mode's media (the audio I/O goes back home), keeps signaling, and lets the
    /// peer connection linger a moment so the peer is not cut off before it moves too.
    async fn hand_over(&mut self, run: &mut Run) -> Option<RoomHandover> {
        let peers = run.escalate.take()?;
        let room = run.room.clone()?;
        if let Some(media) = run.media.take() {
            media.handover.store(true, Relaxed);
            stop_media(media).await;
        }
        let transport = Arc::clone(&run.transport);
        tokio::spawn(async move {
            tokio::time::sleep(PEER_CONNECTION_LINGER).await;
            let _ = transport.close().await;
        });
        Some(RoomHandover {
            signal: run.signal.take()?,
            events: run.signal_events.take()?,
            room,
            peers,
        })
    }

    /// [`verify_key`] for the peer of this two-party call.
    fn verify_peer(&mut self, run: &Run, name: &str) -> Result<PeerTrust, VerifyError> {
        let Some((peer, key)) = run.agreed.as_ref().filter(|(n, _)| n == name) else {
            return Err(VerifyError::NotInCall(name.to_owned()));
        };
        let trust = verify_key(self, peer, key)?;
        self.emit(CallEvent::TrustChanged {
            name: peer.clone(),
            trust: trust.clone(),
        });
        Ok(trust)
    }

    fn emit(&self, event: CallEvent) {
        // Never block the call on a slow application: stats may be dropped, the rest fits.
        if self.events.try_send(event).is_err() {
            tracing::debug!("event queue full; event dropped");
        }
    }

    fn set_state(&self, run: &mut Run, state: CallState) {
        if run.state != state {
            run.state = state;
            tracing::info!(?state, "call state");
            self.emit(CallEvent::State(state));
        }
    }

    async fn run_inner(&mut self, handover: Option<RoomHandover>) -> (EndReason, Option<Run>) {
        if handover.is_none() {
            self.emit(CallEvent::State(CallState::Joining));
            self.restore_history().await;
        }
        // The transport starts first: its sockets and ICE agent get ready while we join.
        let mut transport = match MediaTransport::new(self.config.transport.clone()).await {
            Ok(t) => t,
            Err(e) => return (EndReason::ConnectionFailed(e.to_string()), None),
        };
        let frames = transport.take_frames();
        let mut controls = transport.take_control();
        let mut local_candidates = transport.take_local_candidates();
        let mut video_streams = VideoStreams {
            frames: transport.take_video_frames(),
            keyframe_requests: transport.take_keyframe_requests(),
        };
        let transport = Arc::new(transport);
        // A call that comes back from a group call keeps its place in the room; it meets the
        // one member left as if the room were new: the later of the two starts.
        let (signal, mut signal_events, mut injected) = match handover {
            Some(h) => {
                let mut injected = Vec::new();
                let (start, wait): (Vec<_>, Vec<_>) = h.peers.into_iter().partition(|p| p.initiate);
                injected.push(SignalEvent::Joined {
                    peer_id: h.room.our_id,
                    slot: h.room.slot,
                    peers: start.into_iter().map(|p| p.info).collect(),
                    ice_servers: h.room.ice_servers,
                    sfu: h.room.sfu,
                });
                injected.extend(wait.into_iter().map(|p| SignalEvent::PeerJoined(p.info)));
                (h.signal, h.events, injected)
            }
            None => {
                let mut signal_config = SignalConfig::new(
                    self.config.server_url.clone(),
                    self.config.room.clone(),
                    self.config.name.clone(),
                );
                signal_config.fallback_urls = self.config.fallback_servers.clone();
                signal_config.token = self.config.token.clone();
                signal_config.ca_cert = self.config.ca_cert.clone();
                signal_config.max_attempts = Some(SIGNAL_ATTEMPTS);
                signal_config.retry_forever_once_joined = true;
                let (signal, events) = SignalClient::connect(signal_config);
                (signal, events, Vec::new())
            }
        };
        let mut run = Run {
            signal: Some(signal),
            transport: Arc::clone(&transport),
            peer: None,
            established: false,
            keys: None,
            control: None,
            media: None,
            state: CallState::Joining,
            ping: None,
            next_ping: 1,
            reported_failures: 0,
            last_decrypted: 0,
            failing_since: None,
            peer_left_at: None,
            peer_left_frames: 0,
            announce_id: None,
            rejoin_seen: None,
            stray_signals: std::collections::VecDeque::new(),
            #[cfg(feature = "insecure-test-hooks")]
            restart_waiter: None,
            signaling_up: true,
            chat_outbox: std::collections::VecDeque::new(),
            early_controls: Vec::new(),
            peer_heard: false,
            path: Reconnector::new(RestartRole::Answerer),
            agreed: None,
            room: None,
            escalate: None,
            signal_events: None,
            local_ice: LocalTrickle::default(),
            remote_ice: RemoteTrickle::default(),
            peer_trickles: None,
            gathered: false,
            offered_again: false,
        };
        let mut control_open = transport.control_open_watch();
        let mut control_watch = true;
        let mut frames = frames;
        let mut transport_state = transport.state_watch();
        let (notices_tx, mut notices) = mpsc::unbounded_channel();
        let mut stats_tick = tokio::time::interval(self.config.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rates = RateMeter::default();
        let mut last_tick = Instant::now();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let mut setup_deadline = far;
        for event in injected.drain(..) {
            match self.on_signal(&mut run, event).await {
                Ok(true) => {
                    setup_deadline = tokio::time::Instant::now() + self.config.setup_timeout;
                }
                Ok(false) => {}
                Err(reason) => {
                    run.signal_events = Some(signal_events);
                    return (reason, Some(run));
                }
            }
        }

        let reason = loop {
            let chat_deadline = self.chat.next_deadline();
            let path_deadline = run.path.next_deadline();
            tokio::select! {
                event = signal_events.recv(), if run.signaling_up => {
                    let Some(event) = event else {
                        run.signaling_up = false;
                        if run.media.is_none() {
                            break EndReason::SignalingFailed("signaling client stopped".into());
                        }
                        continue;
                    };
                    match self.on_signal(&mut run, event).await {
                        Ok(true) => {
                            setup_deadline = tokio::time::Instant::now() + self.config.setup_timeout;
                        }
                        Ok(false) => {}
                        Err(reason) => break reason,
                    }
                    // The peer may just have said it answers restarts, or answered one.
                    if let Err(reason) = self.drive_path(&mut run).await {
                        break reason;
                    }
                    if let Err(reason) =
                        self.maybe_start_media(&mut run, &mut frames, &mut video_streams, &notices_tx)
                    {
                        break reason;
                    }
                    if run.control.is_some() && !run.early_controls.is_empty() {
                        let mut ended = None;
                        for frame in std::mem::take(&mut run.early_controls) {
                            if let Some(reason) = self.on_control(&mut run, &frame).await {
                                ended = Some(reason);
                                break;
                            }
                        }
                        if let Some(reason) = ended {
                            break reason;
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::HangUp) | None => {
                        break match run.media {
                            Some(_) => EndReason::LocalHangup,
                            None if self.had_media => EndReason::LocalHangup,
                            None => EndReason::NeverConnected(setup_stage(run.state)),
                        };
                    }
                    Some(Command::Mute(muted)) => {
                        self.shared.muted.store(muted, Relaxed);
                        self.send_control(&mut run, &ControlMessage::Mute { muted }).await;
                    }
                    Some(Command::SendMessage(text, reply)) => {
                        let sent = self.send_message(&mut run, &text).await;
                        let _ = reply.send(sent);
                    }
                    Some(Command::SetTimer(timer, reply)) => {
                        let set = self.set_timer(&mut run, timer).await;
                        let _ = reply.send(set);
                    }
                    Some(Command::Verify(name, reply)) => {
                        let _ = reply.send(self.verify_peer(&run, &name));
                    }
                    #[cfg(feature = "insecure-test-hooks")]
                    Some(Command::RestartIce(reply)) => {
                        if let Err(reason) = self.restart_for_tests(&mut run, reply).await {
                            break reason;
                        }
                    }
                },
                changed = control_open.changed(), if control_watch => {
                    if changed.is_err() {
                        control_watch = false;
                    } else if *control_open.borrow_and_update() {
                        // Tell the peer we are open (it may not have heard from us yet), and
                        // send what waited if it has.
                        let id = run.next_ping;
                        run.next_ping += 1;
                        if self.send_control(&mut run, &ControlMessage::Ping { id }).await {
                            run.ping = Some((id, Instant::now()));
                        }
                        self.flush_outbox(&mut run).await;
                        self.announce_rejoin(&mut run).await;
                    }
                }
                _ = tokio::time::sleep_until(
                    chat_deadline.map_or(far, tokio::time::Instant::from_std)
                ), if chat_deadline.is_some() => {
                    self.chat.poll(Instant::now());
                    self.flush_chat().await;
                }
                changed = transport_state.changed() => {
                    if changed.is_err() {
                        break EndReason::ConnectionFailed("transport stopped".into());
                    }
                    let state = *transport_state.borrow_and_update();
                    run.path.on_state(state, Instant::now());
                    match state {
                        TransportState::Connected => {
                            if run.established && run.media.is_none() {
                                if let Err(reason) =
                                    self.maybe_start_media(&mut run, &mut frames, &mut video_streams, &notices_tx)
                                {
                                    break reason;
                                }
                            } else if run.media.is_some() {
                                self.set_state(&mut run, CallState::Connected);
                            }
                        }
                        TransportState::Closed => {
                            break EndReason::ConnectionFailed("peer connection closed".into());
                        }
                        // A path that never came up is not lost: it failed.
                        TransportState::Failed if !run.path.is_lost() => {
                            break EndReason::ConnectionFailed("peer connection failed".into());
                        }
                        _ if run.path.is_lost() && run.media.is_some() => {
                            self.set_state(&mut run, CallState::Reconnecting);
                        }
                        _ => {}
                    }
                    if let Err(reason) = self.drive_path(&mut run).await {
                        break reason;
                    }
                }
                _ = tokio::time::sleep_until(
                    path_deadline.map_or(far, tokio::time::Instant::from_std)
                ), if path_deadline.is_some() => {
                    if let Err(reason) = self.drive_path(&mut run).await {
                        break reason;
                    }
                }
                found = async {
                    match local_candidates.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => match found {
                    Some(found) => self.on_local_candidate(&mut run, found).await,
                    None => local_candidates = None,
                },
                Some(message) = async {
                    match controls.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(reason) = self.on_control(&mut run, &message).await {
                        break reason;
                    }
                }
                Some(notice) = notices.recv() => match notice {
                    MediaNotice::FirstAudio(setup) => {
                        let setup_ms = setup.as_secs_f64() * 1000.0;
                        tracing::info!(setup_ms, "first audio played");
                        self.emit(CallEvent::FirstAudio { setup_ms });
                    }
                    MediaNotice::VideoSize(width, height) => {
                        tracing::info!(width, height, "peer's video size");
                        self.emit(CallEvent::VideoSize { width, height });
                    }
                    MediaNotice::ParticipantVideoSize { .. } => {}
                    MediaNotice::Failed(e) => break EndReason::MediaFailed(e),
                },
                _ = stats_tick.tick() => {
                    let now = Instant::now();
                    let mut stats = self.shared.snapshot();
                    rates.update(&self.shared, now - last_tick, &mut stats);
                    let interval_start = last_tick;
                    last_tick = now;
                    self.check_decryptable(&mut run, &stats, interval_start, now);
                    let failures = stats.decrypt_failures + stats.video_decrypt_failures;
                    if failures > run.reported_failures {
                        self.emit(CallEvent::AuthenticationFailures {
                            new: failures - run.reported_failures,
                            total: failures,
                        });
                        run.reported_failures = failures;
                    }
                    self.announce_rejoin(&mut run).await;
                    if run.media.is_some() {
                        self.emit(CallEvent::Stats(stats));
                        let id = run.next_ping;
                        run.next_ping += 1;
                        if self.send_control(&mut run, &ControlMessage::Ping { id }).await {
                            run.ping = Some((id, now));
                        }
                    }
                }
                _ = tokio::time::sleep_until(run.peer_left_at.unwrap_or(far)),
                    if run.peer_left_at.is_some() => {
                    if self.peer_media_alive(&mut run) {
                        // Its signaling dropped, not the call: it comes back under a new id.
                        tracing::info!("the peer left the room but its media flows: waiting for it");
                        run.peer_left_at = Some(tokio::time::Instant::now() + AWAY_CHECK);
                        continue;
                    }
                    break match run.media {
                        Some(_) => EndReason::PeerLeft,
                        None if self.had_media => EndReason::PeerLeft,
                        None => EndReason::NeverConnected("the peer left during the set-up"),
                    };
                }
                _ = tokio::time::sleep_until(setup_deadline), if run.media.is_none() => {
                    break EndReason::Timeout(if !run.established {
                        "key agreement with the peer"
                    } else {
                        "WebRTC connection"
                    });
                }
            }
        };
        run.signal_events = Some(signal_events);
        (reason, Some(run))
    }

    /// Handles one signaling event. `Ok(true)` when a peer was found (set-up starts).
    async fn on_signal(&mut self, run: &mut Run, event: SignalEvent) -> Result<bool, EndReason> {
        match event {
            SignalEvent::Joined {
                peer_id,
                slot,
                peers,
                ice_servers,
                sfu,
            } => {
                tracing::info!(%peer_id, others = peers.len(), "joined the room");
                if let Some(peer) = run.peer.as_mut() {
                    // A rejoin after a reconnect: the call goes on, but signals in flight may
                    // have been lost, and we have a new id the peer must learn from us.
                    run.path.signaling_rejoined();
                    let here = peers
                        .iter()
                        .find(|p| p.peer_id == peer.id)
                        .or_else(|| peers.iter().find(|p| same_name(p, peer)));
                    if let Some(p) = here {
                        if p.peer_id == peer.id {
                            peer.slot = p.slot;
                        } else {
                            run.rejoin_seen = Some(p.clone());
                        }
                    }
                    let relay_to = here.map(|p| p.peer_id.clone());
                    if let Some(room) = run.room.as_mut() {
                        room.our_id.clone_from(&peer_id);
                        room.slot = slot;
                    }
                    run.announce_id = Some(peer_id);
                    self.announce_rejoin(run).await;
                    // Also through the server, sealed the same: the path (and with it the data
                    // channel) may be down, and a restart needs each side's new id.
                    if let Some(to) = relay_to {
                        self.relay_our_id(run, &to).await;
                    }
                    return Ok(false);
                }
                run.room = Some(RoomInfo {
                    our_id: peer_id,
                    slot,
                    ice_servers: ice_servers.clone(),
                    sfu,
                });
                if sfu && (peers.len() >= 2 || peers.iter().any(|p| p.group)) {
                    // Two or more are here already, or a member always in the group call
                    // (`--group`): a group call, and we start every pair.
                    run.escalate = Some(
                        peers
                            .into_iter()
                            .map(|info| HandoverPeer {
                                info,
                                initiate: true,
                                join: JoinKind::AlreadyPresent,
                            })
                            .collect(),
                    );
                    return Err(EndReason::LocalHangup);
                }
                // Gathering starts with the offer or answer, later than this.
                if let Some(servers) = ice_servers_to_use(&self.config.transport, ice_servers)?
                    && let Err(e) = run.transport.set_ice_servers(&servers).await
                {
                    return Err(EndReason::ConnectionFailed(format!(
                        "the ICE servers are not usable: {e}"
                    )));
                }
                let Some(other) = peers.into_iter().next() else {
                    self.set_state(run, CallState::WaitingForPeer);
                    return Ok(false);
                };
                // The peer was there first: we initiate.
                let (handshake, hello) = Handshake::initiator(
                    Arc::clone(&self.identity),
                    &self.config.room,
                    &self.config.name,
                    run.transport.dtls_fingerprint(),
                )
                .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
                run.path = Reconnector::new(RestartRole::Offerer);
                // Set-up time of the joiner counts from its own start.
                run.peer = Some(Peer::new(other, handshake, self.started));
                self.set_state(run, CallState::Handshaking);
                self.send_handshake(run, hello).await?;
                let trickle = self.config.transport.trickle;
                let offer = if trickle {
                    // Before the offer, so the peer knows it may answer at once.
                    self.send_signal(run, &OutgoingSignal::Trickle).await?;
                    run.transport.create_offer_trickle().await
                } else {
                    run.transport.create_offer().await
                }
                .map_err(|e| EndReason::ConnectionFailed(e.to_string()))?;
                self.send_signal(run, &OutgoingSignal::Offer { sdp: &offer })
                    .await?;
                if trickle {
                    run.local_ice.described(&offer);
                }
                Ok(true)
            }
            SignalEvent::PeerJoined(info) => {
                if let Some(peer) = &run.peer {
                    if info.peer_id == peer.id {
                        return Ok(false);
                    }
                    if run.control.is_some() && same_name(&info, peer) {
                        // Names are unique in a room: the peer's signaling reconnected. It
                        // says its new id itself, over the control channel.
                        tracing::info!(peer = %info.peer_id, "the peer is back in the room");
                        // It may have missed our own new id while it was away.
                        self.relay_our_id(run, &info.peer_id).await;
                        run.rejoin_seen = Some(info);
                        return Ok(false);
                    }
                    let room = run.room.as_ref().filter(|r| r.sfu);
                    let Some(room) = room else {
                        tracing::info!(peer = %info.peer_id, "ignoring a third peer");
                        return Ok(false);
                    };
                    // A third person: everyone moves to the SFU with new keys.
                    let present = SignalPeer {
                        peer_id: peer.id.clone(),
                        name: peer.attested_name.clone(),
                        slot: peer.slot,
                        group: false,
                    };
                    run.escalate = Some(vec![
                        HandoverPeer {
                            initiate: we_initiate(room.slot, present.slot),
                            info: present,
                            join: JoinKind::AlreadyPresent,
                        },
                        HandoverPeer {
                            info,
                            initiate: false,
                            join: JoinKind::NewJoiner,
                        },
                    ]);
                    return Err(EndReason::LocalHangup);
                }
                if info.group && run.room.as_ref().is_some_and(|r| r.sfu) {
                    // A member always in the group call (`--group`) joined us: we meet it on
                    // the SFU, and it starts the handshake, as a newcomer does.
                    run.escalate = Some(vec![HandoverPeer {
                        info,
                        initiate: false,
                        join: JoinKind::NewJoiner,
                    }]);
                    return Err(EndReason::LocalHangup);
                }
                let handshake = Handshake::responder(
                    Arc::clone(&self.identity),
                    &self.config.room,
                    &self.config.name,
                    run.transport.dtls_fingerprint(),
                )
                .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
                run.peer = Some(Peer::new(info, handshake, Instant::now()));
                self.set_state(run, CallState::Handshaking);
                Ok(true)
            }
            SignalEvent::PeerLeft { peer_id } => {
                if run.peer.as_ref().is_some_and(|p| p.id == peer_id) {
                    if run.media.is_none() {
                        // Back from a group call, the call did happen: the last one left.
                        return Err(if self.had_media {
                            EndReason::PeerLeft
                        } else {
                            EndReason::NeverConnected("the peer left during the set-up")
                        });
                    }
                    if run.control.is_none() {
                        return Err(EndReason::PeerLeft);
                    }
                    // A peer that hangs up sends `hangup` on the control channel and then
                    // leaves the room; the leave can overtake it. Give the hang-up a moment.
                    // A peer whose signaling dropped leaves the room too, but its media goes
                    // on: that is checked when the moment is over.
                    if run.peer_left_at.is_none() {
                        run.peer_left_at = Some(tokio::time::Instant::now() + HANGUP_GRACE);
                        run.peer_left_frames = self.frames_decrypted();
                    }
                }
                Ok(false)
            }
            SignalEvent::Message { from, data } => {
                if run.control.is_some()
                    && let Ok(IncomingSignal::Control(frame)) = parse_signal(data.get())
                {
                    self.on_relayed_control(run, &from, &frame).await?;
                    return Ok(false);
                }
                if run.peer.as_ref().is_none_or(|p| p.id != from) {
                    if run.control.is_some() {
                        // Perhaps the peer from its new id, ahead of its `rejoined` message.
                        if run.stray_signals.len() >= STRAY_SIGNALS {
                            run.stray_signals.pop_front();
                        }
                        run.stray_signals.push_back((from, data));
                    } else {
                        tracing::debug!(%from, "ignoring a message from a peer not in this call");
                    }
                    return Ok(false);
                }
                match parse_signal(data.get()) {
                    Ok(message) => self.on_call_message(run, message).await?,
                    Err(e) => tracing::warn!("ignoring a bad payload from the peer: {e}"),
                }
                Ok(false)
            }
            SignalEvent::ServerError { code, message } => {
                tracing::warn!(?code, %message, "signaling server refused a message");
                Ok(false)
            }
            SignalEvent::Disconnected { reason } => {
                tracing::warn!(%reason, "signaling connection lost");
                Ok(false)
            }
            SignalEvent::Reconnecting { attempt, delay } => {
                tracing::info!(attempt, ?delay, "reconnecting to signaling");
                // The client retries without limit once joined, for a call in progress; one
                // that has no media yet gives up as before.
                if run.media.is_none() && !self.had_media && attempt >= SIGNAL_ATTEMPTS {
                    return Err(EndReason::SignalingFailed(format!(
                        "gave up after {attempt} attempts"
                    )));
                }
                Ok(false)
            }
            SignalEvent::Closed { reason } => {
                run.signaling_up = false;
                if run.media.is_none() {
                    return Err(EndReason::SignalingFailed(reason));
                }
                // Media is peer to peer: the call goes on without signaling.
                tracing::warn!(%reason, "signaling closed; the call continues");
                Ok(false)
            }
        }
    }

    async fn on_call_message(
        &mut self,
        run: &mut Run,
        message: IncomingSignal,
    ) -> Result<(), EndReason> {
        let Some(peer) = run.peer.as_mut() else {
            return Ok(());
        };
        match message {
            IncomingSignal::Handshake(bytes) => {
                if run.established {
                    // A replaying server or a confused peer: never acted on, never fatal.
                    self.shared.late_handshake_messages.fetch_add(1, Relaxed);
                    tracing::debug!("ignoring a handshake message after the keys were agreed");
                    return Ok(());
                }
                let step = peer
                    .handshake
                    .handle(&bytes)
                    .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
                if let Some(reply) = step.send {
                    self.send_handshake(run, reply).await?;
                }
                if let Some(established) = step.established {
                    self.on_established(run, established)?;
                }
            }
            IncomingSignal::Offer(sdp) => {
                if peer.handshake.role() != Role::Responder {
                    // Only the initiator offers (restarts included), so offers never cross.
                    tracing::warn!("ignoring an offer: we are the offerer");
                    return Ok(());
                }
                let previous = peer.remote_sdp.replace(sdp.clone());
                // Every SDP, a restart's too, must carry the fingerprint the peer signed.
                peer.check_transport_binding()?;
                let Some(previous) = previous else {
                    // The peer said `trickle` before its offer, or it does not trickle.
                    let trickle = self.config.transport.trickle && run.peer_trickles == Some(true);
                    run.peer_trickles.get_or_insert(false);
                    let answer = if trickle {
                        self.send_signal(run, &OutgoingSignal::Trickle).await?;
                        run.transport.accept_offer_trickle(&sdp).await
                    } else {
                        run.transport.accept_offer(&sdp).await
                    }
                    .map_err(|e| EndReason::ConnectionFailed(e.to_string()))?;
                    self.apply_held_candidates(run, &sdp).await;
                    self.send_signal(run, &OutgoingSignal::Answer { sdp: &answer })
                        .await?;
                    if trickle {
                        run.local_ice.described(&answer);
                    }
                    self.send_signal(run, &OutgoingSignal::CanRestart).await?;
                    if run.established {
                        self.set_state(run, CallState::Connecting);
                    }
                    return Ok(());
                };
                // A later offer: the initiator restarting ICE. Its failures are not fatal; the
                // initiator tries again, and a path that stays lost ends the call.
                if ice_ufrag(&previous) != ice_ufrag(&sdp) {
                    self.shared.ice_restarts.fetch_add(1, Relaxed);
                    tracing::info!("the peer restarts ICE");
                }
                match run.transport.accept_offer(&sdp).await {
                    Ok(answer) => {
                        self.apply_held_candidates(run, &sdp).await;
                        if let Err(e) = self
                            .send_signal(run, &OutgoingSignal::Answer { sdp: &answer })
                            .await
                        {
                            tracing::warn!("could not answer an ICE restart: {e}");
                        }
                        if self.trickling(run) {
                            run.local_ice.described(&answer);
                        }
                    }
                    Err(e) => tracing::warn!("could not apply an ICE restart offer: {e}"),
                }
            }
            IncomingSignal::Control(_) => {
                // Two-party control frames travel on the data channel.
                tracing::debug!("ignoring a control frame relayed by the server");
            }
            IncomingSignal::Answer(sdp) => {
                if peer.handshake.role() != Role::Initiator {
                    tracing::warn!("ignoring an answer: we did not offer");
                    return Ok(());
                }
                let again = peer.remote_sdp.replace(sdp.clone()).is_some();
                peer.check_transport_binding()?;
                // No `trickle` before its answer: the peer takes complete descriptions only.
                run.peer_trickles.get_or_insert(false);
                if !run.path.on_answer(Instant::now()) {
                    tracing::debug!("ignoring the answer to a replaced ICE restart offer");
                    return Ok(());
                }
                match run.transport.accept_answer(&sdp).await {
                    Ok(()) => {
                        self.apply_held_candidates(run, &sdp).await;
                        #[cfg(feature = "insecure-test-hooks")]
                        if again && let Some(waiter) = run.restart_waiter.take() {
                            let _ = waiter.send(true);
                        }
                    }
                    Err(e) if !again => return Err(EndReason::ConnectionFailed(e.to_string())),
                    // Not fatal during a restart: the next one follows.
                    Err(e) => tracing::warn!("could not apply an ICE restart answer: {e}"),
                }
                self.offer_again_if_needed(run).await;
            }
            IncomingSignal::CanRestart => {
                if peer.handshake.role() == Role::Initiator {
                    run.path.peer_answers_restarts();
                }
            }
            IncomingSignal::Trickle => {
                // Only before its first description: it decides how that one is answered.
                if run.peer_trickles.is_none() {
                    run.peer_trickles = Some(true);
                }
            }
            IncomingSignal::Candidate(candidate) => {
                if !self.config.transport.trickle {
                    tracing::debug!("ignoring a trickled candidate: trickle ICE is off");
                    return Ok(());
                }
                match run.remote_ice.candidate(candidate) {
                    Verdict::Apply(candidate) => {
                        if let Err(e) = run.transport.add_remote_candidate(&candidate).await {
                            tracing::debug!("the peer's candidate was not added: {e}");
                        }
                    }
                    Verdict::Held => tracing::debug!("holding a candidate until its description"),
                    Verdict::Dropped(why) => tracing::debug!("dropped the peer's candidate: {why}"),
                }
            }
            IncomingSignal::EndOfCandidates(ufrag) => {
                tracing::debug!(%ufrag, "the peer's gathering is over");
            }
        }
        Ok(())
    }

    /// Whether our candidates go to the peer as they are found.
    fn trickling(&self, run: &Run) -> bool {
        self.config.transport.trickle && run.peer_trickles != Some(false)
    }

    /// The peer's description `sdp` was applied: its candidates that came early go in now.
    async fn apply_held_candidates(&self, run: &mut Run, sdp: &str) {
        let Some(ufrag) = ice_ufrag(sdp) else {
            return;
        };
        for candidate in run.remote_ice.described(ufrag) {
            if let Err(e) = run.transport.add_remote_candidate(&candidate).await {
                tracing::debug!("the peer's held candidate was not added: {e}");
            }
        }
    }

    /// One local candidate, or the end of a gathering: to the peer if it trickles. A peer that
    /// does not trickle gets our complete offer again once gathering found more than the first
    /// one held (and the path is not up yet).
    async fn on_local_candidate(&self, run: &mut Run, found: LocalCandidate) {
        if !self.config.transport.trickle {
            return;
        }
        let sending = self.trickling(run);
        match found {
            LocalCandidate::Candidate(candidate) => {
                let Some(out) = run.local_ice.candidate(&candidate) else {
                    return;
                };
                if !sending {
                    return;
                }
                let signal = OutgoingSignal::Candidate {
                    candidate: &out.candidate,
                    sdp_mid: &out.sdp_mid,
                    sdp_mline_index: 0,
                    ufrag: &out.ufrag,
                };
                // Not fatal: the candidate is in our next description too.
                if let Err(e) = self.send_signal(run, &signal).await {
                    tracing::warn!("could not send a candidate: {e}");
                }
            }
            LocalCandidate::End => {
                run.gathered = true;
                if sending && let Some(ufrag) = run.local_ice.end() {
                    let signal = OutgoingSignal::EndOfCandidates { ufrag: &ufrag };
                    if let Err(e) = self.send_signal(run, &signal).await {
                        tracing::warn!("could not send the end of candidates: {e}");
                    }
                }
                self.offer_again_if_needed(run).await;
            }
        }
    }

    /// For a peer that does not trickle: our complete offer again, once, when our first
    /// gathering is over and found candidates the first offer did not hold.
    async fn offer_again_if_needed(&self, run: &mut Run) {
        let initiator = run
            .peer
            .as_ref()
            .is_some_and(|p| p.handshake.role() == Role::Initiator);
        if !initiator
            || !self.config.transport.trickle
            || run.peer_trickles != Some(false)
            || !run.gathered
            || run.offered_again
            || run.local_ice.found_after() == 0
            || run.transport.state() == TransportState::Connected
            // Only during the set-up: a restart's offers carry every candidate anyway.
            || run.path.is_lost()
            || run.path.restarts() > 0
            || run.peer.as_ref().is_none_or(|p| p.remote_sdp.is_none())
        {
            return;
        }
        run.offered_again = true;
        tracing::info!("the peer does not trickle: offering again with every candidate");
        match run.transport.create_offer_again().await {
            Ok(offer) => {
                if let Err(e) = self
                    .send_signal(run, &OutgoingSignal::Offer { sdp: &offer })
                    .await
                {
                    tracing::warn!("could not send the complete offer: {e}");
                }
                run.local_ice.described(&offer);
            }
            Err(e) => tracing::warn!("could not make the complete offer: {e}"),
        }
    }

    /// Restarts ICE or gives up on a lost path, as [`Reconnector`] says.
    async fn drive_path(&self, run: &mut Run) -> Result<(), EndReason> {
        while let Some(action) = run.path.poll(Instant::now()) {
            match action {
                PathAction::GiveUp => return Err(EndReason::ConnectionLost(RECONNECT_GIVE_UP)),
                PathAction::Restart => {
                    tracing::info!(restart = run.path.restarts(), "path lost: restarting ICE");
                    // Not fatal: signaling may be down with the path; the next attempt or the
                    // give-up deadline follows.
                    match run.transport.create_restart_offer().await {
                        Ok(offer) => {
                            if !offer.gathered {
                                run.path.offer_partial();
                            }
                            match self
                                .send_signal(run, &OutgoingSignal::Offer { sdp: &offer.sdp })
                                .await
                            {
                                Ok(()) => {
                                    self.shared.ice_restarts.fetch_add(1, Relaxed);
                                    if self.trickling(run) {
                                        // What it gathers after this goes as candidates.
                                        run.local_ice.described(&offer.sdp);
                                    }
                                }
                                Err(e) => {
                                    run.path.offer_not_sent();
                                    tracing::warn!("could not send an ICE restart offer: {e}");
                                }
                            }
                        }
                        Err(e) => {
                            run.path.offer_not_sent();
                            tracing::warn!("could not restart ICE: {e}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_established(&mut self, run: &mut Run, established: Established) -> Result<(), EndReason> {
        let Established {
            peer_name: claimed,
            peer_identity: key,
            peer_dtls,
            safety_code,
            keys,
            ..
        } = established;
        let Some(peer) = run.peer.as_mut() else {
            return Ok(());
        };
        // The peer chose the name it signed; the server attested the one it joined with
        // (against its token, unique in the room). They must agree.
        let name = names::canonical(&claimed);
        let attested = names::canonical(&peer.attested_name);
        if name != attested {
            return Err(EndReason::PeerNotTrusted(format!(
                "the peer joined the room as {attested:?} but claims to be {name:?}"
            )));
        }
        peer.signed_dtls = Some(peer_dtls);
        peer.check_transport_binding()?;
        let trust = self
            .known_peers
            .evaluate(&name, &key, self.config.trust)
            .map_err(|e| EndReason::PeerNotTrusted(e.to_string()));
        if let Err(e) = self.known_peers.save() {
            tracing::warn!("could not save known peers: {e}");
        }
        let trust = trust?;
        if let PeerTrust::Changed {
            previous,
            pinned_name,
        } = &trust
        {
            self.emit(CallEvent::PeerIdentityChanged {
                name: name.clone(),
                pinned_name: pinned_name.clone(),
                pinned: *previous,
                presented: key,
            });
        }
        let code = safety_code.to_string();
        self.chat.set_peer(name.clone());
        run.agreed = Some((name.clone(), key));
        tracing::info!(peer = %name, safety_code = %code, "keys agreed");
        self.emit(CallEvent::SafetyCode(PeerInfo {
            mixed_script: names::is_mixed_script(&name),
            name,
            identity: key,
            safety_code: code,
            trust,
        }));
        run.control = Some(
            ControlCrypto::new(self.config.suite, &keys)
                .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?,
        );
        run.keys = Some(keys);
        run.established = true;
        self.set_state(run, CallState::Connecting);
        Ok(())
    }

    /// Says whether the peer's media decrypts: after [`UNDECRYPTABLE_AFTER`] in which frames
    /// failed authentication and none decrypted, the call is `Undecryptable`, and it is
    /// `Connected` again as soon as frames decrypt.
    fn check_decryptable(
        &self,
        run: &mut Run,
        stats: &crate::call::CallStats,
        interval_start: Instant,
        now: Instant,
    ) {
        // Audio and video alike: either kind failing with neither decrypting is interception.
        let opened = stats.frames_decrypted + stats.video_frames_decrypted;
        let decrypted = opened > run.last_decrypted;
        let failed = stats.decrypt_failures + stats.video_decrypt_failures > run.reported_failures;
        run.last_decrypted = opened;
        if run.media.is_none() {
            return;
        }
        if decrypted {
            run.failing_since = None;
            if run.state == CallState::Undecryptable {
                self.set_state(run, CallState::Connected);
            }
        } else if failed {
            let since = *run.failing_since.get_or_insert(interval_start);
            if now.duration_since(since) >= UNDECRYPTABLE_AFTER && run.state == CallState::Connected
            {
                tracing::warn!("the peer's media cannot be decrypted: keys differ");
                self.set_state(run, CallState::Undecryptable);
            }
        }
    }

    /// Starts the media threads once keys are agreed and the transport is connected.
    fn maybe_start_media(
        &mut self,
        run: &mut Run,
        frames: &mut Option<mpsc::Receiver<crate::transport::ReceivedFrame>>,
        video_streams: &mut VideoStreams,
        notices: &mpsc::UnboundedSender<MediaNotice>,
    ) -> Result<(), EndReason> {
        if run.media.is_some()
            || run.keys.is_none()
            || run.transport.state() != TransportState::Connected
        {
            return Ok(());
        }
        let audio = self.audio.take();
        let (Some(keys), Some(frames), Some((source, sink))) =
            (run.keys.take(), frames.take(), audio)
        else {
            return Ok(());
        };
        let media_err = |e: &dyn std::fmt::Display| EndReason::MediaFailed(e.to_string());
        let now = Instant::now();
        let CallKeys {
            send: send_key,
            recv: recv_key,
        } = keys;
        let video_keys = (send_key.duplicate(), recv_key.duplicate());
        let sender = MediaSender::new(self.config.suite, send_key, self.config.rotation, now)
            .map_err(|e| media_err(&e))?;
        let receiver = MediaReceiver::new(self.config.suite, recv_key, self.config.rotation)
            .map_err(|e| media_err(&e))?;
        let encoder = OpusEncoder::new(self.config.opus).map_err(|e| media_err(&e))?;
        let decoder = OpusDecoder::new(self.config.opus.frame).map_err(|e| media_err(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (packets_tx, packets_rx) = std::sync::mpsc::sync_channel(PLAYBACK_QUEUE);
        let capture = Capture {
            source,
            encoder,
            sender,
            transport: Arc::clone(&run.transport),
            runtime: tokio::runtime::Handle::current(),
            shared: Arc::clone(&self.shared),
            stop: Arc::clone(&stop),
            frame: self.config.opus.frame,
            notices: notices.clone(),
            home: Arc::clone(&self.audio),
        };
        let handover = Arc::new(AtomicBool::new(false));
        let playback = Playback {
            sink,
            playout: AudioPlayout::new(self.config.playout, decoder),
            packets: packets_rx,
            shared: Arc::clone(&self.shared),
            stop: Arc::clone(&stop),
            frame: self.config.opus.frame,
            setup_start: run.peer.as_ref().map_or(self.started, |p| p.since),
            notices: notices.clone(),
            home: Arc::clone(&self.audio),
            handover: Arc::clone(&handover),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| EndReason::MediaFailed(e.to_string()))
        };
        let mut threads = vec![
            spawn("sotto-capture", Box::new(move || capture.run()))?,
            spawn("sotto-playback", Box::new(move || playback.run()))?,
        ];
        let mut tasks = vec![tokio::spawn(media_loop::decrypt_frames(
            frames,
            receiver,
            packets_tx,
            Arc::clone(&self.shared),
        ))];
        if let Some((source, sink)) = self.video.take() {
            let video = self.start_video(
                run,
                video_keys,
                (source, sink),
                video_streams,
                (&stop, &handover),
                notices,
            )?;
            threads.extend(video.0);
            tasks.extend(video.1);
        }
        self.had_media = true;
        run.media = Some(MediaThreads {
            stop,
            handover,
            threads,
            tasks,
        });
        self.set_state(run, CallState::Connected);
        Ok(())
    }

    /// Starts the video threads and tasks: always the receiving side (the peer may send
    /// video), and the sending side when we have a source.
    fn start_video(
        &self,
        run: &Run,
        (send_key, recv_key): (
            crate::handshake::DirectionKey,
            crate::handshake::DirectionKey,
        ),
        (source, sink): video::VideoIo,
        streams: &mut VideoStreams,
        (stop, handover): (&Arc<AtomicBool>, &Arc<AtomicBool>),
        notices: &mpsc::UnboundedSender<MediaNotice>,
    ) -> Result<Workers, EndReason> {
        let media_err = |e: &dyn std::fmt::Display| EndReason::MediaFailed(e.to_string());
        let suite = self.config.suite;
        let rotation = self.config.rotation;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| EndReason::MediaFailed(e.to_string()))
        };
        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        let need_keyframe = Arc::new(tokio::sync::Notify::new());
        if let Some(frames) = streams.frames.take() {
            let receiver = MediaReceiver::for_kind(MediaKind::Video, suite, recv_key, rotation)
                .map_err(|e| media_err(&e))?;
            let decoder = self
                .config
                .video_codec
                .new_decoder()
                .map_err(|e| media_err(&e))?;
            let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(video::RENDER_QUEUE);
            tasks.push(tokio::spawn(video::open_video_frames(
                frames,
                VideoOpener::new(receiver, Arc::clone(&self.shared)),
                opened_tx,
                Arc::clone(&need_keyframe),
            )));
            tasks.push(tokio::spawn(video::request_keyframes(
                Arc::clone(&run.transport),
                Arc::clone(&need_keyframe),
                Arc::clone(&self.shared),
                KEYFRAME_REQUEST_GAP,
            )));
            let render = VideoRender {
                sink,
                decoder,
                frames: opened_rx,
                shared: Arc::clone(&self.shared),
                stop: Arc::clone(stop),
                need_keyframe,
                notices: notices.clone(),
                clocks: run.transport.peer_clocks(),
                home: Arc::clone(&self.video),
                handover: Arc::clone(handover),
            };
            threads.push(spawn("sotto-video-render", Box::new(move || render.run()))?);
        } else {
            self.video.put_sink(sink);
        }
        if let Some(source) = source {
            let settings = self.config.video;
            let (w, h) = settings.size.unwrap_or_else(|| source.size());
            let mut encoder_config = VideoEncoderConfig::new(w, h);
            if let Some(fps) = settings.fps {
                encoder_config.fps = fps;
            }
            if let Some(kbps) = settings.max_kbps {
                encoder_config.target_kbps = kbps;
            }
            let encoder = self
                .config
                .video_codec
                .new_encoder(&encoder_config)
                .map_err(|e| media_err(&e))?;
            let sender =
                MediaSender::for_kind(MediaKind::Video, suite, send_key, rotation, Instant::now())
                    .map_err(|e| media_err(&e))?;
            let control = Arc::new(VideoControl::default());
            if let Some(requests) = streams.keyframe_requests.take() {
                tasks.push(tokio::spawn(video::serve_keyframe_requests(
                    requests,
                    Arc::clone(&control),
                    Arc::clone(&self.shared),
                )));
            }
            tasks.push(tokio::spawn(video::follow_bitrate(
                run.transport.bitrate_watch(),
                Arc::clone(&control),
                settings
                    .max_kbps
                    .unwrap_or_else(|| VideoEncoderConfig::default_kbps(w, h)),
            )));
            let capture = VideoCapture {
                source,
                encoder,
                sender,
                transport: Arc::clone(&run.transport),
                runtime: tokio::runtime::Handle::current(),
                shared: Arc::clone(&self.shared),
                control,
                stop: Arc::clone(stop),
                settings,
                notices: notices.clone(),
                home: Arc::clone(&self.video),
            };
            threads.push(spawn(
                "sotto-video-capture",
                Box::new(move || capture.run()),
            )?);
        }
        Ok((threads, tasks))
    }

    async fn on_control(&mut self, run: &mut Run, frame: &[u8]) -> Option<EndReason> {
        let Some(control) = run.control.as_mut() else {
            if run.early_controls.len() < EARLY_CONTROLS {
                run.early_controls
                    .push(bytes::Bytes::copy_from_slice(frame));
            }
            return None;
        };
        let message = match control.open(frame) {
            Ok(m) => m,
            Err(ControlError::Unknown) => return None,
            Err(ControlError::MalformedChat) => {
                tracing::warn!("refused a malformed chat message");
                self.chat.refuse(Rejection::Malformed);
                self.flush_chat().await;
                return None;
            }
            Err(e) => {
                self.shared.control_failures.fetch_add(1, Relaxed);
                tracing::warn!("dropped a control message: {e}");
                return None;
            }
        };
        if !run.peer_heard {
            run.peer_heard = true;
            self.flush_outbox(run).await;
        }
        match message {
            ControlMessage::Hangup => return Some(EndReason::RemoteHangup),
            ControlMessage::Rejoined { peer_id } => {
                if let Err(reason) = self.on_peer_rejoined(run, peer_id).await {
                    return Some(reason);
                }
            }
            ControlMessage::Mute { muted } => {
                self.shared.peer_muted.store(muted, Relaxed);
                self.emit(CallEvent::PeerMuted(muted));
            }
            ControlMessage::Ping { id } => {
                self.send_control(run, &ControlMessage::Pong { id }).await;
            }
            ControlMessage::Pong { id } => {
                if let Some((sent_id, at)) = run.ping
                    && sent_id == id
                {
                    SharedStats::set_duration(&self.shared.rtt_us, at.elapsed());
                    run.ping = None;
                }
            }
            ControlMessage::Chat(wire) => {
                let ack = self.chat.receive(wire, Instant::now(), SystemTime::now());
                if let Some(ack) = ack {
                    self.send_chat(run, ControlMessage::Chat(ack)).await;
                }
                self.flush_chat().await;
            }
            // Group key messages mean nothing between two peers.
            ControlMessage::GroupKey { .. } | ControlMessage::GroupAck { .. } => {
                tracing::debug!("ignoring a group key message in a two-party call");
            }
        }
        None
    }

    /// The peer says (sealed) that it is in the room again under `peer_id`: its signals come
    /// from there and ours go there. Signals that came from there first are handled now.
    async fn on_peer_rejoined(&mut self, run: &mut Run, peer_id: String) -> Result<(), EndReason> {
        if !super::protocol::is_peer_id(&peer_id) {
            tracing::warn!("ignoring a rejoin to an id that is not a peer id");
            return Ok(());
        }
        let Some(peer) = run.peer.as_mut() else {
            return Ok(());
        };
        if peer.id == peer_id {
            return Ok(());
        }
        tracing::info!(old = %peer.id, new = %peer_id, "the peer rejoined the room");
        peer.id.clone_from(&peer_id);
        if let Some(seen) = run.rejoin_seen.take()
            && seen.peer_id == peer_id
        {
            peer.slot = seen.slot;
        }
        // Whatever the room said about the old id is history now.
        run.peer_left_at = None;
        // Restart offers or answers sent to the old id are lost.
        run.path.signaling_rejoined();
        let (early, others): (Vec<_>, Vec<_>) = std::mem::take(&mut run.stray_signals)
            .into_iter()
            .partition(|(from, _)| *from == peer_id);
        run.stray_signals = others.into();
        for (_, data) in early {
            match parse_signal(data.get()) {
                Ok(message) => self.on_call_message(run, message).await?,
                Err(e) => tracing::warn!("ignoring a bad payload from the peer: {e}"),
            }
        }
        self.drive_path(run).await
    }

    /// Test only: restarts ICE as if the path were lost (the engine's own restart machinery
    /// takes it from there); `reply` is told when the restart's answer is applied.
    #[cfg(feature = "insecure-test-hooks")]
    async fn restart_for_tests(
        &self,
        run: &mut Run,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<(), EndReason> {
        let initiator = run
            .peer
            .as_ref()
            .is_some_and(|p| p.handshake.role() == Role::Initiator);
        // A restart offer that cannot leave would only break a working path.
        let joined = run.signal.as_ref().is_some_and(SignalClient::is_joined);
        let ready = initiator && joined && run.media.is_some();
        if !ready || run.path.is_lost() || run.transport.state() != TransportState::Connected {
            let _ = reply.send(false);
            return Ok(());
        }
        let before = run.path.restarts();
        run.path
            .on_state(TransportState::Disconnected, Instant::now());
        self.drive_path(run).await?;
        if run.path.restarts() == before {
            // The peer does not answer restarts: the path was never lost.
            run.path.on_state(TransportState::Connected, Instant::now());
            let _ = reply.send(false);
        } else {
            run.restart_waiter = Some(reply);
        }
        Ok(())
    }

    /// Sends our current peer id, sealed under the control key as on the data channel, through
    /// the server to `to` (where the room says the peer is now).
    async fn relay_our_id(&self, run: &mut Run, to: &str) {
        let (Some(room), Some(control), Some(signal)) =
            (run.room.as_ref(), run.control.as_mut(), run.signal.as_ref())
        else {
            return;
        };
        let message = ControlMessage::Rejoined {
            peer_id: room.our_id.clone(),
        };
        let sealed = match control.seal(&message) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!("could not seal our new id: {e}");
                return;
            }
        };
        let frame = hex::encode(sealed.as_bytes());
        if let Err(e) = signal
            .send_to(to, &OutgoingSignal::Control { frame: &frame })
            .await
        {
            tracing::debug!("could not relay our new id: {e}");
        }
    }

    /// A sealed control frame relayed by the server (two-party control travels on the data
    /// channel): only the peer's `rejoined`, from the id it names, is acted on (its path may
    /// be down). Anything else, or what does not open, is ignored.
    async fn on_relayed_control(
        &mut self,
        run: &mut Run,
        from: &str,
        frame: &[u8],
    ) -> Result<(), EndReason> {
        let Some(control) = run.control.as_mut() else {
            return Ok(());
        };
        match control.open(frame) {
            Ok(ControlMessage::Rejoined { peer_id }) if peer_id == from => {
                self.on_peer_rejoined(run, peer_id).await
            }
            Ok(_) => {
                tracing::debug!("ignoring a control message relayed by the server");
                Ok(())
            }
            Err(e) => {
                tracing::debug!(%from, "a relayed control frame did not open: {e}");
                Ok(())
            }
        }
    }

    /// Tells the peer our new peer id after a rejoin, once the control channel takes it.
    async fn announce_rejoin(&self, run: &mut Run) {
        let Some(peer_id) = run.announce_id.clone() else {
            return;
        };
        if !run.peer_heard {
            return;
        }
        let message = ControlMessage::Rejoined { peer_id };
        if self.send_control(run, &message).await {
            run.announce_id = None;
        }
    }

    /// Frames of the peer decrypted so far, audio and video.
    fn frames_decrypted(&self) -> u64 {
        self.shared.frames_decrypted.load(Relaxed)
            + self.shared.video_frames_decrypted.load(Relaxed)
    }

    /// Whether the peer's media came since the last look (the leave or the last check).
    fn peer_media_alive(&self, run: &mut Run) -> bool {
        let now = self.frames_decrypted();
        let alive = run.media.is_some() && now > run.peer_left_frames;
        run.peer_left_frames = now;
        alive
    }

    /// Whether messages can be accepted: keys are agreed (they leave once the control channel
    /// is open).
    fn chat_ready(run: &Run) -> bool {
        run.control.is_some() && run.chat_outbox.len() < CHAT_OUTBOX
    }

    /// Sends a chat item now, or once the control channel is open. One that cannot be sent
    /// stays unacknowledged, and a message is then reported undelivered at the end.
    async fn send_chat(&self, run: &mut Run, message: ControlMessage) {
        if run.chat_outbox.is_empty() && run.peer_heard && self.send_control(run, &message).await {
            return;
        }
        if run.chat_outbox.len() < CHAT_OUTBOX {
            run.chat_outbox.push_back(message);
        } else {
            tracing::warn!("chat outbox full; an item was not sent");
        }
    }

    /// Sends what waited for the control channel.
    async fn flush_outbox(&self, run: &mut Run) {
        if !run.peer_heard {
            return;
        }
        while let Some(message) = run.chat_outbox.pop_front() {
            if !self.send_control(run, &message).await {
                run.chat_outbox.push_front(message);
                tracing::debug!("control channel not ready; chat items wait");
                break;
            }
        }
    }

    async fn send_message(&mut self, run: &mut Run, text: &str) -> Result<MessageId, MessageError> {
        if !Self::chat_ready(run) {
            return Err(MessageError::NotConnected);
        }
        let id = MessageId::random()?;
        let wire = self.chat.send(id, text, Instant::now())?;
        self.send_chat(run, ControlMessage::Chat(wire)).await;
        self.flush_chat().await;
        Ok(id)
    }

    async fn set_timer(
        &mut self,
        run: &mut Run,
        timer: DisappearingTimer,
    ) -> Result<(), MessageError> {
        if !Self::chat_ready(run) {
            return Err(MessageError::NotConnected);
        }
        let wire = self.chat.set_timer(timer);
        self.send_chat(run, ControlMessage::Chat(wire)).await;
        self.flush_chat().await;
        Ok(())
    }

    /// Shows the live messages of the history again, with the time they have left.
    async fn restore_history(&mut self) {
        let wall = SystemTime::now();
        let now = Instant::now();
        let live = {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            let Some(history) = history.as_mut() else {
                return;
            };
            match history.live(wall) {
                Ok(live) => live,
                Err(e) => {
                    tracing::warn!("could not read the message history: {e}");
                    return;
                }
            }
        };
        let now_ms = unix_ms(wall);
        for m in live {
            let expires = m
                .expires_ms
                .map(|e| now + Duration::from_millis(e.saturating_sub(now_ms)));
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(m.at_ms);
            self.chat.restore(m.id, m.from, m.text, m.ttl, expires, at);
        }
        self.flush_chat().await;
    }

    /// Reports the conversation's events, keeps the history in step, updates the counters.
    async fn flush_chat(&mut self) {
        while let Some(event) = self.chat.next_event() {
            self.persist(&event);
            // Chat events are not dropped like stats: wait (a little) for room in the queue.
            let send = self.events.send(CallEvent::Chat(event));
            if tokio::time::timeout(Duration::from_secs(1), send)
                .await
                .is_err()
            {
                tracing::warn!("event queue full; a chat event was dropped");
            }
        }
        let c = self.chat.counters();
        self.shared.messages_sent.store(c.sent, Relaxed);
        self.shared.messages_received.store(c.received, Relaxed);
        self.shared.messages_rejected.store(c.rejected, Relaxed);
        self.shared.messages_expired.store(c.expired, Relaxed);
    }

    /// Stores new messages in the history and deletes expired ones.
    fn persist(&self, event: &ChatEvent) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let Some(history) = history.as_mut() else {
            return;
        };
        let wall = SystemTime::now();
        let entry = |id,
                     from: Option<String>,
                     text: &crate::messages::MessageText,
                     ttl: DisappearingTimer| {
            let text = text.get()?;
            let at_ms = unix_ms(wall);
            Some(StoredMessage {
                id,
                from,
                text,
                ttl,
                at_ms,
                expires_ms: ttl.secs().map(|s| at_ms.saturating_add(s * 1000)),
            })
        };
        let result = match event {
            ChatEvent::Sent {
                id,
                text,
                ttl,
                restored: false,
            } => entry(*id, None, text, *ttl).map_or(Ok(()), |m| history.store(&m)),
            ChatEvent::Message(m) if !m.restored => {
                entry(m.id, Some(m.from.clone()), &m.text, m.ttl)
                    .map_or(Ok(()), |e| history.store(&e))
            }
            ChatEvent::Expired { id } => history.delete(*id),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("message history: {e}");
        }
    }

    /// Seals and sends a control message; false if the channel is not up.
    async fn send_control(&self, run: &mut Run, message: &ControlMessage) -> bool {
        let Some(control) = run.control.as_mut() else {
            return false;
        };
        let sealed = match control.seal(message) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("could not seal a control message: {e}");
                return false;
            }
        };
        run.transport.send_control(&sealed).await.is_ok()
    }

    async fn send_handshake(&self, run: &Run, message: Vec<u8>) -> Result<(), EndReason> {
        let text =
            String::from_utf8(message).map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
        let raw =
            RawValue::from_string(text).map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
        self.send_signal(run, &OutgoingSignal::Handshake { message: &raw })
            .await
    }

    async fn send_signal(&self, run: &Run, payload: &OutgoingSignal<'_>) -> Result<(), EndReason> {
        let (Some(peer), Some(signal)) = (run.peer.as_ref(), run.signal.as_ref()) else {
            return Ok(());
        };
        signal
            .send_to(&peer.id, payload)
            .await
            .map_err(|e| EndReason::SignalingFailed(e.to_string()))
    }

    /// Stops the media threads, tells the peer (if we end it), closes everything. Media stops
    /// first, so nothing is played after the hang-up.
    async fn shutdown(&mut self, run: &mut Run, reason: &EndReason) {
        if let Some(media) = run.media.take() {
            stop_media(media).await;
        }
        if *reason == EndReason::LocalHangup
            && self.send_control(run, &ControlMessage::Hangup).await
        {
            tokio::time::sleep(HANGUP_LINGER).await;
        }
        if let Err(e) = run.transport.close().await {
            tracing::debug!("closing the peer connection: {e}");
        }
        if let Some(signal) = run.signal.take() {
            signal.close().await;
        }
    }
}

/// How long a two-party peer connection stays open after the call moved to the SFU, so the
/// peer's side sees the move coming through signaling rather than a failed connection.
const PEER_CONNECTION_LINGER: Duration = Duration::from_secs(3);

/// Stops media threads and tasks and waits (bounded) for the threads to end.
pub(crate) async fn stop_media(media: MediaThreads) {
    media.stop.store(true, Relaxed);
    for task in &media.tasks {
        task.abort();
    }
    let threads = media.threads;
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        tracing::warn!("a media thread did not stop in time");
    }
}

/// The ICE servers to use once the room is joined: the server's STUN/TURN servers, unless
/// the caller chose its own (then `None`: nothing to change), or the union for relay-only.
pub(super) fn ice_servers_to_use(
    transport: &TransportConfig,
    offered: Vec<IceServerInfo>,
) -> Result<Option<Vec<IceServer>>, EndReason> {
    let own = &transport.ice_servers;
    let servers: Vec<IceServer> = if own.is_empty() {
        offered
            .into_iter()
            .map(|s| IceServer {
                urls: s.urls,
                username: s.username,
                credential: s.credential,
            })
            .collect()
    } else {
        own.clone()
    };
    let relay_only = transport.relay_only;
    if relay_only && !has_turn(&servers) {
        return Err(EndReason::ConnectionFailed(
            "relay-only needs a TURN server: none was given (--ice-server turn:...) \
             and the signaling server offers none"
                .into(),
        ));
    }
    if !servers.is_empty() && (own.is_empty() || relay_only) {
        tracing::info!(count = servers.len(), relay_only, "ICE servers");
        Ok(Some(servers))
    } else {
        Ok(None)
    }
}

/// How far a call that never connected got, for [`EndReason::NeverConnected`].
fn setup_stage(state: CallState) -> &'static str {
    match state {
        CallState::Joining => "the room was never joined",
        CallState::WaitingForPeer => "no peer joined",
        CallState::Handshaking => "the key agreement did not finish",
        _ => "the WebRTC connection never came up (check the network, STUN and TURN)",
    }
}

/// Whether `info` has the name the server attested for `peer` (names are unique in a room,
/// so this is the peer back under a new id, or an impostor the control channel tells apart).
fn same_name(info: &SignalPeer, peer: &Peer) -> bool {
    names::canonical(&info.name) == names::canonical(&peer.attested_name)
}
