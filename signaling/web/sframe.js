// SFrame (RFC 9605) with cipher suite AES_128_GCM_SHA256_128 (registry value 4), on WebCrypto.
// Used by the media worker (every Opus frame) and by the page (control messages).
//
// Frame = header || AES-GCM(key, nonce = salt XOR CTR, aad = header || metadata, plaintext)
// with a 16-byte tag. KID and CTR are BigInt: they are 64-bit on the wire.

export const SUITE_AES_128_GCM_SHA256_128 = 4;
const KEY_LEN = 16;
const NONCE_LEN = 12;
const TAG_LEN = 16;
const MAX_U64 = (1n << 64n) - 1n;
/// Largest frame accepted for decryption; Opus frames are far smaller.
export const MAX_FRAME_LEN = 64 * 1024;
/// Largest video frame accepted for decryption, as the engine's (src/transport/video.rs).
export const MAX_VIDEO_FRAME_LEN = 2 * 1024 * 1024;
/// Counters remembered per KID to refuse replays (20 s of 20 ms frames).
export const REPLAY_WINDOW = 1024n;

const te = new TextEncoder();

/// Why a frame was refused.
export class SframeError extends Error {
  constructor(kind, detail) {
    super(detail ? `${kind}: ${detail}` : kind);
    this.kind = kind; // 'malformed' | 'unknown_kid' | 'auth' | 'replay' | 'too_large'
  }
}

function bytesOf(v) {
  // Bytes needed for v big endian, at least one.
  let n = 1;
  while (n < 8 && v >> BigInt(8 * n) !== 0n) n += 1;
  return n;
}

/// The shortest header for kid and ctr (BigInt, 0 to 2^64-1), as bytes.
export function encodeHeader(kid, ctr) {
  if (kid < 0n || kid > MAX_U64 || ctr < 0n || ctr > MAX_U64) {
    throw new SframeError('malformed', 'KID or CTR out of range');
  }
  const out = [0];
  const field = (v) => {
    if (v < 8n) return Number(v);
    const n = bytesOf(v);
    for (let i = n - 1; i >= 0; i -= 1) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
    return 0b1000 | (n - 1);
  };
  const k = field(kid);
  const c = field(ctr);
  out[0] = (k << 4) | c;
  return Uint8Array.from(out);
}

/// Parses the header at the start of frame: { kid, ctr, len } or throws SframeError.
export function decodeHeader(frame) {
  if (frame.length < 1) throw new SframeError('malformed', 'empty frame');
  const config = frame[0];
  let pos = 1;
  const field = (bits) => {
    if ((bits & 0b1000) === 0) return BigInt(bits & 0b111);
    const n = (bits & 0b111) + 1;
    if (frame.length < pos + n) throw new SframeError('malformed', 'truncated header');
    let v = 0n;
    for (let i = 0; i < n; i += 1) v = (v << 8n) | BigInt(frame[pos + i]);
    pos += n;
    return v;
  };
  const kid = field(config >> 4);
  const ctr = field(config & 0x0f);
  return { kid, ctr, len: pos };
}

function u64be(v) {
  const out = new Uint8Array(8);
  for (let i = 7; i >= 0; i -= 1) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** Joins byte arrays (shared with handshake.js). */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/// RFC 9605 labels: "SFrame 1.0 Secret key " || KID (8 B) || suite (2 B), likewise "salt".
export function labels(kid, suite = SUITE_AES_128_GCM_SHA256_128) {
  const tail = concat(u64be(kid), Uint8Array.of(suite >> 8, suite & 0xff));
  return {
    key: concat(te.encode('SFrame 1.0 Secret key '), tail),
    salt: concat(te.encode('SFrame 1.0 Secret salt '), tail),
  };
}

/// Derives the AES key (non-extractable) and salt of kid from a base key (bytes).
/// HKDF-Extract with an empty salt equals WebCrypto's HKDF with an empty salt.
export async function deriveKeySalt(baseKey, kid) {
  const ikm = await crypto.subtle.importKey('raw', baseKey, 'HKDF', false, ['deriveBits']);
  const l = labels(kid);
  const hkdf = (info, bytes) =>
    crypto.subtle.deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info },
      ikm,
      bytes * 8,
    );
  const keyBytes = new Uint8Array(await hkdf(l.key, KEY_LEN));
  const salt = new Uint8Array(await hkdf(l.salt, NONCE_LEN));
  const key = await crypto.subtle.importKey('raw', keyBytes, 'AES-GCM', false, [
    'encrypt',
    'decrypt',
  ]);
  keyBytes.fill(0);
  return { key, salt };
}

/// nonce = salt XOR CTR (left-padded to the nonce length).
export function nonceFor(salt, ctr) {
  const nonce = Uint8Array.from(salt);
  const c = u64be(ctr);
  for (let i = 0; i < 8; i += 1) nonce[NONCE_LEN - 8 + i] ^= c[i];
  return nonce;
}

/// HKDF-Expand(prk, info, 32) for one output block: HMAC(prk, info || 0x01). WebCrypto has no
/// Expand-only HKDF, and the handshake's ratchet and control keys use Expand alone.
export async function hkdfExpand32(prk, info) {
  const mac = await crypto.subtle.importKey('raw', prk, { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const infoBytes = typeof info === 'string' ? te.encode(info) : info;
  return new Uint8Array(await crypto.subtle.sign('HMAC', mac, concat(infoBytes, Uint8Array.of(1))));
}

/// Sends under one KID; the counter only grows, so a nonce is never used twice under a key.
export class SframeSender {
  /// Use SframeSender.create().
  constructor(kid, key, salt, ctr = 0n) {
    this.kid = kid;
    this.key = key;
    this.salt = salt;
    this.ctr = ctr;
  }

  static async create(baseKey, kid, ctr = 0n) {
    const { key, salt } = await deriveKeySalt(baseKey, kid);
    return new SframeSender(kid, key, salt, ctr);
  }

  /// Moves to a new KID and base key; the counter keeps counting.
  async rekey(baseKey, kid) {
    this.setKey(kid, await deriveKeySalt(baseKey, kid));
  }

  /// Moves to a new KID with its derived key and salt (deriveKeySalt), at once.
  setKey(kid, { key, salt }) {
    this.kid = kid;
    this.key = key;
    this.salt = salt;
  }

  /// Encrypts plaintext (bytes) with metadata (bytes, default none); returns the SFrame frame.
  async encrypt(plaintext, metadata = new Uint8Array(0)) {
    if (this.ctr > MAX_U64) throw new SframeError('malformed', 'counter exhausted');
    const ctr = this.ctr;
    this.ctr += 1n; // Before the await: two concurrent calls never share a counter.
    const header = encodeHeader(this.kid, ctr);
    const ct = await crypto.subtle.encrypt(
      {
        name: 'AES-GCM',
        iv: nonceFor(this.salt, ctr),
        additionalData: concat(header, metadata),
        tagLength: TAG_LEN * 8,
      },
      this.key,
      plaintext,
    );
    return concat(header, new Uint8Array(ct));
  }
}

/// A sliding window over one KID's counters; accept() only after authentication.
class ReplayWindow {
  constructor() {
    this.newest = -1n;
    this.seen = new Set();
  }

  check(ctr) {
    if (ctr > this.newest) return;
    if (this.newest - ctr >= REPLAY_WINDOW) throw new SframeError('replay', 'counter too old');
    if (this.seen.has(ctr)) throw new SframeError('replay', 'counter already seen');
  }

  accept(ctr) {
    this.seen.add(ctr);
    if (ctr > this.newest) {
      this.newest = ctr;
      for (const old of this.seen) if (this.newest - old >= REPLAY_WINDOW) this.seen.delete(old);
    }
  }
}

/// Receives under any of the KIDs it holds keys for.
export class SframeReceiver {
  /// `maxFrameLen`: larger frames are refused before any work (MAX_FRAME_LEN for audio).
  constructor(maxFrameLen = MAX_FRAME_LEN) {
    this.keys = new Map(); // kid (BigInt) -> { key, salt, replay }
    this.maxFrameLen = maxFrameLen;
  }

  async addKey(kid, baseKey) {
    const { key, salt } = await deriveKeySalt(baseKey, kid);
    this.keys.set(kid, { key, salt, replay: new ReplayWindow() });
  }

  removeKey(kid) {
    this.keys.delete(kid);
  }

  /// Decrypts an SFrame frame; returns { kid, ctr, plaintext } or throws SframeError.
  async decrypt(frame, metadata = new Uint8Array(0)) {
    if (frame.length > this.maxFrameLen) throw new SframeError('too_large');
    const { kid, ctr, len } = decodeHeader(frame);
    if (frame.length < len + TAG_LEN) throw new SframeError('malformed', 'shorter than a tag');
    const entry = this.keys.get(kid);
    if (!entry) throw new SframeError('unknown_kid', `KID ${kid}`);
    entry.replay.check(ctr);
    let pt;
    try {
      pt = await crypto.subtle.decrypt(
        {
          name: 'AES-GCM',
          iv: nonceFor(entry.salt, ctr),
          additionalData: concat(frame.subarray(0, len), metadata),
          tagLength: TAG_LEN * 8,
        },
        entry.key,
        frame.subarray(len),
      );
    } catch {
      throw new SframeError('auth', 'authentication failed');
    }
    // Checked again: another decrypt of the same counter may have finished meanwhile.
    entry.replay.check(ctr);
    entry.replay.accept(ctr);
    return { kid, ctr, plaintext: new Uint8Array(pt) };
  }
}
