//! The media threads of a call: capture (source, Opus, SFrame, transport) and playback
//! (playout buffer, Opus, sink), plus the async decrypt step between transport and playout.
//!
//! Device reads and writes block, so each direction has its own OS thread; sources and sinks
//! that are not live are paced here at one frame per frame duration, on an absolute schedule
//! so timing errors do not accumulate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::handshake::{HandshakeError, MediaReceiver, MediaSender};
use crate::media::{AudioSink, AudioSource, FrameDuration, OpusDecoder, OpusEncoder};
use crate::playout::{AudioPlayout, Packet};
use crate::sframe::SframeError;
use crate::transport::{FrameOrder, MediaTransport, ReceivedFrame, seal};

use super::stats::SharedStats;

/// Largest Opus packet we produce (well above what 20 ms at 510 kbit/s needs).
const MAX_PACKET: usize = 1500;

/// Packets queued between the decrypt step and the playback thread; beyond it they are
/// dropped (the playback thread stalled, and old audio is worthless).
pub(crate) const PLAYBACK_QUEUE: usize = 64;

/// The application's audio source and sink while no media thread holds them. Each thread puts
/// its half back when it stops, so a call that changes mode (two-party to group and back)
/// hands the same devices or files to the next threads.
#[derive(Default)]
pub(crate) struct AudioHome {
    source: std::sync::Mutex<Option<Box<dyn AudioSource>>>,
    sink: std::sync::Mutex<Option<Box<dyn AudioSink>>>,
}

impl AudioHome {
    /// A home holding `source` and `sink`.
    pub(crate) fn new(source: Box<dyn AudioSource>, sink: Box<dyn AudioSink>) -> Self {
        AudioHome {
            source: std::sync::Mutex::new(Some(source)),
            sink: std::sync::Mutex::new(Some(sink)),
        }
    }

    /// Both halves, or `None` (then nothing is taken) while a thread still holds one.
    pub(crate) fn take(&self) -> Option<(Box<dyn AudioSource>, Box<dyn AudioSink>)> {
        let mut source = self.source.lock().ok()?;
        let mut sink = self.sink.lock().ok()?;
        if source.is_none() || sink.is_none() {
            return None;
        }
        Some((source.take()?, sink.take()?))
    }

    pub(crate) fn put_source(&self, source: Box<dyn AudioSource>) {
        if let Ok(mut s) = self.source.lock() {
            *s = Some(source);
        }
    }

    pub(crate) fn put_sink(&self, sink: Box<dyn AudioSink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(sink);
        }
    }
}

/// Something a media thread tells the call task.
#[derive(Debug)]
pub(crate) enum MediaNotice {
    /// The first received frame was played.
    FirstAudio(Duration),
    /// The peer's video is shown at a new size.
    VideoSize(u32, u32),
    /// A group member's video is shown at a new size.
    ParticipantVideoSize {
        name: String,
        width: u32,
        height: u32,
    },
    /// A thread stopped because of an error.
    Failed(String),
}

/// At a playback thread's end: the sink goes back home for the call's next mode, or is
/// finished (a WAV file gets its header) when the call ends.
pub(crate) fn finish_or_hand_back(
    mut sink: Box<dyn AudioSink>,
    home: &AudioHome,
    handover: &AtomicBool,
    result: Result<(), String>,
) -> Result<(), String> {
    if handover.load(Relaxed) {
        home.put_sink(sink);
        return result;
    }
    let finished = sink.finish().map_err(|e| e.to_string());
    result.and(finished)
}

/// Sleeps until `deadline` unless `stop` is raised first (checked every few ms).
pub(crate) fn pace_until(deadline: Instant, stop: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Relaxed) {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

/// Everything the capture thread owns.
pub(crate) struct Capture {
    pub source: Box<dyn AudioSource>,
    pub encoder: OpusEncoder,
    pub sender: MediaSender,
    pub transport: Arc<MediaTransport>,
    pub runtime: tokio::runtime::Handle,
    pub shared: Arc<SharedStats>,
    pub stop: Arc<AtomicBool>,
    pub frame: FrameDuration,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    /// Where the source goes back when the thread stops.
    pub home: Arc<AudioHome>,
}

impl Capture {
    /// Runs until `stop`; a source or codec failure ends the thread with a notice.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("capture stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
        self.home.put_source(self.source);
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let Capture {
            source,
            encoder,
            sender,
            transport,
            runtime,
            shared,
            stop,
            frame,
            ..
        } = self;
        capture_loop(
            source.as_mut(),
            encoder,
            shared,
            stop,
            *frame,
            |_, packet| {
                sender.poll(Instant::now()).map_err(|e| e.to_string())?;
                let sealed = seal(sender.context(), packet).map_err(|e| e.to_string())?;
                match runtime.block_on(transport.send(&sealed, frame.duration())) {
                    Ok(()) => count_sent(shared, sealed.as_bytes().len()),
                    // The path may come back (ICE restart, reconnect): the call task decides.
                    Err(e) => tracing::debug!("send failed: {e}"),
                }
                Ok(())
            },
        )
    }
}

/// Counts one frame handed to the transport.
pub(crate) fn count_sent(shared: &SharedStats, bytes: usize) {
    shared.frames_sent.fetch_add(1, Relaxed);
    shared.bytes_sent.fetch_add(bytes as u64, Relaxed);
}

/// The capture loop both call modes share, until `stop`: reads `source` (silence once it
/// has ended or while muted), encodes, and hands `send` each frame's samples and Opus packet;
/// a source that is not live is paced at one frame per frame duration on an absolute
/// schedule. A source, codec or `send` failure ends it.
pub(crate) fn capture_loop(
    source: &mut dyn AudioSource,
    encoder: &mut OpusEncoder,
    shared: &SharedStats,
    stop: &AtomicBool,
    frame: FrameDuration,
    mut send: impl FnMut(&[f32], &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut pcm = vec![0f32; frame.samples()];
    let mut packet = vec![0u8; MAX_PACKET];
    let live = source.is_live();
    let start = Instant::now();
    let mut ended = false;
    let mut frames: u32 = 0;
    while !stop.load(Relaxed) {
        if !ended && !source.read_frame(&mut pcm).map_err(|e| e.to_string())? {
            // A file or finite tone ran out: keep the call going with silence.
            tracing::info!("audio source ended; sending silence");
            ended = true;
        }
        if ended || shared.muted.load(Relaxed) {
            pcm.fill(0.0);
        }
        let len = encoder
            .encode(&pcm, &mut packet)
            .map_err(|e| e.to_string())?;
        send(&pcm, &packet[..len])?;
        if !live || ended {
            frames = frames.wrapping_add(1);
            pace_until(start + frame.duration() * frames, stop);
        }
    }
    Ok(())
}

/// Everything the playback thread owns.
pub(crate) struct Playback {
    pub sink: Box<dyn AudioSink>,
    pub playout: AudioPlayout<OpusDecoder>,
    pub packets: Receiver<(Packet, Instant)>,
    pub shared: Arc<SharedStats>,
    pub stop: Arc<AtomicBool>,
    pub frame: FrameDuration,
    /// When this side could start the call (setup time is measured from here).
    pub setup_start: Instant,
    pub notices: mpsc::UnboundedSender<MediaNotice>,
    /// Where the sink goes back when the call changes mode (`handover` raised before
    /// `stop`); otherwise it is finished.
    pub home: Arc<AudioHome>,
    pub handover: Arc<AtomicBool>,
}

impl Playback {
    /// Runs until `stop`, then finishes the sink (e.g. writes the WAV header), or hands it
    /// back for the call's next mode.
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        let result = finish_or_hand_back(self.sink, &self.home, &self.handover, result);
        if let Err(e) = result {
            tracing::error!("playback stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let mut pcm = vec![0f32; self.frame.samples()];
        let live = self.sink.is_live();
        let epoch = Instant::now();
        let mut frames: u32 = 0;
        let mut first = true;
        while !self.stop.load(Relaxed) {
            while let Ok((packet, arrival)) = self.packets.try_recv() {
                self.playout
                    .insert(packet, arrival.saturating_duration_since(epoch));
            }
            let now = Instant::now();
            let kind = self.playout.next_frame(now - epoch, &mut pcm);
            if matches!(
                kind,
                crate::media::DecodeKind::Normal | crate::media::DecodeKind::Fec
            ) && let Some(ts) = self.playout.last_played()
            {
                // Where the audio timeline is now: lip sync lines video up against it.
                self.shared.set_audio_played(ts, now);
            }
            if first && kind == crate::media::DecodeKind::Normal {
                first = false;
                let setup = now.saturating_duration_since(self.setup_start);
                SharedStats::set_duration(&self.shared.setup_us, setup);
                let _ = self.notices.send(MediaNotice::FirstAudio(setup));
            }
            self.publish();
            self.sink.write_frame(&pcm).map_err(|e| e.to_string())?;
            if !live {
                frames = frames.wrapping_add(1);
                pace_until(epoch + self.frame.duration() * frames, &self.stop);
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let s = self.playout.stats();
        let sh = &self.shared;
        sh.frames_played.store(s.played, Relaxed);
        sh.frames_lost.store(s.lost, Relaxed);
        sh.frames_concealed.store(s.concealed, Relaxed);
        sh.fec_recovered.store(s.fec_recovered, Relaxed);
        SharedStats::set_duration(&sh.jitter_us, s.jitter);
        SharedStats::set_duration(&sh.playout_delay_us, s.delay);
    }
}

/// The receive path between the transport and the playout queue: authenticate and decrypt
/// (replay window included), then check the RTP position against the authenticated counter.
pub(crate) struct FrameOpener {
    receiver: MediaReceiver,
    order: FrameOrder,
    shared: Arc<SharedStats>,
}

impl FrameOpener {
    pub(crate) fn new(receiver: MediaReceiver, shared: Arc<SharedStats>) -> Self {
        FrameOpener {
            receiver,
            order: FrameOrder::new(),
            shared,
        }
    }

    /// The packet to play from `frame`, or `None` if it is refused (counted by reason).
    pub(crate) fn open(&mut self, frame: &ReceivedFrame) -> Option<Packet> {
        let shared = &self.shared;
        shared.frames_received.fetch_add(1, Relaxed);
        shared
            .bytes_received
            .fetch_add(frame.payload.len() as u64, Relaxed);
        // The transport's buffer is shared; decrypting in place needs our own copy.
        let mut buf = frame.payload.to_vec();
        let base = buf.as_ptr() as usize;
        let (span, counter) = match self.receiver.decrypt_in_place(&[], &mut buf, frame.arrival) {
            Ok(d) => (
                (d.payload.as_ptr() as usize - base, d.payload.len()),
                d.header.ctr,
            ),
            Err(HandshakeError::Sframe(
                SframeError::Replay { .. } | SframeError::TooOld { .. },
            )) => {
                shared.replays_rejected.fetch_add(1, Relaxed);
                return None;
            }
            Err(e) => {
                tracing::debug!("dropped a frame that failed decryption: {e}");
                shared.decrypt_failures.fetch_add(1, Relaxed);
                return None;
            }
        };
        shared.frames_decrypted.fetch_add(1, Relaxed);
        // Genuine, but a relay may have moved it: play it only where its counter puts it.
        if let Err(e) = self.order.admit(counter, frame.timestamp, frame.seq) {
            tracing::debug!(seq = frame.seq, timestamp = frame.timestamp, "dropped: {e}");
            shared.reorder_rejected.fetch_add(1, Relaxed);
            return None;
        }
        buf.copy_within(span.0..span.0 + span.1, 0);
        buf.truncate(span.1);
        Some(Packet {
            seq: frame.seq,
            timestamp: frame.timestamp,
            payload: buf,
        })
    }
}

/// Decrypts frames from the transport and hands the Opus packets to the playback thread.
/// Runs as a task until the transport's frame stream ends.
pub(crate) async fn decrypt_frames(
    mut frames: mpsc::Receiver<ReceivedFrame>,
    receiver: MediaReceiver,
    packets: SyncSender<(Packet, Instant)>,
    shared: Arc<SharedStats>,
) {
    let mut opener = FrameOpener::new(receiver, shared);
    while let Some(frame) = frames.recv().await {
        let Some(packet) = opener.open(&frame) else {
            continue;
        };
        match packets.try_send((packet, frame.arrival)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{FrameOpener, SharedStats};
    use crate::handshake::{Direction, DirectionKey, MediaReceiver, MediaSender, RotationConfig};
    use crate::playout::{Packet, Playout, PlayoutBuffer, PlayoutConfig};
    use crate::sframe::CipherSuite;
    use crate::transport::{ReceivedFrame, seal};

    const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
    const FRAMES: u32 = 30;
    const TICKS: u32 = 960;
    // Both wrap during the test.
    const SEQ0: u16 = u16::MAX - 4;
    const TS0: u32 = u32::MAX - 5 * TICKS;

    fn keys() -> (MediaSender, MediaReceiver) {
        let base = [9u8; 32];
        let dir = Direction::ResponderToInitiator;
        let rot = RotationConfig::default();
        let tx = MediaSender::new(
            SUITE,
            DirectionKey::from_bytes(base, dir),
            rot,
            Instant::now(),
        );
        let rx = MediaReceiver::new(SUITE, DirectionKey::from_bytes(base, dir), rot);
        (tx.unwrap(), rx.unwrap())
    }

    /// Genuine sealed frames; frame `i` carries `i` as its payload.
    fn genuine() -> Vec<Bytes> {
        let (mut tx, _) = keys();
        (0..FRAMES)
            .map(|i| {
                let sealed = seal(tx.context(), &i.to_be_bytes()).unwrap();
                Bytes::copy_from_slice(sealed.as_bytes())
            })
            .collect()
    }

    /// Frame `frame` labelled with the RTP sequence number and timestamp of slot `slot`.
    fn labelled(frames: &[Bytes], frame: u32, slot: u32) -> ReceivedFrame {
        ReceivedFrame {
            seq: SEQ0.wrapping_add(slot as u16),
            timestamp: TS0.wrapping_add(slot * TICKS),
            payload: frames[frame as usize].clone(),
            arrival: Instant::now(),
        }
    }

    /// A relay that terminates SRTP and rewrites RTP labels: swaps frames 5 and 6, holds frame
    /// 3 back and splices it into slot 12 (in place of frame 12), holds 15 and 16 back until
    /// after 17 and then delivers them with their labels exchanged.
    fn splicing_relay(frames: &[Bytes]) -> Vec<ReceivedFrame> {
        let mut out = Vec::new();
        for slot in 0..FRAMES {
            match slot {
                3 | 15 | 16 => {}
                5 => out.push(labelled(frames, 6, 5)),
                6 => out.push(labelled(frames, 5, 6)),
                12 => out.push(labelled(frames, 3, 12)),
                17 => {
                    out.push(labelled(frames, 17, 17));
                    out.push(labelled(frames, 16, 15));
                    out.push(labelled(frames, 15, 16));
                }
                _ => out.push(labelled(frames, slot, slot)),
            }
        }
        out
    }

    /// What the playout buffer plays, in order: the frame number each played packet carries.
    fn played(packets: Vec<Packet>) -> Vec<u32> {
        let mut buffer = PlayoutBuffer::new(PlayoutConfig {
            max_delay: Duration::from_secs(10),
            compress_after: u32::MAX,
            ..PlayoutConfig::default()
        });
        for p in packets {
            buffer.insert(p, Duration::ZERO);
        }
        let mut order = Vec::new();
        let mut now = Duration::ZERO;
        while !buffer.is_empty() {
            now += Duration::from_millis(20);
            if let Playout::Packet(p) = buffer.pop(now) {
                order.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
        }
        order
    }

    #[test]
    fn a_splicing_relay_cannot_reorder_genuine_frames() {
        let frames = genuine();
        let relayed = splicing_relay(&frames);

        // Without the order check (decryption alone, as before): every frame authenticates,
        // and the relay's order is what plays.
        let (_, mut rx) = keys();
        let unguarded: Vec<Packet> = relayed
            .iter()
            .map(|f| {
                let mut buf = f.payload.to_vec();
                let d = rx.decrypt_in_place(&[], &mut buf, f.arrival).unwrap();
                Packet {
                    seq: f.seq,
                    timestamp: f.timestamp,
                    payload: d.payload.to_vec(),
                }
            })
            .collect();
        let mut relay_order: Vec<u32> = (0..FRAMES).filter(|i| ![3, 12].contains(i)).collect();
        relay_order.swap(4, 5); // 6 before 5
        relay_order.insert(11, 3); // 3 in slot 12
        relay_order.swap(14, 15); // 16 before 15
        assert_eq!(played(unguarded), relay_order);

        // With it: each moved frame that contradicts its counter is refused and counted, and
        // what plays follows the counter.
        let (_, rx) = keys();
        let shared = Arc::new(SharedStats::default());
        let mut opener = FrameOpener::new(rx, Arc::clone(&shared));
        let accepted: Vec<Packet> = relayed.iter().filter_map(|f| opener.open(f)).collect();
        let expected: Vec<u32> = (0..FRAMES)
            .filter(|i| ![3, 5, 12, 15].contains(i))
            .collect();
        assert_eq!(played(accepted), expected);
        assert_eq!(shared.frames_decrypted.load(Relaxed), relayed.len() as u64);
        assert_eq!(shared.reorder_rejected.load(Relaxed), 3);
        assert_eq!(shared.replays_rejected.load(Relaxed), 0);
        assert_eq!(shared.decrypt_failures.load(Relaxed), 0);
        assert_eq!(shared.snapshot().reorder_rejected, 3);
    }

    #[test]
    fn genuine_reordering_on_the_network_still_plays_in_order() {
        let frames = genuine();
        let mut order: Vec<u32> = (0..FRAMES).collect();
        order.swap(4, 5);
        order.swap(10, 13);
        let (_, rx) = keys();
        let shared = Arc::new(SharedStats::default());
        let mut opener = FrameOpener::new(rx, Arc::clone(&shared));
        let accepted: Vec<Packet> = order
            .iter()
            .filter_map(|&i| opener.open(&labelled(&frames, i, i)))
            .collect();
        assert_eq!(played(accepted), (0..FRAMES).collect::<Vec<_>>());
        assert_eq!(shared.reorder_rejected.load(Relaxed), 0);
    }
}
