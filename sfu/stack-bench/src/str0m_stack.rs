//! str0m in RTP mode: the SFU side is four `Rtc`s (ICE lite, controlled, DTLS passive), the
//! clients four more; connected through the direct API (no SDP: the SFU's answer adds nothing
//! to the per-packet work) with real ICE checks, a DTLS handshake and SRTP.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::net::{Datagram, client_addr, client_of, is_rtp, payload, sfu_addr};
use crate::{FRAME, RECEIVERS, Report, TICKS, WARMUP};

const SENDER_SSRC: u32 = 0x5e0d_0001;

fn receiver_ssrc(i: usize) -> Ssrc {
    (0x5f00_0000 + i as u32).into()
}

struct Node {
    rtc: Rtc,
    next: Instant,
}

impl Node {
    /// Drains the node's output: datagrams to `net`, events to `events`.
    fn poll(
        &mut self,
        net: &mut VecDeque<Datagram>,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        loop {
            match self.rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => {
                    self.next = t;
                    return Ok(());
                }
                Output::Transmit(t) => net.push_back(Datagram {
                    from: t.source,
                    to: t.destination,
                    data: t.contents.into(),
                }),
                Output::Event(e) => events.push(e),
            }
        }
    }

    fn receive(&mut self, now: Instant, d: &Datagram) -> Result<(), String> {
        let contents = d.data.as_slice().try_into().map_err(|e| format!("{e:?}"))?;
        self.rtc
            .handle_input(Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: d.from,
                    destination: d.to,
                    contents,
                },
            ))
            .map_err(|e| e.to_string())
    }
}

struct World {
    sfu: Vec<Node>,
    clients: Vec<Node>,
    net: VecDeque<Datagram>,
    /// Events of the SFU side and of each client since last looked at.
    sfu_events: Vec<Event>,
    client_events: Vec<Vec<Event>>,
    /// SFU-side nanoseconds spent outside the forwarding.
    other_ns: u128,
}

impl World {
    /// Runs due timers and delivers datagrams until nothing is in flight.
    fn settle(&mut self, now: Instant) -> Result<(), String> {
        for node in &mut self.sfu {
            if node.next <= now {
                let t = Instant::now();
                node.rtc
                    .handle_input(Input::Timeout(now))
                    .map_err(|e| e.to_string())?;
                node.poll(&mut self.net, &mut self.sfu_events)?;
                self.other_ns += t.elapsed().as_nanos();
            }
        }
        for (i, node) in self.clients.iter_mut().enumerate() {
            if node.next <= now {
                node.rtc
                    .handle_input(Input::Timeout(now))
                    .map_err(|e| e.to_string())?;
                node.poll(&mut self.net, &mut self.client_events[i])?;
            }
        }
        while let Some(d) = self.net.pop_front() {
            if d.to == sfu_addr() {
                let i = client_of(d.from).ok_or("datagram from nowhere")?;
                let t = Instant::now();
                self.sfu[i].receive(now, &d)?;
                self.sfu[i].poll(&mut self.net, &mut self.sfu_events)?;
                self.other_ns += t.elapsed().as_nanos();
            } else {
                let i = client_of(d.to).ok_or("datagram to nowhere")?;
                self.clients[i].receive(now, &d)?;
                self.clients[i].poll(&mut self.net, &mut self.client_events[i])?;
            }
        }
        Ok(())
    }

    fn next_timer(&self) -> Instant {
        self.sfu
            .iter()
            .chain(self.clients.iter())
            .map(|n| n.next)
            .min()
            .unwrap_or_else(Instant::now)
    }
}

fn opus_pt(rtc: &Rtc) -> Result<Pt, String> {
    rtc.codec_config()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
        .ok_or_else(|| "no opus".to_owned())
}

/// Connects the SFU side and the clients, then forwards `packets` (after a warm-up).
pub fn run(packets: usize, _rtc_gcm256: bool) -> Result<Report, String> {
    str0m::crypto::from_feature_flags().install_process_default();
    let start = Instant::now();
    let mut now = start;
    let mut sfu = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut s = Rtc::builder()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .build(now);
        let mut c = Rtc::builder().set_rtp_mode(true).build(now);
        let sc = Candidate::host(sfu_addr(), "udp").map_err(|e| e.to_string())?;
        let cc = Candidate::host(client_addr(i), "udp").map_err(|e| e.to_string())?;
        s.add_local_candidate(sc.clone());
        s.add_remote_candidate(cc.clone());
        c.add_local_candidate(cc);
        c.add_remote_candidate(sc);
        let (fs, fc) = (
            s.direct_api().local_dtls_fingerprint().clone(),
            c.direct_api().local_dtls_fingerprint().clone(),
        );
        s.direct_api().set_remote_fingerprint(fc);
        c.direct_api().set_remote_fingerprint(fs);
        let (ks, kc) = (
            s.direct_api().local_ice_credentials(),
            c.direct_api().local_ice_credentials(),
        );
        s.direct_api().set_remote_ice_credentials(kc);
        c.direct_api().set_remote_ice_credentials(ks);
        s.direct_api().set_ice_controlling(false);
        c.direct_api().set_ice_controlling(true);
        s.direct_api()
            .start_dtls(false)
            .map_err(|e| e.to_string())?;
        c.direct_api().start_dtls(true).map_err(|e| e.to_string())?;
        sfu.push(Node { rtc: s, next: now });
        clients.push(Node { rtc: c, next: now });
    }
    let mut w = World {
        sfu,
        clients,
        net: VecDeque::new(),
        sfu_events: Vec::new(),
        client_events: (0..4).map(|_| Vec::new()).collect(),
        other_ns: 0,
    };
    // Connect: run the clock from timer to timer until all eight are connected.
    let deadline = start + Duration::from_secs(30);
    loop {
        w.settle(now)?;
        let all = w
            .sfu
            .iter()
            .chain(w.clients.iter())
            .all(|n| n.rtc.is_connected());
        if all {
            break;
        }
        if now > deadline {
            return Err("str0m: not connected after 30 s of virtual time".into());
        }
        now = w.next_timer().max(now + Duration::from_millis(1));
    }
    let connected_after = now - start;

    // Media: one audio m-line everywhere; the sender's stream into sfu[0], one stream out of
    // sfu[i] to each receiver i.
    let mid: Mid = "a0".into();
    let sender_ssrc: Ssrc = SENDER_SSRC.into();
    w.clients[0]
        .rtc
        .direct_api()
        .declare_media(mid, MediaKind::Audio);
    w.clients[0]
        .rtc
        .direct_api()
        .declare_stream_tx(sender_ssrc, None, mid, None);
    w.sfu[0]
        .rtc
        .direct_api()
        .declare_media(mid, MediaKind::Audio);
    w.sfu[0]
        .rtc
        .direct_api()
        .expect_stream_rx(sender_ssrc, None, mid, None);
    for i in 1..=RECEIVERS {
        w.sfu[i]
            .rtc
            .direct_api()
            .declare_media(mid, MediaKind::Audio);
        w.sfu[i]
            .rtc
            .direct_api()
            .declare_stream_tx(receiver_ssrc(i), None, mid, None);
        w.clients[i]
            .rtc
            .direct_api()
            .declare_media(mid, MediaKind::Audio);
        w.clients[i]
            .rtc
            .direct_api()
            .expect_stream_rx(receiver_ssrc(i), None, mid, None);
    }
    let pt = opus_pt(&w.clients[0].rtc)?;
    let sfu_pt = opus_pt(&w.sfu[1].rtc)?;
    w.sfu_events.clear();
    for e in &mut w.client_events {
        e.clear();
    }

    let mut forward_ns = 0u128;
    let mut receive_ns = 0u128;
    let mut received = 0u64;
    let mut bytes_in = 0;
    let mut bytes_out = 0;
    let mut out = VecDeque::new();
    let mut scratch = Vec::new();
    // Each receiver's stream starts at its own sequence number.
    let offsets: [u64; 4] = [0, 1_000, 20_000, 40_000];
    for n in 0..(WARMUP + packets) as u64 {
        let timed = n >= WARMUP as u64;
        if n == WARMUP as u64 {
            w.other_ns = 0;
        }
        now += FRAME;
        // The sender's packet, made untimed.
        let data = payload(n);
        {
            let mut api = w.clients[0].rtc.direct_api();
            let tx = api.stream_tx(&sender_ssrc).ok_or("no sender stream")?;
            let ext = ExtensionValues {
                audio_level: Some(-((n % 100) as i8)),
                voice_activity: Some(true),
                ..Default::default()
            };
            tx.write_rtp(
                RtpWrite::new(pt, SeqNo::from(n), n as u32 * TICKS, now, data.clone())
                    .ext_vals(ext),
            );
        }
        w.clients[0]
            .rtc
            .handle_input(Input::Timeout(now))
            .map_err(|e| e.to_string())?;
        let mut sent = VecDeque::new();
        w.clients[0].poll(&mut sent, &mut w.client_events[0])?;
        let media = sent
            .iter()
            .position(|d| d.to == sfu_addr() && is_rtp(&d.data))
            .and_then(|p| sent.remove(p))
            .ok_or("the sender made no SRTP datagram")?;
        w.net.extend(sent);
        bytes_in = media.data.len();

        // The SFU side's forwarding, timed.
        let t = Instant::now();
        w.sfu[0].receive(now, &media)?;
        w.sfu[0].poll(&mut w.net, &mut scratch)?;
        let received_at = Instant::now();
        for e in scratch.drain(..) {
            let Event::RtpPacket(p) = e else {
                w.sfu_events.push(e);
                continue;
            };
            let ext = ExtensionValues {
                audio_level: p.header.ext_vals.audio_level,
                voice_activity: p.header.ext_vals.voice_activity,
                ..Default::default()
            };
            for (i, offset) in offsets.iter().enumerate().skip(1) {
                let ssrc = receiver_ssrc(i);
                let mut api = w.sfu[i].rtc.direct_api();
                let Some(tx) = api.stream_tx(&ssrc) else {
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(
                        sfu_pt,
                        SeqNo::from(*p.seq_no + offset),
                        p.header.timestamp,
                        now,
                        p.payload.clone(),
                    )
                    .ext_vals(ext.clone()),
                );
            }
        }
        // str0m sends what was written on its next timeout (its pacer's turn), so a
        // forwarding SFU hands each connection the time after writing.
        for i in 1..=RECEIVERS {
            w.sfu[i]
                .rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| e.to_string())?;
            w.sfu[i].poll(&mut out, &mut w.sfu_events)?;
        }
        if timed {
            forward_ns += t.elapsed().as_nanos();
            receive_ns += (received_at - t).as_nanos();
        }

        // The receivers decrypt, untimed.
        for d in out.drain(..) {
            bytes_out = d.data.len();
            w.net.push_back(d);
        }
        w.settle(now)?;
        for evs in w.client_events.iter_mut().skip(1) {
            for e in evs.drain(..) {
                if let Event::RtpPacket(p) = e
                    && timed
                    && *p.payload == data[..]
                {
                    received += 1;
                }
            }
        }
        w.client_events[0].clear();
        w.sfu_events.clear();
        // Timers due before the next packet.
        let next = now + FRAME;
        while w.next_timer() < next {
            let t = w.next_timer().max(now);
            w.settle(t)?;
            if w.next_timer() <= t {
                break;
            }
        }
    }
    if !w.sfu.iter().all(|n| n.rtc.is_connected()) {
        return Err("str0m: the SFU side lost its connections during the run".into());
    }
    eprintln!(
        "str0m: connected after {connected_after:?} of virtual time, {} s of media forwarded",
        (WARMUP + packets) as u64 * FRAME.as_millis() as u64 / 1000
    );
    Ok(Report {
        packets_in: packets as u64,
        forward_ns,
        receive_ns,
        other_ns: w.other_ns,
        received,
        srtp_profile: "SRTP_AEAD_AES_256_GCM".into(),
        bytes_in,
        bytes_out,
    })
}
