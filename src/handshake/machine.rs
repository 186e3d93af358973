//! The handshake state machine (Sans-I/O): messages in, messages and the result out.
//!
//! ```text
//! Initiator                                   Responder
//!   hello  {call_id, name, identity, dtls, H(eI)} ->
//!                                           <- reply  {name, identity, dtls, eR}
//!   reveal {eI, sig_I(th), confirm_I}       ->
//!                                           <- confirm {sig_R(th), confirm_R}
//! ```
//! The initiator commits to its ephemeral key before it sees the responder's, and each side
//! signs the whole transcript (which includes each side's DTLS certificate fingerprint) with its
//! identity key and proves it derived the same keys. The
//! responder is done after sending `confirm`; the initiator when it has checked it.

use std::sync::Arc;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SystemRandom;

use super::dtls::DtlsFingerprint;
use super::identity::{Identity, IdentityKey};
use super::transcript::{
    SIG_INITIATOR, SIG_RESPONDER, SafetyCode, Schedule, Transcript, commitment, confirm_tag,
    signed_content, verify_confirm,
};
use super::wire::{Hex, MAX_CALL_ID_LEN, MAX_NAME_LEN, Message, PROTOCOL_VERSION};
use super::{CallKeys, HandshakeError};

/// Which side of the handshake this endpoint plays. The application decides (for example the
/// peer that joined the room second initiates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends `hello` first.
    Initiator,
    /// Waits for `hello`.
    Responder,
}

/// The outcome of a completed handshake.
#[derive(Debug)]
pub struct Established {
    /// Our role.
    pub role: Role,
    /// The peer's identity key, proven by its signature over the transcript.
    pub peer_identity: IdentityKey,
    /// The name the peer gave (bound into the transcript, but chosen by the peer: compare it
    /// with what the server attested and show it through [`crate::names::canonical`]).
    pub peer_name: String,
    /// The DTLS fingerprint the peer signed: its SDP must carry exactly this one
    /// ([`DtlsFingerprint::check_sdp`]).
    pub peer_dtls: DtlsFingerprint,
    /// The code both people compare; it differs if anyone substituted keys.
    pub safety_code: SafetyCode,
    /// One SFrame base key per sending direction.
    pub keys: CallKeys,
}

/// What to do after feeding a message in.
#[derive(Debug, Default)]
pub struct Step {
    /// A message to send to the peer, if any.
    pub send: Option<Vec<u8>>,
    /// Set once the handshake completed on this side.
    pub established: Option<Established>,
}

struct PeerHello {
    name: String,
    identity: IdentityKey,
    dtls: DtlsFingerprint,
    commitment: [u8; 32],
}

enum State {
    /// Initiator: hello sent, waiting for reply.
    AwaitReply {
        ephemeral: EphemeralPrivateKey,
        ephemeral_pub: [u8; 32],
    },
    /// Initiator: reveal sent, waiting for confirm.
    AwaitConfirm {
        th: [u8; 32],
        schedule: Schedule,
        peer_name: String,
        peer_identity: IdentityKey,
        peer_dtls: DtlsFingerprint,
    },
    /// Responder: waiting for hello.
    AwaitHello,
    /// Responder: reply sent, waiting for reveal.
    AwaitReveal {
        ephemeral: EphemeralPrivateKey,
        ephemeral_pub: [u8; 32],
        peer: PeerHello,
    },
    /// Finished or failed; no more messages.
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitReply { .. } => "await_reply",
            State::AwaitConfirm { .. } => "await_confirm",
            State::AwaitHello => "await_hello",
            State::AwaitReveal { .. } => "await_reveal",
            State::Closed => "closed",
        }
    }
}

/// One endpoint's side of one handshake. Create one per call; a failed handshake cannot be
/// resumed.
pub struct Handshake {
    role: Role,
    identity: Arc<Identity>,
    call_id: String,
    name: String,
    dtls: DtlsFingerprint,
    state: State,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("call_id", &self.call_id)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

fn new_ephemeral() -> Result<(EphemeralPrivateKey, [u8; 32]), HandshakeError> {
    let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
        .map_err(|_| HandshakeError::Random)?;
    let public = private
        .compute_public_key()
        .map_err(|_| HandshakeError::Random)?;
    let public: [u8; 32] = public
        .as_ref()
        .try_into()
        .map_err(|_| HandshakeError::Random)?;
    Ok((private, public))
}

fn check_local(call_id: &str, name: &str) -> Result<(), HandshakeError> {
    if call_id.len() > MAX_CALL_ID_LEN || name.len() > MAX_NAME_LEN {
        return Err(HandshakeError::Malformed(
            "local call id or name is too long".into(),
        ));
    }
    Ok(())
}

/// X25519 and the key schedule; ring refuses small-order points (all-zero output).
fn agree(
    ephemeral: EphemeralPrivateKey,
    peer_ephemeral: &[u8; 32],
    th: &[u8; 32],
) -> Result<Schedule, HandshakeError> {
    agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&X25519, peer_ephemeral),
        |shared| Schedule::derive(th, shared),
    )
    .map_err(|_| HandshakeError::BadPublicKey)?
}

impl Handshake {
    /// Starts a handshake as initiator; returns it and the `hello` to send. `dtls` is the
    /// fingerprint of our DTLS certificate, as our SDP will carry it.
    pub fn initiator(
        identity: Arc<Identity>,
        call_id: &str,
        name: &str,
        dtls: &DtlsFingerprint,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        check_local(call_id, name)?;
        let (ephemeral, ephemeral_pub) = new_ephemeral()?;
        let hello = Message::Hello {
            v: PROTOCOL_VERSION,
            call_id: call_id.into(),
            name: name.into(),
            identity: Hex(*identity.public_key().as_bytes()),
            dtls: dtls.to_string(),
            commitment: Hex(commitment(call_id, &ephemeral_pub)),
        };
        let hs = Handshake {
            role: Role::Initiator,
            identity,
            call_id: call_id.into(),
            name: name.into(),
            dtls: dtls.clone(),
            state: State::AwaitReply {
                ephemeral,
                ephemeral_pub,
            },
        };
        Ok((hs, hello.encode()))
    }

    /// Starts a handshake as responder; it waits for the peer's `hello`. `dtls` is the
    /// fingerprint of our DTLS certificate.
    pub fn responder(
        identity: Arc<Identity>,
        call_id: &str,
        name: &str,
        dtls: &DtlsFingerprint,
    ) -> Result<Self, HandshakeError> {
        check_local(call_id, name)?;
        Ok(Handshake {
            role: Role::Responder,
            identity,
            call_id: call_id.into(),
            name: name.into(),
            dtls: dtls.clone(),
            state: State::AwaitHello,
        })
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake has finished (successfully or not).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Feeds one message from the peer. Any error closes the handshake for good: an
    /// attacker gets one try per handshake, not one per message.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        if matches!(state, State::Closed) {
            return Err(HandshakeError::Closed);
        }
        let msg = Message::decode(bytes)?;
        let state_name = state.name();
        let unexpected = |msg: &Message| HandshakeError::UnexpectedMessage {
            got: msg.kind(),
            state: state_name,
        };
        match (state, msg) {
            (
                State::AwaitHello,
                Message::Hello {
                    call_id,
                    name,
                    identity,
                    dtls,
                    commitment,
                    ..
                },
            ) => self.on_hello(call_id, name, identity.0, &dtls, commitment.0),
            (
                State::AwaitReply {
                    ephemeral,
                    ephemeral_pub,
                },
                Message::Reply {
                    name,
                    identity,
                    dtls,
                    ephemeral: peer_ephemeral,
                    ..
                },
            ) => self.on_reply(
                ephemeral,
                ephemeral_pub,
                PeerHello {
                    name,
                    identity: self.peer_identity(identity.0)?,
                    dtls: DtlsFingerprint::parse(&dtls)?,
                    commitment: [0; 32],
                },
                peer_ephemeral.0,
            ),
            (
                State::AwaitReveal {
                    ephemeral,
                    ephemeral_pub,
                    peer,
                },
                Message::Reveal {
                    ephemeral: peer_ephemeral,
                    signature,
                    confirm,
                    ..
                },
            ) => self.on_reveal(
                ephemeral,
                ephemeral_pub,
                peer,
                peer_ephemeral.0,
                signature.0,
                confirm.0,
            ),
            (
                State::AwaitConfirm {
                    th,
                    schedule,
                    peer_name,
                    peer_identity,
                    peer_dtls,
                },
                Message::Confirm {
                    signature, confirm, ..
                },
            ) => self.on_confirm(
                th,
                schedule,
                PeerHello {
                    name: peer_name,
                    identity: peer_identity,
                    dtls: peer_dtls,
                    commitment: [0; 32],
                },
                signature.0,
                confirm.0,
            ),
            (_, msg) => Err(unexpected(&msg)),
        }
    }

    fn peer_identity(&self, bytes: [u8; 32]) -> Result<IdentityKey, HandshakeError> {
        let key = IdentityKey::from_bytes(bytes);
        if key == self.identity.public_key() {
            return Err(HandshakeError::ReflectedIdentity);
        }
        Ok(key)
    }

    fn on_hello(
        &mut self,
        call_id: String,
        name: String,
        identity: [u8; 32],
        dtls: &str,
        commitment: [u8; 32],
    ) -> Result<Step, HandshakeError> {
        if call_id != self.call_id {
            return Err(HandshakeError::CallIdMismatch);
        }
        let identity = self.peer_identity(identity)?;
        let dtls = DtlsFingerprint::parse(dtls)?;
        let (ephemeral, ephemeral_pub) = new_ephemeral()?;
        let reply = Message::Reply {
            v: PROTOCOL_VERSION,
            name: self.name.clone(),
            identity: Hex(*self.identity.public_key().as_bytes()),
            dtls: self.dtls.to_string(),
            ephemeral: Hex(ephemeral_pub),
        };
        self.state = State::AwaitReveal {
            ephemeral,
            ephemeral_pub,
            peer: PeerHello {
                name,
                identity,
                dtls,
                commitment,
            },
        };
        Ok(Step {
            send: Some(reply.encode()),
            established: None,
        })
    }

    /// The transcript hash, identical on both sides when nobody interfered. Each side is
    /// `(name, identity, dtls)`; the DTLS fingerprints enter in normal form.
    fn transcript(
        &self,
        initiator: (&str, &IdentityKey, &DtlsFingerprint),
        commitment: &[u8; 32],
        responder: (&str, &IdentityKey, &DtlsFingerprint),
        responder_ephemeral: &[u8; 32],
        initiator_ephemeral: &[u8; 32],
    ) -> [u8; 32] {
        let mut t = Transcript::new(PROTOCOL_VERSION);
        t.field(self.call_id.as_bytes());
        t.field(initiator.0.as_bytes());
        t.field(initiator.1.as_bytes());
        t.field(initiator.2.to_string().as_bytes());
        t.field(commitment);
        t.field(responder.0.as_bytes());
        t.field(responder.1.as_bytes());
        t.field(responder.2.to_string().as_bytes());
        t.field(responder_ephemeral);
        t.field(initiator_ephemeral);
        t.finish()
    }

    fn on_reply(
        &mut self,
        ephemeral: EphemeralPrivateKey,
        ephemeral_pub: [u8; 32],
        peer: PeerHello,
        peer_ephemeral: [u8; 32],
    ) -> Result<Step, HandshakeError> {
        let me = self.identity.public_key();
        let th = self.transcript(
            (&self.name, &me, &self.dtls),
            &commitment(&self.call_id, &ephemeral_pub),
            (&peer.name, &peer.identity, &peer.dtls),
            &peer_ephemeral,
            &ephemeral_pub,
        );
        let schedule = agree(ephemeral, &peer_ephemeral, &th)?;
        let reveal = Message::Reveal {
            v: PROTOCOL_VERSION,
            ephemeral: Hex(ephemeral_pub),
            signature: Hex(self.identity.sign(&signed_content(SIG_INITIATOR, &th))),
            confirm: Hex(confirm_tag(&schedule.confirm_initiator, &th)),
        };
        self.state = State::AwaitConfirm {
            th,
            schedule,
            peer_name: peer.name,
            peer_identity: peer.identity,
            peer_dtls: peer.dtls,
        };
        Ok(Step {
            send: Some(reveal.encode()),
            established: None,
        })
    }

    fn on_reveal(
        &mut self,
        ephemeral: EphemeralPrivateKey,
        ephemeral_pub: [u8; 32],
        peer: PeerHello,
        peer_ephemeral: [u8; 32],
        signature: [u8; 64],
        confirm: [u8; 32],
    ) -> Result<Step, HandshakeError> {
        if commitment(&self.call_id, &peer_ephemeral) != peer.commitment {
            return Err(HandshakeError::CommitmentMismatch);
        }
        let me = self.identity.public_key();
        let th = self.transcript(
            (&peer.name, &peer.identity, &peer.dtls),
            &peer.commitment,
            (&self.name, &me, &self.dtls),
            &ephemeral_pub,
            &peer_ephemeral,
        );
        if !peer
            .identity
            .verify(&signed_content(SIG_INITIATOR, &th), &signature)
        {
            return Err(HandshakeError::BadSignature);
        }
        let schedule = agree(ephemeral, &peer_ephemeral, &th)?;
        if !verify_confirm(&schedule.confirm_initiator, &th, &confirm) {
            return Err(HandshakeError::BadConfirmation);
        }
        let reply = Message::Confirm {
            v: PROTOCOL_VERSION,
            signature: Hex(self.identity.sign(&signed_content(SIG_RESPONDER, &th))),
            confirm: Hex(confirm_tag(&schedule.confirm_responder, &th)),
        };
        Ok(Step {
            send: Some(reply.encode()),
            established: Some(Established {
                role: Role::Responder,
                peer_identity: peer.identity,
                peer_name: peer.name,
                peer_dtls: peer.dtls,
                safety_code: SafetyCode::from_transcript(&th),
                keys: CallKeys::new(Role::Responder, &schedule),
            }),
        })
    }

    fn on_confirm(
        &mut self,
        th: [u8; 32],
        schedule: Schedule,
        peer: PeerHello,
        signature: [u8; 64],
        confirm: [u8; 32],
    ) -> Result<Step, HandshakeError> {
        if !peer
            .identity
            .verify(&signed_content(SIG_RESPONDER, &th), &signature)
        {
            return Err(HandshakeError::BadSignature);
        }
        if !verify_confirm(&schedule.confirm_responder, &th, &confirm) {
            return Err(HandshakeError::BadConfirmation);
        }
        Ok(Step {
            send: None,
            established: Some(Established {
                role: Role::Initiator,
                peer_identity: peer.identity,
                peer_name: peer.name,
                peer_dtls: peer.dtls,
                safety_code: SafetyCode::from_transcript(&th),
                keys: CallKeys::new(Role::Initiator, &schedule),
            }),
        })
    }
}
