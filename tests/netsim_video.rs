//! A video call over a rate-limited link: two `sotto call` processes in two network namespaces
//! joined by a veth pair; the sender's egress goes through a `tc tbf` qdisc whose rate drops to
//! 300 kbit/s for a while and then comes back. Video must adapt down (lower bandwidth target,
//! smaller picture at the receiver) and recover, and audio must stay intelligible throughout.
//!
//! Needs root and `ip netns` (skipped otherwise, with a notice); `SOTTO_REQUIRE_NETNS=1`
//! (scripts/test sets it) makes a missing capability a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST: &str = "netsim_video";
/// The sender's and the receiver's addresses on the veth pair.
const ADDR_A: &str = "10.77.0.1";
const ADDR_B: &str = "10.77.0.2";
/// The limited rate, and how long it lasts.
const LIMIT: &str = "300kbit";
const LIMIT_FOR: Duration = Duration::from_secs(6);

fn netns_required() -> bool {
    std::env::var("SOTTO_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and the veth pair between them; deleted on drop (also on panic).
struct Netns {
    a: String,
    b: String,
    dev_a: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!("{}{}", std::process::id(), nanos % 1000);
        let ns = Netns {
            a: format!("sotto-a-{id}"),
            b: format!("sotto-b-{id}"),
            dev_a: format!("sva{}", &id[..id.len().min(11)]),
        };
        let dev_b = ns.dev_a.replacen("sva", "svb", 1);
        run(&["ip", "netns", "add", &ns.a])?;
        // From here on, a failure drops `ns`, which cleans up whatever was made.
        run(&["ip", "netns", "add", &ns.b])?;
        run(&[
            "ip", "link", "add", &ns.dev_a, "netns", &ns.a, "type", "veth", "peer", "name", &dev_b,
            "netns", &ns.b,
        ])?;
        for (n, dev, addr) in [(&ns.a, &ns.dev_a, ADDR_A), (&ns.b, &dev_b, ADDR_B)] {
            run(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", n, "link", "set", dev, "up"])?;
            run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
            // webrtc-rs opens an mDNS multicast socket, which fails (ENODEV) without a route.
            run(&["ip", "-n", n, "route", "add", "default", "dev", dev])?;
        }
        ns.set_rate("5mbit")?;
        Ok(ns)
    }

    /// The sender's egress rate (tbf; a burst of a few packets, at most 50 ms queued).
    fn set_rate(&self, rate: &str) -> Result<(), String> {
        run(&[
            "tc",
            "-n",
            &self.a,
            "qdisc",
            "replace",
            "dev",
            &self.dev_a,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "6kb",
            "latency",
            "50ms",
        ])
    }

    /// A TCP listener inside namespace A.
    fn listen_in_a(&self) -> std::net::TcpListener {
        common::tcp_listener_in_netns(&self.a, &format!("{ADDR_A}:0"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for n in [&self.a, &self.b] {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_capability() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, tc)".into());
    }
    for tool in [["ip", "netns"], ["tc", "-V"]] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(o) if o.status.success() => {}
            _ => return Some(format!("`{} {}` does not work here", tool[0], tool[1])),
        }
    }
    None
}

/// Lines a process printed, with when they were read.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct Peer {
    child: Child,
    lines: Lines,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Peer {
    fn start(ns: &str, addr: &str, url: &str, name: &str, dir: &Path) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_sotto"))
            .args(["call", "--server", url, "--room", "netsim", "--name", name])
            .args(["--bind", &format!("{addr}:0"), "--tone", "440"])
            .args(["--video", "test-pattern", "--video-size", "640x360"])
            .args(["--duration", "120"])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .arg("--video-output")
            .arg(dir.join(format!("{name}.y4m")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Lines = Arc::default();
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Peer {
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// Waits up to `timeout` for a line matching `f`, read after `since`; returns when it came.
    fn wait_for(
        &self,
        since: Instant,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Option<Instant> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let exited = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|(_, l)| l.starts_with("call ended"));
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(t, l)| *t >= since && f(l))
                .map(|(t, _)| *t);
            if found.is_some() || exited {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// Hangs up (SIGINT, as Ctrl-C) and waits for the process; returns its stderr.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        // `ip netns exec` execs the program: the child's pid is sotto's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, err)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `key` in `line` (e.g. "target " -> N in "target N kbit/s").
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// "WxH" after `key` in `line`.
fn size_after(line: &str, key: &str) -> Option<(u32, u32)> {
    let rest = &line[line.find(key)? + key.len()..];
    let (w, rest) = rest.split_once('x')?;
    let h: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((w.parse().ok()?, h.parse().ok()?))
}

fn read_wav(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    assert_eq!(spec.sample_rate, 48_000, "{spec:?}");
    let ch = usize::from(spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => r
            .samples::<i32>()
            .map(|s| s.unwrap() as f32 / (1u32 << (spec.bits_per_sample - 1)) as f32)
            .collect(),
    };
    samples.chunks(ch).map(|c| c[0]).collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-netsim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// Video adapts and recovers, and audio stays intelligible in every second. When the link
// drops, the bottleneck's queue (about 200 ms at 300 kbit/s: tbf's 6 kB burst plus 50 ms)
// fills before the first feedback slows the sender, and audio waits in it: no audio arrives
// for about 120 ms, then every packet comes about 180 ms late for a second. The receiver
// conceals the gap by repeating the last pitch period and then plays at the new delay.
#[test]
fn video_adapts_to_a_rate_limited_link_and_audio_stays_intelligible() {
    if let Some(why) = missing_capability() {
        assert!(!netns_required(), "{TEST}: {why} (SOTTO_REQUIRE_NETNS=1)");
        common::skip(TEST, &why);
        return;
    }
    let net = Netns::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The signaling server runs in this process, listening inside namespace A.
    let listener = net.listen_in_a();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    rt.spawn({
        let shutdown = shutdown.clone();
        async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown);
            sotto_signaling::serve(listener, app).await
        }
    });
    let dir = temp_dir();
    let t0 = Instant::now();
    let mut alice = Peer::start(&net.a, ADDR_A, &url, "alice", &dir);
    let mut bob = Peer::start(&net.b, ADDR_B, &url, "bob", &dir);

    // Bob sees Alice's full-size picture.
    let full = |l: &str| l.starts_with("the peer's video: 640x360");
    let shown = bob.wait_for(t0, Duration::from_secs(60), full);
    assert!(shown.is_some(), "no video at full size: {:?}", bob.lines());
    // A few seconds at full rate, then the limit.
    std::thread::sleep(Duration::from_secs(3));
    net.set_rate(LIMIT).unwrap();
    let limited = Instant::now();
    let down = bob.wait_for(limited, LIMIT_FOR + Duration::from_secs(4), |l| {
        size_after(l, "the peer's video: ").is_some_and(|(w, _)| w < 640)
    });
    let rest = (limited + LIMIT_FOR).saturating_duration_since(Instant::now());
    std::thread::sleep(rest);
    net.set_rate("5mbit").unwrap();
    let lifted = Instant::now();
    let up = bob.wait_for(lifted, Duration::from_secs(45), full);
    // A little more at full size, so the end is steady.
    std::thread::sleep(Duration::from_secs(2));
    // The receiver first, so its recording ends while audio still flows.
    let (sb, eb) = bob.finish();
    let (sa, ea) = alice.finish();
    shutdown.cancel();

    // The figures: Alice's target and Bob's picture over time.
    let secs = |t: Instant| t.saturating_duration_since(limited).as_secs_f64();
    eprintln!(
        "t = 0 at the limit ({LIMIT} for {LIMIT_FOR:?}); lifted at {:.1} s",
        secs(lifted)
    );
    let mut targets = Vec::new();
    for (t, l) in alice.lines() {
        if let Some(k) = number_after(&l, "target ") {
            targets.push((t, k));
        }
    }
    for (t, l) in alice.lines() {
        if l.starts_with("video:") || l.starts_with("stats:") {
            eprintln!("alice {:6.1} s: {l}", secs(t));
        }
    }
    for (t, l) in bob.lines() {
        if l.starts_with("the peer's video") || l.starts_with("video:") || l.starts_with("stats:") {
            eprintln!("bob {:6.1} s: {l}", secs(t));
        }
    }
    let figures: Vec<String> = targets
        .iter()
        .map(|(t, k)| format!("{:.0}:{k}", secs(*t)))
        .collect();
    eprintln!("alice's target (s:kbit/s): {}", figures.join(" "));
    eprintln!(
        "step down after {:?}, full size again {:?} after the limit was lifted",
        down.map(|t| t - limited),
        up.map(|t| t - lifted)
    );
    eprintln!("--- alice {sa}\n{ea}\n--- bob {sb}\n{eb}");
    assert!(sa.success() && sb.success(), "a call failed");

    // Video adapted down, then recovered.
    let before: Vec<u64> = targets
        .iter()
        .filter(|(t, _)| *t < limited)
        .map(|x| x.1)
        .collect();
    let during: Vec<u64> = targets
        .iter()
        .filter(|(t, _)| *t > limited + Duration::from_secs(2) && *t < lifted)
        .map(|x| x.1)
        .collect();
    let after: Vec<u64> = targets
        .iter()
        .filter(|(t, _)| *t > lifted)
        .map(|x| x.1)
        .collect();
    let max_before = before.iter().copied().max().unwrap_or(0);
    let min_during = during.iter().copied().min().unwrap_or(u64::MAX);
    let max_after = after.iter().copied().max().unwrap_or(0);
    assert!(
        max_before > 500,
        "no full-rate target before the limit: {figures:?}"
    );
    assert!(
        min_during < 300,
        "the target did not drop under the limit: {figures:?}"
    );
    assert!(max_after > 500, "the target did not recover: {figures:?}");
    assert!(
        down.is_some(),
        "Bob's picture never got smaller during the limit"
    );
    assert!(up.is_some(), "Bob's picture did not come back to 640x360");

    // Audio: every frame authentic, and the tone heard in every second.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bob.json")).unwrap()).unwrap();
    eprintln!("bob: {report}");
    let sender = std::fs::read_to_string(dir.join("alice.json")).unwrap_or_default();
    eprintln!("alice: {sender}");
    assert_eq!(report["decrypt_failures"], 0, "{report}");
    assert!(
        report["frames_decrypted"].as_u64().unwrap() > 500,
        "{report}"
    );
    assert_eq!(report["video_decrypt_failures"], 0, "{report}");
    let heard = read_wav(&dir.join("bob.wav"));
    let seconds: Vec<&[f32]> = heard.chunks_exact(48_000).collect();
    assert!(seconds.len() >= 10, "only {} s of audio", seconds.len());
    // Intelligible: in every second, the tone is what is heard in nearly every 50 ms block
    // (22 whole periods of 440 Hz, so a clean block's share is about 1). A block holding a
    // concealed or dropped frame's seam, or silence, scores low; speech with one such block in
    // five stays intelligible.
    let mut per_second = Vec::new();
    let mut worst = (1.0f64, 0usize);
    let (mut clear_blocks, mut blocks) = (0usize, 0usize);
    // The first second holds the call's start (silence before audio flows).
    for (i, second) in seconds.iter().enumerate().skip(1) {
        let share = common::tone_blocks(second, 440.0);
        let clear = (share * 20.0).round() as usize;
        per_second.push(format!("{share:.2}"));
        if clear < 20 {
            let detail: Vec<String> = second
                .chunks_exact(2400)
                .map(|b| {
                    let rms = (b.iter().map(|v| v * v).sum::<f32>() / b.len() as f32).sqrt();
                    format!("{:.2}/{rms:.2}", common::tone_ratio(b, 48_000.0, 440.0))
                })
                .collect();
            eprintln!("second {i}, share/rms per block: {}", detail.join(" "));
        }
        if share < worst.0 {
            worst = (share, i);
        }
        clear_blocks += clear;
        blocks += 20;
    }
    eprintln!(
        "share of 50 ms blocks where Bob hears the tone, per second: {}",
        per_second.join(" ")
    );
    // Every second, the onset included: the tone in at least 60 % of its blocks.
    assert!(
        worst.0 >= 0.6,
        "unclear audio: worst second {} with the tone in {:.0} % of its blocks, per second {per_second:?}",
        worst.1,
        worst.0 * 100.0
    );
    let overall = clear_blocks as f64 / blocks as f64;
    assert!(
        overall >= 0.95,
        "the tone in {:.1} % of all blocks",
        overall * 100.0
    );
    let loss = report["loss_percent"].as_f64().unwrap();
    assert!(loss < 5.0, "audio lost {loss:.1} % of its frames");
    let _ = std::fs::remove_dir_all(&dir);
}
