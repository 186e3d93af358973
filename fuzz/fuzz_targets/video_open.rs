//! Sealed video frames into `open_video_in_place` with a receiver that holds the key.
//!
//! Round trip: a fuzzer-chosen VP8-like frame is sealed, then fuzzer-chosen bytes of the wire
//! frame are XORed. If any byte changed, it must not open (and the receiver must then still
//! open the genuine frame); if none did, it opens to the input, and a replay is refused.
//! The raw input is also opened as a wire frame: it may open only if it is a genuine sealing,
//! i.e. sealing what it opened to under its own counter gives back exactly the input.
//!
//! Input: `[suite][flips][kid][kid shift][ctr: u32 LE][flips x (pos: u16 LE, xor)][frame]`.
//! With `SOTTO_FUZZ_SEEDS=<dir>` set, the binary writes starting inputs into `<dir>` and exits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{open_video_in_place, seal_video, video_clear_prefix_len};

const KEY: &[u8] = b"video fuzzing base key";
const FIXED: usize = 8;

fn receiver(suite: CipherSuite, kid: u64) -> ReceiverContext {
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, kid, KEY).unwrap();
    rx
}

fn open(rx: &mut ReceiverContext, wire: &[u8]) -> Option<(Option<u64>, Vec<u8>)> {
    let mut buf = wire.to_vec();
    open_video_in_place(&mut buf, |m, p| rx.decrypt_in_place(m, p))
        .ok()
        .map(|o| (o.header.map(|h| h.ctr), o.vp8.to_vec()))
}

fn write_seeds(dir: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let key = [0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x00, 0x30, 0x00];
    let frames: [&[u8]; 4] = [
        &key,
        &[0x31, 0x15, 0x00, 1, 2, 3, 4],
        &[0x51, 0x15, 0x00],
        &[],
    ];
    for (i, frame) in frames.iter().enumerate() {
        for flips in [0u8, 1, 2] {
            let mut seed = vec![i as u8, flips, 7, 20, 5, 0, 0, 0];
            for f in 0..flips {
                seed.extend_from_slice(&[3 * f, 0, 0x01]);
            }
            seed.extend_from_slice(frame);
            std::fs::write(format!("{dir}/seed-{i}-{flips}"), seed).unwrap();
        }
    }
    // Genuine sealings as raw input (the raw check's success path).
    let suite = CipherSuite::ALL[0];
    let mut tx = SenderContext::new(suite, 7 << 20, KEY).unwrap();
    for (i, frame) in frames[..3].iter().enumerate() {
        let wire = seal_video(&mut tx, frame).unwrap();
        std::fs::write(format!("{dir}/seed-wire-{i}"), wire.as_bytes()).unwrap();
    }
}

fuzz_target!(
    init: {
        if let Ok(dir) = std::env::var("SOTTO_FUZZ_SEEDS") {
            write_seeds(&dir);
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        if data.len() < FIXED {
            return;
        }
        let suite = CipherSuite::ALL[usize::from(data[0]) % CipherSuite::ALL.len()];
        let flips = usize::from(data[1] % 4);
        let kid = u64::from(data[2]) << (data[3] % 57);
        let ctr = u64::from(u32::from_le_bytes(data[4..8].try_into().unwrap()));

        // The raw input as a wire frame (suite and KID as chosen; usually refused).
        let mut raw_rx = receiver(suite, kid);
        if let Some((ctr, vp8)) = open(&mut raw_rx, data) {
            let again = match ctr {
                None => Vec::new(),
                Some(ctr) => {
                    let mut tx = SenderContext::new(suite, kid, KEY).unwrap().with_counter(ctr);
                    seal_video(&mut tx, &vp8).unwrap().as_bytes().to_vec()
                }
            };
            assert_eq!(again, data, "opened something that is not a genuine sealing");
        }

        let Some(rest) = data.get(FIXED + 3 * flips..) else {
            return;
        };
        let edits: Vec<(usize, u8)> = data[FIXED..FIXED + 3 * flips]
            .chunks(3)
            .map(|c| (usize::from(u16::from_le_bytes([c[0], c[1]])), c[2]))
            .collect();
        let frame = rest;
        let mut tx = SenderContext::new(suite, kid, KEY).unwrap().with_counter(ctr);
        let wire = match seal_video(&mut tx, frame) {
            Ok(w) => w.as_bytes().to_vec(),
            Err(e) => {
                assert!(frame.len() < video_clear_prefix_len(frame[0]), "{e}");
                return;
            }
        };
        let mut rx = receiver(suite, kid);
        let mut tampered = wire.clone();
        if !tampered.is_empty() {
            for (pos, xor) in edits {
                let at = pos % tampered.len();
                tampered[at] ^= xor;
            }
        }
        if tampered != wire {
            assert!(open(&mut rx, &tampered).is_none(), "a changed frame opened");
        }
        let (got_ctr, vp8) = open(&mut rx, &wire).expect("the genuine frame opens");
        assert_eq!(vp8, frame);
        if frame.is_empty() {
            assert_eq!(got_ctr, None);
        } else {
            assert_eq!(got_ctr, Some(ctr));
            assert!(open(&mut rx, &wire).is_none(), "a replay opened");
        }
    }
);
