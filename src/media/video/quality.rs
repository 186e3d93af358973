//! Measuring received video: luma PSNR and a freeze detector.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{VideoError, VideoFrame};

/// PSNR of identical pictures (instead of infinity, so averages stay finite).
const PSNR_IDENTICAL: f64 = 100.0;

/// Luma PSNR in dB between two pictures of the same size (100 for identical pictures).
pub fn psnr_y(a: &VideoFrame, b: &VideoFrame) -> Result<f64, VideoError> {
    if a.size() != b.size() {
        return Err(VideoError::SizeMismatch {
            width: a.width(),
            height: a.height(),
            got_width: b.width(),
            got_height: b.height(),
        });
    }
    let (_, rows) = a.plane_size(0);
    let mut sse: u64 = 0;
    for row in 0..rows {
        sse += a
            .row(0, row)
            .iter()
            .zip(b.row(0, row))
            .map(|(&p, &q)| {
                let d = i32::from(p) - i32::from(q);
                (d * d) as u64
            })
            .sum::<u64>();
    }
    if sse == 0 {
        return Ok(PSNR_IDENTICAL);
    }
    let mse = sse as f64 / (u64::from(a.width()) * u64::from(a.height())) as f64;
    Ok((10.0 * (255.0 * 255.0 / mse).log10()).min(PSNR_IDENTICAL))
}

/// Gaps averaged for the mean frame duration (as the W3C stats use).
const WINDOW: usize = 30;

/// Counts freezes in a stream of rendered pictures: a gap between two pictures of at least
/// max(3 x mean frame duration, mean + 150 ms), the mean taken over the previous 30 gaps (the
/// W3C `freezeCount` rule). Sans-I/O: feed it render times.
#[derive(Debug, Clone, Default)]
pub struct FreezeDetector {
    last: Option<Instant>,
    gaps: VecDeque<Duration>,
    freezes: u64,
    frozen: Duration,
}

impl FreezeDetector {
    /// A detector that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a picture rendered at `at`. Returns the gap if it ended a freeze.
    pub fn on_frame(&mut self, at: Instant) -> Option<Duration> {
        let last = self.last.replace(at)?;
        let gap = at.saturating_duration_since(last);
        let mut freeze = None;
        if !self.gaps.is_empty() {
            let mean = self.gaps.iter().sum::<Duration>() / self.gaps.len() as u32;
            let threshold = (mean * 3).max(mean + Duration::from_millis(150));
            if gap >= threshold {
                self.freezes += 1;
                self.frozen += gap;
                freeze = Some(gap);
            }
        }
        if self.gaps.len() == WINDOW {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
        freeze
    }

    /// Freezes seen so far.
    pub fn freezes(&self) -> u64 {
        self.freezes
    }

    /// Total length of the freezes seen so far.
    pub fn frozen(&self) -> Duration {
        self.frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_error() {
        let a = VideoFrame::black(64, 32).unwrap();
        assert_eq!(psnr_y(&a, &a).unwrap(), 100.0);
        let mut b = a.clone();
        // Every luma sample off by 16: MSE 256, PSNR = 10 log10(65025 / 256) = 24.05 dB.
        b.plane_mut(0).fill(32);
        let p = psnr_y(&a, &b).unwrap();
        assert!((p - 24.048).abs() < 0.01, "{p}");
        // Chroma does not count.
        b.plane_mut(0).fill(16);
        b.plane_mut(1).fill(0);
        assert_eq!(psnr_y(&a, &b).unwrap(), 100.0);
        let c = VideoFrame::black(32, 32).unwrap();
        assert!(matches!(
            psnr_y(&a, &c),
            Err(VideoError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn freezes_follow_the_w3c_rule() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = FreezeDetector::new();
        let mut t = t0;
        assert_eq!(d.on_frame(t), None);
        for _ in 0..30 {
            t += ms(33);
            assert_eq!(d.on_frame(t), None);
        }
        // Mean 33 ms: the threshold is max(99, 183) = 183 ms.
        t += ms(180);
        assert_eq!(d.on_frame(t), None);
        for _ in 0..30 {
            t += ms(33);
            d.on_frame(t);
        }
        t += ms(190);
        assert_eq!(d.on_frame(t), Some(ms(190)));
        assert_eq!(d.freezes(), 1);
        assert_eq!(d.frozen(), ms(190));

        // At 5 fps (200 ms frames) the 3x rule wins: 500 ms is no freeze, 600 ms is.
        let mut slow = FreezeDetector::new();
        let mut t = t0;
        for _ in 0..10 {
            t += ms(200);
            slow.on_frame(t);
        }
        assert_eq!(slow.on_frame(t + ms(500)), None);
        let mut slow2 = FreezeDetector::new();
        let mut t = t0;
        for _ in 0..10 {
            t += ms(200);
            slow2.on_frame(t);
        }
        assert_eq!(slow2.on_frame(t + ms(600)), Some(ms(600)));
    }
}
