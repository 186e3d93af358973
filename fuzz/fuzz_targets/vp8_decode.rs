//! Untrusted VP8 frames into one decoder: errors, never crashes, and every picture it shows
//! has a legal size that some keyframe announced (the decoder never invents a size, and a
//! keyframe's picture has exactly the size in its header, cropped to even).
//!
//! Input: frames one after another, each `[length: u16 LE][bytes]` (the last one takes what
//! is left). With `SOTTO_FUZZ_SEEDS=<dir>` set, the binary instead writes encoded test-pattern
//! streams in that layout into `<dir>` and exits (see `seeds.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto::media::video::{
    MAX_DIMENSION, MAX_PIXELS, TestPattern, VideoCodec, VideoDecoder, VideoEncoderConfig,
    VideoFrame, VideoSource, Vp8Decoder,
};

/// Splits `data` into length-prefixed frames.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    out
}

/// The size a keyframe header announces (scaling bits dropped), if `f` looks like one.
fn announced(f: &[u8]) -> Option<(u32, u32)> {
    (f.len() >= 10 && f[0] & 1 == 0 && f[3..6] == [0x9d, 0x01, 0x2a]).then(|| {
        (
            u32::from(u16::from_le_bytes([f[6], f[7]]) & 0x3fff),
            u32::from(u16::from_le_bytes([f[8], f[9]]) & 0x3fff),
        )
    })
}

fn check_picture(out: &VideoFrame) {
    let (w, h) = out.size();
    assert!(w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0, "{w}x{h}");
    assert!(w <= MAX_DIMENSION && h <= MAX_DIMENSION, "{w}x{h}");
    assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS, "{w}x{h}");
    for i in 0..3 {
        let (pw, ph) = out.plane_size(i);
        assert_eq!(out.row(i, ph - 1).len(), pw);
    }
}

fn write_seeds(dir: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut resizing = Vec::new();
    for (w, h, n) in [
        (64u32, 48u32, 6u64),
        (176, 144, 4),
        (320, 180, 3),
        (98, 62, 3),
    ] {
        let mut pattern = TestPattern::new(w, h, 30).unwrap();
        let mut encoder = VideoCodec::Vp8
            .new_encoder(&VideoEncoderConfig::new(w, h))
            .unwrap();
        let mut picture = VideoFrame::black(w, h).unwrap();
        let mut stream = Vec::new();
        for i in 0..n {
            pattern.read_frame(&mut picture).unwrap();
            if i == n - 1 {
                encoder.force_keyframe();
            }
            if let Some(f) = encoder.encode(&picture, i * 3000).unwrap() {
                stream.extend_from_slice(&u16::try_from(f.data.len()).unwrap().to_le_bytes());
                stream.extend_from_slice(&f.data);
                // Each frame on its own too, for a short starting point.
                let single = [
                    &u16::try_from(f.data.len()).unwrap().to_le_bytes()[..],
                    &f.data,
                ]
                .concat();
                std::fs::write(format!("{dir}/seed-{w}x{h}-frame{i}"), single).unwrap();
            }
        }
        std::fs::write(format!("{dir}/seed-{w}x{h}-stream"), &stream).unwrap();
        // All sizes one after another: keyframes that change the picture size.
        resizing.extend_from_slice(&stream);
    }
    std::fs::write(format!("{dir}/seed-resizing-stream"), resizing).unwrap();
}

fuzz_target!(
    init: {
        if let Ok(dir) = std::env::var("SOTTO_FUZZ_SEEDS") {
            write_seeds(&dir);
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let mut decoder = Vp8Decoder::new().unwrap();
        assert!(decoder.last_picture_damaged(), "nothing decoded yet");
        let mut out = VideoFrame::black(2, 2).unwrap();
        // Sizes of the keyframes libvpx has seen: the only sizes a picture may have.
        let mut sizes: Vec<(u32, u32)> = Vec::new();
        for frame in frames(data) {
            let size = announced(frame);
            if let Some(s) = size {
                sizes.push(s);
            }
            if let Ok(true) = decoder.decode_into(frame, &mut out) {
                check_picture(&out);
                let (w, h) = out.size();
                if let Some((aw, ah)) = size {
                    assert_eq!((w, h), (aw & !1, ah & !1), "keyframe picture size");
                } else {
                    assert!(
                        sizes.iter().any(|&(aw, ah)| (aw & !1, ah & !1) == (w, h)),
                        "a {w}x{h} picture no keyframe announced ({sizes:?})"
                    );
                }
            }
            let _ = decoder.last_picture_damaged();
        }
    }
);
