// The sotto handshake, version 1 (docs/handshake.md), on WebCrypto: X25519 ephemeral keys,
// Ed25519 identity signatures, HKDF key schedule, HMAC key confirmation, safety code.
// Same messages and computation as src/handshake/ in Rust; messages are plain JSON objects.
//
//   Initiator                                   Responder
//     hello  {call_id, name, identity, H(eI)} ->
//                                             <- reply  {name, identity, eR}
//     reveal {eI, sig_I(th), confirm_I}       ->
//                                             <- confirm {sig_R(th), confirm_R}

import { concat } from './sframe.js';

export const PROTOCOL_VERSION = 1;
export const MAX_MESSAGE_LEN = 4096;
export const MAX_CALL_ID_LEN = 256;
export const MAX_NAME_LEN = 128;

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

const FIELDS = {
  hello: { call_id: 'text', name: 'text', identity: 32, commitment: 32 },
  reply: { name: 'text', identity: 32, ephemeral: 32 },
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
  if (obj.v !== PROTOCOL_VERSION) throw new HandshakeError('UnsupportedVersion', `v ${obj.v}`);
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
  /// identity: { privateKey (Ed25519 CryptoKey), publicKey (32 bytes) }.
  constructor(role, identity, callId, name) {
    checkText('call_id', callId, MAX_CALL_ID_LEN);
    checkText('name', name, MAX_NAME_LEN);
    this.role = role;
    this.identity = identity;
    this.callId = callId;
    this.name = name;
    this.state = role === 'responder' ? { name: 'await_hello' } : null;
  }

  /// Starts as initiator: returns { handshake, hello } (hello as a JSON object).
  static async initiator(identity, callId, name) {
    const hs = new Handshake('initiator', identity, callId, name);
    const eph = await newEphemeral();
    const commit = await commitment(callId, eph.publicKey);
    hs.state = { name: 'await_reply', eph, commit };
    const hello = {
      type: 'hello',
      v: PROTOCOL_VERSION,
      call_id: callId,
      name,
      identity: toHex(identity.publicKey),
      commitment: toHex(commit),
    };
    return { handshake: hs, hello };
  }

  static responder(identity, callId, name) {
    return new Handshake('responder', identity, callId, name);
  }

  get closed() {
    return this.state.name === 'closed';
  }

  /// Feeds one message from the peer. Returns { send?, established? } where established is
  /// { role, peerName, peerIdentity, safetyCode, sendKey, recvKey, sendDirection, recvDirection }.
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

  transcript(iName, iIdentity, commit, rName, rIdentity, rEph, iEph) {
    return hashFields(
      'sotto handshake',
      u32be(PROTOCOL_VERSION),
      this.callId,
      iName,
      iIdentity,
      commit,
      rName,
      rIdentity,
      rEph,
      iEph,
    );
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
        ephemeral: toHex(eph.publicKey),
      },
    };
  }

  async on_reply(state, msg) {
    this.checkPeerIdentity(msg.identity);
    const th = await this.transcript(
      this.name,
      this.identity.publicKey,
      state.commit,
      msg.name,
      msg.identity,
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
      peer.name,
      peer.identity,
      peer.commitment,
      this.name,
      this.identity.publicKey,
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
      safetyCode: await safetyCode(th),
      sendKey: initiator ? schedule.mediaInitiator : schedule.mediaResponder,
      recvKey: initiator ? schedule.mediaResponder : schedule.mediaInitiator,
      sendDirection: initiator ? 0 : 1,
      recvDirection: initiator ? 1 : 0,
    };
  }
}
