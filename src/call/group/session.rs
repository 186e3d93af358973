//! The group call task: signaling, one authenticated handshake per member, key bundles over
//! each pair's sealed channel, the SFU connection and the media threads' lifecycle. The rules
//! live in the Sans-I/O pieces ([`GroupKeys`], [`Handshake`], [`ControlCrypto`]); this is the
//! I/O edge that drives them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use zeroize::{Zeroize, Zeroizing};

use crate::group::{GroupEvent, GroupKeys, GroupOutput, JoinKind, Slot};
use crate::handshake::{
    DtlsFingerprint, Established, Handshake, IdentityKey, PeerTrust, VerifyError, group_safety_code,
};
use crate::media::{OpusEncoder, SAMPLE_RATE};
use crate::names;
use crate::signal::IceServerInfo;
use crate::signal::{PeerInfo as SignalPeer, SignalClient, SignalConfig, SignalEvent};
use crate::transport::{SfuTransport, SfuTransportConfig, TransportState};

use super::super::control::ControlCrypto;
use super::super::events::{CallEvent, CallState, EndReason, PeerInfo};
use super::super::media_loop::MediaNotice;
use super::super::protocol::{ControlMessage, IncomingSignal, OutgoingSignal, parse_signal};
use super::super::session::{
    HandoverPeer, MediaThreads, Mode, Outcome, RoomHandover, RoomInfo, SIGNAL_ATTEMPTS, Session,
    ice_servers_to_use, stop_media, verify_key, we_initiate,
};
use super::super::stats::{ParticipantStats, RateMeter, SharedStats};
use super::super::{Command, stats::GroupFigures};
use super::media::{GroupCapture, GroupPlayback, PLAYBACK_QUEUE, PlaybackInput, Speaking};
use super::reconnect::{Action, GIVE_UP as RECONNECT_GIVE_UP, SfuReconnect};
use super::video::{
    GroupVideoCapture, GroupVideoRender, VIDEO_SLOTS, VideoCounts, VideoNames, open_video_frames,
};
use crate::media::video::VideoEncoderConfig;

/// The SFU's reserved peer id on the signaling server.
const SFU_PEER: &str = "sfu";

/// Speaker slots we ask the SFU for.
const AUDIO_SLOTS: usize = 3;

/// How recently a member must have been heard to count as speaking.
const SPEAKING_WINDOW: Duration = Duration::from_millis(300);

/// How often speaking changes are looked for.
const SPEAKING_TICK: Duration = Duration::from_millis(100);

/// Control frames kept per member until its keys are agreed.
const EARLY_CONTROLS: usize = 32;

/// Members that left whose last figures the stats keep.
const DEPARTED: usize = 64;

/// How long a hang-up gets to leave before signaling closes.
const HANGUP_LINGER: Duration = Duration::from_millis(150);

/// One other member of the room, from the server's word to an authenticated participant.
struct Member {
    id: String,
    /// The name the server attested (its join name, unique in the room).
    attested_name: String,
    slot: Slot,
    /// It joined as a group member (`--group`): it never goes back to a two-party call.
    group_member: bool,
    /// Whether it came after us (it gets our ratcheted key) or was there first.
    join: JoinKind,
    /// Until its keys are agreed.
    handshake: Option<Handshake>,
    /// Our sealed channel with it, once its keys are agreed and it is trusted.
    control: Option<ControlCrypto>,
    /// Who it proved to be, once trusted.
    info: Option<PeerInfo>,
    /// It failed the trust policy: ignored from then on.
    refused: bool,
    speaking: bool,
    /// Sealed frames that came before its keys (the pair's other side finished first).
    early: Vec<Vec<u8>>,
}

impl Member {
    fn name(&self) -> String {
        self.info
            .as_ref()
            .map_or_else(|| names::canonical(&self.attested_name), |i| i.name.clone())
    }
}

/// The media threads and tasks once running.
struct Media {
    threads: MediaThreads,
    playback: std::sync::mpsc::SyncSender<PlaybackInput>,
}

/// Mutable state of one group call.
struct Run {
    signal: Option<SignalClient>,
    signaling_up: bool,
    transport: Option<Arc<SfuTransport>>,
    frames: Option<mpsc::Receiver<crate::transport::SlotFrame>>,
    video_frames: Option<mpsc::Receiver<crate::transport::SlotVideoFrame>>,
    keyframe_requests: Option<mpsc::Receiver<()>>,
    /// We publish video (a source was given).
    sends_video: bool,
    /// Who each slot is, for the video render thread.
    video_names: VideoNames,
    /// Per-member video counts.
    video_counts: Arc<VideoCounts>,
    /// Our DTLS certificate's fingerprint (the pair handshakes sign it; in a group the DTLS
    /// peer is the SFU, so it binds nothing between members).
    dtls: Option<DtlsFingerprint>,
    keys: Option<Arc<Mutex<GroupKeys>>>,
    members: HashMap<String, Member>,
    media: Option<Media>,
    state: CallState,
    code: Option<String>,
    speaking: Arc<Speaking>,
    sfu_connected: bool,
    /// Which SFU connection is the current one: states of older ones are stale.
    sfu_gen: u64,
    /// When to make a new connection to the SFU after the path was lost.
    reconnect: SfuReconnect,
    /// First audio was reported (a new SFU connection restarts the media threads).
    first_audio: bool,
    /// The room as the server described it.
    room: Option<RoomInfo>,
    /// Set when the call goes back to a two-party call with this member.
    back: Option<HandoverPeer>,
    /// The last figures of members that left, newest last (at most [`DEPARTED`]).
    departed: Vec<ParticipantStats>,
    shared: Arc<SharedStats>,
}

impl Run {
    fn member_by_slot(&mut self, slot: Slot) -> Option<&mut Member> {
        self.members.values_mut().find(|m| m.slot == slot)
    }
}

/// How the group stretch of a call ended.
enum Exit {
    End(EndReason),
    /// One other member is left: back to a two-party call with it.
    Back(HandoverPeer),
}

/// Runs the group stretch of a call: to its end, or (a call that was not started as a group
/// call) back to a two-party call when one other member is left.
pub(crate) async fn run(session: &mut Session, handover: Option<RoomHandover>) -> Outcome {
    session.shared.group_mode.store(true, Relaxed);
    let mut run = Run {
        signal: None,
        signaling_up: true,
        transport: None,
        frames: None,
        video_frames: None,
        keyframe_requests: None,
        sends_video: false,
        video_names: VideoNames::default(),
        video_counts: Arc::default(),
        dtls: None,
        keys: None,
        members: HashMap::new(),
        media: None,
        state: CallState::Joining,
        code: None,
        speaking: Arc::default(),
        sfu_connected: false,
        sfu_gen: 0,
        reconnect: SfuReconnect::default(),
        first_audio: false,
        room: None,
        back: None,
        departed: Vec::new(),
        shared: Arc::clone(&session.shared),
    };
    // Our video source moves to the group's home, where each capture thread finds it (a
    // two-party stretch's capture thread put it back in the two-party home).
    if let Some(source) = session.video.take_source() {
        session.group_video.put_source(source);
    }
    run.sends_video = session.group_video.has_source();
    let (exit, events) = run_inner(session, &mut run, handover).await;
    match exit {
        Exit::End(reason) => {
            shutdown(session, &mut run, &reason).await;
            Outcome::Ended(reason)
        }
        Exit::Back(peer) => match hand_back(session, &mut run, peer, events).await {
            Some(handover) => Outcome::Switch(Mode::TwoParty(Some(handover))),
            None => {
                let reason = EndReason::SignalingFailed("lost while leaving the SFU".into());
                shutdown(session, &mut run, &reason).await;
                Outcome::Ended(reason)
            }
        },
    }
}

/// Leaves the SFU (the audio and video I/O go back home) and hands signaling to the
/// two-party call.
async fn hand_back(
    session: &Session,
    run: &mut Run,
    peer: HandoverPeer,
    events: Option<mpsc::Receiver<SignalEvent>>,
) -> Option<RoomHandover> {
    if let Some(media) = run.media.take() {
        media.threads.handover.store(true, Relaxed);
        stop_media(media.threads).await;
    }
    let _ = send_signal(run, SFU_PEER, &json!({"kind": "sfu_leave"})).await;
    if let Some(transport) = run.transport.take()
        && let Err(e) = transport.close().await
    {
        tracing::debug!("closing the SFU connection: {e}");
    }
    if let Ok(mut g) = session.shared.group.lock() {
        *g = GroupFigures::default();
    }
    // Our video source goes back to the two-party side. The members' sinks stay until the
    // call ends: a later group stretch goes on writing to them.
    if let Some(source) = session.group_video.take_source() {
        session.video.put_source(source);
    }
    Some(RoomHandover {
        signal: run.signal.take()?,
        events: events?,
        room: run.room.clone()?,
        peers: vec![peer],
    })
}

/// Pins the key `name` proved in this call as verified, and says so.
fn verify_member(
    session: &mut Session,
    run: &mut Run,
    name: &str,
) -> Result<PeerTrust, VerifyError> {
    let info = run
        .members
        .values_mut()
        .filter_map(|m| m.info.as_mut())
        .find(|i| i.name == name)
        .ok_or_else(|| VerifyError::NotInCall(name.to_owned()))?;
    let trust = verify_key(session, name, &info.identity)?;
    info.trust = trust.clone();
    emit(
        session,
        CallEvent::TrustChanged {
            name: name.to_owned(),
            trust: trust.clone(),
        },
    );
    Ok(trust)
}

fn emit(session: &Session, event: CallEvent) {
    if session.events.try_send(event).is_err() {
        tracing::debug!("event queue full; event dropped");
    }
}

fn set_state(session: &Session, run: &mut Run, state: CallState) {
    if run.state != state {
        run.state = state;
        tracing::info!(?state, "call state");
        emit(session, CallEvent::State(state));
    }
}

async fn run_inner(
    session: &mut Session,
    run: &mut Run,
    handover: Option<RoomHandover>,
) -> (Exit, Option<mpsc::Receiver<SignalEvent>>) {
    let (state_tx, mut transport_state) = mpsc::unbounded_channel::<(u64, TransportState)>();
    let mut signal_events = match handover {
        Some(h) => {
            run.signal = Some(h.signal);
            if let Err(reason) = enter(session, run, h.room, &state_tx).await {
                return (Exit::End(reason), Some(h.events));
            }
            for peer in h.peers {
                if let Err(reason) =
                    add_member(session, run, peer.info, peer.join, peer.initiate).await
                {
                    return (Exit::End(reason), Some(h.events));
                }
            }
            set_state(session, run, CallState::Handshaking);
            h.events
        }
        None => {
            emit(session, CallEvent::State(CallState::Joining));
            let mut signal_config = SignalConfig::new(
                session.config.server_url.clone(),
                session.config.room.clone(),
                session.config.name.clone(),
            );
            signal_config.fallback_urls = session.config.fallback_servers.clone();
            signal_config.token = session.config.token.clone();
            // Always in the group: the others meet us on the SFU even in a room of two.
            signal_config.group = session.config.group;
            signal_config.ca_cert = session.config.ca_cert.clone();
            signal_config.max_attempts = Some(SIGNAL_ATTEMPTS);
            signal_config.retry_forever_once_joined = true;
            let (signal, events) = SignalClient::connect(signal_config);
            run.signal = Some(signal);
            events
        }
    };
    let exit = events_loop(
        session,
        run,
        &mut signal_events,
        state_tx,
        &mut transport_state,
    )
    .await;
    (exit, Some(signal_events))
}

async fn events_loop(
    session: &mut Session,
    run: &mut Run,
    signal_events: &mut mpsc::Receiver<SignalEvent>,
    state_tx: mpsc::UnboundedSender<(u64, TransportState)>,
    transport_state: &mut mpsc::UnboundedReceiver<(u64, TransportState)>,
) -> Exit {
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let mut stats_tick = tokio::time::interval(session.config.stats_interval);
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut speaking_tick = tokio::time::interval(SPEAKING_TICK);
    speaking_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rates = RateMeter::default();
    let mut last_tick = Instant::now();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let setup_deadline = tokio::time::Instant::now() + session.config.setup_timeout;

    loop {
        let keys_deadline = run
            .keys
            .as_ref()
            .and_then(|k| k.lock().ok().and_then(|k| k.poll_timeout()));
        let reconnect_deadline = run.reconnect.deadline();
        tokio::select! {
            event = signal_events.recv(), if run.signaling_up => {
                let Some(event) = event else {
                    run.signaling_up = false;
                    if run.media.is_none() {
                        return Exit::End(EndReason::SignalingFailed("signaling client stopped".into()));
                    }
                    continue;
                };
                if let Err(reason) = on_signal(session, run, event, &state_tx).await {
                    return Exit::End(reason);
                }
                if let Some(peer) = run.back.take() {
                    return Exit::Back(peer);
                }
            }
            command = session.commands.recv() => match command {
                Some(Command::HangUp) | None => {
                    return Exit::End(if run.media.is_some() || session.had_media {
                        EndReason::LocalHangup
                    } else {
                        EndReason::NeverConnected(setup_stage(run))
                    });
                }
                Some(Command::Mute(muted)) => {
                    session.shared.muted.store(muted, Relaxed);
                    broadcast(run, &ControlMessage::Mute { muted }).await;
                }
                Some(Command::SendMessage(_, reply)) => {
                    let _ = reply.send(Err(crate::messages::MessageError::NotInGroupCalls));
                }
                Some(Command::SetTimer(_, reply)) => {
                    let _ = reply.send(Err(crate::messages::MessageError::NotInGroupCalls));
                }
                Some(Command::Verify(name, reply)) => {
                    let _ = reply.send(verify_member(session, run, &name));
                }
                #[cfg(feature = "insecure-test-hooks")]
                Some(Command::RestartIce(reply)) => {
                    let _ = reply.send(false);
                }
            },
            Some((generation, state)) = transport_state.recv() => {
                if generation != run.sfu_gen {
                    continue; // a connection already replaced
                }
                match state {
                    TransportState::Connected => {
                        run.sfu_connected = true;
                        if let Some(outage) = run.reconnect.connected(Instant::now()) {
                            tracing::info!(?outage, "the path to the SFU is back");
                            session.shared.sfu_reconnects.fetch_add(1, Relaxed);
                        }
                        if run.media.is_none()
                            && let Err(reason) = start_media(session, run, &notices_tx)
                        {
                            return Exit::End(reason);
                        }
                        update_state(session, run);
                    }
                    TransportState::Disconnected if session.had_media => {
                        run.reconnect.disconnected(Instant::now());
                        set_state(session, run, CallState::Reconnecting);
                    }
                    TransportState::Failed | TransportState::Closed if session.had_media => {
                        run.reconnect.failed(Instant::now());
                        set_state(session, run, CallState::Reconnecting);
                    }
                    TransportState::Failed | TransportState::Closed => {
                        return Exit::End(EndReason::ConnectionFailed(
                            "the connection to the SFU failed".into(),
                        ));
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(reconnect_deadline.map_or(far, tokio::time::Instant::from_std)),
                if reconnect_deadline.is_some() => {
                match run.reconnect.poll(Instant::now()) {
                    Some(Action::Reconnect) => reconnect_sfu(session, run, &state_tx).await,
                    Some(Action::GiveUp) => {
                        return Exit::End(EndReason::ConnectionFailed(format!(
                            "the path to the SFU did not come back within {} s",
                            RECONNECT_GIVE_UP.as_secs()
                        )));
                    }
                    None => {}
                }
            }
            _ = tokio::time::sleep_until(keys_deadline.map_or(far, tokio::time::Instant::from_std)),
                if keys_deadline.is_some() => {
                if let Some(keys) = &run.keys
                    && let Ok(mut k) = keys.lock()
                    && let Err(e) = k.handle_timeout(Instant::now())
                {
                    tracing::warn!("group keys: {e}");
                }
                pump(run).await;
            }
            Some(notice) = notices.recv() => match notice {
                MediaNotice::FirstAudio(_) if run.first_audio => {}
                MediaNotice::FirstAudio(setup) => {
                    run.first_audio = true;
                    let setup_ms = setup.as_secs_f64() * 1000.0;
                    tracing::info!(setup_ms, "first audio played");
                    emit(session, CallEvent::FirstAudio { setup_ms });
                }
                MediaNotice::VideoSize(..) => {}
                MediaNotice::ParticipantVideoSize { name, width, height } => {
                    tracing::info!(member = %name, width, height, "member's video size");
                    emit(session, CallEvent::ParticipantVideoSize { name, width, height });
                }
                MediaNotice::Failed(e) => return Exit::End(EndReason::MediaFailed(e)),
            },
            _ = speaking_tick.tick() => speaking_changes(session, run),
            _ = stats_tick.tick() => {
                let now = Instant::now();
                publish_figures(session, run);
                let mut stats = session.shared.snapshot();
                rates.update(&session.shared, now - last_tick, &mut stats);
                last_tick = now;
                if run.media.is_some() {
                    emit(session, CallEvent::Stats(stats));
                }
            }
            _ = tokio::time::sleep_until(setup_deadline), if !run.sfu_connected && !session.had_media => {
                return Exit::End(EndReason::Timeout("the connection to the SFU"));
            }
        }
    }
}

fn setup_stage(run: &Run) -> &'static str {
    if run.keys.is_none() {
        "the room was never joined"
    } else if !run.sfu_connected {
        "the connection to the SFU never came up"
    } else {
        "no member's keys were agreed"
    }
}

/// Connected once media flows and at least one member is trusted; waiting otherwise.
fn update_state(session: &Session, run: &mut Run) {
    if run.media.is_none() || matches!(run.state, CallState::Ended) {
        return;
    }
    let anyone = run.members.values().any(|m| m.control.is_some());
    let pending = run
        .members
        .values()
        .any(|m| m.handshake.is_some() && !m.refused);
    let state = if anyone {
        CallState::Connected
    } else if pending {
        CallState::Handshaking
    } else {
        CallState::WaitingForPeer
    };
    set_state(session, run, state);
}

async fn on_signal(
    session: &mut Session,
    run: &mut Run,
    event: SignalEvent,
    state_tx: &mpsc::UnboundedSender<(u64, TransportState)>,
) -> Result<(), EndReason> {
    match event {
        SignalEvent::Joined {
            peer_id,
            slot,
            peers,
            ice_servers,
            sfu,
        } => {
            tracing::info!(%peer_id, others = peers.len(), "joined the room");
            if run.keys.is_some() {
                // A rejoin after a reconnect, under a new id: the others saw us leave (and
                // rekeyed without us) and now see a new member. We come in again as one.
                tracing::info!("back in the room under a new id: entering the group call again");
                leave_group(session, run).await;
            }
            let room = RoomInfo {
                our_id: peer_id,
                slot,
                ice_servers,
                sfu,
            };
            enter(session, run, room, state_tx).await?;
            for peer in peers {
                // Members that were there first: we start the handshake.
                add_member(session, run, peer, JoinKind::AlreadyPresent, true).await?;
            }
            set_state(
                session,
                run,
                if run.members.is_empty() {
                    CallState::WaitingForPeer
                } else {
                    CallState::Handshaking
                },
            );
        }
        SignalEvent::PeerJoined(info) => {
            if run.keys.is_some() {
                add_member(session, run, info, JoinKind::NewJoiner, false).await?;
                update_state(session, run);
            }
        }
        // The server's SFU went away (an attached one that died): join again, wherever
        // the server places the room now.
        SignalEvent::PeerLeft { peer_id } if peer_id == SFU_PEER => {
            if session.had_media {
                run.reconnect.failed(Instant::now());
                set_state(session, run, CallState::Reconnecting);
            } else if run.keys.is_some() {
                // Gone before our media came up (an SFU node died during the set-up): offer
                // again at once, to wherever the server places the room now.
                run.reconnect.failed(Instant::now());
            }
        }
        SignalEvent::PeerLeft { peer_id } => {
            member_left(session, run, &peer_id).await;
        }
        SignalEvent::Message { from, data } if from == SFU_PEER => {
            on_sfu_message(run, data.get()).await?;
        }
        SignalEvent::Message { from, data } => {
            if !run.members.contains_key(&from) {
                tracing::debug!(%from, "ignoring a message from a peer not in this call");
                return Ok(());
            }
            match parse_signal(data.get()) {
                Ok(message) => on_member_message(session, run, &from, message).await?,
                Err(e) => tracing::warn!("ignoring a bad payload from a member: {e}"),
            }
        }
        SignalEvent::ServerError { code, message } => {
            use crate::signal::ErrorCode;
            if !run.sfu_connected
                && !run.reconnect.is_lost()
                && matches!(code, ErrorCode::NoSfu | ErrorCode::SfuRefused)
            {
                return Err(EndReason::ConnectionFailed(format!(
                    "the SFU refused us: {}: {message}",
                    code.as_str()
                )));
            }
            tracing::warn!(?code, %message, "signaling server refused a message");
        }
        SignalEvent::Disconnected { reason } => {
            tracing::warn!(%reason, "signaling connection lost");
        }
        SignalEvent::Reconnecting { attempt, delay } => {
            tracing::info!(attempt, ?delay, "reconnecting to signaling");
            // The client retries without limit once joined, for a call in progress; one that
            // has no media yet gives up as before.
            if run.media.is_none() && !session.had_media && attempt >= SIGNAL_ATTEMPTS {
                return Err(EndReason::SignalingFailed(format!(
                    "gave up after {attempt} attempts"
                )));
            }
        }
        SignalEvent::Closed { reason } => {
            run.signaling_up = false;
            if run.media.is_none() {
                return Err(EndReason::SignalingFailed(reason));
            }
            // Media goes on through the SFU; membership changes can no longer be keyed.
            tracing::warn!(%reason, "signaling closed; the call continues without rekeying");
        }
    }
    Ok(())
}

/// Gives up our place in the group after our signaling rejoined under a new id (the server
/// took the old one out of the room and the SFU): media, the SFU connection, our keys and the
/// members go; [`enter`] and new handshakes follow, as for a joiner.
async fn leave_group(session: &Session, run: &mut Run) {
    if let Some(media) = run.media.take() {
        // The audio I/O goes home unfinished: the next media threads take it up.
        media.threads.handover.store(true, Relaxed);
        stop_media(media.threads).await;
    }
    run.sfu_connected = false;
    if let Some(old) = run.transport.take() {
        tokio::spawn(async move {
            if let Err(e) = old.close().await {
                tracing::debug!("closing the old SFU connection: {e}");
            }
        });
    }
    // States of the old connection are stale from now on.
    run.sfu_gen += 1;
    run.reconnect = SfuReconnect::default();
    run.keys = None;
    for (_, member) in run.members.drain() {
        run.video_counts.clear(member.slot);
        run.speaking.clear(member.slot);
        if let Ok(mut names) = run.video_names.lock() {
            names.remove(&member.slot);
        }
        if member.control.is_some() {
            emit(
                session,
                CallEvent::ParticipantLeft {
                    name: member.name(),
                },
            );
        }
    }
}

/// Takes our place in the group: the SFU connection (its offer goes out now) and our keys.
async fn enter(
    session: &Session,
    run: &mut Run,
    room: RoomInfo,
    state_tx: &mpsc::UnboundedSender<(u64, TransportState)>,
) -> Result<(), EndReason> {
    run.room = Some(room.clone());
    let RoomInfo {
        slot,
        ice_servers,
        sfu,
        ..
    } = room;
    if !sfu {
        return Err(EndReason::ConnectionFailed(
            "this signaling server has no SFU; group calls need `sotto-signaling --sfu`".into(),
        ));
    }
    let slot = slot
        .and_then(|s| Slot::new(s).ok())
        .ok_or_else(|| EndReason::SignalingFailed("the server gave us no slot".into()))?;
    let offer = connect_sfu(session, run, ice_servers, state_tx).await?;
    let keys = GroupKeys::new(session.config.suite, slot)
        .map_err(|e| EndReason::ConnectionFailed(e.to_string()))?;
    let keys = Arc::new(Mutex::new(keys));
    #[cfg(feature = "insecure-test-hooks")]
    if let Some(tap) = &session.config.insecure_group_keys_for_tests {
        tap.put(&keys);
    }
    run.keys = Some(keys);
    send_signal(run, SFU_PEER, &json!({"kind": "sfu_offer", "sdp": offer})).await?;
    Ok(())
}

/// Makes a new connection to the SFU (the current one, `run.sfu_gen`) and returns its offer.
async fn connect_sfu(
    session: &Session,
    run: &mut Run,
    ice_servers: Vec<IceServerInfo>,
    state_tx: &mpsc::UnboundedSender<(u64, TransportState)>,
) -> Result<String, EndReason> {
    let mut config = SfuTransportConfig {
        udp_addrs: session.config.transport.udp_addrs.clone(),
        ice_servers: session.config.transport.ice_servers.clone(),
        relay_only: session.config.transport.relay_only,
        audio_slots: AUDIO_SLOTS,
        video_slots: VIDEO_SLOTS,
        send_video: run.sends_video,
        ..SfuTransportConfig::default()
    };
    if let Some(servers) = ice_servers_to_use(&session.config.transport, ice_servers)? {
        config.ice_servers = servers;
    }
    let mut transport = SfuTransport::new(config)
        .await
        .map_err(|e| EndReason::ConnectionFailed(e.to_string()))?;
    run.frames = transport.take_frames();
    run.video_frames = transport.take_video_frames();
    run.keyframe_requests = transport.take_keyframe_requests();
    let offer = transport
        .create_offer()
        .await
        .map_err(|e| EndReason::ConnectionFailed(e.to_string()))?;
    run.dtls = DtlsFingerprint::all_in_sdp(&offer)
        .ok()
        .and_then(|f| f.into_iter().next());
    let transport = Arc::new(transport);
    watch_state(&transport, run.sfu_gen, state_tx.clone());
    run.transport = Some(transport);
    Ok(offer)
}

/// The path to the SFU was lost: stops the media (the audio I/O goes home), leaves the SFU and
/// joins it again over a new connection. The keys stay: the SFU never holds any, and the
/// members are the same. A step that fails is tried again at the next attempt.
async fn reconnect_sfu(
    session: &Session,
    run: &mut Run,
    state_tx: &mpsc::UnboundedSender<(u64, TransportState)>,
) {
    tracing::info!("reconnecting to the SFU");
    if let Some(media) = run.media.take() {
        // The audio I/O goes home unfinished: the next media threads take it up.
        media.threads.handover.store(true, Relaxed);
        stop_media(media.threads).await;
    }
    run.sfu_connected = false;
    let _ = send_signal(run, SFU_PEER, &json!({"kind": "sfu_leave"})).await;
    if let Some(old) = run.transport.take() {
        tokio::spawn(async move {
            if let Err(e) = old.close().await {
                tracing::debug!("closing the old SFU connection: {e}");
            }
        });
    }
    run.sfu_gen += 1;
    let ice_servers = run
        .room
        .as_ref()
        .map(|r| r.ice_servers.clone())
        .unwrap_or_default();
    let offer = match connect_sfu(session, run, ice_servers, state_tx).await {
        Ok(offer) => offer,
        Err(e) => {
            tracing::warn!("a new connection to the SFU: {e}");
            return;
        }
    };
    if let Err(e) = send_signal(run, SFU_PEER, &json!({"kind": "sfu_offer", "sdp": offer})).await {
        tracing::warn!("offering to the SFU again: {e}");
    }
}

/// Forwards the SFU connection's state changes to the call task, tagged with its generation.
fn watch_state(
    transport: &Arc<SfuTransport>,
    generation: u64,
    tx: mpsc::UnboundedSender<(u64, TransportState)>,
) {
    let transport = Arc::clone(transport);
    tokio::spawn(async move {
        let mut watch = transport.state_watch();
        loop {
            let state = *watch.borrow_and_update();
            if tx.send((generation, state)).is_err() || state == TransportState::Closed {
                return;
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    });
}

async fn on_sfu_message(run: &mut Run, data: &str) -> Result<(), EndReason> {
    #[derive(serde::Deserialize)]
    struct Answer {
        kind: String,
        #[serde(default)]
        sdp: Option<String>,
    }
    let answer: Answer = match serde_json::from_str(data) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("ignoring a bad message from the SFU: {e}");
            return Ok(());
        }
    };
    match (answer.kind.as_str(), answer.sdp, &run.transport) {
        ("sfu_answer", Some(sdp), Some(transport)) if !run.sfu_connected => {
            match transport.accept_answer(&sdp).await {
                Ok(()) => Ok(()),
                // An answer to an earlier offer: the next attempt sorts it out.
                Err(e) if run.reconnect.is_lost() => {
                    tracing::warn!("the SFU's answer while reconnecting: {e}");
                    Ok(())
                }
                Err(e) => Err(EndReason::ConnectionFailed(format!(
                    "the SFU's answer: {e}"
                ))),
            }
        }
        (kind, ..) => {
            tracing::debug!(kind, "ignoring a message from the SFU");
            Ok(())
        }
    }
}

async fn add_member(
    session: &Session,
    run: &mut Run,
    peer: crate::signal::PeerInfo,
    join: JoinKind,
    initiate: bool,
) -> Result<(), EndReason> {
    let Some(slot) = peer.slot.and_then(|s| Slot::new(s).ok()) else {
        tracing::warn!(peer = %peer.peer_id, "a member without a slot: not in the group call");
        return Ok(());
    };
    if run.members.values().any(|m| m.slot == slot) {
        tracing::warn!(peer = %peer.peer_id, slot = slot.get(), "a second member in one slot");
        return Ok(());
    }
    let dtls = run
        .dtls
        .clone()
        .unwrap_or(DtlsFingerprint::from_sha256([0; 32]));
    let (handshake, hello) = if initiate {
        let (h, hello) = Handshake::initiator(
            Arc::clone(&session.identity),
            &session.config.room,
            &session.config.name,
            &dtls,
        )
        .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
        (h, Some(hello))
    } else {
        let h = Handshake::responder(
            Arc::clone(&session.identity),
            &session.config.room,
            &session.config.name,
            &dtls,
        )
        .map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
        (h, None)
    };
    let id = peer.peer_id.clone();
    run.members.insert(
        id.clone(),
        Member {
            id: id.clone(),
            attested_name: peer.name,
            slot,
            group_member: peer.group,
            join,
            handshake: Some(handshake),
            control: None,
            info: None,
            refused: false,
            speaking: false,
            early: Vec::new(),
        },
    );
    if let Some(hello) = hello {
        send_handshake(run, &id, hello).await?;
    }
    Ok(())
}

async fn on_member_message(
    session: &mut Session,
    run: &mut Run,
    from: &str,
    message: IncomingSignal,
) -> Result<(), EndReason> {
    let Some(member) = run.members.get_mut(from) else {
        return Ok(());
    };
    if member.refused {
        return Ok(());
    }
    match message {
        IncomingSignal::Handshake(bytes) => {
            let Some(handshake) = member.handshake.as_mut() else {
                session.shared.late_handshake_messages.fetch_add(1, Relaxed);
                return Ok(());
            };
            // One member's failed handshake ends its part, not the call.
            let step = match handshake.handle(&bytes) {
                Ok(step) => step,
                Err(e) => {
                    refuse(session, run, from, format!("key agreement failed: {e}"));
                    return Ok(());
                }
            };
            if let Some(reply) = step.send {
                send_handshake(run, from, reply).await?;
            }
            if let Some(established) = step.established {
                on_established(session, run, from, established).await;
            }
        }
        IncomingSignal::Control(frame) => {
            if member.control.is_none() {
                if member.early.len() < EARLY_CONTROLS {
                    member.early.push(frame);
                }
                return Ok(());
            }
            on_control(session, run, from, &frame).await;
        }
        IncomingSignal::Offer(_)
        | IncomingSignal::Answer(_)
        | IncomingSignal::CanRestart
        | IncomingSignal::Trickle
        | IncomingSignal::Candidate(_)
        | IncomingSignal::EndOfCandidates(_) => {
            tracing::debug!(%from, "ignoring SDP or ICE from a member: group media goes through the SFU");
        }
    }
    Ok(())
}

fn refuse(session: &Session, run: &mut Run, id: &str, reason: String) {
    let Some(member) = run.members.get_mut(id) else {
        return;
    };
    member.refused = true;
    member.handshake = None;
    let name = member.name();
    tracing::warn!(member = %name, %reason, "member refused");
    emit(session, CallEvent::ParticipantRefused { name, reason });
    update_state(session, run);
}

async fn on_established(session: &mut Session, run: &mut Run, id: &str, est: Established) {
    let Established {
        peer_name: claimed,
        peer_identity: key,
        safety_code,
        keys: pair_keys,
        ..
    } = est;
    let Some(member) = run.members.get_mut(id) else {
        return;
    };
    member.handshake = None;
    let name = names::canonical(&claimed);
    let attested = names::canonical(&member.attested_name);
    if name != attested {
        let reason = format!("joined the room as {attested:?} but claims to be {name:?}");
        refuse(session, run, id, reason);
        return;
    }
    if run
        .members
        .values()
        .any(|m| m.info.as_ref().is_some_and(|i| i.identity == key))
        || key == session.identity.public_key()
    {
        refuse(session, run, id, "an identity already in the call".into());
        return;
    }
    let trust = session
        .known_peers
        .evaluate(&name, &key, session.config.trust);
    if let Err(e) = session.known_peers.save() {
        tracing::warn!("could not save known peers: {e}");
    }
    let trust = match trust {
        Ok(t) => t,
        Err(e) => {
            refuse(session, run, id, e.to_string());
            return;
        }
    };
    if let PeerTrust::Changed {
        previous,
        pinned_name,
    } = &trust
    {
        emit(
            session,
            CallEvent::PeerIdentityChanged {
                name: name.clone(),
                pinned_name: pinned_name.clone(),
                pinned: *previous,
                presented: key,
            },
        );
    }
    let control = match ControlCrypto::new(session.config.suite, &pair_keys) {
        Ok(c) => c,
        Err(e) => {
            refuse(session, run, id, format!("control keys: {e}"));
            return;
        }
    };
    drop(pair_keys);
    let Some(member) = run.members.get_mut(id) else {
        return;
    };
    let slot = member.slot;
    let join = member.join;
    member.control = Some(control);
    let info = PeerInfo {
        mixed_script: names::is_mixed_script(&claimed),
        name: name.clone(),
        identity: key,
        safety_code: safety_code.to_string(),
        trust,
    };
    member.info = Some(info.clone());
    let early = std::mem::take(&mut member.early);
    if let Some(keys) = &run.keys
        && let Ok(mut k) = keys.lock()
        && let Err(e) = k.member_joined(Instant::now(), slot, join)
    {
        tracing::warn!(member = %name, "group keys: {e}");
    }
    if let Ok(mut names) = run.video_names.lock() {
        names.insert(slot, name.clone());
    }
    tracing::info!(member = %name, slot = slot.get(), "member's keys agreed");
    if let Some(media) = &run.media {
        let _ = media.playback.try_send(PlaybackInput::Named {
            slot,
            name: name.as_str().into(),
        });
    }
    emit(session, CallEvent::ParticipantJoined(info));
    pump(run).await;
    for frame in early {
        on_control(session, run, id, &frame).await;
    }
    roster_changed(session, run);
    update_state(session, run);
}

async fn on_control(session: &Session, run: &mut Run, id: &str, frame: &[u8]) {
    let Some(member) = run.members.get_mut(id) else {
        return;
    };
    let Some(control) = member.control.as_mut() else {
        return;
    };
    let message = match control.open(frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("refused a control frame: {e}");
            session.shared.control_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    let slot = member.slot;
    let name = member.name();
    let now = Instant::now();
    match message {
        ControlMessage::GroupKey { mut body } => {
            let bytes = hex::decode(&body).map(Zeroizing::new);
            body.zeroize();
            match (bytes, &run.keys) {
                (Ok(bytes), Some(keys)) => {
                    if let Ok(mut k) = keys.lock()
                        && let Err(e) = k.bundle_received(now, slot, &bytes)
                    {
                        tracing::warn!(member = %name, "refused a key bundle: {e}");
                    }
                }
                (Err(_), _) => tracing::warn!(member = %name, "a key bundle that is not hex"),
                _ => {}
            }
            pump(run).await;
        }
        ControlMessage::GroupAck { body } => {
            if let (Ok(bytes), Some(keys)) = (hex::decode(&body), &run.keys)
                && let Ok(mut k) = keys.lock()
                && let Err(e) = k.ack_received(now, slot, &bytes)
            {
                tracing::warn!(member = %name, "refused a key ack: {e}");
            }
            pump(run).await;
        }
        ControlMessage::Mute { muted } => {
            emit(session, CallEvent::ParticipantMuted { name, muted });
        }
        ControlMessage::Hangup => {
            // It leaves the room next; its keys go now.
            let id = id.to_owned();
            member_left(session, run, &id).await;
        }
        _ => {}
    }
}

/// Sends what the group keys ask for, each on its member's sealed channel.
async fn pump(run: &mut Run) {
    // A switch of our key shows in the figures at once (rekeys), not at the next tick.
    if let Some(keys) = &run.keys
        && let Ok(k) = keys.lock()
        && let Ok(mut g) = run.shared.group.lock()
    {
        g.rekeys = k.rekeys();
    }
    let outputs: Vec<GroupOutput> = match run.keys.as_ref().map(|k| k.lock()) {
        Some(Ok(mut k)) => std::iter::from_fn(|| k.poll_output()).collect(),
        _ => return,
    };
    for output in outputs {
        let (to_slot, message) = match output {
            GroupOutput::SendBundle { to_slot, body } => (
                to_slot,
                ControlMessage::GroupKey {
                    body: hex::encode(&*body),
                },
            ),
            GroupOutput::SendAck { to_slot, body } => (
                to_slot,
                ControlMessage::GroupAck {
                    body: hex::encode(&body),
                },
            ),
            GroupOutput::SwitchedSendKey { generation } => {
                tracing::info!(generation, "our group key changed");
                continue;
            }
            GroupOutput::Event(GroupEvent::RekeyPending { generation, .. }) => {
                tracing::info!(generation, "a member left: new key pending");
                continue;
            }
            GroupOutput::Event(e) => {
                tracing::debug!(?e, "group keys");
                continue;
            }
        };
        send_sealed(run, to_slot, message).await;
    }
}

/// Seals `message` for the member in `slot` and sends it through signaling.
async fn send_sealed(run: &mut Run, slot: Slot, mut message: ControlMessage) {
    let Some(member) = run.member_by_slot(slot) else {
        return;
    };
    let Some(control) = member.control.as_mut() else {
        return;
    };
    let sealed = control.seal(&message);
    if let ControlMessage::GroupKey { body } = &mut message {
        body.zeroize();
    }
    let id = member.id.clone();
    match sealed {
        Ok(frame) => {
            let frame = hex::encode(frame.as_bytes());
            if let Err(e) = send_signal(run, &id, &OutgoingSignal::Control { frame: &frame }).await
            {
                tracing::warn!("could not send to a member: {e}");
            }
        }
        Err(e) => tracing::warn!("could not seal for a member: {e}"),
    }
}

/// Sends `message` to every trusted member.
async fn broadcast(run: &mut Run, message: &ControlMessage) {
    let mut out = Vec::new();
    for m in run.members.values_mut() {
        if let Some(control) = m.control.as_mut()
            && let Ok(frame) = control.seal(message)
        {
            out.push((m.id.clone(), hex::encode(frame.as_bytes())));
        }
    }
    for (id, frame) in out {
        if let Err(e) = send_signal(run, &id, &OutgoingSignal::Control { frame: &frame }).await {
            tracing::debug!("could not send to a member: {e}");
        }
    }
}

async fn member_left(session: &Session, run: &mut Run, id: &str) {
    let Some(member) = run.members.remove(id) else {
        return;
    };
    let trusted = member.control.is_some();
    let name = member.name();
    if trusted {
        if let Some(keys) = &run.keys
            && let Ok(mut k) = keys.lock()
        {
            // Its figures outlive its keys.
            if let Some(last) = figures_of(&member, &k, &run.video_counts) {
                if run.departed.len() == DEPARTED {
                    run.departed.remove(0);
                }
                run.departed.push(ParticipantStats {
                    present: false,
                    speaking: false,
                    ..last
                });
            }
            if let Err(e) = k.member_left(Instant::now(), member.slot) {
                tracing::warn!("group keys: {e}");
            }
        }
        if let Some(media) = &run.media {
            let _ = media.playback.try_send(PlaybackInput::Forget(member.slot));
        }
        if let Ok(mut names) = run.video_names.lock() {
            names.remove(&member.slot);
        }
        run.video_counts.clear(member.slot);
        run.speaking.clear(member.slot);
        tracing::info!(member = %name, "member left");
        emit(session, CallEvent::ParticipantLeft { name });
        pump(run).await;
        roster_changed(session, run);
    }
    // A call that became a group call goes back to two-party when one other member is left,
    // unless that member is always in the group (`--group`): then the two stay on the SFU.
    if !session.config.group
        && run.members.len() == 1
        && let Some(other) = run.members.values().next()
        && !other.group_member
    {
        let our_slot = run.room.as_ref().and_then(|r| r.slot);
        run.back = Some(HandoverPeer {
            initiate: we_initiate(our_slot, Some(other.slot.get())),
            info: SignalPeer {
                peer_id: other.id.clone(),
                name: other.attested_name.clone(),
                slot: Some(other.slot.get()),
                group: false,
            },
            join: JoinKind::AlreadyPresent,
        });
        return;
    }
    update_state(session, run);
}

/// Recomputes the group safety code over us and every trusted member.
fn roster_changed(session: &Session, run: &mut Run) {
    let mut keys: Vec<IdentityKey> = vec![session.identity.public_key()];
    let mut names: Vec<String> = Vec::new();
    for m in run.members.values().filter(|m| m.control.is_some()) {
        if let Some(info) = &m.info {
            keys.push(info.identity);
            names.push(info.name.clone());
        }
    }
    names.sort();
    let code = match group_safety_code(&session.config.room, &keys) {
        Ok(code) => code.to_string(),
        Err(e) => {
            tracing::warn!("no group safety code: {e}");
            return;
        }
    };
    if run.code.as_deref() == Some(code.as_str()) {
        return;
    }
    let changed = run.code.is_some();
    tracing::info!(code = %code, members = names.len(), changed, "group safety code");
    run.code = Some(code.clone());
    if let Ok(mut g) = session.shared.group.lock() {
        g.group_safety_code = Some(code.clone());
    }
    emit(
        session,
        CallEvent::GroupSafetyCode {
            code,
            members: names,
            changed,
        },
    );
}

fn speaking_changes(session: &Session, run: &mut Run) {
    let now = Instant::now();
    for m in run.members.values_mut() {
        let Some(info) = &m.info else { continue };
        let speaking = run.speaking.is_speaking(m.slot, now, SPEAKING_WINDOW);
        if speaking != m.speaking {
            m.speaking = speaking;
            emit(
                session,
                CallEvent::Speaking {
                    name: info.name.clone(),
                    speaking,
                },
            );
        }
    }
}

/// A trusted member's figures now.
fn figures_of(m: &Member, keys: &GroupKeys, video: &VideoCounts) -> Option<ParticipantStats> {
    m.control.as_ref()?;
    let info = m.info.as_ref()?;
    let s = keys.stats(m.slot).unwrap_or_default();
    // The keyring counts every kind (as the page does); video is also counted apart, under
    // the same lock.
    let (video_ok, video_failed) = (video.decrypted(m.slot), video.failures(m.slot));
    Some(ParticipantStats {
        name: info.name.clone(),
        identity: info.identity.fingerprint(),
        trust: info.trust.as_str(),
        frames_decrypted: s.frames_decrypted,
        decrypt_failures: s.decrypt_failures,
        video_frames_decrypted: video_ok,
        video_decrypt_failures: video_failed,
        speaking: m.speaking,
        present: true,
    })
}

/// Writes the per-member figures where snapshots read them.
fn publish_figures(session: &Session, run: &Run) {
    let Some(keys) = &run.keys else { return };
    let Ok(k) = keys.lock() else { return };
    let mut participants: Vec<ParticipantStats> = run
        .members
        .values()
        .filter_map(|m| figures_of(m, &k, &run.video_counts))
        .collect();
    participants.sort_by(|a, b| a.name.cmp(&b.name));
    participants.extend(run.departed.iter().rev().cloned());
    let rekeys = k.rekeys();
    drop(k);
    if let Ok(mut g) = session.shared.group.lock() {
        *g = GroupFigures {
            group_safety_code: run.code.clone(),
            participants,
            rekeys,
        };
    }
}

fn start_media(
    session: &mut Session,
    run: &mut Run,
    notices: &mpsc::UnboundedSender<MediaNotice>,
) -> Result<(), EndReason> {
    let (Some(transport), Some(keys), Some(frames)) =
        (run.transport.clone(), run.keys.clone(), run.frames.take())
    else {
        return Ok(());
    };
    let Some((source, sink)) = session.audio.take() else {
        return Err(EndReason::MediaFailed("audio I/O already taken".into()));
    };
    let media_err = |e: &dyn std::fmt::Display| EndReason::MediaFailed(e.to_string());
    let encoder = OpusEncoder::new(session.config.opus).map_err(|e| media_err(&e))?;
    let frame = session.config.opus.frame;
    let stop = Arc::new(AtomicBool::new(false));
    let (playback_tx, playback_rx) = std::sync::mpsc::sync_channel(PLAYBACK_QUEUE);
    let capture = GroupCapture {
        source,
        encoder,
        keys: Arc::clone(&keys),
        transport,
        runtime: tokio::runtime::Handle::current(),
        shared: Arc::clone(&session.shared),
        stop: Arc::clone(&stop),
        frame,
        notices: notices.clone(),
        home: Arc::clone(&session.audio),
    };
    let handover = Arc::new(AtomicBool::new(false));
    let playback = GroupPlayback {
        sink,
        inputs: playback_rx,
        playout: session.config.playout,
        shared: Arc::clone(&session.shared),
        speaking: Arc::clone(&run.speaking),
        stop: Arc::clone(&stop),
        frame,
        setup_start: session.started,
        notices: notices.clone(),
        home: Arc::clone(&session.audio),
        handover: Arc::clone(&handover),
        participants: session.participant_audio.clone(),
    };
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map_err(|e| EndReason::MediaFailed(format!("could not start {name}: {e}")))
    };
    let threads = vec![
        spawn("sotto-capture", Box::new(move || capture.run()))?,
        spawn("sotto-playback", Box::new(move || playback.run()))?,
    ];
    // The playback learns the names of the members already agreed; later ones as they come.
    for m in run.members.values() {
        if let Some(info) = &m.info {
            let _ = playback_tx.try_send(PlaybackInput::Named {
                slot: m.slot,
                name: info.name.as_str().into(),
            });
        }
    }
    let samples_per_frame =
        (u64::from(SAMPLE_RATE) * frame.duration().as_micros() as u64) / 1_000_000;
    let mut threads = threads;
    let mut tasks = vec![tokio::spawn(super::media::open_frames(
        frames,
        Arc::clone(&keys),
        playback_tx.clone(),
        Arc::clone(&session.shared),
        samples_per_frame,
        Arc::clone(&run.video_counts),
    ))];
    let (video_threads, video_tasks) = start_video(session, run, &keys, &stop, notices)?;
    threads.extend(video_threads);
    tasks.extend(video_tasks);
    session.had_media = true;
    run.media = Some(Media {
        threads: MediaThreads {
            stop,
            handover,
            threads,
            tasks,
        },
        playback: playback_tx,
    });
    tracing::info!("group media started");
    Ok(())
}

/// The threads and tasks of one media kind.
type Workers = (
    Vec<std::thread::JoinHandle<()>>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// The video threads and tasks: the others' video always (any member may send it), ours
/// when we have a source.
fn start_video(
    session: &Session,
    run: &mut Run,
    keys: &Arc<Mutex<GroupKeys>>,
    stop: &Arc<AtomicBool>,
    notices: &mpsc::UnboundedSender<MediaNotice>,
) -> Result<Workers, EndReason> {
    let media_err = |e: &dyn std::fmt::Display| EndReason::MediaFailed(e.to_string());
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map_err(|e| EndReason::MediaFailed(format!("could not start {name}: {e}")))
    };
    let (mut threads, mut tasks) = (Vec::new(), Vec::new());
    let Some(transport) = run.transport.clone() else {
        return Ok((threads, tasks));
    };
    if let Some(frames) = run.video_frames.take() {
        let (needs_tx, needs_rx) = mpsc::unbounded_channel();
        let (opened_tx, opened_rx) =
            std::sync::mpsc::sync_channel(super::super::video::RENDER_QUEUE);
        tasks.push(tokio::spawn(open_video_frames(
            frames,
            needs_rx,
            Arc::clone(keys),
            Arc::clone(&run.video_counts),
            opened_tx,
            Arc::clone(&transport),
            Arc::clone(&session.shared),
        )));
        let codec = session.config.video_codec;
        let render = GroupVideoRender {
            frames: opened_rx,
            names: Arc::clone(&run.video_names),
            new_decoder: Box::new(move || codec.new_decoder()),
            needs: needs_tx,
            home: Arc::clone(&session.group_video),
            shared: Arc::clone(&session.shared),
            stop: Arc::clone(stop),
            notices: notices.clone(),
        };
        threads.push(spawn("sotto-video-render", Box::new(move || render.run()))?);
    }
    if let Some(source) = session.group_video.take_source() {
        let settings = session.config.video;
        let (w, h) = settings.size.unwrap_or_else(|| source.size());
        let mut encoder_config = VideoEncoderConfig::new(w, h);
        if let Some(fps) = settings.fps {
            encoder_config.fps = fps;
        }
        if let Some(kbps) = settings.max_kbps {
            encoder_config.target_kbps = kbps;
        }
        let encoder = match session.config.video_codec.new_encoder(&encoder_config) {
            Ok(e) => e,
            Err(e) => {
                session.group_video.put_source(source);
                return Err(media_err(&e));
            }
        };
        let control = Arc::new(super::super::video::VideoControl::default());
        if let Some(requests) = run.keyframe_requests.take() {
            tasks.push(tokio::spawn(super::super::video::serve_keyframe_requests(
                requests,
                Arc::clone(&control),
                Arc::clone(&session.shared),
            )));
        }
        let capture = GroupVideoCapture {
            source: Some(source),
            encoder,
            keys: Arc::clone(keys),
            transport,
            runtime: tokio::runtime::Handle::current(),
            shared: Arc::clone(&session.shared),
            control,
            stop: Arc::clone(stop),
            settings,
            notices: notices.clone(),
            home: Arc::clone(&session.group_video),
        };
        threads.push(spawn(
            "sotto-video-capture",
            Box::new(move || capture.run()),
        )?);
    }
    Ok((threads, tasks))
}

async fn send_handshake(run: &Run, to: &str, message: Vec<u8>) -> Result<(), EndReason> {
    let text = String::from_utf8(message).map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
    let raw = RawValue::from_string(text).map_err(|e| EndReason::HandshakeFailed(e.to_string()))?;
    send_signal(run, to, &OutgoingSignal::Handshake { message: &raw }).await
}

/// Sends `payload` to the member or SFU `to` through signaling (nothing once it is gone).
async fn send_signal(
    run: &Run,
    to: &str,
    payload: &impl serde::Serialize,
) -> Result<(), EndReason> {
    let Some(signal) = run.signal.as_ref() else {
        return Ok(());
    };
    signal
        .send_to(to, payload)
        .await
        .map_err(|e| EndReason::SignalingFailed(e.to_string()))
}

/// Stops media first (nothing plays after the end), tells the members, leaves the SFU.
async fn shutdown(session: &Session, run: &mut Run, reason: &EndReason) {
    if let Some(media) = run.media.take() {
        stop_media(media.threads).await;
    }
    session.group_video.finish();
    publish_figures(session, run);
    if *reason == EndReason::LocalHangup {
        broadcast(run, &ControlMessage::Hangup).await;
        let _ = send_signal(run, SFU_PEER, &json!({"kind": "sfu_leave"})).await;
        tokio::time::sleep(HANGUP_LINGER).await;
    }
    if let Some(transport) = run.transport.take()
        && let Err(e) = transport.close().await
    {
        tracing::debug!("closing the SFU connection: {e}");
    }
    if let Some(signal) = run.signal.take() {
        signal.close().await;
    }
}
