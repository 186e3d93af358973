//! The page's side of ICE restarts against the engine's transport on loopback: as responder
//! it says `can_restart`, answers a restart offer with new ICE credentials on the same peer
//! connection, and ends the call on a restart offer whose DTLS fingerprint is not the signed
//! one. (Across the simulated NATs, with a real outage: netsim.rs.)

use serde_json::Value;

use crate::cdp::Browser;
use crate::peer::{self, RustPeer};
use crate::{CONNECT, Server, room, skip, wait_status};

fn ufrag(sdp: &str) -> &str {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_answers_ice_restarts_and_refuses_one_with_another_fingerprint() {
    let test = "the_page_answers_ice_restarts_and_refuses_one_with_another_fingerprint";
    let _media = crate::MEDIA.lock().await;
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let page = browser.new_page(None).await;
    page.goto(&server.page_url(&room, "web")).await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    // The Rust side joins second, so it initiates: it offers, the page answers.
    let rust = RustPeer::join(&server.ws_url(), &room, "rust").await;
    let transport = sotto::transport::MediaTransport::new(Default::default())
        .await
        .unwrap();
    let offer = transport.create_offer().await.unwrap();
    rust.set_dtls(&peer::sdp_dtls(&offer));
    rust.browser_id(CONNECT).await;
    rust.send_sdp("offer", &offer).await;
    rust.handshake(CONNECT).await;
    let first = rust.answer(CONNECT).await;
    // After its first answer the page says it answers restart offers.
    let said = rust.next_signal(CONNECT).await;
    assert_eq!(said, serde_json::json!({ "kind": "can_restart" }));
    transport.accept_answer(&first).await.unwrap();
    transport.connected(CONNECT).await.unwrap();
    wait_status(&page, "connected", CONNECT).await;

    // A restart: new credentials, the same certificate. The page answers on the same peer
    // connection with new credentials of its own and the fingerprint it signed.
    let restart = transport.create_restart_offer().await.unwrap();
    assert_ne!(ufrag(&restart.sdp), ufrag(&offer));
    rust.send_sdp("offer", &restart.sdp).await;
    let second = rust.nth_answer(1, CONNECT).await;
    assert_ne!(ufrag(&second), ufrag(&first), "{second}");
    assert_eq!(peer::sdp_dtls(&second), peer::sdp_dtls(&first));
    transport.accept_answer(&second).await.unwrap();
    transport.connected(CONNECT).await.unwrap();
    let state = page
        .wait_for(
            "window.sotto.restart.iceRestarts === 1 && window.sotto.restart",
            CONNECT,
            "the page's count of restarts",
        )
        .await;
    assert_eq!(state["restartErrors"], 0, "{state}");
    wait_status(&page, "connected", CONNECT).await;

    // A restart offer carrying another DTLS fingerprint than the one signed in the handshake
    // (a relay terminating DTLS itself): the call ends, unanswered.
    let forged = transport.create_restart_offer().await.unwrap();
    rust.send_sdp("offer", &peer::swap_dtls(&forged.sdp, peer::FAKE_DTLS))
        .await;
    let ended = wait_status(&page, "ended", CONNECT).await;
    assert_eq!(
        ended,
        "ended: the peer's DTLS fingerprint does not match its handshake (possible interception)"
    );
    assert_eq!(
        page.eval("window.sotto.handshakeError").await,
        "DtlsMismatch"
    );
    let answers = page.eval("window.sotto.restart.iceRestarts").await;
    assert_eq!(answers, Value::from(1));
    transport.close().await.unwrap();
}
