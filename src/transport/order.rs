//! Playout order bound to the SFrame counter (`docs/call-protocol.md`, "Playout order is bound
//! to the authenticated counter").
//!
//! SRTP is hop by hop, so a relay that terminates it can rewrite RTP sequence numbers and
//! timestamps, and the playout buffer orders by those. The SFrame counter is inside the AEAD's
//! associated data. [`FrameOrder`] accepts an authenticated frame only if its RTP position
//! agrees with its counter, compared with the accepted frames next to it by counter. So genuine
//! frames cannot be swapped, nor an old one spliced into a later slot, without being refused.
//! Sans-I/O: no clock, no allocation per frame.

use thiserror::Error;

/// Counters remembered below the newest: as many as the SFrame replay window, since an older
/// frame does not authenticate anyway.
pub const ORDER_WINDOW: u64 = crate::sframe::DEFAULT_REPLAY_WINDOW;

/// Counters closer than this cannot be more than 2^15 sequence numbers apart (one RTP packet
/// per frame at most), so serial comparison of their 16-bit sequence numbers is unambiguous.
const SEQ_UNAMBIGUOUS: u64 = 1 << 15;

/// Why a frame's RTP position was refused. The frame authenticated; it must not be played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OrderError {
    /// Its RTP timestamp or sequence number is not between those of its neighbours by counter.
    #[error("frame {counter}: RTP order contradicts the SFrame counter order")]
    Misplaced {
        /// The frame's SFrame counter.
        counter: u64,
    },
    /// A frame with this counter was accepted already.
    #[error("frame {counter}: counter already accepted")]
    Duplicate {
        /// The frame's SFrame counter.
        counter: u64,
    },
    /// Further below the newest accepted counter than the guard remembers.
    #[error("frame {counter}: older than the order window")]
    TooOld {
        /// The frame's SFrame counter.
        counter: u64,
    },
}

/// One accepted frame's position.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    counter: u64,
    timestamp: u32,
    seq: u16,
    used: bool,
}

/// `b` comes after `a` in RFC 1982 serial arithmetic on 32 bits.
fn ts_after(b: u32, a: u32) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 1 << 31
}

/// `b` comes after `a` in RFC 1982 serial arithmetic on 16 bits.
fn seq_after(b: u16, a: u16) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 1 << 15
}

/// Whether the frame `later` (higher counter) sits after `earlier` in RTP order; sequence
/// numbers count only if `check_seq`.
fn in_order(earlier: &Slot, later: &Slot, check_seq: bool) -> bool {
    let gap = later.counter - earlier.counter;
    ts_after(later.timestamp, earlier.timestamp)
        && (!check_seq || gap >= SEQ_UNAMBIGUOUS || seq_after(later.seq, earlier.seq))
}

/// Checks, per sender, that the RTP order of authenticated frames equals their counter order.
///
/// Call [`FrameOrder::admit`] after a frame authenticated and before it reaches the playout
/// buffer; play it only on `Ok`. A refused frame changes nothing.
#[derive(Debug, Clone)]
pub struct FrameOrder {
    /// Accepted frames by `counter % ORDER_WINDOW`.
    slots: Box<[Slot]>,
    /// Highest counter accepted.
    newest: Option<u64>,
    /// Sequence numbers are compared too (one RTP packet per frame, as for audio).
    check_seq: bool,
}

impl Default for FrameOrder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameOrder {
    /// A guard that has accepted nothing yet: the first frame is accepted as it comes.
    pub fn new() -> Self {
        FrameOrder {
            slots: vec![Slot::default(); ORDER_WINDOW as usize].into_boxed_slice(),
            newest: None,
            check_seq: true,
        }
    }

    /// A guard on timestamps alone, for frames that span several RTP packets (video): their
    /// sequence numbers say nothing about the counter. Pass any `seq` to [`admit`](Self::admit).
    pub fn timestamps_only() -> Self {
        FrameOrder {
            check_seq: false,
            ..Self::new()
        }
    }

    fn index(counter: u64) -> usize {
        (counter % ORDER_WINDOW) as usize
    }

    /// The accepted frame with this counter, if remembered.
    fn get(&self, counter: u64) -> Option<&Slot> {
        self.slots
            .get(Self::index(counter))
            .filter(|s| s.used && s.counter == counter)
    }

    fn store(&mut self, slot: Slot) {
        if let Some(s) = self.slots.get_mut(Self::index(slot.counter)) {
            *s = slot;
        }
    }

    /// Accepts the authenticated frame with SFrame `counter` and RTP `timestamp` and `seq` if
    /// its RTP position is after that of every accepted frame with a lower counter and before
    /// that of every one with a higher counter (checked against the nearest ones). Sequence
    /// numbers are compared only between frames less than 2^15 counters apart, where they
    /// cannot have wrapped past half their range.
    pub fn admit(&mut self, counter: u64, timestamp: u32, seq: u16) -> Result<(), OrderError> {
        let frame = Slot {
            counter,
            timestamp,
            seq,
            used: true,
        };
        let Some(newest) = self.newest else {
            self.store(frame);
            self.newest = Some(counter);
            return Ok(());
        };
        if counter > newest {
            // The newest is always remembered: it is the only neighbour to check.
            let check = self.check_seq;
            let ok = self
                .get(newest)
                .is_none_or(|prev| in_order(prev, &frame, check));
            if !ok {
                return Err(OrderError::Misplaced { counter });
            }
            self.store(frame);
            self.newest = Some(counter);
            return Ok(());
        }
        if newest - counter >= ORDER_WINDOW {
            return Err(OrderError::TooOld { counter });
        }
        if self.get(counter).is_some() {
            return Err(OrderError::Duplicate { counter });
        }
        // A late frame: it must fit between its nearest accepted neighbours.
        let oldest = newest.saturating_sub(ORDER_WINDOW - 1);
        let below = (oldest..counter).rev().find_map(|c| self.get(c));
        let above = (counter + 1..=newest).find_map(|c| self.get(c));
        let check = self.check_seq;
        let ok = below.is_none_or(|prev| in_order(prev, &frame, check))
            && above.is_none_or(|next| in_order(&frame, next, check));
        if !ok {
            return Err(OrderError::Misplaced { counter });
        }
        self.store(frame);
        Ok(())
    }

    /// The highest counter accepted so far.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_only_ignores_sequence_numbers_but_not_timestamps() {
        // Video: frame i spans packets 3i..3i+2; the first packet's number is passed.
        let mut order = FrameOrder::timestamps_only();
        for i in 0..10u64 {
            order.admit(i, 3000 * i as u32, (3 * i) as u16).unwrap();
        }
        // Sequence numbers out of line with the counter are fine here...
        order.admit(10, 30_000, 0).unwrap();
        // ...timestamps are not: frame 12 labelled before frame 10 is refused.
        assert!(matches!(
            order.admit(12, 29_000, 40),
            Err(OrderError::Misplaced { counter: 12 })
        ));
        // The audio guard would refuse the same sequence numbers.
        let mut audio = FrameOrder::new();
        audio.admit(0, 0, 10).unwrap();
        assert!(audio.admit(1, 3000, 5).is_err());
        let mut video = FrameOrder::timestamps_only();
        video.admit(0, 0, 10).unwrap();
        video.admit(1, 3000, 5).unwrap();
    }

    const TICKS: u32 = 960;

    fn ts(i: u64) -> u32 {
        (i as u32).wrapping_mul(TICKS)
    }

    #[test]
    fn in_order_frames_are_accepted_and_the_first_sets_the_reference() {
        let mut g = FrameOrder::new();
        // Any first frame, whatever its RTP values.
        g.admit(500, 0xdead_beef, 4321).unwrap();
        for i in 1..100u64 {
            g.admit(
                500 + i,
                0xdead_beef_u32.wrapping_add(ts(i)),
                4321 + i as u16,
            )
            .unwrap();
        }
        assert_eq!(g.newest(), Some(599));
    }

    #[test]
    fn timestamp_and_sequence_wrap_around() {
        let mut g = FrameOrder::new();
        let t0 = u32::MAX - 2 * TICKS;
        let s0 = u16::MAX - 2;
        for i in 0..10u64 {
            g.admit(i, t0.wrapping_add(ts(i)), s0.wrapping_add(i as u16))
                .unwrap();
        }
        // Across the wrap, a frame placed before its predecessor is still refused.
        assert_eq!(
            g.admit(10, t0.wrapping_add(ts(8)), s0.wrapping_add(10)),
            Err(OrderError::Misplaced { counter: 10 })
        );
        assert_eq!(
            g.admit(10, t0.wrapping_add(ts(10)), s0.wrapping_add(8)),
            Err(OrderError::Misplaced { counter: 10 })
        );
        g.admit(10, t0.wrapping_add(ts(10)), s0.wrapping_add(10))
            .unwrap();
    }

    #[test]
    fn genuinely_late_frames_are_accepted_in_their_slot() {
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        g.admit(3, ts(3), 3).unwrap();
        g.admit(1, ts(1), 1).unwrap();
        g.admit(2, ts(2), 2).unwrap();
        g.admit(4, ts(4), 4).unwrap();
        assert_eq!(g.newest(), Some(4));
    }

    #[test]
    fn a_late_frame_out_of_its_slot_is_refused() {
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        g.admit(2, ts(2), 2).unwrap();
        g.admit(4, ts(4), 4).unwrap();
        // Frame 1 labelled as slot 3 (after frame 2): spliced forward.
        assert_eq!(
            g.admit(1, ts(3), 3),
            Err(OrderError::Misplaced { counter: 1 })
        );
        // Frame 3 labelled as slot 1 (before frame 2).
        assert_eq!(
            g.admit(3, ts(1), 1),
            Err(OrderError::Misplaced { counter: 3 })
        );
        // Nothing moved: the genuine positions still fit.
        g.admit(1, ts(1), 1).unwrap();
        g.admit(3, ts(3), 3).unwrap();
    }

    #[test]
    fn two_late_frames_swapped_with_each_other_are_refused() {
        // Held back, then delivered after a newer frame with their labels exchanged: both are
        // before the newest, so only the neighbour check sees the swap.
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        g.admit(3, ts(3), 3).unwrap();
        g.admit(2, ts(1), 1).unwrap();
        assert_eq!(
            g.admit(1, ts(2), 2),
            Err(OrderError::Misplaced { counter: 1 })
        );
    }

    #[test]
    fn an_old_frame_spliced_into_a_later_slot_is_refused() {
        let mut g = FrameOrder::new();
        for i in 0..10u64 {
            g.admit(i, ts(i), i as u16).unwrap();
        }
        // Frame 4 again is a duplicate; any counter below with a new slot is misplaced.
        assert_eq!(
            g.admit(4, ts(10), 10),
            Err(OrderError::Duplicate { counter: 4 })
        );
        let mut g = FrameOrder::new();
        for i in (0..10u64).filter(|i| *i != 4) {
            g.admit(i, ts(i), i as u16).unwrap();
        }
        assert_eq!(
            g.admit(4, ts(10), 10),
            Err(OrderError::Misplaced { counter: 4 })
        );
    }

    #[test]
    fn equal_timestamps_or_sequence_numbers_are_refused() {
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        g.admit(1, ts(1), 1).unwrap();
        assert_eq!(
            g.admit(2, ts(1), 2),
            Err(OrderError::Misplaced { counter: 2 })
        );
        assert_eq!(
            g.admit(2, ts(2), 1),
            Err(OrderError::Misplaced { counter: 2 })
        );
        assert_eq!(
            g.admit(1, ts(1), 1),
            Err(OrderError::Duplicate { counter: 1 })
        );
    }

    #[test]
    fn frames_below_the_window_are_refused() {
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        let n = ORDER_WINDOW + 5;
        g.admit(n, ts(n), n as u16).unwrap();
        assert_eq!(g.admit(5, ts(5), 5), Err(OrderError::TooOld { counter: 5 }));
        // Just inside the window: the oldest remembered frame bounds nothing, the newest does.
        let c = n + 1 - ORDER_WINDOW;
        g.admit(c, ts(c), c as u16).unwrap();
    }

    #[test]
    fn a_long_gap_compares_timestamps_only() {
        // After 2^15 counters or more the sequence number may have wrapped past half.
        let mut g = FrameOrder::new();
        g.admit(0, ts(0), 0).unwrap();
        let c = 40_000u64;
        g.admit(c, ts(c), c as u16).unwrap();
        // Closer than 2^15: sequence numbers count.
        assert_eq!(
            g.admit(c + 1, ts(c + 1), c as u16),
            Err(OrderError::Misplaced { counter: c + 1 })
        );
        // The timestamp still does across a long gap.
        let d = c + 40_000;
        assert_eq!(
            g.admit(d, ts(c) - 1, d as u16),
            Err(OrderError::Misplaced { counter: d })
        );
    }
}
