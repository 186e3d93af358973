//! The WebRTC transport of one two-party call (webrtc-rs): one Opus audio track each way,
//! ICE/DTLS/SRTP underneath, and nothing but SFrame-sealed frames on the track.
//!
//! Only [`SealedFrame`]s can be sent, and only the SFrame layer makes them, so no code path
//! can hand plaintext media to the network. Received RTP payloads come out as
//! [`ReceivedFrame`]s still sealed, for the caller to decrypt; their RTP sequence number and
//! timestamp are not authenticated, so [`FrameOrder`] checks them against the SFrame counter.
//!
//! A negotiated data channel (`sotto-control`, stream id 0) carries control messages, which
//! are sealed the same way (with the control keys of `docs/call-protocol.md`).
//!
//! Negotiation is non-trickle: each side's SDP (plain SDP text) is sent once ICE gathering
//! completes, for the caller to relay over signaling.
//!
//! ```no_run
//! # async fn demo(mut sender: sotto::sframe::SenderContext) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sotto::transport::{MediaTransport, TransportConfig, seal};
//!
//! let transport = MediaTransport::new(TransportConfig::default()).await?;
//! // The handshake signs this fingerprint; the peer checks our SDP against it.
//! println!("our DTLS certificate: {}", transport.dtls_fingerprint());
//! let offer = transport.create_offer().await?;
//! # let answer = offer.clone();
//! // ... send the offer through signaling, get the answer back ...
//! transport.accept_answer(&answer).await?;
//! transport.connected(Duration::from_secs(10)).await?;
//! // Only sealed frames go on the track.
//! let frame = seal(&mut sender, b"an Opus packet")?;
//! transport.send(&frame, Duration::from_millis(20)).await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use rtc::data_channel::RTCDataChannelInit;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceServer;
use rtc::rtp_transceiver::PayloadType;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::handshake::DtlsFingerprint;
use crate::sframe::{MAX_HEADER_LEN, SenderContext, SframeError};

mod layout;
mod order;
pub use layout::{
    OpenVideoError, OpenedVideo, VP8_DELTA_PREFIX, VP8_KEYFRAME_PREFIX, VideoLayoutError,
    open_video_in_place, seal_video, video_clear_prefix_len,
};
pub use order::{FrameOrder, ORDER_WINDOW, OrderError};

/// Errors of the transport.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// webrtc-rs refused an operation.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The peer's session description is not valid SDP.
    #[error("bad session description from peer: {0}")]
    BadDescription(String),
    /// ICE gathering or connection did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection is closed.
    #[error("transport closed")]
    Closed,
    /// The control channel is not open (yet, or any more).
    #[error("control channel not open")]
    ControlNotOpen,
    /// Sealing a frame failed.
    #[error(transparent)]
    Sframe(#[from] SframeError),
}

fn rtc_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::WebRtc(e.to_string())
}

/// ICE servers and local addresses.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// STUN/TURN servers (`stun:host:port`, `turn:host:port` with credentials).
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to gather host candidates on. `127.0.0.1:0` for loopback calls;
    /// a wildcard address skips loopback.
    pub udp_addrs: Vec<String>,
    /// How long ICE gathering may take.
    pub gather_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            ice_servers: Vec::new(),
            udp_addrs: vec!["127.0.0.1:0".into()],
            gather_timeout: Duration::from_secs(5),
        }
    }
}

/// A STUN or TURN server.
#[derive(Debug, Clone, Default)]
pub struct IceServer {
    /// Server URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    pub username: String,
    /// TURN credential.
    pub credential: String,
}

/// An SFrame frame ready for the wire. Only [`seal`] makes one, from a [`SenderContext`].
#[derive(Debug, Clone)]
pub struct SealedFrame(Bytes);

impl SealedFrame {
    /// The bytes that go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Seals `payload` with `sender` into a frame the transport will send.
pub fn seal(sender: &mut SenderContext, payload: &[u8]) -> Result<SealedFrame, SframeError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len() + sender.max_overhead()];
    buf[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let range = sender.encrypt_in_place(&[], &mut buf, MAX_HEADER_LEN, payload.len())?;
    let bytes = Bytes::from(buf).slice(range);
    Ok(SealedFrame(bytes))
}

/// A frame as it came off the wire, still sealed.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// The SFrame frame.
    pub payload: Bytes,
    /// When it arrived.
    pub arrival: Instant,
}

/// Largest control message accepted from the peer (sealed), in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 2048;

/// Label of the control data channel.
pub const CONTROL_LABEL: &str = "sotto-control";

/// Connection progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportState {
    /// Negotiating.
    Connecting,
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The path was lost; ICE may recover it.
    Disconnected,
    /// Failed or closed for good.
    Closed,
}

struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<TransportState>,
    frames: mpsc::Sender<ReceivedFrame>,
    runtime: Arc<dyn webrtc::runtime::Runtime>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let s = match state {
            RTCPeerConnectionState::Connected => TransportState::Connected,
            RTCPeerConnectionState::Disconnected => TransportState::Disconnected,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                TransportState::Closed
            }
            _ => TransportState::Connecting,
        };
        let _ = self.state.send(s);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let frames = self.frames.clone();
        self.runtime.spawn(Box::pin(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    // Padding-only packets carry no frame.
                    if packet.payload.is_empty() {
                        continue;
                    }
                    let frame = ReceivedFrame {
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
            }
        }));
    }
}

/// One peer connection with an outgoing Opus track, the incoming frames and the control
/// channel. Sending takes `&self`, so a capture thread can share it with the call task.
pub struct MediaTransport {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    control: Arc<dyn DataChannel>,
    control_open: watch::Receiver<bool>,
    ssrc: u32,
    payload_type: OnceLock<PayloadType>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<TransportState>,
    frames: Option<mpsc::Receiver<ReceivedFrame>>,
    controls: Option<mpsc::Receiver<Bytes>>,
    gather_timeout: Duration,
    dtls_fingerprint: DtlsFingerprint,
}

impl std::fmt::Debug for MediaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaTransport")
            .field("ssrc", &self.ssrc)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn random_ssrc() -> Result<u32, TransportError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 4];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| rtc_err("no randomness"))?;
    Ok(u32::from_be_bytes(b))
}

/// Forwards the control channel's events: open state, and sealed messages of sane size.
async fn pump_control(
    channel: Arc<dyn DataChannel>,
    open: watch::Sender<bool>,
    messages: mpsc::Sender<Bytes>,
) {
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                let _ = open.send(true);
            }
            DataChannelEvent::OnMessage(msg) => {
                if msg.is_string || msg.data.len() > MAX_CONTROL_MESSAGE {
                    tracing::debug!(len = msg.data.len(), "control: dropped malformed message");
                    continue;
                }
                // A peer flooding control messages loses them rather than growing a queue.
                if messages.try_send(msg.data.freeze()).is_err() && messages.is_closed() {
                    break;
                }
            }
            DataChannelEvent::OnClose => {
                let _ = open.send(false);
                break;
            }
            _ => {}
        }
    }
    let _ = open.send(false);
}

impl MediaTransport {
    /// A peer connection with one outgoing audio track and the control channel.
    pub async fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| TransportError::WebRtc("no async runtime".into()))?;
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(rtc_err)?;
        let ice_servers = config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect();
        // Our own certificate, so its fingerprint is known before any SDP exists: the
        // handshake signs it (docs/handshake.md, "Binding the transport").
        let provider = rtc::crypto::default_provider().map_err(rtc_err)?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["sotto".to_owned()]).map_err(rtc_err)?,
        )
        .map_err(rtc_err)?;
        let dtls_fingerprint = certificate
            .get_fingerprints(provider.crypto())
            .map_err(rtc_err)?
            .into_iter()
            .find(|f| f.algorithm.eq_ignore_ascii_case("sha-256"))
            .ok_or_else(|| rtc_err("no sha-256 certificate fingerprint"))
            .and_then(|f| {
                DtlsFingerprint::parse(&format!("{} {}", f.algorithm, f.value)).map_err(rtc_err)
            })?;
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_certificates(vec![certificate])
            .build();
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(TransportState::Connecting);
        let (frames_tx, frames) = mpsc::channel(512);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_media_engine(media)
            .with_handler(Arc::new(Handler {
                gathered: gathered_tx,
                state: state_tx,
                frames: frames_tx,
                runtime: runtime.clone(),
            }))
            .with_runtime(runtime.clone())
            .with_udp_addrs(config.udp_addrs.clone())
            .build()
            .await
            .map_err(rtc_err)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc = random_ssrc()?;
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
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
                ),
            )
            .map_err(rtc_err)?,
        );
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(rtc_err)?;

        // Negotiated out of band (both sides create stream 0), so no in-band announcement
        // and no `on_data_channel` race.
        let control = pc
            .create_data_channel(
                CONTROL_LABEL,
                Some(RTCDataChannelInit {
                    negotiated: Some(0),
                    ..Default::default()
                }),
            )
            .await
            .map_err(rtc_err)?;
        let (open_tx, control_open) = watch::channel(false);
        let (controls_tx, controls) = mpsc::channel(64);
        runtime.spawn(Box::pin(pump_control(
            Arc::clone(&control),
            open_tx,
            controls_tx,
        )));

        Ok(MediaTransport {
            pc,
            track,
            sender,
            control,
            control_open,
            ssrc,
            payload_type: OnceLock::new(),
            gathered,
            state,
            frames: Some(frames),
            controls: Some(controls),
            gather_timeout: config.gather_timeout,
            dtls_fingerprint,
        })
    }

    /// The SHA-256 fingerprint of our DTLS certificate, as our SDP carries it.
    pub fn dtls_fingerprint(&self) -> &DtlsFingerprint {
        &self.dtls_fingerprint
    }

    async fn local_sdp(&self) -> Result<String, TransportError> {
        let mut gathered = self.gathered.clone();
        let wait = gathered.wait_for(|done| *done);
        tokio::time::timeout(self.gather_timeout, wait)
            .await
            .map_err(|_| TransportError::Timeout("ICE gathering"))?
            .map_err(|_| TransportError::Closed)?;
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| rtc_err("no local description"))?;
        Ok(desc.sdp)
    }

    /// Creates the offer; returns its SDP for the peer once ICE candidates are gathered.
    pub async fn create_offer(&self) -> Result<String, TransportError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        self.local_sdp().await
    }

    /// Takes the peer's offer SDP; returns the answer SDP for the peer.
    pub async fn accept_offer(&self, offer: &str) -> Result<String, TransportError> {
        let desc = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        self.local_sdp().await
    }

    /// Takes the peer's answer SDP to our offer.
    pub async fn accept_answer(&self, answer: &str) -> Result<(), TransportError> {
        let desc = RTCSessionDescription::answer(answer.to_owned())
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        self.pc
            .set_remote_description(desc)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))
    }

    /// Waits until media can flow.
    pub async fn connected(&self, timeout: Duration) -> Result<(), TransportError> {
        let mut state = self.state.clone();
        let wait =
            state.wait_for(|s| matches!(s, TransportState::Connected | TransportState::Closed));
        let state = *tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| TransportError::Timeout("connection"))?
            .map_err(|_| TransportError::Closed)?;
        if state == TransportState::Closed {
            return Err(TransportError::Closed);
        }
        Ok(())
    }

    /// The connection state now.
    pub fn state(&self) -> TransportState {
        *self.state.borrow()
    }

    /// A watch on the connection state, for select loops.
    pub fn state_watch(&self) -> watch::Receiver<TransportState> {
        self.state.clone()
    }

    /// A watch on whether the control channel is open.
    pub fn control_open_watch(&self) -> watch::Receiver<bool> {
        self.control_open.clone()
    }

    /// Sends one sealed frame lasting `duration` of audio.
    pub async fn send(
        &self,
        frame: &SealedFrame,
        duration: Duration,
    ) -> Result<(), TransportError> {
        let pt = match self.payload_type.get() {
            Some(pt) => *pt,
            None => {
                let params = self.sender.get_parameters().await.map_err(rtc_err)?;
                let pt = params
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
                    .ok_or_else(|| rtc_err("no negotiated codec"))?;
                *self.payload_type.get_or_init(|| pt)
            }
        };
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(&Sample {
                data: frame.0.clone(),
                duration,
                ..Sample::new(Instant::now())
            })
            .await
            .map_err(rtc_err)
    }

    /// Sends an Opus payload **without** SFrame. Only the latency benchmark (inside this
    /// crate) uses this, to measure what E2EE adds against the same pipeline without it; calls
    /// never do, and applications cannot (see the `insecure-test-hooks` feature).
    pub(crate) async fn send_unprotected_for_latency_baseline(
        &self,
        payload: &[u8],
        duration: Duration,
    ) -> Result<(), TransportError> {
        self.send(&SealedFrame(Bytes::copy_from_slice(payload)), duration)
            .await
    }

    /// Sends a payload **without** SFrame, as a sender without encryption would, so tests can
    /// show the receiver refuses it. Exists only with the non-default `insecure-test-hooks`
    /// feature; the default build has no way to put plaintext media on the wire.
    #[cfg(feature = "insecure-test-hooks")]
    pub async fn insecure_send_plaintext_for_tests(
        &self,
        payload: &[u8],
        duration: Duration,
    ) -> Result<(), TransportError> {
        self.send_unprotected_for_latency_baseline(payload, duration)
            .await
    }

    /// Sends one sealed control message.
    pub async fn send_control(&self, frame: &SealedFrame) -> Result<(), TransportError> {
        if !*self.control_open.borrow() {
            return Err(TransportError::ControlNotOpen);
        }
        self.control
            .send(BytesMut::from(frame.as_bytes()))
            .await
            .map_err(rtc_err)
    }

    /// Takes the stream of received (still sealed) media frames; `None` after the first call.
    /// It ends once the connection is gone.
    pub fn take_frames(&mut self) -> Option<mpsc::Receiver<ReceivedFrame>> {
        self.frames.take()
    }

    /// Takes the stream of received (still sealed) control messages; `None` after the first
    /// call.
    pub fn take_control(&mut self) -> Option<mpsc::Receiver<Bytes>> {
        self.controls.take()
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.pc.close().await.map_err(rtc_err)
    }
}
