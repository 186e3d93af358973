//! Calls through the C ABI: bad configs, and a real call against an engine peer through an
//! in-process signaling server, with audio callbacks written as C would write them.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use engine::call::{CallBuilder, CallEvent, CallState};
use engine::media::{AudioSink, MediaError, ToneSource};
use serde_json::Value;

use super::last_error;
use crate::sotto_status::*;
use crate::*;

/// A fresh directory for one test's identity files.
fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sotto-ffi-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(config: &str) -> (crate::sotto_status, *mut sotto_call) {
    let config = CString::new(config).unwrap();
    let mut call = null_mut();
    // SAFETY: a NUL-terminated config and a writable out pointer.
    let status = unsafe { sotto_call_start(config.as_ptr(), None, null_mut(), &mut call) };
    (status, call)
}

#[test]
fn bad_configs_are_refused_before_anything_starts() {
    let dir = temp_dir("bad");
    let id = dir.join("identity.json");
    let id = id.to_str().unwrap();
    for (config, status, says) in [
        ("{", SOTTO_ERR_INVALID, "call options"),
        ("[]", SOTTO_ERR_INVALID, "call options"),
        (
            r#"{"server":"ws://127.0.0.1:9/ws","room":"r","tone":440,"speaker":true}"#,
            SOTTO_ERR_INVALID,
            "unknown field `speaker`",
        ),
        (
            r#"{"server":"http://127.0.0.1:9/ws","room":"r","tone":440}"#,
            SOTTO_ERR_INVALID,
            "ws://",
        ),
        (
            r#"{"server":"ws://127.0.0.1:9/ws","room":"r","tone":1}"#,
            SOTTO_ERR_INVALID,
            "tone must be 20-20000 Hz",
        ),
        (
            r#"{"server":"ws://127.0.0.1:9/ws","room":"r","duration":-1,"tone":440}"#,
            SOTTO_ERR_INVALID,
            "duration",
        ),
        (
            r#"{"server":"ws://127.0.0.1:9/ws","room":"r","tone":"loud"}"#,
            SOTTO_ERR_INVALID,
            "call options",
        ),
        (
            r#"{"server":"ws://127.0.0.1:9/ws","room":"r","tone":440,"chat":true}"#,
            SOTTO_ERR_INVALID,
            "sotto_call_send_message",
        ),
    ] {
        let (got, call) = start(config);
        assert_eq!(got, status, "{config}: {}", last_error());
        assert!(call.is_null());
        assert!(last_error().contains(says), "{config}: {}", last_error());
    }
    // A WAV file that is not there: an I/O failure, and no identity was created.
    let missing = dir.join("missing.wav");
    let config = format!(
        r#"{{"server":"ws://127.0.0.1:9/ws","room":"r","input":{:?},"identity":{id:?}}}"#,
        missing.to_str().unwrap()
    );
    let (got, call) = start(&config);
    assert_eq!(got, SOTTO_ERR_IO, "{}", last_error());
    assert!(call.is_null());
    assert!(last_error().contains("--input"), "{}", last_error());
    assert!(!std::path::Path::new(id).exists());

    // NULL arguments.
    let config = CString::new("{}").unwrap();
    // SAFETY: NULLs are the point; the rest is valid.
    unsafe {
        let mut call = null_mut();
        assert_eq!(
            sotto_call_start(null(), None, null_mut(), &mut call),
            SOTTO_ERR_NULL
        );
        assert_eq!(
            sotto_call_start(config.as_ptr(), None, null_mut(), null_mut()),
            SOTTO_ERR_NULL
        );
        assert_eq!(sotto_call_hang_up(null_mut()), SOTTO_ERR_NULL);
        assert_eq!(sotto_call_wait(null_mut(), 0), SOTTO_ERR_NULL);
        assert_eq!(sotto_call_set_muted(null_mut(), true), SOTTO_ERR_NULL);
        let mut len = 0;
        assert_eq!(
            sotto_call_stats_json(null_mut(), null_mut(), 0, &mut len),
            SOTTO_ERR_NULL
        );
        sotto_call_free(null_mut());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the application side of the test keeps: the events and the audio it was given.
#[derive(Default)]
struct App {
    events: Mutex<Vec<Value>>,
    events_cv: Condvar,
    heard: Mutex<Vec<f32>>,
    /// Phase of the tone the read callback produces.
    phase: Mutex<f64>,
}

const ALICE_HZ: f64 = 660.0;
const BOB_HZ: f64 = 440.0;

impl App {
    /// Waits until an event satisfies `pred`; panics after a generous timeout.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut events = self.events.lock().unwrap();
        while !pred(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what}; events: {events:?}");
            events = self.events_cv.wait_timeout(events, left).unwrap().0;
        }
    }
}

fn has(events: &[Value], event: &str, key: &str, value: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && e[key].as_str() == Some(value))
}

unsafe extern "C" fn on_event(user_data: *mut c_void, json: *const c_char) {
    // SAFETY: user_data is the test's App, alive until sotto_call_free returned; json is a
    // NUL-terminated string valid during this call.
    let (app, text) = unsafe { (&*(user_data as *const App), CStr::from_ptr(json)) };
    let value: Value = serde_json::from_str(text.to_str().unwrap()).unwrap();
    app.events.lock().unwrap().push(value);
    app.events_cv.notify_all();
}

unsafe extern "C" fn read_audio(user_data: *mut c_void, frame: *mut f32, samples: usize) -> usize {
    // SAFETY: as above; frame holds `samples` writable floats.
    let (app, frame) = unsafe {
        (
            &*(user_data as *const App),
            std::slice::from_raw_parts_mut(frame, samples),
        )
    };
    let mut phase = app.phase.lock().unwrap();
    for s in frame.iter_mut() {
        *s = (0.3 * phase.sin()) as f32;
        *phase += std::f64::consts::TAU * ALICE_HZ / 48_000.0;
    }
    *phase %= std::f64::consts::TAU;
    samples
}

unsafe extern "C" fn write_audio(user_data: *mut c_void, frame: *const f32, samples: usize) {
    // SAFETY: as above; frame holds `samples` readable floats.
    let (app, frame) = unsafe {
        (
            &*(user_data as *const App),
            std::slice::from_raw_parts(frame, samples),
        )
    };
    app.heard.lock().unwrap().extend_from_slice(frame);
}

/// Bob's speaker: keeps what it plays.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<f32>>>);

impl AudioSink for Capture {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        self.0.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
}

fn assert_hears(heard: &[f32], hz: f64, who: &str) {
    // The last second: well after set-up, before the hang-up.
    let tail = &heard[heard.len().saturating_sub(48_000)..];
    assert!(
        tail.len() >= 24_000,
        "{who} heard only {} samples",
        tail.len()
    );
    let dominant = engine::media::dominant_hz(tail, 48_000.0);
    let share = engine::media::tone_share(tail, 48_000.0, hz);
    assert!(
        (dominant - hz).abs() <= 5.0 && share > 0.3,
        "{who}: expected {hz} Hz, strongest is {dominant} Hz, share {share:.3}"
    );
}

fn stats_json(call: *mut sotto_call) -> Value {
    let mut len = 0usize;
    // SAFETY: a live call; NULL with capacity 0 asks for the size.
    let status = unsafe { sotto_call_stats_json(call, null_mut(), 0, &mut len) };
    assert_eq!(status, SOTTO_ERR_BUFFER_TOO_SMALL);
    let mut buf = vec![0u8; len + 1];
    let mut len2 = 0usize;
    // SAFETY: a live call and a buffer of len + 1 bytes.
    let status =
        unsafe { sotto_call_stats_json(call, buf.as_mut_ptr().cast(), buf.len(), &mut len2) };
    assert_eq!(status, SOTTO_OK, "{}", last_error());
    assert_eq!(buf[len2], 0, "NUL-terminated");
    serde_json::from_slice(&buf[..len2]).unwrap()
}

#[test]
fn a_call_through_the_c_abi_talks_to_an_engine_peer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let app =
            sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown.clone());
        tokio::spawn(sotto_signaling::serve(listener, app));
        url
    });

    // Alice: through the C ABI, with her audio from and to the callbacks.
    let dir = temp_dir("call");
    let identity = dir.join("alice.json");
    let config = CString::new(
        serde_json::json!({
            "server": url,
            "room": "ffi-call",
            "name": "alice",
            "identity": identity,
            "bind": ["127.0.0.1:0"],
        })
        .to_string(),
    )
    .unwrap();
    let app = Box::new(App::default());
    let app_ptr = (&*app as *const App).cast_mut().cast::<c_void>();
    let audio = sotto_audio_io {
        read: Some(read_audio),
        write: Some(write_audio),
        user_data: app_ptr,
    };
    let mut alice = null_mut();
    // SAFETY: valid config, audio, callback and out pointer; `app` outlives the call.
    let status = unsafe {
        sotto_call_start_with_audio(config.as_ptr(), &audio, Some(on_event), app_ptr, &mut alice)
    };
    assert_eq!(status, SOTTO_OK, "{}", last_error());
    assert!(identity.exists(), "the identity file was created");
    app.wait_for("waiting_for_peer", |e| {
        has(e, "state", "state", "waiting_for_peer")
    });

    // Bob: the engine, with a tone, joining second.
    let bob_heard = Capture::default();
    let bob = {
        let _entered = rt.enter();
        CallBuilder::new(url.clone(), "ffi-call")
            .name("bob")
            .source(ToneSource::new(BOB_HZ, 0.3))
            .sink(bob_heard.clone())
            .start()
            .unwrap()
    };
    let bob_task = rt.spawn(async move {
        let mut bob = bob;
        let mut safety = None;
        let mut states = Vec::new();
        let mut texts = Vec::new();
        while let Some(event) = bob.next_event().await {
            match event {
                CallEvent::SafetyCode(p) => safety = Some(p.safety_code),
                CallEvent::State(s) => states.push(s),
                CallEvent::Chat(engine::messages::ChatEvent::Message(m)) => {
                    texts.push((m.text.get().unwrap().to_string(), m.ttl.secs()));
                }
                CallEvent::Ended { reason, .. } => return (safety, states, reason, texts),
                _ => {}
            }
        }
        panic!("bob's events stopped without an end");
    });

    app.wait_for("connected", |e| has(e, "state", "state", "connected"));
    app.wait_for("first_audio", |e| {
        e.iter().any(|e| e["event"] == "first_audio")
    });
    // Talk until each side has played two seconds of the other.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.heard.lock().unwrap().len() < 96_000 || bob_heard.0.lock().unwrap().len() < 96_000 {
        assert!(Instant::now() < deadline, "the audio did not flow");
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = stats_json(alice);
    assert!(live["frames_sent"].as_u64().unwrap() > 50, "{live}");
    assert!(live["frames_decrypted"].as_u64().unwrap() > 50, "{live}");
    // Messages: refused texts and timers return at once; good ones reach Bob, acknowledged.
    let too_long = vec![b'x'; 4097];
    // SAFETY: a live call; the buffers are readable for the lengths given.
    unsafe {
        assert_eq!(
            sotto_call_send_message(alice, too_long.as_ptr().cast(), too_long.len()),
            SOTTO_ERR_INVALID
        );
        assert_eq!(
            sotto_call_send_message(alice, b"\xff\xfe".as_ptr().cast(), 2),
            SOTTO_ERR_INVALID
        );
        assert_eq!(sotto_call_send_message(alice, null(), 0), SOTTO_ERR_INVALID);
        assert_eq!(
            sotto_call_set_disappearing_timer(alice, 4),
            SOTTO_ERR_INVALID
        );
        assert_eq!(sotto_call_set_disappearing_timer(alice, 30), SOTTO_OK);
        let text = "hello from C";
        assert_eq!(
            sotto_call_send_message(alice, text.as_ptr().cast(), text.len()),
            SOTTO_OK,
            "{}",
            last_error()
        );
    }
    app.wait_for("timer", |e| {
        e.iter()
            .any(|e| e["event"] == "timer" && e["ttl_s"] == 30 && e["from"] == "alice")
    });
    app.wait_for("sent", |e| {
        e.iter()
            .any(|e| e["event"] == "sent" && e["text"] == "hello from C" && e["ttl_s"] == 30)
    });
    app.wait_for("delivered", |e| {
        e.iter()
            .any(|e| e["event"] == "delivered" && e["to"] == "bob")
    });
    // Alice compared the codes with Bob: she marks him verified. Nobody else is in the call.
    // SAFETY: a live call; the names are NUL-terminated.
    unsafe {
        assert_eq!(sotto_call_verify(alice, null()), SOTTO_ERR_NULL);
        assert_eq!(sotto_call_verify(alice, c"mallory".as_ptr()), SOTTO_OK);
        assert_eq!(sotto_call_verify(alice, c"Bob".as_ptr()), SOTTO_OK);
    }
    app.wait_for("trust_changed", |e| {
        e.iter().any(|e| {
            e["event"] == "trust_changed" && e["name"] == "bob" && e["trust"] == "verified"
        })
    });
    assert!(
        app.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "error"
                && e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("\"mallory\" is not in this call")),
        "verifying a stranger says why"
    );
    let pins: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("known_peers.json")).unwrap())
            .unwrap();
    assert!(pins.to_string().contains("\"verified\":true"), "{pins}");
    // SAFETY: a live call.
    assert_eq!(unsafe { sotto_call_set_muted(alice, true) }, SOTTO_OK);
    // SAFETY: a live call.
    assert_eq!(
        unsafe { sotto_call_wait(alice, 0) },
        SOTTO_ERR_STATE,
        "still running"
    );

    // SAFETY: a live call.
    assert_eq!(
        unsafe { sotto_call_hang_up(alice) },
        SOTTO_OK,
        "{}",
        last_error()
    );
    // The ended event has been delivered when hang_up returns, and it is the last.
    let events = app.events.lock().unwrap().clone();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "ended", "{events:?}");
    assert_eq!(last["reason"], "hung up");
    assert_eq!(last["ok"], true);
    assert!(last["stats"]["frames_sent"].as_u64().unwrap() > 50);
    assert!(last["stats"]["muted"].as_bool().unwrap());

    let (bob_safety, bob_states, bob_reason, bob_texts) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), bob_task).await })
        .expect("bob's call ends after alice hangs up")
        .unwrap();
    assert!(bob_states.contains(&CallState::Connected));
    assert_eq!(bob_reason.to_string(), "the peer hung up");
    assert_eq!(bob_texts, [("hello from C".to_string(), Some(30))]);

    // Both sides show the same safety code; Alice's event says who Bob is.
    let safety = events
        .iter()
        .find(|e| e["event"] == "safety_code")
        .expect("a safety_code event");
    assert_eq!(safety["safety_code"].as_str(), bob_safety.as_deref());
    assert_eq!(safety["peer_name"], "bob");
    assert_eq!(safety["trust"], "new");
    assert_eq!(safety["mixed_script"], false);
    assert_eq!(safety["peer_identity"].as_str().unwrap().len(), 64);
    // Stats events carry the CallStats fields.
    let stats = events
        .iter()
        .find(|e| e["event"] == "stats")
        .expect("stats");
    assert!(stats.get("loss_percent").is_some() && stats.get("rtt_ms").is_some());

    // Each heard the other's tone: Bob the one Alice's read callback made.
    assert_hears(&bob_heard.0.lock().unwrap(), ALICE_HZ, "bob");
    assert_hears(&app.heard.lock().unwrap(), BOB_HZ, "alice (write callback)");

    // After the end: waiting succeeds, muting is refused, the final figures remain.
    // SAFETY: a live (ended) call.
    unsafe {
        assert_eq!(sotto_call_wait(alice, 0), SOTTO_OK);
        assert_eq!(sotto_call_hang_up(alice), SOTTO_OK);
        assert_eq!(sotto_call_set_muted(alice, false), SOTTO_ERR_STATE);
        assert_eq!(sotto_call_verify(alice, c"bob".as_ptr()), SOTTO_ERR_STATE);
        assert_eq!(
            sotto_call_send_message(alice, b"late".as_ptr().cast(), 4),
            SOTTO_ERR_STATE
        );
    }
    assert_eq!(stats_json(alice), last["stats"]);
    // Bob was pinned next to Alice's identity, as `sotto call` does.
    assert!(dir.join("known_peers.json").exists());
    // SAFETY: freed once; no callback runs after this.
    unsafe { sotto_call_free(alice) };
    let delivered = app.events.lock().unwrap().len();
    assert_eq!(delivered, events.len());
    drop(app);
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts Alice with callbacks on `app` and the given config; panics on failure.
fn start_with_events(config: &serde_json::Value, app: &App) -> *mut sotto_call {
    let config = CString::new(config.to_string()).unwrap();
    let app_ptr = (app as *const App).cast_mut().cast::<c_void>();
    let mut call = null_mut();
    // SAFETY: valid config, callback and out pointer; `app` outlives the call.
    let status = unsafe { sotto_call_start(config.as_ptr(), Some(on_event), app_ptr, &mut call) };
    assert_eq!(status, SOTTO_OK, "{}", last_error());
    call
}

#[test]
fn a_failed_call_ends_by_itself_with_ok_false() {
    let dir = temp_dir("fail");
    let app = Box::new(App::default());
    // Nothing listens on port 9 of loopback (discard): joining fails.
    let call = start_with_events(
        &serde_json::json!({
            "server": "ws://127.0.0.1:9/ws",
            "room": "nobody",
            "tone": 440,
            "output": dir.join("out.wav"),
            "identity": dir.join("id.json"),
        }),
        &app,
    );
    // SAFETY: a live call.
    assert_eq!(
        unsafe { sotto_call_wait(call, 60_000) },
        SOTTO_OK,
        "{}",
        last_error()
    );
    let events = app.events.lock().unwrap().clone();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "ended", "{events:?}");
    assert_eq!(last["ok"], false);
    assert!(
        last["reason"].as_str().unwrap().contains("signaling"),
        "{last}"
    );
    // SAFETY: freed once.
    unsafe { sotto_call_free(call) };
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_panic_inside_the_call_ends_it_without_crossing_the_boundary() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let app =
            sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown.clone());
        tokio::spawn(sotto_signaling::serve(listener, app));
        url
    });
    let dir = temp_dir("panic");
    let app = Box::new(App::default());
    let call = start_with_events(
        &serde_json::json!({
            "server": url,
            "room": "alone",
            "tone": 440,
            "output": dir.join("out.wav"),
            "identity": dir.join("id.json"),
        }),
        &app,
    );
    app.wait_for("waiting_for_peer", |e| {
        has(e, "state", "state", "waiting_for_peer")
    });
    // SAFETY: a live call.
    crate::call::panic_driver_for_test(unsafe { &*call });
    // SAFETY: a live call.
    assert_eq!(
        unsafe { sotto_call_wait(call, 60_000) },
        SOTTO_OK,
        "{}",
        last_error()
    );
    let events = app.events.lock().unwrap().clone();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "ended", "{events:?}");
    assert_eq!(last["ok"], false);
    assert!(last["reason"].as_str().unwrap().contains("internal error"));
    // SAFETY: a live (ended) call.
    unsafe {
        assert_eq!(sotto_call_set_muted(call, true), SOTTO_ERR_STATE);
        let mut len = 0;
        assert_eq!(
            sotto_call_stats_json(call, null_mut(), 0, &mut len),
            SOTTO_ERR_BUFFER_TOO_SMALL
        );
        assert!(len > 2);
        sotto_call_free(call);
    }
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_duration_hangs_up_by_itself_and_the_report_is_written() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let app =
            sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown.clone());
        tokio::spawn(sotto_signaling::serve(listener, app));
        url
    });
    let dir = temp_dir("duration");
    let report = dir.join("report.json");
    let app = Box::new(App::default());
    let call = start_with_events(
        &serde_json::json!({
            "server": url,
            "room": "short",
            "name": "carol",
            "tone": 440,
            "output": dir.join("out.wav"),
            "identity": dir.join("id.json"),
            "duration": 0.5,
            "stats-json": report,
        }),
        &app,
    );
    // SAFETY: a live call.
    assert_eq!(
        unsafe { sotto_call_wait(call, 60_000) },
        SOTTO_OK,
        "{}",
        last_error()
    );
    let events = app.events.lock().unwrap().clone();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "ended", "{events:?}");
    // Nobody joined: the duration ran out before media connected, a failed call.
    assert_eq!(last["reason"], "media never connected: no peer joined");
    assert_eq!(last["ok"], false);
    // The same report as `sotto call --stats-json` writes.
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["e2ee"], true);
    assert_eq!(written["room"], "short");
    assert_eq!(written["name"], "carol");
    assert_eq!(written["ended"], "media never connected: no peer joined");
    assert_eq!(written["safety_code"], Value::Null);
    assert!(written.get("frames_sent").is_some());
    // SAFETY: freed once.
    unsafe { sotto_call_free(call) };
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
