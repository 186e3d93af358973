//! When to reconnect to the SFU, Sans-I/O: the call task reports the SFU connection's
//! states and asks, at the deadline this gives, what to do.
//!
//! A group member's only media path is its connection to the SFU. When that path is lost
//! (ICE reports it disconnected or failed, or the server says the SFU is gone), the member
//! waits [`GRACE`] for it to come back by itself, then opens a new connection: it leaves the
//! SFU and joins again with a fresh offer. Keys stay as they are (the SFU never holds any,
//! and the membership did not change), and the SFrame counters run on. Attempts repeat with
//! back-off until the path has been lost for [`GIVE_UP`].

use std::time::{Duration, Instant};

/// How long a disconnected path may come back by itself before a new connection is made.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// How long the path may stay lost, new connections included, before the call ends.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(30);
/// Wait after the first new connection before the next; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What the call task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Leave the SFU and join it again with a new connection.
    Reconnect,
    /// The path did not come back in time: end the call.
    GiveUp,
}

/// The reconnection state of one member's SFU path.
#[derive(Debug, Default)]
pub(crate) struct SfuReconnect {
    /// Since when the path is lost, if it is.
    lost_since: Option<Instant>,
    /// When to act next.
    next: Option<Instant>,
    attempts: u32,
}

impl SfuReconnect {
    /// ICE says the path is disconnected: it may come back by itself within [`GRACE`].
    pub(crate) fn disconnected(&mut self, now: Instant) {
        if self.lost_since.is_none() {
            self.lost_since = Some(now);
            self.next = Some(now + GRACE);
        }
    }

    /// The path failed for good, or the SFU is gone: reconnect now (unless an attempt is
    /// already under way, whose back-off stands).
    pub(crate) fn failed(&mut self, now: Instant) {
        if self.lost_since.is_none() {
            self.lost_since = Some(now);
        }
        if self.attempts == 0 {
            self.next = Some(now);
        }
    }

    /// The connection is up: returns how long the path was lost, if it was.
    pub(crate) fn connected(&mut self, now: Instant) -> Option<Duration> {
        let since = self.lost_since.take()?;
        self.next = None;
        self.attempts = 0;
        Some(now.saturating_duration_since(since))
    }

    /// Whether the path is lost (the call is reconnecting).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost_since.is_some()
    }

    /// When [`poll`](Self::poll) has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let give_up = self.lost_since.map(|s| s + GIVE_UP);
        match (self.next, give_up) {
            (Some(n), Some(g)) => Some(n.min(g)),
            (n, g) => n.or(g),
        }
    }

    /// What to do at `now`.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Action> {
        let since = self.lost_since?;
        if now.saturating_duration_since(since) >= GIVE_UP {
            self.next = None;
            return Some(Action::GiveUp);
        }
        if self.next.is_some_and(|n| now >= n) {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << self.attempts.min(8))
                .min(MAX_BACKOFF);
            self.attempts = self.attempts.saturating_add(1);
            self.next = Some(now + backoff);
            return Some(Action::Reconnect);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_path_that_comes_back_within_the_grace_is_left_alone() {
        let t0 = Instant::now();
        let mut r = SfuReconnect::default();
        r.disconnected(t0);
        assert!(r.is_lost());
        assert_eq!(r.poll(t0 + ms(500)), None);
        assert_eq!(r.connected(t0 + ms(700)), Some(ms(700)));
        assert_eq!(r.poll(t0 + GRACE * 2), None);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_lost_path_reconnects_after_the_grace_with_backoff_then_gives_up() {
        let t0 = Instant::now();
        let mut r = SfuReconnect::default();
        r.disconnected(t0);
        // Later reports of the same loss do not move the clock.
        r.disconnected(t0 + ms(300));
        assert_eq!(r.deadline(), Some(t0 + GRACE));
        assert_eq!(r.poll(t0 + GRACE), Some(Action::Reconnect));
        // A failure while an attempt runs does not cut its back-off short.
        r.failed(t0 + GRACE + ms(100));
        assert_eq!(r.poll(t0 + GRACE + ms(1999)), None);
        let mut at = t0 + GRACE + FIRST_BACKOFF;
        let mut gaps = Vec::new();
        while let Some(Action::Reconnect) = r.poll(at) {
            let next = r.deadline().unwrap();
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(gaps[..3], [ms(4000), ms(8000), ms(8000)]);
        assert_eq!(at, t0 + GIVE_UP);
        assert_eq!(r.poll(at), Some(Action::GiveUp));
    }

    #[test]
    fn a_failure_reconnects_at_once_and_success_resets_everything() {
        let t0 = Instant::now();
        let mut r = SfuReconnect::default();
        r.failed(t0);
        assert_eq!(r.poll(t0), Some(Action::Reconnect));
        assert_eq!(r.connected(t0 + ms(900)), Some(ms(900)));
        assert!(!r.is_lost());
        // The next loss starts over: grace, then an attempt.
        let t1 = t0 + Duration::from_secs(60);
        r.disconnected(t1);
        assert_eq!(r.poll(t1 + GRACE), Some(Action::Reconnect));
        assert_eq!(r.deadline(), Some(t1 + GRACE + FIRST_BACKOFF));
    }
}
