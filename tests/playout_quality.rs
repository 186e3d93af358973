//! Speech through the playout on virtual time, for an objective score (PESQ) outside the
//! test suite: the new playout (time-stretching, device periods of 10 ms) against the
//! whole-frame buffer it replaced (`PlayoutBuffer::pop`, one frame per 20 ms), on a clean
//! path, under 30 ms of jitter, and under 5 % loss with 30 ms of jitter. Ignored by default;
//! `SOTTO_QUALITY_DIR=dir cargo test --test playout_quality -- --ignored` writes 16 kHz WAVs
//! (`reference.wav`, `{new,old}-{clean,jitter,loss}.wav`) to score, e.g. with the `pesq`
//! Python package: `pesq(16000, ref, deg, "wb")`.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use sotto::media::{
    DecodeKind, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, StreamResampler,
};
use sotto::playout::{AudioPlayout, FrameDecoder, Packet, Playout, PlayoutBuffer, PlayoutConfig};

fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    let mut r = StreamResampler::new(from, to, x.len() * 4).unwrap();
    r.push(x).unwrap();
    r.flush().unwrap();
    let mut out = vec![0.0; r.available()];
    r.pull(&mut out);
    out
}

/// The espeak-ng phrase eight times with 0.4 s pauses, at 48 kHz.
fn speech() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-espeak.wav");
    let mut r = hound::WavReader::open(path).unwrap();
    let rate = r.spec().sample_rate;
    let x: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    let one = resample(&x, rate, 48_000);
    let mut out = vec![0.0; 19_200];
    for _ in 0..8 {
        out.extend_from_slice(&one);
        out.extend(std::iter::repeat_n(0.0, 19_200));
    }
    out.truncate(out.len() / 960 * 960);
    out
}

fn write(dir: &std::path::Path, name: &str, x: &[f32]) {
    let y = resample(x, 48_000, 16_000);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(dir.join(name), spec).unwrap();
    for s in y {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// The whole-frame playout as it was: one pop per 20 ms, decode, FEC or PLC.
fn old_playout(wire: &[(f64, Packet)], ms: u64) -> Vec<f32> {
    let mut b = PlayoutBuffer::new(PlayoutConfig::default());
    let mut dec = OpusDecoder::new(FrameDuration::Ms20).unwrap();
    let mut frame = vec![0.0f32; 960];
    let mut out = Vec::new();
    let mut next = 0;
    let mut run = 0;
    let mut fec = 0;
    for tick in 0..ms / 20 {
        let now = tick as f64 * 20.0 + 5.0;
        while next < wire.len() && wire[next].0 <= now {
            b.insert(
                wire[next].1.clone(),
                Duration::from_secs_f64(wire[next].0 / 1000.0),
            );
            next += 1;
        }
        let conceal = |dec: &mut OpusDecoder, frame: &mut [f32], run: &mut u32| {
            *run += 1;
            if *run > 10 || FrameDecoder::conceal(dec, frame).is_err() {
                frame.fill(0.0);
            }
        };
        match b.pop(Duration::from_secs_f64(now / 1000.0)) {
            Playout::Packet(p) => {
                dec.decode(&p.payload, &mut frame).unwrap();
                run = 0;
            }
            Playout::Lost { .. } => match b.peek_next() {
                Some(n) if run < 10 => {
                    dec.decode_fec(&n.payload, &mut frame).unwrap();
                    run = 0;
                    fec += 1;
                }
                _ => conceal(&mut dec, &mut frame, &mut run),
            },
            Playout::Wait => conceal(&mut dec, &mut frame, &mut run),
            _ => frame.fill(0.0),
        }
        out.extend_from_slice(&frame);
    }
    eprintln!("old playout: FEC {fec}, {:?}", b.stats());
    out
}

fn new_playout(wire: &[(f64, Packet)], ms: u64) -> Vec<f32> {
    let mut p = AudioPlayout::new(
        PlayoutConfig::default(),
        OpusDecoder::new(FrameDuration::Ms20).unwrap(),
    );
    let mut period = vec![0.0f32; 480];
    let mut out = Vec::new();
    let mut next = 0;
    for tick in 0..ms / 10 {
        let now = tick as f64 * 10.0 + 5.0;
        while next < wire.len() && wire[next].0 <= now {
            p.insert(
                wire[next].1.clone(),
                Duration::from_secs_f64(wire[next].0 / 1000.0),
            );
            next += 1;
        }
        let kind = p.fill(Duration::from_secs_f64(now / 1000.0), &mut period);
        let _: DecodeKind = kind;
        out.extend_from_slice(&period);
    }
    eprintln!("new playout: {:?}", p.stats());
    out
}

#[test]
#[ignore = "writes WAVs for an external objective score"]
fn speech_through_both_playouts_for_pesq() {
    let dir = std::path::PathBuf::from(
        std::env::var("SOTTO_QUALITY_DIR").unwrap_or_else(|_| "target/quality".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let x = speech();
    write(&dir, "reference.wav", &x);
    let mut enc = OpusEncoder::new(OpusConfig::default()).unwrap();
    let mut buf = [0u8; 1500];
    let packets: Vec<Packet> = x
        .chunks_exact(960)
        .enumerate()
        .map(|(k, f)| {
            let len = enc.encode(f, &mut buf).unwrap();
            Packet {
                seq: k as u16,
                timestamp: (k as u32) * 960,
                payload: buf[..len].to_vec(),
            }
        })
        .collect();
    let ms = packets.len() as u64 * 20 + 500;
    for (name, loss, jitter) in [
        ("clean", 0.0, 0.0),
        ("jitter", 0.0, 30.0),
        ("loss", 0.05, 30.0),
    ] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut wire: Vec<(f64, Packet)> = packets
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                let lost = rng.random_bool(loss);
                let at = k as f64 * 20.0 + 1.0 + jitter * rng.random::<f64>();
                (!lost).then(|| (at, p.clone()))
            })
            .collect();
        wire.sort_by(|a, b| a.0.total_cmp(&b.0));
        write(&dir, &format!("old-{name}.wav"), &old_playout(&wire, ms));
        write(&dir, &format!("new-{name}.wav"), &new_playout(&wire, ms));
    }
    eprintln!("wrote {}", dir.display());
}
