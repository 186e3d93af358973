//! Group call figures with the real engine on loopback (`scripts/bench-sfu` runs it): a
//! signaling server with its SFU in this process, N - 1 members talking (each its own tone),
//! then one more joins and, later, one leaves. Prints one JSON object:
//!
//! - `join`: from the joiner's start to its group code covering every member (`code_ms`: all
//!   pairwise handshakes done and trusted), to its first decrypted audio played
//!   (`first_audio_ms`), and to having played every member the SFU forwards it
//!   (`forwarded_ms`: each of those members' tones heard);
//! - `leave`: from a member's hang-up to every remaining member sending under its fresh key
//!   (`switch_ms`, at most 2 s by the protocol);
//! - `rss_per_member_kib`: the process's resident memory growth per member (each member's
//!   engine, its peer connection and its share of the SFU).
//!
//! ```text
//! cargo run --release --example group_bench -- [members]
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sotto::call::{Call, CallBuilder, CallEvent, CallState};
use sotto::handshake::Identity;
use sotto::media::{AudioSink, MediaError, ToneSource, tone_share};

const WAIT: Duration = Duration::from_secs(60);

fn tone_of(i: usize) -> f64 {
    300.0 + 100.0 * i as f64
}

/// Keeps when each frame was played and which tones it carried.
#[derive(Clone)]
struct Heard {
    start: Instant,
    tones: Vec<f64>,
    first: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl AudioSink for Heard {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        let now = self.start.elapsed();
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        for (i, hz) in self.tones.iter().enumerate() {
            if first[i].is_none() && tone_share(frame, 48_000.0, *hz) > 0.1 {
                first[i] = Some(now);
            }
        }
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn member(url: &str, name: &str, hz: f64, sink: impl AudioSink + 'static) -> Call {
    CallBuilder::new(url, "bench")
        .name(name)
        .identity(Arc::new(Identity::generate().expect("an identity")))
        .source(ToneSource::new(hz, 0.3))
        .sink(sink)
        .configure(|c| c.group = true)
        .start()
        .expect("a call")
}

/// Reads events until the call is connected and its group code covers `others` members;
/// returns when the code did.
async fn until_complete(call: &mut Call, others: usize) -> Instant {
    let (mut connected, mut covered) = (false, None);
    loop {
        let event = tokio::time::timeout(WAIT, call.next_event())
            .await
            .expect("events in time")
            .expect("the call runs");
        match event {
            CallEvent::State(CallState::Connected) => connected = true,
            CallEvent::GroupSafetyCode { members, .. } if members.len() == others => {
                covered = Some(Instant::now());
            }
            CallEvent::Ended { reason, .. } => panic!("a member's call ended: {reason}"),
            _ => {}
        }
        if let (true, Some(at)) = (connected, covered) {
            return at;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let members: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10)
        .clamp(3, 40);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("ws://{}/ws", listener.local_addr().expect("an address"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sfu = sotto_sfu::Sfu::start(sotto_sfu::SfuConfig {
        workers: 1,
        ..sotto_sfu::SfuConfig::default()
    })
    .expect("the SFU");
    let app = sotto_signaling::App::with_sfu(
        sotto_signaling::ServerConfig::default(),
        shutdown.clone(),
        Some(Arc::new(sfu)),
    );
    tokio::spawn(sotto_signaling::serve(listener, app));

    let rss_before = rss_kib();
    let mut calls = Vec::new();
    for i in 0..members - 1 {
        calls.push(member(
            &url,
            &format!("m{i}"),
            tone_of(i),
            sotto::media::NullSink::default(),
        ));
    }
    for call in &mut calls {
        until_complete(call, members - 2).await;
    }
    // They talk a moment; then the joiner comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tones: Vec<f64> = (0..members - 1).map(tone_of).collect();
    let first = Arc::new(Mutex::new(vec![None; tones.len()]));
    let start = Instant::now();
    let heard = Heard {
        start,
        tones: tones.clone(),
        first: Arc::clone(&first),
    };
    let mut joiner = member(&url, "joiner", tone_of(members - 1), heard);
    let code_at = until_complete(&mut joiner, members - 1).await;
    let code_ms = (code_at - start).as_secs_f64() * 1000.0;
    // Give the forwarded speakers time to be heard.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_per_member_kib = rss_kib().saturating_sub(rss_before) / members as u64;
    let stats = joiner.stats();
    let first_audio_ms = stats.setup_ms;
    let heard: Vec<Duration> = first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flatten()
        .copied()
        .collect();
    let forwarded_ms = heard.iter().max().map(|d| d.as_secs_f64() * 1000.0);

    // A member leaves: the others switch to fresh keys once all acked (2 s at most).
    let before: Vec<u64> = calls.iter().map(|c| c.stats().rekeys).collect();
    let mut leaver = calls.pop().expect("members");
    let left_at = Instant::now();
    leaver.hang_up().await;
    let mut remaining: Vec<&Call> = calls.iter().collect();
    remaining.push(&joiner);
    let mut before = before;
    before.pop();
    before.push(stats.rekeys);
    let switch_ms = loop {
        let switched = remaining
            .iter()
            .zip(&before)
            .all(|(c, b)| c.stats().rekeys > *b);
        if switched {
            break Some(left_at.elapsed().as_secs_f64() * 1000.0);
        }
        if left_at.elapsed() > Duration::from_secs(5) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let report = serde_json::json!({
        "members": members,
        "join": {
            "code_ms": code_ms,
            "first_audio_ms": first_audio_ms,
            "forwarded_ms": forwarded_ms,
            "forwarded_members": heard.len(),
        },
        "leave": { "switch_ms": switch_ms },
        "rss_per_member_kib": rss_per_member_kib,
        "decrypt_failures": stats.decrypt_failures,
    });
    println!("{report}");
    joiner.hang_up().await;
    for mut call in calls {
        call.hang_up().await;
    }
    shutdown.cancel();
}
