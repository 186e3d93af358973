//! `sotto latency`: mouth-to-ear latency through the full pipeline over real WebRTC on
//! loopback, per stage, with and without E2EE, clean and under loss and jitter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sotto::latency::{DeviceNames, Impairment, LatencyConfig, LatencyRun, RunSummary, measure};
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
}

/// The plans of one invocation: (config, impaired?).
fn plan(args: &LatencyArgs) -> Vec<(LatencyConfig, bool)> {
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
            });
            c.impulse_every = Duration::from_millis(300);
            plans.push((c, true));
        }
    }
    plans
}

fn label(s: &RunSummary) -> String {
    let net = if s.loss_percent > 0.0 || s.jitter_ms > 0.0 {
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
        "{:<36} {:>7} {:>6} {:>7} {:>7} {:>7} | {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7}",
        "run (mouth to ear, ms; stages: mean)",
        "samples",
        "mean",
        "p50",
        "p95",
        "p99",
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
            "{:<36} {:>7} {:>6.1} {:>7.1} {:>7.1} {:>7.1} | {:>7.2} {:>6.3} {:>6.3} {:>6.2} {:>7.2} {:>6.3} {:>6.3} {:>7.2}",
            label(s),
            s.samples,
            s.mean_ms,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
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
        .caption(
            "sotto mouth-to-ear latency (WebRTC loopback)",
            ("sans-serif", 20),
        )
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
    print_table(&runs);
    if !impaired_runs.is_empty() {
        println!();
        print_table(&impaired_runs);
    }
    for (frame, cost) in &e2ee_cost {
        println!(
            "E2EE at {frame} ms frames: p50 {cost:+.2} ms against the same pipeline without it"
        );
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
        };
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let lines: Vec<(String, Vec<f64>)> = results
            .iter()
            .map(|(r, _)| (label(&r.summary()), r.sorted_ms()))
            .collect();
        plot(path, &lines)?;
    }
    Ok(())
}
