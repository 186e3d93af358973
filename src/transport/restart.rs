//! When to restart ICE, and when to give up on a lost path (Sans-I/O: states and times in,
//! actions out).
//!
//! Only the offerer restarts, so two restarts never cross (no glare), and only when the peer
//! said it answers restart offers: a peer that ignores them (a browser today) would be left on
//! the old ICE credentials while we moved on, and the old path could no longer come back on
//! its own. One restart offer is outstanding at a time; the next goes out when its answer
//! did not bring the path back within [`CHECKS_WAIT`], or when it was not answered within
//! [`ANSWER_WAIT`]. Offers replaced that way are still answered (signaling held them up, it did
//! not lose them): answers come in order, so all but the last answer to arrive of those in
//! flight are stale, and only the newest offer's is applied. A path lost for
//! [`RECONNECT_GIVE_UP`] ends the call.

use std::time::{Duration, Instant};

use super::TransportState;

/// A path that stays lost this long ends the call.
pub const RECONNECT_GIVE_UP: Duration = Duration::from_secs(30);

/// An unanswered restart offer is replaced after this long (the signaling connection may
/// have lost it). Long enough that an answer held up by the same outage usually arrives first:
/// a late answer to a replaced offer costs one more restart.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// After the answer, the new connectivity checks get this long before the next restart. The
/// checks of a pair run for 2 s (`ICE_MAX_CHECKS` x `ICE_CHECK_INTERVAL`); a restart sooner
/// replaces pairs that were still trying, a later one leaves a path that came back unused.
const CHECKS_WAIT: Duration = Duration::from_millis(1500);

/// The same for an offer whose gathering did not finish (made during the outage): its
/// candidates are the old ones, which work at once if the network is as it was and never if it
/// changed (a new address or NAT mapping). Its answer arriving says signaling, so likely the
/// path, is back: a fresh offer then gathers the new candidates.
const PARTIAL_CHECKS_WAIT: Duration = Duration::from_millis(500);

/// Which side of the call this is, for restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartRole {
    /// Sends the offers, so restarts ICE (the call's initiator).
    Offerer,
    /// Answers them.
    Answerer,
}

/// What the caller has to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAction {
    /// Send a restart offer ([`super::MediaTransport::create_restart_offer`]).
    Restart,
    /// The path stayed lost for [`RECONNECT_GIVE_UP`]: end the call.
    GiveUp,
}

/// An outstanding restart.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    offered: Instant,
    answered: Option<Instant>,
    /// Its gathering did not finish.
    partial: bool,
}

/// Follows the transport's state and says when to restart ICE and when to give up.
#[derive(Debug, Clone)]
pub struct Reconnector {
    role: RestartRole,
    peer_answers: bool,
    connected_once: bool,
    lost_since: Option<Instant>,
    attempt: Option<Attempt>,
    restarts: u64,
    /// Restart offers sent whose answers have not arrived.
    in_flight: u32,
}

impl Reconnector {
    /// A reconnector for a call on this side.
    pub fn new(role: RestartRole) -> Self {
        Reconnector {
            role,
            peer_answers: false,
            connected_once: false,
            lost_since: None,
            attempt: None,
            restarts: 0,
            in_flight: 0,
        }
    }

    /// The peer said it answers restart offers.
    pub fn peer_answers_restarts(&mut self) {
        self.peer_answers = true;
    }

    /// The transport's state changed to `state` at `now`. Only a path that was up once can be
    /// lost: before that, the call's set-up timeout applies.
    pub fn on_state(&mut self, state: TransportState, now: Instant) {
        match state {
            TransportState::Connected => {
                self.connected_once = true;
                self.lost_since = None;
                self.attempt = None;
            }
            // Connecting again is a restart's checks running: still lost until they succeed.
            TransportState::Disconnected | TransportState::Failed | TransportState::Connecting
                if self.connected_once =>
            {
                self.lost_since.get_or_insert(now);
            }
            _ => {}
        }
    }

    /// An answer arrived at `now`; returns whether to apply it. Answers to offers that a
    /// newer restart offer replaced are not: they hold credentials the peer already left.
    pub fn on_answer(&mut self, now: Instant) -> bool {
        if self.in_flight > 1 {
            self.in_flight -= 1;
            return false;
        }
        self.in_flight = 0;
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.answered.get_or_insert(now);
        }
        true
    }

    /// The restart offer [`Self::poll`] asked for went out without finishing its gathering
    /// ([`super::RestartOffer::gathered`] false).
    pub fn offer_partial(&mut self) {
        if let Some(attempt) = self.attempt.as_mut() {
            attempt.partial = true;
        }
    }

    /// The restart offer [`Self::poll`] asked for could not be sent: no answer will come.
    pub fn offer_not_sent(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Our signaling connection was made anew: what was in flight may be lost, so the next
    /// answer is taken as the newest offer's (if it is not, the next restart mends it).
    pub fn signaling_rejoined(&mut self) {
        self.in_flight = 0;
    }

    /// Whether the path is lost now.
    pub fn is_lost(&self) -> bool {
        self.lost_since.is_some()
    }

    /// Restart offers asked for so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    fn restarting(&self) -> bool {
        self.role == RestartRole::Offerer && self.peer_answers
    }

    /// When the next restart is due, if one can be.
    fn restart_due(&self) -> Option<Instant> {
        let since = self.lost_since?;
        if !self.restarting() {
            return None;
        }
        Some(match self.attempt {
            None => since,
            Some(Attempt {
                answered: Some(at),
                partial,
                ..
            }) => {
                at + if partial {
                    PARTIAL_CHECKS_WAIT
                } else {
                    CHECKS_WAIT
                }
            }
            Some(Attempt { offered, .. }) => offered + ANSWER_WAIT,
        })
    }

    /// What to do at `now`, if anything. Call it after every state change and answer, and at
    /// [`Self::next_deadline`].
    pub fn poll(&mut self, now: Instant) -> Option<PathAction> {
        let since = self.lost_since?;
        if now.saturating_duration_since(since) >= RECONNECT_GIVE_UP {
            return Some(PathAction::GiveUp);
        }
        if self.restart_due().is_some_and(|due| due <= now) {
            self.attempt = Some(Attempt {
                offered: now,
                answered: None,
                partial: false,
            });
            self.restarts += 1;
            self.in_flight += 1;
            return Some(PathAction::Restart);
        }
        None
    }

    /// When [`Self::poll`] has something to do next, while the path is lost.
    pub fn next_deadline(&self) -> Option<Instant> {
        let give_up = self.lost_since? + RECONNECT_GIVE_UP;
        Some(self.restart_due().map_or(give_up, |due| due.min(give_up)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(role: RestartRole, t0: Instant) -> Reconnector {
        let mut r = Reconnector::new(role);
        r.on_state(TransportState::Connecting, t0);
        assert_eq!(r.poll(t0), None);
        r.on_state(TransportState::Connected, t0);
        r
    }

    #[test]
    fn the_offerer_restarts_at_once_then_retries_until_the_path_is_back() {
        let t0 = Instant::now();
        let mut r = connected(RestartRole::Offerer, t0);
        r.peer_answers_restarts();
        assert_eq!(r.next_deadline(), None);
        let lost = t0 + Duration::from_secs(10);
        r.on_state(TransportState::Disconnected, lost);
        assert!(r.is_lost());
        assert_eq!(r.next_deadline(), Some(lost));
        assert_eq!(r.poll(lost), Some(PathAction::Restart));
        // One offer at a time: nothing more until it is answered or given up on.
        assert_eq!(r.poll(lost + Duration::from_secs(1)), None);
        assert_eq!(r.next_deadline(), Some(lost + ANSWER_WAIT));
        // Its checks moving the transport to connecting does not restart the clock.
        r.on_state(TransportState::Connecting, lost + Duration::from_secs(1));
        let answered = lost + Duration::from_secs(2);
        assert!(r.on_answer(answered));
        assert_eq!(r.next_deadline(), Some(answered + CHECKS_WAIT));
        assert_eq!(r.poll(answered + CHECKS_WAIT / 2), None);
        assert_eq!(r.poll(answered + CHECKS_WAIT), Some(PathAction::Restart));
        // Unanswered: offered again after ANSWER_WAIT.
        let again = answered + CHECKS_WAIT;
        assert_eq!(r.poll(again + ANSWER_WAIT), Some(PathAction::Restart));
        assert_eq!(r.restarts(), 3);
        // An offer made without finished gathering gets a shorter wait once answered.
        r.offer_partial();
        let answered = again + ANSWER_WAIT + Duration::from_secs(1);
        // The replaced offer's answer first (stale), then this one's.
        assert!(!r.on_answer(answered));
        assert!(r.on_answer(answered));
        assert_eq!(r.next_deadline(), Some(answered + PARTIAL_CHECKS_WAIT));
        assert_eq!(
            r.poll(answered + PARTIAL_CHECKS_WAIT),
            Some(PathAction::Restart)
        );
        assert_eq!(r.restarts(), 4);
        // Back: nothing due, and a later loss starts over with a restart at once.
        r.on_state(TransportState::Connected, again + ANSWER_WAIT);
        assert!(!r.is_lost());
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.poll(again + RECONNECT_GIVE_UP * 2), None);
        let later = again + RECONNECT_GIVE_UP * 3;
        r.on_state(TransportState::Failed, later);
        assert_eq!(r.poll(later), Some(PathAction::Restart));
        assert_eq!(r.restarts(), 5);
    }

    /// Offers replaced while signaling held them up are all answered when it lets go: only
    /// the last answer (the newest offer's) is applied, and it starts the checks' wait.
    #[test]
    fn answers_to_replaced_offers_are_not_applied() {
        let t0 = Instant::now();
        let mut r = connected(RestartRole::Offerer, t0);
        r.peer_answers_restarts();
        r.on_state(TransportState::Disconnected, t0);
        let mut now = t0;
        for _ in 0..3 {
            assert_eq!(r.poll(now), Some(PathAction::Restart));
            now += ANSWER_WAIT;
        }
        let back = t0 + Duration::from_secs(14);
        assert!(!r.on_answer(back));
        assert!(!r.on_answer(back));
        assert_eq!(r.next_deadline(), Some(t0 + ANSWER_WAIT * 3));
        assert!(r.on_answer(back));
        assert_eq!(r.next_deadline(), Some(back + CHECKS_WAIT));
        // An offer that could not be sent is not waited for; a signaling reconnect forgets
        // what was in flight.
        assert_eq!(r.poll(back + CHECKS_WAIT), Some(PathAction::Restart));
        r.offer_not_sent();
        assert!(r.on_answer(back + CHECKS_WAIT));
        let later = back + CHECKS_WAIT * 2;
        assert_eq!(r.poll(later), Some(PathAction::Restart));
        assert_eq!(r.poll(later + ANSWER_WAIT), Some(PathAction::Restart));
        r.signaling_rejoined();
        assert!(r.on_answer(later + ANSWER_WAIT));
    }

    #[test]
    fn a_path_lost_for_thirty_seconds_gives_up_whoever_restarts() {
        let t0 = Instant::now();
        for (role, answers) in [
            (RestartRole::Offerer, true),
            (RestartRole::Offerer, false),
            (RestartRole::Answerer, true),
        ] {
            let mut r = connected(role, t0);
            if answers {
                r.peer_answers_restarts();
            }
            r.on_state(TransportState::Disconnected, t0);
            let mut restarts = 0;
            let mut now = t0;
            let end = loop {
                match r.poll(now) {
                    Some(PathAction::Restart) => {
                        restarts += 1;
                        assert!(r.on_answer(now + Duration::from_millis(100)));
                    }
                    Some(PathAction::GiveUp) => break now,
                    None => {}
                }
                let next = r.next_deadline().expect("lost");
                assert!(next >= now, "{role:?}: deadline in the past");
                now = next.max(now + Duration::from_millis(1));
            };
            assert_eq!(end, t0 + RECONNECT_GIVE_UP, "{role:?}");
            if role == RestartRole::Offerer && answers {
                // Every CHECKS_WAIT after the answer, not more often.
                assert!((15..=20).contains(&restarts), "{restarts}");
            } else {
                // A peer that never said it answers restarts is never sent one; the answerer
                // waits for the offerer.
                assert_eq!(restarts, 0, "{role:?}");
            }
        }
    }

    #[test]
    fn a_path_that_comes_back_resets_the_thirty_seconds() {
        let t0 = Instant::now();
        let mut r = connected(RestartRole::Answerer, t0);
        r.on_state(TransportState::Disconnected, t0);
        assert_eq!(
            r.poll(t0 + RECONNECT_GIVE_UP - Duration::from_millis(1)),
            None
        );
        r.on_state(TransportState::Connected, t0 + Duration::from_secs(29));
        r.on_state(TransportState::Disconnected, t0 + Duration::from_secs(40));
        assert_eq!(r.poll(t0 + Duration::from_secs(69)), None);
        assert_eq!(
            r.poll(t0 + Duration::from_secs(70)),
            Some(PathAction::GiveUp)
        );
    }

    #[test]
    fn before_the_first_connection_nothing_is_lost() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(RestartRole::Offerer);
        r.peer_answers_restarts();
        for state in [
            TransportState::Connecting,
            TransportState::Disconnected,
            TransportState::Failed,
        ] {
            r.on_state(state, t0);
            assert!(!r.is_lost());
            assert_eq!(r.poll(t0 + RECONNECT_GIVE_UP * 2), None);
            assert_eq!(r.next_deadline(), None);
        }
    }
}
