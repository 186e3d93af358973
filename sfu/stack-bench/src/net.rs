//! The in-memory network: addresses and datagrams in flight. Nothing here touches a socket.

use std::net::{Ipv4Addr, SocketAddr};

use crate::PAYLOAD_LEN;

/// The SFU's one address (every connection of its side shares it, as on its one socket).
pub fn sfu_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 3478))
}

/// Client `i`'s address.
pub fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + i as u8), 40_000 + i as u16))
}

/// Which client an address is.
pub fn client_of(addr: SocketAddr) -> Option<usize> {
    (0..4).find(|&i| client_addr(i) == addr)
}

/// One datagram in flight.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Whether a datagram is SRTP (RTP version 2, not an RTCP packet type; RFC 5761/7983).
pub fn is_rtp(data: &[u8]) -> bool {
    match data {
        [b0, b1, ..] => b0 >> 6 == 2 && !(192..=223).contains(b1),
        _ => false,
    }
}

/// The payload of the sender's packet number `n`: distinct per packet, so a receiver's check
/// means the right packet arrived.
pub fn payload(n: u64) -> Vec<u8> {
    (0..PAYLOAD_LEN)
        .map(|k| (n as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}
