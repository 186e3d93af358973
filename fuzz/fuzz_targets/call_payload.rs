//! Untrusted call-protocol input: signaling payloads from the peer and sealed control-channel
//! frames. Typed errors, never panics; what parses re-serialises to something that parses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::call::{ControlCrypto, ControlMessage, IncomingSignal, OutgoingSignal, parse_signal};
use sotto::handshake::{CallKeys, Direction, DirectionKey};
use sotto::sframe::CipherSuite;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(msg) = parse_signal(text)
    {
        let again = match &msg {
            IncomingSignal::Offer(sdp) => serde_json::to_string(&OutgoingSignal::Offer { sdp }),
            IncomingSignal::Answer(sdp) => serde_json::to_string(&OutgoingSignal::Answer { sdp }),
            IncomingSignal::Handshake(bytes) => {
                let raw = serde_json::value::RawValue::from_string(
                    String::from_utf8(bytes.clone()).unwrap(),
                )
                .unwrap();
                serde_json::to_string(&OutgoingSignal::Handshake { message: &raw })
            }
        }
        .unwrap();
        assert_eq!(parse_signal(&again).unwrap(), msg);
    }
    let _ = ControlMessage::parse(data);
    let keys = CallKeys {
        send: DirectionKey::from_bytes([1; 32], Direction::InitiatorToResponder),
        recv: DirectionKey::from_bytes([2; 32], Direction::ResponderToInitiator),
    };
    let mut control = ControlCrypto::new(CipherSuite::AesGcm128Sha256, &keys).unwrap();
    assert!(control.open(data).is_err() || data.len() > 17);
});
