// Group keys (docs/call-protocol.md, "Group keys"), as the engine's src/group/: KID v2, the
// bundle and ack bodies, the join ratchet, the group safety code, and the receiving keyring the
// media worker opens forwarded frames with (one replay window per KID, generations derived
// forward up to 8 steps, frames under a missing key held briefly, never passed on unopened).

import {
  MAX_FRAME_LEN,
  MAX_VIDEO_FRAME_LEN,
  SframeError,
  SframeReceiver,
  decodeHeader,
  hkdfExpand32,
} from './sframe.js';
import { hashFields, safetyCode } from './handshake.js';

export const KIND_AUDIO = 0;
export const KIND_VIDEO = 1;
/// The kinds a member's media keys cover (each its own SFrame key, salt and counter).
const MEDIA_KINDS = [KIND_AUDIO, KIND_VIDEO];
export const MAX_SLOT = 127;
/// gen is 54 bits on the wire; a browser's Number holds 53 exactly, and no call gets near.
export const MAX_GENERATION = Number.MAX_SAFE_INTEGER;
export const SECRET_LEN = 32;
export const BUNDLE_LEN = 3 + 8 + 8 + SECRET_LEN;
export const ACK_LEN = 3 + 8;
const BODY_VERSION = 2;
const TYPE_BUNDLE = 1;
const TYPE_ACK = 2;
/// Generations held per sender, and how far a frame's generation may run ahead of a held one.
export const MAX_GENERATIONS = 8;
export const MAX_DERIVE = 8;
/// Frames waiting for their key, per sender, and how long.
export const MAX_HELD_FRAMES = 16;
export const MAX_HELD_BYTES = 1 << 20;
export const HOLD_MS = 500;
/// Members in one group code, as the engine's MAX_GROUP_MEMBERS.
export const MAX_GROUP_MEMBERS = 1024;

/// `gen << 10 | slot << 3 | kind`, as a BigInt.
export function groupKid(generation, slot, kind = KIND_AUDIO) {
  return (BigInt(generation) << 10n) | (BigInt(slot) << 3n) | BigInt(kind);
}

/// { generation, slot, kind } of a KID; reserved kinds (4-7) are refused.
export function parseGroupKid(kid) {
  const kind = Number(kid & 7n);
  if (kind > 3) throw new SframeError('malformed', `reserved kind ${kind}`);
  const generation = kid >> 10n;
  if (generation > BigInt(MAX_GENERATION)) throw new SframeError('malformed', 'generation');
  return { generation: Number(generation), slot: Number((kid >> 3n) & 127n), kind };
}

/// The join ratchet: HKDF-Expand(secret, "sotto v2 group ratchet", 32).
export const ratchetGroup = (secret) => hkdfExpand32(secret, 'sotto v2 group ratchet');

const checkSlot = (slot) => Number.isInteger(slot) && slot >= 0 && slot <= MAX_SLOT;

function head(body, type, len) {
  if (!(body instanceof Uint8Array)) throw new Error('not bytes');
  if (body.length > 0 && body[0] !== BODY_VERSION) throw new Error(`unknown version ${body[0]}`);
  if (body.length > 1 && body[1] !== type) throw new Error(`wrong type ${body[1]}`);
  if (body.length !== len) throw new Error(`${body.length} bytes, expected ${len}`);
  const view = new DataView(body.buffer, body.byteOffset, body.length);
  const slot = body[2];
  if (!checkSlot(slot)) throw new Error(`slot ${slot} out of range`);
  const generation = view.getBigUint64(3);
  if (generation > BigInt(MAX_GENERATION)) throw new Error('generation out of range');
  return { view, slot, generation: Number(generation) };
}

function u64(v) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(v));
  return out;
}

/// bundle (51 bytes): 0x02 | 0x01 | slot | gen (u64) | seq (u64) | secret (32).
export function encodeBundle({ slot, generation, seq, secret }) {
  const out = new Uint8Array(BUNDLE_LEN);
  out.set([BODY_VERSION, TYPE_BUNDLE, slot]);
  out.set(u64(generation), 3);
  out.set(u64(seq), 11);
  out.set(secret, 19);
  return out;
}

/// Parses a bundle body from a member: exact length, known version and type, fields in range.
/// `seq` is a BigInt; `secret` a copy (the caller wipes `body`).
export function parseBundle(body) {
  const { view, slot, generation } = head(body, TYPE_BUNDLE, BUNDLE_LEN);
  return { slot, generation, seq: view.getBigUint64(11), secret: body.slice(19) };
}

/// ack (11 bytes): 0x02 | 0x02 | slot (the key owner's) | gen (u64).
export function encodeAck({ slot, generation }) {
  const out = new Uint8Array(ACK_LEN);
  out.set([BODY_VERSION, TYPE_ACK, slot]);
  out.set(u64(generation), 3);
  return out;
}

export function parseAck(body) {
  const { slot, generation } = head(body, TYPE_ACK, ACK_LEN);
  return { slot, generation };
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i += 1) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/// The group safety code (as handshake::group_safety_code): SHA-256 over "sotto v2 group",
/// the room, the member count (u32) and the sorted identity keys, each length-prefixed; then
/// the two-party code of that hash. A duplicate key is refused.
export async function groupSafetyCode(room, keys) {
  if (!keys.length || keys.length > MAX_GROUP_MEMBERS) throw new Error('bad member count');
  const sorted = keys.map((k) => Uint8Array.from(k)).sort(compareBytes);
  for (let i = 1; i < sorted.length; i += 1) {
    if (compareBytes(sorted[i - 1], sorted[i]) === 0) throw new Error('a duplicate identity');
  }
  const n = new Uint8Array(4);
  new DataView(n.buffer).setUint32(0, sorted.length);
  return safetyCode(await hashFields('sotto v2 group', room, n, ...sorted));
}

/// One sender's keys as a receiver holds them (the audio and video kinds: the page sends and
/// receives nothing else in a group). Every operation runs in order (`run`): frames of one
/// sender come on several slot tracks at once, and keys arrive meanwhile.
export class SenderRing {
  constructor() {
    this.gens = new Map(); // generation -> secret bytes
    // Video frames are larger; an audio frame's size is checked in GroupKeyring.open.
    this.receiver = new SframeReceiver(MAX_VIDEO_FRAME_LEN);
    this.active = null; // The generation frames use now.
    this.floor = 0; // Generations below it are refused.
    this.held = []; // { generation, data, deadline, bytes, release, drop }
    this.heldBytes = 0;
    this.stats = {
      framesDecrypted: 0,
      videoFramesDecrypted: 0,
      decryptFailures: 0,
      replays: 0,
      unknownKey: 0,
      held: 0,
    };
    this.queue = Promise.resolve();
  }

  run(fn) {
    const p = this.queue.then(fn);
    this.queue = p.catch(() => {});
    return p;
  }

  /// Installs (generation, secret): 'new' or 'already' (a held key is never replaced); throws
  /// for a generation below the floor or when 8 newer ones are held.
  async install(generation, secret) {
    if (this.gens.has(generation)) return 'already';
    if (generation < this.floor) throw new Error(`stale generation ${generation}`);
    if (this.gens.size >= MAX_GENERATIONS) {
      const victim = [...this.gens.keys()]
        .sort((a, b) => a - b)
        .find((g) => g !== this.active && g < generation);
      if (victim === undefined) throw new Error('too many generations');
      this.erase(victim);
      // It may have opened frames: never installed again (its replay window is gone).
      if (this.active !== null && victim < this.active) this.floor = Math.max(this.floor, victim + 1);
    }
    for (const kind of MEDIA_KINDS) {
      await this.receiver.addKey(groupKid(generation, this.slot, kind), secret);
    }
    this.gens.set(generation, Uint8Array.from(secret));
    return 'new';
  }

  erase(generation) {
    this.gens.get(generation)?.fill(0);
    this.gens.delete(generation);
    for (const kind of MEDIA_KINDS) this.receiver.removeKey(groupKid(generation, this.slot, kind));
  }

  advance(generation) {
    let floor;
    if (this.active === null) floor = Math.max(0, generation - 1);
    else if (generation > this.active) floor = this.active;
    else return;
    this.active = generation;
    this.floor = Math.max(this.floor, floor);
    for (const g of [...this.gens.keys()]) if (g < this.floor) this.erase(g);
  }

  /// A frame whose generation runs at most 8 past a held one: tried under the ratcheted key,
  /// which is kept only if the frame authenticates (a wrong guess is not a failure).
  async derive(generation, data, kind = KIND_AUDIO, metadata = undefined) {
    const bases = [...this.gens.keys()].filter((g) => g < generation);
    if (!bases.length) return false;
    const base = Math.max(...bases);
    if (generation - base > MAX_DERIVE) return false;
    let secret = await ratchetGroup(this.gens.get(base));
    for (let g = base + 1; g < generation; g += 1) {
      const next = await ratchetGroup(secret);
      secret.fill(0);
      secret = next;
    }
    const trial = new SframeReceiver(MAX_VIDEO_FRAME_LEN);
    await trial.addKey(groupKid(generation, this.slot, kind), secret);
    try {
      await trial.decrypt(data, metadata);
    } catch {
      secret.fill(0);
      return false;
    }
    await this.install(generation, secret);
    secret.fill(0);
    return true;
  }

  /// { opened } | { nokey } | { failed: SframeError }.
  /// `kind` and `metadata` (the clear VP8 prefix of a video frame) as the frame came.
  async attempt(generation, data, kind = KIND_AUDIO, metadata = undefined) {
    if (!this.gens.has(generation)) {
      if (generation < this.floor || !(await this.derive(generation, data, kind, metadata))) {
        return { nokey: true };
      }
    }
    try {
      const out = await this.receiver.decrypt(data, metadata);
      this.stats.framesDecrypted += 1;
      if (kind === KIND_VIDEO) this.stats.videoFramesDecrypted += 1;
      this.advance(generation);
      return { opened: { generation, kind, ctr: out.ctr, plaintext: out.plaintext } };
    } catch (e) {
      if (e?.kind === 'replay') this.stats.replays += 1;
      else this.stats.decryptFailures += 1;
      return { failed: e };
    }
  }

  expire(now) {
    while (this.held.length && this.held[0].deadline <= now) {
      const f = this.held.shift();
      this.heldBytes -= f.bytes;
      this.stats.unknownKey += 1;
      f.drop();
    }
  }

  async retryHeld() {
    const waiting = this.held;
    this.held = [];
    for (const f of waiting) {
      const r = await this.attempt(f.generation, f.data, f.kind, f.metadata);
      if (r.nokey) {
        this.held.push(f);
        continue;
      }
      this.heldBytes -= f.bytes;
      if (r.opened) f.release(r.opened);
      else f.drop();
    }
  }
}

/// Every other member's keys, by slot.
export class GroupKeyring {
  constructor() {
    this.senders = new Map(); // slot -> SenderRing
  }

  addSender(slot) {
    if (!checkSlot(slot) || this.senders.has(slot)) return false;
    const ring = new SenderRing();
    ring.slot = slot;
    this.senders.set(slot, ring);
    return true;
  }

  /// A member left: all its keys go, frames it had waiting are dropped.
  removeSender(slot) {
    const ring = this.senders.get(slot);
    if (!ring) return;
    this.senders.delete(slot);
    ring.run(() => {
      for (const g of [...ring.gens.keys()]) ring.erase(g);
      for (const f of ring.held.splice(0)) f.drop();
    });
  }

  /// Installs a key a bundle brought; retries frames that waited for it.
  insert(slot, generation, secret, { onlyIfHeld = false } = {}) {
    const ring = this.senders.get(slot);
    if (!ring) return Promise.reject(new Error(`no member in slot ${slot}`));
    return ring.run(async () => {
      if (onlyIfHeld) {
        if (!ring.gens.has(generation)) throw new Error('a replayed bundle of a key not held');
        return 'already';
      }
      ring.expire(performance.now());
      const inserted = await ring.install(generation, secret);
      if (inserted === 'new' && ring.held.length) await ring.retryHeld();
      return inserted;
    });
  }

  /// Opens a forwarded frame: resolves { opened: { slot, generation, kind, ctr, plaintext } }
  /// or { held: true } (then `release(opened)` or `drop()` is called later), rejects with
  /// SframeError. A frame is never returned unopened. `kind`: what the track carries (a frame
  /// of another kind is refused); `metadata`: the clear prefix of a video frame (docs/
  /// call-protocol.md, "Video"), authenticated with it.
  open(data, now, release, drop, { kind: expected = KIND_AUDIO, metadata = undefined } = {}) {
    const { kid } = decodeHeader(data);
    const { generation, slot, kind } = parseGroupKid(kid);
    if (kind !== expected || !MEDIA_KINDS.includes(kind)) {
      return Promise.reject(new SframeError('malformed', `kind ${kind} on a track of kind ${expected}`));
    }
    if (kind === KIND_AUDIO && data.length > MAX_FRAME_LEN) {
      return Promise.reject(new SframeError('too_large'));
    }
    const ring = this.senders.get(slot);
    if (!ring) return Promise.reject(new SframeError('unknown_kid', `no member in slot ${slot}`));
    return ring.run(async () => {
      ring.expire(now);
      const had = ring.gens.size;
      const r = await ring.attempt(generation, data, kind, metadata);
      if (r.opened) {
        if (ring.gens.size > had && ring.held.length) await ring.retryHeld();
        return { opened: { slot, ...r.opened } };
      }
      if (r.failed) throw r.failed;
      const bytes = data.length;
      if (
        generation >= ring.floor &&
        ring.held.length < MAX_HELD_FRAMES &&
        ring.heldBytes + bytes <= MAX_HELD_BYTES
      ) {
        ring.held.push({
          generation,
          kind,
          metadata,
          data,
          bytes,
          deadline: now + HOLD_MS,
          release: (o) => release({ slot, ...o }),
          drop,
        });
        ring.heldBytes += bytes;
        ring.stats.held += 1;
        return { held: true };
      }
      ring.stats.unknownKey += 1;
      throw new SframeError('unknown_kid', `no key for slot ${slot} generation ${generation}`);
    });
  }

  /// Drops what waited too long (counted as unknownKey).
  expire(now) {
    for (const ring of this.senders.values()) ring.run(() => ring.expire(now));
  }

  stats() {
    const out = {};
    for (const [slot, ring] of this.senders) {
      out[slot] = { ...ring.stats, generation: ring.active, heldNow: ring.held.length };
    }
    return out;
  }
}
