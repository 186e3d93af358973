//! A sliding replay window over one KID's counters.
//!
//! Tracks the highest counter accepted and a bitmap of the `size` counters at and below it.
//! A counter above the highest is new; one inside the window is new unless its bit is set;
//! one below the window is refused as too old. [`ReplayWindow::check`] only reads, and
//! [`ReplayWindow::accept`] is called after the frame authenticated, so forged frames cannot
//! move the window.

use super::SframeError;

/// Default number of counters tracked per KID: 20 s of 20 ms audio, or about 30 s of video.
pub const DEFAULT_REPLAY_WINDOW: u64 = 1024;
/// Largest window a receiver may configure (8 KiB of bitmap per KID).
pub const MAX_REPLAY_WINDOW: u64 = 1 << 16;

#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    /// Window length in counters, a multiple of 64.
    size: u64,
    newest: Option<u64>,
    bits: Box<[u64]>,
}

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Duplicate,
    TooOld { newest: u64 },
}

impl ReplayWindow {
    /// A window of at least `size` counters (rounded up to a multiple of 64).
    pub(crate) fn new(size: u64) -> Result<Self, SframeError> {
        if size == 0 || size > MAX_REPLAY_WINDOW {
            return Err(SframeError::InvalidReplayWindow(size));
        }
        let words = size.div_ceil(64);
        Ok(ReplayWindow {
            size: words * 64,
            newest: None,
            bits: vec![0u64; words as usize].into_boxed_slice(),
        })
    }

    fn slot(&self, ctr: u64) -> (usize, u64) {
        let i = ctr % self.size;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `ctr` would be accepted; changes nothing.
    pub(crate) fn check(&self, ctr: u64) -> Result<(), Refusal> {
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if ctr > newest {
            return Ok(());
        }
        if newest - ctr >= self.size {
            return Err(Refusal::TooOld { newest });
        }
        let (word, mask) = self.slot(ctr);
        if self.bits[word] & mask != 0 {
            Err(Refusal::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `ctr` as seen. Call only after [`check`](Self::check) passed and the frame
    /// authenticated.
    pub(crate) fn accept(&mut self, ctr: u64) {
        match self.newest {
            Some(newest) if ctr <= newest => {}
            Some(newest) if ctr - newest < self.size => {
                // Slots between the old and new top now stand for unseen counters.
                for c in newest + 1..ctr {
                    let (word, mask) = self.slot(c);
                    self.bits[word] &= !mask;
                }
                self.newest = Some(ctr);
            }
            _ => {
                self.bits.fill(0);
                self.newest = Some(ctr);
            }
        }
        let (word, mask) = self.slot(ctr);
        self.bits[word] |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(w: &mut ReplayWindow, ctr: u64) -> Result<(), Refusal> {
        w.check(ctr)?;
        w.accept(ctr);
        Ok(())
    }

    #[test]
    fn accepts_reordering_and_rejects_duplicates() {
        let mut w = ReplayWindow::new(128).unwrap();
        for c in [5, 3, 4, 10, 6, 9] {
            assert_eq!(seen(&mut w, c), Ok(()), "ctr {c}");
        }
        for c in [3, 4, 5, 6, 9, 10] {
            assert_eq!(seen(&mut w, c), Err(Refusal::Duplicate), "ctr {c}");
        }
        assert_eq!(seen(&mut w, 7), Ok(()));
    }

    #[test]
    fn rejects_counters_older_than_the_window() {
        let mut w = ReplayWindow::new(128).unwrap();
        seen(&mut w, 1000).unwrap();
        assert_eq!(seen(&mut w, 1000 - 127), Ok(()));
        assert_eq!(
            seen(&mut w, 1000 - 128),
            Err(Refusal::TooOld { newest: 1000 })
        );
    }

    #[test]
    fn slots_are_cleared_when_the_window_slides() {
        let mut w = ReplayWindow::new(64).unwrap();
        seen(&mut w, 0).unwrap();
        seen(&mut w, 1).unwrap();
        // 65 reuses slot 1; after sliding, 65 is new.
        assert_eq!(seen(&mut w, 65), Ok(()));
        // 64 reuses slot 0, cleared by the slide.
        assert_eq!(seen(&mut w, 64), Ok(()));
        // A jump past the whole window clears everything.
        assert_eq!(seen(&mut w, 10_000), Ok(()));
        assert_eq!(seen(&mut w, 10_000 - 63), Ok(()));
    }

    #[test]
    fn check_does_not_move_state() {
        let mut w = ReplayWindow::new(64).unwrap();
        seen(&mut w, 10).unwrap();
        assert_eq!(w.check(500), Ok(()));
        // Not accepted, so 10 is still the newest and 9 is inside the window.
        assert_eq!(seen(&mut w, 9), Ok(()));
    }

    #[test]
    fn size_limits() {
        assert!(ReplayWindow::new(0).is_err());
        assert!(ReplayWindow::new(MAX_REPLAY_WINDOW + 1).is_err());
        assert_eq!(ReplayWindow::new(100).unwrap().size, 128);
    }

    #[test]
    fn extreme_counters() {
        let mut w = ReplayWindow::new(128).unwrap();
        assert_eq!(seen(&mut w, u64::MAX), Ok(()));
        assert_eq!(seen(&mut w, u64::MAX), Err(Refusal::Duplicate));
        assert_eq!(seen(&mut w, u64::MAX - 5), Ok(()));
        assert!(matches!(seen(&mut w, 0), Err(Refusal::TooOld { .. })));
    }
}
