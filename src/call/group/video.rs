//! Video in group calls: our camera (or file, or test pattern) sealed under our group video
//! key and sent to the SFU; the others' video, forwarded on our video slots, opened under the
//! key its KID names, decoded per member and shown on that member's sink.
//!
//! The SFU decides which publisher a slot carries and may change it at any time, so a slot
//! says nothing about who sent a frame: the sender is the KID's slot, which the frame's
//! authentication binds. Per member there is one decoder, one sink and one "broken" state
//! (a frame lost, held for its key, or dropped: delta frames wait for a keyframe, which is
//! asked for with a PLI on the slot that last carried that member).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::group::{GroupError, GroupKeys, GroupKid, KeyKind, OpenOutcome, Slot};
use crate::media::video::{
    EncodedVideoFrame, NullVideoSink, VIDEO_CLOCK_RATE, VideoDecoder, VideoEncoder, VideoError,
    VideoFrame, VideoSink, VideoSource,
};
use crate::sframe::{Header, SframeError};
use crate::transport::{SfuTransport, SlotVideoFrame, seal_video, video_clear_prefix_len};

use super::super::media_loop::{MediaNotice, pace_until};
use super::super::stats::SharedStats;
use super::super::video::{VideoControl, VideoSettings};

/// Makes the sink a member's video is shown on, given its name (canonical, as shown).
pub type VideoSinkFactory =
    Box<dyn FnMut(&str) -> Result<Box<dyn VideoSink>, VideoError> + Send + 'static>;

/// Least time between two keyframe requests on one slot.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(300);

/// Video slots we ask the SFU for: enough for a room of five with every member's video.
pub(crate) const VIDEO_SLOTS: usize = 4;

/// Per-member video counts, by slot (written under the group keys' lock, so they agree with
/// the keyring's counts read under it).
pub(crate) struct VideoCounts {
    decrypted: [AtomicU64; 128],
    failures: [AtomicU64; 128],
    /// Bumped when the slot's member leaves: the open task then starts that sender afresh
    /// (a member given the slot later starts its counters and generations anew).
    epoch: [AtomicU64; 128],
}

impl Default for VideoCounts {
    fn default() -> Self {
        VideoCounts {
            decrypted: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            epoch: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl VideoCounts {
    pub(crate) fn decrypted(&self, slot: Slot) -> u64 {
        self.decrypted[usize::from(slot.get())].load(Relaxed)
    }

    pub(crate) fn failures(&self, slot: Slot) -> u64 {
        self.failures[usize::from(slot.get())].load(Relaxed)
    }

    pub(crate) fn count_decrypted(&self, slot: Slot) {
        self.decrypted[usize::from(slot.get())].fetch_add(1, Relaxed);
    }

    fn count_failure(&self, slot: Slot) {
        self.failures[usize::from(slot.get())].fetch_add(1, Relaxed);
    }

    /// Forgets `slot` (it left; its last figures were kept; the slot may be reused).
    pub(crate) fn clear(&self, slot: Slot) {
        self.decrypted[usize::from(slot.get())].store(0, Relaxed);
        self.failures[usize::from(slot.get())].store(0, Relaxed);
        self.epoch[usize::from(slot.get())].fetch_add(1, Relaxed);
    }

    fn epoch(&self, slot: Slot) -> u64 {
        self.epoch[usize::from(slot.get())].load(Relaxed)
    }
}

/// The application's video I/O for group calls, kept across SFU reconnections: our source,
/// and one sink per member (made by the factory the first time the member's video shows).
#[derive(Default)]
pub(crate) struct GroupVideoHome {
    source: Mutex<Option<Box<dyn VideoSource>>>,
    sinks: Mutex<HashMap<String, Box<dyn VideoSink>>>,
    factory: Mutex<Option<VideoSinkFactory>>,
}

impl GroupVideoHome {
    pub(crate) fn new(factory: Option<VideoSinkFactory>) -> Self {
        GroupVideoHome {
            factory: Mutex::new(factory),
            ..Default::default()
        }
    }

    /// Keeps `source` for the next capture thread.
    pub(crate) fn put_source(&self, source: Box<dyn VideoSource>) {
        if let Ok(mut s) = self.source.lock() {
            *s = Some(source);
        }
    }

    /// Takes the source (`None` if there is none, or a capture thread has it).
    pub(crate) fn take_source(&self) -> Option<Box<dyn VideoSource>> {
        self.source.lock().ok()?.take()
    }

    /// Whether a source is kept here.
    pub(crate) fn has_source(&self) -> bool {
        self.source.lock().is_ok_and(|s| s.is_some())
    }

    /// Shows `picture` on `name`'s sink, making the sink first if needed. Without a factory
    /// (or when it fails, logged once) pictures are decoded and counted only.
    fn write(&self, name: &str, picture: &VideoFrame) -> Result<(), VideoError> {
        let mut sinks = self.sinks.lock().map_err(|_| poisoned())?;
        if !sinks.contains_key(name) {
            let made = match self.factory.lock().map_err(|_| poisoned())?.as_mut() {
                Some(factory) => factory(name).unwrap_or_else(|e| {
                    tracing::warn!(member = %name, "no video sink for this member: {e}");
                    Box::new(NullVideoSink::default())
                }),
                None => Box::new(NullVideoSink::default()),
            };
            sinks.insert(name.to_owned(), made);
        }
        match sinks.get_mut(name) {
            Some(sink) => sink.write_frame(picture),
            None => Ok(()),
        }
    }

    /// Finishes every member's sink (the call ended).
    pub(crate) fn finish(&self) {
        let Ok(mut sinks) = self.sinks.lock() else {
            return;
        };
        for (name, sink) in sinks.iter_mut() {
            if let Err(e) = sink.finish() {
                tracing::warn!(member = %name, "finishing a video sink: {e}");
            }
        }
        sinks.clear();
    }
}

fn poisoned() -> VideoError {
    VideoError::from(std::io::Error::other("video sinks unusable"))
}

/// Locks the group keys; a poisoned lock (a thread panicked holding it) is an error.
fn lock(keys: &Mutex<GroupKeys>) -> Result<std::sync::MutexGuard<'_, GroupKeys>, String> {
    keys.lock()
        .map_err(|_| "the group keys are unusable".to_owned())
}

/// Everything the group video capture thread owns.
pub(crate) struct GroupVideoCapture {
    pub source: Option<Box<dyn VideoSource>>,
    pub encoder: Box<dyn VideoEncoder>,
    pub keys: Arc<Mutex<GroupKeys>>,
    pub transport: Arc<SfuTransport>,
    pub runtime: tokio::runtime::Handle,
    pub shared: Arc<SharedStats>,
    pub control: Arc<VideoControl>,
    pub stop: Arc<AtomicBool>,
    pub settings: VideoSettings,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    pub home: Arc<GroupVideoHome>,
}

impl GroupVideoCapture {
    /// Runs until `stop`; a source or codec failure ends the thread with a notice. The
    /// source goes back home either way.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("video capture stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
        if let Some(source) = self.source.take() {
            self.home.put_source(source);
        }
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let Some(source) = self.source.as_mut() else {
            return Ok(());
        };
        let (sw, sh) = source.size();
        let size = self.settings.size.unwrap_or((sw, sh));
        let source_fps = source.frame_rate().max(1.0);
        let fps = self
            .settings
            .fps
            .map_or(source_fps, |f| f64::from(f).min(source_fps));
        let skip = (source_fps / fps).round().max(1.0) as u32;
        let mut picture = VideoFrame::black(sw, sh).map_err(|e| e.to_string())?;
        let mut scaled = VideoFrame::black(size.0, size.1).map_err(|e| e.to_string())?;
        let mut encoded = EncodedVideoFrame::default();
        let live = source.is_live();
        let period = Duration::from_secs_f64(1.0 / source_fps);
        let start = Instant::now();
        let mut read: u32 = 0;
        let mut generation = None;
        while !self.stop.load(Relaxed) {
            if !live {
                pace_until(start + period * read, &self.stop);
            }
            if !source.read_frame(&mut picture).map_err(|e| e.to_string())? {
                tracing::info!("video source ended");
                // The call goes on; the others' picture of us stays on the last frame.
                while !self.stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            read = read.wrapping_add(1);
            if !read.is_multiple_of(skip) {
                continue;
            }
            if self.control.keyframe.swap(false, Relaxed) {
                self.encoder.force_keyframe();
            }
            let frame = if picture.size() == size {
                &picture
            } else {
                picture.scale_into(&mut scaled);
                scaled.capture = picture.capture;
                &scaled
            };
            let pts = frame.capture.saturating_duration_since(start).as_micros() as u64
                * u64::from(VIDEO_CLOCK_RATE)
                / 1_000_000;
            // A member that missed our key switch recovers at the next keyframe.
            let now_gen = lock(&self.keys)?.send_generation();
            if generation.is_some_and(|g| g != now_gen) {
                self.encoder.force_keyframe();
            }
            generation = Some(now_gen);
            if !self
                .encoder
                .encode_into(frame, pts, &mut encoded)
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            // The lock is held for one seal (the open tasks take it per received frame).
            let sealed = {
                let mut keys = lock(&self.keys)?;
                seal_video(keys.sender(KeyKind::Video), &encoded.data).map_err(|e| e.to_string())?
            };
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
                    }
                    // No estimate in a group: the encoder's fixed rate is the target.
                    s.video_target_kbps
                        .store(u64::from(self.encoder.bitrate()), Relaxed);
                }
                Err(e) => tracing::debug!("video send failed: {e}"),
            }
        }
        Ok(())
    }
}

/// A member's VP8 frame, opened, for the render thread.
pub(crate) struct MemberFrame {
    sender: Slot,
    vp8: Vec<u8>,
}

/// What the open task knows of one sender.
struct SenderState {
    /// The slot's [`VideoCounts`] epoch this is about.
    epoch: u64,
    /// The slot that carried it last: where its keyframe requests go.
    slot_ssrc: Option<u32>,
    /// Delta frames cannot decode until a keyframe comes.
    broken: bool,
    /// (generation, counter) of the last frame passed on: older ones are refused.
    last: Option<(u64, u64)>,
}

impl SenderState {
    /// A sender not seen yet (or since it left): its first picture must be a keyframe.
    fn new(epoch: u64) -> Self {
        SenderState {
            epoch,
            slot_ssrc: None,
            broken: true,
            last: None,
        }
    }
}

/// The state of `slot`'s sender, started afresh if the member in it left since.
fn sender_state<'a>(
    senders: &'a mut HashMap<Slot, SenderState>,
    counts: &VideoCounts,
    slot: Slot,
) -> &'a mut SenderState {
    let epoch = counts.epoch(slot);
    let state = senders
        .entry(slot)
        .or_insert_with(|| SenderState::new(epoch));
    if state.epoch != epoch {
        *state = SenderState::new(epoch);
    }
    state
}

/// Asks for keyframes, at most one per [`KEYFRAME_REQUEST_GAP`] on each slot.
struct Asker {
    transport: Arc<SfuTransport>,
    shared: Arc<SharedStats>,
    last: HashMap<u32, Instant>,
}

impl Asker {
    fn ask(&mut self, slot_ssrc: Option<u32>, now: Instant) {
        let Some(ssrc) = slot_ssrc else { return };
        if self
            .last
            .get(&ssrc)
            .is_some_and(|t| now.saturating_duration_since(*t) < KEYFRAME_REQUEST_GAP)
        {
            return;
        }
        if self.transport.request_keyframe(ssrc) {
            self.last.insert(ssrc, now);
            self.shared
                .video_keyframe_requests_sent
                .fetch_add(1, Relaxed);
        }
    }
}

/// What opening one forwarded frame gave.
enum Opened {
    Frame {
        sender: Slot,
        generation: u64,
        ctr: u64,
        vp8: Vec<u8>,
    },
    /// Its key has not come yet: held by the keyring (dropped if released later).
    Held(Slot),
    Refused,
}

/// Opens one sealed video frame under the group keys, counting what happens.
fn open_one(
    keys: &Mutex<GroupKeys>,
    counts: &VideoCounts,
    shared: &SharedStats,
    frame: &SlotVideoFrame,
) -> Result<Opened, String> {
    let payload = &frame.frame.payload;
    let Some(&first) = payload.first() else {
        return Ok(Opened::Refused);
    };
    let n = video_clear_prefix_len(first);
    let refuse = |slot: Option<Slot>| {
        shared.video_decrypt_failures.fetch_add(1, Relaxed);
        if let Some(slot) = slot {
            counts.count_failure(slot);
        }
        Ok(Opened::Refused)
    };
    if payload.len() <= n {
        return refuse(None);
    }
    let (prefix, sealed) = payload.split_at(n);
    // The KID only says which key to try; the key's tag decides.
    let claimed = match Header::parse(sealed).map(|(h, _)| GroupKid::parse(h.kid)) {
        Ok(Ok(kid)) if kid.kind == KeyKind::Video => kid.slot,
        _ => return refuse(None),
    };
    let mut k = lock(keys)?;
    match k.open_with_metadata(frame.frame.arrival, prefix, sealed) {
        Ok(OpenOutcome::Opened(o)) if o.kind == KeyKind::Video => {
            counts.count_decrypted(o.slot);
            shared.video_frames_decrypted.fetch_add(1, Relaxed);
            let mut vp8 = Vec::with_capacity(n + o.payload.len());
            vp8.extend_from_slice(prefix);
            vp8.extend_from_slice(&o.payload);
            Ok(Opened::Frame {
                sender: o.slot,
                generation: o.generation,
                ctr: o.ctr,
                vp8,
            })
        }
        Ok(OpenOutcome::Opened(_)) => refuse(Some(claimed)),
        Ok(OpenOutcome::Held) => Ok(Opened::Held(claimed)),
        Err(GroupError::Sframe(SframeError::Replay { .. } | SframeError::TooOld { .. })) => {
            shared.video_replays_rejected.fetch_add(1, Relaxed);
            Ok(Opened::Refused)
        }
        Err(GroupError::UnknownMember(_) | GroupError::UnknownKey { .. }) => {
            // Never shown: a member we have no key of (yet, or any more).
            shared.unknown_key_frames.fetch_add(1, Relaxed);
            Ok(Opened::Refused)
        }
        Err(e) => {
            tracing::debug!("refused a forwarded video frame: {e}");
            refuse(Some(claimed))
        }
    }
}

/// Opens forwarded video frames and hands them to the render thread, per sender; asks for
/// keyframes when a slot starts carrying a sender, a frame was lost, or the render thread
/// needs one. Runs until the transport's video stream ends.
pub(crate) async fn open_video_frames(
    mut frames: mpsc::Receiver<SlotVideoFrame>,
    mut needs: mpsc::UnboundedReceiver<Slot>,
    keys: Arc<Mutex<GroupKeys>>,
    counts: Arc<VideoCounts>,
    out: SyncSender<MemberFrame>,
    transport: Arc<SfuTransport>,
    shared: Arc<SharedStats>,
) {
    let mut senders: HashMap<Slot, SenderState> = HashMap::new();
    // Which sender each slot carried last.
    let mut carried: HashMap<u32, Slot> = HashMap::new();
    let mut asker = Asker {
        transport,
        shared: Arc::clone(&shared),
        last: HashMap::new(),
    };
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => match frame {
                Some(f) => f,
                None => return,
            },
            Some(sender) = needs.recv() => {
                let ssrc = senders.get(&sender).and_then(|s| s.slot_ssrc);
                asker.ask(ssrc, Instant::now());
                continue;
            }
        };
        let now = Instant::now();
        shared.video_frames_received.fetch_add(1, Relaxed);
        shared
            .video_bytes_received
            .fetch_add(frame.frame.payload.len() as u64, Relaxed);
        let ssrc = frame.slot_ssrc;
        let opened = match open_one(&keys, &counts, &shared, &frame) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        let (sender, generation, ctr, vp8) = match opened {
            Opened::Frame {
                sender,
                generation,
                ctr,
                vp8,
            } => (sender, generation, ctr, vp8),
            Opened::Held(claimed) => {
                // It opens later or never: either way the picture needs a keyframe.
                let s = sender_state(&mut senders, &counts, claimed);
                s.broken = true;
                s.slot_ssrc = Some(ssrc);
                continue;
            }
            Opened::Refused => continue,
        };
        let state = sender_state(&mut senders, &counts, sender);
        state.slot_ssrc = Some(ssrc);
        let keyframe = vp8.first().is_some_and(|b| b & 1 == 0);
        if carried.insert(ssrc, sender) != Some(sender) {
            // A slot that starts carrying a sender: its first frames are deltas of a picture
            // we never had, unless this is a keyframe.
            if !keyframe {
                state.broken = true;
            }
        } else if frame.frame.after_loss {
            state.broken = true;
        }
        if state.last.is_some_and(|last| (generation, ctr) <= last) {
            shared.video_reorder_rejected.fetch_add(1, Relaxed);
            continue;
        }
        state.last = Some((generation, ctr));
        if state.broken {
            if !keyframe {
                shared.video_frames_skipped.fetch_add(1, Relaxed);
                asker.ask(Some(ssrc), now);
                continue;
            }
            state.broken = false;
        }
        match out.try_send(MemberFrame { sender, vp8 }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                state.broken = true;
                asker.ask(Some(ssrc), now);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Who each slot is, for naming the pictures (set by the call task as members are trusted
/// and leave).
pub(crate) type VideoNames = Arc<Mutex<HashMap<Slot, String>>>;

/// One member's picture in the render thread.
struct View {
    name: String,
    decoder: Box<dyn VideoDecoder>,
    have_keyframe: bool,
    shown_size: (u32, u32),
}

/// Everything the group video render thread owns.
pub(crate) struct GroupVideoRender {
    pub frames: Receiver<MemberFrame>,
    pub names: VideoNames,
    pub new_decoder: Box<dyn Fn() -> Result<Box<dyn VideoDecoder>, VideoError> + Send>,
    pub needs: mpsc::UnboundedSender<Slot>,
    pub home: Arc<GroupVideoHome>,
    pub shared: Arc<SharedStats>,
    pub stop: Arc<AtomicBool>,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
}

impl GroupVideoRender {
    /// Runs until `stop`; a sink failure ends the thread with a notice.
    pub(crate) fn run(self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("video render stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
    }

    fn run_inner(&self) -> Result<(), String> {
        let mut picture = VideoFrame::black(2, 2).map_err(|e| e.to_string())?;
        let mut views: HashMap<Slot, View> = HashMap::new();
        while !self.stop.load(Relaxed) {
            let frame = match self.frames.recv_timeout(Duration::from_millis(50)) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let Some(name) = self
                .names
                .lock()
                .ok()
                .and_then(|n| n.get(&frame.sender).cloned())
            else {
                continue; // not (or no longer) a trusted member
            };
            // A slot given to another member starts over.
            if views.get(&frame.sender).is_none_or(|v| v.name != name) {
                let decoder = (self.new_decoder)().map_err(|e| e.to_string())?;
                views.insert(
                    frame.sender,
                    View {
                        name: name.clone(),
                        decoder,
                        have_keyframe: false,
                        shown_size: (0, 0),
                    },
                );
            }
            let Some(view) = views.get_mut(&frame.sender) else {
                continue;
            };
            let keyframe = frame.vp8.first().is_some_and(|b| b & 1 == 0);
            if !view.have_keyframe && !keyframe {
                let _ = self.needs.send(frame.sender);
                continue;
            }
            match view.decoder.decode_into(&frame.vp8, &mut picture) {
                Ok(true) if view.decoder.last_picture_damaged() => {
                    self.shared.video_decode_errors.fetch_add(1, Relaxed);
                    view.have_keyframe = false;
                    let _ = self.needs.send(frame.sender);
                    continue;
                }
                Ok(true) => view.have_keyframe = true,
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(member = %name, "video frame did not decode: {e}");
                    self.shared.video_decode_errors.fetch_add(1, Relaxed);
                    view.have_keyframe = false;
                    let _ = self.needs.send(frame.sender);
                    continue;
                }
            }
            picture.capture = Instant::now();
            self.home
                .write(&name, &picture)
                .map_err(|e| format!("video of {name}: {e}"))?;
            let s = &self.shared;
            s.video_frames_rendered.fetch_add(1, Relaxed);
            let (w, h) = picture.size();
            s.video_width.store(w, Relaxed);
            s.video_height.store(h, Relaxed);
            if (w, h) != view.shown_size {
                view.shown_size = (w, h);
                let _ = self.notices.send(MediaNotice::ParticipantVideoSize {
                    name: name.clone(),
                    width: w,
                    height: h,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{GroupOutput, JoinKind};
    use crate::sframe::CipherSuite;
    use crate::transport::ReceivedVideoFrame;

    const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

    fn slot(n: u8) -> Slot {
        Slot::new(n).unwrap()
    }

    /// `me` holding the keys of each of `senders` (given their bundles).
    fn keys_of(me: u8, senders: &mut [GroupKeys]) -> GroupKeys {
        let now = Instant::now();
        let mut mine = GroupKeys::new(SUITE, slot(me)).unwrap();
        for s in senders.iter_mut() {
            s.member_joined(now, slot(me), JoinKind::NewJoiner).unwrap();
            mine.member_joined(now, s.slot(), JoinKind::AlreadyPresent)
                .unwrap();
            while let Some(out) = s.poll_output() {
                if let GroupOutput::SendBundle { to_slot, body } = out
                    && to_slot == slot(me)
                {
                    mine.bundle_received(now, s.slot(), &body).unwrap();
                }
            }
        }
        mine
    }

    fn vp8(keyframe: bool, n: u8) -> Vec<u8> {
        let mut f = if keyframe {
            vec![0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
        } else {
            vec![0x51, 0x15, 0x00]
        };
        f.extend((0..100u8).map(|i| i.wrapping_mul(n)));
        f
    }

    fn on_slot(slot_ssrc: u32, sealed: &[u8]) -> SlotVideoFrame {
        SlotVideoFrame {
            slot_ssrc,
            frame: ReceivedVideoFrame {
                timestamp: 0,
                payload: bytes::Bytes::copy_from_slice(sealed),
                arrival: Instant::now(),
                after_loss: false,
            },
        }
    }

    fn seal(keys: &mut GroupKeys, frame: &[u8]) -> Vec<u8> {
        seal_video(keys.sender(KeyKind::Video), frame)
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn the_sender_is_the_frames_key_not_the_slot_it_came_on() {
        let alice = GroupKeys::new(SUITE, slot(1)).unwrap();
        let bob = GroupKeys::new(SUITE, slot(2)).unwrap();
        let mut senders = [alice, bob];
        let carol = Mutex::new(keys_of(3, &mut senders));
        let (counts, shared) = (VideoCounts::default(), SharedStats::default());
        // One SFU slot carries alice, then bob: each frame is its own sender's.
        for (index, who, n) in [(0, 1, 4), (1, 2, 5), (0, 1, 6)] {
            let frame = vp8(n == 4, n);
            let sealed = seal(&mut senders[index], &frame);
            match open_one(&carol, &counts, &shared, &on_slot(77, &sealed)).unwrap() {
                Opened::Frame { sender, vp8, .. } => {
                    assert_eq!(sender, slot(who));
                    assert_eq!(vp8, frame);
                }
                _ => panic!("frame {n} did not open"),
            }
        }
        assert_eq!(
            (counts.decrypted(slot(1)), counts.decrypted(slot(2))),
            (2, 1)
        );
        assert_eq!(shared.video_frames_decrypted.load(Relaxed), 3);
    }

    #[test]
    fn forged_audio_and_unknown_frames_are_counted_never_returned() {
        let alice = GroupKeys::new(SUITE, slot(1)).unwrap();
        let mut senders = [alice];
        let carol = Mutex::new(keys_of(3, &mut senders));
        let [mut alice] = senders;
        let (counts, shared) = (VideoCounts::default(), SharedStats::default());
        let open = |sealed: &[u8]| open_one(&carol, &counts, &shared, &on_slot(1, sealed));
        // A changed byte in the clear prefix (it is authenticated) or the ciphertext.
        for at in [7usize, 20] {
            let mut sealed = seal(&mut alice, &vp8(true, 9));
            sealed[at] ^= 1;
            assert!(
                matches!(open(&sealed).unwrap(), Opened::Refused),
                "byte {at}"
            );
        }
        // An audio frame of alice's in a video slot: not video.
        let audio = alice.seal(KeyKind::Audio, &vp8(false, 1)[3..]).unwrap();
        let mut wrapped = vp8(false, 1)[..3].to_vec();
        wrapped.extend_from_slice(&audio);
        assert!(matches!(open(&wrapped).unwrap(), Opened::Refused));
        // A stranger in slot 5, whose keys we never had.
        let mut stranger = GroupKeys::new(SUITE, slot(5)).unwrap();
        assert!(matches!(
            open(&seal(&mut stranger, &vp8(true, 2))).unwrap(),
            Opened::Refused
        ));
        // Too short for its own prefix.
        assert!(matches!(open(&[0x51, 0x15]).unwrap(), Opened::Refused));
        assert_eq!(shared.video_frames_decrypted.load(Relaxed), 0);
        // The forged ones count against alice; the others name no video key of anyone's.
        assert_eq!(counts.failures(slot(1)), 2);
        assert_eq!(shared.video_decrypt_failures.load(Relaxed), 4);
        assert_eq!(shared.unknown_key_frames.load(Relaxed), 1);
        // Alice's genuine frames still open.
        let frame = vp8(true, 3);
        assert!(matches!(
            open(&seal(&mut alice, &frame)).unwrap(),
            Opened::Frame { .. }
        ));
    }

    #[test]
    fn a_member_given_a_slot_that_was_left_starts_afresh() {
        let counts = VideoCounts::default();
        let mut senders = HashMap::new();
        let s = sender_state(&mut senders, &counts, slot(4));
        assert!(s.broken, "a new sender's first picture must be a keyframe");
        s.broken = false;
        s.last = Some((3, 900));
        assert_eq!(
            sender_state(&mut senders, &counts, slot(4)).last,
            Some((3, 900))
        );
        // Its member leaves; a new one in the slot starts at generation 0, counter 0: its
        // frames must not be refused as older than the last one's.
        counts.clear(slot(4));
        let s = sender_state(&mut senders, &counts, slot(4));
        assert_eq!(s.last, None);
        assert!(s.broken);
    }
}
