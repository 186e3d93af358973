//! Calls between two private LANs, each behind its own NAT router, built by `scripts/netsim` from
//! network namespaces: a real coturn and the signaling server sit on the "public" side.
//!
//! Needs root, `ip netns`, iptables and coturn's `turnserver` (skipped otherwise, with a
//! notice); `SOTTO_REQUIRE_NETNS=1` (scripts/test sets it) makes a missing capability a failure.
//! The networks of one test use their own namespace prefix, so tests run side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PUBLIC: &str = "203.0.113.10";
const STUN_PORT: u16 = 3478;

fn netns_required() -> bool {
    std::env::var("SOTTO_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

fn netsim_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/netsim")
}

/// Why this machine cannot run these tests, if it cannot.
fn missing_capability() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, iptables)".into());
    }
    for tool in [
        ["ip", "netns"],
        ["iptables", "--version"],
        ["turnserver", "-h"],
        ["tcpdump", "--version"],
    ] {
        let ok = Command::new(tool[0])
            .arg(tool[1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!("`{}` is missing", tool.join(" ")));
        }
    }
    None
}

/// Skips (or, where required, fails) when the machine lacks a capability.
fn can_run(test: &str) -> bool {
    match missing_capability() {
        None => true,
        Some(why) => {
            assert!(!netns_required(), "{test}: {why} (SOTTO_REQUIRE_NETNS=1)");
            common::skip(test, &why);
            false
        }
    }
}

/// The simulated networks, and the servers on their public side; all torn down on drop.
struct Networks {
    prefix: String,
    turn: Option<Child>,
    shutdown: tokio_util::sync::CancellationToken,
    url: String,
}

impl Networks {
    /// Builds the `variant` networks with coturn (STUN, and TURN with `secret`) and the
    /// signaling server on the public side; with `offer_turn` the signaling server hands out
    /// coturn's STUN and TURN (with credentials) in `welcome`.
    async fn up(prefix: &str, variant: &str, secret: &str, offer_turn: bool) -> Networks {
        let turn = [format!("turn:{PUBLIC}:{STUN_PORT}?transport=udp")];
        Self::up_offering(
            prefix,
            variant,
            secret,
            if offer_turn { &turn } else { &[] },
        )
        .await
    }

    /// [`Networks::up`], the signaling server offering coturn's STUN and `turn_urls` (none:
    /// no ICE servers at all). coturn listens on UDP and TCP.
    async fn up_offering(
        prefix: &str,
        variant: &str,
        secret: &str,
        turn_urls: &[String],
    ) -> Networks {
        let offer_turn = !turn_urls.is_empty();
        let turn_urls = turn_urls.to_vec();
        let prefix = format!("{prefix}{}", std::process::id() % 10_000);
        let status = Command::new(netsim_script())
            .args(["up", variant])
            .env("SOTTO_NETSIM_PREFIX", &prefix)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/netsim up {variant} failed");
        let public = format!("{prefix}-pub");
        let turn = Command::new("ip")
            .args(["netns", "exec", &public, "turnserver", "-n", "--no-cli"])
            .arg(format!("--listening-ip={PUBLIC}"))
            .arg(format!("--relay-ip={PUBLIC}"))
            .arg(format!("--listening-port={STUN_PORT}"))
            .args(["--use-auth-secret", "--realm=sotto", "--fingerprint"])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--no-tls", "--no-dtls", "--log-file=stdout", "--simple-log"])
            .args(["--pidfile", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_coturn(&public);
        let listener = common::tcp_listener_in_netns(&public, &format!("{PUBLIC}:0"));
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            let secret = secret.to_owned();
            async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut config = sotto_signaling::ServerConfig::default();
                if offer_turn {
                    config.ice = sotto_signaling::turn::IceOffer {
                        stun_urls: vec![format!("stun:{PUBLIC}:{STUN_PORT}")],
                        turn_urls,
                        turn_secret: Some(zeroize::Zeroizing::new(secret.as_bytes().to_vec())),
                        turn_ttl: Duration::from_secs(600),
                    };
                }
                sotto_signaling::serve(listener, sotto_signaling::App::new(config, shutdown)).await
            }
        });
        Networks {
            prefix,
            turn: Some(turn),
            shutdown,
            url,
        }
    }

    /// `sotto call` on the host of LAN `lan` (1 or 2), with a 440 Hz (LAN 1) or 660 Hz tone.
    fn call(&self, lan: u8, room: &str, dir: &Path, extra: &[&str]) -> Command {
        let name = if lan == 1 { "alice" } else { "bob" };
        let tone = if lan == 1 { "440" } else { "660" };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-lan{lan}", self.prefix)])
            .arg(env!("CARGO_BIN_EXE_sotto"))
            .args([
                "call", "--server", &self.url, "--room", room, "--name", name,
            ])
            .args(["--bind", &format!("10.{lan}.0.2:0"), "--tone", tone])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .args(extra)
            // What the transport did (candidates, ICE states) shows with a failed call.
            .env("RUST_LOG", "sotto=debug")
            .stdin(Stdio::null());
        cmd
    }
}

/// Waits (up to 10 s) until coturn accepts TCP connections in namespace `ns`: it gives no
/// other sign of being ready, and a client that comes first has its first request refused.
fn wait_for_coturn(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; only this short-lived thread changes.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let addr: std::net::SocketAddr = format!("{PUBLIC}:{STUN_PORT}").parse().unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("coturn does not listen on {addr}");
    })
    .join()
    .unwrap();
}

impl Drop for Networks {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(mut turn) = self.turn.take() {
            let _ = turn.kill();
            let _ = turn.wait();
        }
        let _ = Command::new(netsim_script())
            .arg("down")
            .env("SOTTO_NETSIM_PREFIX", &self.prefix)
            .status();
    }
}

/// Runs both calls to their end; returns (alice, bob).
async fn both(mut alice: Command, mut bob: Command) -> (Output, Output) {
    let a = tokio::task::spawn_blocking(move || alice.output().unwrap());
    let b = tokio::task::spawn_blocking(move || bob.output().unwrap());
    (a.await.unwrap(), b.await.unwrap())
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// Behind endpoint-independent NATs, STUN alone connects the LANs (server-reflexive
/// candidates), and both sides hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_two_endpoint_independent_nats_connects_with_stun() {
    if !can_run("a_call_across_two_endpoint_independent_nats_connects_with_stun") {
        return;
    }
    let net = Networks::up("sne", "eim", "unused", false).await;
    let dir = common::temp_dir("netsim-nat-eim");
    let stun = format!("stun:{PUBLIC}:{STUN_PORT}");
    let args = ["--ice-server", stun.as_str(), "--duration", "6"];
    let (a, b) = both(
        net.call(1, "eim", &dir, &args),
        net.call(2, "eim", &dir, &args),
    )
    .await;
    check_call_worked(&a, &b, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both calls ended well, decrypted everything, and each side heard the other's tone in its
/// last 2 s of it.
fn check_call_worked(a: &Output, b: &Output, dir: &Path) {
    common::show("alice", a);
    common::show("bob", b);
    assert!(a.status.success() && b.status.success(), "a call failed");
    for (name, hz) in [("alice", 660.0), ("bob", 440.0)] {
        let r = report(dir, name);
        assert_eq!(r["decrypt_failures"], 0, "{r}");
        assert!(r["frames_decrypted"].as_u64().unwrap_or(0) > 100, "{r}");
        // The last 2 s while the peer still talked (whoever ends first leaves the other a
        // moment of silence at the end).
        let mut heard = common::wav_tail(&dir.join(format!("{name}.wav")), 8.0);
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
}

/// With all UDP dropped by the routers and no TURN, media can never connect: both sides end
/// within their bounded time, non-zero, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_media_cannot_connect_fails_clearly() {
    if !can_run("a_call_whose_media_cannot_connect_fails_clearly") {
        return;
    }
    let net = Networks::up("snb", "udp-blocked", "unused", false).await;
    let dir = common::temp_dir("netsim-nat-blocked");
    let stun = format!("stun:{PUBLIC}:{STUN_PORT}");
    // Gathering waits 5 s for the STUN server the firewall hides before the offer goes out.
    let args = ["--ice-server", stun.as_str(), "--duration", "12"];
    let start = Instant::now();
    let (a, b) = both(
        net.call(1, "blocked", &dir, &args),
        net.call(2, "blocked", &dir, &args),
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(30));
    let reason = |o: &Output| String::from_utf8_lossy(&o.stderr).contains("never came up");
    assert!(
        reason(&a) || reason(&b),
        "neither side said the connection never came up"
    );
    for (name, out) in [("alice", &a), ("bob", &b)] {
        common::show(name, out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        // Whoever's --duration ends first leaves; the other sees that.
        assert!(
            err.contains("media never connected: the WebRTC connection never came up")
                || err.contains("media never connected: the peer left during the set-up"),
            "{name}: {err}"
        );
        let r = report(&dir, name);
        assert_eq!(r["frames_decrypted"], 0, "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Behind symmetric NATs only the TURN relay connects the LANs. The signaling server hands
/// out coturn and time-limited credentials; the clients are given no ICE flags at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_two_symmetric_nats_goes_through_turn_from_the_welcome() {
    if !can_run("a_call_across_two_symmetric_nats_goes_through_turn_from_the_welcome") {
        return;
    }
    let net = Networks::up("sns", "symmetric", "netsim-turn-secret", true).await;
    let dir = common::temp_dir("netsim-nat-symmetric");
    // Everything UDP on the public side, where coturn relays, is recorded; Alice also sends a
    // text message, whose words must never show there.
    let capture = Capture::start(&format!("{}-pub", net.prefix), &dir.join("public.pcap"));
    let marker = format!("plaintext marker {} never on the relay", std::process::id());
    std::fs::write(dir.join("alice-says.txt"), format!("{marker}\n")).unwrap();
    let mut alice = net.call(1, "symmetric", &dir, &["--duration", "12", "--chat"]);
    alice.stdin(std::fs::File::open(dir.join("alice-says.txt")).unwrap());
    let bob = net.call(2, "symmetric", &dir, &["--duration", "12", "--chat"]);
    let (a, b) = both(alice, bob).await;
    let recorded = capture.stop();
    check_call_worked(&a, &b, &dir);
    // Bob got the message, so it crossed the relay; its words never did, nor did the tones'
    // audio in any form the relay could read: 8 s of two calls' media went through it.
    let bob_out = String::from_utf8_lossy(&b.stdout);
    assert!(
        bob_out.contains(&marker),
        "bob never got the message: {bob_out}"
    );
    assert!(
        recorded.len() > 100_000,
        "the capture saw {} bytes",
        recorded.len()
    );
    assert!(
        !recorded
            .windows(marker.len())
            .any(|w| w == marker.as_bytes()),
        "the message crossed coturn in the clear"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// tcpdump in a namespace, writing every UDP packet it sees to a file.
struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts recording and returns once tcpdump listens.
    fn start(ns: &str, path: &Path) -> Capture {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", "any", "-n", "-U", "-s", "0", "-w",
            ])
            .arg(path)
            .arg("udp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                other => panic!("tcpdump did not start: {other:?}"),
            }
        }
        // Keep reading so tcpdump never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Capture {
            child,
            path: path.to_owned(),
        }
    }

    /// Stops tcpdump (it flushes on SIGINT) and returns the file's bytes.
    fn stop(mut self) -> Vec<u8> {
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs tcpdump in place).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        std::fs::read(&self.path).unwrap()
    }
}

/// `--relay-only`: the peer learns no address of ours, only the relay's, and the call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_offers_the_peer_no_address_but_the_relay() {
    if !can_run("relay_only_offers_the_peer_no_address_but_the_relay") {
        return;
    }
    let net = Networks::up("snr", "eim", "netsim-turn-secret", true).await;
    let dir = common::temp_dir("netsim-nat-relay-only");
    let mut alice = net.call(1, "relay", &dir, &["--duration", "8", "--relay-only"]);
    alice.env("RUST_LOG", "sotto::transport=debug");
    let (a, b) = both(alice, net.call(2, "relay", &dir, &["--duration", "8"])).await;
    check_call_worked(&a, &b, &dir);
    // What Alice's description and her trickled candidates carried: relay candidates only,
    // and neither her LAN address nor her NAT's public one anywhere.
    let log = String::from_utf8_lossy(&a.stderr);
    let described: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local description ready"))
        .collect();
    assert_eq!(described.len(), 1, "{log}");
    let told: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local description ready") || l.contains("local candidate"))
        .collect();
    assert!(told.iter().any(|l| l.contains("typ relay")), "{log}");
    for leak in [
        "typ host",
        "typ srflx",
        "typ prflx",
        "10.1.0.2",
        "203.0.113.11",
    ] {
        for line in &told {
            assert!(!line.contains(leak), "{leak} in {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--relay-only` with no TURN server anywhere fails at once with a clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_without_a_turn_server_says_so() {
    if !can_run("relay_only_without_a_turn_server_says_so") {
        return;
    }
    let net = Networks::up("snn", "eim", "unused", false).await;
    let dir = common::temp_dir("netsim-nat-relay-none");
    let out = net
        .call(1, "none", &dir, &["--duration", "20", "--relay-only"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("relay-only needs a TURN server"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A STUN server that never answers (here one address past everything, whose packets the
/// upstream swallows) held each description up for the 5 s gathering limit before trickle ICE
/// (set-up took 10.5 s: the offer's wait, then the answer's). Now the descriptions go at once
/// and the server-reflexive candidates from the STUN server that does answer follow as they
/// come: the call is up long before that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_server_that_never_answers_does_not_hold_up_the_call() {
    if !can_run("a_stun_server_that_never_answers_does_not_hold_up_the_call") {
        return;
    }
    let net = Networks::up("snt", "eim", "unused", false).await;
    let dir = common::temp_dir("netsim-nat-silent-stun");
    let stun = format!("stun:{PUBLIC}:{STUN_PORT}");
    let args = [
        "--ice-server",
        stun.as_str(),
        "--ice-server",
        "stun:192.0.2.1:3478",
        "--duration",
        "8",
    ];
    let (a, b) = both(
        net.call(1, "silent", &dir, &args),
        net.call(2, "silent", &dir, &args),
    )
    .await;
    check_call_worked(&a, &b, &dir);
    for name in ["alice", "bob"] {
        let r = report(&dir, name);
        let setup = r["setup_ms"].as_f64().unwrap_or(f64::MAX);
        eprintln!("{name}: set-up {setup:.0} ms");
        // Generous: the old wait alone was 5 s.
        assert!(setup < 3_500.0, "{name}: set-up {setup} ms, {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// All UDP to the outside dropped by the routers: the signaling server hands out coturn over
/// TCP (`turn:...?transport=tcp`), the engine carries its TURN client over TCP, the relay's
/// UDP allocation joins the two, and both sides hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_udp_is_blocked_goes_through_turn_over_tcp() {
    if !can_run("a_call_whose_udp_is_blocked_goes_through_turn_over_tcp") {
        return;
    }
    // As a deployment would: both transports (and STUN). The firewall hides STUN and TURN
    // over UDP; with trickle ICE they do not hold the descriptions up.
    let turn = [
        format!("turn:{PUBLIC}:{STUN_PORT}?transport=udp"),
        format!("turn:{PUBLIC}:{STUN_PORT}?transport=tcp"),
    ];
    let net = Networks::up_offering("snu", "udp-blocked", "netsim-turn-secret", &turn).await;
    let dir = common::temp_dir("netsim-nat-turn-tcp");
    let args = ["--duration", "20"];
    let (a, b) = both(
        net.call(1, "tcp", &dir, &args),
        net.call(2, "tcp", &dir, &args),
    )
    .await;
    check_call_worked(&a, &b, &dir);
    for name in ["alice", "bob"] {
        let r = report(&dir, name);
        eprintln!("{name}: set-up {} ms through TURN over TCP", r["setup_ms"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same with `--ice-server` (and relay-only): the description offers the relay's address
/// only, never the loopback end of the TCP bridge nor the host's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_over_turn_tcp_from_the_command_line_offers_only_the_relay() {
    if !can_run("relay_only_over_turn_tcp_from_the_command_line_offers_only_the_relay") {
        return;
    }
    let secret = "netsim-turn-secret";
    let net = Networks::up_offering("snc", "udp-blocked", secret, &[]).await;
    let dir = common::temp_dir("netsim-nat-turn-tcp-cli");
    // coturn's REST credentials (user "expiry:name", password base64(HMAC-SHA1(secret, user))).
    let user = format!(
        "{}:netsim",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    );
    let password = sotto_signaling::turn::rest_credential(secret.as_bytes(), &user);
    let url = format!("turn:{PUBLIC}:{STUN_PORT}?transport=tcp");
    let args = [
        "--ice-server",
        url.as_str(),
        "--ice-username",
        user.as_str(),
        "--ice-credential",
        password.as_str(),
        "--duration",
        "10",
        "--relay-only",
    ];
    let mut alice = net.call(1, "tcpcli", &dir, &args);
    alice.env("RUST_LOG", "sotto::transport=debug");
    let (a, b) = both(alice, net.call(2, "tcpcli", &dir, &args)).await;
    check_call_worked(&a, &b, &dir);
    for name in ["alice", "bob"] {
        let r = report(&dir, name);
        eprintln!("{name}: set-up {} ms through TURN over TCP", r["setup_ms"]);
    }
    let log = String::from_utf8_lossy(&a.stderr);
    let described: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local description ready"))
        .collect();
    assert_eq!(described.len(), 1, "{log}");
    assert!(
        described[0].contains(&format!("{PUBLIC} ")) && described[0].contains("typ relay"),
        "{}",
        described[0]
    );
    for leak in [
        "typ host",
        "typ srflx",
        "127.0.0.1",
        "10.1.0.2",
        "203.0.113.11",
    ] {
        assert!(!described[0].contains(leak), "{leak} in {}", described[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
