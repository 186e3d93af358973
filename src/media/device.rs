//! Audio devices through cpal: listing, an input [`DeviceSource`] and an output [`DeviceSink`].
//!
//! The cpal callbacks only move samples: the input callback mixes each device frame to mono
//! and pushes it into a lock-free SPSC ring (`rtrb`); the output callback pops mono samples and
//! copies them to every channel. Format conversion to/from the device's sample type happens in
//! the callback per sample (no allocation, no lock). Resampling to and from 48 kHz happens on
//! the caller's thread. Trouble is reported through atomics and surfaces as [`DeviceEvent`]s:
//! a device that fails mid-call yields silence, never a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use super::resample::StreamResampler;
use super::sink::AudioSink;
use super::source::AudioSource;
use super::{MediaError, SAMPLE_RATE};

/// How long a live source or sink waits for its device before reporting a stall.
const STALL: Duration = Duration::from_millis(250);
/// Ring capacity in seconds of device audio (bounds memory and the delay a stall can add).
const RING_SECONDS: f64 = 0.2;
/// Most samples the output path keeps queued ahead of the device (delay bound): 30 ms.
const MAX_QUEUED_OUT: Duration = Duration::from_millis(30);

/// Real-time length of `samples` at 48 kHz.
fn frame_time(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}

/// Device errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No usable device: names what exists and suggests a file instead.
    #[error(
        "no usable {direction} device{wanted}: {reason}. Available {direction} devices: {available}. \
         Use --{flag} file.wav to use a WAV file instead"
    )]
    NotAvailable {
        /// "input" or "output".
        direction: &'static str,
        /// " \"name\"" when a name was asked for, else empty.
        wanted: String,
        /// What went wrong.
        reason: String,
        /// Device names that exist, comma separated, or "none".
        available: String,
        /// The CLI flag to suggest ("input" or "output").
        flag: &'static str,
    },
    /// The device exists but a stream could not be built or started.
    #[error("cannot open {direction} device {name}: {reason}")]
    Stream {
        /// "input" or "output".
        direction: &'static str,
        /// Device name.
        name: String,
        /// What cpal said.
        reason: String,
    },
    /// Enumerating devices failed.
    #[error("cannot list audio devices: {0}")]
    Host(String),
}

/// Something that happened to a device; collected by the source or sink and handed out by
/// `take_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// The stream reported an error other than an xrun: the device may be gone, or (ALSA's
    /// pulse plugin) an underrun surfaced as EIO. Audio continues; silence stands in for
    /// whatever the device does not deliver.
    Failed {
        /// Device name.
        name: String,
    },
    /// No audio moved for a while; silence was substituted.
    Stalled {
        /// Device name.
        name: String,
    },
    /// Audio is moving again after a stall.
    Recovered {
        /// Device name.
        name: String,
    },
}

/// A device and what it supports, for `sotto devices`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// Human-readable name (what `--input`/`--output` match against).
    pub name: String,
    /// cpal's stable id.
    pub id: String,
    /// Whether this is the host's default input.
    pub default_input: bool,
    /// Whether this is the host's default output.
    pub default_output: bool,
    /// Every supported input configuration range, as the driver reports them.
    pub inputs: Vec<ConfigRange>,
    /// Every supported output configuration range.
    pub outputs: Vec<ConfigRange>,
}

/// Configurations a device supports in one sample format and sample-rate range, over a
/// contiguous span of channel counts (drivers report one range per channel count).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigRange {
    /// Fewest channels.
    pub min_channels: u16,
    /// Most channels.
    pub max_channels: u16,
    /// Lowest sample rate, Hz.
    pub min_rate_hz: u32,
    /// Highest sample rate, Hz.
    pub max_rate_hz: u32,
    /// Sample format, e.g. `i16` or `f32`.
    pub format: String,
}

impl DeviceInfo {
    /// One line for a direction's ranges: the channel and rate spans, the formats, and whether
    /// a call can run at 48 kHz without resampling; `None` when the direction is unsupported.
    ///
    /// Plugins such as ALSA's `default` offer every channel count from 1 to 32 in a dozen
    /// formats; a list of every (channels, format) pair says less than this line does.
    pub fn summary(ranges: &[ConfigRange]) -> Option<String> {
        let ch_lo = ranges.iter().map(|r| r.min_channels).min()?;
        let ch_hi = ranges.iter().map(|r| r.max_channels).max()?;
        let lo = ranges.iter().map(|r| r.min_rate_hz).min()?;
        let hi = ranges.iter().map(|r| r.max_rate_hz).max()?;
        let mut formats: Vec<&str> = Vec::new();
        for r in ranges {
            if !formats.contains(&r.format.as_str()) {
                formats.push(&r.format);
            }
        }
        let native = ranges
            .iter()
            .any(|r| (r.min_rate_hz..=r.max_rate_hz).contains(&SAMPLE_RATE));
        let ch = if ch_lo == ch_hi {
            format!("{ch_lo} ch")
        } else {
            format!("{ch_lo}-{ch_hi} ch")
        };
        let rate = if lo == hi {
            format!("{lo} Hz")
        } else {
            format!("{lo}-{hi} Hz")
        };
        let call = if native {
            "48 kHz native"
        } else {
            "resampled to 48 kHz"
        };
        Some(format!("{ch}, {rate}, {}; {call}", formats.join("/")))
    }
}

fn describe(d: &cpal::Device) -> String {
    d.description()
        .map(|x| x.name().to_string())
        .or_else(|_| d.id().map(|i| i.to_string()))
        .unwrap_or_else(|_| "?".into())
}

fn id_of(d: &cpal::Device) -> String {
    d.id().map(|i| i.to_string()).unwrap_or_default()
}

/// A bound on the (folded) ranges kept per device and direction.
const MAX_RANGES: usize = 256;

fn ranges<I: Iterator<Item = cpal::SupportedStreamConfigRange>>(it: I) -> Vec<ConfigRange> {
    let mut out: Vec<ConfigRange> = Vec::new();
    // Plugins report every channel count in every format (thousands of ranges): bound the
    // input read as well as the output kept.
    for c in it.take(MAX_RANGES * 64) {
        let (ch, lo, hi) = (c.channels(), c.min_sample_rate(), c.max_sample_rate());
        let format = c.sample_format().to_string();
        let full = out.len() >= MAX_RANGES;
        let folded = out.iter_mut().find(|r| {
            r.format == format
                && r.min_rate_hz == lo
                && r.max_rate_hz == hi
                && (r.min_channels.saturating_sub(1)..=r.max_channels.saturating_add(1))
                    .contains(&ch)
        });
        match folded {
            Some(r) => {
                r.min_channels = r.min_channels.min(ch);
                r.max_channels = r.max_channels.max(ch);
            }
            None if !full => out.push(ConfigRange {
                min_channels: ch,
                max_channels: ch,
                min_rate_hz: lo,
                max_rate_hz: hi,
                format,
            }),
            None => {}
        }
    }
    out
}

/// Lists the default host's devices with their supported configurations.
pub fn list_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    super::quiet::silence_sound_libraries();
    let host = cpal::default_host();
    let def_in = host.default_input_device().map(|d| id_of(&d));
    let def_out = host.default_output_device().map(|d| id_of(&d));
    let devices = host
        .devices()
        .map_err(|e| DeviceError::Host(e.to_string()))?;
    Ok(devices
        .map(|d| {
            let id = id_of(&d);
            DeviceInfo {
                name: describe(&d),
                default_input: def_in.as_deref() == Some(id.as_str()),
                default_output: def_out.as_deref() == Some(id.as_str()),
                inputs: d.supported_input_configs().map(ranges).unwrap_or_default(),
                outputs: d.supported_output_configs().map(ranges).unwrap_or_default(),
                id,
            }
        })
        .collect())
}

#[derive(Clone, Copy)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn word(self) -> &'static str {
        match self {
            Dir::In => "input",
            Dir::Out => "output",
        }
    }
}

/// Finds a device by name/id (or the default) and its default config for `dir`.
fn pick(
    dir: Dir,
    name: Option<&str>,
) -> Result<(cpal::Device, cpal::SupportedStreamConfig, String), DeviceError> {
    super::quiet::silence_sound_libraries();
    let host = cpal::default_host();
    let list: Vec<cpal::Device> = match dir {
        Dir::In => host.input_devices().map(|d| d.collect()),
        Dir::Out => host.output_devices().map(|d| d.collect()),
    }
    .unwrap_or_default();
    let names: Vec<String> = list.iter().map(describe).collect();
    let fail = |reason: String| DeviceError::NotAvailable {
        direction: dir.word(),
        wanted: name.map(|n| format!(" \"{n}\"")).unwrap_or_default(),
        reason: reason.trim_end_matches('.').to_string(),
        available: if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        },
        flag: dir.word(),
    };
    let device = match name {
        Some(n) => list
            .iter()
            .find(|d| {
                let id = id_of(d);
                // Accept the description, the full id ("alsa:pulse") or the bare PCM name.
                describe(d) == n || id == n || id.split_once(':').is_some_and(|(_, pcm)| pcm == n)
            })
            .cloned()
            .ok_or_else(|| fail("no device of that name".into()))?,
        None => match dir {
            Dir::In => host.default_input_device(),
            Dir::Out => host.default_output_device(),
        }
        .ok_or_else(|| fail("the host has no default device".into()))?,
    };
    let config = match dir {
        Dir::In => device.default_input_config(),
        Dir::Out => device.default_output_config(),
    }
    .map_err(|e| fail(e.to_string()))?;
    let dname = describe(&device);
    Ok((device, config, dname))
}

/// Callbacks remembered by a stream's timeline (a few seconds of 10 ms periods).
const TIMELINE: usize = 512;

/// State shared between a stream's callbacks and its owner (atomics only).
#[derive(Debug)]
struct Shared {
    failed: AtomicBool,
    xruns: AtomicU64,
    /// Nanoseconds from `origin` to the start of the last callback (0: none yet), for the
    /// per-stage latency measurements. cpal's own timestamps of two streams are not comparable.
    last_callback_ns: AtomicU64,
    /// Samples that went through the ring so far (pushed by an input callback, popped by an
    /// output callback), device rate.
    samples: AtomicU64,
    /// Per callback: the sample count at its start and its time (ns from `origin`), written
    /// by the callback only. Lets a latency measurement find when a given sample was captured
    /// or played without the callback doing more than two stores.
    timeline: Box<[(AtomicU64, AtomicU64)]>,
    callbacks: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            failed: AtomicBool::new(false),
            xruns: AtomicU64::new(0),
            last_callback_ns: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            timeline: (0..TIMELINE)
                .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
                .collect(),
            callbacks: AtomicU64::new(0),
        }
    }
}

impl Shared {
    fn mark(&self, origin: Instant) {
        let ns = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_callback_ns.store(ns.max(1), Ordering::Relaxed);
        let n = self.callbacks.fetch_add(1, Ordering::AcqRel);
        let slot = &self.timeline[(n % TIMELINE as u64) as usize];
        slot.0.store(u64::MAX, Ordering::Release);
        slot.1.store(ns, Ordering::Release);
        slot.0
            .store(self.samples.load(Ordering::Acquire), Ordering::Release);
    }

    /// The time of the callback that moved ring sample `sample` (device rate), if it is still
    /// in the timeline.
    fn callback_of(&self, sample: u64, origin: Instant) -> Option<Instant> {
        let n = self.callbacks.load(Ordering::Acquire);
        let mut best: Option<(u64, u64)> = None;
        for k in n.saturating_sub(TIMELINE as u64 - 1)..n {
            let slot = &self.timeline[(k % TIMELINE as u64) as usize];
            let start = slot.0.load(Ordering::Acquire);
            let ns = slot.1.load(Ordering::Acquire);
            if start == u64::MAX || slot.0.load(Ordering::Acquire) != start {
                continue; // being rewritten
            }
            if start <= sample && best.is_none_or(|(s, _)| start >= s) {
                best = Some((start, ns));
            }
        }
        // The sample must also have gone through by now (a later callback started past it).
        if self.samples.load(Ordering::Acquire) <= sample {
            return None;
        }
        best.and_then(|(_, ns)| origin.checked_add(Duration::from_nanos(ns)))
    }

    fn last_callback(&self, origin: Instant) -> Option<Instant> {
        match self.last_callback_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => origin.checked_add(Duration::from_nanos(ns)),
        }
    }
}

/// Builds a stream, asking for ~10 ms periods first and the device default if refused.
fn build<F>(dir: Dir, name: &str, mut make: F) -> Result<cpal::Stream, DeviceError>
where
    F: FnMut(cpal::BufferSize) -> Result<cpal::Stream, cpal::Error>,
{
    let stream = make(cpal::BufferSize::Fixed(480))
        .or_else(|_| make(cpal::BufferSize::Default))
        .map_err(|e| DeviceError::Stream {
            direction: dir.word(),
            name: name.into(),
            reason: e.to_string(),
        })?;
    stream.play().map_err(|e| DeviceError::Stream {
        direction: dir.word(),
        name: name.into(),
        reason: e.to_string(),
    })?;
    Ok(stream)
}

/// Calls `$f::<T>(args)` with `T` the Rust sample type of the cpal format `$format`.
macro_rules! with_sample_type {
    ($format:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $format {
            SampleFormat::I8 => $f::<i8>($($arg),*),
            SampleFormat::I16 => $f::<i16>($($arg),*),
            SampleFormat::I32 => $f::<i32>($($arg),*),
            SampleFormat::U8 => $f::<u8>($($arg),*),
            SampleFormat::U16 => $f::<u16>($($arg),*),
            SampleFormat::U32 => $f::<u32>($($arg),*),
            SampleFormat::F64 => $f::<f64>($($arg),*),
            _ => $f::<f32>($($arg),*),
        }
    };
}

/// A started device stream and the end of its ring the pipeline keeps.
struct Opened<K> {
    name: String,
    rate: u32,
    channels: u16,
    stream: cpal::Stream,
    ring: K,
    shared: Arc<Shared>,
    origin: Instant,
}

/// Picks the device, makes its ring, and starts its stream. `split` says which ring end the
/// pipeline keeps (`K`) and which the callback gets (`G`); `start` builds the stream.
fn open_stream<K, G>(
    dir: Dir,
    name: Option<&str>,
    split: impl Fn(rtrb::Producer<f32>, rtrb::Consumer<f32>) -> (K, G),
    start: impl Fn(
        &cpal::Device,
        cpal::StreamConfig,
        SampleFormat,
        G,
        Arc<Shared>,
        Instant,
    ) -> Result<cpal::Stream, cpal::Error>,
) -> Result<Opened<K>, DeviceError> {
    let (device, supported, dname) = pick(dir, name)?;
    let rate = supported.sample_rate();
    let channels = supported.channels();
    let format = supported.sample_format();
    let cap = (f64::from(rate) * RING_SECONDS) as usize + 4096;
    let shared = Arc::new(Shared::default());
    let origin = Instant::now();
    let mut kept = None;
    let stream = build(dir, &dname, |bs| {
        let (tx, rx) = rtrb::RingBuffer::new(cap);
        let (keep, give) = split(tx, rx);
        kept = Some(keep);
        let config = cpal::StreamConfig {
            channels,
            sample_rate: rate,
            buffer_size: bs,
        };
        start(&device, config, format, give, shared.clone(), origin)
    })?;
    let ring = kept.ok_or_else(|| DeviceError::Stream {
        direction: dir.word(),
        name: dname.clone(),
        reason: "no ring".into(),
    })?;
    tracing::info!(
        "{} device {dname}: {rate} Hz, {channels} ch, {format}",
        dir.word()
    );
    Ok(Opened {
        name: dname,
        rate,
        channels,
        stream,
        ring,
        shared,
        origin,
    })
}

/// Live input from a cpal device, as 48 kHz mono frames.
pub struct DeviceSource {
    name: String,
    rate: u32,
    channels: u16,
    _stream: cpal::Stream,
    ring: rtrb::Consumer<f32>,
    shared: Arc<Shared>,
    origin: Instant,
    resampler: StreamResampler,
    scratch: Vec<f32>,
    events: Vec<DeviceEvent>,
    stalled: bool,
    failed_reported: bool,
}

impl std::fmt::Debug for DeviceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSource")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .finish()
    }
}

fn input_stream<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut tx: rtrb::Producer<f32>,
    shared: Arc<Shared>,
    origin: Instant,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let ch = usize::from(config.channels.max(1));
    let inv = 1.0 / ch as f32;
    let err_shared = shared.clone();
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            shared.mark(origin);
            let mut pushed = 0;
            for frame in data.chunks_exact(ch) {
                let sum: f32 = frame.iter().map(|s| s.to_sample::<f32>()).sum();
                if tx.push(sum * inv).is_err() {
                    shared.xruns.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                pushed += 1;
            }
            shared.samples.fetch_add(pushed, Ordering::AcqRel);
        },
        move |e: cpal::Error| {
            // An xrun is a glitch, not a failure; anything else means the device is in trouble.
            if matches!(e.kind(), cpal::ErrorKind::Xrun) {
                err_shared.xruns.fetch_add(1, Ordering::Relaxed);
            } else {
                // Only the first error is logged: a dead stream repeats it thousands of times.
                if !err_shared.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!("input stream error: {e}");
                }
            }
        },
        None,
    )
}

impl DeviceSource {
    /// Opens the input device called `name` (as listed by `sotto devices`), or the default.
    pub fn open(name: Option<&str>) -> Result<Self, MediaError> {
        let Opened {
            name: dname,
            rate,
            channels,
            stream,
            ring,
            shared,
            origin,
            ..
        } = open_stream(
            Dir::In,
            name,
            |tx, rx| (rx, tx),
            |device, config, format, tx, shared, origin| {
                with_sample_type!(format, input_stream(device, config, tx, shared, origin))
            },
        )?;
        Ok(Self {
            name: dname,
            rate,
            channels,
            _stream: stream,
            ring,
            shared,
            origin,
            resampler: StreamResampler::new(rate, SAMPLE_RATE, SAMPLE_RATE as usize / 5)?,
            scratch: vec![0.0; 4096],
            events: Vec::new(),
            stalled: false,
            failed_reported: false,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's native rate and channel count.
    pub fn native_format(&self) -> (u32, u16) {
        (self.rate, self.channels)
    }

    /// When the device last delivered audio (start of its last callback).
    pub fn last_callback(&self) -> Option<Instant> {
        self.shared.last_callback(self.origin)
    }

    /// When the device callback delivered captured sample `sample` (counted from the stream's
    /// start, at the device rate; equal to the 48 kHz count when the device runs at 48 kHz).
    /// `None` once it is too old to remember, or before it was captured.
    pub fn capture_callback_of(&self, sample: u64) -> Option<Instant> {
        self.shared.callback_of(sample, self.origin)
    }

    /// Samples the callback had to drop because the consumer fell behind.
    pub fn overruns(&self) -> u64 {
        self.shared.xruns.load(Ordering::Relaxed)
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
    }

    fn drain(&mut self) -> Result<(), MediaError> {
        loop {
            let n = self.ring.slots().min(self.scratch.len());
            if n == 0 {
                return Ok(());
            }
            let Ok(chunk) = self.ring.read_chunk(n) else {
                return Ok(());
            };
            let (a, b) = chunk.as_slices();
            self.scratch[..a.len()].copy_from_slice(a);
            self.scratch[a.len()..a.len() + b.len()].copy_from_slice(b);
            chunk.commit_all();
            self.resampler.push(&self.scratch[..n])?;
        }
    }
}

impl AudioSource for DeviceSource {
    fn is_live(&self) -> bool {
        true
    }

    fn read_frame(&mut self, out: &mut [f32]) -> Result<bool, MediaError> {
        let start = Instant::now();
        // Once stalled, keep the caller paced at one frame of silence per frame period.
        let patience = if self.stalled {
            frame_time(out.len())
        } else {
            STALL
        };
        loop {
            self.drain()?;
            if self.resampler.pull(out) {
                if self.stalled {
                    self.stalled = false;
                    self.events.push(DeviceEvent::Recovered {
                        name: self.name.clone(),
                    });
                }
                return Ok(true);
            }
            if self.shared.failed.load(Ordering::Relaxed) && !self.failed_reported {
                self.failed_reported = true;
                self.events.push(DeviceEvent::Failed {
                    name: self.name.clone(),
                });
            }
            if start.elapsed() >= patience {
                if !self.stalled {
                    self.stalled = true;
                    self.events.push(DeviceEvent::Stalled {
                        name: self.name.clone(),
                    });
                }
                out.fill(0.0);
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn output_stream<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut rx: rtrb::Consumer<f32>,
    shared: Arc<Shared>,
    origin: Instant,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let ch = usize::from(config.channels.max(1));
    let err_shared = shared.clone();
    device.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], _| {
            shared.mark(origin);
            let mut under = false;
            let mut popped = 0;
            for frame in data.chunks_exact_mut(ch) {
                let v = match rx.pop() {
                    Ok(v) => {
                        popped += 1;
                        v
                    }
                    Err(_) => {
                        under = true;
                        0.0
                    }
                };
                let s = T::from_sample(v);
                frame.fill(s);
            }
            shared.samples.fetch_add(popped, Ordering::AcqRel);
            if under {
                shared.xruns.fetch_add(1, Ordering::Relaxed);
            }
        },
        move |e: cpal::Error| {
            // An xrun is a glitch, not a failure; anything else means the device is in trouble.
            if matches!(e.kind(), cpal::ErrorKind::Xrun) {
                err_shared.xruns.fetch_add(1, Ordering::Relaxed);
            } else {
                // Only the first error is logged: a dead stream repeats it thousands of times.
                if !err_shared.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!("output stream error: {e}");
                }
            }
        },
        None,
    )
}

/// Live output to a cpal device, from 48 kHz mono frames.
pub struct DeviceSink {
    name: String,
    rate: u32,
    channels: u16,
    _stream: cpal::Stream,
    ring: rtrb::Producer<f32>,
    shared: Arc<Shared>,
    origin: Instant,
    resampler: StreamResampler,
    scratch: Vec<f32>,
    max_queued: usize,
    events: Vec<DeviceEvent>,
    stalled: bool,
    failed_reported: bool,
}

impl std::fmt::Debug for DeviceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSink")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .finish()
    }
}

impl DeviceSink {
    /// Opens the output device called `name`, or the default.
    pub fn open(name: Option<&str>) -> Result<Self, MediaError> {
        let Opened {
            name: dname,
            rate,
            channels,
            stream,
            ring,
            shared,
            origin,
            ..
        } = open_stream(
            Dir::Out,
            name,
            |tx, rx| (tx, rx),
            |device, config, format, rx, shared, origin| {
                with_sample_type!(format, output_stream(device, config, rx, shared, origin))
            },
        )?;
        let max_queued = (u128::from(rate) * MAX_QUEUED_OUT.as_millis() / 1000) as usize;
        Ok(Self {
            name: dname,
            rate,
            channels,
            _stream: stream,
            ring,
            shared,
            origin,
            resampler: StreamResampler::new(SAMPLE_RATE, rate, rate as usize / 5)?,
            scratch: vec![0.0; 4096],
            max_queued,
            events: Vec::new(),
            stalled: false,
            failed_reported: false,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's native rate and channel count.
    pub fn native_format(&self) -> (u32, u16) {
        (self.rate, self.channels)
    }

    /// When the device last asked for audio (start of its last callback).
    pub fn last_callback(&self) -> Option<Instant> {
        self.shared.last_callback(self.origin)
    }

    /// When the device callback took written sample `sample` (counted from the first
    /// written, at the device rate; equal to the 48 kHz count when the device runs at 48 kHz)
    /// to play it. `None` before that, or once too old to remember.
    pub fn playback_callback_of(&self, sample: u64) -> Option<Instant> {
        self.shared.callback_of(sample, self.origin)
    }

    /// Callbacks that ran short of audio (played silence).
    pub fn underruns(&self) -> u64 {
        self.shared.xruns.load(Ordering::Relaxed)
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
    }
}

impl AudioSink for DeviceSink {
    fn is_live(&self) -> bool {
        true
    }

    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        self.resampler.push(frame)?;
        let start = Instant::now();
        let patience = if self.stalled {
            frame_time(frame.len())
        } else {
            STALL
        };
        loop {
            if self.shared.failed.load(Ordering::Relaxed) && !self.failed_reported {
                self.failed_reported = true;
                self.events.push(DeviceEvent::Failed {
                    name: self.name.clone(),
                });
            }
            let queued = self.ring.buffer().capacity() - self.ring.slots();
            let n = self.resampler.available().min(self.scratch.len());
            if n == 0 {
                return Ok(());
            }
            if queued + n <= self.max_queued.max(n) && self.ring.slots() >= n {
                self.resampler.pull(&mut self.scratch[..n]);
                if let Ok(mut chunk) = self.ring.write_chunk(n) {
                    let (a, b) = chunk.as_mut_slices();
                    let k = a.len();
                    a.copy_from_slice(&self.scratch[..k]);
                    b.copy_from_slice(&self.scratch[k..n]);
                    chunk.commit_all();
                }
                if self.stalled {
                    self.stalled = false;
                    self.events.push(DeviceEvent::Recovered {
                        name: self.name.clone(),
                    });
                }
                continue;
            }
            if start.elapsed() >= patience {
                // The device is not consuming: drop this audio rather than block the call.
                let mut left = self.resampler.available();
                while left > 0 {
                    let k = left.min(self.scratch.len());
                    self.resampler.pull(&mut self.scratch[..k]);
                    left -= k;
                }
                if !self.stalled {
                    self.stalled = true;
                    self.events.push(DeviceEvent::Stalled {
                        name: self.name.clone(),
                    });
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(ch: (u16, u16), rate: (u32, u32), format: &str) -> ConfigRange {
        ConfigRange {
            min_channels: ch.0,
            max_channels: ch.1,
            min_rate_hz: rate.0,
            max_rate_hz: rate.1,
            format: format.into(),
        }
    }

    #[test]
    fn summary_spans_channels_rates_and_formats() {
        let r = [
            range((1, 2), (8000, 48000), "i16"),
            range((1, 8), (44100, 44100), "f32"),
            range((2, 2), (8000, 48000), "i16"),
        ];
        assert_eq!(
            DeviceInfo::summary(&r).as_deref(),
            Some("1-8 ch, 8000-48000 Hz, i16/f32; 48 kHz native")
        );
        let r = [range((2, 2), (44100, 44100), "i16")];
        assert_eq!(
            DeviceInfo::summary(&r).as_deref(),
            Some("2 ch, 44100 Hz, i16; resampled to 48 kHz")
        );
        assert_eq!(DeviceInfo::summary(&[]), None);
    }
}
