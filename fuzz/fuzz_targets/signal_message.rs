//! Untrusted signaling messages, both directions: classified errors, never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::signal::protocol::{ServerMessage, parse_client_message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = parse_client_message(text) {
        // What parses re-serialises and parses again to the same message.
        let again = serde_json::to_string(&msg).unwrap();
        assert!(parse_client_message(&again).is_ok(), "{again}");
    }
    let _ = ServerMessage::parse(text);
});
