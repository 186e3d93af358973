//! Mouth-to-ear latency through the whole pipeline, over real WebRTC on loopback.
//!
//! A virtual microphone delivers 10 ms periods on a real-time clock and puts a short click
//! into one period every [`LatencyConfig::impulse_every`]; the sender rebuffers to codec
//! frames, encodes with Opus, seals with SFrame (or, for the baseline, does not) and sends on
//! a real peer connection; the receiver opens the frame, feeds the playout buffer, and a
//! virtual speaker pulls one period per 10 ms on a real-time clock, decoding frames as it
//! needs them. Latency is the speaker callback time of the period in which the click comes
//! out minus the microphone callback time of the period it went in. Each stage of the frame
//! that carried the click is timed along the way.
//!
//! An optional impairment drops and delays frames between the receiving transport and the
//! decryptor (seeded), to see the playout buffer work under loss and jitter.

mod report;

pub use report::{LatencyRun, RunSummary, StageSummary};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::handshake::{Handshake, Identity, MediaReceiver, MediaSender, RotationConfig};
use crate::media::{FrameDuration, OpusConfig, OpusDecoder, OpusEncoder};
use crate::playout::{AudioPlayout, Packet, PlayoutConfig};
use crate::sframe::CipherSuite;
use crate::transport::{MediaTransport, TransportConfig, seal};

/// Period of the virtual devices: what a low-latency audio device typically delivers.
pub const DEVICE_PERIOD: Duration = Duration::from_millis(10);
const PERIOD_SAMPLES: usize = 480;

/// Errors setting up a measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LatencyError {
    /// The peer connection could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// The handshake or key setup failed.
    #[error("keys: {0}")]
    Keys(#[from] crate::handshake::HandshakeError),
    /// The codec refused a setting.
    #[error("codec: {0}")]
    Codec(#[from] crate::media::CodecError),
    /// A pipeline thread failed.
    #[error("pipeline: {0}")]
    Pipeline(String),
}

/// Simulated network trouble between the receiving transport and the decryptor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Share of frames dropped, percent.
    pub loss_percent: f64,
    /// Each frame is delayed by a uniform random time up to this.
    pub jitter: Duration,
    /// Seed of the random choices.
    pub seed: u64,
}

/// One measurement run.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// Codec frame length.
    pub frame: FrameDuration,
    /// SFrame on (the product) or off (the baseline that shows its cost).
    pub e2ee: bool,
    /// How long to run.
    pub duration: Duration,
    /// Time between clicks (more than the worst latency expected).
    pub impulse_every: Duration,
    /// Loss and jitter, if any.
    pub impairment: Option<Impairment>,
}

impl LatencyConfig {
    /// A clean run of `duration` with `frame` and E2EE on or off.
    pub fn new(frame: FrameDuration, e2ee: bool, duration: Duration) -> Self {
        LatencyConfig {
            frame,
            e2ee,
            duration,
            impulse_every: Duration::from_millis(200),
            impairment: None,
        }
    }
}

/// Per-stage times of one click's frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stages {
    /// Microphone callback to the codec frame being complete.
    pub capture_buffering: Duration,
    /// Opus encode.
    pub encode: Duration,
    /// SFrame seal (zero without E2EE).
    pub encrypt: Duration,
    /// Handing the frame to the transport until it arrives at the receiver (and passes the
    /// impairment, if any).
    pub network: Duration,
    /// SFrame open (zero without E2EE).
    pub decrypt: Duration,
    /// Waiting in the playout buffer until the speaker needs the frame.
    pub playout_wait: Duration,
    /// Opus decode.
    pub decode: Duration,
    /// Decoded until the speaker callback that plays the click (the decoded-frame queue, the
    /// click's place in the frame and the codec's look-ahead).
    pub playback_buffering: Duration,
}

/// One click's journey.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImpulseSample {
    /// Mouth to ear.
    pub total: Duration,
    /// Stage times, when the frame that carried the click arrived (not when it was lost and
    /// concealed or recovered).
    pub stages: Option<Stages>,
}

#[derive(Debug, Clone, Copy)]
struct SendRecord {
    frame: u64,
    ready: Instant,
    encode: Duration,
    encrypt: Duration,
    sent: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct RecvRecord {
    frame: u64,
    arrival: Option<Instant>,
    decrypt: Duration,
    decrypted: Option<Instant>,
    popped: Option<Instant>,
    decode: Duration,
}

/// Records of the last frames, indexed by frame number modulo the length.
struct Ledger<T> {
    slots: Vec<Option<T>>,
}

impl<T: Copy> Ledger<T> {
    fn new() -> Self {
        Ledger {
            slots: vec![None; 1024],
        }
    }
    fn put(&mut self, frame: u64, v: T) {
        let n = self.slots.len() as u64;
        self.slots[(frame % n) as usize] = Some(v);
    }
    fn get(&self, frame: u64) -> Option<T> {
        let n = self.slots.len() as u64;
        self.slots[(frame % n) as usize]
    }
}

struct Shared {
    stop: AtomicBool,
    /// Microphone callback times of the clicks, with the frame that carries each.
    clicks: Mutex<Vec<(Instant, u64)>>,
    sends: Mutex<Ledger<SendRecord>>,
    recvs: Mutex<Ledger<RecvRecord>>,
    /// Speaker callback times at which a click came out.
    heard: Mutex<Vec<Instant>>,
    dropped: std::sync::atomic::AtomicU64,
    frames_sent: std::sync::atomic::AtomicU64,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: impl std::fmt::Display) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| e.to_string());
        self.stop.store(true, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps until `deadline` (coarse sleep, then a short spin for precision).
fn sleep_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(1500) {
            std::thread::sleep(left - Duration::from_micros(1000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Samples in a click: 2 ms of a 2 kHz burst, loud enough to find after any codec.
const CLICK_SAMPLES: usize = 96;

/// Writes a click starting at `offset` into `period`.
fn write_click(period: &mut [f32], offset: usize) {
    for (i, s) in period[offset..].iter_mut().take(CLICK_SAMPLES).enumerate() {
        *s = 0.8 * (std::f32::consts::TAU * 2000.0 * i as f32 / 48_000.0).sin();
    }
}

/// The speaker's clock runs half a period after the microphone's: independent devices have
/// an arbitrary phase, and half a period is its average.
const SPEAKER_PHASE: Duration = Duration::from_millis(5);

/// Keys from a real handshake, both ends in this process.
fn agree_keys(suite: CipherSuite) -> Result<(MediaSender, MediaReceiver), LatencyError> {
    let a = Arc::new(Identity::generate()?);
    let b = Arc::new(Identity::generate()?);
    let (mut hi, hello) = Handshake::initiator(a, "latency", "mouth")?;
    let mut hr = Handshake::responder(b, "latency", "ear")?;
    let closed = || crate::handshake::HandshakeError::Closed;
    let reply = hr.handle(&hello)?.send.ok_or_else(closed)?;
    let reveal = hi.handle(&reply)?.send.ok_or_else(closed)?;
    let step = hr.handle(&reveal)?;
    let ear = step.established.ok_or_else(closed)?;
    let mouth = hi
        .handle(&step.send.ok_or_else(closed)?)?
        .established
        .ok_or_else(closed)?;
    let rotation = RotationConfig::default();
    Ok((
        MediaSender::new(suite, mouth.keys.send, rotation, Instant::now())?,
        MediaReceiver::new(suite, ear.keys.recv, rotation)?,
    ))
}

/// Runs one measurement on the current tokio runtime (multi-threaded).
pub async fn measure(config: LatencyConfig) -> Result<LatencyRun, LatencyError> {
    let frame_samples = config.frame.samples();
    let periods_per_frame = frame_samples / PERIOD_SAMPLES;
    let mouth = Arc::new(MediaTransport::new(TransportConfig::default()).await?);
    let mut ear = MediaTransport::new(TransportConfig::default()).await?;
    let mut incoming = ear
        .take_frames()
        .ok_or_else(|| LatencyError::Pipeline("no frame stream".into()))?;
    let answer = ear.accept_offer(&mouth.create_offer().await?).await?;
    mouth.accept_answer(&answer).await?;
    mouth.connected(Duration::from_secs(10)).await?;
    ear.connected(Duration::from_secs(10)).await?;

    let suite = CipherSuite::AesGcm128Sha256;
    let (mut sender, mut receiver) = agree_keys(suite)?;
    let opus = OpusConfig {
        frame: config.frame,
        ..OpusConfig::default()
    };
    let mut encoder = OpusEncoder::new(opus)?;
    let lookahead = encoder.lookahead()?;
    let decoder = OpusDecoder::new(config.frame)?;
    let mut playout = AudioPlayout::new(
        PlayoutConfig {
            frame: config.frame.duration(),
            ..PlayoutConfig::default()
        },
        decoder,
    );
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        clicks: Mutex::new(Vec::new()),
        sends: Mutex::new(Ledger::new()),
        recvs: Mutex::new(Ledger::new()),
        heard: Mutex::new(Vec::new()),
        dropped: Default::default(),
        frames_sent: Default::default(),
        error: Mutex::new(None),
    });
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(50);

    // Microphone + sender: one thread, as a device callback feeding the codec thread would
    // be, without the hand-off (which the capture-buffering stage would otherwise hide).
    let tx_shared = Arc::clone(&shared);
    let tx_mouth = Arc::clone(&mouth);
    let e2ee = config.e2ee;
    let impulse_periods = (config.impulse_every.as_millis() / 10).max(2) as u64;
    let mic = std::thread::Builder::new()
        .name("latency-mouth".into())
        .spawn(move || {
            let shared = tx_shared;
            let mut pcm = vec![0f32; frame_samples];
            let mut packet = vec![0u8; 1500];
            let mut click_at: Option<Instant> = None;
            let mut period_no: u64 = 0;
            let mut frame_no: u64 = 0;
            // Clicks land in every slot of the frame and anywhere in a period, as speech does.
            let mut place = rand_chacha::ChaCha8Rng::seed_from_u64(0x5077);
            let mut next_click = impulse_periods * 3;
            let mut click_offset = 0;
            while !shared.stop.load(Relaxed) {
                let slot = (period_no % periods_per_frame as u64) as usize;
                sleep_until(start + DEVICE_PERIOD * (period_no as u32 + 1));
                let callback = Instant::now();
                let period = &mut pcm[slot * PERIOD_SAMPLES..(slot + 1) * PERIOD_SAMPLES];
                period.fill(0.0);
                // The first clicks come after the playout buffer has settled.
                if period_no == next_click {
                    write_click(period, click_offset);
                    click_at = Some(callback);
                    next_click += impulse_periods + place.random_range(0..periods_per_frame as u64);
                    click_offset = place.random_range(0..PERIOD_SAMPLES - CLICK_SAMPLES);
                }
                period_no += 1;
                if slot + 1 < periods_per_frame {
                    continue;
                }
                let ready = Instant::now();
                let t = Instant::now();
                let len = match encoder.encode(&pcm, &mut packet) {
                    Ok(n) => n,
                    Err(e) => return shared.fail(e),
                };
                let encode = t.elapsed();
                let t = Instant::now();
                let sent_result = if e2ee {
                    if let Err(e) = sender.poll(t) {
                        return shared.fail(e);
                    }
                    match seal(sender.context(), &packet[..len]) {
                        Ok(sealed) => {
                            let encrypt = t.elapsed();
                            let sent = Instant::now();
                            runtime
                                .block_on(tx_mouth.send(&sealed, opus.frame.duration()))
                                .map(|()| (encrypt, sent))
                        }
                        Err(e) => return shared.fail(e),
                    }
                } else {
                    let sent = Instant::now();
                    runtime
                        .block_on(tx_mouth.send_unprotected_for_latency_baseline(
                            &packet[..len],
                            opus.frame.duration(),
                        ))
                        .map(|()| (Duration::ZERO, sent))
                };
                let (encrypt, sent) = match sent_result {
                    Ok(v) => v,
                    Err(e) => return shared.fail(e),
                };
                lock(&shared.sends).put(
                    frame_no,
                    SendRecord {
                        frame: frame_no,
                        ready,
                        encode,
                        encrypt,
                        sent,
                    },
                );
                if let Some(at) = click_at.take() {
                    lock(&shared.clicks).push((at, frame_no));
                }
                shared.frames_sent.fetch_add(1, Relaxed);
                frame_no += 1;
            }
        })
        .map_err(|e| LatencyError::Pipeline(e.to_string()))?;

    // Receiver: transport -> (impairment) -> decrypt -> playout queue.
    let (packets_tx, packets_rx) = std::sync::mpsc::sync_channel::<(Packet, Instant, u64)>(256);
    let rx_shared = Arc::clone(&shared);
    let impairment = config.impairment;
    let receive = tokio::spawn(async move {
        let shared = rx_shared;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(impairment.map_or(0, |i| i.seed));
        let mut first_ts: Option<u32> = None;
        let (delayed_tx, mut delayed_rx) = tokio::sync::mpsc::channel(512);
        loop {
            let (frame, arrival) = tokio::select! {
                f = incoming.recv() => match f {
                    None => break,
                    Some(f) => {
                        if let Some(imp) = impairment {
                            if rng.random_bool((imp.loss_percent / 100.0).clamp(0.0, 1.0)) {
                                shared.dropped.fetch_add(1, Relaxed);
                                continue;
                            }
                            let delay = imp.jitter.mul_f64(rng.random::<f64>());
                            let tx = delayed_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = tx.send((f, Instant::now())).await;
                            });
                            continue;
                        }
                        let arrival = f.arrival;
                        (f, arrival)
                    }
                },
                Some(d) = delayed_rx.recv() => d,
            };
            let base = *first_ts.get_or_insert(frame.timestamp);
            let frame_no = u64::from(frame.timestamp.wrapping_sub(base)) / frame_samples as u64;
            let mut buf = frame.payload.to_vec();
            let t = Instant::now();
            let payload = if e2ee {
                match receiver.decrypt_in_place(&[], &mut buf, t) {
                    Ok(d) => d.payload.to_vec(),
                    Err(e) => {
                        shared.fail(format!("decrypt: {e}"));
                        break;
                    }
                }
            } else {
                buf
            };
            let decrypted = Instant::now();
            lock(&shared.recvs).put(
                frame_no,
                RecvRecord {
                    frame: frame_no,
                    arrival: Some(arrival),
                    decrypt: if e2ee { decrypted - t } else { Duration::ZERO },
                    decrypted: Some(decrypted),
                    ..RecvRecord::default()
                },
            );
            let packet = Packet {
                seq: frame.seq,
                timestamp: frame.timestamp,
                payload,
            };
            if packets_tx.try_send((packet, arrival, frame_no)).is_err() {
                break;
            }
        }
    });

    // Speaker: one period per 10 ms; decodes a frame whenever its queue runs low.
    let sp_shared = Arc::clone(&shared);
    let speaker = std::thread::Builder::new()
        .name("latency-ear".into())
        .spawn(move || {
            let shared = sp_shared;
            let epoch = Instant::now();
            let mut queue: VecDeque<f32> = VecDeque::with_capacity(frame_samples * 3);
            let mut pcm = vec![0f32; frame_samples];
            let mut base_ts: Option<u32> = None;
            let mut quiet_since_click = true;
            let mut quiet_samples = 0usize;
            let mut period_no: u64 = 0;
            while !shared.stop.load(Relaxed) {
                sleep_until(start + SPEAKER_PHASE + DEVICE_PERIOD * (period_no as u32 + 1));
                period_no += 1;
                let callback = Instant::now();
                while let Ok((packet, arrival, frame_no)) = packets_rx.try_recv() {
                    base_ts.get_or_insert(
                        packet
                            .timestamp
                            .wrapping_sub((frame_no as u32).wrapping_mul(frame_samples as u32)),
                    );
                    playout.insert(packet, arrival.saturating_duration_since(epoch));
                }
                while queue.len() < PERIOD_SAMPLES {
                    let popped = Instant::now();
                    let t = Instant::now();
                    playout.next_frame(popped.saturating_duration_since(epoch), &mut pcm);
                    let decode = t.elapsed();
                    if let (Some(ts), Some(base)) = (playout.last_played(), base_ts) {
                        let frame_no = u64::from(ts.wrapping_sub(base)) / frame_samples as u64;
                        let mut recvs = lock(&shared.recvs);
                        if let Some(mut r) = recvs.get(frame_no).filter(|r| r.frame == frame_no) {
                            r.popped = Some(popped);
                            r.decode = decode;
                            recvs.put(frame_no, r);
                        }
                    }
                    queue.extend(pcm.iter().copied());
                }
                // Play one period; a click is the first loud sample after 50 ms of quiet.
                for s in queue.drain(..PERIOD_SAMPLES) {
                    if s.abs() > 0.2 {
                        if quiet_since_click {
                            lock(&shared.heard).push(callback);
                            quiet_since_click = false;
                        }
                        quiet_samples = 0;
                    } else {
                        quiet_samples += 1;
                        if quiet_samples > 2400 {
                            quiet_since_click = true;
                        }
                    }
                }
            }
        })
        .map_err(|e| LatencyError::Pipeline(e.to_string()))?;

    tokio::time::sleep(config.duration).await;
    shared.stop.store(true, Relaxed);
    let joined = tokio::task::spawn_blocking(move || (mic.join(), speaker.join()))
        .await
        .map_err(|e| LatencyError::Pipeline(e.to_string()))?;
    if joined.0.is_err() || joined.1.is_err() {
        return Err(LatencyError::Pipeline("a pipeline thread panicked".into()));
    }
    receive.abort();
    let _ = mouth.close().await;
    let _ = ear.close().await;
    if let Some(e) = lock(&shared.error).take() {
        return Err(LatencyError::Pipeline(e));
    }

    let samples = match_clicks(&shared, config.impulse_every);
    Ok(LatencyRun {
        frame_ms: config.frame.duration().as_millis() as u32,
        e2ee: config.e2ee,
        impairment: config.impairment,
        codec_lookahead: Duration::from_secs_f64(f64::from(lookahead) / 48_000.0),
        frames_sent: shared.frames_sent.load(Relaxed),
        frames_dropped: shared.dropped.load(Relaxed),
        samples,
    })
}

/// Pairs each click heard with the latest click sent before it (latency below the click
/// spacing), and gathers the stage times of the frame that carried it.
fn match_clicks(shared: &Shared, spacing: Duration) -> Vec<ImpulseSample> {
    let clicks = lock(&shared.clicks).clone();
    let heard = lock(&shared.heard).clone();
    let sends = lock(&shared.sends);
    let recvs = lock(&shared.recvs);
    let mut out = Vec::new();
    for ear in heard {
        let Some(&(mouth, frame)) = clicks.iter().rev().find(|(t, _)| *t < ear) else {
            continue;
        };
        let total = ear - mouth;
        if total >= spacing {
            continue;
        }
        let stages = match (
            sends.get(frame).filter(|s| s.frame == frame),
            recvs.get(frame).filter(|r| r.frame == frame),
        ) {
            (Some(s), Some(r)) => match (r.arrival, r.decrypted, r.popped) {
                (Some(arrival), Some(decrypted), Some(popped)) => Some(Stages {
                    capture_buffering: s.ready.saturating_duration_since(mouth),
                    encode: s.encode,
                    encrypt: s.encrypt,
                    network: arrival.saturating_duration_since(s.sent),
                    decrypt: r.decrypt,
                    playout_wait: popped.saturating_duration_since(decrypted),
                    decode: r.decode,
                    playback_buffering: ear.saturating_duration_since(popped + r.decode),
                }),
                _ => None,
            },
            _ => None,
        };
        out.push(ImpulseSample { total, stages });
    }
    out
}
