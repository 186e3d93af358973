//! Summaries of latency runs: percentiles overall and per stage.

use std::time::Duration;

use serde::Serialize;

use super::{Impairment, ImpulseSample, Stages};
use crate::playout::PlayoutStats;

/// The outcome of one [`super::measure`] run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Codec frame length in ms.
    pub frame_ms: u32,
    /// Whether SFrame was on.
    pub e2ee: bool,
    /// The simulated impairment, if any.
    pub impairment: Option<Impairment>,
    /// The Opus encoder's look-ahead.
    pub codec_lookahead: Duration,
    /// Frames the sender sent.
    pub frames_sent: u64,
    /// Frames the impairment dropped.
    pub frames_dropped: u64,
    /// Every click measured.
    pub samples: Vec<ImpulseSample>,
    /// The playout's counters at the end of the run.
    pub playout: PlayoutStats,
    /// With a stall (`Impairment::spike`): time from its end until the playout delay was
    /// back within 10 % of the target before it.
    pub recovery: Option<Duration>,
}

/// Mean of each stage over the clicks whose frame arrived, in ms. Means, not medians, so the
/// stages add up to the mean total (several stages are bimodal: a click either makes the
/// next device period or waits one more).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageSummary {
    /// Microphone callback until the codec frame is complete.
    pub capture_buffering: f64,
    /// Opus encode.
    pub encode: f64,
    /// SFrame seal.
    pub encrypt: f64,
    /// Transport, send to arrival (with the impairment's delay).
    pub network: f64,
    /// Waiting in the playout buffer.
    pub playout_wait: f64,
    /// SFrame open.
    pub decrypt: f64,
    /// Opus decode.
    pub decode: f64,
    /// Decoded until played (queue, place in frame, codec look-ahead).
    pub playback_buffering: f64,
}

/// One run as `sotto latency --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Codec frame length in ms.
    pub frame_ms: u32,
    /// Whether SFrame was on.
    pub e2ee: bool,
    /// Mouth to ear, median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Clicks measured.
    pub samples: usize,
    /// Stage means, ms.
    pub stages: StageSummary,
    /// Mouth to ear, mean, ms.
    pub mean_ms: f64,
    /// Lowest, ms.
    pub min_ms: f64,
    /// Highest, ms.
    pub max_ms: f64,
    /// Simulated loss, percent (0 on a clean run).
    pub loss_percent: f64,
    /// Simulated jitter bound, ms (0 on a clean run).
    pub jitter_ms: f64,
    /// Opus look-ahead, ms.
    pub codec_lookahead_ms: f64,
    /// Frames concealed because their packet arrived after its playout time, percent of the
    /// frames sent.
    pub late_loss_pct: f64,
    /// Length of the single stall of a spike run, ms (0: none).
    pub spike_ms: f64,
    /// Spike runs: ms from the stall's end until the playout delay was back within 10 % of
    /// the target before it (`null` if it never was, or no spike).
    pub recovery_ms: Option<f64>,
    /// Audio the playout removed by accelerating, ms.
    pub accelerated_ms: f64,
    /// Audio the playout inserted by preemptive expand, ms.
    pub expanded_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean_of(samples: &[Stages], f: impl Fn(&Stages) -> Duration) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.iter().map(|s| ms(f(s))).sum::<f64>() / samples.len() as f64
}

impl LatencyRun {
    /// Mouth-to-ear latencies in ms, sorted.
    pub fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|s| ms(s.total)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Percentiles and stage means.
    pub fn summary(&self) -> RunSummary {
        let sorted = self.sorted_ms();
        let stages: Vec<Stages> = self.samples.iter().filter_map(|s| s.stages).collect();
        RunSummary {
            frame_ms: self.frame_ms,
            e2ee: self.e2ee,
            p50_ms: percentile(&sorted, 50.0),
            p95_ms: percentile(&sorted, 95.0),
            p99_ms: percentile(&sorted, 99.0),
            samples: sorted.len(),
            mean_ms: if sorted.is_empty() {
                f64::NAN
            } else {
                sorted.iter().sum::<f64>() / sorted.len() as f64
            },
            stages: StageSummary {
                capture_buffering: mean_of(&stages, |s| s.capture_buffering),
                encode: mean_of(&stages, |s| s.encode),
                encrypt: mean_of(&stages, |s| s.encrypt),
                network: mean_of(&stages, |s| s.network),
                playout_wait: mean_of(&stages, |s| s.playout_wait),
                decrypt: mean_of(&stages, |s| s.decrypt),
                decode: mean_of(&stages, |s| s.decode),
                playback_buffering: mean_of(&stages, |s| s.playback_buffering),
            },
            min_ms: sorted.first().copied().unwrap_or(f64::NAN),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            loss_percent: self.impairment.map_or(0.0, |i| i.loss_percent),
            jitter_ms: self.impairment.map_or(0.0, |i| ms(i.jitter)),
            codec_lookahead_ms: ms(self.codec_lookahead),
            late_loss_pct: if self.frames_sent == 0 {
                0.0
            } else {
                100.0 * self.playout.late as f64 / self.frames_sent as f64
            },
            spike_ms: self.impairment.map_or(0.0, |i| ms(i.spike)),
            recovery_ms: self.recovery.map(ms),
            accelerated_ms: self.playout.stretch_removed as f64 / 48.0,
            expanded_ms: self.playout.stretch_inserted as f64 / 48.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
