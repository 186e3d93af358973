//! Trickle ICE bookkeeping of a two-party call (`docs/call-protocol.md`, "Trickle ICE"): which
//! of our candidates still have to go to the peer, and which of the peer's to apply now, to
//! hold until their description is applied, or to drop. Sans-I/O.

use std::collections::{HashSet, VecDeque};

use super::protocol::RemoteCandidate;

/// Candidates taken from the peer per ICE generation (user fragment); more are dropped.
pub(crate) const MAX_CANDIDATES_PER_GENERATION: usize = 64;
/// The peer's candidates held until the description of their generation is applied.
pub(crate) const MAX_HELD_CANDIDATES: usize = 32;
/// Earlier generations of the peer remembered, so their late candidates are dropped.
const OLD_GENERATIONS: usize = 8;

/// The ICE user fragment of a description (its first `a=ice-ufrag`).
pub(crate) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// What makes two candidates the same for the peer: component, transport, address, port and
/// type (`candidate:<foundation> <component> <transport> <priority> <address> <port> typ
/// <type> ...`).
fn candidate_key(candidate: &str) -> Option<String> {
    let value = candidate
        .strip_prefix("a=")
        .unwrap_or(candidate)
        .strip_prefix("candidate:")?;
    let words: Vec<&str> = value.split_ascii_whitespace().collect();
    match words.as_slice() {
        [_, component, transport, _, address, port, "typ", kind, ..] => Some(format!(
            "{component} {} {address} {port} {kind}",
            transport.to_ascii_lowercase()
        )),
        _ => None,
    }
}

/// A candidate of ours to send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub candidate: String,
    pub sdp_mid: String,
    pub ufrag: String,
}

/// Our side: the description we sent last and what it already holds.
#[derive(Debug, Default)]
pub(crate) struct LocalTrickle {
    /// The user fragment of the description we sent last (`None`: none sent yet).
    ufrag: Option<String>,
    /// The media id of its first m-line (where bundled candidates belong).
    mid: String,
    /// The candidates it holds, and those sent since.
    known: HashSet<String>,
    /// Candidates found since the description went out.
    found_after: usize,
    /// Whether this generation's end was sent.
    ended: bool,
}

impl LocalTrickle {
    /// We sent the description `sdp`.
    pub fn described(&mut self, sdp: &str) {
        let ufrag = ice_ufrag(sdp).map(str::to_owned);
        if ufrag != self.ufrag {
            self.ended = false;
        }
        self.ufrag = ufrag;
        self.mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map_or_else(|| "0".to_owned(), |m| m.trim().to_owned());
        self.known = sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .filter_map(candidate_key)
            .collect();
        self.found_after = 0;
    }

    /// Our gathering found `candidate`: what to send, unless no description went out yet
    /// (the candidate will be in it) or the peer already has it.
    pub fn candidate(&mut self, candidate: &str) -> Option<Outgoing> {
        let ufrag = self.ufrag.clone()?;
        let key = candidate_key(candidate)?;
        if !self.known.insert(key) {
            return None;
        }
        self.found_after += 1;
        Some(Outgoing {
            candidate: candidate.to_owned(),
            sdp_mid: self.mid.clone(),
            ufrag,
        })
    }

    /// Our gathering ended: the user fragment to send the end of candidates for, once per
    /// generation, and only after a description went out.
    pub fn end(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let ufrag = self.ufrag.clone()?;
        self.ended = true;
        Some(ufrag)
    }

    /// Candidates our gathering found after the last description went out.
    pub fn found_after(&self) -> usize {
        self.found_after
    }
}

/// What to do with one of the peer's candidates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Add it now (the `candidate:...` string).
    Apply(String),
    /// Its description has not been applied yet: held.
    Held,
    /// Dropped, and why.
    Dropped(&'static str),
}

/// The peer's side: the generation applied last, what it took, what waits.
#[derive(Debug, Default)]
pub(crate) struct RemoteTrickle {
    /// The user fragment of the peer's description applied last.
    current: Option<String>,
    /// Candidates taken for it.
    taken: usize,
    /// Earlier user fragments, newest last.
    old: VecDeque<String>,
    /// Candidates of a generation whose description is not applied yet.
    held: Vec<RemoteCandidate>,
}

impl RemoteTrickle {
    /// A candidate from the peer arrived.
    pub fn candidate(&mut self, candidate: RemoteCandidate) -> Verdict {
        if self.current.as_deref() == Some(candidate.ufrag.as_str()) {
            if self.taken >= MAX_CANDIDATES_PER_GENERATION {
                return Verdict::Dropped("too many candidates for this ICE generation");
            }
            self.taken += 1;
            return Verdict::Apply(candidate.candidate);
        }
        if self.old.contains(&candidate.ufrag) {
            return Verdict::Dropped("candidate of an earlier ICE generation");
        }
        if self.held.len() >= MAX_HELD_CANDIDATES {
            return Verdict::Dropped("too many candidates before their description");
        }
        self.held.push(candidate);
        Verdict::Held
    }

    /// The peer's description with user fragment `ufrag` was applied: the held candidates of
    /// its generation to add now (within the generation's cap).
    pub fn described(&mut self, ufrag: &str) -> Vec<String> {
        if self.current.as_deref() != Some(ufrag) {
            if let Some(previous) = self.current.replace(ufrag.to_owned()) {
                self.old.retain(|u| u != ufrag);
                self.old.push_back(previous);
                if self.old.len() > OLD_GENERATIONS {
                    self.old.pop_front();
                }
            }
            self.taken = 0;
        }
        let old = &self.old;
        self.held.retain(|c| !old.contains(&c.ufrag));
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|c| c.ufrag == ufrag);
        self.held = later;
        let room = MAX_CANDIDATES_PER_GENERATION.saturating_sub(self.taken);
        let apply: Vec<String> = now.into_iter().take(room).map(|c| c.candidate).collect();
        self.taken += apply.len();
        apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(n: usize, ufrag: &str) -> RemoteCandidate {
        RemoteCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2130706431 10.0.0.1 {} typ host",
                1000 + n
            ),
            ufrag: ufrag.into(),
        }
    }

    #[test]
    fn our_candidates_go_once_and_only_after_a_description() {
        let host = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
        let srflx = "candidate:2 1 udp 1694498815 203.0.113.7 4000 typ srflx raddr 0.0.0.0 rport 0";
        let mut local = LocalTrickle::default();
        // Nothing sent yet: the candidate will be in the description.
        assert_eq!(local.candidate(host), None);
        assert_eq!(local.end(), None);
        let sdp = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:aaaa\r\na=mid:0\r\na={host}\r\nm=video 9 x\r\na=mid:1\r\n"
        );
        local.described(&sdp);
        // In the description already (same address, port, transport and type).
        assert_eq!(
            local.candidate("candidate:9 1 UDP 5 127.0.0.1 50000 typ host generation 0"),
            None
        );
        assert_eq!(
            local.candidate(srflx),
            Some(Outgoing {
                candidate: srflx.into(),
                sdp_mid: "0".into(),
                ufrag: "aaaa".into()
            })
        );
        assert_eq!(local.candidate(srflx), None, "sent once");
        assert_eq!(local.candidate("candidate:garbage"), None);
        assert_eq!(local.found_after(), 1);
        assert_eq!(local.end().as_deref(), Some("aaaa"));
        assert_eq!(local.end(), None, "one end per generation");
        // An ICE restart: a new generation, candidates go again under its ufrag.
        local.described("a=ice-ufrag:bbbb\r\na=mid:0\r\n");
        assert_eq!(local.found_after(), 0);
        assert_eq!(
            local.candidate(srflx).map(|o| o.ufrag).as_deref(),
            Some("bbbb")
        );
        assert_eq!(local.end().as_deref(), Some("bbbb"));
        // The same description again (a complete re-offer) does not end the generation anew.
        local.described("a=ice-ufrag:bbbb\r\na=mid:0\r\n");
        assert_eq!(local.end(), None);
    }

    #[test]
    fn peer_candidates_wait_for_their_description_and_old_ones_are_dropped() {
        let mut peer = RemoteTrickle::default();
        assert_eq!(peer.candidate(remote(1, "gen1")), Verdict::Held);
        assert_eq!(peer.candidate(remote(2, "gen2")), Verdict::Held);
        assert_eq!(peer.described("gen1"), vec![remote(1, "gen1").candidate]);
        assert_eq!(
            peer.candidate(remote(3, "gen1")),
            Verdict::Apply(remote(3, "gen1").candidate)
        );
        // A restart to gen2: its held candidate now; gen1's late ones are stale.
        assert_eq!(peer.described("gen2"), vec![remote(2, "gen2").candidate]);
        assert_eq!(
            peer.candidate(remote(4, "gen1")),
            Verdict::Dropped("candidate of an earlier ICE generation")
        );
        assert_eq!(
            peer.candidate(remote(5, "gen2")),
            Verdict::Apply(remote(5, "gen2").candidate)
        );
        // The same description again changes nothing.
        assert!(peer.described("gen2").is_empty());
        assert_eq!(
            peer.candidate(remote(6, "gen2")),
            Verdict::Apply(remote(6, "gen2").candidate)
        );
    }

    #[test]
    fn peer_candidates_are_capped_per_generation_and_while_held() {
        let mut peer = RemoteTrickle::default();
        for n in 0..MAX_HELD_CANDIDATES {
            assert_eq!(peer.candidate(remote(n, "gen1")), Verdict::Held);
        }
        assert_eq!(
            peer.candidate(remote(999, "gen1")),
            Verdict::Dropped("too many candidates before their description")
        );
        assert_eq!(peer.described("gen1").len(), MAX_HELD_CANDIDATES);
        let mut applied = MAX_HELD_CANDIDATES;
        for n in 0..100 {
            if let Verdict::Apply(_) = peer.candidate(remote(100 + n, "gen1")) {
                applied += 1;
            }
        }
        assert_eq!(applied, MAX_CANDIDATES_PER_GENERATION);
        assert_eq!(
            peer.candidate(remote(7, "gen1")),
            Verdict::Dropped("too many candidates for this ICE generation")
        );
        // A new generation has its own cap.
        peer.described("gen2");
        assert!(matches!(
            peer.candidate(remote(8, "gen2")),
            Verdict::Apply(_)
        ));
    }

    #[test]
    fn ufrags_are_read_from_descriptions() {
        assert_eq!(ice_ufrag("v=0\r\na=ice-ufrag:abcd \r\n"), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
        assert_eq!(
            candidate_key("a=candidate:1 1 UDP 1 ::1 9 typ host"),
            Some("1 udp ::1 9 host".into())
        );
        assert_eq!(candidate_key("candidate:1 1 udp 1 ::1 9 typ"), None);
    }
}
