//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// Share of `x`'s power at `freq` (Goertzel), 0..=1. A clean tone at `freq` gives ~1.
pub fn tone_ratio(x: &[f32], rate: f64, freq: f64) -> f64 {
    sotto::media::tone_share(x, rate, freq)
}

/// The strongest frequency in `x` among `candidates` (Hz).
pub fn dominant(x: &[f32], rate: f64, candidates: impl Iterator<Item = f64>) -> f64 {
    candidates
        .map(|f| (f, tone_ratio(x, rate, f)))
        .fold((0.0, -1.0), |a, b| if b.1 > a.1 { b } else { a })
        .0
}

/// Whether tests must have real devices (CI, or `SOTTO_REQUIRE_DEVICES=1`).
pub fn devices_required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("SOTTO_REQUIRE_DEVICES").is_ok_and(|v| v == "1")
}

/// Prints a skip notice past the test harness' output capture, so it shows in a normal run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (run scripts/test for real devices; CI or SOTTO_REQUIRE_DEVICES=1 makes this a failure)"
    );
}

/// A signaling server running in-process on a free loopback port.
pub struct TestServer {
    /// `ws://127.0.0.1:PORT/ws`.
    pub url: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl TestServer {
    /// Starts the real server (default limits) on the current runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let app =
            sotto_signaling::App::new(sotto_signaling::ServerConfig::default(), shutdown.clone());
        tokio::spawn(sotto_signaling::serve(listener, app));
        TestServer { url, shutdown }
    }
}

impl TestServer {
    /// Starts the real server with an SFU in the same process (`sotto-signaling --sfu`), one
    /// worker on loopback.
    pub async fn start_with_sfu() -> Self {
        Self::start_with_sfu_link(std::sync::Arc::new(Self::loopback_sfu())).await
    }

    /// The SFU `start_with_sfu` hosts: one worker on loopback.
    pub fn loopback_sfu() -> sotto_sfu::Sfu {
        sotto_sfu::Sfu::start(sotto_sfu::SfuConfig {
            workers: 1,
            ..sotto_sfu::SfuConfig::default()
        })
        .unwrap()
    }

    /// Starts the real server hosting `sfu` (a test may wrap the SFU to watch or disturb it).
    pub async fn start_with_sfu_link(sfu: std::sync::Arc<dyn sotto_signaling::SfuLink>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let app = sotto_signaling::App::with_sfu(
            sotto_signaling::ServerConfig::default(),
            shutdown.clone(),
            Some(sfu),
        );
        tokio::spawn(sotto_signaling::serve(listener, app));
        TestServer { url, shutdown }
    }
}

impl TestServer {
    /// A handle to a server run elsewhere (its `url` set by the caller): dropping it stops
    /// nothing.
    pub fn detached() -> Self {
        TestServer {
            url: String::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A sink that keeps everything played, for analysis after the call.
#[derive(Clone, Default)]
pub struct CaptureSink(pub std::sync::Arc<std::sync::Mutex<Vec<f32>>>);

impl CaptureSink {
    /// The last `seconds` of what was played (48 kHz).
    pub fn tail(&self, seconds: f64) -> Vec<f32> {
        let all = self.0.lock().unwrap();
        let n = ((seconds * 48_000.0) as usize).min(all.len());
        all[all.len() - n..].to_vec()
    }
}

impl sotto::media::AudioSink for CaptureSink {
    fn write_frame(&mut self, frame: &[f32]) -> Result<(), sotto::media::MediaError> {
        self.0.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
}

/// Asserts that `heard` carries the tone `hz`: it is the strongest frequency, and it holds
/// most of the power in most 50 ms blocks ([`tone_blocks`]). Blocks, not one long window:
/// playout time-stretching and concealed frames shift the tone's phase now and then, which
/// cancels it out of a long window's single bin although every stretch of it sounds clean;
/// silence or noise fails either way.
pub fn assert_hears(heard: &[f32], hz: f64, who: &str) {
    assert!(!heard.is_empty(), "{who} heard nothing");
    let dominant = sotto::media::dominant_hz(heard, 48_000.0);
    let clear = tone_blocks(heard, hz);
    eprintln!("{who} hears {dominant:.0} Hz; {hz} Hz is clear in {clear:.2} of the 50 ms blocks");
    assert!(
        (dominant - hz).abs() <= 5.0 && clear >= 0.6,
        "{who}: expected {hz} Hz, strongest is {dominant} Hz, clear in {clear:.2} of the blocks"
    );
}

/// The `sotto` binary of this build, with no standard input.
pub fn sotto_cli() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sotto"));
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// A fresh directory for one test: `sotto-<name>-<pid>-<n>` under the temp dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sotto-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Prints a finished process's status and output, for a failing test's log.
pub fn show(who: &str, out: &std::process::Output) {
    eprintln!(
        "--- {who}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP listener bound to `addr` inside network namespace `ns` (a socket stays in the
/// namespace it was made in; only the thread that makes it moves).
pub fn tcp_listener_in_netns(ns: &str, addr: &str) -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; only this short-lived thread changes.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let l = std::net::TcpListener::bind(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap()
}

/// The last `seconds` of a WAV file (48 kHz mono, as `--output` writes it).
pub fn wav_tail(path: &std::path::Path, seconds: f64) -> Vec<f32> {
    use sotto::media::AudioSource;
    let mut src = sotto::media::WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    let n = ((seconds * 48_000.0) as usize).min(all.len());
    all[all.len() - n..].to_vec()
}

/// Share of the 50 ms blocks of `x` (48 kHz) in which the tone `hz` holds at least half the
/// power. Short blocks keep the seams that playout adaptation leaves (a dropped or repeated
/// frame shifts the tone's phase) from cancelling the tone out of a long window.
pub fn tone_blocks(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(2400).collect();
    if blocks.is_empty() {
        return 0.0;
    }
    let clear = blocks
        .iter()
        .filter(|b| tone_ratio(b, 48_000.0, hz) >= 0.5)
        .count();
    clear as f64 / blocks.len() as f64
}
