//! The browser client in headless Chromium, driven over the DevTools protocol: the RFC 9605
//! vectors in the browser, the handshake against the Rust implementation, browser-to-browser
//! calls, and the "unsupported" path. Skipped when Chromium is missing, unless
//! `SOTTO_REQUIRE_BROWSER=1` (scripts/test) makes that a failure.

mod cdp;
mod chat;
mod cli;
mod csp;
#[path = "../support/forgetful_sfu.rs"]
mod forgetful_sfu;
mod group;
mod group_video;
#[path = "../support/mitm.rs"]
mod mitm;
mod mitm_pages;
mod netsim;
mod peer;
mod restart;
#[path = "../support/sotto_bin.rs"]
mod sotto_bin;
mod tap;
mod v2;
mod video;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdp::{Browser, Page};
use serde_json::Value;
use sotto_signaling::{App, ServerConfig, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Tests with live audio run one at a time: real-time media on 2 cores.
pub static MEDIA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connecting a call on a loaded 2-core machine can take a while; polling ends sooner.
pub const CONNECT: Duration = Duration::from_secs(60);

/// The signaling server in-process, serving `signaling/web` at `/`.
pub struct Server {
    pub addr: SocketAddr,
    pub app: std::sync::Arc<App>,
    shutdown: CancellationToken,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// With an SFU in the same process (as `sotto-signaling --sfu`), for group calls.
    pub async fn start_with_sfu() -> Self {
        Self::start_inner(Some(std::sync::Arc::new(Self::loopback_sfu()))).await
    }

    /// With `sfu` hosted (a test may wrap the SFU to watch or disturb it).
    pub async fn start_with_sfu_link(sfu: std::sync::Arc<dyn sotto_signaling::SfuLink>) -> Self {
        Self::start_inner(Some(sfu)).await
    }

    pub fn loopback_sfu() -> sotto_sfu::Sfu {
        sotto_sfu::Sfu::start(sotto_sfu::SfuConfig {
            workers: 1,
            ..sotto_sfu::SfuConfig::default()
        })
        .unwrap()
    }

    async fn start_inner(sfu: Option<std::sync::Arc<dyn sotto_signaling::SfuLink>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = ServerConfig {
            web_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("web")),
            ..ServerConfig::default()
        };
        let app = App::with_sfu(config, shutdown.clone(), sfu);
        tokio::spawn(serve(listener, app.clone()));
        Server {
            addr,
            app,
            shutdown,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn page_url(&self, room: &str, name: &str) -> String {
        let name: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("http://{}/?room={room}&name={name}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Prints a skip notice past the test harness' output capture.
pub fn skip(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no Chromium (scripts/setup installs it; SOTTO_REQUIRE_BROWSER=1 makes this a failure)"
    );
}

/// A unique room name per test, so tests never meet each other.
pub fn room(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// A mono 16-bit 48 kHz WAV of a sine at `freq` Hz, `secs` long, at about -12 dBFS: what the
/// fake microphone plays (Chromium loops it).
pub fn tone_wav(freq: f64, secs: u32) -> PathBuf {
    // One file per call: tests run in parallel and each removes its own.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "sotto-tone-{}-{}-{freq}.wav",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let rate = 48_000u32;
    let samples: Vec<i16> = (0..rate * secs)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            (0.25 * (2.0 * std::f64::consts::PI * freq * t).sin() * 32767.0) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(&path, out).unwrap();
    path
}

async fn status(page: &Page) -> String {
    page.text("status").await.as_str().unwrap_or("").to_string()
}

pub async fn wait_status(page: &Page, prefix: &str, timeout: Duration) -> String {
    let expr = format!(
        "(() => {{ const s = document.getElementById('status')?.textContent ?? ''; return s.startsWith({prefix:?}) ? s : null; }})()"
    );
    page.wait_for(&expr, timeout, &format!("#status {prefix:?}"))
        .await
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sframe_vectors_pass_in_chromium() {
    let Some(browser) = Browser::launch(None).await else {
        return skip("sframe_vectors_pass_in_chromium");
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    page.goto(&format!("http://{}/test/sframe-vectors.html", server.addr))
        .await;
    page.wait_for("window.vectorsReady === true", CONNECT, "the vector page")
        .await;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/rfc9605-test-vectors.json"),
    )
    .unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let headers = file["header"].as_array().unwrap().len() as u64;
    let suite4 = file["sframe"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["cipher_suite"] == 4)
        .count() as u64;
    let result = page
        .eval(&format!(
            "runVectors({})",
            serde_json::to_string(&text).unwrap()
        ))
        .await;
    assert_eq!(result["failures"], Value::Array(vec![]), "{result}");
    assert_eq!(result["header"], headers, "{result}");
    assert!(suite4 >= 1);
    assert_eq!(result["sframe"], suite4, "{result}");
}

/// The page's identity: in IndexedDB, private key not extractable, public key as hex.
async fn stored_identity(page: &Page) -> Value {
    page.eval(
        r#"new Promise((resolve, reject) => {
            const req = indexedDB.open('sotto');
            req.onsuccess = () => {
                const get = req.result.transaction('identity').objectStore('identity').get('ed25519');
                get.onsuccess = () => {
                    const id = get.result;
                    resolve({
                        extractable: id.privateKey.extractable,
                        algorithm: id.privateKey.algorithm.name,
                        public: Array.from(id.publicKey, (b) => b.toString(16).padStart(2, '0')).join(''),
                    });
                };
                get.onerror = () => reject(get.error);
            };
            req.onerror = () => reject(req.error);
        })"#,
    )
    .await
}

async fn handshake_against_rust(test: &str, browser_first: bool) {
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    let rust = if browser_first {
        page.goto(&server.page_url(&room, "web")).await;
        wait_status(&page, "waiting for someone", CONNECT).await;
        peer::RustPeer::join(&server.ws_url(), &room, "rust").await
    } else {
        let rust = peer::RustPeer::join(&server.ws_url(), &room, "rust").await;
        page.goto(&server.page_url(&room, "web")).await;
        rust
    };
    // The Rust side signs its transport's DTLS fingerprint.
    let transport = sotto::transport::MediaTransport::new(Default::default())
        .await
        .unwrap();
    if browser_first {
        let offer = transport.create_offer().await.unwrap();
        rust.set_dtls(&peer::sdp_dtls(&offer));
        rust.browser_id(CONNECT).await;
        rust.send_sdp("offer", &offer).await;
    }
    let done = rust.handshake(CONNECT).await;
    // The Rust side initiates exactly when the browser was in the room first.
    assert_eq!(
        done.role == sotto::handshake::Role::Initiator,
        browser_first
    );
    let code = page
        .wait_for(
            "window.sotto?.safetyCode ?? null",
            CONNECT,
            "the browser's safety code",
        )
        .await;
    assert_eq!(code.as_str(), Some(done.safety_code.as_str()));
    assert_eq!(
        page.text("safety-code").await.as_str(),
        Some(done.safety_code.as_str())
    );
    assert_eq!(done.peer_name, "web");
    let id = stored_identity(&page).await;
    assert_eq!(id["extractable"], false, "{id}");
    assert_eq!(id["algorithm"], "Ed25519");
    assert_eq!(id["public"], done.peer_identity.to_hex());
    assert_eq!(
        page.text("peer-fingerprint").await.as_str(),
        Some(rust.fingerprint().as_str())
    );
    // The browser signed the DTLS fingerprint its SDP carries.
    let sdp = if browser_first {
        rust.answer(CONNECT).await
    } else {
        // As initiator the browser sends hello, then its offer without waiting.
        rust.offer(CONNECT).await
    };
    assert!(sdp.starts_with("v=0"), "{sdp}");
    assert!(
        sdp.contains("a=candidate"),
        "non-trickle: candidates included"
    );
    assert_eq!(done.peer_dtls.to_string(), peer::sdp_dtls(&sdp));
    transport.close().await.unwrap();
    assert_eq!(page.eval("window.sotto.handshakeError").await, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_browser_responder_matches_rust_initiator() {
    handshake_against_rust("handshake_browser_responder_matches_rust_initiator", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_browser_initiator_matches_rust_responder() {
    handshake_against_rust("handshake_browser_initiator_matches_rust_responder", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signature_ends_the_call_without_keys() {
    let test = "forged_signature_ends_the_call_without_keys";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let rust = peer::RustPeer::join(&server.ws_url(), &room, "rust").await;
    rust.handshake_until_reveal_forged(CONNECT).await;
    let status = wait_status(&page, "ended", CONNECT).await;
    assert!(status.contains("BadSignature"), "{status}");
    assert_eq!(page.eval("window.sotto.safetyCode").await, Value::Null);
    assert_eq!(page.text("safety-code").await, "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_encoded_transforms_the_page_never_connects() {
    let test = "without_encoded_transforms_the_page_never_connects";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    // A browser without encoded transforms: the constructor is gone before the page runs.
    let page = browser
        .new_page(Some("delete window.RTCRtpScriptTransform;"))
        .await;
    page.goto(&server.page_url(&room(test), "web")).await;
    let status = wait_status(&page, "unsupported", CONNECT).await;
    assert!(status.contains("RTCRtpScriptTransform"), "{status}");
    // It never opened the signaling socket, so it never joined.
    let total = server
        .app
        .metrics
        .connections_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(total, 0);
    assert_eq!(page.eval("window.sotto.peer").await, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_call_with_encrypted_audio_and_control() {
    let _media = MEDIA.lock().await;
    let test = "two_browsers_call_with_encrypted_audio_and_control";
    let wav = tone_wav(440.0, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let alice = browser.new_page(None).await;
    let bob = browser.new_page(None).await;
    alice.goto(&server.page_url(&room, "alice")).await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    let start = Instant::now();
    bob.goto(&server.page_url(&room, "bob")).await;
    for page in [&alice, &bob] {
        wait_status(page, "connected", CONNECT).await;
    }
    let connected = start.elapsed();
    let a_code = alice.eval("window.sotto.safetyCode").await;
    let b_code = bob.eval("window.sotto.safetyCode").await;
    assert!(a_code.as_str().is_some_and(|c| c.len() == 9), "{a_code}");
    assert_eq!(a_code, b_code);
    assert_eq!(alice.eval("window.sotto.role").await, "responder");
    assert_eq!(bob.eval("window.sotto.role").await, "initiator");

    // Audio decodes with energy on both sides; every frame authenticated.
    let mut stats = Vec::new();
    for page in [&alice, &bob] {
        let s = page
            .wait_until(
                "window.sotto.stats()",
                |s| {
                    s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                        && s["media"]["decrypted"].as_u64() >= Some(100)
                        && s["media"]["encrypted"].as_u64() >= Some(100)
                        && s["control"]["received"].as_u64() > Some(0)
                },
                CONNECT,
                "decoded audio energy, sent frames and control messages",
            )
            .await;
        assert_eq!(s["media"]["decryptFailures"], 0, "{s}");
        assert_eq!(s["control"]["decryptFailures"], 0, "{s}");
        // Genuine frames keep their counter order; Chromium gives the RTP timestamp.
        assert_eq!(s["media"]["reorderRejected"], 0, "{s}");
        assert_eq!(s["media"]["timestampSource"], "rtpTimestamp", "{s}");
        assert_eq!(s["media"]["undecryptable"], false, "{s}");
        assert_eq!(status(page).await, "connected: end-to-end encrypted");
        stats.push(s);
    }
    let rtt = alice.eval("window.sotto.rttMs").await;
    eprintln!(
        "browser-to-browser: connected in {connected:?}; timings alice {} bob {}; rtt {rtt} ms; stats {}",
        alice.eval("window.sotto.timings").await,
        bob.eval("window.sotto.timings").await,
        stats[1]
    );

    // Mute travels over the encrypted control channel.
    alice.eval("document.getElementById('mute').click()").await;
    bob.wait_for("window.sotto.peerMuted === true", CONNECT, "peer muted")
        .await;
    // Hang-up too: the other side ends.
    alice.eval("window.sotto.hangup()").await;
    let ended = status(&alice).await;
    assert!(
        ended.starts_with("ended: hung up"),
        "{ended}; bob: {}",
        status(&bob).await
    );
    let ended = wait_status(&bob, "ended", CONNECT).await;
    assert_eq!(ended, "ended: the peer hung up");
    let _ = std::fs::remove_file(wav);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_flows_both_ways_between_browser_and_rust_engine() {
    let _media = MEDIA.lock().await;
    use sotto::handshake::{MediaReceiver, MediaSender, RotationConfig};
    use sotto::media::{FrameDuration, OpusConfig, OpusDecoder, OpusEncoder, ToneSource};
    use sotto::sframe::CipherSuite;
    use sotto::transport::{MediaTransport, TransportConfig, seal};

    let test = "audio_flows_both_ways_between_browser_and_rust_engine";
    let wav = tone_wav(440.0, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    // The Rust side is in the room first, so the browser initiates and offers.
    let rust = peer::RustPeer::join(&server.ws_url(), &room, "rust").await;
    let page = browser.new_page(None).await;
    let start = Instant::now();
    // Both sides rotate keys every second here (60 s by default), so rotation is exercised.
    page.goto(&format!("{}&rotate=1", server.page_url(&room, "web")))
        .await;
    // We sign our transport's DTLS fingerprint; the page checks our answer carries it.
    let mut transport = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    rust.set_dtls(&transport.dtls_fingerprint().to_string());
    let done = rust.handshake(CONNECT).await;
    let offer = rust.offer(CONNECT).await;
    let answer = transport.accept_offer(&offer).await.unwrap();
    rust.send_answer(&answer).await;
    let mut frames = transport.take_frames().unwrap();
    transport.connected(CONNECT).await.unwrap();
    wait_status(&page, "connected", CONNECT).await;
    let connected = start.elapsed();
    assert_eq!(
        page.eval("window.sotto.safetyCode").await.as_str(),
        Some(done.safety_code.as_str())
    );

    // 4 s of a 660 Hz tone from Rust while the browser's fake microphone plays 440 Hz.
    let suite = CipherSuite::AesGcm128Sha256;
    let now = std::time::Instant::now();
    let rotation = RotationConfig {
        interval: Some(Duration::from_secs(1)),
        ..RotationConfig::default()
    };
    let mut tx = MediaSender::new(suite, done.keys.send, rotation, now).unwrap();
    let mut rx = MediaReceiver::new(suite, done.keys.recv, rotation).unwrap();
    let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
    let mut decoder = OpusDecoder::new(FrameDuration::Ms20).unwrap();
    let mut tone = ToneSource::new(660.0, 0.3);
    let mut pcm = vec![0f32; 960];
    let mut packet = vec![0u8; 1500];
    let mut heard: Vec<f32> = Vec::new();
    let (mut decrypted, mut failed, mut undecodable) = (0u32, 0u32, 0u32);
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        tokio::select! {
            _ = ticker.tick() => {
                tx.poll(std::time::Instant::now()).unwrap();
                tone.fill(&mut pcm);
                let n = encoder.encode(&pcm, &mut packet).unwrap();
                let sealed = seal(tx.context(), &packet[..n]).unwrap();
                transport.send(&sealed, Duration::from_millis(20)).await.unwrap();
            }
            Some(frame) = frames.recv() => {
                if frame.payload.is_empty() {
                    continue; // Padding.
                }
                let mut buf = frame.payload.to_vec();
                match rx.decrypt_in_place(&[], &mut buf, std::time::Instant::now()) {
                    Ok(d) => {
                        decrypted += 1;
                        let mut out = vec![0f32; 960];
                        match decoder.decode(d.payload, &mut out) {
                            Ok(()) => heard.extend_from_slice(&out),
                            Err(_) => undecodable += 1,
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
        }
    }
    // Rust heard the browser's microphone: authenticated Opus frames carrying 440 Hz.
    assert_eq!(failed, 0, "frames from the browser failed authentication");
    assert!(decrypted >= 100, "only {decrypted} frames from the browser");
    assert_eq!(undecodable, 0);
    let last = &heard[heard.len().saturating_sub(48_000)..];
    let share = sotto::media::tone_share(last, 48_000.0, 440.0);
    assert!(share > 0.5, "440 Hz share of what Rust heard: {share}");

    // The browser decoded the Rust side's audio, every frame authenticated.
    let s = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0)
                    && s["media"]["decrypted"].as_u64() >= Some(100)
            },
            CONNECT,
            "decoded audio energy in the browser",
        )
        .await;
    assert_eq!(s["media"]["decryptFailures"], 0, "{s}");
    // Each side followed the other's rotations.
    assert!(rx.epoch() >= 2, "Rust receiver at epoch {}", rx.epoch());
    assert!(s["media"]["recvEpoch"].as_u64() >= Some(2), "{s}");
    assert!(s["media"]["sendEpoch"].as_u64() >= Some(2), "{s}");
    eprintln!(
        "browser <-> rust: connected in {connected:?}; browser timings {}; rust decrypted {decrypted}, failed {failed}, 440 Hz share {share:.3}; browser stats {s}",
        page.eval("window.sotto.timings").await
    );
    transport.close().await.unwrap();
    let _ = std::fs::remove_file(wav);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotto_call_cli_joins_a_browser_waiting_in_the_room() {
    cli::call_with_cli("sotto_call_cli_joins_a_browser_waiting_in_the_room", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_joins_a_sotto_call_cli_waiting_in_the_room() {
    cli::call_with_cli("browser_joins_a_sotto_call_cli_waiting_in_the_room", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_plaintext_and_replayed_media_are_dropped_and_counted_never_played() {
    use sotto::media::{OpusConfig, OpusEncoder, ToneSource};
    use sotto::sframe::{CipherSuite, SenderContext};
    use sotto::transport::{MediaTransport, TransportConfig, seal};

    let _media = MEDIA.lock().await;
    let test = "forged_plaintext_and_replayed_media_are_dropped_and_counted_never_played";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let rust = peer::RustPeer::join(&server.ws_url(), &room, "rust").await;
    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    let mut transport = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    rust.set_dtls(&transport.dtls_fingerprint().to_string());
    let done = rust.handshake(CONNECT).await;
    let offer = rust.offer(CONNECT).await;
    let answer = transport.accept_offer(&offer).await.unwrap();
    rust.send_answer(&answer).await;
    let _frames = transport.take_frames().unwrap();
    transport.connected(CONNECT).await.unwrap();
    wait_status(&page, "connected", CONNECT).await;

    let suite = CipherSuite::AesGcm128Sha256;
    // The right KID under a key the browser does not have, as a man in the middle would.
    let kid = sotto::handshake::kid_for(0, done.keys.send.direction());
    let mut forger = SenderContext::new(suite, kid, &[7u8; 32]).unwrap();
    let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
    let mut tone = ToneSource::new(660.0, 0.3);
    let (mut pcm, mut packet) = (vec![0f32; 960], vec![0u8; 1500]);
    let mut opus = || {
        tone.fill(&mut pcm);
        let n = encoder.encode(&pcm, &mut packet).unwrap();
        packet[..n].to_vec()
    };
    let frame = Duration::from_millis(20);
    let mut ticker = tokio::time::interval(frame);
    // Phase 1: 100 forged frames and 100 plain Opus frames (what a sender without
    // encryption would put on the wire). None may play.
    for _ in 0..100 {
        ticker.tick().await;
        let forged = seal(&mut forger, &opus()).unwrap();
        transport.send(&forged, frame).await.unwrap();
        transport
            .insecure_send_plaintext_for_tests(&opus(), frame)
            .await
            .unwrap();
    }
    let s = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["media"]["decryptFailures"].as_u64() >= Some(180),
            CONNECT,
            "forged and plain frames counted",
        )
        .await;
    assert_eq!(s["media"]["decrypted"], 0, "{s}");
    assert_eq!(s["inbound"]["totalAudioEnergy"].as_f64(), Some(0.0), "{s}");
    assert_eq!(
        s["inbound"]["totalSamplesReceived"].as_u64(),
        Some(0),
        "{s}"
    );
    assert!(
        s["media"]["failureKinds"]["auth"].as_u64() >= Some(90),
        "{s}"
    );
    eprintln!("forged media: {s}");

    // Phase 2: genuine frames, each sent twice: the copies are refused as replays.
    let now = std::time::Instant::now();
    let rotation = sotto::handshake::RotationConfig::default();
    let mut tx = sotto::handshake::MediaSender::new(suite, done.keys.send, rotation, now).unwrap();
    for _ in 0..100 {
        ticker.tick().await;
        let sealed = seal(tx.context(), &opus()).unwrap();
        transport.send(&sealed, frame).await.unwrap();
        transport.send(&sealed, frame).await.unwrap();
    }
    let s = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["media"]["decrypted"].as_u64() >= Some(90)
                    && s["media"]["failureKinds"]["replay"].as_u64() >= Some(90)
            },
            CONNECT,
            "genuine frames decrypted once, copies refused",
        )
        .await;
    assert!(s["media"]["decrypted"].as_u64() <= Some(100), "{s}");
    assert!(s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0), "{s}");
    eprintln!("replayed media: {s}");
    transport.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_persists_in_indexeddb_and_cannot_be_exported() {
    let test = "identity_persists_in_indexeddb_and_cannot_be_exported";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    let url = server.page_url(&room(test), "web");
    page.goto(&url).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let first = page.text("fingerprint").await;
    assert!(first.as_str().is_some_and(|f| f.len() == 49), "{first}");
    page.goto(&url).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    assert_eq!(page.text("fingerprint").await, first);
    let id = stored_identity(&page).await;
    assert_eq!(id["extractable"], false, "{id}");
    let export = page
        .try_eval(
            r#"new Promise((resolve, reject) => {
                const req = indexedDB.open('sotto');
                req.onsuccess = () => {
                    const get = req.result.transaction('identity').objectStore('identity').get('ed25519');
                    get.onsuccess = () => crypto.subtle.exportKey('pkcs8', get.result.privateKey).then(resolve, reject);
                };
            })"#,
        )
        .await;
    let err = export.expect_err("a non-extractable key must not export");
    assert!(err.contains("InvalidAccessError"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refuses_bad_and_tampered_messages_in_chromium() {
    let test = "handshake_refuses_bad_and_tampered_messages_in_chromium";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    page.goto(&format!(
        "http://{}/test/handshake-checks.html",
        server.addr
    ))
    .await;
    page.wait_for("window.checksReady === true", CONNECT, "the checks page")
        .await;
    let result = page.eval("runHandshakeChecks()").await;
    assert_eq!(result["failures"], Value::Array(vec![]), "{result}");
    // 55 checks: parsing (v2 fields, dtls form, version 1 refused), tampering (the DTLS
    // fingerprints included), the SDP binding.
    assert!(result["passed"].as_u64() >= Some(55), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_identity_changed_is_reported() {
    let test = "a_peer_whose_identity_changed_is_reported";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    let first = std::sync::Arc::new(sotto::handshake::Identity::generate().unwrap());
    let second = std::sync::Arc::new(sotto::handshake::Identity::generate().unwrap());
    // Three calls from one browser profile with a peer called "rust": first identity, a
    // different one, the first again.
    for (i, (identity, want)) in [(&first, "new"), (&second, "changed"), (&first, "known")]
        .into_iter()
        .enumerate()
    {
        let room = format!("{}-{i}", room(test));
        page.goto(&server.page_url(&room, "web")).await;
        wait_status(&page, "waiting for someone", CONNECT).await;
        let rust = peer::RustPeer::join_as(&server.ws_url(), &room, "rust", identity.clone()).await;
        rust.handshake(CONNECT).await;
        let trust = page
            .wait_for("window.sotto.peerTrust", CONNECT, "the peer's trust")
            .await;
        assert_eq!(trust, want, "call {i}");
        assert_eq!(page.text("peer-trust").await, want, "call {i}");
        let warning = page
            .eval("(() => { const w = document.getElementById('trust-warning'); return w.hidden ? '' : w.textContent; })()")
            .await;
        assert_eq!(
            warning.as_str().unwrap().contains("IDENTITY CHANGED"),
            want == "changed",
            "{warning}"
        );
        rust.client.close().await;
    }
}
