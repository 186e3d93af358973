//! Sealing and opening control-channel messages under the control keys (Sans-I/O).

use crate::handshake::{CallKeys, HandshakeError};
use crate::sframe::{CipherSuite, ReceiverConfig, ReceiverContext, SenderContext, SframeError};
use crate::transport::{SealedFrame, seal};

use zeroize::Zeroizing;

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
    /// It authenticated and claims to be a chat item, but is malformed (refused, counted).
    #[error("malformed chat message")]
    MalformedChat,
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
        // The plaintext may hold a message's text: wiped once sealed.
        let plaintext = Zeroizing::new(message.to_json());
        seal(&mut self.sender, &plaintext)
    }

    /// Opens a sealed control frame from the peer.
    pub fn open(&mut self, frame: &[u8]) -> Result<ControlMessage, ControlError> {
        // The receiver holds the peer's control key only: any other KID is refused there.
        let (_, plaintext) = self.receiver.decrypt_to_vec(&[], frame)?;
        let plaintext = Zeroizing::new(plaintext);
        match ControlMessage::parse(&plaintext) {
            Some(message) => Ok(message),
            None if ControlMessage::claims_chat(&plaintext) => Err(ControlError::MalformedChat),
            None => Err(ControlError::Unknown),
        }
    }

    /// Control frames refused so far (authentication, replay, malformed).
    pub fn failures(&self) -> u64 {
        let s = self.receiver.stats();
        s.auth_failures + s.replays + s.too_old + s.unknown_kid + s.malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Direction, DirectionKey};
    use crate::messages::ChatWire;

    /// Both ends of one call's control channel.
    fn pair() -> (ControlCrypto, ControlCrypto) {
        let a = [1; 32];
        let b = [2; 32];
        let alice = CallKeys {
            send: DirectionKey::from_bytes(a, Direction::InitiatorToResponder),
            recv: DirectionKey::from_bytes(b, Direction::ResponderToInitiator),
        };
        let bob = CallKeys {
            send: DirectionKey::from_bytes(b, Direction::ResponderToInitiator),
            recv: DirectionKey::from_bytes(a, Direction::InitiatorToResponder),
        };
        let suite = CipherSuite::AesGcm128Sha256;
        (
            ControlCrypto::new(suite, &alice).unwrap(),
            ControlCrypto::new(suite, &bob).unwrap(),
        )
    }

    fn message(text: &str) -> ControlMessage {
        ControlMessage::Chat(ChatWire::Message {
            id: "cd".repeat(16),
            seq: 1,
            from: "alice".into(),
            text: text.into(),
            ttl_s: Some(5),
        })
    }

    #[test]
    fn messages_open_once_and_forgeries_never() {
        let (mut alice, mut bob) = pair();
        let sealed = alice.seal(&message("MARKER-sealed")).unwrap();
        let bytes = sealed.as_bytes().to_vec();
        // The text is not readable in what travels.
        assert!(!bytes.windows(13).any(|w| w == b"MARKER-sealed"));
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(bob.open(&forged), Err(ControlError::Sframe(_))));
        assert_eq!(bob.open(&bytes).unwrap(), message("MARKER-sealed"));
        // The same frame again is a replay.
        assert!(matches!(bob.open(&bytes), Err(ControlError::Sframe(_))));
        assert_eq!(bob.failures(), 2);
        // Our own frame reflected back does not open either (other direction's key).
        let mine = bob.seal(&ControlMessage::Hangup).unwrap();
        assert!(bob.open(mine.as_bytes()).is_err());
    }

    #[test]
    fn a_malformed_chat_item_is_told_apart_from_an_unknown_type() {
        let (mut alice, mut bob) = pair();
        let bad = seal(
            &mut alice.sender,
            br#"{"type":"message","id":"x","seq":"1","from":"alice","text":"t"}"#,
        )
        .unwrap();
        assert!(matches!(
            bob.open(bad.as_bytes()),
            Err(ControlError::MalformedChat)
        ));
        let unknown = seal(&mut alice.sender, br#"{"type":"wave"}"#).unwrap();
        assert!(matches!(
            bob.open(unknown.as_bytes()),
            Err(ControlError::Unknown)
        ));
        // A full-size message of 4 KiB escaped characters still fits the control channel.
        let big = message(&"\u{1}".repeat(crate::messages::MAX_TEXT_LEN));
        let sealed = alice.seal(&big).unwrap();
        assert!(sealed.as_bytes().len() <= crate::transport::MAX_CONTROL_MESSAGE);
        assert_eq!(bob.open(sealed.as_bytes()).unwrap(), big);
    }
}
