//! Arrival-jitter estimate: the 95th percentile of relative transit delay.
//!
//! Each packet's transit is `arrival - timestamp` (both in clock-rate ticks). The smallest
//! transit in the window is the fastest path seen; each packet's distance above it is how long
//! the buffer would have had to wait for it. A high percentile of that distance is the delay
//! that plays ~95 % of packets in time. The window is short (128 packets, 1.3-2.6 s), so the
//! minimum follows clock drift and the estimate falls back when the path calms down.

/// Packets in the estimation window.
pub const WINDOW: usize = 128;

/// Sliding-window jitter estimator; fixed size, no allocation after creation.
#[derive(Debug, Clone)]
pub struct JitterEstimator {
    transits: [i64; WINDOW],
    scratch: [i64; WINDOW],
    len: usize,
    next: usize,
    p95: i64,
}

impl Default for JitterEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterEstimator {
    /// An empty estimator.
    pub fn new() -> Self {
        Self {
            transits: [0; WINDOW],
            scratch: [0; WINDOW],
            len: 0,
            next: 0,
            p95: 0,
        }
    }

    /// Records one packet's transit (arrival minus media timestamp, in ticks).
    pub fn record(&mut self, transit: i64) {
        self.transits[self.next] = transit;
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
        let n = self.len;
        let s = &mut self.scratch[..n];
        s.copy_from_slice(&self.transits[..n]);
        let min = s.iter().copied().min().unwrap_or(0);
        for v in s.iter_mut() {
            *v = v.saturating_sub(min);
        }
        let k = ((n - 1) * 95) / 100;
        let (_, kth, _) = s.select_nth_unstable(k);
        self.p95 = *kth;
    }

    /// The current estimate, in ticks.
    pub fn p95_ticks(&self) -> i64 {
        self.p95
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_transit_has_no_jitter_and_spikes_raise_it() {
        let mut j = JitterEstimator::new();
        for _ in 0..200 {
            j.record(1000);
        }
        assert_eq!(j.p95_ticks(), 0);
        for i in 0..200 {
            j.record(1000 + if i % 5 == 0 { 1920 } else { 0 });
        }
        assert_eq!(j.p95_ticks(), 1920);
        for _ in 0..200 {
            j.record(1000);
        }
        assert_eq!(j.p95_ticks(), 0);
    }
}
