// The sotto handshake, version 2 (docs/handshake.md), on WebCrypto: X25519 ephemeral keys,
// Ed25519 identity signatures, HKDF key schedule, HMAC key confirmation, safety code, and each
// side's DTLS fingerprint signed into the transcript.
// Same messages and computation as src/handshake/ in Rust; messages are plain JSON objects.
//
//   Initiator                                         Responder
//     hello  {call_id, name, identity, dtls, H(eI)} ->
//                                                   <- reply  {name, identity, dtls, eR}
//     reveal {eI, sig_I(th), confirm_I}       ->
//                                             <- confirm {sig_R(th), confirm_R}

import { concat } from './sframe.js';

export const PROTOCOL_VERSION = 2;
export const MAX_MESSAGE_LEN = 4096;
export const MAX_CALL_ID_LEN = 256;
export const MAX_NAME_LEN = 128;
export const MAX_DTLS_LEN = 160;

const te = new TextEncoder();

/// A handshake failure; `code` names it as the Rust HandshakeError does.
export class HandshakeError extends Error {
  constructor(code, detail) {
    super(detail ? `${code}: ${detail}` : code);
    this.code = code;
  }
}

export const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

function fromHex(s, len, field) {
  if (typeof s !== 'string' || s.length !== 2 * len || !/^[0-9a-fA-F]*$/.test(s)) {
    throw new HandshakeError('Malformed', `${field}: expected ${2 * len} hex digits`);
  }
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i += 1) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function checkText(field, value, max) {
  if (typeof value !== 'string') throw new HandshakeError('Malformed', `${field} is not a string`);
  if (te.encode(value).length > max) {
    throw new HandshakeError('Malformed', `${field} is over ${max} bytes`);
  }
  if (/\p{Cc}/u.test(value)) {
    throw new HandshakeError('Malformed', `${field} contains control characters`);
  }
}

/// A DTLS fingerprint as SDP or a handshake message writes it (`<hash> <hex:hex:...>`), in
/// normal form: `sha-256`, one space, 32 upper-case hex bytes joined by colons. Accepts what
/// the engine's DtlsFingerprint::parse accepts (any letter case, spaces around the parts); null
/// for anything else, or another hash function.
export function normalDtls(text) {
  if (typeof text !== 'string' || te.encode(text).length > MAX_DTLS_LEN) return null;
  const trimmed = text.replace(/^\p{White_Space}+|\p{White_Space}+$/gu, '');
  const space = trimmed.indexOf(' ');
  if (space < 0) return null;
  const hash = trimmed.slice(0, space).replace(/[A-Z]/g, (c) => c.toLowerCase());
  const value = trimmed.slice(space + 1).replace(/^\p{White_Space}+/u, '');
  if (hash !== 'sha-256') return null;
  const bytes = value.split(':');
  if (bytes.length !== 32 || !bytes.every((b) => /^[0-9A-Fa-f]{2}$/.test(b))) return null;
  return `sha-256 ${bytes.join(':').toUpperCase()}`;
}

/// A `dtls` field: its normal form, or Malformed.
function parseDtls(value) {
  const normal = normalDtls(value);
  if (normal === null) {
    throw new HandshakeError('Malformed', 'dtls is not a sha-256 fingerprint');
  }
  return normal;
}

/// Every `a=fingerprint:` line of an SDP, in normal form (null for a line that is not a
/// well-formed sha-256 fingerprint).
export function sdpFingerprints(sdp) {
  const out = [];
  for (const line of String(sdp).split(/\r?\n/)) {
    if (line.startsWith('a=fingerprint:')) out.push(normalDtls(line.slice('a=fingerprint:'.length)));
  }
  return out;
}

/// Whether the peer's SDP carries its signed DTLS fingerprint and no other (docs/handshake.md,
/// "Binding the transport"): at least one `a=fingerprint:` line, each equal to `dtls`.
export function sdpMatchesDtls(sdp, dtls) {
  const prints = sdpFingerprints(sdp);
  return prints.length > 0 && prints.every((p) => p === dtls);
}

const FIELDS = {
  hello: { call_id: 'text', name: 'text', identity: 32, dtls: 'dtls', commitment: 32 },
  reply: { name: 'text', identity: 32, dtls: 'dtls', ephemeral: 32 },
  reveal: { ephemeral: 32, signature: 64, confirm: 32 },
  confirm: { signature: 64, confirm: 32 },
};

/// Parses an untrusted message (a JSON object as received): size, version, then exactly the
/// fields of its type. Returns { type, ...fields } with binary fields as bytes.
export function decodeMessage(obj) {
  let text;
  try {
    text = JSON.stringify(obj);
  } catch {
    throw new HandshakeError('Malformed', 'not JSON');
  }
  if (text === undefined || te.encode(text).length > MAX_MESSAGE_LEN) {
    throw new HandshakeError('MessageTooLarge');
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new HandshakeError('Malformed', 'not an object');
  }
  if (!Number.isInteger(obj.v) || obj.v < 0) throw new HandshakeError('Malformed', 'bad v');
  if (obj.v !== PROTOCOL_VERSION) {
    const why =
      obj.v < PROTOCOL_VERSION
        ? `the peer speaks handshake version ${obj.v}, which does not bind DTLS; version ${PROTOCOL_VERSION} is required (update the peer)`
        : `the peer speaks handshake version ${obj.v}; this page speaks version ${PROTOCOL_VERSION}`;
    throw new HandshakeError('UnsupportedVersion', why);
  }
  const spec = Object.hasOwn(FIELDS, obj.type) ? FIELDS[obj.type] : null;
  if (!spec) throw new HandshakeError('Malformed', 'unknown type');
  const out = { type: obj.type };
  for (const key of Object.keys(obj)) {
    if (key !== 'v' && key !== 'type' && !Object.hasOwn(spec, key)) {
      throw new HandshakeError('Malformed', `unknown field ${key}`);
    }
  }
  for (const [key, kind] of Object.entries(spec)) {
    if (!Object.hasOwn(obj, key)) throw new HandshakeError('Malformed', `missing ${key}`);
    if (kind === 'text') {
      checkText(key, obj[key], key === 'call_id' ? MAX_CALL_ID_LEN : MAX_NAME_LEN);
      out[key] = obj[key];
    } else if (kind === 'dtls') {
      out[key] = parseDtls(obj[key]); // The transcript takes the normal form.
    } else {
      out[key] = fromHex(obj[key], kind, key);
    }
  }
  return out;
}


const asBytes = (f) => (typeof f === 'string' ? te.encode(f) : f);

/// SHA-256 over length-prefixed fields (4-byte big-endian length, then the field).
export async function hashFields(...fields) {
  const parts = [];
  for (const f of fields.map(asBytes)) {
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, f.length);
    parts.push(len, f);
  }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', concat(...parts)));
}

const u32be = (v) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v);
  return b;
};

export const commitment = (callId, ephemeral) =>
  hashFields('sotto v1 commitment', callId, ephemeral);

/// Eight digits in two groups, from the transcript hash.
export async function safetyCode(th) {
  const h = await hashFields('sotto safety code', th);
  const n = new DataView(h.buffer).getBigUint64(0) % 100_000_000n;
  const s = n.toString().padStart(8, '0');
  return `${s.slice(0, 4)} ${s.slice(4)}`;
}

const SIG_INITIATOR = te.encode('sotto v1 initiator signature');
const SIG_RESPONDER = te.encode('sotto v1 responder signature');

async function newEphemeral() {
  const pair = await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  const pub = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  return { privateKey: pair.privateKey, publicKey: pub };
}

/// X25519 with the peer's key, then HKDF-Extract(salt = th) and the four expansions.
async function agree(privateKey, peerPublic, th) {
  let shared;
  try {
    const peer = await crypto.subtle.importKey('raw', peerPublic, { name: 'X25519' }, false, []);
    shared = new Uint8Array(
      await crypto.subtle.deriveBits({ name: 'X25519', public: peer }, privateKey, 256),
    );
  } catch {
    throw new HandshakeError('BadPublicKey');
  }
  if (shared.every((b) => b === 0)) throw new HandshakeError('BadPublicKey');
  const ikm = await crypto.subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  shared.fill(0);
  const expand = async (label) =>
    new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: 'HKDF', hash: 'SHA-256', salt: th, info: te.encode(label) },
        ikm,
        256,
      ),
    );
  return {
    confirmInitiator: await expand('sotto v1 confirm initiator'),
    confirmResponder: await expand('sotto v1 confirm responder'),
    mediaInitiator: await expand('sotto v1 media initiator'),
    mediaResponder: await expand('sotto v1 media responder'),
  };
}

const hmacKey = (raw, usage) =>
  crypto.subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);

async function confirmTag(key, th) {
  return new Uint8Array(await crypto.subtle.sign('HMAC', await hmacKey(key, 'sign'), th));
}

async function verifyConfirm(key, th, tag) {
  return crypto.subtle.verify('HMAC', await hmacKey(key, 'verify'), tag, th);
}

async function verifySignature(identity, label, th, signature) {
  try {
    const key = await crypto.subtle.importKey('raw', identity, { name: 'Ed25519' }, false, [
      'verify',
    ]);
    return await crypto.subtle.verify({ name: 'Ed25519' }, key, signature, concat(label, th));
  } catch {
    return false;
  }
}

const equalBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/// One endpoint's side of one handshake; any error closes it for good.
export class Handshake {
  /// identity: { privateKey (Ed25519 CryptoKey), publicKey (32 bytes) }; dtls: our own DTLS
  /// fingerprint in normal form (`sha-256 AB:CD:...`), as our SDP carries it.
  constructor(role, identity, callId, name, dtls) {
    checkText('call_id', callId, MAX_CALL_ID_LEN);
    checkText('name', name, MAX_NAME_LEN);
    if (normalDtls(dtls) !== dtls) {
      throw new HandshakeError('Malformed', 'our dtls is not a sha-256 fingerprint in normal form');
    }
    this.role = role;
    this.identity = identity;
    this.callId = callId;
    this.name = name;
    this.dtls = dtls;
    this.state = role === 'responder' ? { name: 'await_hello' } : null;
  }

  /// Starts as initiator: returns { handshake, hello } (hello as a JSON object).
  static async initiator(identity, callId, name, dtls) {
    const hs = new Handshake('initiator', identity, callId, name, dtls);
    const eph = await newEphemeral();
    const commit = await commitment(callId, eph.publicKey);
    hs.state = { name: 'await_reply', eph, commit };
    const hello = {
      type: 'hello',
      v: PROTOCOL_VERSION,
      call_id: callId,
      name,
      identity: toHex(identity.publicKey),
      dtls,
      commitment: toHex(commit),
    };
    return { handshake: hs, hello };
  }

  static responder(identity, callId, name, dtls) {
    return new Handshake('responder', identity, callId, name, dtls);
  }

  get closed() {
    return this.state.name === 'closed';
  }

  /// Feeds one message from the peer. Returns { send?, established? } where established is
  /// { role, peerName, peerIdentity, peerDtls, safetyCode, sendKey, recvKey, sendDirection,
  /// recvDirection }.
  async handle(obj) {
    const state = this.state;
    this.state = { name: 'closed' };
    if (state.name === 'closed') throw new HandshakeError('Closed');
    const msg = decodeMessage(obj);
    const expected = {
      await_hello: 'hello',
      await_reply: 'reply',
      await_reveal: 'reveal',
      await_confirm: 'confirm',
    }[state.name];
    if (msg.type !== expected) {
      throw new HandshakeError('UnexpectedMessage', `${msg.type} in ${state.name}`);
    }
    return this[`on_${msg.type}`](state, msg);
  }

  checkPeerIdentity(key) {
    if (equalBytes(key, this.identity.publicKey)) throw new HandshakeError('ReflectedIdentity');
  }

  async sign(label, th) {
    const sig = await crypto.subtle.sign(
      { name: 'Ed25519' },
      this.identity.privateKey,
      concat(label, th),
    );
    return new Uint8Array(sig);
  }

  transcript(i, commit, r, rEph, iEph) {
    return hashFields(
      'sotto handshake',
      u32be(PROTOCOL_VERSION),
      this.callId,
      i.name,
      i.identity,
      i.dtls,
      commit,
      r.name,
      r.identity,
      r.dtls,
      rEph,
      iEph,
    );
  }

  get own() {
    return { name: this.name, identity: this.identity.publicKey, dtls: this.dtls };
  }

  async on_hello(_state, msg) {
    if (msg.call_id !== this.callId) throw new HandshakeError('CallIdMismatch');
    this.checkPeerIdentity(msg.identity);
    const eph = await newEphemeral();
    this.state = { name: 'await_reveal', eph, peer: msg };
    return {
      send: {
        type: 'reply',
        v: PROTOCOL_VERSION,
        name: this.name,
        identity: toHex(this.identity.publicKey),
        dtls: this.dtls,
        ephemeral: toHex(eph.publicKey),
      },
    };
  }

  async on_reply(state, msg) {
    this.checkPeerIdentity(msg.identity);
    const th = await this.transcript(
      this.own,
      state.commit,
      msg,
      msg.ephemeral,
      state.eph.publicKey,
    );
    const schedule = await agree(state.eph.privateKey, msg.ephemeral, th);
    const send = {
      type: 'reveal',
      v: PROTOCOL_VERSION,
      ephemeral: toHex(state.eph.publicKey),
      signature: toHex(await this.sign(SIG_INITIATOR, th)),
      confirm: toHex(await confirmTag(schedule.confirmInitiator, th)),
    };
    this.state = { name: 'await_confirm', th, schedule, peer: msg };
    return { send };
  }

  async on_reveal(state, msg) {
    const peer = state.peer;
    if (!equalBytes(await commitment(this.callId, msg.ephemeral), peer.commitment)) {
      throw new HandshakeError('CommitmentMismatch');
    }
    const th = await this.transcript(
      peer,
      peer.commitment,
      this.own,
      state.eph.publicKey,
      msg.ephemeral,
    );
    if (!(await verifySignature(peer.identity, SIG_INITIATOR, th, msg.signature))) {
      throw new HandshakeError('BadSignature');
    }
    const schedule = await agree(state.eph.privateKey, msg.ephemeral, th);
    if (!(await verifyConfirm(schedule.confirmInitiator, th, msg.confirm))) {
      throw new HandshakeError('BadConfirmation');
    }
    const send = {
      type: 'confirm',
      v: PROTOCOL_VERSION,
      signature: toHex(await this.sign(SIG_RESPONDER, th)),
      confirm: toHex(await confirmTag(schedule.confirmResponder, th)),
    };
    return { send, established: await this.established(th, schedule, peer) };
  }

  async on_confirm(state, msg) {
    const { th, schedule, peer } = state;
    if (!(await verifySignature(peer.identity, SIG_RESPONDER, th, msg.signature))) {
      throw new HandshakeError('BadSignature');
    }
    if (!(await verifyConfirm(schedule.confirmResponder, th, msg.confirm))) {
      throw new HandshakeError('BadConfirmation');
    }
    return { established: await this.established(th, schedule, peer) };
  }

  async established(th, schedule, peer) {
    const initiator = this.role === 'initiator';
    schedule.confirmInitiator.fill(0);
    schedule.confirmResponder.fill(0);
    return {
      role: this.role,
      peerName: peer.name,
      peerIdentity: peer.identity,
      peerDtls: peer.dtls,
      safetyCode: await safetyCode(th),
      sendKey: initiator ? schedule.mediaInitiator : schedule.mediaResponder,
      recvKey: initiator ? schedule.mediaResponder : schedule.mediaInitiator,
      sendDirection: initiator ? 0 : 1,
      recvDirection: initiator ? 1 : 0,
    };
  }
}
