//! `sotto latency`: mouth-to-ear latency through the full pipeline over real WebRTC on
//! loopback, per stage, with and without E2EE, clean and under loss and jitter; with
//! `--video`, glass-to-glass video latency (capture to shown) the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sotto::latency::{
    DeviceNames, Impairment, LatencyConfig, LatencyRun, RunSummary, VideoLatencyConfig,
    VideoLatencyRun, VideoRunSummary, measure, measure_video,
};
use sotto::media::FrameDuration;

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Seconds per run (each run is one frame length with E2EE on or off).
    #[arg(long, default_value_t = 15.0, value_parser = parse_secs)]
    duration: f64,
    /// Only this frame length (10 or 20 ms); default: both.
    #[arg(long, value_parser = parse_frame)]
    frame_ms: Option<u32>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write an SVG plot of the latency distributions to this file.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Use the real (PulseAudio) devices instead of real-time clocked virtual ones: clicks are
    /// played on the default output, heard by the default input, and the receiver plays on
    /// the output named by SOTTO_LATENCY_EAR (default `sotto_ear`, set up by scripts/pulse),
    /// which the input must not hear.
    #[arg(long)]
    devices: bool,
    /// Skip the runs under simulated 5 % loss and 30 ms jitter.
    #[arg(long)]
    no_impaired: bool,
    /// Add a run per frame length under the same loss and jitter plus one stall of this many
    /// ms in the middle, and report how long the playout delay takes to recover.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=2000))]
    spike_ms: Option<u64>,
    /// Measure video glass to glass (640x360, 30 fps, capture to shown) with E2EE on and off.
    /// Alone it runs only the video runs; with --frame-ms or --devices the audio runs too.
    #[arg(long)]
    video: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=600.0).contains(&v) => Ok(v),
        _ => Err("duration must be 1-600 seconds".into()),
    }
}

fn parse_frame(s: &str) -> Result<u32, String> {
    match s {
        "10" => Ok(10),
        "20" => Ok(20),
        _ => Err("frame length must be 10 or 20 (ms)".into()),
    }
}

#[derive(Debug, Serialize)]
struct Output {
    /// Clean loopback runs.
    runs: Vec<RunSummary>,
    /// The same pipeline under simulated loss and jitter, reported separately.
    impaired_runs: Vec<RunSummary>,
    /// E2EE's cost at the median per frame length: p50 with E2EE minus p50 without, ms.
    e2ee_p50_cost_ms: Vec<(u32, f64)>,
    devices: String,
    /// Video glass to glass (capture to shown), E2EE on and off.
    video_runs: Vec<VideoRunSummary>,
    /// E2EE's cost at the video median: p50 with E2EE minus p50 without, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    video_e2ee_p50_cost_ms: Option<f64>,
}

/// Whether this invocation measures audio: always without --video, and with it only when an
/// audio flag asks.
fn wants_audio(args: &LatencyArgs) -> bool {
    !args.video || args.frame_ms.is_some() || args.devices
}

/// The video runs of one invocation.
fn video_plan(args: &LatencyArgs) -> Vec<VideoLatencyConfig> {
    if !args.video {
        return Vec::new();
    }
    let secs = Duration::from_secs_f64(args.duration);
    [true, false]
        .into_iter()
        .map(|e2ee| VideoLatencyConfig::new(e2ee, secs))
        .collect()
}

/// The plans of one invocation: (config, impaired?).
fn plan(args: &LatencyArgs) -> Vec<(LatencyConfig, bool)> {
    if !wants_audio(args) {
        return Vec::new();
    }
    let frames: Vec<FrameDuration> = match args.frame_ms {
        Some(10) => vec![FrameDuration::Ms10],
        Some(_) => vec![FrameDuration::Ms20],
        None => vec![FrameDuration::Ms10, FrameDuration::Ms20],
    };
    let secs = Duration::from_secs_f64(args.duration);
    let devices = args.devices.then(|| DeviceNames {
        mouth: None,
        microphone: None,
        ear: std::env::var("SOTTO_LATENCY_EAR").unwrap_or_else(|_| "sotto_ear".into()),
    });
    let new = |frame, e2ee| LatencyConfig {
        devices: devices.clone(),
        ..LatencyConfig::new(frame, e2ee, secs)
    };
    let mut plans = Vec::new();
    for &frame in &frames {
        for e2ee in [true, false] {
            plans.push((new(frame, e2ee), false));
        }
    }
    if !args.no_impaired {
        for &frame in &frames {
            let mut c = new(frame, true);
            c.impairment = Some(Impairment {
                loss_percent: 5.0,
                jitter: Duration::from_millis(30),
                seed: 7,
                spike: Duration::ZERO,
            });
            c.impulse_every = Duration::from_millis(300);
            plans.push((c, true));
        }
    }
    if let Some(spike) = args.spike_ms {
        for &frame in &frames {
            let mut c = new(frame, true);
            c.impairment = Some(Impairment {
                loss_percent: 5.0,
                jitter: Duration::from_millis(30),
                seed: 7,
                spike: Duration::from_millis(spike),
            });
            c.impulse_every = Duration::from_millis(300);
            plans.push((c, true));
        }
    }
    plans
}

fn label(s: &RunSummary) -> String {
    let net = if s.spike_ms > 0.0 {
        format!(
            "{:.0}% loss, {:.0} ms jitter, {:.0} ms spike",
            s.loss_percent, s.jitter_ms, s.spike_ms
        )
    } else if s.loss_percent > 0.0 || s.jitter_ms > 0.0 {
        format!("{:.0}% loss, {:.0} ms jitter", s.loss_percent, s.jitter_ms)
    } else {
        "clean".into()
    };
    format!(
        "{} ms, E2EE {}, {net}",
        s.frame_ms,
        if s.e2ee { "on " } else { "off" }
    )
}

fn print_table(runs: &[RunSummary]) {
    println!(
        "{:<50} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6} | {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7}",
        "run (mouth to ear, ms; stages: mean)",
        "samples",
        "mean",
        "p50",
        "p95",
        "p99",
        "late%",
        "capture",
        "encode",
        "seal",
        "net",
        "playout",
        "open",
        "decode",
        "playbk"
    );
    for s in runs {
        let st = &s.stages;
        println!(
            "{:<50} {:>7} {:>6.1} {:>7.1} {:>7.1} {:>7.1} {:>6.2} | {:>7.2} {:>6.3} {:>6.3} {:>6.2} {:>7.2} {:>6.3} {:>6.3} {:>7.2}",
            label(s),
            s.samples,
            s.mean_ms,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.late_loss_pct,
            st.capture_buffering,
            st.encode,
            st.encrypt,
            st.network,
            st.playout_wait,
            st.decrypt,
            st.decode,
            st.playback_buffering
        );
    }
}

fn video_label(s: &VideoRunSummary) -> String {
    format!(
        "video {}x{} {} fps, E2EE {}",
        s.width,
        s.height,
        s.fps,
        if s.e2ee { "on " } else { "off" }
    )
}

fn print_video_table(runs: &[VideoRunSummary]) {
    println!(
        "{:<38} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>6}",
        "run (glass to glass, ms; stages: mean)",
        "frames",
        "mean",
        "p50",
        "p90",
        "p99",
        "max",
        "encode",
        "seal",
        "net",
        "handoff",
        "open",
        "decode",
        "render"
    );
    for s in runs {
        let st = &s.stages;
        println!(
            "{:<38} {:>7} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} | {:>7.2} {:>6.3} {:>6.2} {:>7.2} {:>6.3} {:>6.2} {:>6.3}",
            video_label(s),
            s.samples,
            s.mean_ms,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.max_ms,
            st.capture_to_encoded,
            st.seal,
            st.network,
            st.handoff,
            st.open,
            st.decode,
            st.render
        );
    }
}

/// One CDF line per run.
fn plot(path: &Path, runs: &[(String, Vec<f64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    let max = runs
        .iter()
        .flat_map(|(_, v)| v.last().copied())
        .fold(10.0f64, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("--plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("sotto latency (WebRTC loopback)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..(max * 1.1).ceil(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("share of clicks at or below")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (i, (name, values)) in runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let n = values.len().max(1) as f64;
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(k, v)| (*v, (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

pub fn run(args: LatencyArgs) -> Result<(), String> {
    let runtime = crate::runtime()?;
    let plans = plan(&args);
    let mut results: Vec<(LatencyRun, bool)> = Vec::new();
    for (config, impaired) in plans {
        eprintln!(
            "measuring {} ms frames, E2EE {}{} for {:.0} s ...",
            config.frame.duration().as_millis(),
            if config.e2ee { "on" } else { "off" },
            if impaired {
                ", 5% loss + 30 ms jitter"
            } else {
                ""
            },
            config.duration.as_secs_f64()
        );
        let run = runtime
            .block_on(measure(config))
            .map_err(|e| format!("latency run failed: {e}"))?;
        if run.samples.is_empty() {
            return Err("no click came through: the pipeline is broken".into());
        }
        results.push((run, impaired));
    }
    let mut video_results: Vec<VideoLatencyRun> = Vec::new();
    for config in video_plan(&args) {
        eprintln!(
            "measuring video {}x{} at {} fps, E2EE {}, for {:.0} s ...",
            config.width,
            config.height,
            config.fps,
            if config.e2ee { "on" } else { "off" },
            config.duration.as_secs_f64()
        );
        let run = runtime
            .block_on(measure_video(config))
            .map_err(|e| format!("video latency run failed: {e}"))?;
        if run.samples.is_empty() {
            return Err("no video frame came through: the pipeline is broken".into());
        }
        video_results.push(run);
    }
    let video_runs: Vec<VideoRunSummary> = video_results.iter().map(|r| r.summary()).collect();
    let video_cost = match (
        video_runs.iter().find(|r| r.e2ee),
        video_runs.iter().find(|r| !r.e2ee),
    ) {
        (Some(on), Some(off)) => Some(on.p50_ms - off.p50_ms),
        _ => None,
    };
    let runs: Vec<RunSummary> = results
        .iter()
        .filter(|(_, i)| !i)
        .map(|(r, _)| r.summary())
        .collect();
    let impaired_runs: Vec<RunSummary> = results
        .iter()
        .filter(|(_, i)| *i)
        .map(|(r, _)| r.summary())
        .collect();
    let mut e2ee_cost = Vec::new();
    for on in runs.iter().filter(|r| r.e2ee) {
        if let Some(off) = runs.iter().find(|r| !r.e2ee && r.frame_ms == on.frame_ms) {
            e2ee_cost.push((on.frame_ms, on.p50_ms - off.p50_ms));
        }
    }
    if !runs.is_empty() {
        print_table(&runs);
    }
    if !impaired_runs.is_empty() {
        println!();
        print_table(&impaired_runs);
    }
    for s in impaired_runs.iter().filter(|s| s.spike_ms > 0.0) {
        match s.recovery_ms {
            Some(r) => println!(
                "{}: delay back within 10 % of its target {r:.0} ms after the spike",
                label(s)
            ),
            None => println!("{}: delay did not recover within the run", label(s)),
        }
    }
    for (frame, cost) in &e2ee_cost {
        println!(
            "E2EE at {frame} ms frames: p50 {cost:+.2} ms against the same pipeline without it"
        );
    }
    if !video_runs.is_empty() {
        if !runs.is_empty() {
            println!();
        }
        print_video_table(&video_runs);
        for s in &video_runs {
            println!(
                "{}: {} of {} frames sent shown, {} not matched by barcode, {} keyframes, {:.0} bytes a frame",
                video_label(s).trim_end(),
                s.frames_shown,
                s.frames_sent,
                s.frames_unmatched,
                s.keyframes_sent,
                s.mean_frame_bytes
            );
        }
    }
    if let Some(cost) = video_cost {
        println!("E2EE on video: p50 {cost:+.2} ms against the same pipeline without it");
    }
    if let Some(path) = &args.json {
        let out = Output {
            runs: runs.clone(),
            impaired_runs: impaired_runs.clone(),
            e2ee_p50_cost_ms: e2ee_cost,
            devices: if args.devices {
                "real (default input and output, SOTTO_LATENCY_EAR for the receiver)".into()
            } else {
                "virtual, real-time clocked, 10 ms periods".into()
            },
            video_runs: video_runs.clone(),
            video_e2ee_p50_cost_ms: video_cost,
        };
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let lines: Vec<(String, Vec<f64>)> = results
            .iter()
            .map(|(r, _)| (label(&r.summary()), r.sorted_ms()))
            .chain(
                video_results
                    .iter()
                    .map(|r| (video_label(&r.summary()), r.sorted_ms())),
            )
            .collect();
        plot(path, &lines)?;
    }
    Ok(())
}
