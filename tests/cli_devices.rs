//! The `sotto devices` command.

mod common;

use std::process::Command;

#[test]
fn devices_lists_the_default_pulse_device() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("devices")
        .output()
        .expect("run sotto devices");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // Enumeration tries every PCM ALSA knows (absent cards, OSS, JACK): none of the sound
    // libraries' own complaints reach the user.
    let err = String::from_utf8_lossy(&out.stderr);
    for noise in ["ALSA lib", "jack", "Jack", "Cannot connect to server"] {
        assert!(!err.contains(noise), "library noise on stderr: {err}");
    }
    // One line per direction, not one per sample format.
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        assert!(
            !(pair[0].starts_with("  input:") && pair[1].starts_with("  input:")),
            "{text}"
        );
    }
    if common::devices_required() {
        assert!(text.contains("id: alsa:default"), "{text}");
        assert!(text.contains("[default input, default output]"), "{text}");
        assert!(
            text.contains("input:") && text.contains("output:"),
            "{text}"
        );
    } else {
        eprintln!("device list (not required here):\n{text}");
    }
}

#[test]
fn json_lists_every_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["devices", "--json"])
        .output()
        .expect("run sotto devices --json");
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON array");
    let list = list.as_array().expect("an array");
    if !common::devices_required() {
        return;
    }
    let default = list
        .iter()
        .find(|d| d["id"] == "alsa:default")
        .unwrap_or_else(|| panic!("no alsa:default in {list:?}"));
    assert_eq!(default["default_input"], true, "{default}");
    for dir in ["inputs", "outputs"] {
        let ranges = default[dir].as_array().expect("ranges");
        // Pulse's default PCM takes mono at 48 kHz in f32 (what a call asks for).
        assert!(
            ranges.iter().any(|r| r["format"] == "f32"
                && r["min_channels"].as_u64() <= Some(1)
                && r["min_rate_hz"].as_u64() <= Some(48_000)
                && r["max_rate_hz"].as_u64() >= Some(48_000)),
            "{dir}: {ranges:?}"
        );
    }
}

#[test]
fn bad_flags_are_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["devices", "--inputs", "--outputs"])
        .output()
        .expect("run sotto devices");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
