//! Small bounded parsers for untrusted input: which participant a STUN request is for, and
//! the m-lines of an offer.

use crate::room::Kind;

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
/// RFC 8489 caps USERNAME at 513 bytes.
const MAX_USERNAME: usize = 513;

/// The SFU-side ufrag of a STUN binding request (`USERNAME` is `<our ufrag>:<theirs>`), or
/// `None` for anything else.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let header = datagram.get(..20)?;
    // STUN's first two bits are zero; RTP/RTCP start with version 2, DTLS with 20..63.
    let typ = u16::from_be_bytes([header[0], header[1]]);
    if typ != STUN_BINDING_REQUEST || header[4..8] != STUN_MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let body = datagram.get(20..20 + len)?;
    let mut at = 0;
    while let Some(attr) = body.get(at..at + 4) {
        let typ = u16::from_be_bytes([attr[0], attr[1]]);
        let alen = usize::from(u16::from_be_bytes([attr[2], attr[3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        if typ == ATTR_USERNAME {
            if alen > MAX_USERNAME {
                return None;
            }
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to four bytes.
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// One m-line of an offer, as the SFU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLine {
    /// Audio or video.
    pub kind: Kind,
    /// Whether the client will receive on it (`sendrecv` or `recvonly`): an outgoing slot.
    pub receives: bool,
}

/// The audio and video m-lines of an SDP, in order; others (data channels) are skipped.
pub fn media_lines(sdp: &str) -> Vec<MediaLine> {
    let mut lines = Vec::new();
    let mut current: Option<MediaLine> = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            lines.extend(current.take());
            current = match rest.split(' ').next() {
                Some("audio") => Some(MediaLine {
                    kind: Kind::Audio,
                    receives: true,
                }),
                Some("video") => Some(MediaLine {
                    kind: Kind::Video,
                    receives: true,
                }),
                _ => None,
            };
        } else if let Some(m) = current.as_mut() {
            match line {
                "a=sendonly" | "a=inactive" => m.receives = false,
                "a=sendrecv" | "a=recvonly" => m.receives = true,
                _ => {}
            }
        }
    }
    lines.extend(current);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, then USERNAME, padded.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        d.extend_from_slice(&STUN_MAGIC);
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&attrs);
        d
    }

    #[test]
    fn finds_our_ufrag_in_a_binding_request() {
        assert_eq!(stun_local_ufrag(&binding(b"sfuA1:cli")), Some("sfuA1"));
    }

    #[test]
    fn refuses_truncated_or_foreign_datagrams() {
        let good = binding(b"abc:def");
        for n in 0..good.len() {
            // Every truncation is refused or still names the same ufrag; none panics.
            let r = stun_local_ufrag(&good[..n]);
            assert!(r.is_none() || r == Some("abc"));
        }
        let mut rtp = good.clone();
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
        let mut lying = good.clone();
        lying[3] = 0xff;
        assert_eq!(stun_local_ufrag(&lying), None);
        assert_eq!(stun_local_ufrag(&binding(b":x")), None);
        assert_eq!(stun_local_ufrag(&binding(&[0xff, 0xfe])), None);
    }

    #[test]
    fn reads_the_media_lines_of_an_offer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert_eq!(
            media_lines(sdp),
            [
                MediaLine {
                    kind: Kind::Audio,
                    receives: true
                },
                MediaLine {
                    kind: Kind::Audio,
                    receives: true
                },
                MediaLine {
                    kind: Kind::Video,
                    receives: false
                },
            ]
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half of them with a valid STUN header, so the attribute walk runs.
            if i % 2 == 0 && d.len() >= 20 {
                d[0] = 0;
                d[1] = 1;
                d[4..8].copy_from_slice(&STUN_MAGIC);
            }
            let _ = stun_local_ufrag(&d);
            let _ = media_lines(&String::from_utf8_lossy(&d));
        }
    }
}
