//! A sink that checks received video the way a viewer would: every picture's frame-number
//! barcode, the order and gaps, and the picture quality against the test pattern that made it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{FreezeDetector, TestPattern, VideoError, VideoFrame, VideoSink, psnr_y, read_code};

/// What a [`VideoProbe`] saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Pictures written to the probe.
    pub frames: u64,
    /// Pictures whose barcode could be read.
    pub codes_read: u64,
    /// Pictures whose barcode was not after the previous one (RFC 1982 order on 16 bits).
    pub out_of_order: u64,
    /// The first and last code read.
    pub first_code: Option<u16>,
    /// The last code read.
    pub last_code: Option<u16>,
    /// Longest time between two pictures, ms.
    pub max_gap_ms: f64,
    /// Freezes by the W3C rule (see [`FreezeDetector`]).
    pub freezes: u64,
    /// Lowest luma PSNR against the reference pattern, dB (sampled pictures of the pattern's
    /// size).
    pub psnr_min_db: Option<f64>,
    /// Mean luma PSNR of the sampled pictures, dB.
    pub psnr_mean_db: Option<f64>,
    /// Pictures compared with the reference.
    pub psnr_samples: u64,
    /// Size of the last picture.
    pub last_size: Option<(u32, u32)>,
}

impl ProbeReport {
    /// Distinct pictures covered from the first code read to the last.
    pub fn code_span(&self) -> u64 {
        match (self.first_code, self.last_code) {
            (Some(a), Some(b)) => u64::from(b.wrapping_sub(a)) + 1,
            _ => 0,
        }
    }
}

/// Reads back what the probe saw, from any thread.
#[derive(Debug, Clone)]
pub struct ProbeHandle(Arc<Mutex<State>>);

impl ProbeHandle {
    /// Waits (polling, for tests and the demo) until `cond` holds on the report or `timeout`
    /// runs out; returns the last report.
    pub fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&ProbeReport) -> bool,
    ) -> ProbeReport {
        let until = Instant::now() + timeout;
        loop {
            let report = self.report();
            if cond(&report) || Instant::now() >= until {
                return report;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The report so far.
    pub fn report(&self) -> ProbeReport {
        let state = lock(&self.0);
        let mut report = state.report.clone();
        report.freezes = state.freezes.freezes();
        if state.psnr_count > 0 {
            report.psnr_mean_db = Some(state.psnr_sum / state.psnr_count as f64);
        }
        report
    }
}

#[derive(Debug, Default)]
struct State {
    report: ProbeReport,
    freezes: FreezeDetector,
    last_at: Option<Instant>,
    psnr_sum: f64,
    psnr_count: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`VideoSink`] that measures instead of showing.
#[derive(Debug)]
pub struct VideoProbe {
    state: Arc<Mutex<State>>,
    reference: Option<TestPattern>,
    scratch: VideoFrame,
    psnr_every: u64,
}

impl VideoProbe {
    /// A probe; with `reference`, every `psnr_every`-th picture of the reference's size is
    /// compared with the pattern picture its barcode names.
    pub fn new(
        reference: Option<TestPattern>,
        psnr_every: u64,
    ) -> Result<(Self, ProbeHandle), VideoError> {
        let state = Arc::new(Mutex::new(State::default()));
        Ok((
            VideoProbe {
                state: Arc::clone(&state),
                reference,
                scratch: VideoFrame::black(2, 2)?,
                psnr_every: psnr_every.max(1),
            },
            ProbeHandle(state),
        ))
    }
}

impl VideoSink for VideoProbe {
    fn write_frame(&mut self, frame: &VideoFrame) -> Result<(), VideoError> {
        let now = Instant::now();
        let code = read_code(frame);
        let mut psnr = None;
        if let (Some(code), Some(pattern)) = (code, &self.reference) {
            let n = lock(&self.state).report.frames;
            if n.is_multiple_of(self.psnr_every) {
                pattern.draw(u64::from(code), &mut self.scratch)?;
                if self.scratch.size() == frame.size() {
                    psnr = Some(psnr_y(&self.scratch, frame)?);
                }
            }
        }
        let mut state = lock(&self.state);
        let state = &mut *state;
        let r = &mut state.report;
        r.frames += 1;
        r.last_size = Some(frame.size());
        if let Some(last) = state.last_at.replace(now) {
            let gap = now.saturating_duration_since(last);
            r.max_gap_ms = r.max_gap_ms.max(gap.as_secs_f64() * 1000.0);
        }
        state.freezes.on_frame(now);
        if let Some(code) = code {
            r.codes_read += 1;
            if let Some(last) = r.last_code {
                let step = code.wrapping_sub(last);
                if step == 0 || step >= 1 << 15 {
                    r.out_of_order += 1;
                }
            }
            r.first_code.get_or_insert(code);
            r.last_code = Some(code);
        }
        if let Some(p) = psnr {
            r.psnr_min_db = Some(r.psnr_min_db.map_or(p, |m: f64| m.min(p)));
            r.psnr_samples += 1;
            state.psnr_sum += p;
            state.psnr_count += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_codes_order_and_quality() {
        let pattern = TestPattern::new(640, 360, 30).unwrap();
        let (mut probe, handle) = VideoProbe::new(Some(pattern.clone()), 1).unwrap();
        let mut frame = VideoFrame::black(2, 2).unwrap();
        for n in [0u64, 1, 2, 4, 3] {
            pattern.draw(n, &mut frame).unwrap();
            probe.write_frame(&frame).unwrap();
        }
        let r = handle.report();
        assert_eq!(r.frames, 5);
        assert_eq!(r.codes_read, 5);
        assert_eq!(r.out_of_order, 1, "3 after 4");
        assert_eq!(r.first_code, Some(0));
        assert_eq!(r.last_code, Some(3));
        assert_eq!(r.psnr_samples, 5);
        // Identical pictures: the highest PSNR the measure gives.
        assert!(r.psnr_min_db.unwrap() >= 99.0);
        // A wrong picture under a right barcode scores low.
        let mut other = VideoFrame::black(2, 2).unwrap();
        pattern.draw(40, &mut other).unwrap();
        super::super::write_code(&mut other, 5);
        probe.write_frame(&other).unwrap();
        assert!(handle.report().psnr_min_db.unwrap() < 25.0);
    }
}
