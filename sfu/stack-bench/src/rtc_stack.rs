//! webrtc-rs `rtc` 0.21: the SFU side is four `RTCPeerConnection`s configured as `sotto-sfu`
//! configures them (ICE lite, answerer, Opus and the audio level extension, the RTCP report
//! interceptors and one pass-through interceptor of its own); the clients are four full ICE
//! offerers. Offer and answer are real SDP, ICE, DTLS and SRTP real too.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Interceptor, Registry, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::header::{Extension, Header};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::net::{Datagram, client_addr, client_of, is_rtp, payload, sfu_addr};
use crate::{FRAME, Report, TICKS, WARMUP};

const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const SENDER_SSRC: u32 = 0x5e0d_0001;

fn e(e: impl std::fmt::Display) -> String {
    e.to_string()
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

fn media_engine() -> Result<MediaEngine, String> {
    let mut m = MediaEngine::default();
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .map_err(e)?;
    m.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )
    .map_err(e)?;
    Ok(m)
}

/// Stands for the SFU's own interceptor (it lets keyframe requests and receiver reports
/// through to the application): one more queue in the chain, as in the SFU.
#[derive(Default)]
struct PassThrough {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for PassThrough {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for PassThrough {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn profiles(gcm256: bool) -> Vec<SrtpProtectionProfile> {
    if gcm256 {
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm]
    } else {
        vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm]
    }
}

fn sfu_pc(now: Instant, i: usize, gcm256: bool) -> Result<RTCPeerConnection, String> {
    let registry = configure_rtcp_reports(Registry::new())
        .with(rtc::interceptor::Slot::from(14_000), PassThrough::default());
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(
            format!("sfu{i}ufragxx"),
            format!("sfu{i}passwordpasswordpassword"),
        )
        .with_srtp_protection_profiles(profiles(gcm256))
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media_engine()?)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(e)
}

fn client_pc(now: Instant, gcm256: bool) -> Result<RTCPeerConnection, String> {
    let settings = SettingEngineBuilder::new()
        .with_srtp_protection_profiles(profiles(gcm256))
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media_engine()?)
        .with_interceptor_registry(configure_rtcp_reports(Registry::new()))
        .build(now)
        .map_err(e)
}

fn host(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), String> {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(e)?;
    pc.add_local_candidate(RTCIceCandidate::from(&c).to_json().map_err(e)?)
        .map_err(e)
}

fn audio_track(ssrc: u32, name: &str) -> MediaStreamTrack {
    MediaStreamTrack::new(
        format!("{name}-stream"),
        format!("{name}-track"),
        name.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus(),
            ..Default::default()
        }],
    )
}

/// Every RFC 6464 level as a static one-byte slice, so forwarding allocates none (as in the SFU).
static LEVELS: [u8; 256] = {
    let mut l = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        l[i] = i as u8;
        i += 1;
    }
    l
};

fn level_payload(l: u8) -> Bytes {
    let l = usize::from(l);
    Bytes::from_static(&LEVELS[l..=l])
}

/// Payload type and audio level extension id negotiated for a sender.
fn negotiated(pc: &mut RTCPeerConnection, id: RTCRtpSenderId) -> Result<(u8, u8), String> {
    let mut s = pc.rtp_sender(id).ok_or("no sender")?;
    let p = s.get_parameters();
    let pt = p
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
        .ok_or("opus not negotiated")?
        .payload_type;
    let ext = p
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|h| h.uri == AUDIO_LEVEL_URI)
        .and_then(|h| u8::try_from(h.id).ok())
        .ok_or("audio level not negotiated")?;
    Ok((pt, ext))
}

struct Node {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
    tracks: HashMap<String, RTCRtpReceiverId>,
}

impl Node {
    fn flush(&mut self, net: &mut VecDeque<Datagram>) {
        while let Some(m) = self.pc.poll_write() {
            net.push_back(Datagram {
                from: self.addr,
                to: m.transport.peer_addr,
                data: m.message.into(),
            });
        }
    }

    fn events(&mut self) {
        while let Some(ev) = self.pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                    self.connected = s == RTCPeerConnectionState::Connected;
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    self.tracks.insert(init.track_id, init.receiver_id);
                }
                _ => {}
            }
        }
    }

    fn receive(&mut self, now: Instant, d: &Datagram) -> Result<(), String> {
        self.pc
            .handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: d.to,
                    peer_addr: d.from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&d.data[..]),
            })
            .map_err(e)
    }

    fn timeout(&mut self, now: Instant) -> Result<(), String> {
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            self.pc.handle_timeout(now).map_err(e)?;
        }
        Ok(())
    }
}

struct World {
    sfu: Vec<Node>,
    clients: Vec<Node>,
    net: VecDeque<Datagram>,
    other_ns: u128,
}

impl World {
    /// Runs due timers and delivers datagrams until nothing is in flight; returns the RTP
    /// packets each client read.
    fn settle(&mut self, now: Instant, reads: &mut [Vec<rtc::rtp::Packet>]) -> Result<(), String> {
        for n in &mut self.sfu {
            let t = Instant::now();
            n.timeout(now)?;
            n.flush(&mut self.net);
            n.events();
            while n.pc.poll_read().is_some() {}
            self.other_ns += t.elapsed().as_nanos();
        }
        for n in &mut self.clients {
            n.timeout(now)?;
            n.flush(&mut self.net);
            n.events();
        }
        while let Some(d) = self.net.pop_front() {
            if d.to == sfu_addr() {
                let i = client_of(d.from).ok_or("datagram from nowhere")?;
                let t = Instant::now();
                let n = &mut self.sfu[i];
                // Stray reads of a lost connection are not fatal here; the run checks
                // the connections at the end.
                let _ = n.receive(now, &d);
                n.flush(&mut self.net);
                n.events();
                while n.pc.poll_read().is_some() {}
                self.other_ns += t.elapsed().as_nanos();
            } else {
                let i = client_of(d.to).ok_or("datagram to nowhere")?;
                let n = &mut self.clients[i];
                let _ = n.receive(now, &d);
                n.flush(&mut self.net);
                n.events();
                while let Some(TaggedRTCMessage { message, .. }) = n.pc.poll_read() {
                    if let RTCMessage::RtpPacket(_, p) = message {
                        reads[i].push(p);
                    }
                }
            }
        }
        Ok(())
    }

    fn next_timer(&mut self) -> Option<Instant> {
        self.sfu
            .iter_mut()
            .chain(self.clients.iter_mut())
            .filter_map(|n| n.pc.poll_timeout())
            .min()
    }
}

/// Connects the SFU side and the clients, then forwards `packets` (after a warm-up).
pub fn run(packets: usize, gcm256: bool) -> Result<Report, String> {
    let start = Instant::now();
    let mut now = start;
    let mut w = World {
        sfu: Vec::new(),
        clients: Vec::new(),
        net: VecDeque::new(),
        other_ns: 0,
    };
    let mut sender_id = None;
    let mut sfu_senders = [None; 4];
    for (i, sfu_sender) in sfu_senders.iter_mut().enumerate() {
        let mut c = client_pc(now, gcm256)?;
        host(&mut c, client_addr(i))?;
        if i == 0 {
            sender_id = Some(c.add_track(audio_track(SENDER_SSRC, "mic")).map_err(e)?);
        } else {
            c.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .map_err(e)?;
        }
        let offer = c.create_offer(None).map_err(e)?;
        c.set_local_description(now, offer.clone()).map_err(e)?;
        let mut s = sfu_pc(now, i, gcm256)?;
        s.set_remote_description(now, offer).map_err(e)?;
        if i > 0 {
            let ssrc = 0x5f00_0000 + i as u32;
            *sfu_sender = Some(
                s.add_track(audio_track(ssrc, &format!("sfu-out-{i}")))
                    .map_err(e)?,
            );
        }
        host(&mut s, sfu_addr())?;
        let answer = s.create_answer(None).map_err(e)?;
        s.set_local_description(now, answer.clone()).map_err(e)?;
        c.set_remote_description(now, answer).map_err(e)?;
        w.sfu.push(Node {
            pc: s,
            addr: sfu_addr(),
            connected: false,
            tracks: HashMap::new(),
        });
        w.clients.push(Node {
            pc: c,
            addr: client_addr(i),
            connected: false,
            tracks: HashMap::new(),
        });
    }
    let sender_id = sender_id.ok_or("no sender")?;
    let mut reads = vec![Vec::new(); 4];
    let deadline = start + Duration::from_secs(30);
    loop {
        w.settle(now, &mut reads)?;
        if w.sfu.iter().chain(w.clients.iter()).all(|n| n.connected) {
            break;
        }
        if now > deadline {
            return Err("rtc: not connected after 30 s of virtual time".into());
        }
        now = w
            .next_timer()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
    }
    let connected_after = now - start;

    let (pt, level_id) = negotiated(&mut w.clients[0].pc, sender_id)?;
    let mut outs = Vec::new();
    for (i, s) in sfu_senders.iter().enumerate().skip(1) {
        let id = s.ok_or("no SFU sender")?;
        let (opt, oext) = negotiated(&mut w.sfu[i].pc, id)?;
        outs.push((i, id, 0x5f00_0000 + i as u32, opt, oext));
    }
    // The SFU learns the incoming level extension id once, as `sotto-sfu` does.
    let mut in_level: Option<u8> = None;
    let offsets: [u16; 4] = [0, 1_000, 20_000, 40_000];

    let mut forward_ns = 0u128;
    let mut receive_ns = 0u128;
    let mut received = 0u64;
    let mut bytes_in = 0;
    let mut bytes_out = 0;
    let mut reads_sfu = Vec::new();
    for n in 0..(WARMUP + packets) as u64 {
        let timed = n >= WARMUP as u64;
        if n == WARMUP as u64 {
            w.other_ns = 0;
        }
        now += FRAME;
        let data = payload(n);
        let packet = rtc::rtp::Packet {
            header: Header {
                version: 2,
                payload_type: pt,
                sequence_number: n as u16,
                timestamp: (n as u32).wrapping_mul(TICKS),
                ssrc: SENDER_SSRC,
                extension: true,
                extension_profile: 0xBEDE,
                extensions: vec![Extension {
                    id: level_id,
                    payload: Bytes::from(vec![0x80 | (n % 100) as u8]),
                }],
                ..Default::default()
            },
            payload: Bytes::from(data.clone()),
        };
        w.clients[0]
            .pc
            .rtp_sender(sender_id)
            .ok_or("no sender")?
            .write_rtp(now, packet)
            .map_err(e)?;
        let mut sent = VecDeque::new();
        w.clients[0].flush(&mut sent);
        let media = sent
            .iter()
            .position(|d| d.to == sfu_addr() && is_rtp(&d.data))
            .and_then(|p| sent.remove(p))
            .ok_or("the sender made no SRTP datagram")?;
        w.net.extend(sent);
        bytes_in = media.data.len();

        // The SFU side's forwarding, timed: what `sotto-sfu`'s on_datagram, pump and forward
        // do with the stack, less the room's decision and the sockets.
        let t = Instant::now();
        let mut out = VecDeque::new();
        {
            let s0 = &mut w.sfu[0];
            s0.receive(now, &media)?;
            s0.flush(&mut out);
            s0.events();
            while let Some(TaggedRTCMessage { message, .. }) = s0.pc.poll_read() {
                reads_sfu.push(message);
            }
        }
        let received_at = Instant::now();
        for m in reads_sfu.drain(..) {
            let RTCMessage::RtpPacket(track_id, p) = m else {
                continue;
            };
            if in_level.is_none() {
                let s0 = &mut w.sfu[0];
                let rid = *s0.tracks.get(&track_id).ok_or("unknown track")?;
                in_level = s0.pc.rtp_receiver(rid).and_then(|mut r| {
                    r.get_parameters()
                        .rtp_parameters
                        .header_extensions
                        .iter()
                        .find(|h| h.uri == AUDIO_LEVEL_URI)
                        .and_then(|h| u8::try_from(h.id).ok())
                });
            }
            let level = in_level
                .and_then(|id| p.header.get_extension(id))
                .and_then(|b| b.first().copied());
            for &(i, id, ssrc, opt, oext) in &outs {
                let mut header = Header {
                    version: 2,
                    marker: p.header.marker,
                    payload_type: opt,
                    sequence_number: p.header.sequence_number.wrapping_add(offsets[i]),
                    timestamp: p.header.timestamp,
                    ssrc,
                    ..Default::default()
                };
                if let Some(l) = level {
                    header.extension = true;
                    header.extension_profile = 0xBEDE;
                    header.extensions = vec![Extension {
                        id: oext,
                        payload: level_payload(l),
                    }];
                }
                let node = &mut w.sfu[i];
                node.pc
                    .rtp_sender(id)
                    .ok_or("no SFU sender")?
                    .write_rtp(
                        now,
                        rtc::rtp::Packet {
                            header,
                            payload: p.payload.clone(),
                        },
                    )
                    .map_err(e)?;
                node.flush(&mut out);
            }
        }
        if timed {
            forward_ns += t.elapsed().as_nanos();
            receive_ns += (received_at - t).as_nanos();
        }

        for d in out {
            if d.to != sfu_addr() && is_rtp(&d.data) {
                bytes_out = d.data.len();
            }
            w.net.push_back(d);
        }
        w.settle(now, &mut reads)?;
        for r in reads.iter_mut().skip(1) {
            for p in r.drain(..) {
                if timed && p.payload[..] == data[..] {
                    received += 1;
                }
            }
        }
        reads[0].clear();
        let next = now + FRAME;
        while let Some(t) = w.next_timer().filter(|&t| t < next) {
            let t = t.max(now);
            w.settle(t, &mut reads)?;
            if w.next_timer().is_some_and(|n| n <= t) {
                break;
            }
        }
    }
    if !w.sfu.iter().all(|n| n.connected) {
        return Err("rtc: the SFU side lost its connections during the run".into());
    }
    eprintln!(
        "rtc: connected after {connected_after:?} of virtual time, {} s of media forwarded",
        (WARMUP + packets) as u64 * FRAME.as_millis() as u64 / 1000
    );
    Ok(Report {
        packets_in: packets as u64,
        forward_ns,
        receive_ns,
        other_ns: w.other_ns,
        received,
        srtp_profile: if gcm256 {
            "SRTP_AEAD_AES_256_GCM".into()
        } else {
            "SRTP_AEAD_AES_128_GCM".into()
        },
        bytes_in,
        bytes_out,
    })
}
