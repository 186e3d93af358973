//! Protocol version 2 in the page: names as the engine computes them, the playout-order rule,
//! known peers with lookalikes and verification, the DTLS binding, attested names, late
//! handshake messages and the honest status under attack.

use serde_json::{Value, json};

use crate::cdp::{Browser, Page};
use crate::{CONNECT, Server, room, skip, wait_status};

/// Names the page must treat exactly as `sotto::names` does.
const NAMES: &[&str] = &[
    "bob",
    "b\u{43e}b",
    "\u{430}li\u{441}e",
    "\u{ff22}\u{ff2f}\u{ff22}",
    "b\u{200b}ob",
    "Stra\u{df}e",
    "\u{202e}bob",
    "Zoe\u{308}",
    "\u{411}\u{43e}\u{440}\u{438}\u{441}",
    "bob 2 (laptop)",
    "\u{5c71}\u{7530}\u{592a}\u{90ce}",
    "\u{130}stanbul",
    "\u{ff22}\u{41e}\u{ff22}",
];

async fn unit_page(browser: &Browser, server: &Server) -> Page {
    let page = browser.new_page(None).await;
    page.goto(&format!("http://{}/test/unit-checks.html", server.addr))
        .await;
    page.wait_for(
        "window.checksReady === true",
        CONNECT,
        "the unit checks page",
    )
    .await;
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_in_the_page_are_the_engines() {
    let test = "names_in_the_page_are_the_engines";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = unit_page(&browser, &server).await;
    let got = page
        .eval(&format!("window.namesOf({})", json!(NAMES)))
        .await;
    let got = got.as_array().expect("an array");
    assert_eq!(got.len(), NAMES.len());
    for (name, page) in NAMES.iter().zip(got) {
        let want = json!({
            "name": name,
            "canonical": sotto::names::canonical(name),
            "skeleton": sotto::names::skeleton(name),
            "mixed": sotto::names::is_mixed_script(name),
        });
        assert_eq!(*page, want, "{name:?}");
    }
    // The samples the lookalike tests rely on.
    assert_eq!(sotto::names::skeleton("b\u{43e}b"), "bob");
    assert!(sotto::names::is_mixed_script("b\u{43e}b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playout_order_rule_in_the_page() {
    let test = "playout_order_rule_in_the_page";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = unit_page(&browser, &server).await;
    let result = page.eval("window.runOrderChecks()").await;
    assert_eq!(result["failures"], Value::Array(vec![]), "{result}");
    assert_eq!(result["passed"], 24, "{result}");
}

/// Trickled candidates: the page takes what the engine takes (docs/call-protocol.md, "Trickle
/// ICE": sizes, user fragment, printable `candidate:` text, no other fields) and applies the
/// same per-generation rules (src/call/trickle.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_payloads_in_the_page_are_checked_as_the_engines() {
    let test = "trickle_payloads_in_the_page_are_checked_as_the_engines";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = unit_page(&browser, &server).await;
    let line = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
    // 512 bytes, and one more.
    let long = format!("candidate:{}", "1".repeat(502));
    let too_long = format!("candidate:{}", "1".repeat(503));
    let cases = [
        (
            json!({"kind": "candidate", "candidate": line, "sdp_mid": "0", "sdp_mline_index": 0, "ufrag": "AbCd+/09"}),
            true,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abcd"}),
            true,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abcd", "sdp_mid": null}),
            true,
        ),
        (
            json!({"kind": "candidate", "candidate": long, "ufrag": "a".repeat(256)}),
            true,
        ),
        (
            json!({"kind": "candidate", "candidate": too_long, "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "a".repeat(257)}),
            false,
        ),
        (json!({"kind": "candidate", "candidate": line}), false),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abc"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "ab cd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": "a=candidate:1", "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": "candidate: ", "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": format!("{line}\r\na=x"), "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": format!("{line}\u{1b}[2J"), "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": 5, "ufrag": "abcd"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abcd", "sdp": "x"}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abcd", "sdp_mline_index": 70000}),
            false,
        ),
        (
            json!({"kind": "candidate", "candidate": line, "ufrag": "abcd", "sdp_mid": "m".repeat(33)}),
            false,
        ),
    ];
    let payloads: Vec<&Value> = cases.iter().map(|(p, _)| p).collect();
    let got = page
        .eval(&format!("window.trickleParse({})", json!(payloads)))
        .await;
    let got = got.as_array().expect("an array");
    for ((payload, accepted), parsed) in cases.iter().zip(got) {
        assert_eq!(!parsed.is_null(), *accepted, "{payload} -> {parsed}");
        if *accepted {
            assert_eq!(parsed["candidate"], payload["candidate"]);
            assert_eq!(parsed["ufrag"], payload["ufrag"]);
        }
    }
    let result = page.eval("window.runTrickleChecks()").await;
    assert_eq!(result["failures"], Value::Array(vec![]), "{result}");
    assert_eq!(result["passed"], 10, "{result}");
}

/// What `#trust-warning` shows ("" when hidden).
pub async fn trust_warning(page: &Page) -> String {
    page.eval(
        "(() => { const w = document.getElementById('trust-warning'); return w.hidden ? '' : w.textContent; })()",
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

/// The rows of `#known-peers`: [name, fingerprint, trust, first seen].
pub async fn known_peers(page: &Page) -> Vec<Vec<String>> {
    let rows = page
        .eval(
            "[...document.querySelectorAll('#known-peers tr')].map((tr) => [...tr.children].map((td) => td.textContent))",
        )
        .await;
    serde_json::from_value(rows).unwrap()
}

/// `page` (in the room first) and `other` meet; returns once `page` knows the peer's trust.
async fn meet(server: &Server, room: &str, page: &Page, other: &Page, other_name: &str) -> Value {
    page.goto(&server.page_url(room, "alice")).await;
    wait_status(page, "waiting for someone", CONNECT).await;
    other.goto(&server.page_url(room, other_name)).await;
    page.wait_for("window.sotto.peerTrust", CONNECT, "the peer's trust")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookalike_with_another_key_is_warned_and_verification_persists() {
    let test = "a_lookalike_with_another_key_is_warned_and_verification_persists";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let alice = browser.new_page(None).await;
    let bob = browser.new_page(None).await;
    let mallory = browser.new_page(None).await;
    let base = room(test);

    // First call: "bob" is pinned.
    let trust = meet(&server, &format!("{base}-1"), &alice, &bob, "bob").await;
    assert_eq!(trust, "new");
    assert_eq!(trust_warning(&alice).await, "");
    let bob_fp = bob.text("fingerprint").await;
    let pins = known_peers(&alice).await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        pins[0][..3],
        ["bob", bob_fp.as_str().unwrap(), "unverified"]
    );
    bob.goto("about:blank").await;

    // Second call: another identity under "ＢОＢ" (full-width B, Cyrillic О): canonical "bоb",
    // which looks like "bob".
    let raw = "\u{ff22}\u{41e}\u{ff22}";
    let shown = "b\u{43e}b";
    let trust = meet(&server, &format!("{base}-2"), &alice, &mallory, raw).await;
    assert_eq!(trust, "changed");
    assert_eq!(alice.text("peer-trust").await, "changed");
    assert_eq!(alice.eval("window.sotto.lookalike").await, "bob");
    let warning = trust_warning(&alice).await;
    assert!(
        warning.starts_with("WARNING:")
            && warning.contains(&format!("\"{shown}\" looks like \"bob\"")),
        "{warning}"
    );
    assert!(warning.contains("mixes writing systems"), "{warning}");
    // Only the canonical name is shown, never what the peer sent.
    let body = alice.eval("document.body.innerText").await;
    let body = body.as_str().unwrap();
    assert!(!body.contains(raw) && body.contains(shown), "{body}");
    // Nothing was re-pinned: "bob" keeps its key and the lookalike is not pinned.
    let pins = known_peers(&alice).await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0][1], bob_fp.as_str().unwrap());

    // People compared the codes: mark verified. It persists across a reload and a new call.
    alice
        .eval("document.getElementById('mark-verified').click()")
        .await;
    alice
        .wait_for("window.sotto.peerTrust === 'verified'", CONNECT, "verified")
        .await;
    assert_eq!(alice.text("peer-trust").await, "verified");
    let mallory_fp = mallory.text("fingerprint").await;
    mallory.goto("about:blank").await;
    alice
        .goto(&server.page_url(&format!("{base}-3"), "alice"))
        .await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    let pins = known_peers(&alice).await;
    assert_eq!(pins.len(), 2, "{pins:?}");
    let row = pins
        .iter()
        .find(|r| r[0] == shown)
        .expect("the verified pin");
    assert_eq!(row[1..3], [mallory_fp.as_str().unwrap(), "verified"]);
    assert!(row[3].len() == 16, "first seen: {row:?}");
    let trust = meet(&server, &format!("{base}-4"), &alice, &mallory, raw).await;
    assert_eq!(trust, "verified");
    // Still a name that mixes scripts: the note stays, the warning does not.
    let warning = trust_warning(&alice).await;
    assert!(
        !warning.contains("WARNING") && warning.contains("mixes writing systems"),
        "{warning}"
    );
}

// With the Rust engine as the peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::peer::{FAKE_DTLS, RustPeer, sdp_dtls, swap_dtls};
use sotto::transport::{MediaTransport, TransportConfig};

const ENCRYPTED: &str = "connected: end-to-end encrypted";
const UNDECRYPTABLE: &str =
    "connected, but the peer's media cannot be decrypted: keys differ (possible interception)";
const DTLS_MISMATCH: &str =
    "ended: the peer's DTLS fingerprint does not match its handshake (possible interception)";

/// A call between the page (initiator: the Rust side is in the room first) and the Rust
/// engine, connected: the page says "end-to-end encrypted".
async fn connected_call(
    server: &Server,
    room: &str,
    page: &Page,
) -> (RustPeer, sotto::handshake::Established, Arc<MediaTransport>) {
    let rust = RustPeer::join(&server.ws_url(), room, "rust").await;
    page.goto(&server.page_url(room, "web")).await;
    // Our transport's fingerprint is what we sign, so the answer exists before the reply.
    let offer = rust.offer(CONNECT).await;
    let mut transport = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let answer = transport.accept_offer(&offer).await.unwrap();
    rust.set_dtls(&sdp_dtls(&answer));
    let done = rust.handshake(CONNECT).await;
    rust.send_answer(&answer).await;
    let _frames = transport.take_frames().unwrap();
    transport.connected(CONNECT).await.unwrap();
    assert_eq!(wait_status(page, "connected", CONNECT).await, ENCRYPTED);
    (rust, done, Arc::new(transport))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_peer_is_refused_with_a_reason() {
    let test = "a_version_1_peer_is_refused_with_a_reason";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let rust = RustPeer::join(&server.ws_url(), &room, "rust").await;
    let to = rust.browser_id(CONNECT).await;
    // A version-1 hello: well formed, but it signs no DTLS fingerprint.
    let hello = json!({
        "type": "hello", "v": 1, "call_id": room, "name": "rust",
        "identity": "11".repeat(32), "commitment": "22".repeat(32),
    });
    rust.send_raw_handshake(&to, hello).await;
    let status = wait_status(&page, "ended", CONNECT).await;
    assert!(
        status.starts_with("ended: handshake failed: UnsupportedVersion")
            && status.contains("version 1, which does not bind DTLS"),
        "{status}"
    );
    assert_eq!(page.eval("window.sotto.safetyCode").await, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_signs_another_name_than_it_joined_with_is_refused() {
    let test = "a_peer_that_signs_another_name_than_it_joined_with_is_refused";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    // Joined as "Rust", signs "ＲＵＳＴ": the same canonical name, so accepted.
    let room1 = format!("{}-1", room(test));
    page.goto(&server.page_url(&room1, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let rust = RustPeer::join(&server.ws_url(), &room1, "Rust").await;
    rust.set_claim("\u{ff32}\u{ff35}\u{ff33}\u{ff34}");
    rust.handshake(CONNECT).await;
    page.wait_for("window.sotto.peerTrust", CONNECT, "the peer's trust")
        .await;
    assert_eq!(page.eval("window.sotto.peerName").await, "rust");
    assert_eq!(page.eval("window.sotto.handshakeError").await, Value::Null);
    assert!(
        !page
            .eval("window.sotto.status")
            .await
            .as_str()
            .unwrap()
            .starts_with("ended")
    );
    rust.client.close().await;

    // Joined as "rust", signs "mallory": the call ends before any media key exists, and
    // nothing is pinned under either name.
    let room2 = format!("{}-2", room(test));
    page.goto(&server.page_url(&room2, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let rust = RustPeer::join(&server.ws_url(), &room2, "rust2").await;
    rust.set_claim("mallory");
    rust.handshake(CONNECT).await;
    let status = wait_status(&page, "ended", CONNECT).await;
    assert_eq!(
        status,
        "ended: the peer joined as \"rust2\" but claims \"mallory\""
    );
    assert_eq!(
        page.eval("window.sotto.handshakeError").await,
        "PeerNotTrusted"
    );
    assert_eq!(page.eval("window.sotto.safetyCode").await, Value::Null);
    assert_eq!(page.eval("window.sotto.peerTrust").await, Value::Null);
    let pins = known_peers(&page).await;
    assert!(pins.iter().all(|r| r[0] == "rust"), "{pins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_fingerprint_swapped_in_the_answer_ends_the_call() {
    let test = "a_dtls_fingerprint_swapped_in_the_answer_ends_the_call";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    // The Rust side is in the room first: the page initiates and offers.
    let rust = RustPeer::join(&server.ws_url(), &room, "rust").await;
    page.goto(&server.page_url(&room, "web")).await;
    let offer = rust.offer(CONNECT).await;
    let transport = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let answer = transport.accept_offer(&offer).await.unwrap();
    rust.set_dtls(&sdp_dtls(&answer));
    let done = rust.handshake(CONNECT).await;
    // The page signed the fingerprint its offer carries.
    assert_eq!(done.peer_dtls.to_string(), sdp_dtls(&offer));
    // A relay that terminates DTLS itself puts its own fingerprint in the SDP.
    rust.send_answer(&swap_dtls(&answer, FAKE_DTLS)).await;
    assert_eq!(wait_status(&page, "ended", CONNECT).await, DTLS_MISMATCH);
    assert_eq!(
        page.eval("window.sotto.handshakeError").await,
        "DtlsMismatch"
    );
    let media = page.eval("window.sotto.stats().then((s) => s.media)").await;
    assert_eq!(media["encrypted"], 0, "{media}");
    transport.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_fingerprint_swapped_in_the_offer_ends_the_call() {
    let test = "a_dtls_fingerprint_swapped_in_the_offer_ends_the_call";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    // The page is in the room first: the Rust side initiates and offers.
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let rust = RustPeer::join(&server.ws_url(), &room, "rust").await;
    rust.browser_id(CONNECT).await;
    let transport = MediaTransport::new(TransportConfig::default())
        .await
        .unwrap();
    let offer = transport.create_offer().await.unwrap();
    rust.set_dtls(&sdp_dtls(&offer));
    rust.send_sdp("offer", &swap_dtls(&offer, FAKE_DTLS)).await;
    rust.handshake(CONNECT).await;
    assert_eq!(wait_status(&page, "ended", CONNECT).await, DTLS_MISMATCH);
    assert_eq!(
        page.eval("window.sotto.handshakeError").await,
        "DtlsMismatch"
    );
    transport.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_handshake_messages_are_ignored_and_counted() {
    let _media = crate::MEDIA.lock().await;
    let test = "late_handshake_messages_are_ignored_and_counted";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    let (rust, done, transport) = connected_call(&server, &room, &page).await;
    let to = rust.browser_id(CONNECT).await;
    // Our own messages replayed (a replaying server), a fresh hello, garbage, version 1.
    let mut late: Vec<Value> = rust.sent.lock().await.clone();
    assert_eq!(late.len(), 2, "reply and confirm");
    late.push(json!({
        "type": "hello", "v": 2, "call_id": room, "name": "rust",
        "identity": "11".repeat(32), "dtls": FAKE_DTLS, "commitment": "22".repeat(32),
    }));
    late.push(json!({ "type": "nonsense" }));
    late.push(json!({ "type": "confirm", "v": 1, "signature": "00".repeat(64), "confirm": "00".repeat(32) }));
    for msg in &late {
        rust.send_raw_handshake(&to, msg.clone()).await;
    }
    let s = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["lateHandshakeMessages"].as_u64() >= Some(5),
            CONNECT,
            "late handshake messages counted",
        )
        .await;
    assert_eq!(s["lateHandshakeMessages"], 5, "{s}");
    // Nothing changed: same call, same code, no error.
    assert_eq!(page.text("status").await, ENCRYPTED);
    assert_eq!(page.eval("window.sotto.handshakeError").await, Value::Null);
    assert_eq!(
        page.eval("window.sotto.safetyCode").await.as_str(),
        Some(done.safety_code.as_str())
    );
    transport.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_keys_differ_while_the_peers_media_fails_authentication() {
    use sotto::handshake::{MediaSender, RotationConfig, kid_for};
    use sotto::media::{OpusConfig, OpusEncoder, ToneSource};
    use sotto::sframe::{CipherSuite, SenderContext};
    use sotto::transport::seal;

    let _media = crate::MEDIA.lock().await;
    let test = "status_says_keys_differ_while_the_peers_media_fails_authentication";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    let (_rust, done, transport) = connected_call(&server, &room, &page).await;

    // 0: frames sealed under a key the page does not have (the right KID, as a relay between
    // two handshakes would send); 1: genuine frames; 2: stop.
    let mode = Arc::new(AtomicU8::new(0));
    let suite = CipherSuite::AesGcm128Sha256;
    let kid = kid_for(0, done.keys.send.direction());
    let mut forger = SenderContext::new(suite, kid, &[7u8; 32]).unwrap();
    let mut genuine = MediaSender::new(
        suite,
        done.keys.send,
        RotationConfig::default(),
        std::time::Instant::now(),
    )
    .unwrap();
    let sender = tokio::spawn({
        let (mode, transport) = (mode.clone(), transport.clone());
        async move {
            let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
            let mut tone = ToneSource::new(660.0, 0.3);
            let (mut pcm, mut packet) = (vec![0f32; 960], vec![0u8; 1500]);
            let frame = Duration::from_millis(20);
            let mut ticker = tokio::time::interval(frame);
            loop {
                ticker.tick().await;
                tone.fill(&mut pcm);
                let n = encoder.encode(&pcm, &mut packet).unwrap();
                let sealed = match mode.load(Ordering::Relaxed) {
                    0 => seal(&mut forger, &packet[..n]).unwrap(),
                    1 => seal(genuine.context(), &packet[..n]).unwrap(),
                    _ => break,
                };
                transport.send(&sealed, frame).await.unwrap();
            }
        }
    });
    let status = wait_status(&page, "connected, but", CONNECT).await;
    assert_eq!(status, UNDECRYPTABLE);
    assert_eq!(page.eval("window.sotto.undecryptable").await, true);
    let s = page.eval("window.sotto.stats()").await;
    assert_eq!(s["media"]["decrypted"], 0, "{s}");
    assert!(
        s["media"]["failureKinds"]["auth"].as_u64() >= Some(10),
        "{s}"
    );

    // Genuine frames again: back to the connected text.
    mode.store(1, Ordering::Relaxed);
    page.wait_for(
        &format!("document.getElementById('status').textContent === {ENCRYPTED:?}"),
        CONNECT,
        "the connected status again",
    )
    .await;
    assert_eq!(page.eval("window.sotto.undecryptable").await, false);
    mode.store(2, Ordering::Relaxed);
    sender.await.unwrap();
    transport.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_out_of_counter_order_are_dropped_before_playout() {
    use sotto::handshake::{MediaSender, RotationConfig};
    use sotto::media::{OpusConfig, OpusEncoder, ToneSource};
    use sotto::sframe::CipherSuite;
    use sotto::transport::seal;

    let _media = crate::MEDIA.lock().await;
    let test = "frames_out_of_counter_order_are_dropped_before_playout";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    let (_rust, done, transport) = connected_call(&server, &room, &page).await;
    let mut tx = MediaSender::new(
        CipherSuite::AesGcm128Sha256,
        done.keys.send,
        RotationConfig::default(),
        std::time::Instant::now(),
    )
    .unwrap();
    let mut encoder = OpusEncoder::new(OpusConfig::default()).unwrap();
    let mut tone = ToneSource::new(660.0, 0.3);
    let (mut pcm, mut packet) = (vec![0f32; 960], vec![0u8; 1500]);
    let frame = Duration::from_millis(20);
    let mut ticker = tokio::time::interval(frame * 2);
    // Genuine frames, sealed in order, sent in swapped pairs: the transport stamps RTP
    // timestamps in sending order, as a relay rewriting them would. The second of each pair
    // (the lower counter, with the later timestamp) is authentic but misplaced.
    const PAIRS: u64 = 50;
    for _ in 0..PAIRS {
        ticker.tick().await;
        let mut pair = Vec::new();
        for _ in 0..2 {
            tone.fill(&mut pcm);
            let n = encoder.encode(&pcm, &mut packet).unwrap();
            pair.push(seal(tx.context(), &packet[..n]).unwrap());
        }
        transport.send(&pair[1], frame).await.unwrap();
        transport.send(&pair[0], frame).await.unwrap();
    }
    let s = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["media"]["decrypted"].as_u64() >= Some(2 * PAIRS - 4),
            CONNECT,
            "the frames decrypted",
        )
        .await;
    let rejected = s["media"]["reorderRejected"].as_u64().unwrap();
    // Every pair that arrived whole lost its second frame (loopback loses next to nothing).
    assert!((PAIRS - 2..=PAIRS).contains(&rejected), "{s}");
    assert_eq!(s["media"]["decryptFailures"], 0, "{s}");
    assert!(s["inbound"]["totalAudioEnergy"].as_f64() > Some(0.0), "{s}");
    transport.close().await.unwrap();
}
