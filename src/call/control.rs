//! Sealing and opening control-channel messages under the control keys (Sans-I/O).

use crate::handshake::{CallKeys, HandshakeError};
use crate::sframe::{CipherSuite, ReceiverConfig, ReceiverContext, SenderContext, SframeError};
use crate::transport::{SealedFrame, seal};

use super::protocol::ControlMessage;

/// The two control directions of one call: our sealer and the peer's opener.
pub struct ControlCrypto {
    sender: SenderContext,
    receiver: ReceiverContext,
}

impl std::fmt::Debug for ControlCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCrypto").finish_non_exhaustive()
    }
}

/// Why a control frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// It did not authenticate, was replayed, or is malformed SFrame.
    #[error(transparent)]
    Sframe(#[from] SframeError),
    /// It authenticated but is not a control message we know (ignored by protocol).
    #[error("unknown control message")]
    Unknown,
}

impl ControlCrypto {
    /// Control keys for both directions of `keys` (derived before the media keys are
    /// consumed). KID = direction, as the protocol says.
    pub fn new(suite: CipherSuite, keys: &CallKeys) -> Result<Self, HandshakeError> {
        let send_key = keys.send.control_key()?;
        let recv_key = keys.recv.control_key()?;
        let sender = SenderContext::new(suite, keys.send.direction() as u64, send_key.as_ref())?;
        let mut receiver = ReceiverContext::with_config(ReceiverConfig {
            max_keys: 1,
            ..ReceiverConfig::default()
        })?;
        let peer_kid = keys.recv.direction() as u64;
        receiver.add_key(suite, peer_kid, recv_key.as_ref())?;
        Ok(ControlCrypto { sender, receiver })
    }

    /// Seals a control message for the channel.
    pub fn seal(&mut self, message: &ControlMessage) -> Result<SealedFrame, SframeError> {
        seal(&mut self.sender, &message.to_json())
    }

    /// Opens a sealed control frame from the peer.
    pub fn open(&mut self, frame: &[u8]) -> Result<ControlMessage, ControlError> {
        // The receiver holds the peer's control key only: any other KID is refused there.
        let (_, plaintext) = self.receiver.decrypt_to_vec(&[], frame)?;
        ControlMessage::parse(&plaintext).ok_or(ControlError::Unknown)
    }

    /// Control frames refused so far (authentication, replay, malformed).
    pub fn failures(&self) -> u64 {
        let s = self.receiver.stats();
        s.auth_failures + s.replays + s.too_old + s.unknown_kid + s.malformed
    }
}
