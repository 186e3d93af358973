//! `sotto-signaling-load`: many concurrent WebSocket clients against a running server, or
//! against several nodes of a cluster (`--url` given once per node).
//!
//! Clients join rooms of `--room-size` peers; each sends a small message to its room every
//! `--interval-ms`, stamped with its send time; receivers record the relay latency (sender and
//! receivers share this process's clock). Client `i` connects to node `i % nodes`, so the
//! members of a room sit on different nodes whenever there are as many nodes as members or
//! more. Prints one JSON object with the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Load generator for sotto-signaling.
#[derive(Debug, Parser)]
#[command(
    name = "sotto-signaling-load",
    version,
    about,
    args_override_self = true
)]
struct Args {
    /// Server URL (`ws://HOST:PORT/ws`); once per node of a cluster.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Peers per room.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..))]
    room_size: u32,
    /// Seconds of steady traffic after everyone joined.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Each client sends one message per this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// PID of the server (once per node), to report its memory and CPU time.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// PID of the cluster's Redis, to report its CPU time.
    #[arg(long)]
    redis_pid: Option<u32>,
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds (user and system) the processes have used so far; `None` if one cannot be read.
fn cpu_s(pids: &[u32]) -> Option<f64> {
    // Clock ticks per second: 100 on Linux for these fields.
    const TICKS: f64 = 100.0;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / TICKS)
        })
        .sum()
}

/// The servers' resident memory, summed; `None` if one cannot be read.
fn rss_total_mb(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_mb(*p)).sum()
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(((after? - before?) * 100.0).round() / 100.0)
}

fn per_delivery(cpu_s: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0 && cpu_s > 0.0).then(|| (cpu_s * 1e6 / deliveries as f64 * 10.0).round() / 10.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// How long a client waits for the messages its room's others said they sent.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One client's count of the others' messages.
#[derive(Default)]
struct Tally {
    received: u64,
    expected: u64,
    marks: usize,
}

/// A text frame from the server, as the load sees it.
enum Incoming {
    /// One of the others' messages, sent at this many microseconds after the epoch.
    Data(u64),
    /// Another member's closing mark: it sent this many messages.
    Done(u64),
    Error,
    Other,
}

fn parse(t: &str) -> Incoming {
    let number = |key: &str| {
        let rest = t.split(key).nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    };
    if let Some(at) = number("\"t\":") {
        Incoming::Data(at)
    } else if let Some(n) = number("\"done\":") {
        Incoming::Done(n)
    } else if t.contains("\"error\"") {
        Incoming::Error
    } else {
        Incoming::Other
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("sotto-signaling-load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let epoch = Instant::now();
    let connect_gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let all_joined = Arc::new(Barrier::new(args.clients + 1));
    let all_finished = Arc::new(Barrier::new(args.clients));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let room_size = args.room_size as usize;

    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let url = args.url[i % args.url.len()].clone();
        let (gate, barrier) = (connect_gate.clone(), all_joined.clone());
        let (sent, received, errors, stop_at) = (
            sent.clone(),
            received.clone(),
            errors.clone(),
            stop_at.clone(),
        );
        let interval = Duration::from_millis(args.interval_ms);
        // The last room may hold fewer.
        let peers = room_size.min(args.clients - i / room_size * room_size) - 1;
        let finished = all_finished.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u64> = Vec::new();
            let ws = {
                let _permit = gate.acquire().await;
                tokio_tungstenite::connect_async(url.as_str()).await
            };
            let Ok((ws, _)) = ws else {
                errors.fetch_add(1, Relaxed);
                barrier.wait().await;
                finished.wait().await;
                return latencies;
            };
            let (mut sink, mut stream) = ws.split();
            let room = format!("load-{}", i / room_size);
            let join = json!({"v":1,"type":"join","room":room,"name":format!("c{i}")});
            if sink.send(Message::text(join.to_string())).await.is_err() {
                errors.fetch_add(1, Relaxed);
            }
            // Wait for our welcome before counting as joined.
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg
                    && t.as_str().contains("\"welcome\"")
                {
                    break;
                }
            }
            barrier.wait().await;
            // Stagger senders across the interval so the load is steady, not bursty.
            let offset = interval.mul_f64((i % 1000) as f64 / 1000.0);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
            // What the room's others said they sent (their closing marks), and what came.
            let mut tally = Tally::default();
            let mut sent_here = 0u64;
            let on_text = |tally: &mut Tally, t: &str, latencies: &mut Vec<u64>| {
                match parse(t) {
                    Incoming::Data(at) => {
                        let now = epoch.elapsed().as_micros() as u64;
                        latencies.push(now.saturating_sub(at));
                        received.fetch_add(1, Relaxed);
                        tally.received += 1;
                    }
                    Incoming::Done(n) => {
                        tally.expected += n;
                        tally.marks += 1;
                    }
                    Incoming::Error => {
                        errors.fetch_add(1, Relaxed);
                    }
                    Incoming::Other => {}
                }
            };
            let mut open = true;
            loop {
                let stop = stop_at.load(Relaxed);
                tokio::select! {
                    _ = ticker.tick() => {
                        let now = epoch.elapsed().as_micros() as u64;
                        if now >= stop { break; }
                        let msg = format!(r#"{{"v":1,"type":"signal","data":{{"t":{now}}}}}"#);
                        if sink.send(Message::text(msg)).await.is_err() {
                            errors.fetch_add(1, Relaxed);
                            open = false;
                            break;
                        }
                        sent.fetch_add(1, Relaxed);
                        sent_here += 1;
                    }
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) => on_text(&mut tally, t.as_str(), &mut latencies),
                        Some(Ok(_)) => {}
                        _ => { errors.fetch_add(1, Relaxed); open = false; break; }
                    }
                }
            }
            // The closing mark says how many we sent; the others' marks say how many to
            // wait for. Waiting for them (not for a fixed time) counts what was in flight
            // however slow the machine is, so a message missing after that was lost.
            let mark = format!(r#"{{"v":1,"type":"signal","data":{{"done":{sent_here}}}}}"#);
            if open && sink.send(Message::text(mark)).await.is_ok() {
                let _ = tokio::time::timeout(DRAIN_LIMIT, async {
                    while tally.marks < peers || tally.received < tally.expected {
                        match stream.next().await {
                            Some(Ok(Message::Text(t))) => on_text(&mut tally, t.as_str(), &mut latencies),
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                })
                .await;
            }
            // Nobody leaves before everyone has what it waited for.
            finished.wait().await;
            let _ = sink.close().await;
            latencies
        }));
    }

    all_joined.wait().await;
    let connect_s = epoch.elapsed().as_secs_f64();
    let rss_joined = rss_total_mb(&args.server_pid);
    let redis_pids: Vec<u32> = args.redis_pid.into_iter().collect();
    let cpu_joined = (cpu_s(&args.server_pid), cpu_s(&redis_pids));
    let start = epoch.elapsed();
    stop_at.store(
        (start + Duration::from_secs(args.duration)).as_micros() as u64,
        Relaxed,
    );
    tokio::time::sleep(Duration::from_secs(args.duration) / 2).await;
    let rss_mid = rss_total_mb(&args.server_pid);
    // At the stop: the steady phase only, no joins or leaves.
    tokio::time::sleep(Duration::from_secs(args.duration) / 2).await;
    let cpu_end = (cpu_s(&args.server_pid), cpu_s(&redis_pids));

    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    all.sort_unstable();
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<u64>() as f64 / all.len() as f64 / 1000.0
    };
    let received_n = received.load(Relaxed);
    let report = json!({
        "nodes": args.url.len(),
        "clients": args.clients,
        "room_size": args.room_size,
        "rooms": args.clients.div_ceil(room_size),
        "duration_s": args.duration,
        "interval_ms": args.interval_ms,
        "connect_and_join_s": (connect_s * 100.0).round() / 100.0,
        "messages_sent": sent.load(Relaxed),
        "messages_received": received_n,
        "deliveries_per_s": (received_n as f64 / args.duration.max(1) as f64).round(),
        "errors": errors.load(Relaxed),
        "latency_ms": {
            "p50": percentile(&all, 0.50),
            "p95": percentile(&all, 0.95),
            "p99": percentile(&all, 0.99),
            "max": percentile(&all, 1.0),
            "mean": (mean * 1000.0).round() / 1000.0,
        },
        "server_rss_mb": {"after_join": rss_joined, "under_load": rss_mid},
        "steady_cpu_s": {"servers": delta(cpu_joined.0, cpu_end.0), "redis": delta(cpu_joined.1, cpu_end.1)},
        "steady_cpu_us_per_delivery": per_delivery(
            delta(cpu_joined.0, cpu_end.0).unwrap_or(0.0) + delta(cpu_joined.1, cpu_end.1).unwrap_or(0.0),
            received_n,
        ),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}
