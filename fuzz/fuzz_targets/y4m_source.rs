//! Untrusted Y4M files into `Y4mSource`: typed errors, never panics, allocations bounded by
//! the size limits (run with `-rss_limit_mb=512`). Every frame read has the header's legal
//! size, and no more frames come out than the input has bytes for.
//!
//! With `SOTTO_FUZZ_SEEDS=<dir>` set, the binary writes small Y4M files into `<dir>` and exits.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sotto::media::video::{
    MAX_DIMENSION, MAX_PIXELS, TestPattern, VideoFrame, VideoSink, VideoSource, Y4mSink, Y4mSource,
};

fn write_seeds(dir: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for (w, h, n) in [(64, 48, 2), (96, 54, 3)] {
        let path = format!("{dir}/seed-{w}x{h}");
        let mut sink = Y4mSink::create(&path, 30).unwrap();
        let mut pattern = TestPattern::new(w, h, 30).unwrap();
        let mut frame = VideoFrame::black(w, h).unwrap();
        for _ in 0..n {
            pattern.read_frame(&mut frame).unwrap();
            sink.write_frame(&frame).unwrap();
        }
        sink.finish().unwrap();
    }
    let mut tail = b"YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\nFRAME\n".to_vec();
    tail.extend_from_slice(&[16; 12]);
    tail.extend_from_slice(b"FRAME Ixyz\n");
    tail.extend_from_slice(&[128; 12]);
    std::fs::write(format!("{dir}/seed-params"), tail).unwrap();
}

fuzz_target!(
    init: {
        if let Ok(dir) = std::env::var("SOTTO_FUZZ_SEEDS") {
            write_seeds(&dir);
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Ok(mut source) = Y4mSource::new(Cursor::new(data.to_vec())) else {
            return;
        };
        let (w, h) = source.size();
        assert!(w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0, "{w}x{h}");
        assert!(w <= MAX_DIMENSION && h <= MAX_DIMENSION, "{w}x{h}");
        assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS, "{w}x{h}");
        let fps = source.frame_rate();
        assert!(fps.is_finite() && fps > 0.0 && fps < 1001.0, "{fps}");
        let frame_bytes = w as usize * h as usize * 3 / 2;
        let mut out = VideoFrame::black(2, 2).unwrap();
        let mut frames = 0usize;
        while let Ok(true) = source.read_frame(&mut out) {
            frames += 1;
            assert_eq!(out.size(), (w, h));
            assert!(frames * frame_bytes <= data.len(), "{frames} frames from {} bytes", data.len());
        }
    }
);
