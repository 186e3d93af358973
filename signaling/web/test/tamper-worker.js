// A hostile network for the browser tests: runs the real media worker (../sframe-worker.js)
// and, when asked, damages outgoing video frames after they were sealed, or lets some leave
// without sealing, as a relay or a broken sender could. The page never loads this file: a
// test's init script swaps it in for the real worker (signaling/tests/browser/video.rs).
//
// Messages: { type: 'tamper-video', kind, count } damages the next `count` frames; kind is
// 'ciphertext' (a bit of the ciphertext), 'prefix' (a bit of the clear VP8 prefix other than
// bit 0), 'prefix-bit0' (bit 0 of a keyframe: it now claims to be a delta frame) or 'unsealed'
// (the frame leaves as plain VP8). { type: 'tamper-stats' } is answered with the RTP
// timestamps of the frames damaged so far.

import '../sframe-worker.js';

const real = self.onrtctransform;
let order = null;
const damaged = [];

self.addEventListener('message', (event) => {
  const msg = event.data;
  if (msg?.type === 'tamper-video') {
    order = { kind: String(msg.kind), count: Number(msg.count) };
  } else if (msg?.type === 'tamper-stats') {
    self.postMessage({ type: 'tamper-stats', damaged });
  }
});

const timestampOf = (frame) => frame.getMetadata().rtpTimestamp ?? frame.timestamp;

/// Whether this frame is to be damaged in the way `when` ('sealed' or 'unsealed') applies.
function take(frame, when) {
  if (!order || order.count <= 0 || new Uint8Array(frame.data).length === 0) return false;
  if ((order.kind === 'unsealed') !== (when === 'unsealed')) return false;
  if (order.kind === 'prefix-bit0' && frame.type !== 'key') return false;
  order.count -= 1;
  damaged.push(timestampOf(frame));
  return true;
}

function damage(frame) {
  const data = new Uint8Array(frame.data);
  if (order.kind === 'prefix-bit0') data[0] ^= 0x01;
  else if (order.kind === 'prefix') data[1] ^= 0x40;
  else data[data.length - 20] ^= 0x01; // Ciphertext, just before the tag.
  frame.data = data.buffer;
}

self.onrtctransform = (event) => {
  const t = event.transformer;
  if (t.options?.side !== 'send' || t.options?.kind !== 'video') {
    real(event);
    return;
  }
  const writer = t.writable.getWriter();
  const inner = new TransformStream();
  const innerWriter = inner.writable.getWriter();
  // The real worker seals what it reads from `inner`; what it writes comes here.
  const sealed = new WritableStream({
    write(frame) {
      if (take(frame, 'sealed')) damage(frame);
      return writer.write(frame);
    },
  });
  real({
    transformer: {
      readable: inner.readable,
      writable: sealed,
      options: t.options,
      sendKeyFrameRequest: () => t.sendKeyFrameRequest(),
      ...(typeof t.generateKeyFrame === 'function'
        ? { generateKeyFrame: (rid) => t.generateKeyFrame(rid) }
        : {}),
    },
  });
  t.readable
    .pipeTo(
      new WritableStream({
        write(frame) {
          return take(frame, 'unsealed') ? writer.write(frame) : innerWriter.write(frame);
        },
      }),
    )
    .catch(() => {});
};
