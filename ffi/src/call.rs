//! Calls through the C ABI: a call handle owns its tokio runtime, a driver task that runs the
//! engine's call, and an event thread that turns its events into JSON for the callback.

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use engine::call::{
    Call, CallEvent, CallOptions, CallReport, CallState, CallStats, EndReason, OptionsError,
    PeerInfo, ended_ok,
};
use engine::media::{AudioSink, AudioSource, MediaError};
use engine::messages::{Conversation, DisappearingTimer, chat_event_json};
use engine::sframe::CipherSuite;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::error::{
    Failure, Result, SOTTO_ERR_BUFFER_TOO_SMALL, SOTTO_ERR_INTERNAL, SOTTO_ERR_INVALID,
    SOTTO_ERR_IO, SOTTO_ERR_STATE, guard, guard_value, out_bytes, sotto_status,
};

/// Receives the call's events: one UTF-8 JSON object per call, on a library thread, one event
/// at a time, in order. `event_json` is valid only during the call. Must not call
/// `sotto_call_free` from inside the callback. The events:
///
/// - `{"event":"state","state":S}`, S one of "joining", "waiting_for_peer", "handshaking",
///   "connecting", "connected", "undecryptable", "reconnecting", "ended"
/// - `{"event":"safety_code","safety_code":"0421 7736","peer_name":..,"peer_fingerprint":..,
///   "peer_identity":"<hex>","trust":"new|known|verified|changed|renamed","mixed_script":false}`
/// - `{"event":"identity_changed","peer_name":..,"pinned_name":..,"pinned_fingerprint":..,
///   "presented_fingerprint":..}`: someone may be in the middle
/// - `{"event":"stats", ...the fields of sotto_call_stats_json...}`, every second
/// - `{"event":"authentication_failures","new":N,"total":N}`
/// - `{"event":"peer_muted","muted":true}`
/// - `{"event":"first_audio","setup_ms":231.0}`
/// - `{"event":"video_size","width":640,"height":360}`: the peer's video is shown at this size
///   (first picture, or a change); video comes with the `video` option (see `sotto call --help`)
/// - text messages, as `sotto call --chat-json` writes them (`docs/call-protocol.md`,
///   "Messages"): `{"event":"message","id":..,"from":..,"text":..,"ttl_s":N|null,
///   "received_at":<Unix ms>}`, `{"event":"sent","id":..,"text":..,"ttl_s":..}`,
///   `{"event":"delivered","id":..,"to":..}`, `{"event":"timer","from":..,"ttl_s":N|null}`,
///   `{"event":"expired","id":..}` (forget the text now), `{"event":"undelivered","id":..}`
///   (the call ended before the peer acknowledged it), `{"event":"rejected","reason":..}`
///   (a message from the peer was refused), and `{"event":"error","reason":..}` (a message or
///   timer of ours could not be sent, e.g. before the call is connected)
/// - group calls (the `group` option, or a two-party call a third person joins on a server
///   with an SFU): `{"event":"participant_joined","name":..,"fingerprint":..,"identity":"<hex>",
///   "trust":..,"mixed_script":false}`, `{"event":"participant_left","name":..}`,
///   `{"event":"participant_refused","name":..,"reason":..}`,
///   `{"event":"group_safety_code","code":"0421 7736","members":[..],"changed":false}`,
///   `{"event":"speaking","name":..,"speaking":true}`,
///   `{"event":"participant_muted","name":..,"muted":true}`
/// - `{"event":"trust_changed","name":..,"trust":"verified"}`: after `sotto_call_verify`
/// - `{"event":"ended","reason":"hung up","ok":true,"stats":{...}}`, always the last; `ok` is
///   false when the call failed
pub type sotto_event_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event_json: *const c_char)>;

/// Fills `frame` with up to `samples` samples (48 kHz mono f32, one frame: 960 for 20 ms) and
/// returns how many it wrote; fewer means the end of the input (the rest is silence and the
/// source is over). Called on a library media thread, paced in real time; must not block for
/// long.
pub type sotto_audio_read_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, frame: *mut f32, samples: usize) -> usize>;

/// Takes one decoded frame of `samples` samples (48 kHz mono f32), valid only during the call.
/// Called on a library media thread, paced in real time; must not block for long.
pub type sotto_audio_write_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, frame: *const f32, samples: usize)>;

/// Custom audio for a call: the application's own capture and playback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sotto_audio_io {
    /// NULL: use the config's source (tone, input or input device).
    pub read: sotto_audio_read_cb,
    /// NULL: use the config's sink (output or output device).
    pub write: sotto_audio_write_cb,
    /// Passed to both callbacks; must stay valid until `sotto_call_free` returns.
    pub user_data: *mut c_void,
}

/// A pointer the application gave us, passed to its callbacks on our threads. The application
/// promises (by the header's contract) that this is safe.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: the C contract makes the application responsible for using user_data from our
// threads; we never dereference it.
unsafe impl Send for UserData {}

/// An [`AudioSource`] over the application's read callback.
struct CallbackSource {
    read: unsafe extern "C" fn(*mut c_void, *mut f32, usize) -> usize,
    user_data: UserData,
    over: bool,
}

impl AudioSource for CallbackSource {
    fn read_frame(&mut self, out: &mut [f32]) -> std::result::Result<bool, MediaError> {
        if self.over {
            return Ok(false);
        }
        // SAFETY: `out` is writable for `out.len()` samples; the callback was given by the
        // application for exactly this use.
        let n = unsafe { (self.read)(self.user_data.0, out.as_mut_ptr(), out.len()) };
        let n = n.min(out.len());
        if n < out.len() {
            self.over = true;
            if n == 0 {
                return Ok(false);
            }
            out[n..].fill(0.0);
        }
        Ok(true)
    }
}

/// An [`AudioSink`] over the application's write callback.
struct CallbackSink {
    write: unsafe extern "C" fn(*mut c_void, *const f32, usize),
    user_data: UserData,
}

impl AudioSink for CallbackSink {
    fn write_frame(&mut self, frame: &[f32]) -> std::result::Result<(), MediaError> {
        // SAFETY: `frame` is readable for its length during the call.
        unsafe { (self.write)(self.user_data.0, frame.as_ptr(), frame.len()) };
        Ok(())
    }
}

/// What the application asks of the running call.
enum Command {
    Mute(bool),
    HangUp,
    SendMessage(zeroize::Zeroizing<String>),
    SetTimer(Option<Duration>),
    Verify(String),
    Stats(oneshot::Sender<CallStats>),
    /// Tests only: the driver panics, as a bug in it would.
    #[cfg(test)]
    Panic,
}

/// One event for the callback; `ended` marks the last.
struct Delivery {
    json: CString,
    ended: bool,
}

/// State shared by the handle, the driver and the event thread.
#[derive(Default)]
struct Shared {
    /// Set once the ended event has been delivered (the callback returned).
    delivered: Mutex<bool>,
    delivered_cv: Condvar,
    /// The final figures, once the call is over.
    final_stats: Mutex<Option<CallStats>>,
}

impl Shared {
    fn final_stats(&self) -> Option<CallStats> {
        self.final_stats.lock().map(|s| s.clone()).unwrap_or(None)
    }

    /// Waits until the ended event has been delivered or `timeout` passed; true if delivered.
    fn wait_delivered(&self, timeout: Option<Duration>) -> bool {
        let Ok(mut done) = self.delivered.lock() else {
            return true;
        };
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        while !*done {
            let next = match deadline {
                None => self.delivered_cv.wait(done).map_err(|_| ()),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.delivered_cv
                        .wait_timeout(done, left)
                        .map(|(g, _)| g)
                        .map_err(|_| ())
                }
            };
            match next {
                Ok(g) => done = g,
                Err(_) => return true,
            }
        }
        true
    }
}

/// A running (or ended) call.
pub struct sotto_call {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    events_thread: Option<JoinHandle<()>>,
    events_thread_id: ThreadId,
    runtime: Option<tokio::runtime::Runtime>,
}

fn options_failure(e: OptionsError) -> Failure {
    let status = match e {
        OptionsError::Invalid(_) => SOTTO_ERR_INVALID,
        OptionsError::Audio(_)
        | OptionsError::Video(_)
        | OptionsError::Identity(_)
        | OptionsError::Report(_) => SOTTO_ERR_IO,
        _ => SOTTO_ERR_INTERNAL,
    };
    Failure::new(status, e.to_string())
}

fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Joining => "joining",
        CallState::WaitingForPeer => "waiting_for_peer",
        CallState::Handshaking => "handshaking",
        CallState::Connecting => "connecting",
        CallState::Connected => "connected",
        CallState::Undecryptable => "undecryptable",
        CallState::Reconnecting => "reconnecting",
        CallState::Ended => "ended",
        _ => "unknown",
    }
}

fn stats_value(stats: &CallStats) -> Value {
    serde_json::to_value(stats).unwrap_or_else(|_| json!({}))
}

/// The JSON of an event, as the C ABI documents it; `None` for events it does not carry.
fn event_json(event: &CallEvent) -> Option<Value> {
    Some(match event {
        CallEvent::State(state) => json!({"event": "state", "state": state_name(*state)}),
        CallEvent::SafetyCode(peer) => json!({
            "event": "safety_code",
            "safety_code": peer.safety_code,
            "peer_name": peer.name,
            "peer_fingerprint": peer.identity.fingerprint(),
            "peer_identity": peer.identity.to_hex(),
            "trust": peer.trust.as_str(),
            "mixed_script": peer.mixed_script,
        }),
        CallEvent::PeerIdentityChanged {
            name,
            pinned_name,
            pinned,
            presented,
        } => json!({
            "event": "identity_changed",
            "peer_name": name,
            "pinned_name": pinned_name,
            "pinned_fingerprint": pinned.fingerprint(),
            "presented_fingerprint": presented.fingerprint(),
        }),
        CallEvent::Stats(stats) => {
            let mut v = stats_value(stats);
            if let Value::Object(map) = &mut v {
                map.insert("event".into(), json!("stats"));
            }
            v
        }
        CallEvent::AuthenticationFailures { new, total } => {
            json!({"event": "authentication_failures", "new": new, "total": total})
        }
        CallEvent::PeerMuted(muted) => json!({"event": "peer_muted", "muted": muted}),
        CallEvent::FirstAudio { setup_ms } => json!({"event": "first_audio", "setup_ms": setup_ms}),
        CallEvent::VideoSize { width, height } => {
            json!({"event": "video_size", "width": width, "height": height})
        }
        CallEvent::Ended { reason, stats } => ended_json(reason, stats),
        CallEvent::Chat(chat) => return chat_event_json(chat),
        CallEvent::ParticipantJoined(p) => json!({
            "event": "participant_joined",
            "name": p.name,
            "fingerprint": p.identity.fingerprint(),
            "identity": p.identity.to_hex(),
            "trust": p.trust.as_str(),
            "mixed_script": p.mixed_script,
        }),
        CallEvent::ParticipantLeft { name } => json!({"event": "participant_left", "name": name}),
        CallEvent::ParticipantRefused { name, reason } => {
            json!({"event": "participant_refused", "name": name, "reason": reason})
        }
        CallEvent::GroupSafetyCode {
            code,
            members,
            changed,
        } => json!({
            "event": "group_safety_code",
            "code": code,
            "members": members,
            "changed": changed,
        }),
        CallEvent::Speaking { name, speaking } => {
            json!({"event": "speaking", "name": name, "speaking": speaking})
        }
        CallEvent::ParticipantMuted { name, muted } => {
            json!({"event": "participant_muted", "name": name, "muted": muted})
        }
        CallEvent::TrustChanged { name, trust } => {
            json!({"event": "trust_changed", "name": name, "trust": trust.as_str()})
        }
        _ => return None,
    })
}

fn ended_json(reason: &EndReason, stats: &CallStats) -> Value {
    json!({
        "event": "ended",
        "reason": reason.to_string(),
        "ok": ended_ok(reason),
        "stats": stats_value(stats),
    })
}

/// Runs the engine's call: forwards its events as JSON to the event thread, serves the
/// application's commands, hangs up at the configured duration, writes the stats report.
struct Driver {
    call: Call,
    commands: mpsc::UnboundedReceiver<Command>,
    events: std_mpsc::Sender<Delivery>,
    shared: Arc<Shared>,
    options: CallOptions,
    suite: CipherSuite,
    fingerprint: String,
    peer: Option<PeerInfo>,
    undecryptable: bool,
}

impl Driver {
    fn emit(&self, value: &Value) {
        // serde_json escapes control characters, so the text has no NUL.
        if let Ok(json) = CString::new(value.to_string()) {
            let ended = value["event"] == "ended";
            let _ = self.events.send(Delivery { json, ended });
        }
    }

    fn observe(&mut self, event: &CallEvent) {
        match event {
            CallEvent::State(CallState::Undecryptable) => self.undecryptable = true,
            CallEvent::SafetyCode(peer) => self.peer = Some(peer.clone()),
            _ => {}
        }
    }

    async fn run(mut self) {
        let deadline = self
            .options
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        let (reason, stats) = loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.call.next_event() => match event {
                    Some(CallEvent::Ended { reason, stats }) => break (reason, stats),
                    Some(event) => {
                        self.observe(&event);
                        if let Some(v) = event_json(&event) {
                            self.emit(&v);
                        }
                    }
                    None => break (EndReason::LocalHangup, self.call.stats()),
                },
                command = self.commands.recv() => match command {
                    Some(Command::Mute(m)) => self.call.set_muted(m).await,
                    Some(Command::SendMessage(text)) => {
                        if let Err(e) = self.call.send_message(&text).await {
                            self.emit(&json!({"event": "error", "reason": e.to_string()}));
                        }
                    }
                    Some(Command::SetTimer(ttl)) => {
                        if let Err(e) = self.call.set_disappearing_timer(ttl).await {
                            self.emit(&json!({"event": "error", "reason": e.to_string()}));
                        }
                    }
                    Some(Command::Verify(name)) => {
                        if let Err(e) = self.call.verify(&name).await {
                            self.emit(&json!({"event": "error", "reason": e.to_string()}));
                        }
                    }
                    Some(Command::Stats(reply)) => {
                        let _ = reply.send(self.call.stats());
                    }
                    #[cfg(test)]
                    Some(Command::Panic) => panic!("driver panic for a test"),
                    // A dropped handle hangs up too.
                    Some(Command::HangUp) | None => break self.hang_up().await,
                },
                _ = timer => break self.hang_up().await,
            }
        };
        if let Some(path) = &self.options.stats_json {
            let report = CallReport::new(
                &self.options,
                self.suite,
                self.fingerprint.clone(),
                self.peer.as_ref(),
                self.undecryptable,
                &reason,
                stats.clone(),
            );
            // Nobody is left to tell but the log; the ended event still carries the figures.
            if let Err(e) = report.write(path) {
                tracing::warn!("{e}");
            }
        }
        if let Ok(mut s) = self.shared.final_stats.lock() {
            *s = Some(stats.clone());
        }
        self.emit(&ended_json(&reason, &stats));
    }

    /// Hangs up and passes on what the call said while ending (its last states).
    async fn hang_up(&mut self) -> (EndReason, CallStats) {
        let reason = self.call.hang_up().await;
        let mut stats = self.call.stats();
        while let Some(event) = self.call.next_event().await {
            match event {
                CallEvent::Ended { stats: s, .. } => stats = s,
                event => {
                    if let Some(v) = event_json(&event) {
                        self.emit(&v);
                    }
                }
            }
        }
        (reason, stats)
    }
}

/// The event thread: calls the callback for each event, in order, then marks the call over.
fn deliver(
    events: std_mpsc::Receiver<Delivery>,
    on_event: sotto_event_cb,
    user_data: UserData,
    shared: Arc<Shared>,
) {
    let call_back = |json: &CStr| {
        if let Some(cb) = on_event {
            // SAFETY: the application gave this callback and user_data for this purpose; the
            // string lives until the callback returns.
            unsafe { cb(user_data.0, json.as_ptr()) };
        }
    };
    let mut ended = false;
    for delivery in events {
        call_back(&delivery.json);
        ended |= delivery.ended;
    }
    if !ended {
        // The driver stopped without an end (a panic in it): the application still gets one.
        let stats = match shared.final_stats.lock() {
            Ok(mut s) => s.get_or_insert_with(CallStats::default).clone(),
            Err(_) => CallStats::default(),
        };
        let value = json!({
            "event": "ended",
            "reason": "internal error: the call stopped unexpectedly",
            "ok": false,
            "stats": stats_value(&stats),
        });
        if let Ok(json) = CString::new(value.to_string()) {
            call_back(&json);
        }
    }
    if let Ok(mut done) = shared.delivered.lock() {
        *done = true;
    }
    shared.delivered_cv.notify_all();
}

/// Starts a call as the JSON `config_json` describes (the keys are the long flag names of
/// `sotto call`: `server`, `room`, `name`, `identity`, `tone`, `input`, `input-device`,
/// `output`, `output-device`, `duration`, `stats-json`, `token`, `bind` (string or array),
/// `ice-server` (string or array), `ice-username`, `ice-credential`, `require-verified`,
/// `history` (a directory that keeps live messages across restarts, encrypted at rest);
/// unknown keys, `chat` and `chat-json` are SOTTO_ERR_INVALID). Audio comes from the config
/// (tone, WAV file or
/// device). See `sotto_call_start_with_audio`.
///
/// Thread-safety: any thread. Ownership: `config_json` is read during the call only; `*out`
/// receives a handle the caller frees with `sotto_call_free`. `on_event` (may be NULL) is
/// called on a library thread with `user_data`, which must stay valid until
/// `sotto_call_free` returns.
///
/// # Safety
/// `config_json` must be a NUL-terminated string; `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_start(
    config_json: *const c_char,
    on_event: sotto_event_cb,
    user_data: *mut c_void,
    out: *mut *mut sotto_call,
) -> sotto_status {
    // SAFETY: the same promises, passed on.
    unsafe { sotto_call_start_with_audio(config_json, std::ptr::null(), on_event, user_data, out) }
}

/// Starts a call like `sotto_call_start`, with the application's own audio: `audio->read`
/// (if not NULL) replaces the config's source and `audio->write` (if not NULL) its sink.
/// `audio` itself may be NULL. Files and devices are opened before anything is joined, so a
/// bad one fails here (SOTTO_ERR_IO).
///
/// Each call owns a tokio runtime (two worker threads) and an event thread; they stop when
/// the call is freed. The identity file (`identity`, default
/// `$XDG_CONFIG_HOME/sotto/identity.json`) is created if missing, and the peer is checked
/// against and pinned in `known_peers.json` next to it, as `sotto call` does.
///
/// Thread-safety: any thread. Ownership: `config_json` and `*audio` are read during the call
/// only; `*out` receives a handle the caller frees with `sotto_call_free`; both `user_data`
/// pointers must stay valid until `sotto_call_free` returns.
///
/// # Safety
/// `config_json` must be a NUL-terminated string; `audio` NULL or valid; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_start_with_audio(
    config_json: *const c_char,
    audio: *const sotto_audio_io,
    on_event: sotto_event_cb,
    user_data: *mut c_void,
    out: *mut *mut sotto_call,
) -> sotto_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        if config_json.is_null() {
            return Err(Failure::null("config_json"));
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(config_json) }
            .to_str()
            .map_err(|_| Failure::invalid("config_json is not UTF-8"))?;
        // SAFETY: the caller promises NULL or a valid sotto_audio_io.
        let audio = unsafe { audio.as_ref() }.copied();
        let call = start(text, audio, on_event, UserData(user_data))?;
        // SAFETY: `out` is non-NULL and the caller promises it is writable.
        unsafe { out.write(Box::into_raw(Box::new(call))) };
        Ok(())
    })
}

fn start(
    config: &str,
    audio: Option<sotto_audio_io>,
    on_event: sotto_event_cb,
    user_data: UserData,
) -> Result<sotto_call> {
    let options = CallOptions::from_json(config).map_err(options_failure)?;
    if options.chat || options.chat_json.is_some() {
        return Err(Failure::invalid(
            "chat and chat-json are for `sotto call`; use sotto_call_send_message and the \
             message events",
        ));
    }
    let read = audio.and_then(|a| a.read.map(|r| (r, a.user_data)));
    let write = audio.and_then(|a| a.write.map(|w| (w, a.user_data)));
    let source: Box<dyn AudioSource> = match read {
        Some((read, ud)) => Box::new(CallbackSource {
            read,
            user_data: UserData(ud),
            over: false,
        }),
        None => options.open_source().map_err(options_failure)?,
    };
    let sink: Box<dyn AudioSink> = match write {
        Some((write, ud)) => Box::new(CallbackSink {
            write,
            user_data: UserData(ud),
        }),
        None => options.open_sink().map_err(options_failure)?,
    };
    let video = options.open_video().map_err(options_failure)?;
    let loaded = options.load_identity().map_err(options_failure)?;
    let history = options
        .open_history(&loaded.path)
        .map_err(options_failure)?;
    let fingerprint = loaded.identity.public_key().fingerprint();
    let suite = options.config().suite;
    let mut builder = options.builder(loaded.identity, loaded.known_peers, source, sink, video);
    if let Some(history) = history {
        builder = builder.history(history);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sotto-call")
        .enable_all()
        .build()
        .map_err(|e| Failure::new(SOTTO_ERR_INTERNAL, format!("cannot start a runtime: {e}")))?;
    let call = {
        let _entered = runtime.enter();
        builder.start().map_err(|e| {
            let status = match e {
                engine::call::CallError::Invalid(_) => SOTTO_ERR_INVALID,
                engine::call::CallError::Identity(_) => SOTTO_ERR_IO,
                _ => SOTTO_ERR_INTERNAL,
            };
            Failure::new(status, e.to_string())
        })?
    };
    let shared = Arc::new(Shared::default());
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = std_mpsc::channel();
    let events_thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sotto-events".into())
            .spawn(move || deliver(events_rx, on_event, user_data, shared))
            .map_err(|e| Failure::new(SOTTO_ERR_INTERNAL, format!("cannot start a thread: {e}")))?
    };
    let events_thread_id = events_thread.thread().id();
    runtime.spawn(
        Driver {
            call,
            commands,
            events: events_tx,
            shared: Arc::clone(&shared),
            options,
            suite,
            fingerprint,
            peer: None,
            undecryptable: false,
        }
        .run(),
    );
    Ok(sotto_call {
        commands: commands_tx,
        shared,
        events_thread: Some(events_thread),
        events_thread_id,
        runtime: Some(runtime),
    })
}

/// The call behind a handle, or SOTTO_ERR_NULL.
///
/// # Safety
/// `call` must be NULL or a live handle.
unsafe fn handle<'a>(call: *mut sotto_call) -> Result<&'a sotto_call> {
    // SAFETY: as promised by the caller.
    unsafe { call.as_ref() }.ok_or_else(|| Failure::null("call"))
}

/// Tests only: makes the call's driver panic.
#[cfg(test)]
pub(crate) fn panic_driver_for_test(call: &sotto_call) {
    let _ = call.commands.send(Command::Panic);
}

fn ended_already() -> Failure {
    Failure::new(SOTTO_ERR_STATE, "the call has ended")
}

/// Mutes (sends silence; the peer is told) or unmutes our audio. SOTTO_ERR_STATE once the
/// call has ended.
///
/// Thread-safety: any thread, also from the event callback. Ownership: `call` stays the
/// caller's.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_set_muted(call: *mut sotto_call, muted: bool) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        if call.shared.final_stats().is_some() {
            return Err(ended_already());
        }
        call.commands
            .send(Command::Mute(muted))
            .map_err(|_| ended_already())
    })
}

/// Sends a text message to the peer: `len` bytes of UTF-8 at `text` (no NUL needed), 1 to
/// 4096 bytes. SOTTO_ERR_INVALID for an empty, oversize or non-UTF-8 text (nothing is sent),
/// SOTTO_ERR_STATE once the call has ended. The message's id comes with the `sent` event,
/// its acknowledgement with `delivered`; a message that cannot go out (the call is not
/// connected yet) gives an `error` event.
///
/// Thread-safety: any thread, also from the event callback. Ownership: `text` stays the
/// caller's (copied); `call` stays the caller's.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed; `text` readable for `len`
/// bytes (or NULL with `len` 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_send_message(
    call: *mut sotto_call,
    text: *const c_char,
    len: usize,
) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        if text.is_null() && len > 0 {
            return Err(Failure::null("text"));
        }
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: non-NULL and readable for `len` bytes, as promised by the caller.
            unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) }
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Failure::invalid("message is not valid UTF-8"))?;
        Conversation::check_text(text).map_err(|e| Failure::invalid(e.to_string()))?;
        if call.shared.final_stats().is_some() {
            return Err(ended_already());
        }
        call.commands
            .send(Command::SendMessage(zeroize::Zeroizing::new(
                text.to_owned(),
            )))
            .map_err(|_| ended_already())
    })
}

/// Sets the conversation's disappearing timer for the messages sent after it: `seconds` 5 to
/// 86400, or 0 for off (the peer is told; a `timer` event follows). SOTTO_ERR_INVALID for
/// any other value, SOTTO_ERR_STATE once the call has ended.
///
/// Thread-safety: any thread, also from the event callback. Ownership: `call` stays the
/// caller's.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_set_disappearing_timer(
    call: *mut sotto_call,
    seconds: u32,
) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        let secs = (seconds > 0).then_some(u64::from(seconds));
        let timer =
            DisappearingTimer::from_secs(secs).map_err(|e| Failure::invalid(e.to_string()))?;
        if call.shared.final_stats().is_some() {
            return Err(ended_already());
        }
        call.commands
            .send(Command::SetTimer(timer.ttl()))
            .map_err(|_| ended_already())
    })
}

/// Marks the peer or group member `name` (NUL-terminated UTF-8, as the events name it)
/// verified, once the people compared the safety code (or the group code) and it matched:
/// the identity key it proved in this call is pinned as verified in `known_peers.json`. A
/// `trust_changed` event follows, or an `error` event if nobody of that name has agreed keys
/// in this call. SOTTO_ERR_INVALID for a name that is not UTF-8, SOTTO_ERR_STATE once the
/// call has ended.
///
/// Thread-safety: any thread, also from the event callback. Ownership: `name` stays the
/// caller's (copied); `call` stays the caller's.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed; `name` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_verify(
    call: *mut sotto_call,
    name: *const c_char,
) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        if name.is_null() {
            return Err(Failure::null("name"));
        }
        // SAFETY: `name` is non-null and NUL-terminated, as promised.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| Failure::invalid("name is not UTF-8"))?;
        if call.shared.final_stats().is_some() {
            return Err(ended_already());
        }
        call.commands
            .send(Command::Verify(name.to_owned()))
            .map_err(|_| ended_already())
    })
}

/// Hangs up (if the call has not ended) and waits for the end: when it returns, the ended
/// event has been delivered. SOTTO_OK also if the call had already ended. Called from the
/// event callback it only asks for the hang-up (the ended event follows after the callback
/// returns).
///
/// Thread-safety: any thread. Ownership: `call` stays the caller's; free it afterwards.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_hang_up(call: *mut sotto_call) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        let _ = call.commands.send(Command::HangUp);
        if std::thread::current().id() != call.events_thread_id {
            call.shared.wait_delivered(None);
        }
        Ok(())
    })
}

/// Waits up to `timeout_ms` milliseconds for the call to end by itself (duration, peer
/// hang-up, failure): SOTTO_OK if it ended (its ended event has been delivered),
/// SOTTO_ERR_STATE if it still runs at the timeout. 0 only checks.
///
/// Thread-safety: any thread but the event callback's (where the end cannot come while it
/// waits). Ownership: `call` stays the caller's.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_wait(call: *mut sotto_call, timeout_ms: u32) -> sotto_status {
    guard(|| {
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        let timeout = if std::thread::current().id() == call.events_thread_id {
            Duration::ZERO
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        if call.shared.wait_delivered(Some(timeout)) {
            Ok(())
        } else {
            Err(Failure::new(
                SOTTO_ERR_STATE,
                format!("the call is still running after {timeout_ms} ms"),
            ))
        }
    })
}

/// Writes the call's current figures as a NUL-terminated JSON object (the keys of the stats
/// part of `sotto call --stats-json`) to `out` and its length, without the NUL, to
/// `*out_len`. If `out_cap < *out_len + 1`: SOTTO_ERR_BUFFER_TOO_SMALL with `*out_len` set.
/// After the end it gives the final figures. `out` may be NULL when `out_cap` is 0.
///
/// Thread-safety: any thread, also from the event callback. Ownership: the caller owns `out`.
///
/// # Safety
/// `call` must come from `sotto_call_start*` and not be freed; `out` NULL or writable for
/// `out_cap` bytes; `out_len` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_stats_json(
    call: *mut sotto_call,
    out: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> sotto_status {
    guard(|| {
        if out_len.is_null() {
            return Err(Failure::null("out_len"));
        }
        // SAFETY: as promised by the caller.
        let call = unsafe { handle(call) }?;
        // SAFETY: as promised by the caller.
        let out = unsafe { out_bytes(out.cast(), out_cap) }?;
        let stats = current_stats(call)?;
        let text = stats_value(&stats).to_string();
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { out_len.write(text.len()) };
        let Some(dst) = out.get_mut(..text.len() + 1) else {
            return Err(Failure::new(
                SOTTO_ERR_BUFFER_TOO_SMALL,
                format!(
                    "output buffer too small: needs {} bytes with the NUL, has {out_cap}",
                    text.len() + 1
                ),
            ));
        };
        let (body, nul) = dst.split_at_mut(text.len());
        body.copy_from_slice(text.as_bytes());
        nul.fill(0);
        Ok(())
    })
}

fn current_stats(call: &sotto_call) -> Result<CallStats> {
    if let Some(stats) = call.shared.final_stats() {
        return Ok(stats);
    }
    let (tx, rx) = oneshot::channel();
    if call.commands.send(Command::Stats(tx)).is_ok()
        && let Ok(stats) = rx.blocking_recv()
    {
        return Ok(stats);
    }
    // The driver ended meanwhile; it left the final figures.
    call.shared
        .final_stats()
        .ok_or_else(|| Failure::new(SOTTO_ERR_INTERNAL, "the call's figures are gone"))
}

/// Hangs up if needed, waits for the ended event to be delivered, stops the call's threads and
/// frees the handle. NULL is a no-op. No callback runs after it returns.
///
/// Thread-safety: any thread but the event callback's (there it would wait for itself: the
/// handle is then left alone and SOTTO_ERR_STATE set as the last error). Ownership: `call`
/// is invalid afterwards.
///
/// # Safety
/// `call` must be NULL or come from `sotto_call_start*`, freed only once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sotto_call_free(call: *mut sotto_call) {
    guard_value((), || {
        if call.is_null() {
            return;
        }
        // SAFETY: the caller promises a live handle.
        let on_event_thread = unsafe { &*call }.events_thread_id == std::thread::current().id();
        if on_event_thread {
            let _ = guard(|| {
                Err(Failure::new(
                    SOTTO_ERR_STATE,
                    "sotto_call_free called from the event callback; the call was not freed",
                ))
            });
            return;
        }
        // SAFETY: the caller gives back the box `sotto_call_start*` made.
        let mut call = unsafe { Box::from_raw(call) };
        let _ = call.commands.send(Command::HangUp);
        call.shared.wait_delivered(None);
        if let Some(thread) = call.events_thread.take() {
            let _ = thread.join();
        }
        if let Some(runtime) = call.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    })
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn group_events_have_their_documented_json() {
        let code = event_json(&CallEvent::GroupSafetyCode {
            code: "0421 7736".into(),
            members: vec!["bob".into(), "carol".into()],
            changed: true,
        });
        assert_eq!(
            code,
            Some(json!({"event": "group_safety_code", "code": "0421 7736",
                "members": ["bob", "carol"], "changed": true}))
        );
        let left = event_json(&CallEvent::ParticipantLeft { name: "bob".into() });
        assert_eq!(
            left,
            Some(json!({"event": "participant_left", "name": "bob"}))
        );
        let speaking = event_json(&CallEvent::Speaking {
            name: "carol".into(),
            speaking: false,
        });
        assert_eq!(
            speaking,
            Some(json!({"event": "speaking", "name": "carol", "speaking": false}))
        );
    }
}
