//! The peer's sender clocks, from its RTCP sender reports: each report pairs the sender's wall
//! clock (NTP) with the RTP timestamp of the same instant, per stream. Audio and video of one
//! sender share that wall clock, which is what lets a receiver line them up (lip sync).

use rtc::rtcp::sender_report::SenderReport;

/// One stream's latest sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderClock {
    /// The sender's wall clock at the report (NTP format: seconds since 1900 in the high 32
    /// bits, fraction in the low 32).
    pub ntp: u64,
    /// The stream's RTP timestamp at that instant.
    pub rtp: u32,
    /// The stream's RTP clock rate (48 000 for Opus, 90 000 for video).
    pub clock_rate: u32,
}

impl SenderClock {
    /// The clock of `report` for a stream ticking at `clock_rate`.
    pub fn from_report(report: &SenderReport, clock_rate: u32) -> Self {
        SenderClock {
            ntp: report.ntp_time,
            rtp: report.rtp_time,
            clock_rate,
        }
    }

    /// The sender's wall-clock time, in seconds, of the media with RTP timestamp `ts`. Valid
    /// for timestamps within half the RTP range of the report's (hours at these rates).
    pub fn wall_secs(&self, ts: u32) -> f64 {
        let ticks = ts.wrapping_sub(self.rtp) as i32;
        ntp_secs(self.ntp) + f64::from(ticks) / f64::from(self.clock_rate.max(1))
    }
}

/// NTP format to seconds.
fn ntp_secs(ntp: u64) -> f64 {
    (ntp >> 32) as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_map_to_the_senders_wall_clock_across_a_wrap() {
        let clock = SenderClock {
            ntp: (1000u64 << 32) | (1u64 << 31), // 1000.5 s
            rtp: u32::MAX - 44_999,              // half a second of 90 kHz before the wrap
            clock_rate: 90_000,
        };
        assert!((clock.wall_secs(u32::MAX - 44_999) - 1000.5).abs() < 1e-9);
        assert!((clock.wall_secs(45_000) - 1001.5).abs() < 1e-6);
        assert!((clock.wall_secs(u32::MAX - 134_999) - 999.5).abs() < 1e-6);
    }
}
