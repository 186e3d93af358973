// The media worker: every encoded Opus frame goes through SFrame here, via
// RTCRtpScriptTransform. Outgoing frames are dropped until the handshake has produced keys, so
// nothing ever leaves unencrypted; incoming frames that fail authentication are dropped and
// counted, never played.
//
// Messages from the page: { type: 'keys', send, recv, sendDirection, recvDirection,
// rotateMs } (base keys as bytes) and { type: 'stats' } (answered with { type: 'stats', ... }).

import { MediaReceiver, MediaSender } from './keys.js';

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
};

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
  try {
    const { plaintext } = await receiver.decrypt(data);
    frame.data = plaintext.buffer;
    stats.decrypted += 1;
    controller.enqueue(frame);
  } catch (e) {
    stats.decryptFailures += 1;
    const kind = e?.kind ?? 'error';
    stats.failureKinds[kind] = (stats.failureKinds[kind] ?? 0) + 1;
  }
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
