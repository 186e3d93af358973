//! The browser across the simulated NATs of `scripts/netsim`, over HTTPS: Chromium runs in
//! LAN 1's namespace and loads the page from `sotto-signaling --tls-self-signed` on the public
//! side, trusting only that certificate (by its public key); `sotto call` runs in LAN 2. And
//! ICE restarts between the page and the CLI, in both roles, when LAN 1's uplink goes down.
//!
//! Needs root, `ip netns`, iptables, coturn's `turnserver` and Chromium: skipped otherwise
//! with a notice, unless `SOTTO_REQUIRE_NETNS=1` (a missing network capability) or
//! `SOTTO_REQUIRE_BROWSER=1` (a missing Chromium) makes that a failure (scripts/test sets both).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto::media::{AudioSource, WavSource};

use crate::cdp::{Browser, Launch, Page};
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, tone_wav, wait_status};

const PUBLIC: &str = "203.0.113.10";
const HTTPS_PORT: u16 = 8443;
const STUN_PORT: u16 = 3478;

fn netsim_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netsim")
}

/// Why this machine cannot run these tests, if it cannot; fails instead where required.
fn can_run(test: &str) -> bool {
    let required = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    let missing_net = if unsafe { libc::geteuid() } != 0 {
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
    let why = if let Some(why) = missing_net {
        assert!(
            !required("SOTTO_REQUIRE_NETNS"),
            "{test}: {why} (SOTTO_REQUIRE_NETNS=1)"
        );
        why
    } else if crate::cdp::find_chromium().is_none() {
        assert!(
            !required("SOTTO_REQUIRE_BROWSER"),
            "{test}: no Chromium (SOTTO_REQUIRE_BROWSER=1)"
        );
        "no Chromium".to_string()
    } else {
        return true;
    };
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes.
fn spki_sha256_base64(pem: &str) -> String {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    // One DER element at `at`: (start of its content, end of the element).
    let element = |at: usize| -> (usize, usize) {
        let len0 = der[at + 1];
        if len0 < 0x80 {
            (at + 2, at + 2 + usize::from(len0))
        } else {
            let n = usize::from(len0 & 0x7f);
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (at + 2 + n, at + 2 + n + len)
        }
    };
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serial, signature,
    // issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    let (tbs, _) = element(0);
    let (mut at, _) = element(tbs);
    if der[at] == 0xa0 {
        at = element(at).1; // The explicit version.
    }
    for _ in 0..5 {
        at = element(at).1; // serial, signature, issuer, validity, subject.
    }
    assert_eq!(der[at], 0x30, "no SubjectPublicKeyInfo in the certificate");
    let spki = &der[at..element(at).1];
    let hash = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
}

/// A child process killed (if still running) when the test ends, a failing one too.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The networks, coturn and `sotto-signaling` over HTTPS on the public side; torn down on drop.
struct Net {
    prefix: String,
    servers: Vec<Child>,
    dir: PathBuf,
    cert: PathBuf,
    spki: String,
}

impl Net {
    /// Builds the `variant` networks; the signaling server hands out coturn's STUN and TURN
    /// (with time-limited credentials) in its welcome.
    fn up(prefix: &str, variant: &str, test: &str) -> Net {
        let prefix = format!("{prefix}{}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(netsim_script())
            .args(["up", variant])
            .env("SOTTO_NETSIM_PREFIX", &prefix)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/netsim up {variant} failed");
        let mut net = Net {
            servers: Vec::new(),
            cert: dir.join("cert.pem"),
            spki: String::new(),
            prefix,
            dir,
        };
        let public = format!("{}-pub", net.prefix);
        let secret = "browser-netsim-turn-secret";
        net.servers.push(
            Command::new("ip")
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
                .unwrap(),
        );
        let mut signaling = Command::new("ip")
            .args(["netns", "exec", &public])
            .arg(env!("CARGO_BIN_EXE_sotto-signaling"))
            .args(["--listen", &format!("{PUBLIC}:{HTTPS_PORT}")])
            .arg("--tls-self-signed")
            .arg("--tls-cert-out")
            .arg(&net.cert)
            .args(["--stun-url", &format!("stun:{PUBLIC}:{STUN_PORT}")])
            .args([
                "--turn-url",
                &format!("turn:{PUBLIC}:{STUN_PORT}?transport=udp"),
            ])
            .args(["--turn-secret", secret])
            .env("RUST_LOG", "sotto_signaling=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(net.dir.join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = signaling.stdout.take().unwrap();
        net.servers.push(signaling);
        // It prints its address once it listens, then the certificate's fingerprint.
        let mut lines = std::io::BufReader::new(stdout).lines();
        let listening = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            listening.starts_with(&format!("listening on wss://{PUBLIC}:{HTTPS_PORT}")),
            "sotto-signaling: {listening:?}"
        );
        std::thread::spawn(move || lines.for_each(drop));
        net.spki = spki_sha256_base64(&std::fs::read_to_string(&net.cert).unwrap());
        net
    }

    fn page_url(&self, room: &str, name: &str) -> String {
        format!("https://{PUBLIC}:{HTTPS_PORT}/?room={room}&name={name}")
    }

    /// Chromium in LAN 1, trusting the server's self-signed certificate and no other.
    async fn browser(&self, wav: &Path) -> Browser {
        Browser::launch_opts(Launch {
            fake_audio: Some(wav),
            netns: Some(&format!("{}-lan1", self.prefix)),
            args: vec![format!(
                "--ignore-certificate-errors-spki-list={}",
                self.spki
            )],
            ..Launch::default()
        })
        .await
        .expect("Chromium (can_run found it)")
    }

    /// `sotto call` in LAN 2 with a 660 Hz tone over WSS, trusting the server's certificate;
    /// its standard output goes line by line into `lines`, each with the time it was read.
    fn cli(&self, room: &str, secs: u32, lines: mpsc::Sender<(Instant, String)>) -> Killed {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-lan2", self.prefix)])
            .arg(sotto_bin())
            .args(["call", "--server"])
            .arg(format!("wss://{PUBLIC}:{HTTPS_PORT}/ws"))
            .arg("--ca-cert")
            .arg(&self.cert)
            .args(["--room", room, "--name", "cli"])
            .args(["--bind", "10.2.0.2:0", "--tone", "660"])
            .args(["--duration", &secs.to_string()])
            .arg("--identity")
            .arg(self.dir.join("identity.json"))
            .arg("--output")
            .arg(self.dir.join("heard.wav"))
            .arg("--stats-json")
            .arg(self.dir.join("stats.json"))
            .env("RUST_LOG", "sotto=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join("cli.log")).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if lines.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Killed(child)
    }

    /// LAN 1's uplink (its router's port on the public bridge) down or up.
    fn uplink(&self, up: bool) {
        let status = Command::new("ip")
            .args(["-n", &format!("{}-pub", self.prefix)])
            .args(["link", "set", "port1", if up { "up" } else { "down" }])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stats(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("stats.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn cli_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cli.log")).unwrap_or_default()
    }

    /// The CLI's recording: the share of its last 2 s of sound that is the page's 440 Hz.
    fn cli_heard_440(&self) -> (f64, f64) {
        let mut src = WavSource::open(self.dir.join("heard.wav")).unwrap();
        let mut all = Vec::new();
        let mut frame = [0f32; 960];
        while src.read_frame(&mut frame).unwrap() {
            all.extend_from_slice(&frame);
        }
        // Whoever ends first leaves the other a moment of silence at the end.
        while all.len() > 960 && all[all.len() - 960..].iter().all(|v| v.abs() < 0.01) {
            all.truncate(all.len() - 960);
        }
        let tail = &all[all.len().saturating_sub(2 * 48_000)..];
        (
            sotto::media::dominant_hz(tail, 48_000.0),
            sotto::media::tone_share(tail, 48_000.0, 440.0),
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(netsim_script())
            .arg("down")
            .env("SOTTO_NETSIM_PREFIX", &self.prefix)
            .status();
        if std::thread::panicking() {
            // The CLI's log and recording, for the failure.
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for a CLI output line containing `what`; returns when it was printed. The lines
/// seen go into `seen`.
fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Vec<String>,
    what: &str,
    timeout: Duration,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let hit = line.contains(what);
                seen.push(line);
                if hit {
                    return at;
                }
            }
            Err(_) => panic!(
                "waited {timeout:?} for {what:?}; the CLI said:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// The page's stats once audio decrypts with energy, at least `min` frames decrypted.
async fn flowing(page: &Page, min: u64, energy_above: f64) -> Value {
    page.wait_until(
        "window.sotto.stats()",
        |s| {
            s["inbound"]["totalAudioEnergy"].as_f64() > Some(energy_above)
                && s["media"]["decrypted"].as_u64() >= Some(min)
        },
        CONNECT,
        "decrypted audio with energy in the page",
    )
    .await
}

/// Behind symmetric NATs only TURN connects the LANs: the page, loaded over HTTPS from the
/// self-signed server, uses the TURN server and credentials of the welcome, and it and the
/// CLI hear each other, with the same safety code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_https_calls_a_cli_across_symmetric_nats_through_turn() {
    let test = "a_browser_on_https_calls_a_cli_across_symmetric_nats_through_turn";
    if !can_run(test) {
        return;
    }
    let _media = crate::MEDIA.lock().await;
    let net = Net::up("sbs", "symmetric", test);
    let wav = tone_wav(440.0, 5);
    let browser = net.browser(&wav).await;
    let page = browser.new_page(None).await;
    let room = crate::room("nat");
    let start = Instant::now();
    page.goto(&net.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    // A secure context (WebCrypto, the microphone) on the self-signed certificate.
    assert_eq!(page.eval("window.isSecureContext").await, true);
    let (tx, rx) = mpsc::channel();
    let secs = 8;
    let mut cli = net.cli(&room, secs, tx);
    wait_status(&page, "connected", CONNECT).await;
    let connected = start.elapsed();
    let s = flowing(&page, 100, 0.0).await;
    // The media path goes through the relay, at one end or both.
    let path = &s["path"];
    assert!(
        path["local"] == "relay" || path["remote"] == "relay",
        "{path}"
    );
    let code = page.eval("window.sotto.safetyCode").await;
    let ended = wait_status(&page, "ended", CONNECT + Duration::from_secs(secs.into())).await;
    let out = tokio::task::block_in_place(|| cli.0.wait()).unwrap();
    let mut seen = Vec::new();
    while let Ok((_, line)) = rx.try_recv() {
        seen.push(line);
    }
    assert!(
        out.success(),
        "sotto call failed: {out}\n{}\n{}",
        seen.join("\n"),
        net.cli_log()
    );
    let stats = net.stats();
    assert_eq!(stats["safety_code"], code, "{stats}");
    assert_eq!(stats["decrypt_failures"], 0, "{stats}");
    assert!(stats["frames_decrypted"].as_u64() >= Some(100), "{stats}");
    assert_eq!(s["media"]["decryptFailures"], 0, "{s}");
    let (hz, share) = net.cli_heard_440();
    assert!(
        (hz - 440.0).abs() <= 5.0 && share > 0.3,
        "the CLI heard {hz} Hz, 440 Hz share {share:.3}"
    );
    eprintln!(
        "browser (HTTPS, LAN 1) <-> sotto call (LAN 2), symmetric NATs: connected in {connected:?}; {ended}; CLI hears {hz:.0} Hz (share {share:.3}), decrypted {}; page {s}",
        stats["frames_decrypted"]
    );
    let _ = std::fs::remove_file(wav);
}

/// The CLI's log says it sent an ICE restart offer.
fn cli_restarted(net: &Net) -> bool {
    net.cli_log().contains("path lost: restarting ICE")
}

/// LAN 1's uplink (the page's side) goes down mid-call, media and signaling alike, and stays
/// down until both sides say they are reconnecting and the initiator sent a restart offer
/// (at least 2 s). The initiator (the page or the CLI) restarts ICE, the other answers on
/// the same peer connection, both are connected again, audio flows both ways again, and
/// nothing failed to decrypt.
async fn a_call_with_the_page_survives_a_link_flap(test: &str, page_initiates: bool) {
    if !can_run(test) {
        return;
    }
    let _media = crate::MEDIA.lock().await;
    let net = Net::up(if page_initiates { "sbi" } else { "sbr" }, "eim", test);
    let wav = tone_wav(440.0, 5);
    let browser = net.browser(&wav).await;
    let page = browser.new_page(None).await;
    let room = crate::room("flap");
    let (tx, rx) = mpsc::channel();
    let mut seen = Vec::new();
    let line = |seen: &mut Vec<String>, what: &str, secs: u64| {
        tokio::task::block_in_place(|| wait_line(&rx, seen, what, Duration::from_secs(secs)))
    };
    // An upper bound: the test hangs up (SIGINT) once it has what it needs.
    let cli = if page_initiates {
        let cli = net.cli(&room, 120, tx);
        line(&mut seen, "waiting for the other peer", 60);
        page.goto(&net.page_url(&room, "web")).await;
        cli
    } else {
        page.goto(&net.page_url(&room, "web")).await;
        wait_status(&page, "waiting for someone", CONNECT).await;
        net.cli(&room, 120, tx)
    };
    let role = if page_initiates {
        "initiator"
    } else {
        "responder"
    };
    wait_status(&page, "connected", CONNECT).await;
    line(&mut seen, "first audio from the peer", 60);
    assert_eq!(page.eval("window.sotto.role").await, role);
    // The responder said it answers restarts before the path is taken down.
    if page_initiates {
        page.wait_for(
            "window.sotto.restart.peerAnswersRestarts",
            CONNECT,
            "can_restart from the CLI",
        )
        .await;
    }
    let before = flowing(&page, 100, 0.0).await;

    net.uplink(false);
    let down = Instant::now();
    wait_status(&page, "reconnecting", CONNECT).await;
    let page_lost = down.elapsed();
    let cli_lost = line(&mut seen, "state: connection lost, reconnecting", 60) - down;
    // Down until the initiator restarted in the outage, so the path cannot come back by
    // itself before a restart.
    if page_initiates {
        page.wait_for(
            "window.sotto.restart.iceRestarts >= 1",
            CONNECT,
            "the page's restart offer",
        )
        .await;
    } else {
        let deadline = Instant::now() + CONNECT;
        while !cli_restarted(&net) {
            assert!(Instant::now() < deadline, "the CLI never restarted ICE");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(down.elapsed())).await;
    net.uplink(true);
    let up = Instant::now();
    let outage = up - down;
    wait_status(&page, "connected", CONNECT).await;
    let page_back = up.elapsed();
    let cli_back = line(&mut seen, "state: connected", 60) - up;
    // Audio again both ways: 3 s of the CLI's frames decrypted in the page, and the CLI's
    // recording of the same time checked below.
    let decrypted = before["media"]["decrypted"].as_u64().unwrap_or(0);
    let energy = before["inbound"]["totalAudioEnergy"]
        .as_f64()
        .unwrap_or(0.0);
    let after = flowing(&page, decrypted + 150, energy).await;
    // Back for good: a late restart answer can still move the path once more.
    let restart = page
        .wait_until(
            "window.sotto.restart",
            |r| r["reconnecting"] == false,
            CONNECT,
            "the page no longer reconnecting",
        )
        .await;
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs sotto in place).
    unsafe { libc::kill(cli.0.id() as libc::pid_t, libc::SIGINT) };
    let mut cli = cli;
    let status = tokio::task::block_in_place(|| cli.0.wait()).unwrap();
    while let Ok((_, l)) = rx.try_recv() {
        seen.push(l);
    }
    let logs = || format!("{}\n--- cli log\n{}", seen.join("\n"), net.cli_log());
    assert!(status.success(), "sotto call: {status}\n{}", logs());
    let stats = net.stats();
    assert!(
        stats["ice_restarts"].as_u64() >= Some(1),
        "{stats}\n{}",
        logs()
    );
    assert_eq!(stats["decrypt_failures"], 0, "{stats}");
    assert_eq!(after["media"]["decryptFailures"], 0, "{after}");
    assert_eq!(after["control"]["decryptFailures"], 0, "{after}");
    assert!(restart["iceRestarts"].as_u64() >= Some(1), "{restart}");
    assert_eq!(restart["restartErrors"], 0, "{restart}");
    let (hz, share) = net.cli_heard_440();
    assert!(
        (hz - 440.0).abs() <= 5.0 && share > 0.3,
        "after the restart the CLI heard {hz} Hz, 440 Hz share {share:.3}"
    );
    eprintln!(
        "link flap, page {role}: reconnecting after {page_lost:?} (page), {cli_lost:?} (CLI); \
         down for {outage:?}; connected again {page_back:?} (page), {cli_back:?} (CLI) after \
         it came back; page restarts {restart}; CLI ice_restarts {}, decrypted {}; CLI hears \
         {hz:.0} Hz (share {share:.3}) after; page decrypted {} since",
        stats["ice_restarts"],
        stats["frames_decrypted"],
        after["media"]["decrypted"].as_u64().unwrap_or(0) - decrypted,
    );
    let _ = std::fs::remove_file(wav);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_as_initiator_restarts_ice_after_a_link_flap() {
    a_call_with_the_page_survives_a_link_flap(
        "the_page_as_initiator_restarts_ice_after_a_link_flap",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_as_responder_answers_an_ice_restart_after_a_link_flap() {
    a_call_with_the_page_survives_a_link_flap(
        "the_page_as_responder_answers_an_ice_restart_after_a_link_flap",
        false,
    )
    .await;
}
