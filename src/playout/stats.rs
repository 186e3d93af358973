//! Counters and delay figures reported by the playout buffer.

use std::time::Duration;

/// What the playout buffer has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Packets handed out for playing.
    pub played: u64,
    /// Frames declared lost (never arrived in time).
    pub lost: u64,
    /// Packets that arrived after their frame was played or concealed (dropped).
    pub late: u64,
    /// Packets received twice (dropped).
    pub duplicate: u64,
    /// Packets refused because the buffer was full, too far ahead or too large.
    pub overflow: u64,
    /// Pops that found the buffer empty (jitter spike, DTX silence or end of stream).
    pub underruns: u64,
    /// Frames inserted on purpose to grow the delay towards the target.
    pub expanded: u64,
    /// Packets dropped on purpose to cut the delay (jitter went down, or sender clock faster).
    pub compressed: u64,
    /// Frames the consumer had to conceal: lost + underruns + expanded (after start).
    pub concealed: u64,
    /// Frames recovered from FEC (counted by the decoding layer).
    pub fec_recovered: u64,
    /// Packets the decoder rejected (counted by the decoding layer).
    pub decode_errors: u64,
    /// Times audio was shortened by time-stretching (accelerate) to cut the delay.
    pub accelerated: u64,
    /// Times audio was lengthened by time-stretching (preemptive expand) to grow the delay.
    pub preemptive_expanded: u64,
    /// Times real audio was blended into concealed audio after a loss (merge).
    pub merged: u64,
    /// Audio removed by accelerate, in samples.
    pub stretch_removed: u64,
    /// Audio inserted by preemptive expand, in samples.
    pub stretch_inserted: u64,
    /// Audio buffered ahead of the play point at the last pop.
    pub delay: Duration,
    /// The delay the buffer is steering towards.
    pub target: Duration,
    /// Arrival jitter (95th percentile of relative delay over the recent window).
    pub jitter: Duration,
    /// The largest delay seen at a pop.
    pub max_delay: Duration,
}
