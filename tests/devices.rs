//! Real devices: play a tone on the output device and capture it back through the input
//! device (scripts/test starts a PulseAudio null sink whose monitor is the default source).

mod common;

/// The device tests share one sound server; one at a time.
static DEVICES: std::sync::Mutex<()> = std::sync::Mutex::new(());

use std::time::{Duration, Instant};

use sotto::media::{
    AudioSink, AudioSource, DeviceEvent, DeviceSink, DeviceSource, ToneSource, dbfs,
};

#[test]
fn tone_loops_back_through_real_devices() {
    let _one = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let (sink, source) = match (DeviceSink::open(None), DeviceSource::open(None)) {
        (Ok(s), Ok(r)) => (s, r),
        (s, r) => {
            let why = [
                s.err().map(|e| e.to_string()),
                r.err().map(|e| e.to_string()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            if common::devices_required() {
                panic!("audio devices required (CI or SOTTO_REQUIRE_DEVICES=1) but: {why}");
            }
            eprintln!(
                "SKIPPED tone_loops_back_through_real_devices: no audio device ({why}); run scripts/test for real devices"
            );
            return;
        }
    };
    let mut source = source;
    eprintln!(
        "output {} {:?}, input {} {:?}",
        sink.name(),
        sink.native_format(),
        source.name(),
        source.native_format()
    );
    let player = std::thread::spawn(move || {
        let mut sink = sink;
        let mut tone = ToneSource::new(1000.0, 0.5);
        let mut frame = [0.0f32; 480];
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            tone.read_frame(&mut frame).unwrap();
            sink.write_frame(&frame).unwrap();
        }
        sink.take_events()
    });
    let mut captured = Vec::new();
    let mut frame = [0.0f32; 480];
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        assert!(source.read_frame(&mut frame).unwrap());
        captured.extend_from_slice(&frame);
    }
    let sink_events = player.join().unwrap();
    // Judge the last second frame by frame: a loaded machine may glitch a frame or two (an
    // underrun in the sound server), which must not fail the test; a missing or wrong tone must.
    let tail = &captured[captured.len().saturating_sub(48_000)..];
    let frames = tail.chunks_exact(960).count();
    let good = tail
        .chunks_exact(960)
        .filter(|f| common::tone_ratio(f, 48_000.0, 1000.0) > 0.9 && dbfs(f) > -20.0)
        .count();
    let ratio = common::tone_ratio(tail, 48_000.0, 1000.0);
    let level = dbfs(tail);
    eprintln!(
        "captured {} samples, {good}/{frames} clean 1 kHz frames, 1 kHz share {ratio:.3}, \
         level {level:.1} dBFS, events in {:?} out {:?}",
        captured.len(),
        source.take_events(),
        sink_events
    );
    assert!(good * 10 >= frames * 7, "{good}/{frames} clean frames");
    let last = source.last_callback().expect("input callbacks ran");
    assert!(last.elapsed() < Duration::from_secs(1));
    assert!(level > -20.0, "level {level} dBFS");
}

#[test]
fn missing_named_device_is_a_clear_error() {
    let _one = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let err = DeviceSource::open(Some("no-such-device-xyz"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-device-xyz"), "{err}");
    assert!(err.contains("--input file.wav"), "{err}");
    assert!(err.contains("Available input devices"), "{err}");
}

/// Runs `pactl` against the test PulseAudio; false when it is not there.
fn pactl(args: &[&str]) -> bool {
    std::process::Command::new("pactl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_device_that_stops_mid_call_yields_silence_and_an_event() {
    let _one = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    // Needs the scripts/pulse server (its null sink is called "sotto") to pull the plug.
    if std::env::var_os("PULSE_SERVER").is_none() || !pactl(&["info"]) {
        if common::devices_required() {
            panic!("devices required but no PulseAudio server from scripts/pulse (PULSE_SERVER)");
        }
        common::skip(
            "a_device_that_stops_mid_call_yields_silence_and_an_event",
            "no scripts/pulse server",
        );
        return;
    }
    let mut source = DeviceSource::open(None).expect("input device");
    let mut frame = [0.0f32; 480];
    for _ in 0..20 {
        assert!(source.read_frame(&mut frame).unwrap());
    }
    assert!(pactl(&["suspend-sink", "sotto", "1"]), "pactl suspend-sink");
    let start = Instant::now();
    let mut events = Vec::new();
    let mut reads = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        // Never an error, never a hang: silence stands in for the missing audio.
        assert!(source.read_frame(&mut frame).unwrap());
        reads += 1;
        events.extend(source.take_events());
    }
    assert!(pactl(&["suspend-sink", "sotto", "0"]), "pactl resume");
    let again = Instant::now();
    while again.elapsed() < Duration::from_millis(1500) {
        assert!(source.read_frame(&mut frame).unwrap());
        events.extend(source.take_events());
    }
    eprintln!("{reads} reads while suspended; events {events:?}");
    // Paced at about one frame per 10 ms while stalled, not one per stall timeout.
    assert!(reads > 50, "{reads} reads in 1.5 s");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DeviceEvent::Stalled { .. } | DeviceEvent::Failed { .. })),
        "{events:?}"
    );
}
