//! SFU figures on loopback with real webrtc-rs clients: CPU time of the SFU's worker threads
//! per forwarded packet (and its inverse, packets per CPU-second), forwarded packets per
//! second, the worker's wakeups per packet in, and the send-to-receive latency of a frame
//! through the SFU (both clients' stacks included). Prints one JSON object.
//!
//! `cargo run --release -p sotto-sfu --example bench -- [members] [seconds]`
//! (or `scripts/bench-sfu`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, SUITE, SentLog, base_key};
use sotto::sframe::ReceiverContext;
use sotto_sfu::{DropReason, ForwardConfig, Sfu, SfuConfig};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU seconds (user plus system) and voluntary context switches of this process's threads
/// named `sotto-sfu-*`. The CPU time comes from `schedstat` (nanoseconds); `stat` counts only
/// 10 ms ticks, too coarse for a few tenths of a second.
fn sfu_cpu() -> (f64, u64) {
    let (mut total, mut switches) = (0.0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (f64::NAN, 0);
    };
    for task in tasks.flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if !name.starts_with("sotto-sfu") {
            continue;
        }
        total += std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split(' ').next().and_then(|f| f.parse::<f64>().ok()))
            .map_or(f64::NAN, |ns| ns / 1e9);
        switches += std::fs::read_to_string(task.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
    }
    (total, switches)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let members: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let sfu = Arc::new(
        Sfu::start(SfuConfig {
            workers: 1,
            forward: ForwardConfig::default(),
            ..SfuConfig::default()
        })
        .expect("sfu"),
    );
    let log: SentLog = Arc::default();
    let mut clients = Vec::new();
    for kid in 0..members {
        let (client, offer) = Client::new(kid as u64, 3, 10 + (kid as u8 * 7) % 100).await;
        let s = Arc::clone(&sfu);
        let answer =
            tokio::task::spawn_blocking(move || s.join("bench", &format!("m{kid}"), &offer))
                .await
                .expect("join task")
                .expect("join");
        client.accept(answer).await;
        client.start_sending_with(Duration::from_millis(20), Arc::clone(&log), |_| {
            let mut frame = now_us().to_be_bytes().to_vec();
            frame.resize(80, 0x55);
            frame
        });
        clients.push(client);
    }
    // Receivers: decrypt, read the send time, keep latencies once measuring.
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut tasks = Vec::new();
    for mut c in clients.drain(..) {
        let measuring = Arc::clone(&measuring);
        let latencies = Arc::clone(&latencies);
        let n = members as u64;
        tasks.push(tokio::spawn(async move {
            // One context per receiver with every sender's key, made once (a context holds
            // at most 64 keys, and deriving them per packet would load the clients).
            let mut rx = ReceiverContext::new();
            for kid in 0..n {
                rx.add_key(SUITE, kid, &base_key(kid)).expect("bench key");
            }
            let mut buf = Vec::new();
            while let Some(p) = c.packets.recv().await {
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                buf.clear();
                buf.extend_from_slice(&p.payload);
                let Ok(frame) = rx.decrypt_in_place(&[], &mut buf) else {
                    continue;
                };
                let Some(sent) = frame.payload.get(..8).and_then(|b| b.try_into().ok()) else {
                    continue;
                };
                let sent = u64::from_be_bytes(sent);
                if let Ok(mut l) = latencies.lock() {
                    l.push(now_us().saturating_sub(sent));
                }
            }
            c
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = sfu.metrics();
    let (in0, out0, (cpu0, sw0)) = (
        m.packets_in.load(Ordering::Relaxed),
        m.packets_out.load(Ordering::Relaxed),
        sfu_cpu(),
    );
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let (in1, out1, (cpu1, sw1)) = (
        m.packets_in.load(Ordering::Relaxed),
        m.packets_out.load(Ordering::Relaxed),
        sfu_cpu(),
    );
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let forwarded = out1 - out0;
    let cpu = cpu1 - cpu0;
    // Rounded as before; a figure that cannot be computed (nothing forwarded or received) is
    // null, never NaN, so the output stays JSON.
    let round = |x: f64, digits: i32| {
        let scale = 10f64.powi(digits);
        (x * scale).round() / scale
    };
    let report = serde_json::json!({
        "members": members,
        "seconds": seconds,
        "sfu_workers": 1,
        "packets_in_per_s": round((in1 - in0) as f64 / seconds as f64, 0),
        "packets_out_per_s": round(forwarded as f64 / seconds as f64, 0),
        "sfu_cpu_seconds": round(cpu, 3),
        "sfu_cpu_us_per_forwarded_packet": round(cpu * 1e6 / forwarded as f64, 1),
        "forwarded_packets_per_cpu_second": round(forwarded as f64 / cpu, 0),
        "sfu_wakeups_per_packet_in": round((sw1 - sw0) as f64 / (in1 - in0).max(1) as f64, 2),
        "latency_ms_p50": round(percentile(&lat, 0.5), 2),
        "latency_ms_p99": round(percentile(&lat, 0.99), 2),
        "latency_samples": lat.len(),
        "dropped_rate_limit": m.dropped(DropReason::RateLimit),
        "dropped_send_failed": m.dropped(DropReason::SendFailed),
    });
    println!("{report}");
    std::process::exit(0);
}
