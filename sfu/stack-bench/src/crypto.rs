//! The SRTP cipher alone: AES-256-GCM sealing and opening one packet (a 20-byte RTP header as
//! associated data, the 80-byte payload), in ring (what `rtc` uses by default) and in
//! RustCrypto's `aes-gcm` (what str0m's `rust-crypto` provider uses, the way it calls it).

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as RingNonce, UnboundKey};

use crate::PAYLOAD_LEN;

const ROUNDS: u32 = 500_000;

/// Nanoseconds per (seal, open) in each implementation.
pub struct CryptoCost {
    pub ring_seal: f64,
    pub ring_open: f64,
    pub rustcrypto_seal: f64,
    pub rustcrypto_open: f64,
}

pub fn measure() -> Result<CryptoCost, String> {
    let key = [7u8; 32];
    let aad = [0x90u8; 20];
    let payload = [0x5au8; PAYLOAD_LEN];
    let iv = [3u8; 12];

    let ring_key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|e| e.to_string())?);
    let mut buf = payload.to_vec();
    let t = Instant::now();
    let mut tag = None;
    for _ in 0..ROUNDS {
        buf.copy_from_slice(&payload);
        tag = Some(
            ring_key
                .seal_in_place_separate_tag(
                    RingNonce::assume_unique_for_key(iv),
                    Aad::from(black_box(&aad)),
                    black_box(&mut buf[..]),
                )
                .map_err(|e| e.to_string())?,
        );
    }
    let ring_seal = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    let mut sealed = buf.clone();
    sealed.extend_from_slice(tag.ok_or("no tag")?.as_ref());
    let mut work = sealed.clone();
    let t = Instant::now();
    for _ in 0..ROUNDS {
        work.copy_from_slice(&sealed);
        let plain = ring_key
            .open_in_place(
                RingNonce::assume_unique_for_key(iv),
                Aad::from(black_box(&aad)),
                black_box(&mut work[..]),
            )
            .map_err(|e| e.to_string())?;
        black_box(plain);
    }
    let ring_open = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);

    let rc = Aes256Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
    let nonce = Nonce::from_slice(&iv);
    let t = Instant::now();
    let mut out = Vec::new();
    for _ in 0..ROUNDS {
        out = rc
            .encrypt(
                nonce,
                Payload {
                    msg: black_box(&payload[..]),
                    aad: &aad,
                },
            )
            .map_err(|e| e.to_string())?;
    }
    let rustcrypto_seal = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    if out != sealed {
        return Err("the two AES-GCM implementations disagree".into());
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        let plain = rc
            .decrypt(
                nonce,
                Payload {
                    msg: black_box(&sealed[..]),
                    aad: &aad,
                },
            )
            .map_err(|e| e.to_string())?;
        black_box(plain);
    }
    let rustcrypto_open = t.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    Ok(CryptoCost {
        ring_seal,
        ring_open,
        rustcrypto_seal,
        rustcrypto_open,
    })
}
