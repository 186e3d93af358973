//! `sotto relay-demo`: two endpoints, a hostile relay and an eavesdropper, in one process.
//!
//! Alice and Bob run the authenticated handshake through the relay and compare safety codes;
//! a second attempt in which the relay swaps ephemeral keys must be refused. Alice then encodes
//! a 440 Hz tone with Opus in 20 ms frames and seals each with SFrame, rotating keys every
//! second. The relay sees only ciphertext and misbehaves: it flips bits, replays, reorders,
//! delays and drops frames. Bob must accept every genuine frame exactly once and refuse the
//! rest, and his playout buffer and decoder (FEC, concealment) must still give back the tone;
//! Eve, who has every frame but not the keys, must decrypt nothing. Time is virtual (20 ms per
//! frame), so the run takes a moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sotto::handshake::{
    Direction, DirectionKey, DtlsFingerprint, Established, Handshake, HandshakeError, Identity,
    MediaReceiver, MediaSender, RotationConfig,
};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

use sotto::media::{
    AudioSink, FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, ToneSource, WavSink, dbfs,
    dominant_hz,
};
use sotto::playout::{AudioPlayout, Packet, PlayoutConfig};
use sotto::sframe::CipherSuite;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of 20 ms frames Alice sends.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    frames: u32,
    /// Cipher suite, by RFC 9605 registry value (1-5).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=5))]
    suite: u16,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write what Bob hears to this WAV file (48 kHz mono).
    #[arg(long, value_name = "PATH")]
    output: Option<std::path::PathBuf>,
}

/// What the demo observed; every count comes from the run, none is assumed.
#[derive(Debug, Serialize)]
struct Report {
    alice_fingerprint: String,
    bob_fingerprint: String,
    alice_safety_code: String,
    bob_safety_code: String,
    relay_key_swap_refused: bool,
    cipher_suite: String,
    key_rotations: u64,
    frames_sent: u64,
    relay_tampered: u64,
    relay_replayed: u64,
    relay_reordered: u64,
    relay_dropped: u64,
    relay_saw_plaintext: bool,
    bob_decrypted: u64,
    bob_matched_original: u64,
    bob_auth_failures: u64,
    bob_replays_rejected: u64,
    eve_decrypted: u64,
    eve_auth_failures: u64,
    mean_encrypt_decrypt_ns: u64,
    bob_heard_hz: f64,
    bob_heard_dbfs: f32,
    playout_target_ms: u64,
    playout_max_delay_ms: u64,
    playout_lost: u64,
    playout_fec_recovered: u64,
    playout_concealed: u64,
}

const SAMPLES_PER_FRAME: usize = 960; // 20 ms at 48 kHz
const TONE_HZ: f64 = 440.0;

/// A tiny deterministic generator so the relay misbehaves the same way every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Runs the handshake with the relay passing messages through `tamper`.
fn handshake(
    alice: &Arc<Identity>,
    bob: &Arc<Identity>,
    mut tamper: impl FnMut(usize, Vec<u8>) -> Vec<u8>,
) -> Result<(Established, Established), HandshakeError> {
    let (mut a, hello) = Handshake::initiator(alice.clone(), "demo-room", "alice", &DTLS_I)?;
    let mut b = Handshake::responder(bob.clone(), "demo-room", "bob", &DTLS_R)?;
    let closed = || HandshakeError::Closed;
    let reply = b.handle(&tamper(0, hello))?.send.ok_or_else(closed)?;
    let reveal = a.handle(&tamper(1, reply))?.send.ok_or_else(closed)?;
    let step = b.handle(&tamper(2, reveal))?;
    let bob_done = step.established.ok_or_else(closed)?;
    let confirm = step.send.ok_or_else(closed)?;
    let alice_done = a
        .handle(&tamper(3, confirm))?
        .established
        .ok_or_else(closed)?;
    Ok((alice_done, bob_done))
}

/// The relay replaces the responder's ephemeral key in `reply` with one of its own.
fn swap_ephemeral(index: usize, msg: Vec<u8>) -> Vec<u8> {
    if index != 1 {
        return msg;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&msg) else {
        return msg;
    };
    v["ephemeral"] = serde_json::Value::String("09".repeat(32));
    serde_json::to_vec(&v).unwrap_or(msg)
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let suite = CipherSuite::from_id(args.suite).map_err(|e| e.to_string())?;
    let err = |e: HandshakeError| e.to_string();
    // Identities live in memory only: the demo writes nothing to disk.
    let alice_id = Arc::new(Identity::generate().map_err(err)?);
    let bob_id = Arc::new(Identity::generate().map_err(err)?);
    let relay_key_swap_refused = matches!(
        handshake(&alice_id, &bob_id, swap_ephemeral),
        Err(HandshakeError::BadSignature | HandshakeError::BadPublicKey)
    );
    let (alice_hs, bob_hs) = handshake(&alice_id, &bob_id, |_, m| m).map_err(err)?;

    let start = Instant::now();
    let rotation = RotationConfig {
        interval: Some(Duration::from_secs(1)),
        overlap: Duration::from_millis(500),
    };
    let mut alice = MediaSender::new(suite, alice_hs.keys.send, rotation, start).map_err(err)?;
    let mut bob = MediaReceiver::new(suite, bob_hs.keys.recv, rotation).map_err(err)?;
    // Eve listens to Alice's direction with a random key of her own.
    let mut eve_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut eve_key)
        .map_err(|_| "no system randomness available".to_string())?;
    let eve_key = DirectionKey::from_bytes(eve_key, Direction::InitiatorToResponder);
    let mut eve = MediaReceiver::new(suite, eve_key, rotation).map_err(err)?;

    // Alice's microphone is a tone; each 20 ms of it becomes one Opus packet.
    let mut tone = ToneSource::new(TONE_HZ, 0.5);
    let mut encoder = OpusEncoder::new(OpusConfig::default()).map_err(|e| e.to_string())?;
    let mut pcm = vec![0f32; SAMPLES_PER_FRAME];
    let mut packet = [0u8; 1500];
    let mut originals: Vec<Vec<u8>> = Vec::with_capacity(args.frames as usize);
    for _ in 0..args.frames {
        tone.fill(&mut pcm);
        let len = encoder
            .encode(&pcm, &mut packet)
            .map_err(|e| e.to_string())?;
        originals.push(packet[..len].to_vec());
    }
    let frame_time = |i: usize| start + Duration::from_millis(20 * i as u64);
    let mut crypto_ns = 0u128;
    let mut key_rotations = 0u64;
    let mut wire: Vec<Vec<u8>> = Vec::with_capacity(originals.len());
    for (i, pcm) in originals.iter().enumerate() {
        if alice.poll(frame_time(i)).map_err(err)?.is_some() {
            key_rotations += 1;
        }
        let t = Instant::now();
        let frame = alice
            .context()
            .encrypt_to_vec(&[], pcm)
            .map_err(|e| e.to_string())?;
        crypto_ns += t.elapsed().as_nanos();
        wire.push(frame);
    }
    // The relay looks for any 16-byte run of plaintext in what it carries.
    let relay_saw_plaintext = wire.iter().zip(&originals).any(|(ct, pt)| {
        pt.windows(16)
            .step_by(16)
            .any(|w| ct.windows(16).any(|c| c == w))
    });

    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    // Each relayed frame keeps the send index it travels with, for the virtual arrival time.
    let mut relayed: Vec<(usize, Vec<u8>)> = Vec::with_capacity(wire.len() + wire.len() / 10);
    let (mut tampered, mut replayed, mut reordered, mut dropped) = (0u64, 0u64, 0u64, 0u64);
    // Counters of genuine frames that reach Bob intact at least once (a replay of a frame
    // whose first copy was tampered with is its first intact delivery).
    let mut delivered = std::collections::HashSet::new();
    for (i, frame) in wire.iter().enumerate() {
        if rng.chance(1) {
            dropped += 1;
            continue;
        }
        let mut f = frame.clone();
        if rng.chance(2) {
            let bit = (rng.next() as usize) % (f.len() * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            tampered += 1;
        } else {
            delivered.insert(i);
        }
        relayed.push((i, f));
        if rng.chance(2) && i > 0 {
            // Replay one of the last 16 genuine frames (inside Bob's replay window and the key
            // overlap, so only the duplicate check can stop it).
            let j = i - 1 - (rng.next() as usize) % i.min(16);
            relayed.push((i, wire[j].clone()));
            delivered.insert(j);
            replayed += 1;
        }
        if rng.chance(3) && relayed.len() >= 2 {
            let n = relayed.len();
            relayed.swap(n - 1, n - 2);
            reordered += 1;
        }
    }

    // Each frame reaches Bob 10-40 ms after it was sent, in arrival order (so the relay's
    // swaps and the jitter reorder frames). Bob's clock plays one frame every 20 ms.
    let mut arrivals: Vec<(Duration, usize, usize)> = relayed
        .iter()
        .enumerate()
        .map(|(k, (i, _))| {
            let jitter = Duration::from_millis(10 + rng.next() % 30);
            (frame_time(*i) - start + jitter, k, *i)
        })
        .collect();
    arrivals.sort();
    let mut playout = AudioPlayout::new(
        PlayoutConfig::default(),
        OpusDecoder::new(FrameDuration::Ms20).map_err(|e| e.to_string())?,
    );
    let mut heard: Vec<f32> = Vec::with_capacity(originals.len() * SAMPLES_PER_FRAME);
    let mut out = vec![0f32; SAMPLES_PER_FRAME];
    let mut matched = 0u64;
    let mut buf = Vec::new();
    let mut next_arrival = 0;
    let end = frame_time(originals.len()) - start + Duration::from_millis(60);
    let mut clock = Duration::from_millis(5);
    while clock < end {
        while let Some(&(at, k, _)) = arrivals.get(next_arrival) {
            if at > clock {
                break;
            }
            next_arrival += 1;
            let frame = &relayed[k].1;
            buf.clear();
            buf.extend_from_slice(frame);
            let t = Instant::now();
            let result = bob.decrypt_in_place(&[], &mut buf, start + at);
            crypto_ns += t.elapsed().as_nanos();
            if let Ok(decrypted) = result {
                let index = decrypted.header.ctr as usize;
                if originals.get(index).map(Vec::as_slice) == Some(&*decrypted.payload) {
                    matched += 1;
                }
                // RTP would carry sequence number and timestamp; the SFrame counter stands in.
                let ctr = decrypted.header.ctr;
                playout.insert(
                    Packet {
                        seq: ctr as u16,
                        timestamp: (ctr as u32).wrapping_mul(SAMPLES_PER_FRAME as u32),
                        payload: decrypted.payload.to_vec(),
                    },
                    at,
                );
            }
            buf.clear();
            buf.extend_from_slice(frame);
            let _ = eve.decrypt_in_place(&[], &mut buf, start + at);
        }
        playout.next_frame(clock, &mut out);
        heard.extend_from_slice(&out);
        clock += Duration::from_millis(20);
    }
    if let Some(path) = &args.output {
        let mut wav = WavSink::create(path).map_err(|e| e.to_string())?;
        wav.write_frame(&heard).map_err(|e| e.to_string())?;
        wav.finish().map_err(|e| e.to_string())?;
    }
    // Judge the steady part: skip the first half second (buffering) and the tail.
    let steady = heard
        .get(24_000..heard.len().saturating_sub(24_000))
        .filter(|s| s.len() >= 9600)
        .unwrap_or(&heard);
    let playout_stats = *playout.stats();

    let bob_stats = bob.context().stats();
    let eve_stats = eve.context().stats();
    let report = Report {
        alice_fingerprint: alice_id.public_key().fingerprint(),
        bob_fingerprint: bob_id.public_key().fingerprint(),
        alice_safety_code: alice_hs.safety_code.to_string(),
        bob_safety_code: bob_hs.safety_code.to_string(),
        relay_key_swap_refused,
        key_rotations,
        cipher_suite: suite.name().to_string(),
        frames_sent: wire.len() as u64,
        relay_tampered: tampered,
        relay_replayed: replayed,
        relay_reordered: reordered,
        relay_dropped: dropped,
        relay_saw_plaintext,
        bob_decrypted: bob_stats.decrypted,
        bob_matched_original: matched,
        bob_auth_failures: bob_stats.auth_failures + bob_stats.unknown_kid + bob_stats.malformed,
        bob_replays_rejected: bob_stats.replays + bob_stats.too_old,
        eve_decrypted: eve_stats.decrypted,
        eve_auth_failures: eve_stats.auth_failures + eve_stats.unknown_kid + eve_stats.malformed,
        mean_encrypt_decrypt_ns: (crypto_ns / u128::from(args.frames.max(1))) as u64,
        bob_heard_hz: dominant_hz(steady, 48_000.0),
        bob_heard_dbfs: (dbfs(steady) * 10.0).round() / 10.0,
        playout_target_ms: playout_stats.target.as_millis() as u64,
        playout_max_delay_ms: playout_stats.max_delay.as_millis() as u64,
        playout_lost: playout_stats.lost,
        playout_fec_recovered: playout_stats.fec_recovered,
        playout_concealed: playout_stats.concealed,
    };

    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_table(&report);
    }
    let expected_genuine = delivered.len() as u64;
    if report.bob_matched_original != expected_genuine
        || report.bob_decrypted != expected_genuine
        || report.eve_decrypted != 0
        || report.relay_saw_plaintext
        || report.alice_safety_code != report.bob_safety_code
        || !report.relay_key_swap_refused
        || (report.bob_heard_hz - TONE_HZ).abs() > 3.0
    {
        return Err("demo invariant violated: see the report above".into());
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "sotto demo: an end-to-end encrypted exchange between Alice and Bob through a hostile relay"
    );
    println!();
    println!("  handshake through the relay (X25519, Ed25519 identities, key confirmation)");
    println!(
        "    Alice  identity {}  safety code {}",
        r.alice_fingerprint, r.alice_safety_code
    );
    println!(
        "    Bob    identity {}  safety code {}",
        r.bob_fingerprint, r.bob_safety_code
    );
    println!(
        "    codes {}; a relay swapping ephemeral keys was {}",
        if r.alice_safety_code == r.bob_safety_code {
            "match"
        } else {
            "DIFFER"
        },
        if r.relay_key_swap_refused {
            "refused"
        } else {
            "NOT REFUSED"
        }
    );
    println!();
    println!(
        "  media: SFrame {}, key rotated {} times (every second of audio)",
        r.cipher_suite, r.key_rotations
    );
    println!(
        "    Alice sent                      {:>6} Opus frames (20 ms of a 440 Hz tone each)",
        r.frames_sent
    );
    println!(
        "    relay saw plaintext             {:>6}",
        if r.relay_saw_plaintext { "YES" } else { "no" }
    );
    println!(
        "    relay flipped a bit in          {:>6} frames",
        r.relay_tampered
    );
    println!(
        "    relay replayed                  {:>6} frames",
        r.relay_replayed
    );
    println!(
        "    relay reordered                 {:>6} pairs",
        r.relay_reordered
    );
    println!(
        "    relay dropped                   {:>6} frames",
        r.relay_dropped
    );
    println!();
    println!(
        "    Bob decrypted                   {:>6} frames, {} identical to what Alice sent",
        r.bob_decrypted, r.bob_matched_original
    );
    println!(
        "    Bob refused as forged           {:>6}",
        r.bob_auth_failures
    );
    println!(
        "    Bob refused as replayed         {:>6}",
        r.bob_replays_rejected
    );
    println!(
        "    Eve (wrong key) decrypted       {:>6} of {} tries",
        r.eve_decrypted,
        r.eve_decrypted + r.eve_auth_failures
    );
    println!(
        "    Bob heard                       {:>6.0} Hz at {:.1} dBFS (playout target {} ms, max {} ms; {} lost: {} recovered by FEC, {} concealed)",
        r.bob_heard_hz,
        r.bob_heard_dbfs,
        r.playout_target_ms,
        r.playout_max_delay_ms,
        r.playout_lost,
        r.playout_fec_recovered,
        r.playout_concealed
    );
    println!();
    println!(
        "    mean SFrame cost per frame: {} ns encrypt + decrypt",
        r.mean_encrypt_decrypt_ns
    );
}
