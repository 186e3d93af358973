// Media keys of one call direction and their rotation (docs/handshake.md, "Media keys and
// rotation"): KID = epoch << 1 | direction; base' = HKDF-Expand(base, "sotto v1 ratchet", 32).
// Video uses the same base keys and epochs under its own KIDs (VIDEO_KID_BASE | epoch << 1 |
// direction), so its keys and salts are independent of audio's, with its own counter.
// Senders rotate periodically; receivers hold the next two epochs and retire old ones after an
// overlap. Also the control channel's key (docs/call-protocol.md, "Control channel").

import {
  MAX_FRAME_LEN,
  MAX_VIDEO_FRAME_LEN,
  SframeReceiver,
  SframeSender,
  deriveKeySalt,
  hkdfExpand32,
} from './sframe.js';

export const DIRECTION_INITIATOR = 0;
export const DIRECTION_RESPONDER = 1;
/// Bit 24 marks a video KID (docs/call-protocol.md).
export const VIDEO_KID_BASE = 1n << 24n;
/// Video KIDs hold epochs below 2^23; both kinds stop rotating there (16 years at 60 s).
export const MAX_EPOCH = 1 << 23;
const LOOKAHEAD = 2;
const MAX_RETIRING = 8;

export const kidFor = (epoch, direction) => (BigInt(epoch) << 1n) | BigInt(direction);
export const videoKidFor = (epoch, direction) => VIDEO_KID_BASE | kidFor(epoch, direction);
export const ratchet = (base) => hkdfExpand32(base, 'sotto v1 ratchet');
/// The control channel key of a direction: from its epoch-0 media base key; never rotates.
export const controlKey = (base) => hkdfExpand32(base, 'sotto v1 control');

/// The sending half: an audio and a video SFrame sender that rotate together every
/// `intervalMs` (null: never), each with its own counter.
export class MediaSender {
  constructor(base, direction, sender, video, intervalMs, now) {
    this.base = base;
    this.direction = direction;
    this.epoch = 0;
    this.sender = sender;
    this.video = video;
    this.intervalMs = intervalMs;
    this.lastRotation = now;
    this.rotating = null; // The rotation in progress: audio and video never rotate twice.
  }

  static async create(base, direction, { intervalMs = 60_000, now = Date.now() } = {}) {
    const [sender, video] = await Promise.all([
      SframeSender.create(base, kidFor(0, direction)),
      SframeSender.create(base, videoKidFor(0, direction)),
    ]);
    return new MediaSender(Uint8Array.from(base), direction, sender, video, intervalMs, now);
  }

  /// Both kinds move to the next epoch at once: keys are derived first, then switched.
  async rotate(now = Date.now()) {
    const epoch = this.epoch + 1;
    if (epoch >= MAX_EPOCH) throw new Error('key epochs exhausted');
    const next = await ratchet(this.base);
    const audioKid = kidFor(epoch, this.direction);
    const videoKid = videoKidFor(epoch, this.direction);
    const [audio, video] = await Promise.all([
      deriveKeySalt(next, audioKid),
      deriveKeySalt(next, videoKid),
    ]);
    this.base.fill(0);
    this.base = next;
    this.epoch = epoch;
    this.lastRotation = now;
    this.sender.setKey(audioKid, audio);
    this.video.setKey(videoKid, video);
  }

  /// Rotates when the interval has passed (or waits for the rotation already under way).
  async maybeRotate(now) {
    if (this.rotating) {
      await this.rotating;
      return;
    }
    if (this.intervalMs === null || now - this.lastRotation < this.intervalMs) return;
    this.rotating = this.rotate(now);
    try {
      await this.rotating;
    } finally {
      this.rotating = null;
    }
  }

  /// Encrypts one audio frame, rotating first when the interval has passed.
  async encrypt(plaintext, now = Date.now()) {
    await this.maybeRotate(now);
    return this.sender.encrypt(plaintext);
  }

  /// Encrypts one video frame's payload with `metadata` (its clear prefix) as SFrame metadata,
  /// rotating first when due; returns { sealed, epoch } (the epoch it was sealed under).
  async encryptVideo(plaintext, metadata, now = Date.now()) {
    await this.maybeRotate(now);
    const epoch = this.epoch;
    return { sealed: await this.video.encrypt(plaintext, metadata), epoch };
  }
}

/// The receiving half of one kind (audio or video): follows the peer's rotations. It holds
/// only its kind's KIDs, so a frame of one kind never opens as the other.
export class MediaReceiver {
  constructor(direction, overlapMs, video) {
    this.direction = direction;
    this.overlapMs = overlapMs;
    this.video = video;
    this.kidOf = video ? videoKidFor : kidFor;
    this.receiver = new SframeReceiver(video ? MAX_VIDEO_FRAME_LEN : MAX_FRAME_LEN);
    this.current = 0;
    this.furthest = 0;
    this.furthestBase = null;
    this.retiring = []; // [kid, deadline]
  }

  static async create(base, direction, { overlapMs = 2000, video = false } = {}) {
    const rx = new MediaReceiver(direction, overlapMs, video);
    rx.furthestBase = Uint8Array.from(base);
    await rx.receiver.addKey(rx.kidOf(0, direction), rx.furthestBase);
    await rx.installThrough(LOOKAHEAD);
    return rx;
  }

  async installThrough(epoch) {
    while (this.furthest < Math.min(epoch, MAX_EPOCH - 1)) {
      const next = await ratchet(this.furthestBase);
      this.furthestBase.fill(0);
      this.furthestBase = next;
      this.furthest += 1;
      await this.receiver.addKey(this.kidOf(this.furthest, this.direction), next);
    }
  }

  poll(now) {
    while (this.retiring.length && this.retiring[0][1] <= now) {
      this.receiver.removeKey(this.retiring.shift()[0]);
    }
  }

  /// Decrypts one frame (throws SframeError) with `metadata` (video: the clear prefix); a newer
  /// authenticated epoch moves forward.
  async decrypt(frame, now = Date.now(), metadata = undefined) {
    this.poll(now);
    const out = await this.receiver.decrypt(frame, metadata);
    const epoch = Number((this.video ? out.kid - VIDEO_KID_BASE : out.kid) >> 1n);
    if (Number(out.kid & 1n) === this.direction && epoch > this.current) {
      for (let old = this.current; old < epoch; old += 1) {
        if (this.retiring.length === MAX_RETIRING) {
          this.receiver.removeKey(this.retiring.shift()[0]);
        }
        this.retiring.push([this.kidOf(old, this.direction), now + this.overlapMs]);
      }
      this.current = epoch;
      await this.installThrough(epoch + LOOKAHEAD);
    }
    return out;
  }
}
