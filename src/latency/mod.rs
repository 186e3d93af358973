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
//!
//! ```no_run
//! # async fn demo() -> Result<(), sotto::latency::LatencyError> {
//! use std::time::Duration;
//! use sotto::latency::{LatencyConfig, measure};
//! use sotto::media::FrameDuration;
//!
//! let run = measure(LatencyConfig::new(FrameDuration::Ms20, true, Duration::from_secs(5))).await?;
//! println!("{} clicks measured", run.samples.len());
//! # Ok(()) }
//! ```

mod report;
mod video;

pub use report::{LatencyRun, RunSummary, StageSummary};
pub use video::{
    VideoLatencyConfig, VideoLatencyRun, VideoRunSummary, VideoSample, VideoStageSummary,
    VideoStages, measure_video,
};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::handshake::{
    DtlsFingerprint, Handshake, Identity, MediaReceiver, MediaSender, RotationConfig,
};
use crate::media::{FrameDuration, OpusConfig, OpusDecoder, OpusEncoder};
use crate::playout::{AudioPlayout, Packet, PlayoutConfig, PlayoutStats};
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
    /// One stall of this length in the middle of the run (zero: none): every frame that
    /// reaches the impairment during it is held until it ends, as a Wi-Fi stall does.
    pub spike: Duration,
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
    /// Real devices instead of virtual ones: `None` for virtual devices.
    pub devices: Option<DeviceNames>,
}

/// The real devices of a `--devices` run. The mouth plays clicks into the room the
/// microphone hears; the ear must be a speaker the microphone does not hear.
#[derive(Debug, Clone, Default)]
pub struct DeviceNames {
    /// Output the clicks are played on (`None`: the default output).
    pub mouth: Option<String>,
    /// Input that hears the mouth (`None`: the default input).
    pub microphone: Option<String>,
    /// Output the receiver plays on.
    pub ear: String,
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
            devices: None,
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

/// (call time, playout delay, target) at every playout call.
type Trace = Vec<(Instant, Duration, Duration)>;

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
    /// The playout's counters at the end, and its (time, delay, target) at every call.
    playout: Mutex<(PlayoutStats, Trace)>,
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

/// Keys from a real handshake, both ends in this process, bound to the two transports.
fn agree_keys(
    suite: CipherSuite,
    mouth_dtls: &DtlsFingerprint,
    ear_dtls: &DtlsFingerprint,
) -> Result<(MediaSender, MediaReceiver), LatencyError> {
    let a = Arc::new(Identity::generate()?);
    let b = Arc::new(Identity::generate()?);
    let (mut hi, hello) = Handshake::initiator(a, "latency", "mouth", mouth_dtls)?;
    let mut hr = Handshake::responder(b, "latency", "ear", ear_dtls)?;
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
    let mouth = Arc::new(MediaTransport::new(TransportConfig::default()).await?);
    let mut ear = MediaTransport::new(TransportConfig::default()).await?;
    let incoming = ear
        .take_frames()
        .ok_or_else(|| LatencyError::Pipeline("no frame stream".into()))?;
    let answer = ear.accept_offer(&mouth.create_offer().await?).await?;
    mouth.accept_answer(&answer).await?;
    mouth.connected(Duration::from_secs(10)).await?;
    ear.connected(Duration::from_secs(10)).await?;

    let suite = CipherSuite::AesGcm128Sha256;
    let (sender, receiver) = agree_keys(suite, mouth.dtls_fingerprint(), ear.dtls_fingerprint())?;
    let opus = OpusConfig {
        frame: config.frame,
        ..OpusConfig::default()
    };
    let mut encoder = OpusEncoder::new(opus)?;
    let frame_samples = config.frame.samples();
    let lookahead = encoder.lookahead()?;
    let decoder = OpusDecoder::new(config.frame)?;
    let playout = AudioPlayout::new(
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
        playout: Mutex::new((PlayoutStats::default(), Vec::new())),
    });
    let e2ee = config.e2ee;
    let send_path = SendPath {
        encoder,
        sender,
        e2ee,
        transport: Arc::clone(&mouth),
        runtime: tokio::runtime::Handle::current(),
        shared: Arc::clone(&shared),
        frame: config.frame,
        packet: vec![0u8; 1500],
        frame_no: 0,
    };

    // Receiver: transport -> (impairment) -> decrypt -> playout queue.
    let (packets_tx, packets_rx) = std::sync::mpsc::sync_channel::<(Packet, Instant, u64)>(256);
    let spike_at = Instant::now() + config.duration / 2;
    let receive = tokio::spawn(receive_frames(
        incoming,
        receiver,
        packets_tx,
        Arc::clone(&shared),
        config.impairment.map(|i| (i, spike_at)),
        e2ee,
        frame_samples,
    ));
    let play_path = PlayPath {
        playout,
        packets: packets_rx,
        shared: Arc::clone(&shared),
        epoch: Instant::now(),
        base_ts: None,
        frame_samples,
        trace: Vec::with_capacity((config.duration.as_millis() / 10 + 200) as usize),
    };
    let threads = match &config.devices {
        None => virtual_devices(send_path, play_path, &shared, &config)?,
        Some(names) => real_devices(send_path, play_path, &shared, &config, names)?,
    };

    tokio::time::sleep(config.duration).await;
    shared.stop.store(true, Relaxed);
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().is_ok())
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| LatencyError::Pipeline(e.to_string()))?;
    if joined.iter().any(|ok| !ok) {
        return Err(LatencyError::Pipeline("a pipeline thread panicked".into()));
    }
    receive.abort();
    let _ = mouth.close().await;
    let _ = ear.close().await;
    if let Some(e) = lock(&shared.error).take() {
        return Err(LatencyError::Pipeline(e));
    }

    let samples = match_clicks(&shared, config.impulse_every);
    let (playout, trace) = {
        let t = lock(&shared.playout);
        (t.0, t.1.clone())
    };
    let spike = config.impairment.map_or(Duration::ZERO, |i| i.spike);
    let recovery = (!spike.is_zero()).then(|| recovery_after(&trace, spike_at, spike));
    Ok(LatencyRun {
        playout,
        recovery: recovery.flatten(),
        frame_ms: config.frame.duration().as_millis() as u32,
        e2ee: config.e2ee,
        impairment: config.impairment,
        codec_lookahead: Duration::from_secs_f64(f64::from(lookahead) / 48_000.0),
        frames_sent: shared.frames_sent.load(Relaxed),
        frames_dropped: shared.dropped.load(Relaxed),
        samples,
    })
}

/// Time from the end of the stall until the playout delay is back within 10 % of the target
/// it had in the second before the stall (`None`: never, in the run).
fn recovery_after(
    trace: &[(Instant, Duration, Duration)],
    at: Instant,
    len: Duration,
) -> Option<Duration> {
    let before: Vec<Duration> = trace
        .iter()
        .filter(|(t, _, _)| *t < at && *t + Duration::from_secs(1) >= at)
        .map(|(_, _, target)| *target)
        .collect();
    if before.is_empty() {
        return None;
    }
    let target = before.iter().sum::<Duration>() / before.len() as u32;
    let end = at + len;
    trace
        .iter()
        .find(|(t, delay, _)| *t >= end && *delay <= target.mul_f64(1.1))
        .map(|(t, _, _)| *t - end)
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

/// The sending half after the microphone: encode, seal (or not), send, record.
struct SendPath {
    encoder: OpusEncoder,
    sender: MediaSender,
    e2ee: bool,
    transport: Arc<MediaTransport>,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    frame: FrameDuration,
    packet: Vec<u8>,
    frame_no: u64,
}

impl SendPath {
    /// Sends one complete frame; `click` is the microphone callback time of a click in it.
    fn send(&mut self, pcm: &[f32], click: Option<Instant>) -> Result<(), String> {
        let ready = Instant::now();
        let len = self
            .encoder
            .encode(pcm, &mut self.packet)
            .map_err(|e| e.to_string())?;
        let encode = ready.elapsed();
        let t = Instant::now();
        let duration = self.frame.duration();
        let (encrypt, sent, result) = if self.e2ee {
            self.sender.poll(t).map_err(|e| e.to_string())?;
            let sealed =
                seal(self.sender.context(), &self.packet[..len]).map_err(|e| e.to_string())?;
            let encrypt = t.elapsed();
            let sent = Instant::now();
            let r = self
                .runtime
                .block_on(self.transport.send(&sealed, duration));
            (encrypt, sent, r)
        } else {
            let sent = Instant::now();
            let r = self.runtime.block_on(
                self.transport
                    .send_unprotected_for_latency_baseline(&self.packet[..len], duration),
            );
            (Duration::ZERO, sent, r)
        };
        result.map_err(|e| e.to_string())?;
        let frame = self.frame_no;
        lock(&self.shared.sends).put(
            frame,
            SendRecord {
                frame,
                ready,
                encode,
                encrypt,
                sent,
            },
        );
        if let Some(at) = click {
            lock(&self.shared.clicks).push((at, frame));
        }
        self.shared.frames_sent.fetch_add(1, Relaxed);
        self.frame_no += 1;
        Ok(())
    }
}

/// Transport -> (impairment) -> SFrame open -> playout queue, recording each frame's times.
async fn receive_frames(
    mut incoming: tokio::sync::mpsc::Receiver<crate::transport::ReceivedFrame>,
    mut receiver: MediaReceiver,
    packets: std::sync::mpsc::SyncSender<(Packet, Instant, u64)>,
    shared: Arc<Shared>,
    impairment: Option<(Impairment, Instant)>,
    e2ee: bool,
    frame_samples: usize,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(impairment.map_or(0, |(i, _)| i.seed));
    let mut first_ts: Option<u32> = None;
    let mut order = crate::transport::FrameOrder::new();
    let (delayed_tx, mut delayed_rx) = tokio::sync::mpsc::channel(512);
    loop {
        let (frame, arrival) = tokio::select! {
            f = incoming.recv() => match f {
                None => break,
                Some(f) => {
                    if let Some((imp, spike_at)) = impairment {
                        if rng.random_bool((imp.loss_percent / 100.0).clamp(0.0, 1.0)) {
                            shared.dropped.fetch_add(1, Relaxed);
                            continue;
                        }
                        let mut delay = imp.jitter.mul_f64(rng.random::<f64>());
                        let now = Instant::now();
                        if now >= spike_at && now < spike_at + imp.spike {
                            // Held until the stall ends, then on with its own jitter.
                            delay += spike_at + imp.spike - now;
                        }
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
                // The call's receive path: the RTP position must agree with the counter.
                Ok(d) => match order.admit(d.header.ctr, frame.timestamp, frame.seq) {
                    Ok(()) => d.payload.to_vec(),
                    Err(e) => {
                        tracing::debug!("latency: dropped a frame: {e}");
                        continue;
                    }
                },
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
        if packets.try_send((packet, arrival, frame_no)).is_err() {
            break;
        }
    }
}

/// The receiving half before the speaker: playout buffer and decoder.
struct PlayPath {
    playout: AudioPlayout<OpusDecoder>,
    packets: std::sync::mpsc::Receiver<(Packet, Instant, u64)>,
    shared: Arc<Shared>,
    epoch: Instant,
    base_ts: Option<u32>,
    frame_samples: usize,
    /// (call time, playout delay, target) at every call.
    trace: Trace,
}

impl Drop for PlayPath {
    fn drop(&mut self) {
        let mut p = lock(&self.shared.playout);
        p.0 = *self.playout.stats();
        p.1 = std::mem::take(&mut self.trace);
    }
}

impl PlayPath {
    /// Produces the next frame of output for a device that asked for it at `asked`,
    /// recording that as the time its packet left the buffer.
    fn next_frame(&mut self, pcm: &mut [f32], asked: Instant) {
        while let Ok((packet, arrival, frame_no)) = self.packets.try_recv() {
            self.base_ts.get_or_insert(
                packet
                    .timestamp
                    .wrapping_sub((frame_no as u32).wrapping_mul(self.frame_samples as u32)),
            );
            self.playout
                .insert(packet, arrival.saturating_duration_since(self.epoch));
        }
        let popped = asked;
        let t = Instant::now();
        self.playout
            .next_frame(t.saturating_duration_since(self.epoch), pcm);
        let decode = t.elapsed();
        if self.trace.len() < self.trace.capacity() {
            let s = self.playout.stats();
            self.trace.push((asked, s.delay, s.target));
        }
        if let (Some(ts), Some(base)) = (self.playout.last_played(), self.base_ts) {
            let frame_no = u64::from(ts.wrapping_sub(base)) / self.frame_samples as u64;
            let mut recvs = lock(&self.shared.recvs);
            if let Some(mut r) = recvs.get(frame_no).filter(|r| r.frame == frame_no) {
                r.popped = Some(popped);
                r.decode = decode;
                recvs.put(frame_no, r);
            }
        }
    }
}

/// Finds click onsets: the first loud sample after 50 ms of quiet.
#[derive(Debug, Default)]
struct Onsets {
    quiet: usize,
    loud: bool,
}

impl Onsets {
    /// The index of the first onset in `samples`, if any.
    fn scan(&mut self, samples: &[f32]) -> Option<usize> {
        let mut found = None;
        for (i, s) in samples.iter().enumerate() {
            if s.abs() > 0.2 {
                if !self.loud && found.is_none() {
                    found = Some(i);
                }
                self.loud = true;
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet > 2400 {
                    self.loud = false;
                }
            }
        }
        found
    }
}

/// What a measurement's threads share: a way to stop them all with the first error.
trait Pipeline: Send + Sync + 'static {
    /// Records the first error and stops the measurement.
    fn fail(&self, e: String);
}

impl Pipeline for Shared {
    fn fail(&self, e: String) {
        Shared::fail(self, e);
    }
}

/// Runs `body` on a named thread; an error it returns stops the whole measurement.
fn spawn<S: Pipeline>(
    name: &str,
    shared: &Arc<S>,
    body: impl FnOnce(&S) -> Result<(), String> + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, LatencyError> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = body(&shared) {
                shared.fail(e);
            }
        })
        .map_err(|e| LatencyError::Pipeline(e.to_string()))
}

/// Virtual microphone and speaker: 10 ms periods on a real-time clock.
fn virtual_devices(
    mut send: SendPath,
    mut play: PlayPath,
    shared: &Arc<Shared>,
    config: &LatencyConfig,
) -> Result<Vec<std::thread::JoinHandle<()>>, LatencyError> {
    let frame_samples = config.frame.samples();
    let periods_per_frame = frame_samples / PERIOD_SAMPLES;
    let impulse_periods = (config.impulse_every.as_millis() / 10).max(2) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    // Microphone + sender in one thread, as a device callback feeding the codec would be,
    // without a hand-off that would blur the capture-buffering stage.
    let mic = spawn("latency-mouth", shared, move |shared| {
        let mut pcm = vec![0f32; frame_samples];
        let mut click_at: Option<Instant> = None;
        // Clicks land in every slot of the frame and anywhere in a period, as speech does.
        let mut place = rand_chacha::ChaCha8Rng::seed_from_u64(0x5077);
        let mut next_click = impulse_periods * 3;
        let mut click_offset = 0;
        let mut period_no: u64 = 0;
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
            if slot + 1 == periods_per_frame {
                send.send(&pcm, click_at.take())?;
            }
        }
        Ok(())
    })?;
    // Speaker: asks the playout for one period per 10 ms, as a device callback does.
    let speaker = spawn("latency-ear", shared, move |shared| {
        let mut pcm = vec![0f32; PERIOD_SAMPLES];
        let mut onsets = Onsets::default();
        let mut period_no: u64 = 0;
        while !shared.stop.load(Relaxed) {
            sleep_until(start + SPEAKER_PHASE + DEVICE_PERIOD * (period_no as u32 + 1));
            period_no += 1;
            let callback = Instant::now();
            play.next_frame(&mut pcm, callback);
            let click = onsets.scan(&pcm).is_some();
            // The period reaches the device when the callback returns, decoding included.
            let delivered = Instant::now();
            if click {
                lock(&shared.heard).push(delivered);
            }
        }
        Ok(())
    })?;
    Ok(vec![mic, speaker])
}

/// Real devices: the mouth plays clicks into the room, the microphone hears them, the ear
/// plays what arrives; times come from the devices' own callbacks.
fn real_devices(
    mut send: SendPath,
    mut play: PlayPath,
    shared: &Arc<Shared>,
    config: &LatencyConfig,
    names: &DeviceNames,
) -> Result<Vec<std::thread::JoinHandle<()>>, LatencyError> {
    use crate::media::{AudioSink, AudioSource, DeviceSink, DeviceSource};
    let dev = |e: crate::media::MediaError| LatencyError::Pipeline(e.to_string());
    let mut mouth = DeviceSink::open(names.mouth.as_deref()).map_err(dev)?;
    let mut mic = DeviceSource::open(names.microphone.as_deref()).map_err(dev)?;
    let mut ear = DeviceSink::open(Some(&names.ear)).map_err(|e| {
        LatencyError::Pipeline(format!(
            "{e} (--devices needs an output the microphone does not hear; scripts/pulse \
             makes one called sotto_ear)"
        ))
    })?;
    for (what, rate) in [
        ("microphone", mic.native_format().0),
        ("ear", ear.native_format().0),
    ] {
        if rate != crate::media::SAMPLE_RATE {
            return Err(LatencyError::Pipeline(format!(
                "the {what} runs at {rate} Hz; --devices measures 48 kHz devices only"
            )));
        }
    }
    let frame_samples = config.frame.samples();
    let every = config.impulse_every;
    let player = spawn("latency-mouth", shared, move |shared| {
        let mut period = vec![0f32; PERIOD_SAMPLES];
        let mut place = rand_chacha::ChaCha8Rng::seed_from_u64(0x5077);
        let mut next = Instant::now() + Duration::from_millis(1500);
        while !shared.stop.load(Relaxed) {
            period.fill(0.0);
            if Instant::now() >= next {
                write_click(
                    &mut period,
                    place.random_range(0..PERIOD_SAMPLES - CLICK_SAMPLES),
                );
                next += every;
            }
            mouth.write_frame(&period).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    let sender = spawn("latency-mic", shared, move |shared| {
        let mut pcm = vec![0f32; frame_samples];
        let mut onsets = Onsets::default();
        let mut read: u64 = 0;
        while !shared.stop.load(Relaxed) {
            mic.read_frame(&mut pcm).map_err(|e| e.to_string())?;
            let click = onsets
                .scan(&pcm)
                .and_then(|i| mic.capture_callback_of(read + i as u64));
            read += frame_samples as u64;
            send.send(&pcm, click)?;
        }
        Ok(())
    })?;
    let speaker = spawn("latency-ear", shared, move |shared| {
        let mut pcm = vec![0f32; frame_samples];
        let mut onsets = Onsets::default();
        let mut written: u64 = 0;
        let mut pending: VecDeque<u64> = VecDeque::new();
        while !shared.stop.load(Relaxed) {
            play.next_frame(&mut pcm, Instant::now());
            if let Some(i) = onsets.scan(&pcm) {
                pending.push_back(written + i as u64);
            }
            ear.write_frame(&pcm).map_err(|e| e.to_string())?;
            written += frame_samples as u64;
            while let Some(&sample) = pending.front() {
                match ear.playback_callback_of(sample) {
                    Some(t) => {
                        lock(&shared.heard).push(t);
                        pending.pop_front();
                    }
                    None => break,
                }
            }
        }
        Ok(())
    })?;
    Ok(vec![player, sender, speaker])
}
