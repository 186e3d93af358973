//! Two pages through the hostile signaling server of `../support/mitm.rs`: what the page shows
//! when the server runs its own handshakes, or swaps the DTLS fingerprints in the SDP.

use std::path::Path;

use serde_json::Value;

use crate::cdp::{Browser, Page};
use crate::mitm::{Attack, Mitm};
use crate::{CONNECT, Server, room, skip, wait_status};

const UNDECRYPTABLE: &str =
    "connected, but the peer's media cannot be decrypted: keys differ (possible interception)";
const DTLS_MISMATCH: &str =
    "ended: the peer's DTLS fingerprint does not match its handshake (possible interception)";

async fn mitm(attack: Attack) -> Mitm {
    Mitm::start(
        attack,
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("web")),
    )
    .await
}

/// Alice joins, then Bob, both through `server`.
async fn alice_then_bob(server: &Mitm, test: &str, alice: &Page, bob: &Page) {
    let room = room(test);
    alice
        .goto(&format!("{}/?room={room}&name=alice", server.http))
        .await;
    wait_status(alice, "waiting for someone", CONNECT).await;
    bob.goto(&format!("{}/?room={room}&name=bob", server.http))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_running_its_own_handshakes_is_exposed_in_both_pages() {
    let _media = crate::MEDIA.lock().await;
    let test = "a_server_running_its_own_handshakes_is_exposed_in_both_pages";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = mitm(Attack::OwnHandshakes {
        as_first: None,
        as_second: None,
    })
    .await;
    let (alice, bob) = (browser.new_page(None).await, browser.new_page(None).await);
    alice_then_bob(&server, test, &alice, &bob).await;
    // Media flows peer to peer (the attacker signed each side's real DTLS fingerprint), sealed
    // under keys the two pages do not share: both say so instead of "end-to-end encrypted".
    for page in [&alice, &bob] {
        assert_eq!(
            wait_status(page, "connected, but", CONNECT).await,
            UNDECRYPTABLE
        );
        assert_eq!(page.eval("window.sotto.undecryptable").await, true);
        let s = page.eval("window.sotto.stats()").await;
        assert_eq!(s["media"]["decrypted"], 0, "{s}");
        assert!(s["media"]["decryptFailures"].as_u64() >= Some(10), "{s}");
    }
    assert_eq!(server.handshakes_completed(), 2);
    // The codes differ; each page met the attacker under the other's name.
    let a_code = alice.eval("window.sotto.safetyCode").await;
    let b_code = bob.eval("window.sotto.safetyCode").await;
    assert!(a_code.is_string() && b_code.is_string());
    assert_ne!(a_code, b_code);
    assert_eq!(alice.eval("window.sotto.peerName").await, "bob");
    assert_eq!(bob.eval("window.sotto.peerName").await, "alice");
    let mallory = Value::from(server.fingerprint());
    assert_eq!(alice.text("peer-fingerprint").await, mallory);
    assert_eq!(bob.text("peer-fingerprint").await, mallory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_swapping_dtls_fingerprints_ends_the_call_in_both_pages() {
    let test = "a_server_swapping_dtls_fingerprints_ends_the_call_in_both_pages";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = mitm(Attack::SwapDtls).await;
    let (alice, bob) = (browser.new_page(None).await, browser.new_page(None).await);
    alice_then_bob(&server, test, &alice, &bob).await;
    // Alice answers Bob's offer, so she has his (swapped) SDP as soon as her handshake is done:
    // she ends the call before she answers. Bob then learns it from her leaving, or from the
    // swapped answer when she had answered first: either way he never sends media.
    assert_eq!(wait_status(&alice, "ended", CONNECT).await, DTLS_MISMATCH);
    assert_eq!(
        alice.eval("window.sotto.handshakeError").await,
        "DtlsMismatch"
    );
    let bob_ended = wait_status(&bob, "ended", CONNECT).await;
    assert!(
        bob_ended == DTLS_MISMATCH || bob_ended == "ended: the peer left",
        "{bob_ended}"
    );
    for page in [&alice, &bob] {
        // No media key was installed: nothing was sent.
        let media = page.eval("window.sotto.stats().then((s) => s.media)").await;
        assert_eq!(media["encrypted"], 0, "{media}");
    }
    // The handshake itself was untouched: both sides agree on the code (Bob's confirm
    // arrived before Alice left; it may be processed after he saw her leave).
    let code = "window.sotto.safetyCode";
    let b_code = bob.wait_for(code, CONNECT, "Bob's safety code").await;
    assert_eq!(alice.eval(code).await, b_code);
}

/// From now on `page` talks to `server` for signaling while it still loads the client from its
/// own origin (so its IndexedDB, with the pins of earlier calls, stays the same).
/// The page's CSP (`connect-src 'self'`) already refuses such a WebSocket (the CSP test shows
/// it), so it is bypassed here: the handshake's defences must hold without the CSP too.
async fn signal_through(page: &Page, server: &Mitm) {
    page.bypass_csp().await;
    page.add_init_script(&format!(
        "{{ const Real = WebSocket; window.WebSocket = class extends Real {{ constructor(url, p) {{ super({:?}, p); }} }}; }}",
        server.url
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_impersonating_pinned_peers_is_reported_in_both_pages() {
    let _media = crate::MEDIA.lock().await;
    let test = "a_server_impersonating_pinned_peers_is_reported_in_both_pages";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    // A genuine first call: each pins the other.
    let honest = Server::start().await;
    let (alice, bob) = (browser.new_page(None).await, browser.new_page(None).await);
    let room1 = format!("{}-1", room(test));
    alice.goto(&honest.page_url(&room1, "alice")).await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    bob.goto(&honest.page_url(&room1, "bob")).await;
    for page in [&alice, &bob] {
        assert_eq!(
            wait_status(page, "connected", CONNECT).await,
            "connected: end-to-end encrypted"
        );
        assert_eq!(page.eval("window.sotto.peerTrust").await, "new");
    }
    let bob_fp = bob.text("fingerprint").await;

    // The next call goes through a server that runs its own handshakes, showing itself to
    // Alice as "bоb" (Cyrillic о) and to Bob as "alice".
    let server = mitm(Attack::OwnHandshakes {
        as_first: Some("b\u{43e}b".into()),
        as_second: None,
    })
    .await;
    for page in [&alice, &bob] {
        signal_through(page, &server).await;
    }
    let room2 = format!("{}-2", room(test));
    alice.goto(&honest.page_url(&room2, "alice")).await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    bob.goto(&honest.page_url(&room2, "bob")).await;
    for page in [&alice, &bob] {
        page.wait_for("window.sotto.peerTrust", CONNECT, "the peer's trust")
            .await;
        assert_eq!(page.eval("window.sotto.peerTrust").await, "changed");
        assert_eq!(page.text("peer-trust").await, "changed");
        assert_eq!(page.text("peer-fingerprint").await, server.fingerprint());
    }
    let a_warn = crate::v2::trust_warning(&alice).await;
    assert!(
        a_warn.starts_with("WARNING: \"b\u{43e}b\" looks like \"bob\"")
            && a_warn.contains(bob_fp.as_str().unwrap())
            && a_warn.contains("mixes writing systems"),
        "{a_warn}"
    );
    assert_eq!(alice.eval("window.sotto.lookalike").await, "bob");
    let b_warn = crate::v2::trust_warning(&bob).await;
    assert!(
        b_warn.starts_with("WARNING: IDENTITY CHANGED: \"alice\""),
        "{b_warn}"
    );
    // And the media the attacker relays cannot be decrypted on either side.
    for page in [&alice, &bob] {
        assert_eq!(
            wait_status(page, "connected, but", CONNECT).await,
            UNDECRYPTABLE
        );
    }
    // The pins stay: Alice still has only Bob's real key under "bob".
    let pins = crate::v2::known_peers(&alice).await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0][..2], ["bob", bob_fp.as_str().unwrap()]);
}
