//! The Rust side of a call with the page, through the real signaling server: `sotto::signal`
//! for signaling and `sotto::handshake` for the handshake, as docs/call-protocol.md says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotto::handshake::{DtlsFingerprint, Established, Handshake, Identity};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use tokio::sync::{Mutex, mpsc};

pub struct RustPeer {
    pub client: SignalClient,
    events: Mutex<mpsc::Receiver<SignalEvent>>,
    identity: Arc<Identity>,
    room: String,
    name: String,
    /// Our peer id and the ids already in the room when we joined.
    joined: (String, Vec<String>),
    /// The browser's peer id once known, and SDP it sent.
    pub browser: Mutex<Option<String>>,
    sdp: Mutex<Vec<(String, String)>>,
}

impl RustPeer {
    pub async fn join(url: &str, room: &str, name: &str) -> Self {
        Self::join_as(url, room, name, Arc::new(Identity::generate().unwrap())).await
    }

    /// Joins with a given identity (to meet the page again as the same person).
    pub async fn join_as(url: &str, room: &str, name: &str, identity: Arc<Identity>) -> Self {
        let (client, mut events) = SignalClient::connect(SignalConfig::new(url, room, name));
        let joined = loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(SignalEvent::Joined { peer_id, peers })) => {
                    break (peer_id, peers.into_iter().map(|p| p.peer_id).collect());
                }
                Ok(Some(_)) => {}
                other => panic!("no welcome from the server: {other:?}"),
            }
        };
        RustPeer {
            client,
            events: Mutex::new(events),
            identity,
            room: room.into(),
            name: name.into(),
            joined,
            browser: Mutex::new(None),
            sdp: Mutex::new(Vec::new()),
        }
    }

    pub fn fingerprint(&self) -> String {
        self.identity.public_key().fingerprint()
    }

    /// The next relayed payload from the browser, as JSON; offers and answers are stored.
    async fn next_message(&self, deadline: Instant) -> Value {
        let mut events = self.events.lock().await;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(SignalEvent::PeerJoined(p))) => {
                    self.browser.lock().await.get_or_insert(p.peer_id);
                }
                Ok(Some(SignalEvent::Message { from, data })) => {
                    let v: Value = serde_json::from_str(data.get()).unwrap();
                    if let (Some(kind @ ("offer" | "answer")), Some(sdp)) =
                        (v["kind"].as_str(), v["sdp"].as_str())
                    {
                        self.sdp.lock().await.push((kind.into(), sdp.into()));
                        continue;
                    }
                    assert_eq!(Some(&from), self.browser.lock().await.as_ref());
                    return v;
                }
                Ok(Some(_)) => {}
                other => panic!("signaling ended or timed out: {other:?}"),
            }
        }
    }

    async fn wait_browser(&self, deadline: Instant) -> String {
        if let Some(first) = self.joined.1.first() {
            self.browser.lock().await.get_or_insert(first.clone());
        }
        loop {
            if let Some(id) = self.browser.lock().await.clone() {
                return id;
            }
            let mut events = self.events.lock().await;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(SignalEvent::PeerJoined(p))) => {
                    *self.browser.lock().await = Some(p.peer_id);
                }
                Ok(Some(_)) => {}
                other => panic!("the browser never joined: {other:?}"),
            }
        }
    }

    async fn send_handshake(&self, to: &str, message: &[u8]) {
        let message: Value = serde_json::from_slice(message).unwrap();
        self.client
            .send_to(to, &json!({ "kind": "handshake", "message": message }))
            .await
            .unwrap();
    }

    /// Runs the handshake with the browser: initiator when the browser was already in the
    /// room (docs/call-protocol.md, "Roles"), responder otherwise.
    pub async fn handshake(&self, timeout: Duration) -> Established {
        let deadline = Instant::now() + timeout;
        let browser = self.wait_browser(deadline).await;
        let initiator = !self.joined.1.is_empty();
        let mut hs = if initiator {
            let (hs, hello) =
                Handshake::initiator(self.identity.clone(), &self.room, &self.name, &DTLS_I)
                    .unwrap();
            self.send_handshake(&browser, &hello).await;
            hs
        } else {
            Handshake::responder(self.identity.clone(), &self.room, &self.name, &DTLS_R).unwrap()
        };
        loop {
            let msg = self.next_message(deadline).await;
            assert_eq!(msg["kind"], "handshake", "{msg}");
            let bytes = serde_json::to_vec(&msg["message"]).unwrap();
            let step = hs.handle(&bytes).expect("the browser's handshake message");
            if let Some(out) = step.send {
                self.send_handshake(&browser, &out).await;
            }
            if let Some(done) = step.established {
                return done;
            }
        }
    }

    /// Sends a forged `reveal` and waits no further (the browser must refuse it).
    pub async fn handshake_until_reveal_forged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let browser = self.wait_browser(deadline).await;
        assert!(!self.joined.1.is_empty(), "the Rust side must initiate");
        let (mut hs, hello) =
            Handshake::initiator(self.identity.clone(), &self.room, &self.name, &DTLS_I).unwrap();
        self.send_handshake(&browser, &hello).await;
        let reply = self.next_message(deadline).await;
        let bytes = serde_json::to_vec(&reply["message"]).unwrap();
        let reveal = hs.handle(&bytes).unwrap().send.unwrap();
        let mut v: Value = serde_json::from_slice(&reveal).unwrap();
        let sig = v["signature"].as_str().unwrap().to_string();
        let first = if sig.starts_with('0') { '1' } else { '0' };
        v["signature"] = json!(format!("{first}{}", &sig[1..]));
        self.send_handshake(&browser, &serde_json::to_vec(&v).unwrap())
            .await;
    }

    /// The browser's SDP offer, once it arrives.
    pub async fn offer(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, sdp)) = self.sdp.lock().await.iter().find(|(k, _)| k == "offer") {
                return sdp.clone();
            }
            let mut events = self.events.lock().await;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(SignalEvent::Message { data, .. })) => {
                    let v: Value = serde_json::from_str(data.get()).unwrap();
                    if let (Some(kind), Some(sdp)) = (v["kind"].as_str(), v["sdp"].as_str()) {
                        self.sdp.lock().await.push((kind.into(), sdp.into()));
                    }
                }
                Ok(Some(_)) => {}
                other => panic!("no offer from the browser: {other:?}"),
            }
        }
    }
}

impl RustPeer {
    /// Sends our SDP answer to the browser.
    pub async fn send_answer(&self, sdp: &str) {
        let to = self.browser.lock().await.clone().expect("browser known");
        self.client
            .send_to(&to, &json!({ "kind": "answer", "sdp": sdp }))
            .await
            .unwrap();
    }
}
