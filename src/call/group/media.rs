//! The media side of a group call: the capture thread seals our voice under our group key and
//! sends it to the SFU; the open task authenticates each forwarded frame under its sender's
//! key; the playback thread keeps one playout buffer per speaking member and mixes them.
//!
//! A member's place in its own stream comes from the authenticated SFrame counter, not from
//! the SFU's RTP labels: the SFU rewrites those per forwarded slot, and an SFU that reorders
//! or splices frames then only moves them to where their own counter puts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::group::{GroupError, GroupKeys, KeyKind, MAX_SLOT, OpenOutcome, OpenedFrame, Slot};
use crate::media::{
    AudioSink, AudioSource, DecodeKind, FrameDuration, OpusDecoder, OpusEncoder, dbfs,
};
use crate::playout::{AudioPlayout, Packet, PlayoutConfig};
use crate::sframe::SframeError;
use crate::transport::{SfuTransport, SlotFrame, rfc6464_level, seal};

use super::super::media_loop::{
    AudioHome, MediaNotice, capture_loop, count_sent, finish_or_hand_back, pace_until,
};
use super::super::participant_audio::SharedParticipantAudio;
use super::super::stats::{SharedStats, clock_base};

/// A frame this loud (dBFS) or louder counts as speech for the RFC 6464 voice flag and the
/// speaking indicator.
const SPEECH_DBFS: f32 = -45.0;

/// A member with nothing buffered and nothing new for this long stops being mixed; its
/// decoder is dropped and a new one starts with its next talkspurt (the SFU forwards only the
/// loudest few, so members come and go).
const IDLE: Duration = Duration::from_millis(400);

/// Inputs queued between the open task and the playback thread.
pub(crate) const PLAYBACK_QUEUE: usize = 256;

/// When each member's voice was last heard, per slot (ms since the stats clock base, 0 for
/// never). Atomics: the playback thread writes, the call task reads, no lock.
pub(crate) struct Speaking([AtomicU64; MAX_SLOT as usize + 1]);

impl Default for Speaking {
    fn default() -> Self {
        Speaking(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Speaking {
    fn heard(&self, slot: Slot, at: Instant) {
        let ms = at.saturating_duration_since(clock_base()).as_millis() as u64;
        self.0[usize::from(slot.get())].store(ms.max(1), Relaxed);
    }

    /// Whether `slot` was heard within `window` before `now`.
    pub(crate) fn is_speaking(&self, slot: Slot, now: Instant, window: Duration) -> bool {
        let last = self.0[usize::from(slot.get())].load(Relaxed);
        if last == 0 {
            return false;
        }
        let now_ms = now.saturating_duration_since(clock_base()).as_millis() as u64;
        now_ms.saturating_sub(last) <= window.as_millis() as u64
    }

    /// Forgets `slot` (it left; the slot may be reused).
    pub(crate) fn clear(&self, slot: Slot) {
        self.0[usize::from(slot.get())].store(0, Relaxed);
    }
}

/// Locks the group keys; a poisoned lock (a thread panicked holding it) is an error.
fn lock(keys: &Mutex<GroupKeys>) -> Result<std::sync::MutexGuard<'_, GroupKeys>, String> {
    keys.lock()
        .map_err(|_| "the group keys are unusable".to_owned())
}

/// Everything the capture thread owns.
pub(crate) struct GroupCapture {
    pub source: Box<dyn AudioSource>,
    pub encoder: OpusEncoder,
    /// Shared with the call task (membership) and the open task; held for one seal.
    pub keys: Arc<Mutex<GroupKeys>>,
    pub transport: Arc<SfuTransport>,
    pub runtime: tokio::runtime::Handle,
    pub shared: Arc<SharedStats>,
    pub stop: Arc<AtomicBool>,
    pub frame: FrameDuration,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    pub home: Arc<AudioHome>,
}

impl GroupCapture {
    /// Runs until `stop`; a source or codec failure ends the thread with a notice.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("capture stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
        self.home.put_source(self.source);
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let GroupCapture {
            source,
            encoder,
            keys,
            transport,
            runtime,
            shared,
            stop,
            frame,
            ..
        } = self;
        let mut sample: u64 = 0;
        capture_loop(
            source.as_mut(),
            encoder,
            shared,
            stop,
            *frame,
            |pcm, packet| {
                let level = dbfs(pcm);
                // The lock is held for one seal; the call task takes it only on membership
                // changes and key messages, the open task per received frame.
                let sealed = {
                    let mut keys = lock(keys)?;
                    seal(keys.sender(KeyKind::Audio), packet).map_err(|e| e.to_string())?
                };
                let voice = level >= SPEECH_DBFS;
                let send = transport.send_audio(&sealed, sample, rfc6464_level(level), voice);
                match runtime.block_on(send) {
                    Ok(()) => count_sent(shared, sealed.as_bytes().len()),
                    Err(e) => tracing::debug!("send failed: {e}"),
                }
                sample += frame.samples() as u64;
                Ok(())
            },
        )
    }
}

/// What the playback thread is told.
pub(crate) enum PlaybackInput {
    /// An opened audio frame of the member in `slot`.
    Packet {
        slot: Slot,
        packet: Packet,
        arrival: Instant,
    },
    /// The member in `slot` left: drop its audio now.
    Forget(Slot),
    /// The member in `slot` (its keys agreed) is called `name`.
    Named { slot: Slot, name: Arc<str> },
}

/// Turns an opened audio frame into the packet its sender's counter places: one frame per
/// counter step (the sender seals every frame, silence included).
fn packet_of(opened: OpenedFrame, samples_per_frame: u64) -> (Slot, Packet) {
    let ctr = opened.ctr;
    let packet = Packet {
        // RTP-style labels wrap by design.
        seq: ctr as u16,
        timestamp: ctr.wrapping_mul(samples_per_frame) as u32,
        payload: opened.payload,
    };
    (opened.slot, packet)
}

/// Opens forwarded frames and hands the audio to the playback thread, until the transport's
/// frame stream ends. Each outcome is counted: authenticated, failed, replayed, or waiting
/// for / never given its key.
pub(crate) async fn open_frames(
    mut frames: mpsc::Receiver<SlotFrame>,
    keys: Arc<Mutex<GroupKeys>>,
    packets: SyncSender<PlaybackInput>,
    shared: Arc<SharedStats>,
    samples_per_frame: u64,
    video_counts: Arc<super::video::VideoCounts>,
) {
    let mut opened: Vec<OpenedFrame> = Vec::with_capacity(4);
    while let Some(frame) = frames.recv().await {
        shared.frames_received.fetch_add(1, Relaxed);
        shared
            .bytes_received
            .fetch_add(frame.payload.len() as u64, Relaxed);
        {
            let Ok(mut keys) = lock(&keys) else { return };
            match keys.open(frame.arrival, &frame.payload) {
                Ok(OpenOutcome::Opened(o)) => opened.push(o),
                Ok(OpenOutcome::Held) => {}
                Err(e) => count_refusal(&shared, &e),
            }
            while let Some(o) = keys.poll_released() {
                if o.kind == KeyKind::Video {
                    // A video frame that waited for its key: decrypted, but its clear prefix
                    // is gone and its picture's successors were skipped; it is dropped.
                    video_counts.count_decrypted(o.slot);
                    shared.video_frames_decrypted.fetch_add(1, Relaxed);
                    continue;
                }
                opened.push(o);
            }
        }
        for o in opened.drain(..) {
            if o.kind != KeyKind::Audio {
                continue;
            }
            shared.frames_decrypted.fetch_add(1, Relaxed);
            let (slot, packet) = packet_of(o, samples_per_frame);
            let input = PlaybackInput::Packet {
                slot,
                packet,
                arrival: frame.arrival,
            };
            match packets.try_send(input) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn count_refusal(shared: &SharedStats, e: &GroupError) {
    tracing::debug!("refused a forwarded frame: {e}");
    let counter = match e {
        GroupError::Sframe(SframeError::Replay { .. } | SframeError::TooOld { .. }) => {
            &shared.replays_rejected
        }
        GroupError::UnknownMember(_) | GroupError::UnknownKey { .. } => &shared.unknown_key_frames,
        _ => &shared.decrypt_failures,
    };
    counter.fetch_add(1, Relaxed);
}

/// One member's audio in the playback thread.
struct Voice {
    playout: AudioPlayout<OpusDecoder>,
    last_arrival: Instant,
}

/// Totals of members no longer mixed, so the call's figures never go backwards.
#[derive(Default, Clone, Copy)]
struct Totals {
    played: u64,
    lost: u64,
    concealed: u64,
    fec: u64,
}

/// Everything the playback thread owns.
pub(crate) struct GroupPlayback {
    pub sink: Box<dyn AudioSink>,
    pub inputs: Receiver<PlaybackInput>,
    pub playout: PlayoutConfig,
    pub shared: Arc<SharedStats>,
    pub speaking: Arc<Speaking>,
    pub stop: Arc<AtomicBool>,
    pub frame: FrameDuration,
    pub setup_start: Instant,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    pub home: Arc<AudioHome>,
    pub handover: Arc<AtomicBool>,
    /// The application's receiver of each member's voice before mixing, if any.
    pub participants: Option<SharedParticipantAudio>,
}

impl GroupPlayback {
    /// Runs until `stop`, then finishes the sink or hands it back for the call's next mode.
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        let result = finish_or_hand_back(self.sink, &self.home, &self.handover, result);
        if let Err(e) = result {
            tracing::error!("playback stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let samples = self.frame.samples();
        let mut mix = vec![0f32; samples];
        let mut one = vec![0f32; samples];
        let live = self.sink.is_live();
        let epoch = Instant::now();
        let mut frames: u32 = 0;
        let mut first = true;
        let mut voices: HashMap<Slot, Voice> = HashMap::new();
        let mut names: HashMap<Slot, Arc<str>> = HashMap::new();
        let mut retired = Totals::default();
        while !self.stop.load(Relaxed) {
            while let Ok(input) = self.inputs.try_recv() {
                match input {
                    PlaybackInput::Packet {
                        slot,
                        packet,
                        arrival,
                    } => {
                        let voice = match voices.entry(slot) {
                            std::collections::hash_map::Entry::Occupied(v) => v.into_mut(),
                            std::collections::hash_map::Entry::Vacant(v) => {
                                let decoder =
                                    OpusDecoder::new(self.frame).map_err(|e| e.to_string())?;
                                v.insert(Voice {
                                    playout: AudioPlayout::new(self.playout, decoder),
                                    last_arrival: arrival,
                                })
                            }
                        };
                        voice.last_arrival = arrival;
                        voice
                            .playout
                            .insert(packet, arrival.saturating_duration_since(epoch));
                    }
                    PlaybackInput::Forget(slot) => {
                        if let Some(v) = voices.remove(&slot) {
                            retire(&mut retired, &v);
                        }
                        names.remove(&slot);
                    }
                    PlaybackInput::Named { slot, name } => {
                        names.insert(slot, name);
                    }
                }
            }
            let now = Instant::now();
            mix.fill(0.0);
            let mut any_real = false;
            voices.retain(|_, v| {
                let idle = now.saturating_duration_since(v.last_arrival) > IDLE
                    && v.playout.buffer().is_empty();
                if idle {
                    retire(&mut retired, v);
                }
                !idle
            });
            // One uncontended lock per frame (only this thread plays a group call), held
            // while the voices are handed over.
            let mut participants = self.participants.as_ref().and_then(|p| p.lock().ok());
            for (slot, voice) in &mut voices {
                let kind = voice.playout.next_frame(now - epoch, &mut one);
                let real = matches!(kind, DecodeKind::Normal | DecodeKind::Fec);
                any_real |= kind == DecodeKind::Normal;
                if real && dbfs(&one) >= SPEECH_DBFS {
                    self.speaking.heard(*slot, now);
                }
                if let (Some(p), Some(name)) = (participants.as_mut(), names.get(slot)) {
                    p.frame(name, &one);
                }
                for (m, s) in mix.iter_mut().zip(&one) {
                    *m += *s;
                }
            }
            drop(participants);
            // Several loud voices can sum past full scale: clip rather than wrap.
            for m in &mut mix {
                *m = m.clamp(-1.0, 1.0);
            }
            if first && any_real {
                first = false;
                let setup = now.saturating_duration_since(self.setup_start);
                SharedStats::set_duration(&self.shared.setup_us, setup);
                let _ = self.notices.send(MediaNotice::FirstAudio(setup));
            }
            self.publish(&voices, retired);
            self.sink.write_frame(&mix).map_err(|e| e.to_string())?;
            if !live {
                frames = frames.wrapping_add(1);
                pace_until(epoch + self.frame.duration() * frames, &self.stop);
            }
        }
        Ok(())
    }

    fn publish(&self, voices: &HashMap<Slot, Voice>, retired: Totals) {
        let mut t = retired;
        let mut jitter = Duration::ZERO;
        let mut delay = Duration::ZERO;
        for v in voices.values() {
            let s = v.playout.stats();
            t.played += s.played;
            t.lost += s.lost;
            t.concealed += s.concealed;
            t.fec += s.fec_recovered;
            jitter = jitter.max(s.jitter);
            delay = delay.max(s.delay);
        }
        let sh = &self.shared;
        sh.frames_played.store(t.played, Relaxed);
        sh.frames_lost.store(t.lost, Relaxed);
        sh.frames_concealed.store(t.concealed, Relaxed);
        sh.fec_recovered.store(t.fec, Relaxed);
        SharedStats::set_duration(&sh.jitter_us, jitter);
        SharedStats::set_duration(&sh.playout_delay_us, delay);
    }
}

fn retire(totals: &mut Totals, voice: &Voice) {
    let s = voice.playout.stats();
    totals.played += s.played;
    totals.lost += s.lost;
    totals.concealed += s.concealed;
    totals.fec += s.fec_recovered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{GroupOutput, JoinKind};
    use crate::sframe::CipherSuite;

    /// Two members' keys, exchanged.
    fn pair() -> (GroupKeys, GroupKeys) {
        let suite = CipherSuite::AesGcm128Sha256;
        let (a, b) = (Slot::new(1).unwrap(), Slot::new(2).unwrap());
        let mut alice = GroupKeys::new(suite, a).unwrap();
        let mut bob = GroupKeys::new(suite, b).unwrap();
        let now = Instant::now();
        alice
            .member_joined(now, b, JoinKind::AlreadyPresent)
            .unwrap();
        bob.member_joined(now, a, JoinKind::NewJoiner).unwrap();
        while let Some(out) = alice.poll_output() {
            if let GroupOutput::SendBundle { body, .. } = out {
                bob.bundle_received(now, a, &body).unwrap();
            }
        }
        (alice, bob)
    }

    #[test]
    fn a_members_frames_are_placed_by_their_counter_across_key_changes() {
        let (mut alice, mut bob) = pair();
        let now = Instant::now();
        let mut labels = Vec::new();
        for n in 0..5u8 {
            if n == 3 {
                // A join ratchets alice's key: the counter goes on.
                alice
                    .member_joined(now, Slot::new(9).unwrap(), JoinKind::NewJoiner)
                    .unwrap();
            }
            let frame = alice.seal(KeyKind::Audio, &[n]).unwrap();
            let OpenOutcome::Opened(o) = bob.open(now, &frame).unwrap() else {
                panic!("frame {n} did not open");
            };
            let (slot, p) = packet_of(o, 960);
            assert_eq!(slot.get(), 1);
            assert_eq!(p.payload, [n]);
            labels.push((p.seq, p.timestamp));
        }
        let expected: Vec<(u16, u32)> = (0..5).map(|n| (n as u16, n * 960)).collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let (mut alice, mut bob) = pair();
        let shared = SharedStats::default();
        let now = Instant::now();
        let frame = alice.seal(KeyKind::Audio, b"voice").unwrap();
        assert!(bob.open(now, &frame).is_ok());
        count_refusal(&shared, &bob.open(now, &frame).unwrap_err());
        // A forged frame under a counter not seen yet: an authentication failure.
        let mut forged = alice.seal(KeyKind::Audio, b"voice").unwrap();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        if let Err(e) = bob.open(now, &forged) {
            count_refusal(&shared, &e);
        }
        let stranger = GroupKeys::new(CipherSuite::AesGcm128Sha256, Slot::new(5).unwrap())
            .unwrap()
            .seal(KeyKind::Audio, b"x")
            .unwrap();
        count_refusal(&shared, &bob.open(now, &stranger).unwrap_err());
        assert_eq!(shared.replays_rejected.load(Relaxed), 1);
        assert_eq!(shared.decrypt_failures.load(Relaxed), 1);
        assert_eq!(shared.unknown_key_frames.load(Relaxed), 1);
    }
}
