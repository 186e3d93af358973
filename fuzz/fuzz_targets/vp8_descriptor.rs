//! Untrusted VP8 payload descriptors (RFC 7741): typed errors, never panics, and what parses
//! leaves at least one frame byte after the descriptor.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::transport::parse_vp8_descriptor;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = parse_vp8_descriptor(data) {
        // X, the extension byte, a 15-bit picture ID, TL0PICIDX, TID/KEYIDX: six at most.
        assert!(d.len >= 1 && d.len <= 6, "{d:?}");
        assert!(d.len < data.len());
    }
});
