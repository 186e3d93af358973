//! The Sans-I/O forwarding core: rooms, members, top-N speaker selection and the header
//! rewriting that keeps each outgoing track continuous. No sockets, clocks or threads: the
//! caller passes `now` and the RTP header fields; payloads never come in here, the caller
//! forwards them byte for byte.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How a room chooses what to forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardConfig {
    /// The most audio tracks a receiver gets (the N loudest other speakers).
    pub audio_slots: usize,
    /// The most members per room.
    pub max_participants: usize,
    /// Packets per second a sender may send (audio and video together); excess is dropped.
    pub max_pps: u32,
    /// Weight of each new RFC 6464 level in the smoothed loudness (per packet, 0..1).
    pub smoothing: f32,
    /// How much louder (dB) a challenger must be than the quietest forwarded speaker to take
    /// its slot; stops the selection flapping between similar speakers.
    pub hysteresis_db: f32,
    /// A member that sent no audio for this long is not a speaker.
    pub silence_after: Duration,
    /// How often the speaker selection is recomputed.
    pub reselect_every: Duration,
    /// The least time between two keyframe requests relayed to one publisher.
    pub keyframe_interval: Duration,
    /// A receiver reporting at least this fraction lost (RTCP, in 256ths) on any track is
    /// short of bandwidth: its video stops, its audio goes on.
    pub loss_to_pause_video: u8,
    /// How long video stays off for such a receiver after its last lossy report.
    pub video_pause: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            audio_slots: 3,
            max_participants: 50,
            max_pps: 500,
            smoothing: 0.15,
            hysteresis_db: 6.0,
            silence_after: Duration::from_secs(1),
            reselect_every: Duration::from_millis(50),
            keyframe_interval: Duration::from_millis(300),
            // About 10 %.
            loss_to_pause_video: 26,
            video_pause: Duration::from_secs(5),
        }
    }
}

/// Why a member could not join.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The room already has its maximum of participants.
    #[error("room is full ({limit} participants)")]
    RoomFull {
        /// The limit.
        limit: usize,
    },
    /// The SFU already hosts its maximum of rooms.
    #[error("too many rooms ({limit})")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The participant id is already in the room.
    #[error("participant already in the room")]
    AlreadyJoined,
    /// The offer could not be used.
    #[error("bad offer: {0}")]
    BadOffer(String),
    /// The SFU is shutting down or a worker is gone.
    #[error("sfu unavailable")]
    Unavailable,
}

impl JoinError {
    /// The reason as a protocol word: `room_full`, `too_many_rooms`, `bad_offer` (also for a
    /// participant already in the room) or `unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            JoinError::RoomFull { .. } => "room_full",
            JoinError::TooManyRooms { .. } => "too_many_rooms",
            JoinError::AlreadyJoined | JoinError::BadOffer(_) => "bad_offer",
            JoinError::Unavailable => "unavailable",
        }
    }
}

/// Why a packet was not forwarded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropCause {
    /// The sender is over its packets-per-second limit.
    #[error("rate limited")]
    RateLimited,
    /// The sender is not (or no longer) a member.
    #[error("unknown participant")]
    UnknownParticipant,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opus audio, 48 kHz clock.
    Audio,
    /// VP8 video, 90 kHz clock.
    Video,
}

impl Kind {
    fn clock_rate(self) -> u32 {
        match self {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }
}

/// The header fields of an incoming RTP packet that forwarding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPacket {
    /// The sender's SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RFC 6464 level in -dBov (0 loudest, 127 silence), audio only.
    pub level: Option<u8>,
}

/// One copy of a packet to send: to which member, on which of its outgoing tracks, with which
/// rewritten sequence number and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The receiving member.
    pub to: String,
    /// The kind of the outgoing track.
    pub kind: Kind,
    /// Index of the outgoing track of that kind.
    pub slot: usize,
    /// Rewritten sequence number.
    pub seq: u16,
    /// Rewritten timestamp.
    pub timestamp: u32,
}

/// Maps one source after another onto one outgoing track, so the receiver sees one stream
/// whose sequence numbers and timestamps continue across a change of source.
#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    /// (source ssrc, seq delta, timestamp delta) of the current source.
    mapping: Option<(u32, u16, u32)>,
    /// Highest (seq, timestamp) sent and when.
    last: Option<(u16, u32, Instant)>,
}

impl Rewriter {
    /// A track with the given RTP clock rate.
    pub fn new(clock_rate: u32) -> Self {
        Rewriter {
            clock_rate,
            mapping: None,
            last: None,
        }
    }

    /// Forgets the current source; the next packet starts a new one.
    pub fn switch(&mut self) {
        self.mapping = None;
    }

    /// The outgoing (seq, timestamp) for a packet of source `ssrc`.
    pub fn rewrite(&mut self, now: Instant, ssrc: u32, seq: u16, timestamp: u32) -> (u16, u32) {
        let (seq_delta, ts_delta) = match self.mapping {
            Some((s, sd, td)) if s == ssrc => (sd, td),
            _ => {
                let (sd, td) = match self.last {
                    // Continue right after the last packet sent, the timestamp advanced by the
                    // wall time since then (at least one tick) so playout stays in order.
                    Some((last_seq, last_ts, at)) => {
                        let elapsed = now.saturating_duration_since(at);
                        let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate))
                            .clamp(1.0, f64::from(u32::MAX / 2))
                            as u32;
                        (
                            last_seq.wrapping_add(1).wrapping_sub(seq),
                            last_ts.wrapping_add(ticks).wrapping_sub(timestamp),
                        )
                    }
                    None => (0, 0),
                };
                self.mapping = Some((ssrc, sd, td));
                (sd, td)
            }
        };
        let out = (
            seq.wrapping_add(seq_delta),
            timestamp.wrapping_add(ts_delta),
        );
        let newer = match self.last {
            Some((last_seq, _, _)) => {
                let diff = out.0.wrapping_sub(last_seq);
                diff != 0 && diff < 0x8000
            }
            None => true,
        };
        if newer {
            self.last = Some((out.0, out.1, now));
        }
        out
    }
}

/// Smoothed loudness of one member, from its RFC 6464 levels.
#[derive(Debug, Clone, Default)]
struct Speech {
    /// Smoothed loudness in dB above -127 dBov (higher is louder).
    loudness: f32,
    last_audio: Option<Instant>,
}

/// Fixed-window packets-per-second counter.
#[derive(Debug, Clone, Default)]
struct RateWindow {
    start: Option<Instant>,
    count: u32,
}

impl RateWindow {
    fn allow(&mut self, now: Instant, limit: u32) -> bool {
        match self.start {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => {}
            _ => {
                self.start = Some(now);
                self.count = 0;
            }
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }
}

#[derive(Debug, Clone)]
struct Slot {
    source: Option<String>,
    rewriter: Rewriter,
}

impl Slot {
    fn new(kind: Kind) -> Self {
        Slot {
            source: None,
            rewriter: Rewriter::new(kind.clock_rate()),
        }
    }

    fn set(&mut self, source: Option<String>) {
        if self.source != source {
            self.source = source;
            self.rewriter.switch();
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    audio: Vec<Slot>,
    video: Vec<Slot>,
    speech: Speech,
    rate: RateWindow,
    publishes_video: bool,
    last_keyframe_request: Option<Instant>,
    /// Video to this receiver is off until then (its downlink reported loss).
    video_paused_until: Option<Instant>,
}

/// One room: its members and what each receives.
#[derive(Debug, Clone)]
pub struct Room {
    config: ForwardConfig,
    members: BTreeMap<String, Member>,
    last_select: Option<Instant>,
    keyframe_requests: Vec<String>,
    /// Video packets not sent to receivers short of bandwidth, since the last take.
    shed: u64,
}

impl Room {
    /// An empty room.
    pub fn new(config: ForwardConfig) -> Self {
        Room {
            config,
            members: BTreeMap::new(),
            last_select: None,
            keyframe_requests: Vec::new(),
            shed: 0,
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    /// Checks that `id` could join now.
    pub fn can_add(&self, id: &str) -> Result<(), JoinError> {
        if self.members.contains_key(id) {
            return Err(JoinError::AlreadyJoined);
        }
        if self.members.len() >= self.config.max_participants {
            return Err(JoinError::RoomFull {
                limit: self.config.max_participants,
            });
        }
        Ok(())
    }

    /// Adds a member that receives on `audio_slots` audio tracks (capped at the configured N)
    /// and `video_slots` video tracks. Returns the number of audio slots used.
    pub fn add(
        &mut self,
        id: &str,
        audio_slots: usize,
        video_slots: usize,
    ) -> Result<usize, JoinError> {
        self.can_add(id)?;
        let audio = audio_slots.min(self.config.audio_slots);
        self.members.insert(
            id.to_owned(),
            Member {
                audio: (0..audio).map(|_| Slot::new(Kind::Audio)).collect(),
                video: (0..video_slots).map(|_| Slot::new(Kind::Video)).collect(),
                speech: Speech::default(),
                rate: RateWindow::default(),
                publishes_video: false,
                last_keyframe_request: None,
                video_paused_until: None,
            },
        );
        self.assign_video();
        self.last_select = None;
        Ok(audio)
    }

    /// Removes a member and every slot it was forwarded on. Returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let was = self.members.remove(id).is_some();
        for m in self.members.values_mut() {
            for slot in m.audio.iter_mut().chain(m.video.iter_mut()) {
                if slot.source.as_deref() == Some(id) {
                    slot.set(None);
                }
            }
        }
        self.assign_video();
        self.last_select = None;
        was
    }

    /// Which member each of `receiver`'s audio slots carries.
    pub fn audio_sources(&self, receiver: &str) -> Vec<Option<String>> {
        self.members
            .get(receiver)
            .map(|m| m.audio.iter().map(|s| s.source.clone()).collect())
            .unwrap_or_default()
    }

    /// Which member each of `receiver`'s video slots carries.
    pub fn video_sources(&self, receiver: &str) -> Vec<Option<String>> {
        self.members
            .get(receiver)
            .map(|m| m.video.iter().map(|s| s.source.clone()).collect())
            .unwrap_or_default()
    }

    /// An audio packet from `from`: updates its loudness and returns where it goes.
    pub fn on_audio(
        &mut self,
        now: Instant,
        from: &str,
        packet: InPacket,
    ) -> Result<Vec<Route>, DropCause> {
        let max_pps = self.config.max_pps;
        let smoothing = self.config.smoothing.clamp(0.0, 1.0);
        let m = self
            .members
            .get_mut(from)
            .ok_or(DropCause::UnknownParticipant)?;
        if !m.rate.allow(now, max_pps) {
            return Err(DropCause::RateLimited);
        }
        let loudness = packet.level.map_or(0.0, |l| 127.0 - f32::from(l.min(127)));
        m.speech.loudness = match m.speech.last_audio {
            Some(_) => m.speech.loudness + smoothing * (loudness - m.speech.loudness),
            None => loudness,
        };
        m.speech.last_audio = Some(now);
        let due = self
            .last_select
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.reselect_every);
        if due {
            self.select(now);
        }
        Ok(self.routes(now, from, Kind::Audio, packet))
    }

    /// A video packet from `from`: returns where it goes.
    pub fn on_video(
        &mut self,
        now: Instant,
        from: &str,
        packet: InPacket,
    ) -> Result<Vec<Route>, DropCause> {
        let max_pps = self.config.max_pps;
        let m = self
            .members
            .get_mut(from)
            .ok_or(DropCause::UnknownParticipant)?;
        if !m.rate.allow(now, max_pps) {
            return Err(DropCause::RateLimited);
        }
        if !m.publishes_video {
            m.publishes_video = true;
            self.assign_video();
        }
        Ok(self.routes(now, from, Kind::Video, packet))
    }

    /// A keyframe request (PLI or FIR) from `receiver` about its video slot `slot`: the
    /// publisher to relay it to, unless one was relayed to it very recently.
    pub fn on_keyframe_request(
        &mut self,
        now: Instant,
        receiver: &str,
        slot: usize,
    ) -> Option<String> {
        let publisher = self
            .members
            .get(receiver)?
            .video
            .get(slot)?
            .source
            .clone()?;
        self.request_keyframe(now, &publisher).then_some(publisher)
    }

    /// A receiver's RTCP report of the fraction lost (in 256ths) on one of its tracks. Enough
    /// loss turns its video off for a while, so its audio keeps the bandwidth.
    pub fn on_receiver_loss(&mut self, now: Instant, receiver: &str, fraction_lost: u8) {
        let (threshold, pause) = (self.config.loss_to_pause_video, self.config.video_pause);
        if fraction_lost < threshold {
            return;
        }
        if let Some(m) = self.members.get_mut(receiver) {
            m.video_paused_until = Some(now + pause);
        }
    }

    /// Video packets withheld from receivers short of bandwidth since the last call.
    pub fn take_shed(&mut self) -> u64 {
        std::mem::take(&mut self.shed)
    }

    /// Publishers that need a keyframe because a receiver started getting their video.
    pub fn take_keyframe_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.keyframe_requests)
    }

    fn request_keyframe(&mut self, now: Instant, publisher: &str) -> bool {
        let interval = self.config.keyframe_interval;
        let Some(m) = self.members.get_mut(publisher) else {
            return false;
        };
        if m.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return false;
        }
        m.last_keyframe_request = Some(now);
        true
    }

    fn routes(&mut self, now: Instant, from: &str, kind: Kind, p: InPacket) -> Vec<Route> {
        let mut out = Vec::new();
        let mut resumed = false;
        for (id, m) in self.members.iter_mut() {
            if id == from {
                continue;
            }
            if kind == Kind::Video
                && let Some(until) = m.video_paused_until
                && m.video.iter().any(|s| s.source.as_deref() == Some(from))
            {
                if now < until {
                    self.shed += 1;
                    continue;
                }
                // Back on: the receiver needs a keyframe to show anything.
                m.video_paused_until = None;
                resumed = true;
            }
            let slots = match kind {
                Kind::Audio => &mut m.audio,
                Kind::Video => &mut m.video,
            };
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.source.as_deref() == Some(from) {
                    let (seq, timestamp) = slot.rewriter.rewrite(now, p.ssrc, p.seq, p.timestamp);
                    out.push(Route {
                        to: id.clone(),
                        kind,
                        slot: i,
                        seq,
                        timestamp,
                    });
                }
            }
        }
        if resumed && !self.keyframe_requests.iter().any(|k| k == from) {
            self.keyframe_requests.push(from.to_owned());
        }
        out
    }

    /// Recomputes every receiver's audio slots: the loudest other speakers, where a speaker
    /// already forwarded keeps its slot unless a challenger is louder by the hysteresis.
    fn select(&mut self, now: Instant) {
        self.last_select = Some(now);
        let silence_after = self.config.silence_after;
        // Speakers heard recently, loudest first (ties by id, so the order is stable).
        let mut ranked: Vec<(String, f32)> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.speech
                    .last_audio
                    .is_some_and(|t| now.saturating_duration_since(t) < silence_after)
            })
            .map(|(id, m)| (id.clone(), m.speech.loudness))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let hysteresis = self.config.hysteresis_db;
        let loudness = |id: &str| ranked.iter().find(|(r, _)| r == id).map(|(_, l)| *l);
        let mut changes: Vec<(String, Vec<Option<String>>)> = Vec::new();
        for (rid, m) in self.members.iter() {
            let mut slots: Vec<Option<String>> = m
                .audio
                .iter()
                .map(|s| s.source.clone().filter(|src| loudness(src).is_some()))
                .collect();
            if slots.is_empty() {
                continue;
            }
            for (cand, level) in ranked.iter().filter(|(id, _)| id != rid) {
                if slots.iter().any(|s| s.as_deref() == Some(cand.as_str())) {
                    continue;
                }
                if let Some(free) = slots.iter_mut().find(|s| s.is_none()) {
                    *free = Some(cand.clone());
                    continue;
                }
                // The quietest incumbent.
                let weakest = slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_deref().and_then(&loudness).map(|l| (i, l)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                match weakest {
                    Some((i, l)) if *level > l + hysteresis => slots[i] = Some(cand.clone()),
                    // Ranked loudest first: nobody after this one can win either.
                    _ => break,
                }
            }
            let current: Vec<Option<String>> = m.audio.iter().map(|s| s.source.clone()).collect();
            if current != slots {
                changes.push((rid.clone(), slots));
            }
        }
        for (rid, slots) in changes {
            if let Some(m) = self.members.get_mut(&rid) {
                for (slot, source) in m.audio.iter_mut().zip(slots) {
                    slot.set(source);
                }
            }
        }
    }

    /// Gives each receiver's free video slots to publishers it does not see yet (in id order);
    /// a publisher keeps its slot while it stays. A new viewer needs a keyframe.
    fn assign_video(&mut self) {
        let publishers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.publishes_video)
            .map(|(id, _)| id.clone())
            .collect();
        let mut wanted = Vec::new();
        for (rid, m) in self.members.iter_mut() {
            for p in publishers.iter().filter(|p| *p != rid) {
                if m.video.iter().any(|s| s.source.as_ref() == Some(p)) {
                    continue;
                }
                if let Some(free) = m.video.iter_mut().find(|s| s.source.is_none()) {
                    free.set(Some(p.clone()));
                    wanted.push(p.clone());
                }
            }
        }
        for p in wanted {
            if !self.keyframe_requests.contains(&p) {
                self.keyframe_requests.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ForwardConfig {
        ForwardConfig {
            max_pps: 10_000,
            ..ForwardConfig::default()
        }
    }

    fn pkt(ssrc: u32, seq: u16, level: u8) -> InPacket {
        InPacket {
            ssrc,
            seq,
            timestamp: u32::from(seq) * 960,
            level: Some(level),
        }
    }

    /// Feeds 20 ms packets from every member at the given levels for `ms` milliseconds.
    fn talk(room: &mut Room, t: &mut Instant, seq: &mut u16, levels: &[(&str, u8)], ms: u64) {
        for _ in 0..ms / 20 {
            *t += Duration::from_millis(20);
            for (i, (id, level)) in levels.iter().enumerate() {
                room.on_audio(*t, id, pkt(i as u32 + 1, *seq, *level))
                    .unwrap();
            }
            *seq = seq.wrapping_add(1);
        }
    }

    fn sorted(v: Vec<Option<String>>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().flatten().collect();
        v.sort();
        v
    }

    #[test]
    fn receivers_get_the_three_loudest_others() {
        let mut room = Room::new(cfg());
        for id in ["a", "b", "c", "d", "e"] {
            room.add(id, 3, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut seq = 0;
        // Lower -dBov is louder: a > b > c > d > e.
        let levels = [("a", 10), ("b", 20), ("c", 30), ("d", 60), ("e", 90)];
        talk(&mut room, &mut t, &mut seq, &levels, 1000);
        assert_eq!(sorted(room.audio_sources("e")), ["a", "b", "c"]);
        assert_eq!(sorted(room.audio_sources("a")), ["b", "c", "d"]);
        assert_eq!(sorted(room.audio_sources("d")), ["a", "b", "c"]);
    }

    #[test]
    fn a_packet_goes_only_to_receivers_that_selected_its_sender() {
        let mut room = Room::new(cfg());
        for id in ["a", "b", "c", "d", "e"] {
            room.add(id, 3, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut seq = 0;
        let levels = [("a", 10), ("b", 20), ("c", 30), ("d", 60), ("e", 90)];
        talk(&mut room, &mut t, &mut seq, &levels, 1000);
        t += Duration::from_millis(20);
        let to: Vec<String> = room
            .on_audio(t, "e", pkt(5, seq, 90))
            .unwrap()
            .into_iter()
            .map(|r| r.to)
            .collect();
        assert!(to.is_empty(), "the quietest speaker goes nowhere: {to:?}");
        let mut to: Vec<String> = room
            .on_audio(t, "a", pkt(1, seq, 10))
            .unwrap()
            .into_iter()
            .map(|r| r.to)
            .collect();
        to.sort();
        assert_eq!(to, ["b", "c", "d", "e"], "never back to the sender");
    }

    #[test]
    fn hysteresis_keeps_a_speaker_against_a_slightly_louder_one_but_not_a_much_louder_one() {
        let mut room = Room::new(ForwardConfig {
            audio_slots: 1,
            ..cfg()
        });
        for id in ["a", "b", "r"] {
            room.add(id, 1, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut seq = 0;
        talk(
            &mut room,
            &mut t,
            &mut seq,
            &[("a", 40), ("b", 50), ("r", 127)],
            1000,
        );
        assert_eq!(room.audio_sources("r"), [Some("a".to_owned())]);
        // b is now 4 dB louder than a: within the hysteresis, a keeps the slot.
        talk(
            &mut room,
            &mut t,
            &mut seq,
            &[("a", 40), ("b", 36), ("r", 127)],
            2000,
        );
        assert_eq!(room.audio_sources("r"), [Some("a".to_owned())]);
        // 20 dB louder: b takes over within a short time.
        talk(
            &mut room,
            &mut t,
            &mut seq,
            &[("a", 40), ("b", 20), ("r", 127)],
            500,
        );
        assert_eq!(room.audio_sources("r"), [Some("b".to_owned())]);
    }

    #[test]
    fn smoothing_ignores_a_single_loud_packet() {
        let mut room = Room::new(ForwardConfig {
            audio_slots: 1,
            ..cfg()
        });
        for id in ["a", "b", "r"] {
            room.add(id, 1, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut seq = 0;
        talk(
            &mut room,
            &mut t,
            &mut seq,
            &[("a", 30), ("b", 80), ("r", 127)],
            1000,
        );
        t += Duration::from_millis(60);
        room.on_audio(t, "b", pkt(2, 999, 0)).unwrap();
        assert_eq!(room.audio_sources("r"), [Some("a".to_owned())]);
    }

    #[test]
    fn a_silent_member_loses_its_slot() {
        let mut room = Room::new(ForwardConfig {
            audio_slots: 1,
            ..cfg()
        });
        for id in ["a", "b", "r"] {
            room.add(id, 1, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut seq = 0;
        talk(
            &mut room,
            &mut t,
            &mut seq,
            &[("a", 10), ("b", 90), ("r", 127)],
            1000,
        );
        assert_eq!(room.audio_sources("r"), [Some("a".to_owned())]);
        // a stops sending (DTX or muted); b is quiet but present.
        talk(&mut room, &mut t, &mut seq, &[("b", 90), ("r", 127)], 1500);
        assert_eq!(room.audio_sources("r"), [Some("b".to_owned())]);
    }

    #[test]
    fn rewriting_keeps_a_slot_continuous_across_a_speaker_change() {
        let mut room = Room::new(ForwardConfig {
            audio_slots: 1,
            ..cfg()
        });
        for id in ["a", "b", "r"] {
            room.add(id, 1, 0).unwrap();
        }
        let mut t = Instant::now();
        let mut out = Vec::new();
        // a and b have unrelated sequence and timestamp spaces.
        let (mut sa, mut sb) = (60_000u16, 100u16);
        for step in 0..200u32 {
            t += Duration::from_millis(20);
            let (la, lb) = if step < 100 { (10, 80) } else { (80, 5) };
            for (id, ssrc, seq, level) in [("a", 11, sa, la), ("b", 22, sb, lb)] {
                let p = InPacket {
                    ssrc,
                    seq,
                    timestamp: u32::from(seq).wrapping_mul(960).wrapping_add(ssrc * 7777),
                    level: Some(level),
                };
                for r in room.on_audio(t, id, p).unwrap() {
                    if r.to == "r" {
                        out.push((id, r.seq, r.timestamp));
                    }
                }
            }
            sa = sa.wrapping_add(1);
            sb = sb.wrapping_add(1);
        }
        assert!(out.iter().any(|o| o.0 == "a") && out.iter().any(|o| o.0 == "b"));
        for w in out.windows(2) {
            assert_eq!(w[1].1, w[0].1.wrapping_add(1), "seq continuous at {w:?}");
            let dt = w[1].2.wrapping_sub(w[0].2);
            assert!(
                dt > 0 && dt < 48_000,
                "timestamp moves forward a little: {w:?}"
            );
        }
    }

    #[test]
    fn rewriter_keeps_reordering_within_a_source() {
        let mut rw = Rewriter::new(48_000);
        let t = Instant::now();
        let a = rw.rewrite(t, 1, 10, 9600);
        let c = rw.rewrite(t, 1, 12, 11520);
        let b = rw.rewrite(t, 1, 11, 10560);
        assert_eq!((b.0, c.0), (a.0 + 1, a.0 + 2));
        rw.switch();
        // The next source continues after the highest sent, not after the late one.
        let d = rw.rewrite(t + Duration::from_millis(20), 2, 500, 1);
        assert_eq!(d.0, c.0 + 1);
        assert_eq!(d.1, c.1 + 960);
    }

    #[test]
    fn the_member_over_the_limit_is_refused() {
        let mut room = Room::new(ForwardConfig {
            max_participants: 2,
            ..cfg()
        });
        room.add("a", 3, 0).unwrap();
        room.add("b", 3, 0).unwrap();
        assert_eq!(room.add("c", 3, 0), Err(JoinError::RoomFull { limit: 2 }));
        assert_eq!(room.add("a", 3, 0), Err(JoinError::AlreadyJoined));
        assert!(room.remove("a"));
        room.add("c", 3, 0).unwrap();
    }

    #[test]
    fn a_sender_over_its_rate_is_dropped_for_the_rest_of_the_second() {
        let mut room = Room::new(ForwardConfig {
            max_pps: 5,
            ..cfg()
        });
        room.add("a", 3, 0).unwrap();
        room.add("b", 3, 0).unwrap();
        let t = Instant::now();
        for i in 0..5 {
            assert!(room.on_audio(t, "a", pkt(1, i, 10)).is_ok());
        }
        assert_eq!(
            room.on_audio(t, "a", pkt(1, 5, 10)),
            Err(DropCause::RateLimited)
        );
        // The other sender has its own budget.
        assert!(room.on_audio(t, "b", pkt(2, 0, 10)).is_ok());
        let later = t + Duration::from_millis(1001);
        assert!(room.on_audio(later, "a", pkt(1, 6, 10)).is_ok());
        assert_eq!(
            room.on_audio(later, "x", pkt(9, 0, 10)),
            Err(DropCause::UnknownParticipant)
        );
    }

    #[test]
    fn keyframe_requests_reach_the_publisher_of_the_slot() {
        let mut room = Room::new(cfg());
        for id in ["a", "b", "c"] {
            room.add(id, 3, 2).unwrap();
        }
        let t = Instant::now();
        let v = |seq| InPacket {
            ssrc: 7,
            seq,
            timestamp: 0,
            level: None,
        };
        room.on_video(t, "b", v(1)).unwrap();
        room.on_video(t, "c", v(1)).unwrap();
        // New viewers of b and c need keyframes.
        assert_eq!(room.take_keyframe_requests(), ["b", "c"]);
        assert_eq!(
            room.video_sources("a"),
            [Some("b".to_owned()), Some("c".to_owned())]
        );
        assert_eq!(room.video_sources("b"), [Some("c".to_owned()), None]);
        let later = t + Duration::from_secs(1);
        assert_eq!(
            room.on_keyframe_request(later, "a", 1),
            Some("c".to_owned())
        );
        // Throttled: a second request right after is absorbed.
        assert_eq!(room.on_keyframe_request(later, "b", 0), None);
        assert_eq!(
            room.on_keyframe_request(later + Duration::from_secs(1), "a", 0),
            Some("b".to_owned())
        );
        // An empty slot or unknown receiver goes nowhere.
        assert_eq!(room.on_keyframe_request(later, "b", 1), None);
        assert_eq!(room.on_keyframe_request(later, "zz", 0), None);
        // Video goes to every other viewer, on the slot carrying the publisher.
        let routes = room.on_video(later, "c", v(2)).unwrap();
        let mut to: Vec<(String, usize)> = routes.into_iter().map(|r| (r.to, r.slot)).collect();
        to.sort();
        assert_eq!(to, [("a".to_owned(), 1), ("b".to_owned(), 0)]);
    }

    #[test]
    fn a_receiver_reporting_loss_loses_video_but_keeps_audio_then_gets_it_back_with_a_keyframe() {
        let mut room = Room::new(cfg());
        for id in ["a", "b", "c"] {
            room.add(id, 3, 1).unwrap();
        }
        let t0 = Instant::now();
        let pkt = |seq, level| InPacket {
            ssrc: 1,
            seq,
            timestamp: 0,
            level,
        };
        room.on_video(t0, "a", pkt(1, None)).unwrap();
        room.take_keyframe_requests();
        // b's downlink loses 5 %: nothing changes.
        room.on_receiver_loss(t0, "b", 13);
        let to = |r: Vec<Route>| r.into_iter().map(|r| r.to).collect::<Vec<_>>();
        assert_eq!(
            to(room.on_video(t0, "a", pkt(2, None)).unwrap()),
            ["b", "c"]
        );
        // 20 %: b's video stops, c's does not, and b still gets a's audio.
        room.on_receiver_loss(t0, "b", 51);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(to(room.on_video(t1, "a", pkt(3, None)).unwrap()), ["c"]);
        assert_eq!(room.take_shed(), 1);
        assert!(to(room.on_audio(t1, "a", pkt(1, Some(20))).unwrap()).contains(&"b".to_owned()));
        assert!(room.take_keyframe_requests().is_empty());
        // After the pause, video comes back, and a is asked for a keyframe.
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(
            to(room.on_video(t2, "a", pkt(4, None)).unwrap()),
            ["b", "c"]
        );
        assert_eq!(room.take_keyframe_requests(), ["a"]);
        assert_eq!(room.take_shed(), 0);
    }
}
