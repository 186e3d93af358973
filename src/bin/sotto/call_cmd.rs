//! `sotto call`: one side of a two-party E2EE call through a signaling server.

use sotto::call::{
    CallEvent, CallOptions, CallReport, CallState, CallStats, EndReason, PeerInfo, VideoIo,
};
use sotto::handshake::PeerTrust;
use sotto::handshake::{Identity, KnownPeers};
use sotto::media::{AudioSink, AudioSource};
use sotto::messages::History;

use crate::chat::{self, ChatOutput, Input};

/// The flags of `sotto call`: the library's call options, shared with the C ABI.
pub type CallArgs = CallOptions;

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
    if s.mode == "sfu" {
        let members: Vec<String> = s
            .participants
            .iter()
            .filter(|p| p.present)
            .map(|p| {
                format!(
                    "{} ({}, decrypted {}, failures {}{}{})",
                    p.name,
                    p.trust,
                    p.frames_decrypted,
                    p.decrypt_failures,
                    if p.video_frames_decrypted + p.video_decrypt_failures > 0 {
                        format!(
                            ", video {} / {} failed",
                            p.video_frames_decrypted, p.video_decrypt_failures
                        )
                    } else {
                        String::new()
                    },
                    if p.speaking { ", speaking" } else { "" }
                )
            })
            .collect();
        println!(
            "group: {} members besides us, rekeys {}: {}",
            members.len(),
            s.rekeys,
            members.join(", ")
        );
    }
    if s.video_frames_sent + s.video_frames_received > 0 {
        let sync = s
            .av_sync_offset_ms
            .map_or_else(|| "-".to_string(), |o| format!("{o:+.0} ms"));
        println!(
            "video: sent {} ({} keyframes, {:.0} kbit/s, target {} kbit/s), received {} \
             decrypted {} decrypt failures {}, shown {}x{} at {:.1} fps, freezes {}, \
             a/v offset {sync}",
            s.video_frames_sent,
            s.video_keyframes_sent,
            s.video_send_kbps,
            s.video_target_kbps,
            s.video_frames_received,
            s.video_frames_decrypted,
            s.video_decrypt_failures,
            s.video_width,
            s.video_height,
            s.video_fps_received,
            s.video_freezes
        );
    }
}

fn state_text(state: CallState, group: bool) -> &'static str {
    match state {
        CallState::Joining => "joining the room",
        CallState::WaitingForPeer if group => "waiting for other members",
        CallState::WaitingForPeer => "waiting for the other peer",
        CallState::Handshaking if group => "agreeing keys with the members",
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
    args.validate().map_err(|e| e.to_string())?;
    // Open devices and files first, so a bad one fails before anything is created or joined.
    let source = args.open_source().map_err(|e| e.to_string())?;
    let sink = args.open_sink().map_err(|e| e.to_string())?;
    let video = args.open_video().map_err(|e| e.to_string())?;
    let loaded = args.load_identity().map_err(|e| e.to_string())?;
    if loaded.created {
        println!("created a new identity at {}", loaded.path.display());
    }
    let history = args.open_history(&loaded.path).map_err(|e| e.to_string())?;
    let output = ChatOutput::new(args.chat_json.as_deref())?;

    let runtime = crate::runtime()?;
    runtime.block_on(call(
        args,
        loaded.identity,
        loaded.known_peers,
        source,
        sink,
        video,
        history,
        output,
    ))
}

/// Acts on one line of chat input; true when it asks to hang up.
async fn chat_input(call: &sotto::call::Call, input: Input, output: &mut ChatOutput) -> bool {
    match input {
        Input::Text(text) => {
            if let Err(e) = call.send_message(&text).await {
                output.error(&e.to_string());
            }
        }
        Input::Timer(timer) => {
            if let Err(e) = call.set_disappearing_timer(timer.ttl()).await {
                output.error(&e.to_string());
            }
        }
        Input::Error(e) => output.error(&e),
        Input::Quit => return true,
    }
    false
}

/// After a hang-up: the events still queued (messages not delivered, the final figures).
async fn drain(call: &mut sotto::call::Call, output: &mut ChatOutput) -> CallStats {
    let mut stats = call.stats();
    while let Some(event) = call.next_event().await {
        match event {
            CallEvent::Chat(e) => output.event(&e),
            CallEvent::Ended { stats: last, .. } => stats = last,
            _ => {}
        }
    }
    stats
}

#[allow(clippy::too_many_arguments)]
async fn call(
    args: CallArgs,
    identity: Identity,
    known_peers: KnownPeers,
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    video: VideoIo,
    history: Option<History>,
    mut output: ChatOutput,
) -> Result<(), String> {
    let fingerprint = identity.public_key().fingerprint();
    println!(
        "joining room {:?} on {} as {:?} (identity {fingerprint})",
        args.room, args.server, args.name
    );
    let mut builder = args.builder(identity, known_peers, source, sink, video);
    if let Some(history) = history {
        builder = builder.history(history);
    }
    let suite = args.config().suite;
    let mut call = builder.start().map_err(|e| e.to_string())?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut peer: Option<PeerInfo> = None;
    let mut undecryptable = false;
    let mut lines = args.chat.then(chat::read_stdin);
    // Lines typed before the call is connected wait for it.
    let mut waiting: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
    let mut connected = false;
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
                    println!("state: {}", state_text(state, args.group));
                    if state == CallState::Connected && !connected {
                        connected = true;
                        let mut quit = false;
                        while let Some(input) = waiting.pop_front() {
                            if chat_input(&call, input, &mut output).await {
                                quit = true;
                                break;
                            }
                        }
                        if quit {
                            let reason = call.hang_up().await;
                            let stats = drain(&mut call, &mut output).await;
                            break (reason, stats);
                        }
                    }
                }
                Some(CallEvent::Chat(e)) => output.event(&e),
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
                Some(CallEvent::ParticipantJoined(info)) => {
                    println!(
                        "member: {:?} (identity {}, {}){}",
                        info.name,
                        info.identity.fingerprint(),
                        info.trust.as_str(),
                        if info.mixed_script {
                            "  WARNING: the name mixes writing systems, as imitations do"
                        } else {
                            ""
                        }
                    );
                }
                Some(CallEvent::ParticipantLeft { name }) => println!("member left: {name:?}"),
                Some(CallEvent::ParticipantRefused { name, reason }) => {
                    println!("member refused: {name:?}: {reason}");
                }
                Some(CallEvent::ParticipantMuted { name, muted }) => {
                    println!("{name:?} {}", if muted { "muted" } else { "unmuted" });
                }
                Some(CallEvent::GroupSafetyCode { code, members, changed }) => {
                    if changed {
                        println!("the members changed, so the group safety code changed");
                    }
                    println!(
                        "group safety code: {code}   (everyone in the call sees the same code; \
                         members besides us: {})",
                        members.join(", ")
                    );
                }
                Some(CallEvent::FirstAudio { setup_ms }) => {
                    println!("first audio from the peer after {setup_ms:.0} ms");
                }
                Some(CallEvent::VideoSize { width, height }) => {
                    println!("the peer's video: {width}x{height}");
                }
                Some(CallEvent::ParticipantVideoSize {
                    name,
                    width,
                    height,
                }) => {
                    println!("{name}'s video: {width}x{height}");
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
            line = async {
                match lines.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            } => match line {
                // End of input: the call goes on until it ends otherwise.
                None => lines = None,
                Some(Err(e)) => output.error(&e),
                Some(Ok(line)) => {
                    let Some(input) = chat::parse_line(&line) else { continue };
                    if !connected {
                        waiting.push_back(input);
                    } else if chat_input(&call, input, &mut output).await {
                        let reason = call.hang_up().await;
                        let stats = drain(&mut call, &mut output).await;
                        break (reason, stats);
                    }
                }
            },
            _ = timer => {
                // Hang up through the command channel; the Ended event follows.
                let reason = call.hang_up().await;
                let stats = drain(&mut call, &mut output).await;
                break (reason, stats);
            }
            _ = tokio::signal::ctrl_c() => {
                let reason = call.hang_up().await;
                let stats = drain(&mut call, &mut output).await;
                break (reason, stats);
            }
        }
    };
    // Lines still waiting for a connection that never came.
    for input in waiting {
        if let Input::Text(_) = input {
            output.error("the call ended before this message could be sent");
        }
    }
    output.finish();
    println!("call ended: {reason}");
    print_stats(&stats);
    if let Some(path) = &args.stats_json {
        let report = CallReport::new(
            &args,
            suite,
            fingerprint,
            peer.as_ref(),
            undecryptable,
            &reason,
            stats,
        );
        report.write(path).map_err(|e| e.to_string())?;
    }
    if sotto::call::ended_ok(&reason) {
        Ok(())
    } else {
        Err(format!("call failed: {reason}"))
    }
}
