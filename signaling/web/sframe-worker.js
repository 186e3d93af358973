// The media worker: every encoded Opus frame goes through SFrame here, via
// RTCRtpScriptTransform. Outgoing frames are dropped until the handshake has produced keys, so
// nothing ever leaves unencrypted; incoming frames that fail authentication are dropped and
// counted, never played. Frames whose RTP timestamp does not fit their authenticated SFrame
// counter's place are dropped too (order.js). After a second in which the peer's frames
// failed and none decrypted, the page is told (media-state): keys differ.
//
// Messages from the page: { type: 'keys', send, recv, sendDirection, recvDirection,
// rotateMs } (base keys as bytes) and { type: 'stats' } (answered with { type: 'stats', ... }).
// To the page, besides answers: { type: 'media-state', undecryptable }.

import { MediaReceiver, MediaSender } from './keys.js';
import { PlayoutOrder } from './order.js';

/// How long the peer's frames must fail, with none decrypting, before the call says so.
const UNDECRYPTABLE_AFTER_MS = 1000;

let sender = null;
let receiver = null;
const stats = {
  encrypted: 0,
  sendDroppedNoKey: 0,
  decrypted: 0,
  recvDroppedNoKey: 0,
  decryptFailures: 0,
  failureKinds: {},
  padding: 0,
  sendErrors: 0,
  transforms: { send: 0, recv: 0 },
  reorderRejected: 0,
  undecryptable: false,
  timestampSource: null,
};
const order = new PlayoutOrder();
let failingSince = null; // When frames started failing with none decrypting since.

function setUndecryptable(value) {
  if (stats.undecryptable === value) return;
  stats.undecryptable = value;
  self.postMessage({ type: 'media-state', undecryptable: value });
}

/// The RTP timestamp of a received frame: getMetadata().rtpTimestamp where the browser has it
/// (Chromium 156 does, for audio), else the frame's own timestamp (the RTP timestamp in older
/// Chromium audio frames).
function rtpTimestamp(frame) {
  const meta = typeof frame.getMetadata === 'function' ? frame.getMetadata() : null;
  if (Number.isInteger(meta?.rtpTimestamp)) {
    stats.timestampSource ??= 'rtpTimestamp';
    return meta.rtpTimestamp;
  }
  stats.timestampSource ??= 'timestamp';
  return frame.timestamp;
}

self.onmessage = async (event) => {
  const msg = event.data;
  if (msg?.type === 'keys') {
    try {
      const send = await MediaSender.create(msg.send, msg.sendDirection, {
        intervalMs: msg.rotateMs ?? 60_000,
      });
      const recv = await MediaReceiver.create(msg.recv, msg.recvDirection);
      sender = send;
      receiver = recv;
      self.postMessage({ type: 'keys-installed', ok: true });
    } catch (e) {
      self.postMessage({ type: 'keys-installed', ok: false, error: String(e) });
    } finally {
      msg.send.fill(0);
      msg.recv.fill(0);
    }
  } else if (msg?.type === 'stats') {
    stats.sendEpoch = sender?.epoch ?? null;
    stats.recvEpoch = receiver?.current ?? null;
    self.postMessage({ type: 'stats', stats: structuredClone(stats) });
  }
};

async function encryptFrame(frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!sender) {
    stats.sendDroppedNoKey += 1;
    return;
  }
  try {
    frame.data = (await sender.encrypt(data)).buffer;
    stats.encrypted += 1;
    controller.enqueue(frame);
  } catch {
    stats.sendErrors += 1; // Dropped: never sent in the clear.
  }
}

async function decryptFrame(frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    // Padding, not a frame (docs/call-protocol.md): passed through as the decoder expects.
    stats.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!receiver) {
    stats.recvDroppedNoKey += 1;
    return;
  }
  let opened;
  try {
    opened = await receiver.decrypt(data);
  } catch (e) {
    stats.decryptFailures += 1;
    const kind = e?.kind ?? 'error';
    stats.failureKinds[kind] = (stats.failureKinds[kind] ?? 0) + 1;
    // A replay is a copy of a genuine frame: not a sign of other keys.
    if (kind !== 'replay') {
      const now = performance.now();
      failingSince ??= now;
      if (now - failingSince >= UNDECRYPTABLE_AFTER_MS) setUndecryptable(true);
    }
    return;
  }
  stats.decrypted += 1;
  failingSince = null;
  setUndecryptable(false);
  if (order.accept(opened.ctr, rtpTimestamp(frame)) !== null) {
    stats.reorderRejected += 1; // Authentic but out of its counter's place: never played.
    return;
  }
  frame.data = opened.plaintext.buffer;
  controller.enqueue(frame);
}

self.onrtctransform = (event) => {
  const transformer = event.transformer;
  const side = transformer.options?.side;
  stats.transforms[side === 'send' ? 'send' : 'recv'] += 1;
  const transform = side === 'send' ? encryptFrame : decryptFrame;
  transformer.readable
    .pipeThrough(new TransformStream({ transform }))
    .pipeTo(transformer.writable)
    .catch(() => {});
};
