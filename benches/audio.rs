//! Per-frame cost of the audio path: Opus encode, decode, PLC, FEC recovery, and a playout
//! buffer insert+pop cycle. 48 kHz mono, 32 kbit/s, FEC on.
//!
//! Run with `cargo bench --profile dev --bench audio` (the project's one profile: libopus and
//! every dependency at opt-level 3). One run on the 2-core build machine, under load from
//! other builds (median per frame):
//!
//! | operation | 20 ms frame | 10 ms frame |
//! |---|---|---|
//! | encode, complexity 10 | 172 us (0.9 % of real time) | 79 us |
//! | encode, complexity 5 | 121 us | 56 us |
//! | decode | 24 us | 10 us |
//! | decode + PLC frame (`opus_plc_*`) | 44 us | 20 us |
//! | FEC recovery | 19 us | 8.5 us |
//! | playout buffer insert + pop | 0.45 us | |

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sotto::media::{
    AudioSource, FrameDuration, MAX_PACKET, OpusConfig, OpusDecoder, OpusEncoder, ToneSource,
};
use sotto::playout::{Packet, PlayoutBuffer, PlayoutConfig};

/// Speech-like test signal: two tones, so the encoder has real work to do.
fn signal(n: usize, frames: usize) -> Vec<Vec<f32>> {
    let mut a = ToneSource::new(220.0, 0.3);
    let mut b = ToneSource::new(1330.0, 0.2);
    (0..frames)
        .map(|_| {
            let mut x = vec![0.0; n];
            let mut y = vec![0.0; n];
            a.read_frame(&mut x).unwrap();
            b.read_frame(&mut y).unwrap();
            x.iter().zip(&y).map(|(p, q)| p + q).collect()
        })
        .collect()
}

fn opus(c: &mut Criterion) {
    for (frame, label) in [(FrameDuration::Ms20, "20ms"), (FrameDuration::Ms10, "10ms")] {
        for complexity in [10, 5] {
            let cfg = OpusConfig {
                frame,
                complexity,
                ..OpusConfig::default()
            };
            let n = frame.samples();
            let pcm = signal(n, 50);
            let mut enc = OpusEncoder::new(cfg).unwrap();
            let mut pkt = [0u8; MAX_PACKET];
            let mut i = 0;
            c.bench_function(&format!("opus_encode_{label}_c{complexity}"), |bch| {
                bch.iter(|| {
                    i = (i + 1) % pcm.len();
                    black_box(enc.encode(black_box(&pcm[i]), &mut pkt).unwrap())
                })
            });
            // Pre-encode packets for decoding.
            let mut enc = OpusEncoder::new(cfg).unwrap();
            let packets: Vec<Vec<u8>> = pcm
                .iter()
                .map(|f| {
                    let len = enc.encode(f, &mut pkt).unwrap();
                    pkt[..len].to_vec()
                })
                .collect();
            if complexity == 10 {
                let mut dec = OpusDecoder::new(frame).unwrap();
                let mut out = vec![0.0f32; n];
                let mut i = 0;
                c.bench_function(&format!("opus_decode_{label}"), |bch| {
                    bch.iter(|| {
                        i = (i + 1) % packets.len();
                        dec.decode(black_box(&packets[i]), &mut out).unwrap();
                        black_box(out[0])
                    })
                });
                c.bench_function(&format!("opus_plc_{label}"), |bch| {
                    bch.iter(|| {
                        i = (i + 1) % packets.len();
                        // Alternate so PLC does not decay into silence.
                        dec.decode(&packets[i], &mut out).unwrap();
                        dec.conceal(&mut out).unwrap();
                        black_box(out[0])
                    })
                });
                c.bench_function(&format!("opus_decode_fec_{label}"), |bch| {
                    bch.iter(|| {
                        i = (i + 1) % packets.len();
                        dec.decode_fec(black_box(&packets[i]), &mut out).unwrap();
                        black_box(out[0])
                    })
                });
            }
        }
    }
}

fn playout(c: &mut Criterion) {
    let mut buf = PlayoutBuffer::new(PlayoutConfig::default());
    let payload = vec![0u8; 80];
    let mut seq = 0u16;
    let mut t = Duration::ZERO;
    c.bench_function("playout_insert_pop", |bch| {
        bch.iter(|| {
            seq = seq.wrapping_add(1);
            t += Duration::from_millis(20);
            buf.insert(
                Packet {
                    seq,
                    timestamp: u32::from(seq) * 960,
                    payload: payload.clone(),
                },
                t,
            );
            black_box(buf.pop(t))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = opus, playout
}
criterion_main!(benches);
