//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// Share of `x`'s power at `freq` (Goertzel), 0..=1. A clean tone at `freq` gives ~1.
pub fn tone_ratio(x: &[f32], rate: f64, freq: f64) -> f64 {
    sotto::media::tone_share(x, rate, freq)
}

/// The strongest frequency in `x` among `candidates` (Hz).
pub fn dominant(x: &[f32], rate: f64, candidates: impl Iterator<Item = f64>) -> f64 {
    candidates
        .map(|f| (f, tone_ratio(x, rate, f)))
        .fold((0.0, -1.0), |a, b| if b.1 > a.1 { b } else { a })
        .0
}

/// Whether tests must have real devices (CI, or `SOTTO_REQUIRE_DEVICES=1`).
pub fn devices_required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("SOTTO_REQUIRE_DEVICES").is_ok_and(|v| v == "1")
}

/// Prints a skip notice past the test harness' output capture, so it shows in a normal run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (run scripts/test for real devices; CI or SOTTO_REQUIRE_DEVICES=1 makes this a failure)"
    );
}
