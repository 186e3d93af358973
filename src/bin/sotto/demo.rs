//! `sotto demo`: a sender, a hostile relay and two receivers, in one process.
//!
//! Alice seals 20 ms frames of a 440 Hz tone with SFrame. The relay between her and Bob sees
//! only ciphertext and misbehaves: it flips bits, replays, reorders and drops frames. Bob must
//! play every genuine frame exactly once and refuse the rest; Eve, who has the frames but not
//! the key, must decrypt nothing. Until the handshake and call exist, the shared base key is
//! random per run.

use std::time::Instant;

use clap::Args;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};

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
}

/// What the demo observed; every count comes from the run, none is assumed.
#[derive(Debug, Serialize)]
struct Report {
    cipher_suite: String,
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
}

const SAMPLES_PER_FRAME: usize = 960; // 20 ms at 48 kHz

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

fn tone_frame(index: u32) -> Vec<u8> {
    let start = index as usize * SAMPLES_PER_FRAME;
    (start..start + SAMPLES_PER_FRAME)
        .flat_map(|n| {
            let t = n as f64 / 48_000.0;
            let s = (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 0.5 * f64::from(i16::MAX);
            (s as i16).to_le_bytes()
        })
        .collect()
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let suite = CipherSuite::from_id(args.suite).map_err(|e| e.to_string())?;
    let mut base_key = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(base_key.as_mut())
        .map_err(|_| "no system randomness available".to_string())?;
    let mut eve_key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut eve_key)
        .map_err(|_| "no system randomness available".to_string())?;

    let kid = 1;
    let err = |e: sotto::sframe::SframeError| e.to_string();
    let mut alice = SenderContext::new(suite, kid, base_key.as_ref()).map_err(err)?;
    let mut bob = ReceiverContext::new();
    bob.add_key(suite, kid, base_key.as_ref()).map_err(err)?;
    let mut eve = ReceiverContext::new();
    eve.add_key(suite, kid, &eve_key).map_err(err)?;

    let originals: Vec<Vec<u8>> = (0..args.frames).map(tone_frame).collect();
    let mut crypto_ns = 0u128;
    let mut wire: Vec<Vec<u8>> = Vec::with_capacity(originals.len());
    for pcm in &originals {
        let t = Instant::now();
        wire.push(alice.encrypt_to_vec(&[], pcm).map_err(err)?);
        crypto_ns += t.elapsed().as_nanos();
    }
    // The relay looks for any 16-byte run of plaintext in what it carries.
    let relay_saw_plaintext = wire.iter().zip(&originals).any(|(ct, pt)| {
        pt.windows(16)
            .step_by(16)
            .any(|w| ct.windows(16).any(|c| c == w))
    });

    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let mut relayed: Vec<Vec<u8>> = Vec::with_capacity(wire.len() + wire.len() / 10);
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
        relayed.push(f);
        if rng.chance(2) && i > 0 {
            // Replay one of the last 64 genuine frames (inside Bob's replay window, so only
            // the window's duplicate check can stop it).
            let j = i - 1 - (rng.next() as usize) % i.min(64);
            relayed.push(wire[j].clone());
            delivered.insert(j);
            replayed += 1;
        }
        if rng.chance(3) && relayed.len() >= 2 {
            let n = relayed.len();
            relayed.swap(n - 1, n - 2);
            reordered += 1;
        }
    }

    let mut matched = 0u64;
    let mut buf = Vec::new();
    for frame in &relayed {
        buf.clear();
        buf.extend_from_slice(frame);
        let t = Instant::now();
        let result = bob.decrypt_in_place(&[], &mut buf);
        crypto_ns += t.elapsed().as_nanos();
        if let Ok(decrypted) = result {
            let index = decrypted.header.ctr as usize;
            if originals.get(index).map(Vec::as_slice) == Some(&*decrypted.payload) {
                matched += 1;
            }
        }
        let _ = eve.decrypt_to_vec(&[], frame);
    }

    let bob_stats = bob.stats();
    let eve_stats = eve.stats();
    let report = Report {
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
        eve_auth_failures: eve_stats.auth_failures,
        mean_encrypt_decrypt_ns: (crypto_ns / u128::from(args.frames.max(1))) as u64,
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
    {
        return Err("demo invariant violated: see the report above".into());
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "sotto demo: SFrame ({}) between Alice and Bob through a hostile relay",
        r.cipher_suite
    );
    println!();
    println!(
        "  Alice sent                      {:>6} frames (20 ms, 440 Hz tone)",
        r.frames_sent
    );
    println!(
        "  relay saw plaintext             {:>6}",
        if r.relay_saw_plaintext { "YES" } else { "no" }
    );
    println!(
        "  relay flipped a bit in          {:>6} frames",
        r.relay_tampered
    );
    println!(
        "  relay replayed                  {:>6} frames",
        r.relay_replayed
    );
    println!(
        "  relay reordered                 {:>6} pairs",
        r.relay_reordered
    );
    println!(
        "  relay dropped                   {:>6} frames",
        r.relay_dropped
    );
    println!();
    println!(
        "  Bob decrypted                   {:>6} frames, {} identical to what Alice sent",
        r.bob_decrypted, r.bob_matched_original
    );
    println!(
        "  Bob refused as forged           {:>6}",
        r.bob_auth_failures
    );
    println!(
        "  Bob refused as replayed         {:>6}",
        r.bob_replays_rejected
    );
    println!(
        "  Eve (wrong key) decrypted       {:>6} of {} tries",
        r.eve_decrypted,
        r.eve_decrypted + r.eve_auth_failures
    );
    println!();
    println!(
        "  mean SFrame cost per frame: {} ns encrypt + decrypt (1920-byte frames)",
        r.mean_encrypt_decrypt_ns
    );
}
