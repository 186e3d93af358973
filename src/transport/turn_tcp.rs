//! TURN over TCP (RFC 8656 section 3.1, RFC 6062 framing), for networks that drop all UDP.
//!
//! webrtc-rs only speaks TURN over UDP, so each `turn:HOST:PORT?transport=tcp` URL is handed to
//! it as `turn:127.0.0.1:BRIDGE?transport=udp` (same credentials), where BRIDGE is a loopback
//! UDP socket of a [`TurnTcpBridge`]. The bridge keeps one TCP connection to the real server per
//! local TURN client (the allocation belongs to that connection), writes each datagram onto it
//! (ChannelData padded to 4 bytes, as TCP requires), and splits the byte stream coming back
//! into STUN and ChannelData messages ([`StreamSplitter`]), one datagram each. The allocation
//! is still a UDP relay on the server, so the relay candidate is the server's relayed address
//! and the peer needs nothing special. The loopback socket is ours, not webrtc's: it never
//! becomes a candidate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::IceServer;

/// Largest STUN or ChannelData message the bridge carries, either way. A datagram of the call
/// is at most a path MTU; TURN control messages are far smaller.
pub const MAX_TURN_MESSAGE: usize = 8192;
/// How long connecting to the TURN server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TURN clients (local sockets) one bridge serves at once; webrtc has one per local address.
const MAX_SESSIONS: usize = 8;
/// Datagrams waiting for a session's connection; more are dropped, as UDP would.
const SESSION_QUEUE: usize = 64;
/// Bytes waiting to be written to the server; past this, datagrams wait in the queue.
const MAX_PENDING_WRITE: usize = 64 * 1024;

const STUN_HEADER: usize = 20;
const CHANNEL_DATA_HEADER: usize = 4;

/// Why a message or a TCP stream from the TURN server was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TurnTcpError {
    /// The message is neither STUN (first two bits 00) nor ChannelData (01).
    #[error("not a STUN or ChannelData message (first byte {0:#04x})")]
    UnknownMessage(u8),
    /// A STUN message whose length is not a multiple of 4.
    #[error("STUN message length {0} is not a multiple of 4")]
    BadStunLength(usize),
    /// A message longer than [`MAX_TURN_MESSAGE`].
    #[error("message of {0} bytes is over the limit")]
    Oversize(usize),
    /// A datagram shorter than its header says.
    #[error("datagram of {got} bytes, its header says {want}")]
    Truncated {
        /// Bytes in the datagram.
        got: usize,
        /// Bytes its header announces.
        want: usize,
    },
    /// The URL is a TCP TURN URL that cannot be parsed.
    #[error("bad TURN over TCP URL: {0}")]
    BadUrl(String),
    /// No tokio runtime to run the bridge on.
    #[error("no tokio runtime for the TURN over TCP bridge")]
    NoRuntime,
    /// The loopback socket could not be made.
    #[error("TURN over TCP bridge socket: {0}")]
    Socket(String),
}

/// The length on the wire of the message that starts with `head` (at least 4 bytes), padding
/// included, or why there is none.
fn framed_len(head: &[u8]) -> Result<usize, TurnTcpError> {
    let declared = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let len = match head[0] >> 6 {
        0b00 => {
            if declared % 4 != 0 {
                return Err(TurnTcpError::BadStunLength(declared));
            }
            STUN_HEADER + declared
        }
        0b01 => CHANNEL_DATA_HEADER + declared.next_multiple_of(4),
        _ => return Err(TurnTcpError::UnknownMessage(head[0])),
    };
    if len > MAX_TURN_MESSAGE {
        return Err(TurnTcpError::Oversize(len));
    }
    Ok(len)
}

/// Splits the byte stream from a TURN server into whole messages (RFC 6062 framing: STUN by
/// its length field, ChannelData by its length rounded up to 4). Sans-I/O; holds at most one
/// partial message plus what was pushed.
#[derive(Debug, Default)]
pub struct StreamSplitter {
    buf: BytesMut,
}

impl StreamSplitter {
    /// A splitter with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message (padding included), `None` until one is complete. An error
    /// means the stream cannot be followed any further and the connection must go.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, TurnTcpError> {
        if self.buf.len() < CHANNEL_DATA_HEADER {
            return Ok(None);
        }
        let len = framed_len(&self.buf[..CHANNEL_DATA_HEADER])?;
        if self.buf.len() < len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// The bytes to write on TCP for one datagram from the TURN client: a whole STUN message as
/// it is, a ChannelData message padded to a multiple of 4.
pub fn frame_datagram(datagram: &[u8]) -> Result<Bytes, TurnTcpError> {
    if datagram.len() < CHANNEL_DATA_HEADER {
        return Err(TurnTcpError::Truncated {
            got: datagram.len(),
            want: CHANNEL_DATA_HEADER,
        });
    }
    let len = framed_len(datagram)?;
    let is_stun = datagram[0] >> 6 == 0;
    let unpadded = if is_stun {
        len
    } else {
        CHANNEL_DATA_HEADER + usize::from(u16::from_be_bytes([datagram[2], datagram[3]]))
    };
    if datagram.len() < unpadded {
        return Err(TurnTcpError::Truncated {
            got: datagram.len(),
            want: unpadded,
        });
    }
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(&datagram[..unpadded]);
    out.resize(len, 0);
    Ok(out.freeze())
}

/// The server of a `turn:` URL with `transport=tcp`: `Some((host, port))`, `None` for any
/// other URL (`stun:`, TURN over UDP, `turns:`, which webrtc handles or skips itself).
pub fn tcp_turn_server(url: &str) -> Option<Result<(String, u16), TurnTcpError>> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?')?;
    if !query
        .split('&')
        .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"))
    {
        return None;
    }
    let bad = || TurnTcpError::BadUrl(url.to_owned());
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Some(Err(bad()));
        };
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Some(Err(bad())),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => 3478,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Some(Err(bad())),
        },
    };
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        return Some(Err(bad()));
    }
    Some(Ok((host.to_owned(), port)))
}

/// A loopback UDP socket that carries webrtc's TURN client to one TURN server over TCP. Its
/// tasks, and the TCP connections (so the allocations), end when it is dropped.
#[derive(Debug)]
pub struct TurnTcpBridge {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl TurnTcpBridge {
    /// Binds the loopback socket and starts serving; connections to `host:port` are made when
    /// the TURN client first sends.
    pub fn start(host: String, port: u16) -> Result<Self, TurnTcpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TurnTcpError::NoRuntime)?;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| TurnTcpError::Socket(e.to_string()))?;
        let local = socket
            .local_addr()
            .map_err(|e| TurnTcpError::Socket(e.to_string()))?;
        let socket = {
            let _guard = runtime.enter();
            UdpSocket::from_std(socket).map_err(|e| TurnTcpError::Socket(e.to_string()))?
        };
        let task = runtime.spawn(serve(Arc::new(socket), host, port));
        Ok(TurnTcpBridge { local, task })
    }

    /// The loopback address the TURN client is to use.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TurnTcpBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bridges behind one set of ICE servers.
#[derive(Debug, Default)]
pub struct TurnTcpBridges {
    _held: Vec<TurnTcpBridge>,
}

/// `servers` with every TURN over TCP URL replaced by a bridge's loopback TURN over UDP URL
/// (credentials kept), and the bridges, which must live as long as the peer connection.
pub fn bridge_tcp_turn(
    servers: &[IceServer],
) -> Result<(Vec<IceServer>, TurnTcpBridges), TurnTcpError> {
    let mut bridges = Vec::new();
    let mut out = Vec::with_capacity(servers.len());
    for server in servers {
        let mut urls = Vec::with_capacity(server.urls.len());
        for url in &server.urls {
            match tcp_turn_server(url) {
                None => urls.push(url.clone()),
                Some(target) => {
                    let (host, port) = target?;
                    let bridge = TurnTcpBridge::start(host, port)?;
                    tracing::debug!(%url, bridge = %bridge.local_addr(), "TURN over TCP bridged");
                    urls.push(format!("turn:{}?transport=udp", bridge.local_addr()));
                    bridges.push(bridge);
                }
            }
        }
        out.push(IceServer {
            urls,
            username: server.username.clone(),
            credential: server.credential.clone(),
        });
    }
    Ok((out, TurnTcpBridges { _held: bridges }))
}

/// Receives the TURN clients' datagrams and hands each to its client's session.
async fn serve(socket: Arc<UdpSocket>, host: String, port: u16) {
    let mut sessions: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_TURN_MESSAGE + 1];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = match received {
                    Ok(r) => r,
                    // An ICMP error from an earlier send; the socket itself is fine.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => {
                        tracing::warn!("TURN over TCP bridge: {e}");
                        return;
                    }
                };
                if n > MAX_TURN_MESSAGE {
                    continue;
                }
                sessions.retain(|_, tx| !tx.is_closed());
                let tx = match sessions.get(&from) {
                    Some(tx) => tx.clone(),
                    None if sessions.len() < MAX_SESSIONS => {
                        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                        tasks.spawn(session(Arc::clone(&socket), from, rx, host.clone(), port));
                        sessions.insert(from, tx.clone());
                        tx
                    }
                    None => continue,
                };
                // A full queue loses the datagram, as a congested UDP path would.
                let _ = tx.try_send(Bytes::copy_from_slice(&buf[..n]));
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

/// One TURN client's TCP connection: its datagrams out, the server's messages back to it.
async fn session(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    mut datagrams: mpsc::Receiver<Bytes>,
    host: String,
    port: u16,
) {
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!("TURN over TCP: cannot connect to {host}:{port}: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!("TURN over TCP: connecting to {host}:{port} timed out");
            return;
        }
    };
    // Media rides on this stream: no Nagle delay.
    let _ = stream.set_nodelay(true);
    tracing::debug!(%client, "TURN over TCP connected to {host}:{port}");
    if let Err(e) = pump(&stream, &socket, client, &mut datagrams).await {
        tracing::warn!("TURN over TCP to {host}:{port}: {e}");
    }
}

/// Why a session ended.
#[derive(Debug, Error)]
enum SessionEnd {
    #[error("the server closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Framing(#[from] TurnTcpError),
}

async fn pump(
    stream: &TcpStream,
    socket: &UdpSocket,
    client: SocketAddr,
    datagrams: &mut mpsc::Receiver<Bytes>,
) -> Result<(), SessionEnd> {
    let mut splitter = StreamSplitter::new();
    let mut pending = BytesMut::new();
    let mut chunk = vec![0u8; MAX_TURN_MESSAGE];
    loop {
        let interest = if pending.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        tokio::select! {
            ready = stream.ready(interest) => {
                let ready = ready?;
                if ready.is_readable() {
                    match stream.try_read(&mut chunk) {
                        Ok(0) => return Err(SessionEnd::Closed),
                        Ok(n) => {
                            splitter.push(&chunk[..n]);
                            while let Some(message) = splitter.next_message()? {
                                // Lost like any datagram if the client's socket is gone.
                                let _ = socket.send_to(&message, client).await;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if ready.is_writable() && !pending.is_empty() {
                    match stream.try_write(&pending) {
                        Ok(n) => pending.advance(n),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            datagram = datagrams.recv(), if pending.len() < MAX_PENDING_WRITE => {
                let Some(datagram) = datagram else { return Ok(()) };
                match frame_datagram(&datagram) {
                    Ok(framed) => pending.extend_from_slice(&framed),
                    Err(e) => tracing::debug!("TURN over TCP: dropped a datagram: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend((0..len).map(|i| i as u8));
        m
    }

    fn channel_data(len: u16, padded: bool) -> Vec<u8> {
        let mut m = vec![0x40, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend((0..len).map(|i| 0x80 | i as u8));
        if padded {
            m.resize(4 + usize::from(len).next_multiple_of(4), 0);
        }
        m
    }

    #[test]
    fn splits_stun_and_padded_channel_data_from_one_stream() {
        let mut wire = stun(8);
        wire.extend(channel_data(5, true));
        wire.extend(stun(0));
        let mut s = StreamSplitter::new();
        s.push(&wire);
        assert_eq!(s.next_message().unwrap().unwrap(), stun(8));
        let cd = s.next_message().unwrap().unwrap();
        assert_eq!(cd.len(), 12);
        assert_eq!(cd, channel_data(5, true));
        assert_eq!(s.next_message().unwrap().unwrap(), stun(0));
        assert_eq!(s.next_message().unwrap(), None);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_message_split_over_many_reads_comes_out_whole_once() {
        let mut wire = channel_data(7, true);
        wire.extend(stun(12));
        let mut s = StreamSplitter::new();
        let mut out = Vec::new();
        for byte in &wire {
            s.push(&[*byte]);
            while let Some(m) = s.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, [channel_data(7, true), stun(12)]);
    }

    #[test]
    fn garbage_and_oversize_streams_are_refused_without_reading_on() {
        let mut s = StreamSplitter::new();
        s.push(&[0x80, 0, 0, 4, 1, 2, 3, 4]);
        assert_eq!(s.next_message(), Err(TurnTcpError::UnknownMessage(0x80)));
        let mut s = StreamSplitter::new();
        s.push(&stun(6)[..4]);
        assert_eq!(s.next_message(), Err(TurnTcpError::BadStunLength(6)));
        // A declared length past the limit fails on the header, before any body is buffered.
        let mut s = StreamSplitter::new();
        s.push(&[0x40, 0x00, 0xff, 0xff]);
        assert_eq!(s.next_message(), Err(TurnTcpError::Oversize(4 + 0x1_0000)));
        let mut s = StreamSplitter::new();
        s.push(&[0x00, 0x01]);
        assert_eq!(s.next_message(), Ok(None));
    }

    #[test]
    fn datagrams_are_framed_for_tcp() {
        assert_eq!(frame_datagram(&stun(4)).unwrap(), stun(4));
        // ChannelData gets its padding on TCP, whether or not the client padded it.
        assert_eq!(
            frame_datagram(&channel_data(5, false)).unwrap(),
            channel_data(5, true)
        );
        assert_eq!(
            frame_datagram(&channel_data(5, true)).unwrap(),
            channel_data(5, true)
        );
        assert_eq!(
            frame_datagram(&stun(8)[..20]),
            Err(TurnTcpError::Truncated { got: 20, want: 28 })
        );
        assert_eq!(
            frame_datagram(&[0x17, 0xfe, 0xfd]),
            Err(TurnTcpError::Truncated { got: 3, want: 4 })
        );
        // DTLS or RTP is never TURN.
        assert!(matches!(
            frame_datagram(&[0x80, 0x60, 0, 1, 0, 0]),
            Err(TurnTcpError::UnknownMessage(0x80))
        ));
        assert!(matches!(
            frame_datagram(&channel_data(9000, false)),
            Err(TurnTcpError::Oversize(_))
        ));
    }

    /// The I/O path against a stand-in server: a datagram goes out framed on TCP, the
    /// server's bytes come back (in pieces) as one datagram per message, garbage ends the
    /// connection, and dropping the bridge closes it.
    // Multi-threaded: the test body blocks on its std sockets while the bridge runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bridge_carries_datagrams_over_tcp_and_closes_with_its_owner() {
        use std::io::{Read, Write};
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let (servers, bridges) = bridge_tcp_turn(&[IceServer {
            urls: vec![
                "stun:127.0.0.1:9".into(),
                format!("turn:127.0.0.1:{port}?transport=tcp"),
            ],
            username: "u".into(),
            credential: "c".into(),
        }])
        .unwrap();
        let url = &servers[0].urls[1];
        assert_eq!(servers[0].urls[0], "stun:127.0.0.1:9");
        assert_eq!(servers[0].username, "u");
        let bridge = url
            .strip_prefix("turn:")
            .and_then(|u| u.strip_suffix("?transport=udp"))
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap();
        assert!(bridge.ip().is_loopback() && bridge.port() != port, "{url}");

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&channel_data(5, false), bridge)
            .await
            .unwrap();
        let accepted = tokio::task::spawn_blocking(move || server.accept().unwrap().0);
        let mut tcp = accepted.await.unwrap();
        // A broken bridge fails the test instead of hanging it.
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 12];
        tcp.read_exact(&mut got).unwrap();
        assert_eq!(got.as_slice(), channel_data(5, true));

        let mut back = stun(8);
        back.extend(channel_data(3, true));
        tcp.write_all(&back[..10]).unwrap();
        tcp.flush().unwrap();
        tcp.write_all(&back[10..]).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (stun(8).as_slice(), bridge));
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], channel_data(3, true));

        drop(bridges);
        let eof = tokio::task::spawn_blocking(move || tcp.read(&mut [0u8; 16]).unwrap());
        assert_eq!(eof.await.unwrap(), 0, "the connection outlived the bridge");
    }

    // Multi-threaded: the test body blocks on its std sockets while the bridge runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_from_the_server_ends_the_connection() {
        use std::io::{Read, Write};
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let bridge = TurnTcpBridge::start("127.0.0.1".into(), port).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&stun(0), bridge.local_addr()).await.unwrap();
        let mut tcp = tokio::task::spawn_blocking(move || server.accept().unwrap().0)
            .await
            .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.read_exact(&mut [0u8; 20]).unwrap();
        tcp.write_all(&[0xc0, 0, 0, 0]).unwrap();
        let eof = tokio::task::spawn_blocking(move || tcp.read(&mut [0u8; 16]).unwrap());
        assert_eq!(eof.await.unwrap(), 0);
        drop(bridge);
    }

    #[test]
    fn only_tcp_turn_urls_are_bridged() {
        assert_eq!(
            tcp_turn_server("turn:203.0.113.10:3478?transport=tcp"),
            Some(Ok(("203.0.113.10".into(), 3478)))
        );
        assert_eq!(
            tcp_turn_server("turn:turn.example.org?transport=tcp"),
            Some(Ok(("turn.example.org".into(), 3478)))
        );
        assert_eq!(
            tcp_turn_server("turn:[2001:db8::1]:443?transport=tcp"),
            Some(Ok(("2001:db8::1".into(), 443)))
        );
        for other in [
            "turn:203.0.113.10:3478?transport=udp",
            "turn:203.0.113.10:3478",
            "turns:203.0.113.10:5349?transport=tcp",
            "stun:203.0.113.10:3478",
        ] {
            assert_eq!(tcp_turn_server(other), None, "{other}");
        }
        for bad in [
            "turn:h:0?transport=tcp",
            "turn:h:99999?transport=tcp",
            "turn::3478?transport=tcp",
            "turn:[::1?transport=tcp",
        ] {
            assert!(matches!(tcp_turn_server(bad), Some(Err(_))), "{bad}");
        }
    }
}
