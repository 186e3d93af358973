//! Untrusted video RTP packets into the frame assembler: any sequence of packets (sequence
//! numbers, timestamps, markers, descriptors, padding, late arrivals) never panics, every frame
//! out is within the size bound, and frames packetized by our own packetizer and delivered in
//! order come out whole and unchanged.

#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sotto::transport::{FrameAssembler, MAX_VIDEO_FRAME, Vp8Packetizer};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut a = FrameAssembler::new();
    let mut rest = data;
    // Each packet: seq (2), timestamp (1, scaled), flags (1), time step (1), length (1), bytes.
    while rest.len() >= 6 {
        let seq = u16::from_be_bytes([rest[0], rest[1]]);
        let ts = u32::from(rest[2]) * 3000;
        let flags = rest[3];
        now += Duration::from_millis(u64::from(rest[4]));
        let len = usize::from(rest[5]).min(rest.len() - 6);
        let payload = Bytes::copy_from_slice(&rest[6..6 + len]);
        rest = &rest[6 + len..];
        if flags & 2 != 0 {
            a.push_padding(seq, ts, now);
        } else {
            a.push(seq, ts, flags & 1 != 0, &payload, now);
        }
        if flags & 4 != 0 {
            a.expire(now);
        }
        while let Some(f) = a.pop() {
            assert!(f.payload.len() <= MAX_VIDEO_FRAME);
        }
        if let Some(deadline) = a.deadline() {
            assert!(deadline >= start);
        }
    }

    // Our own packets, in order and complete: every frame comes out as it went in.
    let frames: Vec<&[u8]> = data
        .split(|b| *b == 0xff)
        .filter(|f| !f.is_empty())
        .collect();
    let mut p = Vp8Packetizer::new(7, 64);
    let mut a = FrameAssembler::new();
    let mut seq = u16::from(data.first().copied().unwrap_or(0)) << 8;
    for (i, frame) in frames.iter().enumerate() {
        let payloads = p.packetize(frame);
        let n = payloads.len();
        for (j, payload) in payloads.iter().enumerate() {
            a.push(seq, i as u32 * 3000, j + 1 == n, payload, start);
            seq = seq.wrapping_add(1);
        }
        let out = a.pop().expect("a whole frame in order");
        assert_eq!(&out.payload[..], *frame);
        assert!(!out.after_loss);
        assert!(a.pop().is_none());
    }
});
