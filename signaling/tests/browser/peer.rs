//! The Rust side of a call with the page, through the real signaling server: `sotto::signal`
//! for signaling and `sotto::handshake` for the handshake, as docs/call-protocol.md says.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotto::handshake::{DtlsFingerprint, Established, Handshake, Identity};
use sotto::signal::{SignalClient, SignalConfig, SignalEvent};
use tokio::sync::{Mutex, mpsc};

pub struct RustPeer {
    pub client: SignalClient,
    events: Mutex<mpsc::Receiver<SignalEvent>>,
    identity: Arc<Identity>,
    room: String,
    /// Our peer id and the ids already in the room when we joined.
    joined: (String, Vec<String>),
    /// The browser's peer id once known, and SDP it sent.
    pub browser: Mutex<Option<String>>,
    sdp: Mutex<Vec<(String, String)>>,
    /// Other payloads that arrived while we waited for SDP.
    pending: Mutex<VecDeque<Value>>,
    /// The DTLS fingerprint we sign (normal form); a made-up one unless a test sets its
    /// transport's.
    dtls: std::sync::Mutex<DtlsFingerprint>,
    /// The name we sign in the handshake (the name we joined with, unless a test lies).
    claim: std::sync::Mutex<String>,
    /// Every handshake message we sent, for tests that replay them.
    pub sent: Mutex<Vec<Value>>,
}

/// A well-formed fingerprint no certificate here has.
pub const FAKE_DTLS: &str = "sha-256 5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A:5A";

/// The `a=fingerprint:` of an SDP, in normal form (all of its lines carry the same one).
pub fn sdp_dtls(sdp: &str) -> String {
    let all = DtlsFingerprint::all_in_sdp(sdp).unwrap();
    assert!(!all.is_empty() && all.iter().all(|f| *f == all[0]), "{sdp}");
    all[0].to_string()
}

/// `sdp` with every `a=fingerprint:` line replaced by `dtls`: what a relay that terminates
/// DTLS itself would send.
pub fn swap_dtls(sdp: &str, dtls: &str) -> String {
    sdp.split("\r\n")
        .map(|l| {
            if l.starts_with("a=fingerprint:") {
                format!("a=fingerprint:{dtls}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
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
                Ok(Some(SignalEvent::Joined { peer_id, peers, .. })) => {
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
            joined,
            browser: Mutex::new(None),
            sdp: Mutex::new(Vec::new()),
            pending: Mutex::new(VecDeque::new()),
            dtls: std::sync::Mutex::new(DtlsFingerprint::parse(FAKE_DTLS).unwrap()),
            claim: std::sync::Mutex::new(name.into()),
            sent: Mutex::new(Vec::new()),
        }
    }

    /// Signs `dtls` (normal form) in the handshake instead of the made-up fingerprint.
    pub fn set_dtls(&self, dtls: &str) {
        *self.dtls.lock().unwrap() = DtlsFingerprint::parse(dtls).unwrap();
    }

    /// Signs `name` in the handshake instead of the name we joined with.
    pub fn set_claim(&self, name: &str) {
        *self.claim.lock().unwrap() = name.into();
    }

    /// A handshake of ours: (state machine, hello when initiating).
    fn start(&self, initiator: bool) -> (Handshake, Option<Vec<u8>>) {
        let claim = self.claim.lock().unwrap().clone();
        let dtls = self.dtls.lock().unwrap().clone();
        if initiator {
            let (hs, hello) =
                Handshake::initiator(self.identity.clone(), &self.room, &claim, &dtls).unwrap();
            (hs, Some(hello))
        } else {
            let hs =
                Handshake::responder(self.identity.clone(), &self.room, &claim, &dtls).unwrap();
            (hs, None)
        }
    }

    pub fn fingerprint(&self) -> String {
        self.identity.public_key().fingerprint()
    }

    /// The next relayed payload from the browser, as JSON; offers and answers are stored.
    async fn next_message(&self, deadline: Instant) -> Value {
        if let Some(v) = self.pending.lock().await.pop_front() {
            return v;
        }
        let mut events = self.events.lock().await;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(SignalEvent::PeerJoined(p))) => {
                    self.browser.lock().await.get_or_insert(p.peer_id);
                }
                Ok(Some(SignalEvent::Message { from, data })) => {
                    let v: Value = serde_json::from_str(data.get()).unwrap();
                    // This peer does not trickle ICE: it ignores those payloads, as an
                    // engine from before trickle ICE does.
                    if is_trickle(&v) {
                        continue;
                    }
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
        self.sent.lock().await.push(message.clone());
        self.send_raw_handshake(to, message).await;
    }

    /// Sends any JSON as a handshake message (forged, replayed, old versions).
    pub async fn send_raw_handshake(&self, to: &str, message: Value) {
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
        let (mut hs, hello) = self.start(initiator);
        if let Some(hello) = hello {
            self.send_handshake(&browser, &hello).await;
        }
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
        let (mut hs, hello) = self.start(true);
        self.send_handshake(&browser, &hello.unwrap()).await;
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
        self.sdp_of("offer", timeout).await
    }

    /// The browser's SDP answer, once it arrives.
    pub async fn answer(&self, timeout: Duration) -> String {
        self.sdp_of("answer", timeout).await
    }

    /// The browser's `n`th (from 0) SDP answer, once it arrives (ICE restarts add more).
    pub async fn nth_answer(&self, n: usize, timeout: Duration) -> String {
        self.nth_sdp("answer", n, timeout).await
    }

    /// The next relayed payload from the browser that is not an SDP, as JSON.
    pub async fn next_signal(&self, timeout: Duration) -> Value {
        self.next_message(Instant::now() + timeout).await
    }

    async fn sdp_of(&self, want: &str, timeout: Duration) -> String {
        self.nth_sdp(want, 0, timeout).await
    }

    async fn nth_sdp(&self, want: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, sdp)) = self
                .sdp
                .lock()
                .await
                .iter()
                .filter(|(k, _)| k == want)
                .nth(n)
            {
                return sdp.clone();
            }
            let mut events = self.events.lock().await;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(SignalEvent::Message { data, .. })) => {
                    let v: Value = serde_json::from_str(data.get()).unwrap();
                    if is_trickle(&v) {
                        continue;
                    }
                    if let (Some(kind), Some(sdp)) = (v["kind"].as_str(), v["sdp"].as_str()) {
                        self.sdp.lock().await.push((kind.into(), sdp.into()));
                    } else {
                        self.pending.lock().await.push_back(v);
                    }
                }
                Ok(Some(SignalEvent::PeerJoined(p))) => {
                    self.browser.lock().await.get_or_insert(p.peer_id);
                }
                Ok(Some(_)) => {}
                other => panic!("no {want} from the browser: {other:?}"),
            }
        }
    }
}

/// A trickle ICE payload (`trickle`, `candidate`, `end_of_candidates`).
fn is_trickle(v: &Value) -> bool {
    matches!(
        v["kind"].as_str(),
        Some("trickle" | "candidate" | "end_of_candidates")
    )
}

impl RustPeer {
    /// Sends our SDP answer to the browser.
    pub async fn send_answer(&self, sdp: &str) {
        self.send_sdp("answer", sdp).await;
    }

    /// Sends our SDP (`kind` "offer" or "answer") to the browser.
    pub async fn send_sdp(&self, kind: &str, sdp: &str) {
        let to = self.browser.lock().await.clone().expect("browser known");
        self.client
            .send_to(&to, &json!({ "kind": kind, "sdp": sdp }))
            .await
            .unwrap();
    }

    /// The browser's peer id, waiting for it to join if needed.
    pub async fn browser_id(&self, timeout: Duration) -> String {
        self.wait_browser(Instant::now() + timeout).await
    }
}
