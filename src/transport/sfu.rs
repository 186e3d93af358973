//! One member's connection to its room's SFU, for group calls.
//!
//! The offer follows the SFU's contract (`signaling/PROTOCOL.md`, "SFU"): the first audio
//! m-line sends our voice and receives speaker slot 1, each further one receives another slot.
//! Every packet we send carries the RFC 6464 audio level, the one thing the SFU reads to pick
//! the loudest speakers; the payload is an SFrame frame it cannot open. What arrives on a slot
//! is whoever the SFU put there: the sender is the authenticated KID inside the frame, never
//! the SSRC.
//!
//! Video (when asked for) follows the same contract: the first video m-line sends our VP8
//! frames (sealed, in the layout of [`super::seal_video`]) when we publish, and each video
//! m-line we receive on is a slot the SFU fills with another publisher's frames. Keyframe
//! requests go both ways: a PLI on a slot reaches the member the SFU put there, and the
//! SFU's PLI on our track asks our encoder for one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

use super::video::KeyframeRequests;
use super::{
    FrameAssembler, IceServer, MAX_VIDEO_RTP_PAYLOAD, ReceivedVideoFrame, SealedFrame,
    TransportError, TransportState, Vp8Packetizer, ice_pacing, ice_policy, opus_codec,
    pump_keyframe_requests, random_ssrc, rtc_err, rtc_ice_servers, set_remote_answer, vp8_codec,
    wait_connected,
};

/// The RFC 6464 header extension (client-to-mixer audio level).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Most speaker slots a member asks the SFU for.
pub const MAX_AUDIO_SLOTS: usize = 16;

/// Most video slots a member asks the SFU for.
pub const MAX_VIDEO_SLOTS: usize = 15;

/// Received frames queued for the application at most (about a second of three speakers).
const FRAME_QUEUE: usize = 256;

/// Whole video frames queued for the application at most (about a second of three senders).
const VIDEO_FRAME_QUEUE: usize = 96;

/// VP8's payload type in our offer (the SFU answers with ours).
const VP8_PAYLOAD_TYPE: u8 = 96;

/// The RFC 6464 level of audio at `dbov` (0 is the loudest, 127 silence).
pub fn rfc6464_level(dbov: f32) -> u8 {
    if dbov.is_nan() {
        return 127;
    }
    // The clamp keeps the value in 0..=127, so the cast is exact.
    (-dbov).round().clamp(0.0, 127.0) as u8
}

/// How a member connects to the SFU.
#[derive(Debug, Clone)]
pub struct SfuTransportConfig {
    /// Local UDP addresses to gather host candidates on.
    pub udp_addrs: Vec<String>,
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Only relay candidates (needs a TURN server among `ice_servers`).
    pub relay_only: bool,
    /// Speaker slots to receive (at most [`MAX_AUDIO_SLOTS`]; the SFU may serve fewer).
    pub audio_slots: usize,
    /// How long ICE gathering may take before the offer goes out with what was found.
    pub gather_timeout: Duration,
    /// Video slots to receive (0: no video at all; at most [`MAX_VIDEO_SLOTS`]).
    pub video_slots: usize,
    /// Whether we publish video (needs `video_slots` of at least 1: our video m-line also
    /// receives).
    pub send_video: bool,
}

impl Default for SfuTransportConfig {
    fn default() -> Self {
        SfuTransportConfig {
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            ice_servers: Vec::new(),
            relay_only: false,
            audio_slots: 3,
            gather_timeout: Duration::from_secs(5),
            video_slots: 0,
            send_video: false,
        }
    }
}

/// A frame the SFU forwarded, still sealed.
#[derive(Debug, Clone)]
pub struct SlotFrame {
    /// The SSRC of the slot it came on (a slot, not a member).
    pub slot_ssrc: u32,
    /// The slot's RTP sequence number (continuous per slot, rewritten by the SFU).
    pub seq: u16,
    /// The slot's RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// The SFrame frame, byte for byte as its sender sealed it.
    pub payload: Bytes,
    /// When it arrived.
    pub arrival: Instant,
}

/// A whole video frame the SFU forwarded on one of our video slots, still sealed.
#[derive(Debug, Clone)]
pub struct SlotVideoFrame {
    /// The SSRC of the slot it came on (a slot, not a member: the sender is the frame's KID).
    pub slot_ssrc: u32,
    /// The frame, reassembled from the slot's packets.
    pub frame: ReceivedVideoFrame,
}

/// Our video slots' tracks by the SSRC the SFU sends them with: where PLIs go.
type SlotTracks = Arc<Mutex<HashMap<u32, Arc<dyn TrackRemote>>>>;

struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<TransportState>,
    frames: mpsc::Sender<SlotFrame>,
    video_frames: mpsc::Sender<SlotVideoFrame>,
    slot_tracks: SlotTracks,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
}

/// Reassembles the frames of one video slot and queues them (bounded: a stalled consumer
/// loses frames, and the next one delivered says so).
async fn pump_video_slot(
    track: Arc<dyn TrackRemote>,
    frames: mpsc::Sender<SlotVideoFrame>,
    slot_tracks: SlotTracks,
) {
    let mut assembler = FrameAssembler::new();
    let mut dropped = false;
    let mut ssrc = None;
    loop {
        let event = match assembler.deadline() {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), track.poll()).await {
                Ok(Some(event)) => Some(event),
                Ok(None) => break,
                Err(_) => {
                    assembler.expire(Instant::now());
                    None
                }
            },
            None => match track.poll().await {
                Some(event) => Some(event),
                None => break,
            },
        };
        if let Some(TrackRemoteEvent::OnRtpPacket(packet)) = event {
            let h = &packet.header;
            if ssrc != Some(h.ssrc) {
                ssrc = Some(h.ssrc);
                if let Ok(mut t) = slot_tracks.lock() {
                    t.insert(h.ssrc, Arc::clone(&track));
                }
            }
            if packet.payload.is_empty() {
                assembler.push_padding(h.sequence_number, h.timestamp, Instant::now());
            } else {
                assembler.push(
                    h.sequence_number,
                    h.timestamp,
                    h.marker,
                    &packet.payload,
                    Instant::now(),
                );
            }
        }
        let Some(slot_ssrc) = ssrc else { continue };
        while let Some(mut frame) = assembler.pop() {
            frame.after_loss |= dropped;
            match frames.try_send(SlotVideoFrame { slot_ssrc, frame }) {
                Ok(()) => dropped = false,
                Err(mpsc::error::TrySendError::Full(_)) => dropped = true,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
    if let (Some(s), Ok(mut t)) = (ssrc, slot_tracks.lock()) {
        t.remove(&s);
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(TransportState::from_peer_connection(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await == RtpCodecKind::Video {
            self.runtime.spawn(Box::pin(pump_video_slot(
                track,
                self.video_frames.clone(),
                Arc::clone(&self.slot_tracks),
            )));
            return;
        }
        if track.kind().await != RtpCodecKind::Audio {
            return;
        }
        let frames = self.frames.clone();
        self.runtime.spawn(Box::pin(async move {
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                    continue;
                };
                if packet.payload.is_empty() {
                    continue;
                }
                let frame = SlotFrame {
                    slot_ssrc: packet.header.ssrc,
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    payload: packet.payload.clone(),
                    arrival: Instant::now(),
                };
                // A full queue means the receiver stalled: drop rather than buffer.
                if frames.try_send(frame).is_err() && frames.is_closed() {
                    break;
                }
            }
        }));
    }
}

/// Our video track to the SFU.
struct VideoSend {
    track: Arc<TrackLocalStaticRTP>,
    timestamp_base: u32,
    epoch: std::sync::OnceLock<Instant>,
    state: tokio::sync::Mutex<(Vp8Packetizer, u16)>,
}

/// A member's peer connection to the SFU: our voice out, the loudest others in.
pub struct SfuTransport {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    seq: AtomicU16,
    timestamp_base: u32,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<TransportState>,
    frames: Option<mpsc::Receiver<SlotFrame>>,
    video: Option<VideoSend>,
    video_ssrc: u32,
    video_frames: Option<mpsc::Receiver<SlotVideoFrame>>,
    keyframe_requests: Option<mpsc::Receiver<()>>,
    slot_tracks: SlotTracks,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
    gather_timeout: Duration,
    /// Carries TURN over TCP for the peer connection's TURN client, while the call lasts.
    _turn_tcp: super::turn_tcp::TurnTcpBridges,
}

impl std::fmt::Debug for SfuTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuTransport")
            .field("ssrc", &self.ssrc)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl SfuTransport {
    /// A peer connection with our audio track and `audio_slots` receiving m-lines.
    pub async fn new(config: SfuTransportConfig) -> Result<Self, TransportError> {
        if config.audio_slots == 0 || config.audio_slots > MAX_AUDIO_SLOTS {
            return Err(TransportError::WebRtc(format!(
                "audio slots must be 1 to {MAX_AUDIO_SLOTS}"
            )));
        }
        if config.video_slots > MAX_VIDEO_SLOTS || (config.send_video && config.video_slots == 0) {
            return Err(TransportError::WebRtc(format!(
                "video slots must be 0 to {MAX_VIDEO_SLOTS}, and at least 1 to send video"
            )));
        }
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| TransportError::WebRtc("no async runtime".into()))?;
        let mut media = MediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .map_err(rtc_err)?;
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(rtc_err)?;
        let video = config.video_slots > 0;
        if video {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: vp8_codec(),
                        payload_type: VP8_PAYLOAD_TYPE,
                    },
                    RtpCodecKind::Video,
                )
                .map_err(rtc_err)?;
            for (typ, parameter) in [("nack", "pli"), ("ccm", "fir")] {
                media.register_feedback(
                    RTCPFeedback {
                        typ: typ.to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    RtpCodecKind::Video,
                );
            }
        }
        let (ice_servers, turn_tcp) = super::turn_tcp::bridge_tcp_turn(&config.ice_servers)?;
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(rtc_ice_servers(&ice_servers))
            .with_ice_transport_policy(ice_policy(
                config.relay_only && super::has_turn(&config.ice_servers),
            ))
            .build();
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(TransportState::Connecting);
        let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
        let (video_frames_tx, video_frames) = mpsc::channel(VIDEO_FRAME_QUEUE);
        let slot_tracks = SlotTracks::default();
        let mut builder = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_setting_engine(ice_pacing())
            .with_media_engine(media);
        if video {
            // Receiver reports tell the SFU about loss on the video it sends us; keyframe
            // requests (the SFU's, on our track) must reach us.
            let registry = configure_rtcp_reports(Registry::new()).with(
                rtc::interceptor::Slot::from(14_000),
                KeyframeRequests::new(),
            );
            builder = builder.with_interceptor_registry(registry);
        }
        let pc = builder
            .with_handler(Arc::new(Handler {
                gathered: gathered_tx,
                state: state_tx,
                frames: frames_tx,
                video_frames: video_frames_tx,
                slot_tracks: Arc::clone(&slot_tracks),
                runtime: Arc::clone(&runtime),
            }))
            .with_runtime(Arc::clone(&runtime))
            .with_udp_addrs(config.udp_addrs.clone())
            .build()
            .await
            .map_err(rtc_err)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = random_ssrc()?;
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "sotto".to_owned(),
            "sotto-audio".to_owned(),
            "sotto-audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(rtc_err)?;
        for _ in 1..config.audio_slots {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(rtc_err)?;
        }
        let video_ssrc = random_ssrc()?;
        let mut keyframe_requests = None;
        let mut video_send = None;
        if config.send_video {
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "sotto".to_owned(),
                format!("sotto-video-{video_ssrc:08x}"),
                format!("sotto-video-{video_ssrc:08x}"),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(video_ssrc),
                        ..Default::default()
                    },
                    codec: vp8_codec(),
                    ..Default::default()
                }],
            )));
            pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .map_err(rtc_err)?;
            let (tx, rx) = mpsc::channel(4);
            runtime.spawn(Box::pin(pump_keyframe_requests(
                Arc::clone(&track),
                state.clone(),
                tx,
            )));
            keyframe_requests = Some(rx);
            let random = random_ssrc()?;
            video_send = Some(VideoSend {
                track,
                timestamp_base: random_ssrc()?,
                epoch: std::sync::OnceLock::new(),
                state: tokio::sync::Mutex::new((
                    Vp8Packetizer::new(random as u16, MAX_VIDEO_RTP_PAYLOAD),
                    (random >> 16) as u16,
                )),
            });
        }
        let receive_only = config.video_slots - usize::from(config.send_video);
        for _ in 0..receive_only {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(rtc_err)?;
        }
        // Random starting points (RFC 3550), so a capture of one call says nothing about the
        // next.
        let start = random_ssrc()?;
        Ok(SfuTransport {
            pc,
            track,
            ssrc,
            seq: AtomicU16::new(start as u16),
            timestamp_base: random_ssrc()?,
            gathered,
            state,
            frames: Some(frames),
            video: video_send,
            video_ssrc,
            video_frames: video.then_some(video_frames),
            keyframe_requests,
            slot_tracks,
            runtime,
            gather_timeout: config.gather_timeout,
            _turn_tcp: turn_tcp,
        })
    }

    /// Creates the offer for the SFU (`sfu_offer`), once ICE candidates are gathered or the
    /// gather timeout has passed.
    pub async fn create_offer(&self) -> Result<String, TransportError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        let mut gathered = self.gathered.clone();
        if tokio::time::timeout(self.gather_timeout, gathered.wait_for(|g| *g))
            .await
            .is_err()
        {
            tracing::warn!("ICE gathering did not finish in time; offering what was found");
        }
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| rtc_err("no local description"))?;
        Ok(desc.sdp)
    }

    /// Takes the SFU's answer (`sfu_answer`).
    pub async fn accept_answer(&self, answer: &str) -> Result<(), TransportError> {
        set_remote_answer(&self.pc, answer).await
    }

    /// Waits until media can flow.
    pub async fn connected(&self, timeout: Duration) -> Result<(), TransportError> {
        wait_connected(&self.state, timeout).await
    }

    /// Follows the connection state.
    pub fn state_watch(&self) -> watch::Receiver<TransportState> {
        self.state.clone()
    }

    /// The connection state now.
    pub fn state(&self) -> TransportState {
        *self.state.borrow()
    }

    /// Sends one sealed audio frame captured at `sample` (48 kHz sample count since the start)
    /// with its RFC 6464 `level` ([`rfc6464_level`]) and voice activity.
    pub async fn send_audio(
        &self,
        frame: &SealedFrame,
        sample: u64,
        level: u8,
        voice: bool,
    ) -> Result<(), TransportError> {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: self.seq.fetch_add(1, Ordering::Relaxed),
                // RTP timestamps wrap by design.
                timestamp: self.timestamp_base.wrapping_add(sample as u32),
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: frame.0.clone(),
        };
        let ext = HeaderExtension::AudioLevel(AudioLevelExtension {
            level: level.min(127),
            voice,
        });
        self.track
            .write_rtp_with_extensions(packet, &[ext])
            .await
            .map_err(rtc_err)
    }

    /// Takes the stream of forwarded (still sealed) frames; `None` after the first call.
    pub fn take_frames(&mut self) -> Option<mpsc::Receiver<SlotFrame>> {
        self.frames.take()
    }

    /// Sends one sealed video frame (the layout of [`super::seal_video`]) captured at
    /// `capture`.
    pub async fn send_video(
        &self,
        frame: &SealedFrame,
        capture: Instant,
    ) -> Result<(), TransportError> {
        let video = self
            .video
            .as_ref()
            .ok_or(TransportError::VideoReceiveOnly)?;
        let epoch = *video.epoch.get_or_init(|| capture);
        // 90 kHz; RTP timestamps wrap by design.
        let ticks = capture.saturating_duration_since(epoch).as_micros() * 9 / 100;
        let timestamp = video.timestamp_base.wrapping_add(ticks as u32);
        let mut state = video.state.lock().await;
        let (packetizer, seq) = &mut *state;
        let payloads = packetizer.packetize(frame.as_bytes());
        let count = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i + 1 == count,
                    payload_type: VP8_PAYLOAD_TYPE,
                    sequence_number: *seq,
                    timestamp,
                    ssrc: self.video_ssrc,
                    ..Default::default()
                },
                payload,
            };
            *seq = seq.wrapping_add(1);
            video.track.write_rtp(packet).await.map_err(rtc_err)?;
        }
        Ok(())
    }

    /// Asks whoever the SFU sends on the video slot `slot_ssrc` for a keyframe (a PLI the SFU
    /// relays). False if no such slot is known yet.
    pub fn request_keyframe(&self, slot_ssrc: u32) -> bool {
        let track = match self.slot_tracks.lock() {
            Ok(t) => match t.get(&slot_ssrc) {
                Some(track) => Arc::clone(track),
                None => return false,
            },
            Err(_) => return false,
        };
        let pli = PictureLossIndication {
            sender_ssrc: self.video_ssrc,
            media_ssrc: slot_ssrc,
        };
        self.runtime.spawn(Box::pin(async move {
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "PLI not sent");
            }
        }));
        true
    }

    /// Takes the stream of whole video frames forwarded on our slots (still sealed); `None`
    /// after the first call, or without video slots.
    pub fn take_video_frames(&mut self) -> Option<mpsc::Receiver<SlotVideoFrame>> {
        self.video_frames.take()
    }

    /// Takes the stream of keyframe requests the SFU relays to us (PLI/FIR on our video
    /// track); `None` after the first call, or when we do not send video.
    pub fn take_keyframe_requests(&mut self) -> Option<mpsc::Receiver<()>> {
        self.keyframe_requests.take()
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.pc.close().await.map_err(rtc_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_rfc_6464() {
        assert_eq!(rfc6464_level(0.0), 0);
        assert_eq!(rfc6464_level(-30.4), 30);
        assert_eq!(rfc6464_level(-200.0), 127);
        assert_eq!(rfc6464_level(3.0), 0);
        assert_eq!(rfc6464_level(f32::NAN), 127);
        assert_eq!(rfc6464_level(f32::NEG_INFINITY), 127);
    }
}
