//! Per-frame CPU cost of a call's two directions, as the call runs them: send = Opus encode +
//! SFrame seal (`transport::seal`, the only way onto the wire) and receive = SFrame open
//! (`MediaReceiver`, replay window and all, on a copy of the wire bytes) + Opus decode. Each
//! has its no-E2EE baseline (`encode_only`, `decode_only`) in the same run, and the E2EE part
//! alone (`seal_only`, `open_only`, with the wire copy and the allocation the call makes), so
//! the E2EE share is a ratio of figures measured together. `receive/order_check/*` is the
//! RTP-order check a call runs after opening each frame. `receive/stretch_*/*` is the
//! playout's time-stretching of one decoded frame (with the unplayed audio before it, as the
//! playout holds it): accelerate and preemptive expand, pitch search included, next to
//! `receive/decode_only/*` for the ratio. `receive/playout_per_frame/*` is the whole playout
//! around the decoder (buffer, delay control, FIFO and the stretching it does) per frame,
//! averaged over a stream with 30 ms of jitter and 5 % loss, with a decoder that only copies.
//!
//! `cargo bench --profile dev --bench frame_cost`; figures are in the README.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sotto::handshake::{Direction, DirectionKey, MediaReceiver, MediaSender, RotationConfig};
use sotto::media::CodecError;
use sotto::media::{AudioSource, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
use sotto::playout::{AudioPlayout, FrameDecoder, Packet, PlayoutConfig, Stretcher};
use sotto::sframe::CipherSuite;
use sotto::transport::{FrameOrder, ORDER_WINDOW, seal};

const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

fn keys() -> (MediaSender, MediaReceiver) {
    let base = [7u8; 32];
    let dir = Direction::InitiatorToResponder;
    let rot = RotationConfig::default();
    (
        MediaSender::new(
            SUITE,
            DirectionKey::from_bytes(base, dir),
            rot,
            Instant::now(),
        )
        .unwrap(),
        MediaReceiver::new(SUITE, DirectionKey::from_bytes(base, dir), rot).unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_cost");
    for frame in [FrameDuration::Ms20, FrameDuration::Ms10] {
        let ms = frame.duration().as_millis();
        let cfg = OpusConfig {
            frame,
            ..OpusConfig::default()
        };
        let mut pcm = vec![0f32; frame.samples()];
        let mut tone = ToneSource::new(440.0, 0.3);
        let mut enc = OpusEncoder::new(cfg).unwrap();
        let mut packet = vec![0u8; 1500];

        g.bench_function(format!("send/encode_only/{ms}ms"), |b| {
            b.iter(|| {
                tone.read_frame(&mut pcm).unwrap();
                black_box(enc.encode(black_box(&pcm), &mut packet).unwrap())
            })
        });
        let (mut sender, _) = keys();
        g.bench_function(format!("send/encode_seal/{ms}ms"), |b| {
            b.iter(|| {
                tone.read_frame(&mut pcm).unwrap();
                let len = enc.encode(black_box(&pcm), &mut packet).unwrap();
                black_box(seal(sender.context(), &packet[..len]).unwrap())
            })
        });

        // The E2EE part alone, on a real Opus packet, so its share is visible under noise.
        tone.read_frame(&mut pcm).unwrap();
        let len = enc.encode(&pcm, &mut packet).unwrap();
        let opus_packet = packet[..len].to_vec();
        let (mut sender, mut receiver) = keys();
        g.bench_function(format!("send/seal_only/{ms}ms"), |b| {
            b.iter(|| black_box(seal(sender.context(), black_box(&opus_packet)).unwrap()))
        });
        g.bench_function(format!("receive/open_only/{ms}ms"), |b| {
            b.iter_batched(
                || seal(sender.context(), &opus_packet).unwrap(),
                |sealed| {
                    let mut wire = sealed.as_bytes().to_vec();
                    let d = receiver
                        .decrypt_in_place(&[], &mut wire, Instant::now())
                        .unwrap();
                    black_box(d.payload.len())
                },
                BatchSize::SmallInput,
            )
        });

        let (mut sender, mut receiver) = keys();
        let mut dec = OpusDecoder::new(frame).unwrap();
        let mut out = vec![0f32; frame.samples()];
        let mut next_packet = || {
            tone.read_frame(&mut pcm).unwrap();
            let len = enc.encode(&pcm, &mut packet).unwrap();
            (
                packet[..len].to_vec(),
                seal(sender.context(), &packet[..len]).unwrap(),
            )
        };
        g.bench_function(format!("receive/decode_only/{ms}ms"), |b| {
            b.iter_batched(
                || next_packet().0,
                |p| dec.decode(black_box(&p), &mut out).unwrap(),
                BatchSize::SmallInput,
            )
        });
        // Two decoded frames of a voice-like tone (the unplayed audio and the new frame).
        let n = frame.samples();
        let mut voiced = vec![0f32; 2 * n];
        let mut vt = ToneSource::new(180.0, 0.3);
        let mut venc = OpusEncoder::new(cfg).unwrap();
        let mut vdec = OpusDecoder::new(frame).unwrap();
        let (mut vpcm, mut vpacket) = (vec![0f32; n], vec![0u8; 1500]);
        // After the codec has settled: the last two of ten frames.
        for k in 0..10 {
            vt.read_frame(&mut vpcm).unwrap();
            let len = venc.encode(&vpcm, &mut vpacket).unwrap();
            let at = (k % 2) * n;
            vdec.decode(&vpacket[..len], &mut voiced[at..at + n])
                .unwrap();
        }
        let mut stretcher = Stretcher::new();
        let mut work = vec![0f32; 3 * n];
        g.bench_function(format!("receive/stretch_accelerate/{ms}ms"), |b| {
            b.iter(|| {
                work[..2 * n].copy_from_slice(&voiced);
                let r = stretcher.accelerate(black_box(&mut work[..2 * n]), n);
                black_box(r.unwrap().samples)
            })
        });
        g.bench_function(format!("receive/stretch_expand/{ms}ms"), |b| {
            b.iter(|| {
                work[..2 * n].copy_from_slice(&voiced);
                let r = stretcher.expand(black_box(&mut work[..3 * n]), 2 * n, n);
                black_box(r.unwrap().samples)
            })
        });
        g.bench_function(format!("receive/stretch_copy_only/{ms}ms"), |b| {
            b.iter(|| {
                work[..2 * n].copy_from_slice(&voiced);
                black_box(&mut work);
            })
        });
        g.bench_function(format!("receive/open_decode/{ms}ms"), |b| {
            b.iter_batched(
                || next_packet().1,
                |sealed| {
                    let mut wire = sealed.as_bytes().to_vec();
                    let d = receiver
                        .decrypt_in_place(&[], &mut wire, Instant::now())
                        .unwrap();
                    dec.decode(black_box(d.payload), &mut out).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }

    for frame in [FrameDuration::Ms20, FrameDuration::Ms10] {
        let ms = frame.duration().as_millis();
        g.bench_function(format!("receive/playout_per_frame/{ms}ms"), |b| {
            b.iter_custom(|frames| playout_run(frame, frames))
        });
    }

    // The RTP-order check after opening (`FrameOrder`), per frame: the usual case (each frame
    // newer than the last), a late frame whose neighbours are adjacent, and the worst case
    // (a late frame with the rest of the window empty to scan).
    let mut order = FrameOrder::new();
    let mut i: u64 = 0;
    g.bench_function("receive/order_check/in_order", |b| {
        b.iter(|| {
            i += 1;
            black_box(order.admit(black_box(i), (i as u32).wrapping_mul(960), i as u16)).unwrap()
        })
    });
    let mut order = FrameOrder::new();
    let mut i: u64 = 0;
    g.bench_function("receive/order_check/pair_swapped_on_the_wire", |b| {
        b.iter(|| {
            i += 2;
            for c in [i + 1, i] {
                black_box(order.admit(black_box(c), (c as u32).wrapping_mul(960), c as u16))
                    .unwrap();
            }
        })
    });
    let mut sparse = FrameOrder::new();
    let last = ORDER_WINDOW - 1;
    sparse.admit(0, 0, 0).unwrap();
    sparse.admit(last, last as u32 * 960, last as u16).unwrap();
    g.bench_function("receive/order_check/late_worst_case", |b| {
        b.iter_batched(
            || sparse.clone(),
            |mut o| black_box(o.admit(black_box(1), 960, 1)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A decoder that only copies one frame of a 200 Hz tone (a whole number of periods per
/// frame, so the copies join up as a voice would).
struct CopyDecoder(Vec<f32>);

impl FrameDecoder for CopyDecoder {
    fn decode(&mut self, _: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        out.copy_from_slice(&self.0);
        Ok(())
    }
    fn recover(&mut self, _: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        out.copy_from_slice(&self.0);
        Ok(())
    }
    fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        out.copy_from_slice(&self.0);
        Ok(())
    }
}

/// Time spent in the playout for `frames` frames of a stream with up to 30 ms of jitter and
/// 5 % loss (seeded), the device asking for 10 ms every 10 ms of virtual time.
fn playout_run(frame: FrameDuration, frames: u64) -> Duration {
    let n = frame.samples();
    let tone: Vec<f32> = (0..n)
        .map(|i| 0.3 * (std::f32::consts::TAU * 200.0 * i as f32 / 48_000.0).sin())
        .collect();
    let mut p = AudioPlayout::new(
        PlayoutConfig {
            frame: frame.duration(),
            ..PlayoutConfig::default()
        },
        CopyDecoder(tone),
    );
    let frame_ms = n as f64 / 48.0;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut draw = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut wire: Vec<(f64, u64)> = (0..frames + 10)
        .filter_map(|k| {
            let (lose, jitter) = (draw(), draw());
            (lose >= 0.05).then_some((k as f64 * frame_ms + 1.0 + 30.0 * jitter, k))
        })
        .collect();
    wire.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut period = vec![0f32; 480];
    let ticks = (frames as f64 * frame_ms / 10.0) as u64;
    let mut next = 0;
    let mut spent = Duration::ZERO;
    for tick in 0..ticks {
        let now = tick as f64 * 10.0 + 5.0;
        let t = Instant::now();
        while next < wire.len() && wire[next].0 <= now {
            let (at, k) = wire[next];
            let packet = Packet {
                seq: k as u16,
                timestamp: (k as u32).wrapping_mul(n as u32),
                payload: vec![0; 60],
            };
            p.insert(packet, Duration::from_secs_f64(at / 1000.0));
            next += 1;
        }
        p.fill(
            Duration::from_secs_f64(now / 1000.0),
            black_box(&mut period),
        );
        spent += t.elapsed();
    }
    spent
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
