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
    assert_eq!(result["passed"], 19, "{result}");
}

/// What `#trust-warning` shows ("" when hidden).
async fn trust_warning(page: &Page) -> String {
    page.eval(
        "(() => { const w = document.getElementById('trust-warning'); return w.hidden ? '' : w.textContent; })()",
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

/// The rows of `#known-peers`: [name, fingerprint, trust, first seen].
async fn known_peers(page: &Page) -> Vec<Vec<String>> {
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
