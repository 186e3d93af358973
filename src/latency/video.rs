//! Glass-to-glass video latency through the whole pipeline, over real WebRTC on loopback.
//!
//! A test pattern is drawn at the frame rate on a real-time clock, each picture carrying its
//! frame number as a barcode and stamped with its capture time once drawn (as a camera stamps
//! a finished picture). The sender encodes it with VP8, seals it in the video layout (or, for
//! the baseline, does not) and sends it on a real peer connection; the receiver takes the
//! reassembled frame, opens it, decodes it, and writes the picture to a sink that keeps it for
//! display. Latency is the time the sink write returns minus the capture time of the picture
//! whose barcode is read from the *decoded* picture, so a frame is never matched by trusting
//! an index that travelled with it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sotto::latency::LatencyError> {
//! use std::time::Duration;
//! use sotto::latency::{VideoLatencyConfig, measure_video};
//!
//! let run = measure_video(VideoLatencyConfig::new(true, Duration::from_secs(5))).await?;
//! println!("p50 {:.1} ms over {} frames", run.summary().p50_ms, run.samples.len());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{LatencyError, lock, sleep_until, spawn};
use crate::handshake::{
    DtlsFingerprint, Handshake, HandshakeError, Identity, MediaKind, MediaReceiver, MediaSender,
    RotationConfig,
};
use crate::media::video::{
    EncodedVideoFrame, TestPattern, VIDEO_CLOCK_RATE, VideoCodec, VideoEncoderConfig, VideoError,
    VideoFrame, VideoSink, VideoSource, read_code,
};
use crate::sframe::CipherSuite;
use crate::transport::{
    FrameOrder, MediaTransport, TransportConfig, VideoDirection, open_video_in_place, seal_video,
};

/// One video measurement run.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoLatencyConfig {
    /// Picture width (even, at least 512 so the barcode fits).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// SFrame on (the product) or off (the baseline that shows its cost).
    pub e2ee: bool,
    /// How long to run.
    pub duration: Duration,
    /// Frames captured this soon after the start are not counted (the peer connection binds
    /// the remote track on the first packets).
    pub warmup: Duration,
}

impl VideoLatencyConfig {
    /// A run of `duration` at 640x360 and 30 fps with E2EE on or off.
    pub fn new(e2ee: bool, duration: Duration) -> Self {
        VideoLatencyConfig {
            width: 640,
            height: 360,
            fps: 30,
            e2ee,
            duration,
            warmup: Duration::from_millis(500),
        }
    }
}

/// Per-stage times of one shown frame. They follow each other; the small gaps between them
/// (bookkeeping) are why their sum can be a little below the total.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VideoStages {
    /// Capture until the encoder returned the frame.
    pub encode: Duration,
    /// SFrame seal (zero without E2EE).
    pub seal: Duration,
    /// Handing the frame to the transport until its last packet arrived and the frame was
    /// whole: packetizing, SRTP, the loopback network, reassembly.
    pub network: Duration,
    /// The whole frame waiting until the receiver took it from the transport.
    pub handoff: Duration,
    /// SFrame open, with the copy it opens in (zero without E2EE).
    pub open: Duration,
    /// VP8 decode.
    pub decode: Duration,
    /// The sink write that shows the picture.
    pub render: Duration,
}

/// One frame's journey, found by the barcode in its decoded picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoSample {
    /// The barcode read from the decoded picture (the frame number modulo 65536).
    pub code: u16,
    /// Capture to shown.
    pub total: Duration,
    /// Stage times.
    pub stages: VideoStages,
    /// Whether the frame was a keyframe.
    pub keyframe: bool,
    /// Bytes of the encoded frame (before sealing).
    pub bytes: usize,
}

/// The outcome of one [`measure_video`] run.
#[derive(Debug, Clone)]
pub struct VideoLatencyRun {
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frames per second asked for.
    pub fps: u32,
    /// Whether SFrame was on.
    pub e2ee: bool,
    /// Frames the sender sent.
    pub frames_sent: u64,
    /// Keyframes among them.
    pub keyframes_sent: u64,
    /// Pictures the receiver showed.
    pub frames_shown: u64,
    /// Shown pictures whose barcode could not be read.
    pub unreadable: u64,
    /// Shown pictures whose barcode matched no frame sent before them.
    pub unmatched: u64,
    /// Every shown frame after the warm-up, in the order shown.
    pub samples: Vec<VideoSample>,
}

/// Mean of each stage over the frames measured, in ms (means, so they add up to the mean
/// total less the bookkeeping gaps).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VideoStageSummary {
    /// Capture until encoded.
    pub capture_to_encoded: f64,
    /// SFrame seal.
    pub seal: f64,
    /// Sent until the frame was whole at the receiver.
    pub network: f64,
    /// Whole until the receiver took it.
    pub handoff: f64,
    /// SFrame open.
    pub open: f64,
    /// VP8 decode.
    pub decode: f64,
    /// Sink write.
    pub render: f64,
}

/// One video run as `sotto latency --video --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoRunSummary {
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Whether SFrame was on.
    pub e2ee: bool,
    /// Frames measured.
    pub samples: usize,
    /// Capture to shown, median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Highest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Lowest, ms.
    pub min_ms: f64,
    /// Stage means, ms.
    pub stages: VideoStageSummary,
    /// Frames sent.
    pub frames_sent: u64,
    /// Keyframes sent.
    pub keyframes_sent: u64,
    /// Pictures shown.
    pub frames_shown: u64,
    /// Shown pictures not matched to a sent frame (barcode unreadable or unknown).
    pub frames_unmatched: u64,
    /// Mean encoded frame size, bytes.
    pub mean_frame_bytes: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl VideoLatencyRun {
    /// Capture-to-shown latencies in ms, sorted.
    pub fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|s| ms(s.total)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Percentiles and stage means.
    pub fn summary(&self) -> VideoRunSummary {
        let sorted = self.sorted_ms();
        let n = self.samples.len();
        let mean = |f: &dyn Fn(&VideoSample) -> f64| {
            if n == 0 {
                f64::NAN
            } else {
                self.samples.iter().map(f).sum::<f64>() / n as f64
            }
        };
        VideoRunSummary {
            width: self.width,
            height: self.height,
            fps: self.fps,
            e2ee: self.e2ee,
            samples: n,
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            mean_ms: mean(&|s| ms(s.total)),
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            stages: VideoStageSummary {
                capture_to_encoded: mean(&|s| ms(s.stages.encode)),
                seal: mean(&|s| ms(s.stages.seal)),
                network: mean(&|s| ms(s.stages.network)),
                handoff: mean(&|s| ms(s.stages.handoff)),
                open: mean(&|s| ms(s.stages.open)),
                decode: mean(&|s| ms(s.stages.decode)),
                render: mean(&|s| ms(s.stages.render)),
            },
            frames_sent: self.frames_sent,
            keyframes_sent: self.keyframes_sent,
            frames_shown: self.frames_shown,
            frames_unmatched: self.unreadable + self.unmatched,
            mean_frame_bytes: mean(&|s| s.bytes as f64),
        }
    }
}

/// What the sender knows about a frame, filed under its barcode.
#[derive(Debug, Clone, Copy)]
struct Sent {
    capture: Instant,
    encoded: Instant,
    seal: Duration,
    sent: Instant,
    keyframe: bool,
    bytes: usize,
}

/// What the receiver knows about a picture it showed.
#[derive(Debug, Clone, Copy)]
struct Shown {
    code: Option<u16>,
    arrival: Instant,
    taken: Instant,
    open: Duration,
    decode_start: Instant,
    decoded: Instant,
    shown: Instant,
}

struct Shared {
    stop: AtomicBool,
    sent: Mutex<HashMap<u16, Sent>>,
    shown: Mutex<Vec<Shown>>,
    frames_sent: AtomicU64,
    keyframes_sent: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: impl std::fmt::Display) {
        lock(&self.error).get_or_insert_with(|| e.to_string());
        self.stop.store(true, Relaxed);
    }
}

impl super::Pipeline for Shared {
    fn fail(&self, e: String) {
        Shared::fail(self, e);
    }
}

fn video_err(e: VideoError) -> LatencyError {
    LatencyError::Pipeline(format!("video: {e}"))
}

/// Video keys from a real handshake, both ends in this process, bound to the two transports.
fn agree_video_keys(
    suite: CipherSuite,
    mouth_dtls: &DtlsFingerprint,
    eye_dtls: &DtlsFingerprint,
) -> Result<(MediaSender, MediaReceiver), LatencyError> {
    let a = Arc::new(Identity::generate()?);
    let b = Arc::new(Identity::generate()?);
    let (mut hi, hello) = Handshake::initiator(a, "latency", "camera", mouth_dtls)?;
    let mut hr = Handshake::responder(b, "latency", "screen", eye_dtls)?;
    let closed = || HandshakeError::Closed;
    let reply = hr.handle(&hello)?.send.ok_or_else(closed)?;
    let reveal = hi.handle(&reply)?.send.ok_or_else(closed)?;
    let step = hr.handle(&reveal)?;
    let screen = step.established.ok_or_else(closed)?;
    let camera = hi
        .handle(&step.send.ok_or_else(closed)?)?
        .established
        .ok_or_else(closed)?;
    let rotation = RotationConfig::default();
    Ok((
        MediaSender::for_kind(
            MediaKind::Video,
            suite,
            camera.keys.send,
            rotation,
            Instant::now(),
        )?,
        MediaReceiver::for_kind(MediaKind::Video, suite, screen.keys.recv, rotation)?,
    ))
}

/// Where shown pictures go: copied into the one slot a display would present from.
struct DisplaySlot {
    picture: Option<VideoFrame>,
}

impl VideoSink for DisplaySlot {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        match &mut self.picture {
            Some(p) => p.copy_from(frame),
            None => self.picture = Some(frame.clone()),
        }
        Ok(())
    }
}

/// Keyframe requests at most this often, as the call sends them.
const PLI_INTERVAL: Duration = Duration::from_millis(300);

/// Runs one video measurement on the current tokio runtime (multi-threaded).
pub async fn measure_video(config: VideoLatencyConfig) -> Result<VideoLatencyRun, LatencyError> {
    if config.width < 512 || config.fps == 0 {
        return Err(LatencyError::Pipeline(format!(
            "{}x{} at {} fps: the barcode needs a width of at least 512 and a frame rate",
            config.width, config.height, config.fps
        )));
    }
    let mut camera = MediaTransport::new(TransportConfig {
        video: VideoDirection::SendReceive,
        ..TransportConfig::default()
    })
    .await?;
    let mut screen = MediaTransport::new(TransportConfig::default()).await?;
    let no_stream = || LatencyError::Pipeline("no video stream".into());
    let mut incoming = screen.take_video_frames().ok_or_else(no_stream)?;
    let mut keyframe_requests = camera.take_keyframe_requests().ok_or_else(no_stream)?;
    let answer = screen.accept_offer(&camera.create_offer().await?).await?;
    camera.accept_answer(&answer).await?;
    camera.connected(Duration::from_secs(10)).await?;
    screen.connected(Duration::from_secs(10)).await?;
    let camera = Arc::new(camera);
    let screen = Arc::new(screen);

    let suite = CipherSuite::AesGcm128Sha256;
    let (mut sender, mut receiver) =
        agree_video_keys(suite, camera.dtls_fingerprint(), screen.dtls_fingerprint())?;
    let (width, height, fps) = (config.width, config.height, config.fps);
    let mut pattern = TestPattern::new(width, height, fps).map_err(video_err)?;
    let mut encoder = VideoCodec::Vp8
        .new_encoder(&VideoEncoderConfig {
            fps,
            ..VideoEncoderConfig::new(width, height)
        })
        .map_err(video_err)?;
    let mut decoder = VideoCodec::Vp8.new_decoder().map_err(video_err)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        sent: Mutex::new(HashMap::new()),
        shown: Mutex::new(Vec::new()),
        frames_sent: AtomicU64::new(0),
        keyframes_sent: AtomicU64::new(0),
        error: Mutex::new(None),
    });
    let e2ee = config.e2ee;
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs(1) / fps;

    let send_runtime = runtime.clone();
    let transport = Arc::clone(&camera);
    let camera_thread = spawn("latency-camera", &shared, move |shared| {
        let mut picture = VideoFrame::black(width, height).map_err(|e| e.to_string())?;
        let mut encoded = EncodedVideoFrame::default();
        let mut n: u32 = 0;
        while !shared.stop.load(Relaxed) {
            sleep_until(start + period * n);
            n = n.wrapping_add(1);
            // A PLI from the receiver or a key switch: the next frame is a keyframe.
            while keyframe_requests.try_recv().is_ok() {
                encoder.force_keyframe();
            }
            if e2ee
                && sender
                    .poll(Instant::now())
                    .map_err(|e| e.to_string())?
                    .is_some()
            {
                encoder.force_keyframe();
            }
            let code = (pattern.next_number() % 65_536) as u16;
            if !pattern
                .read_frame(&mut picture)
                .map_err(|e| e.to_string())?
            {
                return Err("the test pattern ended".into());
            }
            let capture = picture.capture;
            let pts = capture.saturating_duration_since(start).as_micros() as u64
                * u64::from(VIDEO_CLOCK_RATE)
                / 1_000_000;
            if !encoder
                .encode_into(&picture, pts, &mut encoded)
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            let done = Instant::now();
            let (sealed, seal) = if e2ee {
                let sealed =
                    seal_video(sender.context(), &encoded.data).map_err(|e| e.to_string())?;
                (Some(sealed), done.elapsed())
            } else {
                (None, Duration::ZERO)
            };
            let sent = Instant::now();
            lock(&shared.sent).insert(
                code,
                Sent {
                    capture,
                    encoded: done,
                    seal,
                    sent,
                    keyframe: encoded.keyframe,
                    bytes: encoded.data.len(),
                },
            );
            let result = match &sealed {
                Some(sealed) => send_runtime.block_on(transport.send_video(sealed, capture)),
                None => send_runtime.block_on(
                    transport.send_video_unprotected_for_latency_baseline(&encoded.data, capture),
                ),
            };
            result.map_err(|e| e.to_string())?;
            shared.frames_sent.fetch_add(1, Relaxed);
            if encoded.keyframe {
                shared.keyframes_sent.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    })?;

    let transport = Arc::clone(&screen);
    let screen_thread = spawn("latency-screen", &shared, move |shared| {
        let mut picture = VideoFrame::black(width, height).map_err(|e| e.to_string())?;
        let mut sink = DisplaySlot { picture: None };
        let mut order = FrameOrder::timestamps_only();
        let mut need_keyframe = true;
        let mut last_pli: Option<Instant> = None;
        let mut ask_keyframe = |now: Instant| {
            if last_pli.is_none_or(|t| now >= t + PLI_INTERVAL) && transport.request_keyframe() {
                last_pli = Some(now);
            }
        };
        while !shared.stop.load(Relaxed) {
            let next = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), incoming.recv()).await
            });
            let frame = match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(f)) => f,
            };
            let taken = Instant::now();
            let mut buf = Vec::new();
            let vp8: &[u8] = if e2ee {
                buf.extend_from_slice(&frame.payload);
                let opened = match open_video_in_place(&mut buf, |meta, part| {
                    receiver.decrypt_in_place(meta, part, taken)
                }) {
                    Ok(o) => o,
                    Err(e) => return Err(format!("open: {e}")),
                };
                let Some(header) = opened.header else {
                    continue;
                };
                if let Err(e) = order.admit(header.ctr, frame.timestamp, 0) {
                    tracing::debug!("latency: dropped a video frame: {e}");
                    continue;
                }
                opened.vp8
            } else {
                &frame.payload
            };
            let open = if e2ee {
                taken.elapsed()
            } else {
                Duration::ZERO
            };
            let Some(&first) = vp8.first() else {
                continue;
            };
            // After a loss (or before the first keyframe) delta frames cannot be decoded.
            if frame.after_loss || need_keyframe {
                if first & 1 == 1 {
                    ask_keyframe(Instant::now());
                    continue;
                }
                need_keyframe = false;
            }
            let decode_start = Instant::now();
            match decoder.decode_into(vp8, &mut picture) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!("latency: video decode failed: {e}");
                    need_keyframe = true;
                    ask_keyframe(Instant::now());
                    continue;
                }
            }
            if decoder.last_picture_damaged() {
                need_keyframe = true;
                ask_keyframe(Instant::now());
                continue;
            }
            let decoded = Instant::now();
            sink.write_frame(&picture).map_err(|e| e.to_string())?;
            let shown = Instant::now();
            // Read after the picture is shown, so the barcode costs no stage anything.
            let code = read_code(&picture);
            lock(&shared.shown).push(Shown {
                code,
                arrival: frame.arrival,
                taken,
                open,
                decode_start,
                decoded,
                shown,
            });
        }
        Ok(())
    })?;

    tokio::time::sleep(config.duration).await;
    shared.stop.store(true, Relaxed);
    let joined = tokio::task::spawn_blocking(move || {
        [camera_thread, screen_thread]
            .into_iter()
            .map(|t| t.join().is_ok())
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| LatencyError::Pipeline(e.to_string()))?;
    let _ = camera.close().await;
    let _ = screen.close().await;
    if joined.iter().any(|ok| !ok) {
        return Err(LatencyError::Pipeline("a pipeline thread panicked".into()));
    }
    if let Some(e) = lock(&shared.error).take() {
        return Err(LatencyError::Pipeline(e));
    }
    Ok(match_frames(&shared, &config, start))
}

/// Pairs each shown picture with the frame its barcode names.
fn match_frames(shared: &Shared, config: &VideoLatencyConfig, start: Instant) -> VideoLatencyRun {
    let sent = lock(&shared.sent);
    let shown = lock(&shared.shown);
    let mut run = VideoLatencyRun {
        width: config.width,
        height: config.height,
        fps: config.fps,
        e2ee: config.e2ee,
        frames_sent: shared.frames_sent.load(Relaxed),
        keyframes_sent: shared.keyframes_sent.load(Relaxed),
        frames_shown: shown.len() as u64,
        unreadable: 0,
        unmatched: 0,
        samples: Vec::new(),
    };
    for s in shown.iter() {
        let Some(code) = s.code else {
            run.unreadable += 1;
            continue;
        };
        // A frame sent after the picture was taken cannot be it.
        let Some(f) = sent.get(&code).filter(|f| f.sent < s.taken) else {
            run.unmatched += 1;
            continue;
        };
        if f.capture < start + config.warmup {
            continue;
        }
        run.samples.push(VideoSample {
            code,
            total: s.shown.saturating_duration_since(f.capture),
            stages: VideoStages {
                encode: f.encoded.saturating_duration_since(f.capture),
                seal: f.seal,
                network: s.arrival.saturating_duration_since(f.sent),
                handoff: s.taken.saturating_duration_since(s.arrival),
                open: s.open,
                decode: s.decoded.saturating_duration_since(s.decode_start),
                render: s.shown.saturating_duration_since(s.decoded),
            },
            keyframe: f.keyframe,
            bytes: f.bytes,
        });
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
