//! The examples of the C ABI, built and run against the library as users would:
//! `examples/c/call.c` (under AddressSanitizer) and `examples/python/call.py` each call a
//! `sotto call` peer through a `sotto-signaling` server, and `examples/c/sframe_vectors.c`
//! runs the RFC 9605 vectors through the SFrame functions.
//!
//! gcc and python3 are needed; without them the tests skip, unless `CI` is set or
//! `SOTTO_REQUIRE_DEVICES=1`, where they fail.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The two calls run one after the other (real-time audio on a small machine).
static CALLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long each example's call lasts, counted from its start.
const CALL_SECS: &str = "3";

fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("SOTTO_REQUIRE_DEVICES").is_ok_and(|v| v == "1")
}

/// Whether `program --version` runs; when it does not, skips (returns false) or, in CI, fails.
fn have(program: &str, test: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !required(),
            "{program} is required (CI or SOTTO_REQUIRE_DEVICES=1) but does not run"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {program} is missing (CI or SOTTO_REQUIRE_DEVICES=1 makes this a failure)"
        );
    }
    found
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the parent of this test's `deps/` directory.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds the shared library and the workspace binaries, once per test run, and returns
/// `target/<profile>`. `cargo test` does not build a crate's cdylib (its integration tests
/// cannot link it), so this runs `cargo build` itself; it selects what `cargo test
/// --workspace` selects, so features match and it reuses that build's artifacts. With
/// `SOTTO_TESTS_PREBUILT` set, scripts/test built them already.
fn built() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        // scripts/test builds these before any test runs, and meanwhile cargo's build
        // directory may be busy with its checks beside the tests.
        if std::env::var_os("SOTTO_TESTS_PREBUILT").is_some() {
            return dir;
        }
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(repo_root())
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--lib",
                "--bins",
                "--tests",
            ])
            .env("CARGO_TARGET_DIR", dir.parent().unwrap());
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().unwrap();
        assert!(status.success(), "cargo build failed");
        dir
    })
}

/// A workspace binary in `target/<profile>`.
fn workspace_bin(name: &str) -> PathBuf {
    let bin = built().join(name);
    assert!(bin.is_file(), "{} is missing", bin.display());
    bin
}

/// `target/<profile>/libsotto.so`.
fn library() -> PathBuf {
    let lib = built().join("libsotto.so");
    assert!(lib.is_file(), "{} is missing", lib.display());
    lib
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sotto-examples-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn show(who: &str, out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- {who}: {}\n{stdout}{stderr}", out.status);
    (stdout, stderr)
}

/// Compiles one C example with the flags the issue names, linked to the shared library with an
/// rpath, under AddressSanitizer; returns the executable.
fn compile_c(source: &str, dir: &Path) -> PathBuf {
    let root = repo_root();
    let exe = dir.join(Path::new(source).file_stem().unwrap());
    let lib_dir = library().parent().unwrap().to_path_buf();
    let out = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Werror", "-fsanitize=address"])
        .arg("-fno-omit-frame-pointer")
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("examples/c").join(source))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lsotto", "-lm"])
        .output()
        .unwrap();
    let (_, stderr) = show(&format!("gcc {source}"), &out);
    assert!(out.status.success(), "{source} does not compile");
    // -Werror already fails on warnings; this also catches notes and linker warnings.
    assert!(stderr.trim().is_empty(), "gcc printed diagnostics");
    exe
}

/// Sets the sanitizer options for an example run: a distinct exit code for a report. Leak
/// detection stays on: the library frees its runtime and threads in `sotto_call_free`, and
/// the Rust runtime's one-time allocations are not reported, so no suppression is needed.
fn asan(cmd: &mut Command) -> &mut Command {
    cmd.env("ASAN_OPTIONS", "abort_on_error=0:exitcode=86")
}

fn assert_no_asan_report(who: &str, out: &Output, stderr: &str) {
    assert_ne!(
        out.status.code(),
        Some(86),
        "{who}: AddressSanitizer failed"
    );
    for marker in ["AddressSanitizer", "LeakSanitizer"] {
        assert!(!stderr.contains(marker), "{who}: sanitizer report");
    }
}

/// A `sotto-signaling` server on a free loopback port, stopped on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(workspace_bin("sotto-signaling"))
            .args(["--listen", "127.0.0.1:0", "--web-dir", "/nonexistent"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line")
            .to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test learns from one call between the example and a `sotto call` peer.
struct CallRun {
    example: Output,
    example_stdout: String,
    example_stderr: String,
    peer_stats: serde_json::Value,
    peer_wav: PathBuf,
}

/// Runs `sotto call --tone 660` as the peer; once it waits in the room, runs `example` (given
/// the server, room and identity flags) to its end, then waits for the peer.
fn call_with_peer(tag: &str, dir: &Path, example: &mut Command) -> CallRun {
    let server = Server::start();
    let room = format!("examples-{tag}");
    let peer_wav = dir.join("peer.wav");
    let peer_json = dir.join("peer.json");
    let mut peer = Command::new(workspace_bin("sotto"))
        .args(["call", "--server", &server.url, "--room", &room])
        .args(["--name", "peer", "--bind", "127.0.0.1:0", "--tone", "660"])
        // A safety limit only: the example hangs up first and the peer follows.
        .args(["--duration", "60"])
        .arg("--identity")
        .arg(dir.join("peer/identity.json"))
        .arg("--output")
        .arg(&peer_wav)
        .arg("--stats-json")
        .arg(&peer_json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // A file, not a pipe nobody reads while the call runs.
        .stderr(std::fs::File::create(dir.join("peer.err")).unwrap())
        .spawn()
        .unwrap();

    // Forward the peer's lines, to start the example once the peer is in the room.
    let (tx, rx) = mpsc::channel();
    let peer_out = peer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(peer_out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("waiting for the other peer") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = peer.kill();
                panic!("the peer did not reach the room: {e}");
            }
        }
    }

    let out = example
        .args(["--server", &server.url, "--room", &room])
        .args(["--bind", "127.0.0.1:0", "--duration", CALL_SECS])
        .arg("--identity")
        .arg(dir.join("example/identity.json"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (example_stdout, example_stderr) = show(tag, &out);
    if !out.status.success() {
        // The peer would wait out its safety limit alone; the test fails either way.
        let _ = peer.kill();
    }

    let status = peer.wait().unwrap();
    let peer_stderr = std::fs::read_to_string(dir.join("peer.err")).unwrap_or_default();
    eprintln!(
        "--- peer: {status}\n{}{peer_stderr}",
        reader.join().unwrap()
    );
    // When the example failed, the caller reports why (its exit status, a sanitizer report).
    let peer_stats = if out.status.success() {
        assert!(status.success(), "the peer failed");
        serde_json::from_str(&std::fs::read_to_string(&peer_json).unwrap()).unwrap()
    } else {
        serde_json::Value::Null
    };
    CallRun {
        example: out,
        example_stdout,
        example_stderr,
        peer_stats,
        peer_wav,
    }
}

/// The 48 kHz mono samples of a WAV file `sotto call --output` wrote.
fn wav_samples(path: &Path) -> Vec<f32> {
    use engine::media::AudioSource;
    let mut src = engine::media::WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    all
}

/// What both call examples must show: a clean call, the same safety code on both sides, the
/// example's 440 Hz tone in the peer's recording, no authentication failures either way.
fn check_call(who: &str, run: &CallRun) {
    assert!(run.example.status.success(), "{who} failed");
    let events: Vec<serde_json::Value> = run
        .example_stdout
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(|j| serde_json::from_str(j).expect("each event line is one JSON object"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "state" && e["state"] == "connected"),
        "{who}: no connected state"
    );
    let ended = events.last().expect("events");
    assert_eq!(ended["event"], "ended", "{who}: the last event is the end");
    assert_eq!(ended["ok"], true, "{who}: {ended}");

    let code = run.peer_stats["safety_code"].as_str().expect("peer's code");
    assert_eq!(code.len(), 9, "{code}");
    let printed: Vec<&str> = run
        .example_stdout
        .lines()
        .filter_map(|l| l.strip_prefix("safety code: "))
        .collect();
    assert_eq!(printed, [code], "{who}: the printed safety code");

    let stats: serde_json::Value = run
        .example_stdout
        .lines()
        .find_map(|l| l.strip_prefix("stats: "))
        .map(|j| serde_json::from_str(j).unwrap())
        .expect("stats line");
    assert_eq!(stats["decrypt_failures"], 0, "{who}: {stats}");
    assert!(
        stats["frames_decrypted"].as_u64().unwrap() > 0,
        "{who}: {stats}"
    );
    assert_eq!(run.peer_stats["decrypt_failures"], 0, "{}", run.peer_stats);
    assert!(
        run.peer_stats["frames_decrypted"].as_u64().unwrap() > 0,
        "{}",
        run.peer_stats
    );
    // The peer's tone reached the example's write callback.
    let heard: u64 = run
        .example_stdout
        .lines()
        .find_map(|l| l.strip_prefix("heard ")?.split(' ').next()?.parse().ok())
        .expect("heard line");
    assert!(heard > 0, "{who} heard nothing");

    // The peer recorded the example's tone: the tolerance of tests/common::assert_hears.
    let wav = wav_samples(&run.peer_wav);
    assert!(!wav.is_empty(), "the peer recorded nothing");
    let dominant = engine::media::dominant_hz(&wav, 48_000.0);
    let share = engine::media::tone_share(&wav, 48_000.0, 440.0);
    eprintln!("the peer hears {dominant:.0} Hz; 440 Hz holds {share:.3} of the power");
    assert!(
        (dominant - 440.0).abs() <= 5.0 && share > 0.3,
        "{who}: the peer's strongest frequency is {dominant} Hz, 440 Hz share {share:.3}"
    );
}

#[test]
fn c_call_example_talks_to_a_cli_peer_under_asan() {
    if !have("gcc", "c_call_example_talks_to_a_cli_peer_under_asan") {
        return;
    }
    let _one = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("c-call");
    let exe = compile_c("call.c", &dir);
    let mut cmd = Command::new(exe);
    asan(&mut cmd).args(["--name", "c-example", "--tone", "440"]);
    let run = call_with_peer("c-call", &dir, &mut cmd);
    assert_no_asan_report("call.c", &run.example, &run.example_stderr);
    check_call("call.c", &run);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_call_example_talks_to_a_cli_peer() {
    if !have("python3", "python_call_example_talks_to_a_cli_peer") {
        return;
    }
    let _one = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("py-call");
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("examples/python/call.py"))
        .arg("--lib")
        .arg(library())
        .args(["--name", "py-example", "--tone", "440"]);
    let run = call_with_peer("py-call", &dir, &mut cmd);
    check_call("call.py", &run);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RFC 9605 SFrame vectors as the C example reads them: one line each,
/// `suite kid ctr base_key metadata plaintext ciphertext`, hex for bytes, `-` for none.
fn vector_lines() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join("tests/data/rfc9605-test-vectors.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hex = |v: &serde_json::Value| match v.as_str().unwrap() {
        "" => "-".to_string(),
        s => s.to_string(),
    };
    json["sframe"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{} {} {} {} {} {} {}",
                v["cipher_suite"],
                v["kid"],
                v["ctr"],
                hex(&v["base_key"]),
                hex(&v["metadata"]),
                hex(&v["pt"]),
                hex(&v["ct"])
            )
        })
        .collect()
}

fn run_vectors(exe: &Path, input: &str) -> (Output, String, String) {
    let mut cmd = Command::new(exe);
    let mut child = asan(&mut cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = show("sframe_vectors", &out);
    assert_no_asan_report("sframe_vectors.c", &out, &stderr);
    (out, stdout, stderr)
}

#[test]
fn c_sframe_vectors_example_passes_every_rfc9605_vector_under_asan() {
    if !have(
        "gcc",
        "c_sframe_vectors_example_passes_every_rfc9605_vector_under_asan",
    ) {
        return;
    }
    let dir = temp_dir("vectors");
    let exe = compile_c("sframe_vectors.c", &dir);
    let lines = vector_lines();
    assert_eq!(lines.len(), 5);

    let (out, stdout, _) = run_vectors(&exe, &(lines.join("\n") + "\n"));
    assert!(out.status.success());
    assert!(
        stdout.contains("sframe vectors: 5 passed, 0 failed"),
        "{stdout}"
    );

    // The program really compares: one wrong ciphertext byte is a mismatch and a failure.
    let mut wrong = lines[2].clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let (out, stdout, stderr) = run_vectors(
        &exe,
        &[&lines[0], &wrong].map(|l| l.to_string() + "\n").concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("sframe vectors: 1 passed, 1 failed"),
        "{stdout}"
    );
    assert!(stderr.contains("encrypt: wrong frame"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
