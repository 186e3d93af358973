//! ICE restarts: on loopback, a restart keeps a working connection working (same DTLS, same
//! SFrame contexts); across the simulated NATs of `scripts/netsim`, a call whose link goes down
//! for 2 s restarts ICE and its audio comes back, with zero decrypt failures.
//!
//! The network test needs root, `ip netns`, iptables and coturn's `turnserver` (skipped
//! otherwise, with a notice); `SOTTO_REQUIRE_NETNS=1` (scripts/test sets it) makes a missing
//! capability a failure.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{MediaTransport, TransportConfig, TransportState, seal};

fn sdp_lines<'a>(sdp: &'a str, prefix: &str) -> Vec<&'a str> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
        .collect()
}

/// Sends 50 sealed frames each way; returns how many each side opened.
async fn exchange(
    a: &MediaTransport,
    b: &MediaTransport,
    a_frames: &mut tokio::sync::mpsc::Receiver<sotto::transport::ReceivedFrame>,
    b_frames: &mut tokio::sync::mpsc::Receiver<sotto::transport::ReceivedFrame>,
    keys: &mut (
        SenderContext,
        SenderContext,
        ReceiverContext,
        ReceiverContext,
    ),
) -> (u32, u32) {
    let (a_tx, b_tx, a_rx, b_rx) = keys;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let (mut at_a, mut at_b) = (0, 0);
    for i in 0..50u32 {
        ticker.tick().await;
        let body = format!("frame {i}");
        a.send(
            &seal(a_tx, body.as_bytes()).unwrap(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        b.send(
            &seal(b_tx, body.as_bytes()).unwrap(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        while let Ok(f) = b_frames.try_recv() {
            b_rx.decrypt_to_vec(&[], &f.payload).unwrap();
            at_b += 1;
        }
        while let Ok(f) = a_frames.try_recv() {
            a_rx.decrypt_to_vec(&[], &f.payload).unwrap();
            at_a += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (at_a < 45 || at_b < 45) && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(f) = b_frames.recv() => {
                b_rx.decrypt_to_vec(&[], &f.payload).unwrap();
                at_b += 1;
            }
            Some(f) = a_frames.recv() => {
                a_rx.decrypt_to_vec(&[], &f.payload).unwrap();
                at_a += 1;
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    (at_a, at_b)
}

/// A restart offer carries new ICE credentials and the same DTLS fingerprint, is answered the
/// same way, and the connection goes on carrying frames sealed by the same SFrame contexts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_keeps_dtls_and_sframe_and_media_flows_again() {
    let mut a = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut b = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let mut a_frames = a.take_frames().unwrap();
    let mut b_frames = b.take_frames().unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer).await.unwrap();
    a.accept_answer(&answer).await.unwrap();
    a.connected(Duration::from_secs(10)).await.unwrap();
    b.connected(Duration::from_secs(10)).await.unwrap();

    let suite = CipherSuite::AesGcm128Sha256;
    let mut keys = (
        SenderContext::new(suite, 0, b"a to b key").unwrap(),
        SenderContext::new(suite, 1, b"b to a key").unwrap(),
        ReceiverContext::new(),
        ReceiverContext::new(),
    );
    keys.2.add_key(suite, 1, b"b to a key").unwrap();
    keys.3.add_key(suite, 0, b"a to b key").unwrap();
    let (at_a, at_b) = exchange(&a, &b, &mut a_frames, &mut b_frames, &mut keys).await;
    assert!(at_a >= 45 && at_b >= 45, "before: {at_a} at a, {at_b} at b");

    // The restart: A's state moves (to connecting while the new checks run, and back).
    let mut a_state = a.state_watch();
    a_state.borrow_and_update();
    let restart = a.create_restart_offer().await.unwrap();
    // Nothing to wait for on loopback: gathering finished.
    assert!(restart.gathered);
    let offer2 = restart.sdp;
    let answer2 = b.accept_offer(&offer2).await.unwrap();
    for (first, second) in [(&offer, &offer2), (&answer, &answer2)] {
        let (u1, u2) = (
            sdp_lines(first, "a=ice-ufrag:"),
            sdp_lines(second, "a=ice-ufrag:"),
        );
        assert!(!u2.is_empty() && u1[0] != u2[0], "{u1:?} -> {u2:?}");
        assert_eq!(
            sdp_lines(first, "a=fingerprint:"),
            sdp_lines(second, "a=fingerprint:")
        );
        assert!(!sdp_lines(second, "a=candidate:").is_empty(), "{second}");
    }
    assert_eq!(
        sdp_lines(&offer2, "a=fingerprint:")[0],
        a.dtls_fingerprint().to_string()
    );
    a.accept_answer(&answer2).await.unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(10), a_state.changed()).await;
    assert!(
        moved.is_ok_and(|r| r.is_ok()),
        "the restart never moved the connection's state"
    );
    a.connected(Duration::from_secs(10)).await.unwrap();
    b.connected(Duration::from_secs(10)).await.unwrap();

    let (at_a, at_b) = exchange(&a, &b, &mut a_frames, &mut b_frames, &mut keys).await;
    assert!(at_a >= 45 && at_b >= 45, "after: {at_a} at a, {at_b} at b");
    assert_eq!(a.state(), TransportState::Connected);
    assert_eq!(
        keys.2.stats().auth_failures + keys.3.stats().auth_failures,
        0
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

const PUBLIC: &str = "203.0.113.10";
const STUN_PORT: u16 = 3478;

fn netsim_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/netsim")
}

/// Whether this machine can run the network test; skips (or fails, where required) if not.
fn can_run(test: &str) -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (network namespaces, iptables)".to_string())
    } else {
        [
            ["ip", "netns"],
            ["iptables", "--version"],
            ["turnserver", "-h"],
        ]
        .into_iter()
        .find(|tool| {
            Command::new(tool[0])
                .arg(tool[1])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|tool| format!("`{}` is missing", tool.join(" ")))
    };
    match missing {
        None => true,
        Some(why) => {
            let required = std::env::var("SOTTO_REQUIRE_NETNS").is_ok_and(|v| v == "1");
            assert!(!required, "{test}: {why} (SOTTO_REQUIRE_NETNS=1)");
            common::skip(test, &why);
            false
        }
    }
}

/// The `eim` networks with coturn (as the STUN server) and the signaling server on the public
/// side; torn down on drop.
struct Networks {
    prefix: String,
    stun: Option<Child>,
    shutdown: tokio_util::sync::CancellationToken,
    url: String,
}

impl Networks {
    async fn up(prefix: &str) -> Networks {
        let prefix = format!("{prefix}{}", std::process::id() % 10_000);
        let status = Command::new(netsim_script())
            .args(["up", "eim"])
            .env("SOTTO_NETSIM_PREFIX", &prefix)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/netsim up eim failed");
        let public = format!("{prefix}-pub");
        let stun = Command::new("ip")
            .args(["netns", "exec", &public, "turnserver", "-n", "--no-cli"])
            .arg(format!("--listening-ip={PUBLIC}"))
            .arg(format!("--listening-port={STUN_PORT}"))
            .args([
                "--stun-only",
                "--no-tls",
                "--no-dtls",
                "--pidfile",
                "/dev/null",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let listener = common::tcp_listener_in_netns(&public, &format!("{PUBLIC}:0"));
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let config = sotto_signaling::ServerConfig::default();
                sotto_signaling::serve(listener, sotto_signaling::App::new(config, shutdown)).await
            }
        });
        Networks {
            prefix,
            stun: Some(stun),
            shutdown,
            url,
        }
    }

    /// LAN 1's uplink (its router's port on the public bridge) down or up.
    fn uplink(&self, up: bool) {
        let status = Command::new("ip")
            .args([
                "-n",
                &format!("{}-pub", self.prefix),
                "link",
                "set",
                "port1",
            ])
            .arg(if up { "up" } else { "down" })
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs `script` with `sh -c` in LAN 1's router.
    fn router1(&self, script: &str) {
        let status = Command::new("ip")
            .args(["netns", "exec", &format!("{}-nat1", self.prefix)])
            .args(["sh", "-c", script])
            .status()
            .unwrap();
        assert!(status.success(), "{script}");
    }

    /// `sotto call` on the host of LAN `lan` (1 or 2), with a 440 Hz (LAN 1) or 660 Hz tone,
    /// its standard output read line by line into `lines`.
    fn call(&self, lan: u8, dir: &Path, lines: std::sync::mpsc::Sender<(u8, String)>) -> Child {
        let name = if lan == 1 { "alice" } else { "bob" };
        let tone = if lan == 1 { "440" } else { "660" };
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-lan{lan}", self.prefix)])
            .arg(env!("CARGO_BIN_EXE_sotto"))
            .args([
                "call", "--server", &self.url, "--room", "flap", "--name", name,
            ])
            .args(["--bind", &format!("10.{lan}.0.2:0"), "--tone", tone])
            .args(["--ice-server", &format!("stun:{PUBLIC}:{STUN_PORT}")])
            // An upper bound: the test hangs up (SIGINT) once it has what it needs.
            .args(["--duration", "90"])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .env("RUST_LOG", "sotto=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if lines.send((lan, line)).is_err() {
                    break;
                }
            }
        });
        child
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(mut stun) = self.stun.take() {
            let _ = stun.kill();
            let _ = stun.wait();
        }
        let _ = Command::new(netsim_script())
            .arg("down")
            .env("SOTTO_NETSIM_PREFIX", &self.prefix)
            .status();
    }
}

/// The output lines of both calls, as they come.
struct Lines {
    rx: std::sync::mpsc::Receiver<(u8, String)>,
    seen: Vec<(u8, String)>,
}

impl Lines {
    /// Waits until both LANs printed a line containing `what` (after the lines already
    /// consumed); returns when the second one did.
    fn both(&mut self, what: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut found = [false; 2];
        while !(found[0] && found[1]) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((lan, line)) => {
                    if line.contains(what) {
                        found[usize::from(lan - 1)] = true;
                    }
                    self.seen.push((lan, line));
                }
                Err(_) => panic!(
                    "waited {timeout:?} for {what:?} from both; they said:\n{}",
                    self.dump()
                ),
            }
        }
        Instant::now()
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|(lan, l)| format!("lan{lan}: {l}\n"))
            .collect()
    }
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// LAN 1's uplink goes down for 2 s mid-call (media and signaling alike). Both sides say they
/// are reconnecting, the initiator restarts ICE, both are connected again, the audio comes
/// back and nothing failed to decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_a_link_flap_with_an_ice_restart() {
    if !can_run("a_call_survives_a_link_flap_with_an_ice_restart") {
        return;
    }
    let net = Networks::up("snf").await;
    let dir = common::temp_dir("ice-restart-flap");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    let mut calls = [net.call(1, &dir, tx.clone()), net.call(2, &dir, tx)];
    let outcome = tokio::task::block_in_place(|| {
        lines.both("first audio from the peer", Duration::from_secs(30));
        net.uplink(false);
        let down = Instant::now();
        let lost = lines.both(
            "state: connection lost, reconnecting",
            Duration::from_secs(15),
        );
        // The outage itself: what the call has to live through.
        std::thread::sleep(Duration::from_secs(2).saturating_sub(down.elapsed()));
        net.uplink(true);
        let up = Instant::now();
        let back = lines.both("state: connected", Duration::from_secs(20));
        // Audio after the restart, for the tone check.
        std::thread::sleep(Duration::from_millis(2500));
        (lost - down, up - down, back - up)
    });
    for call in &calls {
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs sotto in place).
        unsafe { libc::kill(call.id() as libc::pid_t, libc::SIGINT) };
    }
    let statuses: Vec<_> = calls.iter_mut().map(|c| c.wait().unwrap()).collect();
    let (noticed, outage, resumed) = outcome;
    eprintln!(
        "link down: both reconnecting after {noticed:?}; down for {outage:?}; both connected \
         again {resumed:?} after it came back"
    );
    let logs = || {
        let log = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap();
        format!(
            "{}--- alice\n{}--- bob\n{}",
            lines.dump(),
            log("alice"),
            log("bob")
        )
    };
    assert!(
        statuses.iter().all(|s| s.success()),
        "{statuses:?}\n{}",
        logs()
    );
    for (name, hz) in [("alice", 660.0), ("bob", 440.0)] {
        let r = report(&dir, name);
        assert!(
            r["ice_restarts"].as_u64().unwrap_or(0) >= 1,
            "{r}\n{}",
            logs()
        );
        assert_eq!(r["decrypt_failures"], 0, "{r}");
        assert_eq!(r["reorder_rejected"], 0, "{r}");
        assert!(r["frames_decrypted"].as_u64().unwrap_or(0) > 100, "{r}");
        // The last 2 s, all after the restart (whoever ends first leaves the other a moment
        // of silence at the end).
        let mut heard = common::wav_tail(&dir.join(format!("{name}.wav")), 6.0);
        while heard.len() > 960 && heard[heard.len() - 960..].iter().all(|v| v.abs() < 0.01) {
            heard.truncate(heard.len() - 960);
        }
        let from = heard.len().saturating_sub(96_000);
        let clear = common::tone_blocks(&heard[from..], hz);
        assert!(
            clear >= 0.8,
            "{name} heard {hz} Hz in {clear:.2} of the blocks after the restart"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// LAN 1's uplink goes down for good: after 30 s of reconnecting, both sides end the call with
/// the reason and exit 1. Ignored (it takes over 30 s): `cargo test --test ice_restart --
/// --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes over 30 s"]
async fn a_path_that_never_comes_back_ends_the_call_after_30_s() {
    if !can_run("a_path_that_never_comes_back_ends_the_call_after_30_s") {
        return;
    }
    let net = Networks::up("sng").await;
    let dir = common::temp_dir("ice-restart-gone");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    let mut calls = [net.call(1, &dir, tx.clone()), net.call(2, &dir, tx)];
    let lost = tokio::task::block_in_place(|| {
        lines.both("first audio from the peer", Duration::from_secs(30));
        net.uplink(false);
        lines.both(
            "state: connection lost, reconnecting",
            Duration::from_secs(15),
        )
    });
    let statuses: Vec<_> =
        tokio::task::block_in_place(|| calls.iter_mut().map(|c| c.wait().unwrap()).collect());
    let waited = lost.elapsed();
    let _ = lines.rx.try_iter().map(|l| lines.seen.push(l)).count();
    eprintln!("both ended {waited:?} after both said they were reconnecting");
    for (name, status) in ["alice", "bob"].iter().zip(&statuses) {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {log}\n{}", lines.dump());
        assert!(
            log.contains("connection lost: the path to the peer did not come back within 30 s"),
            "{name}: {log}"
        );
        let r = report(&dir, name);
        assert!(
            r["ended"]
                .as_str()
                .is_some_and(|e| e.starts_with("connection lost")),
            "{r}"
        );
    }
    assert!(waited >= Duration::from_secs(25), "{waited:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// While LAN 1 is cut off for 3 s, its router's UDP mappings expire and it comes back with a
/// new public address: the old path cannot return, only a restart with freshly gathered
/// candidates finds the new one. Ignored (not in CI's budget): `cargo test --test ice_restart
/// -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a second network test, run by hand"]
async fn a_new_nat_mapping_is_found_by_a_restart() {
    if !can_run("a_new_nat_mapping_is_found_by_a_restart") {
        return;
    }
    let net = Networks::up("snm").await;
    let dir = common::temp_dir("ice-restart-remap");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    // Every UDP mapping of the router lapses after 1 s without traffic.
    net.router1(
        "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=1 \
         net.netfilter.nf_conntrack_udp_timeout_stream=1",
    );
    let mut calls = [net.call(1, &dir, tx.clone()), net.call(2, &dir, tx)];
    let resumed = tokio::task::block_in_place(|| {
        lines.both("first audio from the peer", Duration::from_secs(30));
        // Both sides of the router go quiet, so nothing refreshes its mappings.
        net.uplink(false);
        let down = Instant::now();
        net.router1(
            "ip link set lan down && ip addr add 203.0.113.21/24 dev wan && \
             iptables -t nat -I POSTROUTING -o wan -p udp -j SNAT --to-source 203.0.113.21",
        );
        lines.both(
            "state: connection lost, reconnecting",
            Duration::from_secs(15),
        );
        std::thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
        net.router1("ip link set lan up");
        net.uplink(true);
        let up = Instant::now();
        let back = lines.both("state: connected", Duration::from_secs(25));
        std::thread::sleep(Duration::from_millis(2500));
        back - up
    });
    for call in &calls {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(call.id() as libc::pid_t, libc::SIGINT) };
    }
    let statuses: Vec<_> = calls.iter_mut().map(|c| c.wait().unwrap()).collect();
    eprintln!("new mapping: both connected again {resumed:?} after the link came back");
    assert!(statuses.iter().all(|s| s.success()), "{}", lines.dump());
    for (name, hz) in [("alice", 660.0), ("bob", 440.0)] {
        let r = report(&dir, name);
        assert!(r["ice_restarts"].as_u64().unwrap_or(0) >= 1, "{r}");
        assert_eq!(r["decrypt_failures"], 0, "{r}");
        let mut heard = common::wav_tail(&dir.join(format!("{name}.wav")), 6.0);
        while heard.len() > 960 && heard[heard.len() - 960..].iter().all(|v| v.abs() < 0.01) {
            heard.truncate(heard.len() - 960);
        }
        let from = heard.len().saturating_sub(96_000);
        let clear = common::tone_blocks(&heard[from..], hz);
        assert!(
            clear >= 0.8,
            "{name} heard {hz} Hz in {clear:.2} of the blocks"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
