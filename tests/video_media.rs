//! The video media layer end to end: test pattern -> VP8 -> decoder, keyframes on demand,
//! bitrate changes, hostile input to the decoder, Y4M files and camera listing.

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sotto::media::video::{
    EncodedVideoFrame, NullVideoSink, TestPattern, VideoCodec, VideoDecoder, VideoEncoder,
    VideoEncoderConfig, VideoError, VideoFrame, VideoSink, VideoSource, Vp8Decoder, Vp8Encoder,
    Y4mSink, Y4mSource, list_cameras_in, psnr_y, read_code,
};

/// Counts heap allocations per thread, to show the per-frame path reuses its buffers.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: defers to the system allocator; only adds a thread-local counter.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

/// 90 kHz ticks of frame `n` at 30 fps.
fn pts(n: u64) -> u64 {
    n * 3000
}

/// Encodes `frames` pattern pictures; returns (source pictures, encoded frames).
fn encode_pattern(
    encoder: &mut dyn VideoEncoder,
    width: u32,
    height: u32,
    frames: u64,
) -> (Vec<VideoFrame>, Vec<EncodedVideoFrame>) {
    let mut pattern = TestPattern::new(width, height, 30).unwrap();
    let mut pictures = Vec::new();
    let mut encoded = Vec::new();
    for n in 0..frames {
        let mut frame = VideoFrame::black(2, 2).unwrap();
        assert!(pattern.read_frame(&mut frame).unwrap());
        let out = encoder
            .encode(&frame, pts(n))
            .unwrap()
            .expect("the encoder never drops");
        pictures.push(frame);
        encoded.push(out);
    }
    (pictures, encoded)
}

#[test]
fn pattern_through_vp8_decodes_every_frame_with_its_number_and_good_psnr() {
    let mut cfg = VideoEncoderConfig::new(640, 360);
    cfg.target_kbps = 1000;
    let mut encoder = VideoCodec::Vp8.new_encoder(&cfg).unwrap();
    let mut decoder = VideoCodec::Vp8.new_decoder().unwrap();
    let (pictures, encoded) = encode_pattern(&mut encoder, 640, 360, 90);
    assert!(encoded[0].keyframe);
    let mut decoded = VideoFrame::black(2, 2).unwrap();
    let mut psnrs = Vec::new();
    for (n, (picture, frame)) in pictures.iter().zip(&encoded).enumerate() {
        assert!(
            decoder.decode_into(&frame.data, &mut decoded).unwrap(),
            "frame {n}"
        );
        assert_eq!(decoded.size(), (640, 360));
        assert_eq!(read_code(&decoded), Some(n as u16), "frame {n}");
        psnrs.push(psnr_y(picture, &decoded).unwrap());
    }
    let mean = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
    let worst = psnrs.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        mean >= 30.0 && worst >= 28.0,
        "mean {mean:.1} dB, worst {worst:.1} dB"
    );
    // Not a trivial pass: a picture compared with the next one scores far lower.
    let off_by_one = psnr_y(&pictures[10], &pictures[11]).unwrap();
    assert!(off_by_one < mean - 5.0, "{off_by_one:.1} vs {mean:.1}");
}

#[test]
fn per_frame_capture_encode_decode_reuse_their_buffers() {
    let mut pattern = TestPattern::new(640, 360, 30).unwrap();
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let mut decoder = Vp8Decoder::new().unwrap();
    let mut frame = VideoFrame::black(640, 360).unwrap();
    let mut decoded = VideoFrame::black(640, 360).unwrap();
    let mut out = EncodedVideoFrame::default();
    out.data.reserve(256 * 1024);
    let mut step = |n: u64| {
        pattern.read_frame(&mut frame).unwrap();
        assert!(encoder.encode_into(&frame, pts(n), &mut out).unwrap());
        assert!(decoder.decode_into(&out.data, &mut decoded).unwrap());
        assert_eq!(read_code(&decoded), Some(n as u16));
    };
    for n in 0..5 {
        step(n);
    }
    let before = allocations();
    for n in 5..65 {
        step(n);
    }
    // libvpx allocates in C (once, at init); the Rust side does not allocate per frame.
    assert_eq!(allocations() - before, 0);
}

#[test]
fn force_keyframe_makes_exactly_the_next_frame_a_keyframe() {
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let mut pattern = TestPattern::new(640, 360, 30).unwrap();
    let mut frame = VideoFrame::black(2, 2).unwrap();
    let mut out = EncodedVideoFrame::default();
    let mut kinds = Vec::new();
    for n in 0..40 {
        pattern.read_frame(&mut frame).unwrap();
        if n == 20 || n == 33 {
            encoder.force_keyframe();
        }
        assert!(encoder.encode_into(&frame, pts(n), &mut out).unwrap());
        // The flag and the bitstream agree: bit 0 of byte 0 is 0 on keyframes (RFC 6386).
        assert_eq!(out.keyframe, out.data[0] & 1 == 0, "frame {n}");
        if out.keyframe {
            assert_eq!(&out.data[3..6], &[0x9d, 0x01, 0x2a]);
            assert_eq!(u16::from_le_bytes([out.data[6], out.data[7]]) & 0x3fff, 640);
            assert_eq!(u16::from_le_bytes([out.data[8], out.data[9]]) & 0x3fff, 360);
        }
        kinds.push(out.keyframe);
    }
    let keys: Vec<usize> = (0..40).filter(|&n| kinds[n]).collect();
    assert_eq!(keys, vec![0, 20, 33]);
}

#[test]
fn lower_bitrate_gives_fewer_bytes() {
    let bytes = |kbps: u32, change_to: Option<u32>| -> usize {
        let mut cfg = VideoEncoderConfig::new(640, 360);
        cfg.target_kbps = kbps;
        let mut encoder = Vp8Encoder::new(&cfg).unwrap();
        let (_, first) = encode_pattern(&mut encoder, 640, 360, 30);
        if let Some(k) = change_to {
            encoder.set_bitrate(k).unwrap();
            assert_eq!(encoder.bitrate(), k);
        }
        // 60 more frames of the same content, continuing the timeline.
        let mut pattern = TestPattern::new(640, 360, 30).unwrap();
        let mut frame = VideoFrame::black(2, 2).unwrap();
        let mut total = 0;
        for n in 0..90 {
            pattern.read_frame(&mut frame).unwrap();
            if n < 30 {
                continue;
            }
            total += encoder.encode(&frame, pts(n)).unwrap().unwrap().data.len();
        }
        drop(first);
        total
    };
    let high = bytes(1500, None);
    let lowered = bytes(1500, Some(300));
    // 300 vs 1500 kbit/s: well under half the bytes (rate control settles within frames).
    assert!(
        (lowered as f64) < 0.5 * high as f64,
        "1500 kbit/s: {high} bytes, after set_bitrate(300): {lowered} bytes"
    );
}

#[test]
fn reconfigure_changes_the_size_and_starts_with_a_keyframe() {
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let mut decoder = Vp8Decoder::new().unwrap();
    let (_, first) = encode_pattern(&mut encoder, 640, 360, 5);
    for f in &first {
        decoder.decode(&f.data).unwrap().unwrap();
    }
    encoder.reconfigure(320, 180).unwrap();
    assert_eq!(encoder.size(), (320, 180));
    let frame = VideoFrame::black(320, 180).unwrap();
    let out = encoder.encode(&frame, pts(5)).unwrap().unwrap();
    assert!(out.keyframe);
    assert_eq!(
        decoder.decode(&out.data).unwrap().unwrap().size(),
        (320, 180)
    );
}

#[test]
fn a_picture_built_on_a_broken_reference_is_reported_damaged() {
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let (_, encoded) = encode_pattern(&mut encoder, 640, 360, 6);
    let mut decoder = Vp8Decoder::new().unwrap();
    let mut out = VideoFrame::black(2, 2).unwrap();
    assert!(decoder.last_picture_damaged(), "nothing decoded yet");
    decoder.decode_into(&encoded[0].data, &mut out).unwrap();
    decoder.decode_into(&encoded[1].data, &mut out).unwrap();
    assert!(!decoder.last_picture_damaged());
    // Frame 2 arrives cut short (part of it lost). libvpx shows a picture anyway, but says
    // it is damaged, and so is every picture built on it until a keyframe.
    let cut = &encoded[2].data[..encoded[2].data.len() / 2];
    let _ = decoder.decode_into(cut, &mut out);
    assert!(decoder.last_picture_damaged());
    for frame in &encoded[3..6] {
        assert!(decoder.decode_into(&frame.data, &mut out).unwrap());
        assert!(decoder.last_picture_damaged());
    }
    encoder.force_keyframe();
    let mut picture = VideoFrame::black(2, 2).unwrap();
    let mut pattern = TestPattern::new(640, 360, 30).unwrap();
    pattern.read_frame(&mut picture).unwrap();
    let key = encoder.encode(&picture, pts(6)).unwrap().unwrap();
    assert!(key.keyframe);
    assert!(decoder.decode_into(&key.data, &mut out).unwrap());
    assert!(!decoder.last_picture_damaged());
}

/// Checks the decoder refuses `data` or decodes it into a valid picture, without crashing.
fn survive(decoder: &mut Vp8Decoder, data: &[u8], out: &mut VideoFrame) -> bool {
    match decoder.decode_into(data, out) {
        Ok(shown) => {
            if shown {
                let (w, h) = out.size();
                assert!(w % 2 == 0 && h % 2 == 0 && w > 0 && h > 0);
            }
            false
        }
        Err(VideoError::Decode { .. }) => true,
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn decoder_survives_garbage_truncation_and_bit_flips() {
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let (_, encoded) = encode_pattern(&mut encoder, 640, 360, 12);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut decoder = Vp8Decoder::new().unwrap();
    let mut out = VideoFrame::black(2, 2).unwrap();
    let mut errors = 0;
    let mut cases = 0;

    // Random bytes, with byte 0 both a keyframe and a delta frame, some with a valid
    // keyframe header in front.
    for i in 0..1500 {
        let len = rng.random_range(0..3000);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 && len >= 10 {
            data[..10].copy_from_slice(&encoded[0].data[..10]);
        }
        errors += usize::from(survive(&mut decoder, &data, &mut out));
        cases += 1;
    }
    // Every prefix length of a real keyframe and of a real delta frame (a fresh decoder for
    // the keyframes, one that has the stream for the delta frames).
    let key = &encoded[0].data;
    for len in (0..key.len()).step_by(7) {
        let mut fresh = Vp8Decoder::new().unwrap();
        errors += usize::from(survive(&mut fresh, &key[..len], &mut out));
        cases += 1;
    }
    let mut streaming = Vp8Decoder::new().unwrap();
    streaming.decode_into(key, &mut out).unwrap();
    let delta = &encoded[1].data;
    for len in 0..delta.len() {
        errors += usize::from(survive(&mut streaming, &delta[..len], &mut out));
        cases += 1;
    }
    // Single and multiple bit flips in keyframes and delta frames.
    for i in 0..2000 {
        let mut data = encoded[i % encoded.len()].data.clone();
        for _ in 0..rng.random_range(1..4) {
            let bit = rng.random_range(0..data.len() * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        errors += usize::from(survive(&mut decoder, &data, &mut out));
        cases += 1;
    }
    assert!(cases > 4000);
    // Random data nearly always fails; a good share of the damaged frames is caught.
    assert!(errors > 1500, "{errors} errors in {cases} cases");
    // After all that, a fresh keyframe decodes into the right picture again.
    encoder.force_keyframe();
    let (pictures, again) = encode_pattern(&mut encoder, 640, 360, 1);
    let _ = again;
    let mut fresh = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let frame = fresh.encode(&pictures[0], 0).unwrap().unwrap();
    assert!(decoder.decode_into(&frame.data, &mut out).unwrap());
    assert_eq!(read_code(&out), Some(0));
    // Oversized keyframes are refused before libvpx allocates for them.
    let mut big = frame.data.clone();
    big[6..8].copy_from_slice(&16_000u16.to_le_bytes());
    assert!(matches!(
        decoder.decode(&big),
        Err(VideoError::Decode { detail, .. }) if detail.contains("size")
    ));
}

#[test]
fn y4m_round_trip_is_bit_exact() {
    let dir = std::env::temp_dir().join(format!("sotto-y4m-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pattern.y4m");
    let mut pattern = TestPattern::new(640, 360, 30).unwrap();
    let mut sink = Y4mSink::create(&path, 25).unwrap();
    let mut written = Vec::new();
    for _ in 0..8 {
        let mut f = VideoFrame::black(2, 2).unwrap();
        pattern.read_frame(&mut f).unwrap();
        sink.write_frame(&f).unwrap();
        written.push(f);
    }
    // A picture of another size is scaled to the file's size.
    sink.write_frame(&written[0].scaled(320, 180).unwrap())
        .unwrap();
    sink.finish().unwrap();
    assert_eq!(sink.frames(), 9);

    let mut source = Y4mSource::open(&path).unwrap();
    assert_eq!(source.size(), (640, 360));
    assert_eq!(source.frame_rate(), 25.0);
    assert!(!source.is_live());
    let mut f = VideoFrame::black(2, 2).unwrap();
    for (n, w) in written.iter().enumerate() {
        assert!(source.read_frame(&mut f).unwrap());
        assert_eq!((f.y(), f.u(), f.v()), (w.y(), w.u(), w.v()), "frame {n}");
    }
    assert!(source.read_frame(&mut f).unwrap());
    assert_eq!(f.size(), (640, 360));
    assert_eq!(read_code(&f), Some(0));
    assert!(!source.read_frame(&mut f).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn y4m_other_than_8_bit_420_is_refused_clearly() {
    let file = |header: &str, body: usize| {
        let mut v = header.as_bytes().to_vec();
        v.extend_from_slice(b"FRAME\n");
        v.extend(std::iter::repeat_n(0u8, body));
        std::io::Cursor::new(v)
    };
    for cs in ["C422", "C444", "C420p10", "Cmono"] {
        let err = Y4mSource::new(file(
            &format!("YUV4MPEG2 W64 H32 F30:1 {cs}\n"),
            64 * 32 * 3,
        ))
        .unwrap_err();
        assert!(
            matches!(&err, VideoError::UnsupportedFormat(m) if m.contains("4:2:0")),
            "{cs}: {err}"
        );
    }
    let err = Y4mSource::new(file("YUV4MPEG2 W64 H32 F30:1 Cfoo\n", 0)).unwrap_err();
    assert!(matches!(err, VideoError::UnsupportedFormat(_)), "{err}");
    // Odd, huge and missing sizes, bad frame rates, junk.
    for header in [
        "YUV4MPEG2 W63 H32 F30:1 C420\n",
        "YUV4MPEG2 W99999999999999999999 H99999999999 F30:1 C420\n",
        "YUV4MPEG2 H32 F30:1 C420\n",
    ] {
        assert!(
            matches!(
                Y4mSource::new(file(header, 0)),
                Err(VideoError::InvalidSize { .. })
            ),
            "{header}"
        );
    }
    assert!(Y4mSource::new(file("YUV4MPEG2 W64 H32 F30:0 C420\n", 0)).is_err());
    assert!(Y4mSource::new(file("RIFF W64 H32\n", 0)).is_err());
    assert!(Y4mSource::new(std::io::Cursor::new(vec![b'Y'; 5000])).is_err());
    // A truncated last frame ends the stream; a broken frame header is an error.
    let mut src = Y4mSource::new(file("YUV4MPEG2 W64 H32 F30:1 C420\n", 100)).unwrap();
    let mut f = VideoFrame::black(2, 2).unwrap();
    assert!(!src.read_frame(&mut f).unwrap());
    let mut bytes = b"YUV4MPEG2 W64 H32 F30:1 C420\nFRAMEX\n".to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 64 * 32 * 3 / 2));
    let mut src = Y4mSource::new(std::io::Cursor::new(bytes)).unwrap();
    assert!(matches!(src.read_frame(&mut f), Err(VideoError::Y4m(_))));
    // 420jpeg is 8-bit 4:2:0 too.
    let mut src = Y4mSource::new(file(
        "YUV4MPEG2 W64 H32 F30000:1001 C420jpeg\n",
        64 * 32 * 3 / 2,
    ))
    .unwrap();
    assert!((src.frame_rate() - 29.97).abs() < 0.01);
    assert!(src.read_frame(&mut f).unwrap());
    assert!(!src.read_frame(&mut f).unwrap());
}

#[test]
fn missing_camera_error_lists_the_cameras_that_exist() {
    let root = std::env::temp_dir().join(format!("sotto-v4l-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let add = |node: &str, name: &str, index: Option<u32>| {
        let d = root.join(node);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::File::create(d.join("name"))
            .unwrap()
            .write_all(format!("{name}\n").as_bytes())
            .unwrap();
        if let Some(i) = index {
            std::fs::write(d.join("index"), format!("{i}\n")).unwrap();
        }
    };
    // An empty machine: the error says there are none.
    let none = list_cameras_in(&root);
    assert!(none.is_empty());
    let err = sotto::media::video::CameraSource::open_in(&root, None, 640, 360, 30).unwrap_err();
    assert!(
        err.to_string().contains("no video capture devices"),
        "{err}"
    );

    add("video10", "USB Cam", Some(0));
    add("video11", "USB Cam", Some(1)); // its metadata node
    add("video2", "Integrated Camera", None);
    std::fs::create_dir_all(root.join("not-a-camera")).unwrap();
    let cams = list_cameras_in(&root);
    let names: Vec<String> = cams.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        vec!["Integrated Camera (/dev/video2)", "USB Cam (/dev/video10)"]
    );
    let err = sotto::media::video::CameraSource::open_in(&root, Some("Studio"), 640, 360, 30)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VideoError::CameraNotFound { .. }));
    assert!(
        msg.contains("\"Studio\"")
            && msg.contains("Integrated Camera (/dev/video2)")
            && msg.contains("USB Cam (/dev/video10)"),
        "{msg}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn null_sink_counts() {
    let mut sink = NullVideoSink::default();
    sink.write_frame(&VideoFrame::black(64, 32).unwrap())
        .unwrap();
    assert_eq!((sink.frames, sink.last_size), (1, Some((64, 32))));
}

/// What the network carries does not decode as the picture: the sealed frames (VP8 payload
/// header clear, the rest ciphertext) fed to a VP8 decoder give errors or noise, never the
/// pattern, while the same frames opened first decode to it.
#[test]
fn sealed_video_on_the_wire_does_not_decode_as_the_picture() {
    use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
    use sotto::transport::{open_video_in_place, seal_video};

    let suite = CipherSuite::AesGcm128Sha256;
    let kid = 1 << 24;
    let mut tx = SenderContext::new(suite, kid, b"video base key").unwrap();
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, kid, b"video base key").unwrap();
    let mut encoder = Vp8Encoder::new(&VideoEncoderConfig::new(640, 360)).unwrap();
    let (pictures, encoded) = encode_pattern(&mut encoder, 640, 360, 30);

    let mut on_wire = Vp8Decoder::new().unwrap();
    let mut opened = Vp8Decoder::new().unwrap();
    let mut out = VideoFrame::black(2, 2).unwrap();
    let (mut wire_pictures, mut wire_errors) = (0, 0);
    for (picture, frame) in pictures.iter().zip(&encoded) {
        let sealed = seal_video(&mut tx, &frame.data)
            .unwrap()
            .as_bytes()
            .to_vec();
        // As the network sees it.
        match on_wire.decode_into(&sealed, &mut out) {
            Ok(true) => {
                wire_pictures += 1;
                let psnr = psnr_y(picture, &out).unwrap_or(0.0);
                assert!(
                    psnr < 15.0,
                    "the wire bytes decoded to the picture: {psnr:.1} dB"
                );
                assert_ne!(read_code(&out), read_code(picture));
            }
            Ok(false) => {}
            Err(_) => wire_errors += 1,
        }
        // As the receiver sees it.
        let mut buf = sealed.clone();
        let vp8 = open_video_in_place(&mut buf, |meta, part| rx.decrypt_in_place(meta, part))
            .unwrap()
            .vp8
            .to_vec();
        assert_eq!(vp8, frame.data);
        assert!(opened.decode_into(&vp8, &mut out).unwrap());
        assert!(psnr_y(picture, &out).unwrap() >= 30.0);
        assert_eq!(read_code(&out), read_code(picture));
    }
    eprintln!(
        "sealed frames through a VP8 decoder: {wire_pictures} noise pictures, {wire_errors} errors"
    );
}
