//! The audio path on virtual time: tone -> Opus -> lossy, jittery network -> playout -> decode.

mod common;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sotto::media::{
    AudioSource, DecodeKind, FrameDuration, MAX_PACKET, OpusConfig, OpusDecoder, OpusEncoder,
    ToneSource,
};
use sotto::playout::{AudioPlayout, Packet, PlayoutConfig, PlayoutStats};

struct Net {
    loss: f64,
    base: Duration,
    jitter: Duration,
}

struct Run {
    out: Vec<f32>,
    stats: PlayoutStats,
    mean_delay_ms: f64,
    kinds: [u64; 4],
}

/// Sends `frames` frames of `freq` Hz every `send_period` and plays at exactly one frame per
/// frame period; returns what was played after a 1 s warm-up.
fn run(
    seed: u64,
    frame: FrameDuration,
    freq: f64,
    frames: usize,
    send_period: Duration,
    net: Net,
    dtx_silence: Option<std::ops::Range<usize>>,
) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = OpusConfig {
        frame,
        dtx: dtx_silence.is_some(),
        ..OpusConfig::default()
    };
    let mut enc = OpusEncoder::new(cfg).unwrap();
    let mut tone = ToneSource::new(freq, 0.5);
    let n = frame.samples();
    let mut pcm = vec![0.0f32; n];
    let mut pkt = [0u8; MAX_PACKET];
    // (arrival, packet)
    let mut wire: Vec<(Duration, Packet)> = Vec::new();
    let mut seq: u16 = 40_000; // wraps during the run
    for k in 0..frames {
        tone.read_frame(&mut pcm).unwrap();
        if dtx_silence.as_ref().is_some_and(|r| r.contains(&k)) {
            pcm.fill(0.0);
        }
        let len = enc.encode(&pcm, &mut pkt).unwrap();
        if cfg.dtx && len <= 2 {
            continue; // DTX: nothing is sent for silence
        }
        let p = Packet {
            seq,
            timestamp: (k as u32).wrapping_mul(n as u32).wrapping_add(123_456),
            payload: pkt[..len].to_vec(),
        };
        seq = seq.wrapping_add(1);
        if rng.random_bool(net.loss) {
            continue;
        }
        let extra = net.jitter.mul_f64(rng.random::<f64>());
        wire.push((send_period * k as u32 + net.base + extra, p));
    }
    wire.sort_by_key(|(t, _)| *t);

    let mut playout = AudioPlayout::new(
        PlayoutConfig {
            frame: frame.duration(),
            ..PlayoutConfig::default()
        },
        OpusDecoder::new(frame).unwrap(),
    );
    let mut out = Vec::new();
    let mut frame_out = vec![0.0f32; n];
    let mut next = 0;
    let warm = (Duration::from_secs(1).as_millis() / frame.duration().as_millis()) as usize;
    let (mut delay_sum, mut delay_n) = (0.0, 0);
    let mut kinds = [0u64; 4];
    let pops = frames;
    for j in 0..pops {
        let now = frame.duration() * j as u32 + Duration::from_millis(3);
        while next < wire.len() && wire[next].0 <= now {
            playout.insert(wire[next].1.clone(), wire[next].0);
            next += 1;
        }
        let kind = playout.next_frame(now, &mut frame_out);
        if j >= warm && j < frames {
            out.extend_from_slice(&frame_out);
            delay_sum += playout.stats().delay.as_secs_f64() * 1000.0;
            delay_n += 1;
            kinds[match kind {
                DecodeKind::Normal => 0,
                DecodeKind::Fec => 1,
                DecodeKind::Plc => 2,
                _ => 3,
            }] += 1;
        }
    }
    Run {
        out,
        stats: *playout.stats(),
        mean_delay_ms: delay_sum / f64::from(delay_n.max(1)),
        kinds,
    }
}

/// Mean share of `freq` in 100 ms windows.
fn windowed_share(x: &[f32], freq: f64) -> f64 {
    let w: Vec<f64> = x
        .chunks_exact(4800)
        .map(|c| common::tone_ratio(c, 48_000.0, freq))
        .collect();
    w.iter().sum::<f64>() / w.len().max(1) as f64
}

#[test]
fn tone_survives_loss_jitter_and_reordering() {
    for frame in [FrameDuration::Ms20, FrameDuration::Ms10] {
        let frames = (20_000 / frame.duration().as_millis()) as usize; // 20 s
        let r = run(
            42,
            frame,
            1000.0,
            frames,
            frame.duration(),
            Net {
                loss: 0.10,
                base: Duration::from_millis(30),
                jitter: Duration::from_millis(40),
            },
            None,
        );
        let s = r.stats;
        let f = common::dominant(&r.out, 48_000.0, (500..=1500).step_by(50).map(f64::from));
        // Per 100 ms: time-stretching moves the tone's phase, which a single 19 s Goertzel
        // window (0.05 Hz wide) would count against it although the tone is all one hears.
        let share = windowed_share(&r.out, 1000.0);
        eprintln!(
            "{frame:?}: dominant {f} Hz, 1 kHz share {share:.3}, mean delay {:.1} ms, stats {s:?}, \
             kinds normal/fec/plc/silence {:?}",
            r.mean_delay_ms, r.kinds
        );
        assert_eq!(f, 1000.0);
        assert!(share > 0.7, "1 kHz share {share}");
        // Jitter of 40 ms needs about 40-60 ms of buffer; never far more.
        assert!(r.mean_delay_ms < 120.0, "mean delay {}", r.mean_delay_ms);
        assert!(s.max_delay <= Duration::from_millis(200), "{s:?}");
        assert!(s.lost > 0 && s.concealed >= s.lost, "{s:?}");
        assert!(s.fec_recovered > 0, "{s:?}");
        // Reordering happened and most of it was absorbed, not dropped as late.
        assert!(s.late < frames as u64 / 20, "{s:?}");
    }
}

#[test]
fn clean_path_plays_about_one_frame_behind() {
    let r = run(
        1,
        FrameDuration::Ms20,
        440.0,
        500,
        Duration::from_millis(20),
        Net {
            loss: 0.0,
            base: Duration::from_millis(10),
            jitter: Duration::ZERO,
        },
        None,
    );
    eprintln!("clean: mean delay {:.1} ms, {:?}", r.mean_delay_ms, r.stats);
    assert!(r.mean_delay_ms <= 20.0 + 1e-6, "{}", r.mean_delay_ms);
    // Time-stretching absorbs the arrival phase: the target is under a frame.
    assert!(r.stats.target <= Duration::from_millis(20), "{:?}", r.stats);
    assert_eq!((r.stats.lost, r.stats.late), (0, 0));
    assert_eq!(
        common::dominant(&r.out, 48_000.0, (300..=600).step_by(20).map(f64::from)),
        440.0
    );
}

#[test]
fn clock_drift_of_a_tenth_percent_is_absorbed_both_ways() {
    for (name, period_ns) in [("sender fast", 19_980_000u64), ("sender slow", 20_020_000)] {
        let frames = 6000; // two minutes
        let r = run(
            7,
            FrameDuration::Ms20,
            1000.0,
            frames,
            Duration::from_nanos(period_ns),
            Net {
                loss: 0.0,
                base: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
            },
            None,
        );
        let s = r.stats;
        eprintln!("{name}: mean delay {:.1} ms, {s:?}", r.mean_delay_ms);
        assert!(s.max_delay <= Duration::from_millis(120), "{name}: {s:?}");
        if period_ns < 20_000_000 {
            assert!(s.compressed + s.accelerated >= 3, "{name}: {s:?}");
        } else {
            assert!(
                s.expanded + s.underruns + s.preemptive_expanded >= 3,
                "{name}: {s:?}"
            );
        }
        assert!(windowed_share(&r.out, 1000.0) > 0.8);
    }
}

#[test]
fn dtx_gaps_are_ridden_without_loss() {
    let r = run(
        3,
        FrameDuration::Ms20,
        700.0,
        600,
        Duration::from_millis(20),
        Net {
            loss: 0.0,
            base: Duration::from_millis(15),
            jitter: Duration::from_millis(2),
        },
        Some(150..350),
    );
    let s = r.stats;
    eprintln!("dtx: mean delay {:.1} ms, {s:?}", r.mean_delay_ms);
    assert_eq!((s.lost, s.late), (0, 0), "{s:?}");
    assert!(s.underruns > 100, "{s:?}");
    // The tone is back after the gap, on time.
    let tail = &r.out[r.out.len() - 48_000..];
    assert!(common::tone_ratio(tail, 48_000.0, 700.0) > 0.8);
    assert!(s.delay <= Duration::from_millis(60), "{s:?}");
}
