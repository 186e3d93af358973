//! The authenticated key agreement against honest peers, a meddling relay and a full man in
//! the middle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto::handshake::{
    Direction, DtlsFingerprint, Established, Handshake, HandshakeError, Identity, KnownPeers,
    MediaKind, MediaReceiver, MediaSender, PeerTrust, RotationConfig, TrustPolicy, VIDEO_KID_BASE,
    kid_for, kind_kid_for,
};

/// DTLS certificate fingerprints the two sides sign (no peer connection here, so any value).
const DTLS_I: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd1; 32]);
const DTLS_R: DtlsFingerprint = DtlsFingerprint::from_sha256([0xd2; 32]);

use sotto::sframe::{CipherSuite, MAX_HEADER_LEN, SframeError};

const ROOM: &str = "room-42";

fn id() -> Arc<Identity> {
    Arc::new(Identity::generate().unwrap())
}

/// The four messages of one honest run, and both outcomes.
struct Run {
    hello: Vec<u8>,
    reply: Vec<u8>,
    reveal: Vec<u8>,
    confirm: Vec<u8>,
    initiator: Established,
    responder: Established,
}

fn honest_run(alice: &Arc<Identity>, bob: &Arc<Identity>) -> Run {
    let (mut a, hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let reply = b.handle(&hello).unwrap().send.unwrap();
    let reveal = a.handle(&reply).unwrap().send.unwrap();
    let step = b.handle(&reveal).unwrap();
    let confirm = step.send.unwrap();
    let responder = step.established.unwrap();
    let step = a.handle(&confirm).unwrap();
    assert!(step.send.is_none());
    Run {
        hello,
        reply,
        reveal,
        confirm,
        initiator: step.established.unwrap(),
        responder,
    }
}

fn edit(msg: &[u8], f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(msg).unwrap();
    f(v.as_object_mut().unwrap());
    serde_json::to_vec(&v).unwrap()
}

/// Changes one hex digit of a binary field.
fn flip_field(msg: &[u8], field: &str) -> Vec<u8> {
    edit(msg, |o| {
        let s = o[field].as_str().unwrap().to_string();
        let mut chars: Vec<char> = s.chars().collect();
        chars[5] = if chars[5] == '0' { '1' } else { '0' };
        o.insert(field.into(), Value::String(chars.into_iter().collect()));
    })
}

fn field_hex(msg: &[u8], field: &str) -> String {
    let v: Value = serde_json::from_slice(msg).unwrap();
    v[field].as_str().unwrap().to_string()
}

#[test]
fn two_parties_agree_on_codes_identities_and_direction_keys() {
    let (alice, bob) = (id(), id());
    let run = honest_run(&alice, &bob);
    let (i, r) = (&run.initiator, &run.responder);
    assert_eq!(i.safety_code, r.safety_code);
    let code = i.safety_code.as_str();
    assert_eq!(code.len(), 9);
    assert!(code.chars().enumerate().all(|(n, c)| if n == 4 {
        c == ' '
    } else {
        c.is_ascii_digit()
    }));
    assert_eq!(i.peer_identity, bob.public_key());
    assert_eq!(r.peer_identity, alice.public_key());
    assert_eq!(
        (i.peer_name.as_str(), r.peer_name.as_str()),
        ("bob", "alice")
    );
    // Each direction has one key both sides share, and the two directions differ.
    assert!(i.keys.send.ct_eq(&r.keys.recv));
    assert!(i.keys.recv.ct_eq(&r.keys.send));
    assert!(!i.keys.send.ct_eq(&i.keys.recv));
    // A second call between the same people gets fresh keys and a fresh code.
    let again = honest_run(&alice, &bob);
    assert!(!again.initiator.keys.send.ct_eq(&i.keys.send));
    assert_ne!(again.initiator.safety_code, i.safety_code);
}

#[test]
fn media_flows_both_ways_with_the_agreed_keys() {
    let run = honest_run(&id(), &id());
    let now = Instant::now();
    let suite = CipherSuite::AesGcm128Sha256;
    let cfg = RotationConfig::default();
    let mut a_tx = MediaSender::new(suite, run.initiator.keys.send, cfg, now).unwrap();
    let mut a_rx = MediaReceiver::new(suite, run.initiator.keys.recv, cfg).unwrap();
    let mut b_tx = MediaSender::new(suite, run.responder.keys.send, cfg, now).unwrap();
    let mut b_rx = MediaReceiver::new(suite, run.responder.keys.recv, cfg).unwrap();
    assert_ne!(a_tx.kid(), b_tx.kid(), "each direction has its own KID");

    let mut frame = a_tx.context().encrypt_to_vec(&[], b"hello bob").unwrap();
    assert_eq!(
        b_rx.decrypt_in_place(&[], &mut frame, now).unwrap().payload,
        b"hello bob"
    );
    let mut frame = b_tx.context().encrypt_to_vec(&[], b"hello alice").unwrap();
    assert_eq!(
        a_rx.decrypt_in_place(&[], &mut frame, now).unwrap().payload,
        b"hello alice"
    );
    // Alice cannot decrypt her own direction with her receive keys (keys differ per direction).
    let mut own = a_tx.context().encrypt_to_vec(&[], b"loop").unwrap();
    assert!(a_rx.decrypt_in_place(&[], &mut own, now).is_err());
}

#[test]
fn tampered_fields_are_rejected_with_typed_errors() {
    let (alice, bob) = (id(), id());
    let run = honest_run(&alice, &bob);

    let fresh_responder = || Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let fresh_initiator = || Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();

    // The initiator's reveal with a changed signature, confirmation or ephemeral key.
    for (field, expect) in [
        ("signature", "BadSignature"),
        ("confirm", "BadConfirmation"),
        ("ephemeral", "CommitmentMismatch"),
    ] {
        let (mut a, hello) = fresh_initiator();
        let mut b = fresh_responder();
        let reply = b.handle(&hello).unwrap().send.unwrap();
        let reveal = a.handle(&reply).unwrap().send.unwrap();
        let err = b.handle(&flip_field(&reveal, field)).unwrap_err();
        assert_eq!(
            format!("{err:?}").split([' ', '{', '(']).next().unwrap(),
            expect,
            "{field}"
        );
        assert!(b.is_closed());
        // One try per handshake: the genuine reveal is refused afterwards.
        assert!(matches!(b.handle(&reveal), Err(HandshakeError::Closed)));
    }

    // The responder's confirm with a changed signature or confirmation.
    for (field, expect) in [
        ("signature", "BadSignature"),
        ("confirm", "BadConfirmation"),
    ] {
        let (mut a, hello) = fresh_initiator();
        let mut b = fresh_responder();
        let reply = b.handle(&hello).unwrap().send.unwrap();
        let reveal = a.handle(&reply).unwrap().send.unwrap();
        let confirm = b.handle(&reveal).unwrap().send.unwrap();
        let err = a.handle(&flip_field(&confirm, field)).unwrap_err();
        assert_eq!(
            format!("{err:?}").split([' ', '{', '(']).next().unwrap(),
            expect,
            "{field}"
        );
    }

    // A changed name or identity in the reply: the initiator signs a transcript the responder
    // does not share, so the responder refuses the reveal.
    for field in ["name", "identity"] {
        let (mut a, hello) = fresh_initiator();
        let mut b = fresh_responder();
        let reply = b.handle(&hello).unwrap().send.unwrap();
        let bad = if field == "name" {
            edit(&reply, |o| {
                o.insert("name".into(), Value::String("mallory".into()));
            })
        } else {
            flip_field(&reply, "identity")
        };
        let reveal = a.handle(&bad).unwrap().send.unwrap();
        assert!(
            matches!(b.handle(&reveal), Err(HandshakeError::BadSignature)),
            "{field}"
        );
    }

    // The hello's call id is checked first.
    let mut b = fresh_responder();
    let other_room = edit(&run.hello, |o| {
        o.insert("call_id".into(), Value::String("room-43".into()));
    });
    assert!(matches!(
        b.handle(&other_room),
        Err(HandshakeError::CallIdMismatch)
    ));
}

#[test]
fn replayed_reordered_oversized_and_malformed_messages_are_rejected() {
    let (alice, bob) = (id(), id());
    let old = honest_run(&alice, &bob);

    // Reordered: a reveal or confirm before the hello.
    for msg in [&old.reveal, &old.confirm, &old.reply] {
        let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
        assert!(matches!(
            b.handle(msg),
            Err(HandshakeError::UnexpectedMessage { .. })
        ));
    }
    // Duplicated hello: the second is unexpected.
    let (_a, hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    b.handle(&hello).unwrap();
    assert!(matches!(
        b.handle(&hello),
        Err(HandshakeError::UnexpectedMessage { got: "hello", .. })
    ));

    // Replayed from an earlier call: the old reveal does not fit the new responder ephemeral
    // (its commitment was to the old hello), and an old reply/confirm fails the signature.
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    b.handle(&old.hello).unwrap();
    assert!(matches!(
        b.handle(&old.reveal),
        Err(HandshakeError::BadSignature)
    ));
    let (mut a, _hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let reveal = a.handle(&old.reply).unwrap().send.unwrap();
    assert!(!reveal.is_empty());
    assert!(matches!(
        a.handle(&old.confirm),
        Err(HandshakeError::BadSignature)
    ));

    // Oversized and malformed.
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let huge = edit(&old.hello, |o| {
        o.insert("name".into(), Value::String("x".repeat(5000)));
    });
    assert!(matches!(
        b.handle(&huge),
        Err(HandshakeError::MessageTooLarge { .. })
    ));
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let long_name = edit(&old.hello, |o| {
        o.insert("name".into(), Value::String("x".repeat(200)));
    });
    assert!(matches!(
        b.handle(&long_name),
        Err(HandshakeError::Malformed(_))
    ));
    for garbage in [
        &b"not json"[..],
        b"{}",
        b"{\"v\":2,\"type\":\"hello\"}",
        b"\xff\xfe",
    ] {
        let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
        assert!(matches!(
            b.handle(garbage),
            Err(HandshakeError::Malformed(_))
        ));
    }
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    // A version-1 peer (no DTLS binding) gets a clear refusal, never a weaker handshake.
    let v1 = edit(&old.hello, |o| {
        o.insert("v".into(), Value::from(1));
        o.remove("dtls");
    });
    assert!(matches!(
        b.handle(&v1),
        Err(HandshakeError::UnsupportedVersion {
            got: 1,
            supported: 2
        })
    ));
}

#[test]
fn a_reflected_handshake_is_refused() {
    let alice = id();
    let (_a, hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut also_alice = Handshake::responder(alice, ROOM, "alice", &DTLS_R).unwrap();
    assert!(matches!(
        also_alice.handle(&hello),
        Err(HandshakeError::ReflectedIdentity)
    ));
}

#[test]
fn a_relay_that_swaps_ephemeral_keys_is_caught_by_the_signatures() {
    let (alice, bob) = (id(), id());
    // The relay gives Bob its own ephemeral in place of Alice's (with a matching commitment,
    // which it can compute), and Alice its own in place of Bob's. Identities stay genuine.
    let mallory = id();
    let (mut m_as_initiator, m_hello) =
        Handshake::initiator(mallory.clone(), ROOM, "x", &DTLS_I).unwrap();
    let mut m_as_responder = Handshake::responder(mallory, ROOM, "x", &DTLS_R).unwrap();

    let (mut a, hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let forged_hello = edit(&hello, |o| {
        o.insert(
            "commitment".into(),
            Value::String(field_hex(&m_hello, "commitment")),
        );
    });
    let reply = b.handle(&forged_hello).unwrap().send.unwrap();
    // Mallory learns an ephemeral of its own to substitute into the reply.
    let m_reply = m_as_responder.handle(&hello).unwrap().send.unwrap();
    let forged_reply = edit(&reply, |o| {
        o.insert(
            "ephemeral".into(),
            Value::String(field_hex(&m_reply, "ephemeral")),
        );
    });
    let reveal = a.handle(&forged_reply).unwrap().send.unwrap();
    // Mallory reveals its own ephemeral (matching the commitment Bob saw), keeping Alice's
    // signature: Bob's transcript differs from the one Alice signed.
    let m_reveal = m_as_initiator.handle(&reply).unwrap().send.unwrap();
    let forged_reveal = edit(&reveal, |o| {
        o.insert(
            "ephemeral".into(),
            Value::String(field_hex(&m_reveal, "ephemeral")),
        );
    });
    assert!(matches!(
        b.handle(&forged_reveal),
        Err(HandshakeError::BadSignature)
    ));
    // And the untouched reveal fails against the forged commitment.
    let mut b2 = Handshake::responder(bob, ROOM, "bob", &DTLS_R).unwrap();
    b2.handle(&forged_hello).unwrap();
    assert!(matches!(
        b2.handle(&reveal),
        Err(HandshakeError::CommitmentMismatch)
    ));
}

#[test]
fn a_full_man_in_the_middle_gets_different_codes_and_the_changed_key_warning() {
    let (alice, bob) = (id(), id());
    // Alice and Bob met before: Alice pinned Bob's identity.
    let mut alice_peers = KnownPeers::in_memory();
    let first = honest_run(&alice, &bob);
    assert_eq!(
        alice_peers
            .evaluate(
                "bob",
                &first.initiator.peer_identity,
                TrustPolicy::TrustOnFirstUse
            )
            .unwrap(),
        PeerTrust::New
    );

    // Mallory runs two honest-looking handshakes with identities of its own, relaying names.
    let (m1, m2) = (id(), id());
    let (mut a, hello) = Handshake::initiator(alice.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut m_to_alice = Handshake::responder(m1.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let (mut m_to_bob, m_hello) = Handshake::initiator(m2, ROOM, "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob, ROOM, "bob", &DTLS_R).unwrap();

    let reply = m_to_alice.handle(&hello).unwrap().send.unwrap();
    let reveal = a.handle(&reply).unwrap().send.unwrap();
    let step = m_to_alice.handle(&reveal).unwrap();
    let alice_done = a.handle(&step.send.unwrap()).unwrap().established.unwrap();

    let reply = b.handle(&m_hello).unwrap().send.unwrap();
    let reveal = m_to_bob.handle(&reply).unwrap().send.unwrap();
    let bob_done = b.handle(&reveal).unwrap().established.unwrap();

    // Both handshakes "work", but the people reading codes aloud see different ones...
    assert_ne!(alice_done.safety_code, bob_done.safety_code);
    // ...and Alice's app raises the changed-key warning for Bob.
    assert_eq!(alice_done.peer_identity, m1.public_key());
    assert_eq!(
        alice_peers
            .evaluate(
                "bob",
                &alice_done.peer_identity,
                TrustPolicy::TrustOnFirstUse
            )
            .unwrap(),
        PeerTrust::Changed {
            previous: first.initiator.peer_identity,
            pinned_name: "bob".into(),
        }
    );
    // The pin is not silently replaced, and a strict policy refuses the call.
    assert_eq!(
        alice_peers.pinned("bob"),
        Some(first.initiator.peer_identity)
    );
    assert!(matches!(
        alice_peers.evaluate(
            "bob",
            &alice_done.peer_identity,
            TrustPolicy::RequireVerified
        ),
        Err(HandshakeError::PeerRefused { .. })
    ));
}

/// The transcript hash and safety code computed directly from `docs/handshake.md`, so the
/// attacker below can try ephemeral keys offline without running a handshake.
mod spec {
    use ring::digest::{Context, SHA256};

    fn field(ctx: &mut Context, bytes: &[u8]) {
        ctx.update(&(bytes.len() as u32).to_be_bytes());
        ctx.update(bytes);
    }

    /// One side of the transcript: name, identity key, DTLS fingerprint (normal form).
    pub type Side<'a> = (&'a str, [u8; 32], String);

    pub fn transcript(
        v: u32,
        call_id: &str,
        i: &Side<'_>,
        commitment: &[u8; 32],
        r: &Side<'_>,
        r_ephemeral: &[u8; 32],
        i_ephemeral: &[u8; 32],
    ) -> [u8; 32] {
        let mut ctx = Context::new(&SHA256);
        field(&mut ctx, b"sotto handshake");
        field(&mut ctx, &v.to_be_bytes());
        field(&mut ctx, call_id.as_bytes());
        for part in [i.0.as_bytes(), &i.1, i.2.as_bytes(), commitment] {
            field(&mut ctx, part);
        }
        for part in [
            r.0.as_bytes(),
            &r.1,
            r.2.as_bytes(),
            r_ephemeral,
            i_ephemeral,
        ] {
            field(&mut ctx, part);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }

    pub fn safety_code(th: &[u8; 32]) -> String {
        let mut ctx = Context::new(&SHA256);
        field(&mut ctx, b"sotto safety code");
        field(&mut ctx, th);
        let h = ctx.finish();
        let n = u64::from_be_bytes(h.as_ref()[..8].try_into().unwrap()) % 100_000_000;
        format!("{:04} {:04}", n / 10_000, n % 10_000)
    }

    /// The initiator's key confirmation tag over `th` for the X25519 secret `shared`.
    pub fn confirm_initiator(th: &[u8; 32], shared: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(th), shared)
            .expand(b"sotto v1 confirm initiator", &mut k)
            .unwrap();
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k), th);
        tag.as_ref().try_into().unwrap()
    }
}

fn hex32(msg: &[u8], field: &str) -> [u8; 32] {
    hex::decode(field_hex(msg, field))
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn a_man_in_the_middle_cannot_search_for_matching_codes() {
    use ring::agreement::{EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    let rng = SystemRandom::new();
    let (alice, bob) = (id(), id());
    // Mallory's identity towards Bob, with its signing key at hand for forged messages.
    let m2_seed = [0x4d; 32];
    let m2 = Arc::new(Identity::from_seed(&m2_seed).unwrap());
    let m2_signer = Ed25519KeyPair::from_seed_unchecked(&m2_seed).unwrap();
    assert_eq!(m2_signer.public_key().as_ref(), m2.public_key().as_bytes());

    // Leg A, Alice and Mallory (as "bob"): Alice's code is fixed once it completes.
    let (mut a, hello) = Handshake::initiator(alice, ROOM, "alice", &DTLS_I).unwrap();
    let mut m1 = Handshake::responder(id(), ROOM, "bob", &DTLS_R).unwrap();
    let reply = m1.handle(&hello).unwrap().send.unwrap();
    let reveal = a.handle(&reply).unwrap().send.unwrap();
    let confirm = m1.handle(&reveal).unwrap().send.unwrap();
    let code_a = a.handle(&confirm).unwrap().established.unwrap().safety_code;
    let code_a = code_a.as_str().to_string();

    // Leg B, Mallory (as "alice") and Bob: Mallory's hello commits to its ephemeral key, and
    // only then does Bob's reply show it Bob's.
    let (mut m_to_bob, m_hello) = Handshake::initiator(m2.clone(), ROOM, "alice", &DTLS_I).unwrap();
    let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
    let b_reply = b.handle(&m_hello).unwrap().send.unwrap();
    let v = serde_json::from_slice::<Value>(&m_hello).unwrap()["v"]
        .as_u64()
        .unwrap() as u32;
    let commitment = hex32(&m_hello, "commitment");
    let bob_ephemeral = hex32(&b_reply, "ephemeral");
    let i_side: spec::Side<'_> = ("alice", *m2.public_key().as_bytes(), DTLS_I.to_string());
    let r_side: spec::Side<'_> = ("bob", *bob.public_key().as_bytes(), DTLS_R.to_string());
    let code_b = |i_ephemeral: &[u8; 32]| {
        let th = spec::transcript(
            v,
            ROOM,
            &i_side,
            &commitment,
            &r_side,
            &bob_ephemeral,
            i_ephemeral,
        );
        (th, spec::safety_code(&th))
    };

    // Without the commitment binding it, Mallory could now choose its ephemeral key after
    // seeing Bob's: searching even a reduced code space (the first two digits, 1 in 100)
    // succeeds within a few hundred keys. (The full 10^8 would take ~10^8, still offline.)
    const K: usize = 20_000;
    let mut found = None;
    for tries in 1..=K {
        let private = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        let public: [u8; 32] = private
            .compute_public_key()
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        let (th, code) = code_b(&public);
        if code[..2] == code_a[..2] {
            found = Some((tries, private, public, th));
            break;
        }
    }
    let (tries, private, public, th) = found.expect("no 2-digit match in 20 000 keys");
    eprintln!("reduced-space code match after {tries} ephemeral keys");

    // The ground key in an otherwise valid reveal: signed by Mallory's identity over Bob's
    // transcript, with the right key confirmation. Only the commitment stops it.
    let shared = agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, bob_ephemeral),
        |s| s.to_vec(),
    )
    .unwrap();
    let signed = [b"sotto v1 initiator signature".as_slice(), &th].concat();
    let honest_reveal = m_to_bob.handle(&b_reply).unwrap().send.unwrap();
    let forged = edit(&honest_reveal, |o| {
        o.insert("ephemeral".into(), Value::String(hex::encode(public)));
        o.insert(
            "signature".into(),
            Value::String(hex::encode(m2_signer.sign(&signed))),
        );
        o.insert(
            "confirm".into(),
            Value::String(hex::encode(spec::confirm_initiator(&th, &shared))),
        );
    });
    let refused = b.handle(&forged);
    assert!(
        matches!(refused, Err(HandshakeError::CommitmentMismatch)),
        "Bob accepted an ephemeral key chosen after his own: {:?}",
        refused.map(|s| s.established.map(|e| e.safety_code))
    );

    // With the commitment, each try at a match is a whole handshake Bob takes part in, and
    // its code is fixed before Mallory learns anything: K handshakes give no match of the
    // full code (each has a 10^-8 chance).
    for attempt in 0..64 {
        let (mut m, hello) = Handshake::initiator(m2.clone(), ROOM, "alice", &DTLS_I).unwrap();
        let mut b = Handshake::responder(bob.clone(), ROOM, "bob", &DTLS_R).unwrap();
        let reply = b.handle(&hello).unwrap().send.unwrap();
        let reveal = m.handle(&reply).unwrap().send.unwrap();
        let bob_done = b.handle(&reveal).unwrap().established.unwrap();
        // The direct computation the search used is the handshake's own.
        let th = spec::transcript(
            v,
            ROOM,
            &i_side,
            &hex32(&hello, "commitment"),
            &r_side,
            &hex32(&reply, "ephemeral"),
            &hex32(&reveal, "ephemeral"),
        );
        assert_eq!(spec::safety_code(&th), bob_done.safety_code.as_str());
        assert_ne!(bob_done.safety_code.as_str(), code_a, "attempt {attempt}");
    }
}

#[test]
fn known_peers_policy_and_file() {
    let dir = std::env::temp_dir().join(format!("sotto-known-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("known_peers.json");
    let (carol, dave) = (id().public_key(), id().public_key());

    let mut peers = KnownPeers::load(&path).unwrap();
    assert!(matches!(
        peers.evaluate("carol", &carol, TrustPolicy::RequireVerified),
        Err(HandshakeError::PeerRefused { .. })
    ));
    // The refused first contact was pinned (unverified), so it can be verified later.
    assert_eq!(
        peers
            .evaluate("carol", &carol, TrustPolicy::TrustOnFirstUse)
            .unwrap(),
        PeerTrust::Known
    );
    assert!(
        peers
            .evaluate("carol", &carol, TrustPolicy::RequireVerified)
            .is_err()
    );
    peers.verify("carol", Some(&carol.fingerprint())).unwrap();
    assert_eq!(
        peers
            .evaluate("carol", &carol, TrustPolicy::RequireVerified)
            .unwrap(),
        PeerTrust::Verified
    );
    peers.save().unwrap();

    let mut reloaded = KnownPeers::load(&path).unwrap();
    assert_eq!(reloaded.check("carol", &carol), PeerTrust::Verified);
    assert_eq!(
        reloaded.check("carol", &dave),
        PeerTrust::Changed {
            previous: carol,
            pinned_name: "carol".into(),
        }
    );
    // Carol reinstalled: the new key is noted when presented, and accepted only once people
    // verified it by its fingerprint.
    reloaded
        .evaluate("carol", &dave, TrustPolicy::TrustOnFirstUse)
        .unwrap();
    assert_eq!(reloaded.pinned("carol"), Some(carol));
    reloaded.verify("carol", Some(&dave.fingerprint())).unwrap();
    assert_eq!(reloaded.check("carol", &dave), PeerTrust::Verified);

    std::fs::write(
        &path,
        "{\"version\":1,\"peers\":{\"x\":{\"identity\":\"zz\",\"verified\":false}}}",
    )
    .unwrap();
    assert!(matches!(
        KnownPeers::load(&path),
        Err(HandshakeError::BadFile { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// 20 ms frames for 12 s with a rotation every second, delivered with up to 60 ms of jitter
/// (so frames of adjacent epochs arrive interleaved): every frame decrypts, none fails.
#[test]
fn rotation_every_second_keeps_media_flowing_without_decrypt_failures() {
    let run = honest_run(&id(), &id());
    let start = Instant::now();
    let cfg = RotationConfig {
        interval: Some(Duration::from_secs(1)),
        overlap: Duration::from_millis(500),
    };
    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = MediaSender::new(suite, run.initiator.keys.send, cfg, start).unwrap();
    let mut rx = MediaReceiver::new(suite, run.responder.keys.recv, cfg).unwrap();

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut in_flight: Vec<(Duration, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut rotations = 0;
    let mut first_epoch0_frame = None;
    for i in 0..600u32 {
        let sent_at = Duration::from_millis(20 * u64::from(i));
        if tx.poll(start + sent_at).unwrap().is_some() {
            rotations += 1;
        }
        let payload: Vec<u8> = (0..160)
            .map(|n| (i as u8).wrapping_mul(31) ^ n as u8)
            .collect();
        let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len() + 16];
        buf[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(&payload);
        let range = tx
            .context()
            .encrypt_in_place(&[], &mut buf, MAX_HEADER_LEN, payload.len())
            .unwrap();
        let frame = buf[range].to_vec();
        if i == 0 {
            first_epoch0_frame = Some(frame.clone());
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let arrives = sent_at + Duration::from_millis(rng % 60);
        in_flight.push((arrives, frame, payload));
    }
    in_flight.sort_by_key(|(t, _, _)| *t);
    for (arrives, mut frame, payload) in in_flight {
        let got = rx
            .decrypt_in_place(&[], &mut frame, start + arrives)
            .unwrap();
        assert_eq!(got.payload, &payload[..]);
    }
    assert!(rotations >= 11, "rotated {rotations} times");
    assert_eq!(tx.epoch(), rotations);
    assert_eq!(rx.epoch(), tx.epoch());
    let stats = rx.context().stats();
    assert_eq!(stats.decrypted, 600);
    assert_eq!(
        stats.auth_failures + stats.unknown_kid + stats.replays + stats.too_old,
        0
    );

    // Old keys are gone once the overlap ends: a late epoch-0 frame no longer decrypts.
    rx.poll(start + Duration::from_secs(20));
    let mut late = first_epoch0_frame.unwrap();
    let err = rx
        .decrypt_in_place(&[], &mut late, start + Duration::from_secs(20))
        .unwrap_err();
    let epoch0 = kid_for(0, Direction::InitiatorToResponder);
    assert!(
        matches!(err, HandshakeError::Sframe(SframeError::UnknownKid { kid }) if kid == epoch0),
        "{err:?}"
    );
}

fn seal_with(tx: &mut MediaSender, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len() + 16];
    buf[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let range = tx
        .context()
        .encrypt_in_place(&[], &mut buf, MAX_HEADER_LEN, payload.len())
        .unwrap();
    buf[range].to_vec()
}

/// Video runs on the same base keys under its own KIDs: each kind opens only its own frames,
/// both rotate on the same epochs, and a video receiver follows the video sender's rotation.
#[test]
fn video_keys_are_separate_from_audio_keys_and_rotate_with_them() {
    let run = honest_run(&id(), &id());
    let now = Instant::now();
    let cfg = RotationConfig {
        interval: None,
        overlap: Duration::from_millis(500),
    };
    let suite = CipherSuite::AesGcm128Sha256;
    let keys = &run.initiator.keys.send;
    let peer = &run.responder.keys.recv;
    let mut audio_tx = MediaSender::new(suite, keys.duplicate(), cfg, now).unwrap();
    let mut video_tx =
        MediaSender::for_kind(MediaKind::Video, suite, keys.duplicate(), cfg, now).unwrap();
    let mut audio_rx = MediaReceiver::new(suite, peer.duplicate(), cfg).unwrap();
    let mut video_rx =
        MediaReceiver::for_kind(MediaKind::Video, suite, peer.duplicate(), cfg).unwrap();

    let dir = Direction::InitiatorToResponder;
    assert_eq!(audio_tx.kid(), kid_for(0, dir));
    assert_eq!(video_tx.kid(), VIDEO_KID_BASE | kid_for(0, dir));
    assert_eq!(video_tx.kid(), kind_kid_for(MediaKind::Video, 0, dir));

    let audio = seal_with(&mut audio_tx, b"an opus packet");
    let video = seal_with(&mut video_tx, b"a vp8 frame");
    // Same counter (0) under the same base key, yet different ciphertexts: different keys.
    assert_ne!(audio[audio.len() - 16..], video[video.len() - 16..]);
    // Each kind's receiver opens its own kind only.
    let mut a = audio.clone();
    assert_eq!(
        audio_rx.decrypt_in_place(&[], &mut a, now).unwrap().payload,
        b"an opus packet"
    );
    let mut v = video.clone();
    assert_eq!(
        video_rx.decrypt_in_place(&[], &mut v, now).unwrap().payload,
        b"a vp8 frame"
    );
    let mut cross = video.clone();
    assert!(audio_rx.decrypt_in_place(&[], &mut cross, now).is_err());
    let mut cross = audio.clone();
    assert!(video_rx.decrypt_in_place(&[], &mut cross, now).is_err());

    // Rotation: both kinds move to epoch 1 and their receivers follow.
    assert_eq!(audio_tx.rotate(now).unwrap(), kid_for(1, dir));
    assert_eq!(
        video_tx.rotate(now).unwrap(),
        kind_kid_for(MediaKind::Video, 1, dir)
    );
    let mut v = seal_with(&mut video_tx, b"after rotation");
    assert_eq!(
        video_rx.decrypt_in_place(&[], &mut v, now).unwrap().payload,
        b"after rotation"
    );
    assert_eq!(video_rx.epoch(), 1);
    assert_eq!(audio_rx.epoch(), 0);
    // The old video key retires after its overlap.
    video_rx.poll(now + Duration::from_secs(1));
    let mut stale = video.clone();
    assert!(matches!(
        video_rx.decrypt_in_place(&[], &mut stale, now + Duration::from_secs(1)),
        Err(HandshakeError::Sframe(SframeError::UnknownKid { .. }))
    ));
}
