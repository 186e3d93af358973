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
use crate::transport::{MediaTransport, ReceivedFrame, seal};

use super::stats::SharedStats;

/// Largest Opus packet we produce (well above what 20 ms at 510 kbit/s needs).
const MAX_PACKET: usize = 1500;

/// Packets queued between the decrypt step and the playback thread; beyond it they are
/// dropped (the playback thread stalled, and old audio is worthless).
pub(crate) const PLAYBACK_QUEUE: usize = 64;

/// Something a media thread tells the call task.
#[derive(Debug)]
pub(crate) enum MediaNotice {
    /// The first received frame was played.
    FirstAudio(Duration),
    /// A thread stopped because of an error.
    Failed(String),
}

/// Sleeps until `deadline` unless `stop` is raised first (checked every few ms).
fn pace_until(deadline: Instant, stop: &AtomicBool) {
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
}

impl Capture {
    /// Runs until `stop`; a source or codec failure ends the thread with a notice.
    pub(crate) fn run(mut self) {
        if let Err(e) = self.run_inner() {
            tracing::error!("capture stopped: {e}");
            let _ = self.notices.send(MediaNotice::Failed(e));
        }
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let mut pcm = vec![0f32; self.frame.samples()];
        let mut packet = vec![0u8; MAX_PACKET];
        let live = self.source.is_live();
        let start = Instant::now();
        let mut ended = false;
        let mut frames: u32 = 0;
        while !self.stop.load(Relaxed) {
            if !ended
                && !self
                    .source
                    .read_frame(&mut pcm)
                    .map_err(|e| e.to_string())?
            {
                // A file or finite tone ran out: keep the call going with silence.
                tracing::info!("audio source ended; sending silence");
                ended = true;
            }
            if ended || self.shared.muted.load(Relaxed) {
                pcm.fill(0.0);
            }
            let len = self
                .encoder
                .encode(&pcm, &mut packet)
                .map_err(|e| e.to_string())?;
            let now = Instant::now();
            self.sender.poll(now).map_err(|e| e.to_string())?;
            let sealed = seal(self.sender.context(), &packet[..len]).map_err(|e| e.to_string())?;
            match self
                .runtime
                .block_on(self.transport.send(&sealed, self.frame.duration()))
            {
                Ok(()) => {
                    self.shared.frames_sent.fetch_add(1, Relaxed);
                    self.shared
                        .bytes_sent
                        .fetch_add(sealed.as_bytes().len() as u64, Relaxed);
                }
                // The path may come back (ICE restart, reconnect): the call task decides.
                Err(e) => tracing::debug!("send failed: {e}"),
            }
            if !live || ended {
                frames = frames.wrapping_add(1);
                pace_until(start + self.frame.duration() * frames, &self.stop);
            }
        }
        Ok(())
    }
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
}

impl Playback {
    /// Runs until `stop`, then finishes the sink (e.g. writes the WAV header).
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        let finished = self.sink.finish().map_err(|e| e.to_string());
        if let Err(e) = result.and(finished) {
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

/// Decrypts frames from the transport and hands the Opus packets to the playback thread.
/// Runs as a task until the transport's frame stream ends.
pub(crate) async fn decrypt_frames(
    mut frames: mpsc::Receiver<ReceivedFrame>,
    mut receiver: MediaReceiver,
    packets: SyncSender<(Packet, Instant)>,
    shared: Arc<SharedStats>,
) {
    while let Some(frame) = frames.recv().await {
        shared.frames_received.fetch_add(1, Relaxed);
        shared
            .bytes_received
            .fetch_add(frame.payload.len() as u64, Relaxed);
        // The transport's buffer is shared; decrypting in place needs our own copy.
        let mut buf = frame.payload.to_vec();
        let base = buf.as_ptr() as usize;
        let span = match receiver.decrypt_in_place(&[], &mut buf, frame.arrival) {
            Ok(d) => (d.payload.as_ptr() as usize - base, d.payload.len()),
            Err(HandshakeError::Sframe(
                SframeError::Replay { .. } | SframeError::TooOld { .. },
            )) => {
                shared.replays_rejected.fetch_add(1, Relaxed);
                continue;
            }
            Err(e) => {
                tracing::debug!("dropped a frame that failed decryption: {e}");
                shared.decrypt_failures.fetch_add(1, Relaxed);
                continue;
            }
        };
        shared.frames_decrypted.fetch_add(1, Relaxed);
        buf.copy_within(span.0..span.0 + span.1, 0);
        buf.truncate(span.1);
        let packet = Packet {
            seq: frame.seq,
            timestamp: frame.timestamp,
            payload: buf,
        };
        match packets.try_send((packet, frame.arrival)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
}
