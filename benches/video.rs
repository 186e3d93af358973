//! Per-frame cost of VP8 at call sizes and bitrates: encode and decode of the moving test
//! pattern (`TestPattern`) with the call's settings (CBR, no lag, one thread, `cpu_used` -6
//! at 360p and -8 at 720p). `SOTTO_BENCH_THREADS` and `SOTTO_BENCH_CPU_USED` override them.
//!
//! Run with `cargo bench --profile dev --bench video` (the project's one profile). One run on
//! the 2-core build machine under load from other builds (load average about 6), median per
//! frame:
//!
//! | operation | 640x360, 800 kbit/s | 1280x720, 1500 kbit/s |
//! |---|---|---|
//! | encode (`video_encode/*`) | 2.2 ms (6.5 % of a core at 30 fps) | 4.5 ms (14 %) |
//! | decode (`video_decode/*`) | 0.69 ms | 1.9 ms |
//! | encode, `cpu_used` -6 at 720p | | 8.4 ms |
//! | encode, 2 threads at 720p | | 31 ms (the threads wait for a busy core) |
//!
//! Quality (mean luma PSNR over 150 frames, worst frame in brackets): 36.8 dB (33.8) at
//! 360p/800 kbit/s, 33.9 dB (30.4) at 720p/1500 kbit/s, 33.7 dB (32.1) at 180p/150 kbit/s;
//! the rate control lands within 3 % of the target.
//!
//! `video_seal/<size>/{keyframe,delta}` and `video_open/<size>/{keyframe,delta}`: E2EE of one
//! real encoded frame in the video layout (`seal_video` / `open_video_in_place`,
//! AES_128_GCM_SHA256_128 under a video KID). The keyframe is one forced mid-stream (as after
//! a PLI), the delta frame one of the stream around it; sizes are printed when the bench
//! starts. Open is timed on a fresh sealed frame each time (sealing it is not timed). One run
//! (`cargo bench --profile dev --bench video -- 'video_(seal|open)'`), same machine and load:
//!
//! | frame | seal | open |
//! |---|---|---|
//! | 640x360 keyframe, 11 749 bytes | 1.92 us | 2.16 us |
//! | 640x360 delta, 3 370 bytes | 0.94 us | 0.82 us |
//! | 1280x720 keyframe, 11 613 bytes | 1.91 us | 2.53 us |
//! | 1280x720 delta, 6 053 bytes | 1.05 us | 1.23 us |

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use sotto::media::video::{
    EncodedVideoFrame, TestPattern, VideoDecoder, VideoEncoder, VideoEncoderConfig, VideoFrame,
    VideoSource, Vp8Decoder, Vp8Encoder,
};
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{open_video_in_place, seal_video};

/// Sizes and bitrates benched: (label, width, height, kbit/s).
const SIZES: [(&str, u32, u32, u32); 2] =
    [("640x360", 640, 360, 800), ("1280x720", 1280, 720, 1500)];

/// Frames of pattern generated up front (so the bench measures the codec only).
const FRAMES: usize = 120;

fn pattern(width: u32, height: u32) -> Vec<VideoFrame> {
    let mut p = TestPattern::new(width, height, 30).unwrap();
    (0..FRAMES)
        .map(|_| {
            let mut f = VideoFrame::black(width, height).unwrap();
            p.read_frame(&mut f).unwrap();
            f
        })
        .collect()
}

fn config(width: u32, height: u32, kbps: u32) -> VideoEncoderConfig {
    let mut cfg = VideoEncoderConfig::new(width, height);
    cfg.target_kbps = kbps;
    if let Ok(threads) = std::env::var("SOTTO_BENCH_THREADS") {
        cfg.threads = threads.parse().ok();
    }
    if let Ok(cpu) = std::env::var("SOTTO_BENCH_CPU_USED") {
        cfg.cpu_used = cpu.parse().ok();
    }
    cfg
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("video_encode");
    for (label, w, h, kbps) in SIZES {
        let frames = pattern(w, h);
        let mut enc = Vp8Encoder::new(&config(w, h, kbps)).unwrap();
        let mut out = EncodedVideoFrame::default();
        let mut n = 0u64;
        group.bench_function(label, |b| {
            b.iter(|| {
                let f = &frames[n as usize % FRAMES];
                n += 1;
                black_box(enc.encode_into(black_box(f), n * 3000, &mut out).unwrap())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("video_decode");
    for (label, w, h, kbps) in SIZES {
        // One keyframe, then delta frames, decoded in a loop that restarts at the keyframe.
        let mut enc = Vp8Encoder::new(&config(w, h, kbps)).unwrap();
        let encoded: Vec<Vec<u8>> = pattern(w, h)
            .iter()
            .enumerate()
            .map(|(n, f)| enc.encode(f, n as u64 * 3000).unwrap().unwrap().data)
            .collect();
        let mut dec = Vp8Decoder::new().unwrap();
        let mut out = VideoFrame::black(w, h).unwrap();
        let mut n = 0usize;
        group.bench_function(label, |b| {
            b.iter(|| {
                let data = &encoded[n % FRAMES];
                n += 1;
                black_box(dec.decode_into(black_box(data), &mut out).unwrap())
            })
        });
    }
    group.finish();
}

/// A delta frame and a keyframe forced mid-stream (as after a PLI), encoded with the call's
/// settings: what the seal and open benches protect.
fn encoded_pair(w: u32, h: u32, kbps: u32) -> (Vec<u8>, Vec<u8>) {
    let mut enc = Vp8Encoder::new(&config(w, h, kbps)).unwrap();
    let (mut delta, mut key) = (Vec::new(), Vec::new());
    for (n, f) in pattern(w, h).iter().enumerate() {
        if n == 90 {
            enc.force_keyframe();
        }
        let out = enc.encode(f, n as u64 * 3000).unwrap().unwrap();
        match n {
            89 => delta = out.data,
            90 => key = out.data,
            _ => {}
        }
    }
    assert!(key[0] & 1 == 0 && delta[0] & 1 == 1, "frame types");
    (key, delta)
}

/// Video KID of epoch 0, initiator to responder.
const VIDEO_KID: u64 = 1 << 24;

fn seal_open(c: &mut Criterion) {
    let suite = CipherSuite::AesGcm128Sha256;
    let frames: Vec<_> = SIZES
        .iter()
        .map(|&(label, w, h, kbps)| (label, encoded_pair(w, h, kbps)))
        .collect();
    for (label, (key, delta)) in &frames {
        eprintln!(
            "{label}: keyframe {} bytes, delta frame {} bytes",
            key.len(),
            delta.len()
        );
    }
    let mut group = c.benchmark_group("video_seal");
    for (label, (key, delta)) in &frames {
        for (kind, frame) in [("keyframe", key), ("delta", delta)] {
            let mut tx = SenderContext::new(suite, VIDEO_KID, b"video seal bench").unwrap();
            group.bench_function(BenchmarkId::new(*label, kind), |b| {
                b.iter(|| black_box(seal_video(&mut tx, black_box(frame)).unwrap()))
            });
        }
    }
    group.finish();
    let mut group = c.benchmark_group("video_open");
    for (label, (key, delta)) in &frames {
        for (kind, frame) in [("keyframe", key), ("delta", delta)] {
            let mut tx = SenderContext::new(suite, VIDEO_KID, b"video open bench").unwrap();
            let mut rx = ReceiverContext::new();
            rx.add_key(suite, VIDEO_KID, b"video open bench").unwrap();
            group.bench_function(BenchmarkId::new(*label, kind), |b| {
                b.iter_batched(
                    || seal_video(&mut tx, frame).unwrap().as_bytes().to_vec(),
                    |mut wire| {
                        let opened =
                            open_video_in_place(&mut wire, |m, p| rx.decrypt_in_place(m, p))
                                .unwrap();
                        black_box(opened.vp8.len())
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = encode, decode, seal_open
}
criterion_main!(benches);
