//! Per-frame CPU cost of a call's two directions, as the call runs them: send = Opus encode +
//! SFrame seal (`transport::seal`, the only way onto the wire) and receive = SFrame open
//! (`MediaReceiver`, replay window and all, on a copy of the wire bytes) + Opus decode. Each
//! has its no-E2EE baseline (`encode_only`, `decode_only`) in the same run, and the E2EE part
//! alone (`seal_only`, `open_only`, with the wire copy and the allocation the call makes), so
//! the E2EE share is a ratio of figures measured together. `receive/order_check/*` is the
//! RTP-order check a call runs after opening each frame.
//!
//! `cargo bench --profile dev --bench frame_cost`; figures are in the README.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sotto::handshake::{Direction, DirectionKey, MediaReceiver, MediaSender, RotationConfig};
use sotto::media::{AudioSource, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
