//! Untrusted handshake messages into both roles at every stage: errors, never panics.
//!
//! The first byte picks how far an honest exchange runs before the fuzzed message is fed to
//! the side whose turn it is.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sotto::handshake::{DtlsFingerprint, Handshake, Identity};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

fn ids() -> &'static (Arc<Identity>, Arc<Identity>) {
    static IDS: OnceLock<(Arc<Identity>, Arc<Identity>)> = OnceLock::new();
    IDS.get_or_init(|| {
        (
            Arc::new(Identity::from_seed(&[1; 32]).unwrap()),
            Arc::new(Identity::from_seed(&[2; 32]).unwrap()),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&stage, msg)) = data.split_first() else {
        return;
    };
    let (alice, bob) = ids();
    let (mut a, hello) = Handshake::initiator(alice.clone(), "room", "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob.clone(), "room", "bob", &DTLS_R).unwrap();
    match stage % 4 {
        0 => {
            let _ = b.handle(msg);
        }
        1 => {
            let _ = a.handle(msg);
        }
        2 => {
            let reply = b.handle(&hello).unwrap().send.unwrap();
            let _ = a.handle(&reply).unwrap();
            let _ = b.handle(msg);
        }
        _ => {
            let reply = b.handle(&hello).unwrap().send.unwrap();
            let reveal = a.handle(&reply).unwrap().send.unwrap();
            let _ = b.handle(&reveal).unwrap();
            let _ = a.handle(msg);
        }
    }
});
