//! SFrame (RFC 9605): end-to-end encryption of media frames.
//!
//! Every encoded frame is sealed before it reaches the transport, so relays, SFUs and TURN
//! servers carry only ciphertext. The module is Sans-I/O: bytes in, bytes out, no clocks,
//! sockets or threads.
//!
//! - [`Header`]: the KID/CTR header, any length up to 8 bytes each.
//! - [`DerivedKey`]: the key schedule from a base key to `sframe_key` and `sframe_salt`.
//! - [`CipherSuite`]: all five registry suites (AES-CTR-HMAC with 80/64/32-bit tags, AES-GCM).
//! - [`SenderContext`] / [`ReceiverContext`]: per-frame encryption with a strictly increasing
//!   counter, and decryption with several KIDs and a replay window per KID.
//!
//! The per-frame calls ([`SenderContext::encrypt_in_place`], [`SenderContext::encrypt`],
//! [`ReceiverContext::decrypt_in_place`], [`ReceiverContext::decrypt`]) do not allocate: keys
//! are expanded once per KID and buffers belong to the caller.
//!
//! ```
//! use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
//!
//! let base_key = b"a base key agreed by the handshake";
//! let mut tx = SenderContext::new(CipherSuite::AesGcm128Sha256, 7, base_key)?;
//! let mut rx = ReceiverContext::new();
//! rx.add_key(CipherSuite::AesGcm128Sha256, 7, base_key)?;
//!
//! let mut buf = [0u8; 64];
//! let n = tx.encrypt(&[], b"opus frame", &mut buf)?;
//! let frame = rx.decrypt_in_place(&[], &mut buf[..n])?;
//! assert_eq!(frame.payload, b"opus frame");
//! assert!(rx.decrypt_in_place(&[], &mut tx.encrypt_to_vec(&[], b"x")?).is_ok());
//! # Ok::<(), sotto::sframe::SframeError>(())
//! ```

mod cipher;
mod error;
mod header;
mod key;
mod receiver;
mod replay;
mod schedule;
mod sender;
mod suite;

pub use cipher::{CtrHmacAead, CtrHmacHash};
pub use error::SframeError;
pub use header::{Header, MAX_HEADER_LEN};
pub use receiver::{Decrypted, ReceiverConfig, ReceiverContext, ReceiverStats};
pub use replay::{DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use schedule::DerivedKey;
pub use sender::SenderContext;
pub use suite::CipherSuite;

/// Longest metadata (extra authenticated data beside the header) a frame may carry.
pub const MAX_METADATA_LEN: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SenderContext>();
        assert_send_sync::<ReceiverContext>();
    }
}
