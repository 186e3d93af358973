// Media keys of one call direction and their rotation (docs/handshake.md, "Media keys and
// rotation"): KID = epoch << 1 | direction; base' = HKDF-Expand(base, "sotto v1 ratchet", 32).
// Senders rotate periodically; receivers hold the next two epochs and retire old ones after an
// overlap. Also the control channel's key (docs/call-protocol.md, "Control channel").

import { SframeReceiver, SframeSender, hkdfExpand32 } from './sframe.js';

export const DIRECTION_INITIATOR = 0;
export const DIRECTION_RESPONDER = 1;
const LOOKAHEAD = 2;
const MAX_RETIRING = 8;

export const kidFor = (epoch, direction) => (BigInt(epoch) << 1n) | BigInt(direction);
export const ratchet = (base) => hkdfExpand32(base, 'sotto v1 ratchet');
/// The control channel key of a direction: from its epoch-0 media base key; never rotates.
export const controlKey = (base) => hkdfExpand32(base, 'sotto v1 control');

/// The sending half: an SFrame sender that rotates every `intervalMs` (null: never).
export class MediaSender {
  constructor(base, direction, sender, intervalMs, now) {
    this.base = base;
    this.direction = direction;
    this.epoch = 0;
    this.sender = sender;
    this.intervalMs = intervalMs;
    this.lastRotation = now;
  }

  static async create(base, direction, { intervalMs = 60_000, now = Date.now() } = {}) {
    const sender = await SframeSender.create(base, kidFor(0, direction));
    return new MediaSender(Uint8Array.from(base), direction, sender, intervalMs, now);
  }

  async rotate(now = Date.now()) {
    const next = await ratchet(this.base);
    this.base.fill(0);
    this.base = next;
    this.epoch += 1;
    this.lastRotation = now;
    await this.sender.rekey(next, kidFor(this.epoch, this.direction));
  }

  /// Encrypts one frame, rotating first when the interval has passed.
  async encrypt(plaintext, now = Date.now()) {
    if (this.intervalMs !== null && now - this.lastRotation >= this.intervalMs) {
      await this.rotate(now);
    }
    return this.sender.encrypt(plaintext);
  }
}

/// The receiving half: follows the peer's rotations.
export class MediaReceiver {
  constructor(direction, overlapMs) {
    this.direction = direction;
    this.overlapMs = overlapMs;
    this.receiver = new SframeReceiver();
    this.current = 0;
    this.furthest = 0;
    this.furthestBase = null;
    this.retiring = []; // [kid, deadline]
  }

  static async create(base, direction, { overlapMs = 2000 } = {}) {
    const rx = new MediaReceiver(direction, overlapMs);
    rx.furthestBase = Uint8Array.from(base);
    await rx.receiver.addKey(kidFor(0, direction), rx.furthestBase);
    await rx.installThrough(LOOKAHEAD);
    return rx;
  }

  async installThrough(epoch) {
    while (this.furthest < epoch) {
      const next = await ratchet(this.furthestBase);
      this.furthestBase.fill(0);
      this.furthestBase = next;
      this.furthest += 1;
      await this.receiver.addKey(kidFor(this.furthest, this.direction), next);
    }
  }

  poll(now) {
    while (this.retiring.length && this.retiring[0][1] <= now) {
      this.receiver.removeKey(this.retiring.shift()[0]);
    }
  }

  /// Decrypts one frame (throws SframeError); a newer authenticated epoch moves forward.
  async decrypt(frame, now = Date.now()) {
    this.poll(now);
    const out = await this.receiver.decrypt(frame);
    const epoch = Number(out.kid >> 1n);
    if (Number(out.kid & 1n) === this.direction && epoch > this.current) {
      for (let old = this.current; old < epoch; old += 1) {
        if (this.retiring.length === MAX_RETIRING) {
          this.receiver.removeKey(this.retiring.shift()[0]);
        }
        this.retiring.push([kidFor(old, this.direction), now + this.overlapMs]);
      }
      this.current = epoch;
      await this.installThrough(epoch + LOOKAHEAD);
    }
    return out;
  }
}
