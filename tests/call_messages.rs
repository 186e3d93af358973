//! Text messages between two Rust peers over a real call (real signaling server, real WebRTC
//! on loopback): both ways, acknowledged, the disappearing timer set by one side and obeyed by
//! both, oversize texts refused, and neither the signaling server's relayed bytes nor any log
//! of the process ever holding a message's text. Expiry to the millisecond, clock skew,
//! replays and forgeries are pinned on virtual time in the unit tests of `sotto::messages`
//! and `sotto::call`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use sotto::call::{Call, CallBuilder, CallEvent, CallState, CallStats, EndReason};
use sotto::media::{NullSink, ToneSource};
use sotto::messages::{ChatEvent, DisappearingTimer, MAX_TEXT_LEN, MessageError, MessageId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(30);

/// What the test asks a running call to do.
enum Ask {
    Send(String, oneshot::Sender<Result<MessageId, MessageError>>),
    Timer(Option<Duration>, oneshot::Sender<Result<(), MessageError>>),
    HangUp(oneshot::Sender<(EndReason, CallStats)>),
}

/// A call driven from a task of its own, so its events are always read.
struct Peer {
    asks: mpsc::UnboundedSender<Ask>,
    events: mpsc::UnboundedReceiver<CallEvent>,
}

impl Peer {
    fn spawn(mut call: Call) -> Self {
        let (asks, mut asked) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = call.next_event() => match event {
                        Some(e) => { let _ = events_tx.send(e); }
                        None => break,
                    },
                    ask = asked.recv() => match ask {
                        Some(Ask::Send(text, reply)) => {
                            let _ = reply.send(call.send_message(&text).await);
                        }
                        Some(Ask::Timer(ttl, reply)) => {
                            let _ = reply.send(call.set_disappearing_timer(ttl).await);
                        }
                        Some(Ask::HangUp(reply)) => {
                            let reason = call.hang_up().await;
                            while let Some(e) = call.next_event().await {
                                let _ = events_tx.send(e);
                            }
                            let _ = reply.send((reason, call.stats()));
                            break;
                        }
                        None => break,
                    },
                }
            }
        });
        Peer { asks, events }
    }

    async fn send(&self, text: &str) -> Result<MessageId, MessageError> {
        let (reply, answer) = oneshot::channel();
        self.asks.send(Ask::Send(text.into(), reply)).unwrap();
        answer.await.unwrap()
    }

    async fn timer(&self, ttl: Option<Duration>) -> Result<(), MessageError> {
        let (reply, answer) = oneshot::channel();
        self.asks.send(Ask::Timer(ttl, reply)).unwrap();
        answer.await.unwrap()
    }

    async fn hang_up(&self) -> (EndReason, CallStats) {
        let (reply, answer) = oneshot::channel();
        self.asks.send(Ask::HangUp(reply)).unwrap();
        answer.await.unwrap()
    }

    /// Reads events until `f` picks one; panics if the call ends or nothing comes in time.
    async fn until<T>(&mut self, who: &str, mut f: impl FnMut(&CallEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{who}: timed out waiting"))
                .unwrap_or_else(|| panic!("{who}: events stopped"));
            if let CallEvent::Ended { reason, .. } = &event {
                panic!("{who}: call ended early: {reason}");
            }
            if let Some(t) = f(&event) {
                return t;
            }
        }
    }
}

/// A TCP relay in front of the signaling server that keeps every byte the server sends to
/// clients. Server-to-client WebSocket frames are not masked, so anything the server relays
/// from one peer to the other is visible here as it was sent.
struct Tap {
    url: String,
    from_server: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn start(server_url: &str) -> Self {
        let upstream = server_url
            .strip_prefix("ws://")
            .and_then(|s| s.strip_suffix("/ws"))
            .unwrap()
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&from_server);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Tap { url, from_server }
    }
}

/// Everything logged in this process (engine and in-process signaling server), at debug
/// level and above for both.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn peer(url: &str, room: &str, name: &str) -> CallBuilder {
    CallBuilder::new(url, room)
        .name(name)
        .source(ToneSource::new(440.0, 0.1))
        .sink(NullSink::default())
        .configure(|c| {
            c.transport.udp_addrs = vec!["127.0.0.1:0".into()];
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_both_ways_expire_on_both_sides_and_never_reach_the_server() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug,webrtc=info,rtc=info,webrtc_sctp=info,rtc_sctp=info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let server = TestServer::start().await;
    let tap = Tap::start(&server.url).await;

    let mut alice = Peer::spawn(peer(&tap.url, "chat", "alice").start().unwrap());
    alice
        .until("alice", |e| {
            matches!(e, CallEvent::State(CallState::WaitingForPeer)).then_some(())
        })
        .await;
    // Nothing can be sent before the call is connected.
    assert_eq!(
        alice.send("too early").await,
        Err(MessageError::NotConnected)
    );
    let mut bob = Peer::spawn(peer(&tap.url, "chat", "bob").start().unwrap());
    for (who, p) in [("alice", &mut alice), ("bob", &mut bob)] {
        p.until(who, |e| {
            matches!(e, CallEvent::State(CallState::Connected)).then_some(())
        })
        .await;
    }

    // Alice to Bob, acknowledged.
    let marker_a = "MARKER-alice-0c9e51 to bob";
    let id = alice.send(marker_a).await.unwrap();
    let got = bob
        .until("bob", |e| match e {
            CallEvent::Chat(ChatEvent::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got.id, id);
    assert_eq!(got.from, "alice");
    assert_eq!(got.text.get().unwrap().as_str(), marker_a);
    assert_eq!(got.ttl, DisappearingTimer::OFF);
    let to = alice
        .until("alice", |e| match e {
            CallEvent::Chat(ChatEvent::Delivered { id: d, to }) if *d == id => Some(to.clone()),
            _ => None,
        })
        .await;
    assert_eq!(to, "bob");

    // Bob to Alice: a full 4 KiB of characters JSON escapes six-fold.
    let marker_b = format!("MARKER-bob-77d2{}", "\u{1}".repeat(MAX_TEXT_LEN - 15));
    assert_eq!(marker_b.len(), MAX_TEXT_LEN);
    let id_b = bob.send(&marker_b).await.unwrap();
    let got = alice
        .until("alice", |e| match e {
            CallEvent::Chat(ChatEvent::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!((got.id, got.from.as_str()), (id_b, "bob"));
    assert_eq!(got.text.get().unwrap().as_str(), marker_b);
    bob.until("bob", |e| {
        matches!(e, CallEvent::Chat(ChatEvent::Delivered { id, .. }) if *id == id_b).then_some(())
    })
    .await;

    // One byte over the limit is refused, and nothing else is lost.
    let over = "x".repeat(MAX_TEXT_LEN + 1);
    assert_eq!(
        alice.send(&over).await,
        Err(MessageError::TooLong {
            len: MAX_TEXT_LEN + 1
        })
    );
    assert!(matches!(
        alice.timer(Some(Duration::from_secs(4))).await,
        Err(MessageError::TimerOutOfRange(_))
    ));

    // Bob sets a 5 s timer; Alice is told, and her next message carries it.
    bob.timer(Some(Duration::from_secs(5))).await.unwrap();
    let (from, ttl) = alice
        .until("alice", |e| match e {
            CallEvent::Chat(ChatEvent::TimerChanged { from, ttl }) => Some((from.clone(), *ttl)),
            _ => None,
        })
        .await;
    assert_eq!((from.as_str(), ttl.secs()), ("bob", Some(5)));
    let marker_t = "MARKER-timed-a41f";
    let sent_at = Instant::now();
    let id_t = alice.send(marker_t).await.unwrap();
    let sent_text = alice
        .until("alice", |e| match e {
            CallEvent::Chat(ChatEvent::Sent { id, text, ttl, .. }) if *id == id_t => {
                assert_eq!(
                    ttl.secs(),
                    Some(5),
                    "the change applies to the next message"
                );
                Some(text.clone())
            }
            _ => None,
        })
        .await;
    let got = bob
        .until("bob", |e| match e {
            CallEvent::Chat(ChatEvent::Message(m)) if m.id == id_t => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got.ttl.secs(), Some(5));
    assert_eq!(got.text.get().unwrap().as_str(), marker_t);
    let expired = |id: MessageId| {
        move |e: &CallEvent| {
            matches!(e, CallEvent::Chat(ChatEvent::Expired { id: x }) if *x == id)
                .then(Instant::now)
        }
    };
    let alice_gone = alice.until("alice", expired(id_t)).await;
    let bob_gone = bob.until("bob", expired(id_t)).await;
    // Neither copy lives less than 5 s from the send (Bob's counts from his receipt, later).
    // The upper bound is loose for a loaded 2-core machine; unit tests pin it exactly.
    for (who, at) in [("alice", alice_gone), ("bob", bob_gone)] {
        let lived = at - sent_at;
        eprintln!("{who}'s copy expired {lived:?} after the send");
        assert!(
            lived >= Duration::from_secs(5) && lived < Duration::from_secs(9),
            "{who}: {lived:?}"
        );
    }
    // The texts are gone from the events that carried them.
    assert!(sent_text.is_expired() && got.text.is_expired());

    let (reason, alice_stats) = alice.hang_up().await;
    assert_eq!(reason, EndReason::LocalHangup);
    let bob_stats = loop {
        match tokio::time::timeout(WAIT, bob.events.recv()).await {
            Ok(Some(CallEvent::Ended { stats, .. })) => break stats,
            Ok(Some(_)) => {}
            other => panic!("bob did not end: {other:?}"),
        }
    };
    assert_eq!(
        (
            alice_stats.messages_sent,
            alice_stats.messages_received,
            alice_stats.messages_expired,
            alice_stats.messages_rejected
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(
        (
            bob_stats.messages_sent,
            bob_stats.messages_received,
            bob_stats.messages_expired,
            bob_stats.messages_rejected
        ),
        (1, 2, 1, 0)
    );

    // The server relayed the handshake and SDP (the tap saw them), never a text.
    let relayed = tap.from_server.lock().unwrap().clone();
    assert!(
        contains(&relayed, "a=fingerprint"),
        "the tap saw no relayed SDP"
    );
    let logged = logs.0.lock().unwrap().clone();
    assert!(contains(&logged, "keys agreed"), "nothing was logged");
    for marker in ["MARKER-alice", "MARKER-bob", "MARKER-timed", "MARKER-"] {
        assert!(!contains(&relayed, marker), "{marker} crossed the server");
        assert!(!contains(&logged, marker), "{marker} in a log");
    }
}
