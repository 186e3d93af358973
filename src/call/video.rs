//! The video threads of a call: capture (source, encoder, SFrame, transport) and render
//! (decrypt, order, decode, lip-sync hold, sink), plus the tasks that carry keyframe requests
//! and the bandwidth estimate between them and the transport.
//!
//! Encoding takes 5-30 ms a frame, so video never shares a thread with audio. The capture
//! thread follows the estimate: the encoder's bitrate is the estimate minus what audio needs,
//! and at low estimates the picture steps down in size and then in frame rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::handshake::{HandshakeError, MediaReceiver, MediaSender};
use crate::media::video::{
    EncodedVideoFrame, FreezeDetector, VIDEO_CLOCK_RATE, VideoDecoder, VideoEncoder,
    VideoEncoderConfig, VideoFrame, VideoSink, VideoSource,
};
use crate::sframe::SframeError;
use crate::transport::{
    FrameOrder, MediaTransport, OpenVideoError, ReceivedVideoFrame, SenderClock,
    open_video_in_place, seal_video,
};

use super::media_loop::{MediaNotice, pace_until};
use super::stats::SharedStats;

/// What audio needs of the estimate before video gets the rest (Opus at up to 32 kbit/s plus
/// RTP, SRTP and SFrame overhead at 50 packets a second), kbit/s.
pub(crate) const AUDIO_RESERVE_KBPS: u32 = 64;

/// The least bitrate the encoder is given, kbit/s.
pub(crate) const MIN_VIDEO_KBPS: u32 = 60;

/// Frames queued for the render thread: about a second at 30 fps, so a busy machine's
/// scheduling hiccups cost nothing; beyond it frames are dropped (a stalled sink must not grow
/// memory), and the keyframe asked for recovers the picture.
pub(crate) const RENDER_QUEUE: usize = 32;

/// Longest a frame is held back to meet its audio.
const MAX_SYNC_HOLD: Duration = Duration::from_millis(300);

/// Our video source (if we send video) and the sink the peer's video is shown on.
pub(crate) type VideoIo = (Option<Box<dyn VideoSource>>, Box<dyn VideoSink>);

/// The application's two-party video I/O while no media thread holds it: our source (if we
/// send video) and the sink the peer's video is shown on. A call that moves into a group call
/// and back keeps both: the capture thread always puts the source back, the render thread puts
/// the sink back unfinished on a change of mode (and finishes it at the call's end).
pub(crate) struct VideoHome {
    source: std::sync::Mutex<Option<Box<dyn VideoSource>>>,
    sink: std::sync::Mutex<Option<Box<dyn VideoSink>>>,
}

impl VideoHome {
    /// A home holding `source` (if any) and `sink`.
    pub(crate) fn new(source: Option<Box<dyn VideoSource>>, sink: Box<dyn VideoSink>) -> Self {
        VideoHome {
            source: std::sync::Mutex::new(source),
            sink: std::sync::Mutex::new(Some(sink)),
        }
    }

    /// The source (if any) and the sink, or `None` (then nothing is taken) while a render
    /// thread still holds the sink.
    pub(crate) fn take(&self) -> Option<VideoIo> {
        let mut sink = self.sink.lock().ok()?;
        let sink = sink.take()?;
        Some((self.take_source(), sink))
    }

    /// Takes the source (`None` if there is none, or a capture thread has it).
    pub(crate) fn take_source(&self) -> Option<Box<dyn VideoSource>> {
        self.source.lock().ok()?.take()
    }

    pub(crate) fn put_source(&self, source: Box<dyn VideoSource>) {
        if let Ok(mut s) = self.source.lock() {
            *s = Some(source);
        }
    }

    pub(crate) fn put_sink(&self, sink: Box<dyn VideoSink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(sink);
        }
    }

    /// Finishes the sink if it is here (the call ended while a group call showed the others).
    pub(crate) fn finish(&self) {
        let sink = self.sink.lock().ok().and_then(|mut s| s.take());
        if let Some(mut sink) = sink
            && let Err(e) = sink.finish()
        {
            tracing::warn!("finishing the video sink: {e}");
        }
    }
}

/// Video settings of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VideoSettings {
    /// Encode at this size (scaling the source's pictures); `None`: the source's size.
    pub size: Option<(u32, u32)>,
    /// Frames per second sent at most; `None`: the source's rate.
    pub fps: Option<u32>,
    /// Most the encoder may use, kbit/s; `None`: what suits the size.
    pub max_kbps: Option<u32>,
}

/// Shared between the capture thread and the tasks that feed it.
#[derive(Debug, Default)]
pub(crate) struct VideoControl {
    /// The next frame must be a keyframe (PLI/FIR from the peer).
    pub keyframe: AtomicBool,
    /// The estimate's share for video, kbit/s; 0 pauses video (audio needs it all).
    pub target_kbps: AtomicU32,
    /// Whether an estimate has arrived yet.
    pub estimated: AtomicBool,
}

/// One step of the send ladder: a picture size divisor and a frame-rate divisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rung {
    scale: u32,
    skip: u32,
}

const LADDER: [Rung; 3] = [
    Rung { scale: 1, skip: 1 },
    Rung { scale: 2, skip: 1 },
    Rung { scale: 4, skip: 2 },
];

/// Chooses the rung for a bitrate: step down at once when the bitrate is below what the
/// current rung needs, step up only after it has been comfortably above for a while.
#[derive(Debug)]
pub(crate) struct Ladder {
    full: (u32, u32),
    rung: usize,
    above_since: Option<Instant>,
}

/// How long the bitrate must allow a bigger picture before stepping up.
const STEP_UP_AFTER: Duration = Duration::from_secs(2);

impl Ladder {
    pub(crate) fn new(full: (u32, u32)) -> Self {
        Ladder {
            full,
            rung: 0,
            above_since: None,
        }
    }

    /// The bitrate a rung needs to look acceptable: half of what suits its size.
    fn needs(&self, rung: usize) -> u32 {
        let (w, h) = self.size_of(rung);
        let fps_share = LADDER[rung].skip;
        VideoEncoderConfig::default_kbps(w, h) / 2 / fps_share
    }

    fn size_of(&self, rung: usize) -> (u32, u32) {
        let s = LADDER[rung].scale;
        let even = |v: u32| ((v / s) & !1).max(2);
        (even(self.full.0), even(self.full.1))
    }

    /// The size to encode at.
    pub(crate) fn size(&self) -> (u32, u32) {
        self.size_of(self.rung)
    }

    /// Send one frame in this many.
    pub(crate) fn skip(&self) -> u32 {
        LADDER[self.rung].skip
    }

    /// Takes the bitrate now; true if the rung changed.
    pub(crate) fn update(&mut self, kbps: u32, now: Instant) -> bool {
        let before = self.rung;
        while self.rung + 1 < LADDER.len() && kbps < self.needs(self.rung) {
            self.rung += 1;
            self.above_since = None;
        }
        if self.rung > 0 && kbps >= self.needs(self.rung - 1) * 13 / 10 {
            let since = *self.above_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= STEP_UP_AFTER {
                self.rung -= 1;
                self.above_since = None;
            }
        } else {
            self.above_since = None;
        }
        self.rung != before
    }
}

/// The encoder bitrate for an estimate of `estimate_bps`: what audio leaves, at most
/// `max_kbps`; 0 (video paused) when that is below [`MIN_VIDEO_KBPS`].
pub(crate) fn video_share_kbps(estimate_bps: u64, max_kbps: u32) -> u32 {
    let kbps = u32::try_from(estimate_bps / 1000).unwrap_or(u32::MAX);
    match kbps.saturating_sub(AUDIO_RESERVE_KBPS) {
        share if share < MIN_VIDEO_KBPS => 0,
        share => share.min(max_kbps.max(MIN_VIDEO_KBPS)),
    }
}

/// The least time between keyframes sent for the peer's requests; with the round trip (see
/// [`KeyframeGate`]) it keeps one lost frame from turning into a train of keyframes.
const KEYFRAME_HOLDOFF: Duration = Duration::from_millis(250);

/// Round trips count up to this when spacing keyframes and their requests (a stalled control
/// channel can report seconds).
const MAX_RTT: Duration = Duration::from_secs(1);

/// Decides which of the peer's keyframe requests to serve.
///
/// A receiver keeps asking until a keyframe reaches it, so requests it sent before the last
/// keyframe arrived are stale: serving them sent up to ten keyframes in two seconds into a
/// link that had just dropped to 300 kbit/s, each up to nine frames' worth, which kept its
/// queue (and audio in it) 200 ms long. A request is served only once a round trip (plus
/// [`KEYFRAME_HOLDOFF`]) has passed since the last keyframe went out.
#[derive(Debug, Default)]
pub(crate) struct KeyframeGate {
    last_sent: Option<Instant>,
}

impl KeyframeGate {
    /// Whether a request arriving at `now` should force a keyframe, given the round trip
    /// (zero when unknown).
    pub(crate) fn serves(&self, now: Instant, rtt: Duration) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= rtt.min(MAX_RTT) + KEYFRAME_HOLDOFF)
    }

    /// A keyframe went out at `now`, for whatever reason.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }
}

/// Everything the video capture thread owns.
pub(crate) struct VideoCapture {
    pub source: Box<dyn VideoSource>,
    pub encoder: Box<dyn VideoEncoder>,
    pub sender: MediaSender,
    pub transport: Arc<MediaTransport>,
    pub runtime: tokio::runtime::Handle,
    pub shared: Arc<SharedStats>,
    pub control: Arc<VideoControl>,
    pub stop: Arc<AtomicBool>,
    pub settings: VideoSettings,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    /// Where the source goes back when the thread stops (the next mode's capture takes it).
    pub home: Arc<VideoHome>,
}

impl VideoCapture {
    /// Runs until `stop`; a source or codec failure ends the thread with a notice. The
    /// source goes back home either way.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("video capture stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
        self.home.put_source(self.source);
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let (sw, sh) = self.source.size();
        let full = self.settings.size.unwrap_or((sw, sh));
        let source_fps = self.source.frame_rate().max(1.0);
        let fps = self
            .settings
            .fps
            .map_or(source_fps, |f| f64::from(f).min(source_fps));
        // Frames of the source to skip so at most `fps` are sent.
        let base_skip = (source_fps / fps).round().max(1.0) as u32;
        let max_kbps = self
            .settings
            .max_kbps
            .unwrap_or_else(|| VideoEncoderConfig::default_kbps(full.0, full.1));
        let mut ladder = Ladder::new(full);
        let mut picture = VideoFrame::black(sw, sh).map_err(|e| e.to_string())?;
        let mut scaled = VideoFrame::black(full.0, full.1).map_err(|e| e.to_string())?;
        let mut encoded = EncodedVideoFrame::default();
        let live = self.source.is_live();
        let period = Duration::from_secs_f64(1.0 / source_fps);
        let start = Instant::now();
        let mut read: u32 = 0;
        let mut bitrate = self.encoder.bitrate();
        let mut gate = KeyframeGate::default();
        while !self.stop.load(Relaxed) {
            if !live {
                // Paced before reading, so the picture's capture time is on the schedule.
                pace_until(start + period * read, &self.stop);
            }
            if !self
                .source
                .read_frame(&mut picture)
                .map_err(|e| e.to_string())?
            {
                tracing::info!("video source ended");
                // Keep the call going; the peer's picture stays on the last frame.
                while !self.stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            read = read.wrapping_add(1);
            let now = Instant::now();
            // The estimate, minus audio's share, within the configured bounds.
            let target = if self.control.estimated.load(Relaxed) {
                self.control.target_kbps.load(Relaxed).min(max_kbps)
            } else {
                max_kbps
            };
            if target == 0 {
                // The link carries audio and little more: audio keeps it.
                continue;
            }
            if ladder.update(target, now) {
                let (w, h) = ladder.size();
                tracing::info!(
                    width = w,
                    height = h,
                    fps_divisor = ladder.skip(),
                    "video steps"
                );
            }
            if !read.is_multiple_of(base_skip * ladder.skip()) {
                continue;
            }
            let size = ladder.size();
            if self.encoder.size() != size {
                self.encoder
                    .reconfigure(size.0, size.1)
                    .map_err(|e| e.to_string())?;
                bitrate = 0;
            }
            if bitrate != target {
                self.encoder
                    .set_bitrate(target)
                    .map_err(|e| e.to_string())?;
                bitrate = target;
            }
            if self.sender.poll(now).map_err(|e| e.to_string())?.is_some() {
                // A receiver that missed the key switch recovers at the next keyframe.
                self.encoder.force_keyframe();
            }
            if self.control.keyframe.swap(false, Relaxed) {
                let rtt = Duration::from_micros(self.shared.rtt_us.load(Relaxed));
                if gate.serves(now, rtt) {
                    self.encoder.force_keyframe();
                } else {
                    tracing::debug!("keyframe request within a round trip of the last keyframe");
                }
            }
            let frame = if picture.size() == size {
                &picture
            } else {
                scaled.set_size(size.0, size.1).map_err(|e| e.to_string())?;
                picture.scale_into(&mut scaled);
                scaled.capture = picture.capture;
                &scaled
            };
            let pts = frame.capture.saturating_duration_since(start).as_micros() as u64
                * u64::from(VIDEO_CLOCK_RATE)
                / 1_000_000;
            if !self
                .encoder
                .encode_into(frame, pts, &mut encoded)
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            let sealed =
                seal_video(self.sender.context(), &encoded.data).map_err(|e| e.to_string())?;
            let sent = self
                .runtime
                .block_on(self.transport.send_video(&sealed, frame.capture));
            match sent {
                Ok(()) => {
                    let s = &self.shared;
                    s.video_frames_sent.fetch_add(1, Relaxed);
                    s.video_bytes_sent
                        .fetch_add(sealed.as_bytes().len() as u64, Relaxed);
                    if encoded.keyframe {
                        s.video_keyframes_sent.fetch_add(1, Relaxed);
                        gate.sent(now);
                    }
                    s.video_target_kbps.store(u64::from(target), Relaxed);
                }
                Err(e) => tracing::debug!("video send failed: {e}"),
            }
        }
        Ok(())
    }
}

/// A frame opened and ready to decode.
pub(crate) struct OpenedFrame {
    pub vp8: Vec<u8>,
    pub timestamp: u32,
    pub arrival: Instant,
}

/// The receive path before decoding: authenticate and decrypt, then check the RTP timestamp
/// against the authenticated counter.
pub(crate) struct VideoOpener {
    receiver: MediaReceiver,
    order: FrameOrder,
    shared: Arc<SharedStats>,
}

impl VideoOpener {
    pub(crate) fn new(receiver: MediaReceiver, shared: Arc<SharedStats>) -> Self {
        VideoOpener {
            receiver,
            order: FrameOrder::timestamps_only(),
            shared,
        }
    }

    /// The VP8 frame in `frame`, or `None` if it is refused (counted) or empty.
    pub(crate) fn open(&mut self, frame: &ReceivedVideoFrame) -> Option<OpenedFrame> {
        let shared = &self.shared;
        if frame.payload.is_empty() {
            return None;
        }
        shared.video_frames_received.fetch_add(1, Relaxed);
        shared
            .video_bytes_received
            .fetch_add(frame.payload.len() as u64, Relaxed);
        let mut buf = frame.payload.to_vec();
        let base = buf.as_ptr() as usize;
        let receiver = &mut self.receiver;
        let now = frame.arrival;
        let (counter, range) = match open_video_in_place(&mut buf, |meta, part| {
            receiver.decrypt_in_place(meta, part, now)
        }) {
            Ok(o) => {
                let start = o.vp8.as_ptr() as usize - base;
                (o.header.map(|h| h.ctr), start..start + o.vp8.len())
            }
            Err(OpenVideoError::Open(HandshakeError::Sframe(
                SframeError::Replay { .. } | SframeError::TooOld { .. },
            ))) => {
                shared.video_replays_rejected.fetch_add(1, Relaxed);
                return None;
            }
            Err(e) => {
                tracing::debug!("dropped a video frame that failed decryption: {e}");
                shared.video_decrypt_failures.fetch_add(1, Relaxed);
                return None;
            }
        };
        let counter = counter?;
        shared.video_frames_decrypted.fetch_add(1, Relaxed);
        if let Err(e) = self.order.admit(counter, frame.timestamp, 0) {
            tracing::debug!(timestamp = frame.timestamp, "dropped a video frame: {e}");
            shared.video_reorder_rejected.fetch_add(1, Relaxed);
            return None;
        }
        buf.copy_within(range.clone(), 0);
        buf.truncate(range.len());
        Some(OpenedFrame {
            vp8: buf,
            timestamp: frame.timestamp,
            arrival: frame.arrival,
        })
    }
}

/// Opens frames from the transport and hands them to the render thread; asks for a keyframe
/// when a frame was lost. Runs until the transport's video stream ends.
pub(crate) async fn open_video_frames(
    mut frames: mpsc::Receiver<ReceivedVideoFrame>,
    mut opener: VideoOpener,
    out: SyncSender<OpenedFrame>,
    need_keyframe: Arc<Notify>,
) {
    // After a lost or dropped frame, delta frames refer to a picture the decoder never had:
    // skip them until a keyframe comes.
    let mut broken = false;
    while let Some(frame) = frames.recv().await {
        broken |= frame.after_loss;
        let Some(opened) = opener.open(&frame) else {
            continue;
        };
        if broken {
            if opened.vp8.first().is_some_and(|b| b & 1 == 1) {
                opener.shared.video_frames_skipped.fetch_add(1, Relaxed);
                need_keyframe.notify_one();
                continue;
            }
            broken = false;
        }
        match out.try_send(opened) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                broken = true;
                need_keyframe.notify_one();
            }
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}

/// Sends a PLI whenever the render side needs a keyframe, at most one per `min_gap` or per
/// two round trips, whichever is longer: the keyframe asked for needs a round trip and its own
/// time on the link to arrive, and asking again before then only adds keyframes.
pub(crate) async fn request_keyframes(
    transport: Arc<MediaTransport>,
    need: Arc<Notify>,
    shared: Arc<SharedStats>,
    min_gap: Duration,
) {
    loop {
        need.notified().await;
        if transport.request_keyframe() {
            shared.video_keyframe_requests_sent.fetch_add(1, Relaxed);
        }
        let rtt = Duration::from_micros(shared.rtt_us.load(Relaxed));
        tokio::time::sleep(min_gap.max(rtt.min(MAX_RTT) * 2)).await;
    }
}

/// Turns the peer's PLI/FIR into a keyframe on our next frame.
pub(crate) async fn serve_keyframe_requests(
    mut requests: mpsc::Receiver<()>,
    control: Arc<VideoControl>,
    shared: Arc<SharedStats>,
) {
    while requests.recv().await.is_some() {
        shared.video_keyframes_requested.fetch_add(1, Relaxed);
        control.keyframe.store(true, Relaxed);
    }
}

/// Follows the transport's bandwidth estimate: video gets what audio leaves.
pub(crate) async fn follow_bitrate(
    mut estimate: watch::Receiver<u64>,
    control: Arc<VideoControl>,
    max_kbps: u32,
) {
    loop {
        let bps = *estimate.borrow_and_update();
        control
            .target_kbps
            .store(video_share_kbps(bps, max_kbps), Relaxed);
        control.estimated.store(true, Relaxed);
        if estimate.changed().await.is_err() {
            return;
        }
    }
}

/// Everything the render thread owns.
pub(crate) struct VideoRender {
    pub sink: Box<dyn VideoSink>,
    pub decoder: Box<dyn VideoDecoder>,
    pub frames: Receiver<OpenedFrame>,
    pub shared: Arc<SharedStats>,
    pub stop: Arc<AtomicBool>,
    pub need_keyframe: Arc<Notify>,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    /// The peer's audio and video sender clocks (RTCP sender reports).
    pub clocks: (
        watch::Receiver<Option<SenderClock>>,
        watch::Receiver<Option<SenderClock>>,
    ),
    /// Where the sink goes back, unfinished, when the call changes mode (`handover` raised
    /// before `stop`).
    pub home: Arc<VideoHome>,
    pub handover: Arc<AtomicBool>,
}

/// When the picture with RTP timestamp `video_ts` should be shown to meet its audio: the
/// sender's clocks say how much later (or earlier) it was captured than the audio frame
/// played last, and it is shown that much after that frame played.
pub(crate) fn sync_target(
    audio: &SenderClock,
    video: &SenderClock,
    video_ts: u32,
    (audio_ts, audio_played_at): (u32, Instant),
) -> Option<Instant> {
    let ahead = video.wall_secs(video_ts) - audio.wall_secs(audio_ts);
    if !ahead.is_finite() || ahead.abs() > 10.0 {
        return None; // clocks that far apart are not one sender's: do not wait on them
    }
    let by = Duration::from_secs_f64(ahead.abs());
    if ahead >= 0.0 {
        audio_played_at.checked_add(by)
    } else {
        audio_played_at.checked_sub(by)
    }
}

impl VideoRender {
    /// Runs until `stop`, then finishes the sink, or hands it back on a change of mode.
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        let result = if self.handover.load(Relaxed) {
            self.home.put_sink(self.sink);
            result
        } else {
            result.and(self.sink.finish().map_err(|e| e.to_string()))
        };
        if let Err(e) = result {
            tracing::error!("video render stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let mut picture = VideoFrame::black(2, 2).map_err(|e| e.to_string())?;
        let mut freezes = FreezeDetector::new();
        // Until a keyframe decodes, delta frames cannot.
        let mut have_keyframe = false;
        // The A/V offset, smoothed over about 16 pictures.
        let mut sync_offset_us: Option<f64> = None;
        let mut shown_size = (0, 0);
        while !self.stop.load(Relaxed) {
            let frame = match self.frames.recv_timeout(Duration::from_millis(50)) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let keyframe = frame.vp8.first().is_some_and(|b| b & 1 == 0);
            if !have_keyframe && !keyframe {
                self.need_keyframe.notify_one();
                continue;
            }
            match self.decoder.decode_into(&frame.vp8, &mut picture) {
                Ok(true) if self.decoder.last_picture_damaged() => {
                    // Built on a broken reference: never shown; wait for a keyframe.
                    self.shared.video_decode_errors.fetch_add(1, Relaxed);
                    have_keyframe = false;
                    self.need_keyframe.notify_one();
                    continue;
                }
                Ok(true) => have_keyframe = true,
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!("video frame did not decode: {e}");
                    self.shared.video_decode_errors.fetch_add(1, Relaxed);
                    have_keyframe = false;
                    self.need_keyframe.notify_one();
                    continue;
                }
            }
            // Lip sync: show the picture when the audio captured with it plays. Until the
            // sender's clocks are known, wait as long as audio waits in its playout buffer.
            let synced = {
                let (audio, video) = (*self.clocks.0.borrow(), *self.clocks.1.borrow());
                match (audio, video, self.shared.audio_played(Instant::now())) {
                    (Some(a), Some(v), Some(played)) => {
                        sync_target(&a, &v, frame.timestamp, played)
                    }
                    _ => None,
                }
            };
            let audio_delay = Duration::from_micros(self.shared.playout_delay_us.load(Relaxed));
            let target = synced.unwrap_or(frame.arrival + audio_delay);
            pace_until(target.min(frame.arrival + MAX_SYNC_HOLD), &self.stop);
            let shown = Instant::now();
            picture.capture = frame.arrival;
            self.sink.write_frame(&picture).map_err(|e| e.to_string())?;
            let s = &self.shared;
            s.video_frames_rendered.fetch_add(1, Relaxed);
            let (w, h) = picture.size();
            if (w, h) != shown_size {
                shown_size = (w, h);
                let _ = self.notices.send(MediaNotice::VideoSize(w, h));
            }
            s.video_width.store(w, Relaxed);
            s.video_height.store(h, Relaxed);
            if freezes.on_frame(shown).is_some() {
                s.video_freezes.store(freezes.freezes(), Relaxed);
            }
            if self.stop.load(Relaxed) {
                break; // the hold was cut short: not a measurement
            }
            // Positive: the picture is shown later than the audio captured with it plays.
            let Some(target) = synced else {
                continue; // no sender clocks yet: nothing to measure against
            };
            let offset = if shown >= target {
                shown.duration_since(target).as_micros() as f64
            } else {
                -(target.duration_since(shown).as_micros() as f64)
            };
            sync_offset_us = Some(sync_offset_us.map_or(offset, |o| o + (offset - o) / 16.0));
            if let Some(o) = sync_offset_us {
                s.av_sync_offset_us.store(o as i64, Relaxed);
                s.av_sync_measured.store(true, Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Direction, DirectionKey, MediaKind, RotationConfig};
    use crate::sframe::CipherSuite;
    use bytes::Bytes;

    const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

    fn key(base: u8) -> DirectionKey {
        DirectionKey::from_bytes([base; 32], Direction::InitiatorToResponder)
    }

    fn sender(base: u8) -> MediaSender {
        let rot = RotationConfig::default();
        MediaSender::for_kind(MediaKind::Video, SUITE, key(base), rot, Instant::now()).unwrap()
    }

    #[test]
    fn stale_keyframe_requests_are_not_served() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let rtt = ms(200);
        let mut gate = KeyframeGate::default();
        // The first request is served at once.
        assert!(gate.serves(t0, rtt));
        gate.sent(t0);
        // Requests the peer sent before that keyframe could reach it are stale.
        assert!(!gate.serves(t0 + ms(100), rtt));
        assert!(!gate.serves(t0 + ms(400), rtt));
        // One a round trip and the hold-off later means the keyframe was lost: served.
        assert!(gate.serves(t0 + rtt + KEYFRAME_HOLDOFF, rtt));
        // Unknown round trip: the hold-off alone.
        assert!(gate.serves(t0 + KEYFRAME_HOLDOFF, Duration::ZERO));
        // A round trip of seconds counts as one.
        assert!(gate.serves(t0 + MAX_RTT + KEYFRAME_HOLDOFF, Duration::from_secs(30)));
    }

    fn opener() -> (VideoOpener, Arc<SharedStats>) {
        let rot = RotationConfig::default();
        let rx = MediaReceiver::for_kind(MediaKind::Video, SUITE, key(7), rot).unwrap();
        let shared = Arc::new(SharedStats::default());
        (VideoOpener::new(rx, Arc::clone(&shared)), shared)
    }

    /// A VP8-shaped frame: keyframe tag and size header, then `n`-dependent content.
    fn vp8(keyframe: bool, n: u8) -> Vec<u8> {
        let mut f = if keyframe {
            vec![0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
        } else {
            vec![0x51, 0x15, 0x00]
        };
        f.extend((0..200u8).map(|i| i.wrapping_mul(n)));
        f
    }

    fn wire(tx: &mut MediaSender, frame: &[u8], timestamp: u32) -> ReceivedVideoFrame {
        let sealed = seal_video(tx.context(), frame).unwrap();
        ReceivedVideoFrame {
            timestamp,
            payload: Bytes::copy_from_slice(sealed.as_bytes()),
            arrival: Instant::now(),
            after_loss: false,
        }
    }

    #[test]
    fn genuine_frames_open_and_forged_ones_are_counted_never_returned() {
        let (mut rx, shared) = opener();
        let mut tx = sender(7);
        let key = vp8(true, 3);
        let first = wire(&mut tx, &key, 1000);
        assert_eq!(rx.open(&first).unwrap().vp8, key);
        let delta = vp8(false, 5);
        assert_eq!(rx.open(&wire(&mut tx, &delta, 4000)).unwrap().vp8, delta);

        // A replay of the first frame.
        assert!(rx.open(&first).is_none());
        assert_eq!(shared.video_replays_rejected.load(Relaxed), 1);

        // The clear prefix is authenticated: a changed size byte, or the keyframe bit.
        for (at, bit) in [(7usize, 0x01u8), (0, 0x01)] {
            let mut f = wire(&mut tx, &vp8(true, 9), 7000);
            let mut bytes = f.payload.to_vec();
            bytes[at] ^= bit;
            f.payload = Bytes::from(bytes);
            assert!(rx.open(&f).is_none(), "byte {at} flipped");
        }
        // A frame sealed under another key.
        let mut stranger = sender(8);
        assert!(rx.open(&wire(&mut stranger, &vp8(true, 1), 9000)).is_none());
        // Too short to hold its own prefix.
        let short = ReceivedVideoFrame {
            payload: Bytes::from_static(&[0x51, 0x15]),
            ..wire(&mut tx, &delta, 9500)
        };
        assert!(rx.open(&short).is_none());
        // Each refused and counted: a forged header that names an old counter is refused by
        // the replay window before authentication, and counted there.
        assert_eq!(
            shared.video_decrypt_failures.load(Relaxed)
                + shared.video_replays_rejected.load(Relaxed),
            1 + 4
        );

        // Genuine but moved: a frame whose RTP timestamp is before an earlier counter's.
        let late = wire(&mut tx, &vp8(false, 2), 2000);
        assert!(rx.open(&late).is_none());
        assert_eq!(shared.video_reorder_rejected.load(Relaxed), 1);
        assert_eq!(shared.video_frames_decrypted.load(Relaxed), 3);
    }

    #[test]
    fn the_ladder_steps_down_at_once_and_up_after_a_while() {
        let t0 = Instant::now();
        let mut ladder = Ladder::new((1280, 720));
        assert_eq!(ladder.size(), (1280, 720));
        assert!(!ladder.update(2000, t0));
        // 720p needs 750 kbit/s; 300 is below it, and below what 640x360 needs (400).
        assert!(ladder.update(300, t0));
        assert_eq!(ladder.size(), (320, 180));
        assert_eq!(ladder.skip(), 2);
        // Plenty again: up one rung only after STEP_UP_AFTER.
        assert!(!ladder.update(3000, t0 + Duration::from_millis(100)));
        assert!(!ladder.update(3000, t0 + Duration::from_secs(1)));
        assert!(ladder.update(3000, t0 + Duration::from_millis(2200)));
        assert_eq!(ladder.size(), (640, 360));
        assert_eq!(ladder.skip(), 1);
        // A dip resets the wait.
        assert!(!ladder.update(500, t0 + Duration::from_secs(3)));
        assert!(!ladder.update(3000, t0 + Duration::from_secs(4)));
        assert!(!ladder.update(3000, t0 + Duration::from_secs(5)));
        assert!(ladder.update(3000, t0 + Duration::from_millis(6100)));
        assert_eq!(ladder.size(), (1280, 720));
    }

    #[test]
    fn a_picture_is_shown_when_the_audio_captured_with_it_plays() {
        let now = Instant::now();
        // The sender's audio and video clocks: same wall clock, different RTP origins.
        let audio = SenderClock {
            ntp: 5000 << 32,
            rtp: 1_000,
            clock_rate: 48_000,
        };
        let video = SenderClock {
            ntp: 5000 << 32,
            rtp: 777_000,
            clock_rate: 90_000,
        };
        // Audio captured at 5000.0 s plays now; a picture captured 100 ms later is due 100 ms
        // from now, one captured 40 ms earlier was due 40 ms ago.
        let played = (1_000, now);
        let later = sync_target(&audio, &video, 777_000 + 9_000, played).unwrap();
        assert_eq!(later - now, Duration::from_millis(100));
        let earlier = sync_target(&audio, &video, 777_000 - 3_600, played).unwrap();
        assert_eq!(now - earlier, Duration::from_millis(40));
        // Clocks hours apart are not one sender's: no target.
        let stranger = SenderClock {
            ntp: 9000 << 32,
            ..video
        };
        assert!(sync_target(&audio, &stranger, 777_000, played).is_none());
    }

    #[test]
    fn audio_is_served_first() {
        assert_eq!(video_share_kbps(1_000_000, 2000), 1000 - AUDIO_RESERVE_KBPS);
        assert_eq!(video_share_kbps(5_000_000, 800), 800);
        assert_eq!(video_share_kbps(150_000, 800), 150 - AUDIO_RESERVE_KBPS);
        // A starved link carries audio alone.
        assert_eq!(video_share_kbps(100_000, 800), 0);
    }
}
