//! A real webrtc-rs client for the SFU tests: publishes SFrame-sealed Opus-sized frames with
//! RFC 6464 levels on its first audio m-line, receives on N audio m-lines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto_sfu::server::KeyframeRequests;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::TrackLocalEvent;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
/// Every member's base key derives from its KID here; the SFU never sees any of it.
pub fn base_key(kid: u64) -> Vec<u8> {
    format!("test base key of member {kid}").into_bytes()
}

/// What a member sent: sealed payload -> KID of the sender.
pub type SentLog = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

/// One RTP packet a client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub video: bool,
    pub ssrc: u32,
    pub seq: u16,
    pub payload: Vec<u8>,
}

struct Handler {
    remote_video: Arc<Mutex<Vec<Arc<dyn TrackRemote>>>>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    packets: mpsc::UnboundedSender<Received>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self
            .connected
            .send(state == RTCPeerConnectionState::Connected);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = self.packets.clone();
        let video = track.kind().await == RtpCodecKind::Video;
        if video {
            self.remote_video.lock().unwrap().push(Arc::clone(&track));
        }
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = event {
                    if p.payload.is_empty() {
                        continue;
                    }
                    let _ = packets.send(Received {
                        video,
                        ssrc: p.header.ssrc,
                        seq: p.header.sequence_number,
                        payload: p.payload.to_vec(),
                    });
                }
            }
        });
    }
}

pub struct Client {
    pub kid: u64,
    pub pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    connected: watch::Receiver<bool>,
    pub packets: mpsc::UnboundedReceiver<Received>,
    /// The RFC 6464 level it sends (0 loudest, 127 silence).
    pub level: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    video: Option<Arc<TrackLocalStaticRTP>>,
    /// Keyframe requests (PLI/FIR) that reached our video track.
    pub keyframe_requests: Arc<AtomicU64>,
    /// Our remote video tracks, as they opened.
    pub remote_video: Arc<Mutex<Vec<Arc<dyn TrackRemote>>>>,
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

impl Client {
    /// A client that offers `slots` audio m-lines (the first one also publishes); returns it
    /// and its offer.
    pub async fn new(kid: u64, slots: usize, level: u8) -> (Client, String) {
        Self::with_video(kid, slots, level, 0).await
    }

    /// As `new`, with `video_slots` video m-lines too (the first one also publishes).
    pub async fn with_video(
        kid: u64,
        slots: usize,
        level: u8,
        video_slots: usize,
    ) -> (Client, String) {
        let mut media = MediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus(),
                    payload_type: 111,
                },
                RtpCodecKind::Audio,
            )
            .unwrap();
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .unwrap();
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: vp8(),
                    payload_type: 96,
                },
                RtpCodecKind::Video,
            )
            .unwrap();
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: "pli".to_owned(),
            },
            RtpCodecKind::Video,
        );
        // Receiver reports tell the SFU about loss on its tracks to us.
        let registry = configure_rtcp_reports(Registry::new())
            .with(Slot::from(14_000), KeyframeRequests::default());
        let remote_video = Arc::new(Mutex::new(Vec::new()));
        let (gathered_tx, mut gathered) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let (packets_tx, packets) = mpsc::unbounded_channel();
        let runtime = webrtc::runtime::default_runtime().unwrap();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                remote_video: Arc::clone(&remote_video),
                gathered: gathered_tx,
                connected: connected_tx,
                packets: packets_tx,
            }))
            .with_runtime(runtime)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .unwrap();
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = 0x1000_0000 + kid as u32;
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("member-{kid}"),
            format!("member-{kid}-audio"),
            format!("member-{kid}-audio"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        for _ in 1..slots {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        }
        let keyframe_requests = Arc::new(AtomicU64::new(0));
        let mut video = None;
        if video_slots > 0 {
            let vssrc = 0x2000_0000 + kid as u32;
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("member-{kid}"),
                format!("member-{kid}-video"),
                format!("member-{kid}-video"),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(vssrc),
                        ..Default::default()
                    },
                    codec: vp8(),
                    ..Default::default()
                }],
            )));
            pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .unwrap();
            for _ in 1..video_slots {
                pc.add_transceiver_from_kind(
                    RtpCodecKind::Video,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .unwrap();
            }
            let t = Arc::clone(&track);
            let count = Arc::clone(&keyframe_requests);
            tokio::spawn(async move {
                while let Some(event) = t.poll().await {
                    if let TrackLocalEvent::OnRtcpPacket(packets) = event
                        && packets
                            .iter()
                            .any(|p| p.as_any().is::<PictureLossIndication>())
                    {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            video = Some(track);
        }
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), gathered.wait_for(|g| *g))
            .await
            .expect("gathering")
            .unwrap();
        let sdp = pc.local_description().await.unwrap().sdp;
        (
            Client {
                kid,
                pc,
                track,
                ssrc,
                connected,
                packets,
                level: Arc::new(AtomicU8::new(level)),
                stop: Arc::new(AtomicBool::new(false)),
                video,
                keyframe_requests,
                remote_video,
            },
            sdp,
        )
    }

    pub async fn accept(&self, answer: String) {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        let mut c = self.connected.clone();
        tokio::time::timeout(Duration::from_secs(30), c.wait_for(|c| *c))
            .await
            .expect("connected to the SFU")
            .unwrap();
    }

    /// Sends a sealed frame every `interval` until stopped, recording each in `log`.
    pub fn start_sending(&self, interval: Duration, log: SentLog) {
        let kid = self.kid;
        self.start_sending_with(interval, log, move |n| {
            // Opus-sized and distinct per sender and frame.
            let mut frame = format!("member {kid} frame {n} ").into_bytes();
            frame.resize(80, kid as u8);
            frame
        });
    }

    /// Sends `make(n)`, sealed, as frame `n` every `interval` until stopped.
    pub fn start_sending_with(
        &self,
        interval: Duration,
        log: SentLog,
        mut make: impl FnMut(u64) -> Vec<u8> + Send + 'static,
    ) {
        let track = Arc::clone(&self.track);
        let (kid, ssrc) = (self.kid, self.ssrc);
        let level = Arc::clone(&self.level);
        let stop = Arc::clone(&self.stop);
        tokio::spawn(async move {
            let mut sframe = SenderContext::new(SUITE, kid, &base_key(kid)).unwrap();
            let mut seq: u16 = (kid as u16).wrapping_mul(7919);
            let mut ts: u32 = (kid as u32).wrapping_mul(104_729);
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(interval);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let frame = make(n);
                let sealed = sframe.encrypt_to_vec(&[], &frame).unwrap();
                log.lock().unwrap().insert(sealed.clone(), kid);
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: 111,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                        ..Default::default()
                    },
                    payload: sealed.into(),
                };
                let ext = HeaderExtension::AudioLevel(AudioLevelExtension {
                    level: level.load(Ordering::Relaxed),
                    voice: true,
                });
                let _ = track.write_rtp_with_extensions(packet, &[ext]).await;
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(960);
                n += 1;
            }
        });
    }

    /// Sends a sealed 1000-byte "video" frame every `interval` on the video track.
    pub fn start_sending_video(&self, interval: Duration, log: SentLog) {
        let track = Arc::clone(self.video.as_ref().expect("a video track"));
        let kid = self.kid;
        let stop = Arc::clone(&self.stop);
        tokio::spawn(async move {
            // A KID of its own for video, as the engine does (member k: 100 + k).
            let mut sframe = SenderContext::new(SUITE, 100 + kid, &base_key(100 + kid)).unwrap();
            let mut seq: u16 = 1000 + kid as u16;
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(interval);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut frame = format!("member {kid} video {n} ").into_bytes();
                frame.resize(1000, kid as u8);
                let sealed = sframe.encrypt_to_vec(&[], &frame).unwrap();
                log.lock().unwrap().insert(sealed.clone(), 100 + kid);
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: 96,
                        sequence_number: seq,
                        timestamp: (n as u32).wrapping_mul(3000),
                        ssrc: 0x2000_0000 + kid as u32,
                        ..Default::default()
                    },
                    payload: sealed.into(),
                };
                let _ = track.write_rtp(packet).await;
                seq = seq.wrapping_add(1);
                n += 1;
            }
        });
    }

    pub fn stop_sending(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens a sealed payload: the sender's KID and the plaintext.
pub fn open(payload: &[u8], kids: u64) -> Option<(u64, Vec<u8>)> {
    let mut rx = ReceiverContext::new();
    for kid in (0..kids).chain(100..100 + kids) {
        rx.add_key(SUITE, kid, &base_key(kid)).unwrap();
    }
    let mut buf = payload.to_vec();
    let frame = rx.decrypt_in_place(&[], &mut buf).ok()?;
    let kid = frame.header.kid;
    Some((kid, frame.payload.to_vec()))
}
