//! The SFrame header (RFC 9605, section 4.3): a config byte, then the KID and CTR in big endian.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+---------------------------+---------------------------+
//! |X|  K  |Y|  C  |   KID (0-8 bytes)          |   CTR (0-8 bytes)          |
//! +-+-+-+-+-+-+-+-+---------------------------+---------------------------+
//! ```
//! X=0: K is the KID itself (0-7); X=1: K+1 KID bytes follow. Likewise Y and C for the counter.

use super::SframeError;

/// The longest header: a config byte and 8 bytes each of KID and CTR.
pub const MAX_HEADER_LEN: usize = 17;

/// A parsed SFrame header: which key (KID) and which counter (CTR) protect the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Key identifier.
    pub kid: u64,
    /// Frame counter; with the key's salt it forms the nonce.
    pub ctr: u64,
}

/// Bytes needed to hold `v` big endian, at least one.
const fn value_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    if bits == 0 { 1 } else { bits.div_ceil(8) }
}

/// Encodes one field: its 4-bit config nibble, and writes its extension bytes at `out[..n]`.
fn encode_field(v: u64, out: &mut [u8]) -> (u8, usize) {
    if v < 8 {
        // The value fits in the config bits: no extension bytes.
        return (v as u8, 0);
    }
    let n = value_len(v);
    out[..n].copy_from_slice(&v.to_be_bytes()[8 - n..]);
    (0b1000 | (n as u8 - 1), n)
}

impl Header {
    /// A header for `kid` and `ctr`.
    pub const fn new(kid: u64, ctr: u64) -> Self {
        Header { kid, ctr }
    }

    /// Length of the shortest encoding, the one [`Header::encode`] writes.
    pub const fn encoded_len(&self) -> usize {
        let kid = if self.kid < 8 { 0 } else { value_len(self.kid) };
        let ctr = if self.ctr < 8 { 0 } else { value_len(self.ctr) };
        1 + kid + ctr
    }

    /// Writes the shortest encoding at the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, SframeError> {
        let len = self.encoded_len();
        if out.len() < len {
            return Err(SframeError::BufferTooSmall {
                needed: len,
                available: out.len(),
            });
        }
        let (kid_bits, kid_len) = encode_field(self.kid, &mut out[1..]);
        let (ctr_bits, ctr_len) = encode_field(self.ctr, &mut out[1 + kid_len..]);
        out[0] = (kid_bits << 4) | ctr_bits;
        debug_assert_eq!(1 + kid_len + ctr_len, len);
        Ok(len)
    }

    /// The shortest encoding as an owned array and its length (no allocation).
    pub fn to_bytes(&self) -> ([u8; MAX_HEADER_LEN], usize) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        // MAX_HEADER_LEN always suffices.
        let len = self.encode(&mut buf).unwrap_or(0);
        (buf, len)
    }

    /// Parses the header at the start of `frame`; returns it and the bytes it took.
    ///
    /// Longer-than-necessary encodings are accepted: the header is part of the AAD, so the
    /// exact bytes are authenticated either way.
    pub fn parse(frame: &[u8]) -> Result<(Header, usize), SframeError> {
        let Some(&config) = frame.first() else {
            return Err(SframeError::HeaderTruncated {
                needed: 1,
                available: 0,
            });
        };
        let kid_nibble = config >> 4;
        let ctr_nibble = config & 0x0f;
        let ext_len = |nibble: u8| {
            if nibble & 0b1000 != 0 {
                usize::from(nibble & 0b0111) + 1
            } else {
                0
            }
        };
        let kid_len = ext_len(kid_nibble);
        let ctr_len = ext_len(ctr_nibble);
        let total = 1 + kid_len + ctr_len;
        if frame.len() < total {
            return Err(SframeError::HeaderTruncated {
                needed: total,
                available: frame.len(),
            });
        }
        let read = |nibble: u8, bytes: &[u8]| {
            if nibble & 0b1000 == 0 {
                u64::from(nibble)
            } else {
                bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            }
        };
        let kid = read(kid_nibble, &frame[1..1 + kid_len]);
        let ctr = read(ctr_nibble, &frame[1 + kid_len..total]);
        Ok((Header { kid, ctr }, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_live_in_the_config_byte() {
        assert_eq!(Header::new(7, 7).to_bytes().1, 1);
        let (bytes, len) = Header::new(3, 5).to_bytes();
        assert_eq!(&bytes[..len], &[0x35]);
    }

    #[test]
    fn roundtrip_edges() {
        for kid in [0, 7, 8, 255, 256, u32::MAX as u64, u64::MAX] {
            for ctr in [0, 7, 8, 0xffff, 1 << 40, u64::MAX] {
                let h = Header::new(kid, ctr);
                let (bytes, len) = h.to_bytes();
                assert_eq!(Header::parse(&bytes[..len]), Ok((h, len)));
            }
        }
    }

    #[test]
    fn non_minimal_encoding_parses() {
        // KID 5 written in one extension byte, CTR 1 in two.
        assert_eq!(
            Header::parse(&[0x89, 0x05, 0x00, 0x01]),
            Ok((Header::new(5, 1), 4))
        );
    }

    #[test]
    fn truncation_is_an_error() {
        assert!(matches!(
            Header::parse(&[]),
            Err(SframeError::HeaderTruncated { needed: 1, .. })
        ));
        assert!(matches!(
            Header::parse(&[0xff, 0, 0]),
            Err(SframeError::HeaderTruncated {
                needed: 17,
                available: 3
            })
        ));
    }

    #[test]
    fn encode_into_short_buffer_fails() {
        let mut small = [0u8; 2];
        assert!(Header::new(1000, 0).encode(&mut small).is_err());
    }
}
