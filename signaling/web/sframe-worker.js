// The media worker: every encoded Opus and VP8 frame goes through SFrame here, via
// RTCRtpScriptTransform. Outgoing frames are dropped until the handshake has produced keys, so
// nothing ever leaves unencrypted; incoming frames that fail authentication are dropped and
// counted, never played or decoded. Frames whose RTP timestamp does not fit their
// authenticated SFrame counter's place are dropped too (order.js). After a second in which the
// peer's audio frames failed and none decrypted, the page is told (media-state): keys differ.
//
// Video (docs/call-protocol.md): the VP8 payload header stays in the clear (10 bytes on
// keyframes, 3 on delta frames, as Chromium's depacketizer reads them) and is authenticated
// as SFrame metadata: | prefix | SFrame header | ciphertext | tag | (video.js). Video has its
// own KIDs and counter. After a key switch a keyframe follows: the receiver asks for one (PLI),
// and the sender asks its encoder where the browser can (Chromium 156 cannot).
//
// Messages from the page: { type: 'keys', send, recv, sendDirection, recvDirection,
// rotateMs } (base keys as bytes) and { type: 'stats' } (answered with { type: 'stats', ... }).
// To the page, besides answers: { type: 'media-state', undecryptable }.
//
// Group calls (docs/call-protocol.md, "Group keys"; transforms with `group: true`): our voice
// is sealed under our group audio KID; what the SFU forwards on any slot track is opened by
// its KID's sender and generation (group-keys.js). From the page: { type: 'group-send', slot,
// generation, secret }, { type: 'group-member', slot }, { type: 'group-forget', slot },
// { type: 'group-key', id, slot, generation, secret, onlyIfHeld } (answered with
// { type: 'group-key-result', id, ok, inserted | error }).

import { GroupKeyring, KIND_VIDEO, groupKid } from './group-keys.js';
import { MediaReceiver, MediaSender, VIDEO_KID_BASE } from './keys.js';
import { SframeSender, concat, deriveKeySalt } from './sframe.js';
import { PlayoutOrder } from './order.js';
import { openVp8, sealVp8, sealVp8With, splitSealedVp8 } from './video.js';

/// Keyframe requests to the peer (PLI) at most this often.
const KEYFRAME_REQUEST_EVERY_MS = 300;

/// How long the peer's frames must fail, with none decrypting, before the call says so.
const UNDECRYPTABLE_AFTER_MS = 1000;

let sender = null;
let receiver = null;
let videoReceiver = null;
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
  video: {
    sealed: 0,
    opened: 0,
    failed: 0,
    failureKinds: {},
    duplicates: 0,
    keyframesSent: 0,
    keyframesReceived: 0,
    sendDroppedNoKey: 0,
    recvDroppedNoKey: 0,
    sendErrors: 0,
    notVp8: 0,
    padding: 0,
    reorderRejected: 0,
    timestampSource: null,
    // Keyframes asked of our encoder after a key switch, and whether the browser could.
    keyframesAfterRotation: 0,
    keyframeRequestErrors: 0,
    generateKeyFrame: null, // 'transformer' | 'unsupported' once known
    // Keyframe requests sent to the peer (PLI): no keyframe yet, a frame failed, or a new key.
    keyframeRequestsSent: 0,
    sendEpoch: null,
    recvEpoch: null,
  },
};
const order = new PlayoutOrder();

// Group calls: our sender (one KID per generation, the counter keeps counting), every other
// member's keys, the playout order per (slot track, sender), and when each sender was heard.
let groupSender = null;
let groupSendQueue = Promise.resolve();
const groupRing = new GroupKeyring();
const groupOrders = new Map();
const groupHeard = new Map(); // slot -> { at, track }
stats.group = {
  sealed: 0,
  sendDroppedNoKey: 0,
  opened: 0,
  failed: 0,
  failureKinds: {},
  held: 0,
  reorderRejected: 0,
  senders: {},
  sendGeneration: null,
};
setInterval(() => groupRing.expire(performance.now()), 100);
const videoOrder = new PlayoutOrder();
/// The video send transformer (to ask for keyframes) and the epoch of the last sealed frame.
let videoSendTransformer = null;
let videoSendEpoch = null;
let lastKeyframeRequest = -Infinity;
/// The receiver waits for a keyframe: none yet, a frame was lost, or the key changed.
let wantKeyframe = true;
let videoRecvEpoch = null;
let failingSince = null; // When frames started failing with none decrypting since.

function setUndecryptable(value) {
  if (stats.undecryptable === value) return;
  stats.undecryptable = value;
  self.postMessage({ type: 'media-state', undecryptable: value });
}

/// The RTP timestamp of a frame: getMetadata().rtpTimestamp where the browser has it
/// (Chromium 156 does), else the frame's own timestamp (the RTP timestamp in older Chromium
/// frames). `source` is the stats object that records which one was used.
function rtpTimestamp(frame, source = stats) {
  const meta = typeof frame.getMetadata === 'function' ? frame.getMetadata() : null;
  if (Number.isInteger(meta?.rtpTimestamp)) {
    if (source) source.timestampSource ??= 'rtpTimestamp';
    return meta.rtpTimestamp;
  }
  if (source) source.timestampSource ??= 'timestamp';
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
      const recvVideo = await MediaReceiver.create(msg.recv, msg.recvDirection, { video: true });
      sender = send;
      receiver = recv;
      videoReceiver = recvVideo;
      self.postMessage({ type: 'keys-installed', ok: true });
    } catch (e) {
      self.postMessage({ type: 'keys-installed', ok: false, error: String(e) });
    } finally {
      msg.send.fill(0);
      msg.recv.fill(0);
    }
  } else if (typeof msg?.type === 'string' && msg.type.startsWith('group-')) {
    await onGroupMessage(msg);
  } else if (msg?.type === 'stats') {
    stats.group.senders = groupRing.stats();
    groupVideoTrackStats();
    const now = performance.now();
    for (const [slot, heard] of groupHeard) {
      Object.assign(stats.group.senders[slot] ?? {}, {
        heardAgoMs: Math.round(now - heard.at),
        track: heard.track,
      });
    }
    stats.sendEpoch = sender?.epoch ?? null;
    stats.recvEpoch = receiver?.current ?? null;
    stats.video.sendEpoch = videoSendEpoch;
    stats.video.recvEpoch = videoReceiver?.current ?? null;
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

/// Asks our encoder for a keyframe after a key switch, where the browser can.
function requestKeyframe() {
  const t = videoSendTransformer;
  if (!t) return false;
  if (typeof t.generateKeyFrame !== 'function') {
    stats.video.generateKeyFrame = 'unsupported';
    return false;
  }
  stats.video.generateKeyFrame = 'transformer';
  Promise.resolve()
    .then(() => t.generateKeyFrame())
    .catch(() => {
      stats.video.keyframeRequestErrors += 1;
    });
  return true;
}

/// Asks the peer for a keyframe (PLI), at most every KEYFRAME_REQUEST_EVERY_MS: after a frame
/// we could not open, the decoder lacks what later frames refer to.
function requestPeerKeyframe(transformer) {
  const now = performance.now();
  if (now - lastKeyframeRequest < KEYFRAME_REQUEST_EVERY_MS) return;
  if (typeof transformer.sendKeyFrameRequest !== 'function') return;
  lastKeyframeRequest = now;
  stats.video.keyframeRequestsSent += 1;
  Promise.resolve()
    .then(() => transformer.sendKeyFrameRequest())
    .catch(() => {});
}

/// Whether an encoded video frame is VP8 (the only codec negotiated; its layout is VP8's).
function isVp8(frame) {
  const meta = typeof frame.getMetadata === 'function' ? frame.getMetadata() : null;
  return typeof meta?.mimeType !== 'string' || meta.mimeType.toLowerCase() === 'video/vp8';
}

async function sealVideo(frame, controller) {
  const v = stats.video;
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    v.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!sender) {
    v.sendDroppedNoKey += 1;
    return;
  }
  if (!isVp8(frame)) {
    v.notVp8 += 1; // Its header layout is unknown: never sent.
    return;
  }
  const key = frame.type === 'key';
  try {
    const { frame: out, epoch } = await sealVp8(sender, data, key);
    frame.data = out.buffer;
    v.sealed += 1;
    if (key) v.keyframesSent += 1;
    controller.enqueue(frame);
    // RFC 9605 section 6.2: after a key switch, a keyframe (unless this was one).
    if (videoSendEpoch !== null && epoch !== videoSendEpoch && !key && requestKeyframe()) {
      v.keyframesAfterRotation += 1;
    }
    videoSendEpoch = epoch;
  } catch {
    v.sendErrors += 1; // Dropped: never sent in the clear.
  }
}

async function openVideo(frame, controller, transformer) {
  const v = stats.video;
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    v.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!videoReceiver) {
    v.recvDroppedNoKey += 1;
    return;
  }
  const failed = (kind) => {
    if (kind === 'replay') {
      // A copy of a frame already opened: Chromium hands a frame over again when a late
      // retransmission of it arrives. Dropped, but not a sign of tampering by itself.
      v.duplicates += 1;
      return;
    }
    v.failed += 1;
    v.failureKinds[kind] = (v.failureKinds[kind] ?? 0) + 1;
    wantKeyframe = true; // Later frames refer to the one dropped.
    requestPeerKeyframe(transformer);
  };
  let opened;
  try {
    opened = await openVp8(videoReceiver, data);
  } catch (e) {
    failed(e?.kind ?? 'error');
    return;
  }
  if (videoOrder.accept(opened.ctr, rtpTimestamp(frame, stats.video)) !== null) {
    v.reorderRejected += 1; // Authentic but out of its counter's place: never shown.
    return;
  }
  v.opened += 1;
  // After a key switch the picture restarts from a keyframe (RFC 9605 section 6.2). Chromium
  // 156 cannot force one from the sender's side (no generateKeyFrame), so the receiver asks.
  const epoch = Number((opened.kid - VIDEO_KID_BASE) >> 1n);
  if (videoRecvEpoch !== null && epoch > videoRecvEpoch) wantKeyframe = true;
  videoRecvEpoch = Math.max(epoch, videoRecvEpoch ?? 0);
  if (opened.keyframe) {
    v.keyframesReceived += 1;
    wantKeyframe = false;
  } else if (wantKeyframe) {
    requestPeerKeyframe(transformer);
  }
  frame.data = opened.frame.buffer;
  controller.enqueue(frame);
}

async function onGroupMessage(msg) {
  const secret = msg.secret instanceof Uint8Array ? msg.secret : null;
  try {
    if (msg.type === 'group-send' && secret) {
      // In order: a later key never loses to an earlier one still being derived.
      const kid = groupKid(msg.generation, msg.slot);
      const derived = deriveKeySalt(secret, kid);
      // WebCrypto copies the secret at once: it is wiped below before these resolve.
      const videoKid = groupKid(msg.generation, msg.slot, KIND_VIDEO);
      const videoDerived = deriveKeySalt(secret, videoKid);
      groupSendQueue = groupSendQueue.catch(() => {}).then(async () => {
        const keys = await derived;
        const videoKeys = await videoDerived;
        if (groupSender) groupSender.setKey(kid, keys);
        else groupSender = new SframeSender(kid, keys.key, keys.salt);
        const switched = groupVideoSender !== null && groupVideoSender.kid !== videoKid;
        if (groupVideoSender) groupVideoSender.setKey(videoKid, videoKeys);
        else groupVideoSender = new SframeSender(videoKid, videoKeys.key, videoKeys.salt);
        stats.group.sendGeneration = msg.generation;
        if (switched) groupKeyframeAfterSwitch();
      });
      await groupSendQueue.catch(() => {});
    } else if (msg.type === 'group-member') {
      groupRing.addSender(msg.slot);
    } else if (msg.type === 'group-forget') {
      groupRing.removeSender(msg.slot);
      groupHeard.delete(msg.slot);
      for (const k of [...groupOrders.keys()]) if (k.endsWith(`:${msg.slot}`)) groupOrders.delete(k);
      forgetGroupVideo(msg.slot);
    } else if (msg.type === 'group-connection') {
      // A new connection to the SFU: new RTP streams whose timestamps start anywhere, so the
      // order checks start again (the counters, bound to the keys, run on).
      groupOrders.clear();
      groupVideoOrders.clear();
      for (const state of groupVideoTracks.values()) {
        Object.assign(state, { slot: null, generation: null, wantKeyframe: true });
      }
    } else if (msg.type === 'group-key' && secret) {
      try {
        const inserted = await groupRing.insert(msg.slot, msg.generation, secret, {
          onlyIfHeld: msg.onlyIfHeld === true,
        });
        self.postMessage({ type: 'group-key-result', id: msg.id, ok: true, inserted });
      } catch (e) {
        self.postMessage({ type: 'group-key-result', id: msg.id, ok: false, error: String(e) });
      }
    }
  } finally {
    secret?.fill(0);
  }
}

async function sealGroup(frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!groupSender) {
    stats.group.sendDroppedNoKey += 1;
    return;
  }
  try {
    frame.data = (await groupSender.encrypt(data)).buffer;
    stats.group.sealed += 1;
    stats.encrypted += 1;
    controller.enqueue(frame);
  } catch {
    stats.sendErrors += 1; // Dropped: never sent in the clear.
  }
}

/// A forwarded frame on slot track `track`: opened by its sender's keys, whoever it is.
async function openGroup(frame, controller, track) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.padding += 1;
    controller.enqueue(frame);
    return;
  }
  const g = stats.group;
  const deliver = (opened) => {
    // The SFU rewrites RTP timestamps per slot track, so the order rule is per track and sender.
    const key = `${track}:${opened.slot}`;
    if (!groupOrders.has(key)) groupOrders.set(key, new PlayoutOrder());
    if (groupOrders.get(key).accept(opened.ctr, rtpTimestamp(frame)) !== null) {
      g.reorderRejected += 1;
      stats.reorderRejected += 1;
      return;
    }
    g.opened += 1;
    stats.decrypted += 1;
    groupHeard.set(opened.slot, { at: performance.now(), track });
    frame.data = opened.plaintext.buffer;
    controller.enqueue(frame);
  };
  let out;
  try {
    out = await groupRing.open(data, performance.now(), deliver, () => {});
  } catch (e) {
    const kind = e?.kind ?? 'error';
    g.failed += 1;
    g.failureKinds[kind] = (g.failureKinds[kind] ?? 0) + 1;
    if (kind === 'unknown_kid') stats.recvDroppedNoKey += 1;
    else stats.decryptFailures += 1;
    return;
  }
  if (out.held) g.held += 1;
  else deliver(out.opened);
}

// --- group video -------------------------------------------------------------------------

// Group video (transforms with `group: true, kind: 'video'`): our camera's VP8 frames sealed
// with the two-party video layout (clear prefix as metadata) under our group VIDEO KID (kind
// 1: its own key, salt and counter from the same secret); each receive-only video slot's
// frames opened by the key their KID names, whoever the SFU says they come from. The stats
// say which member each video track carried last (`group.video.tracks`), for the tiles.
// { type: 'group-connection' } from the page: a new peer connection to the SFU, whose RTP
// timestamps start anywhere; the order checks (audio and video) start again.
//
// Our sender (the counter keeps counting across generations), its transformer (for keyframes
// after a key switch), the playout order per (video track, sender), and per video track the
// sender whose frames it carried last.
let groupVideoSender = null;
let groupVideoSendTransformer = null;
const groupVideoOrders = new Map();
const groupVideoTracks = new Map(); // track -> { slot, at, wantKeyframe, lastRequest }
stats.group.video = {
  sealed: 0,
  keyframesSent: 0,
  sendDroppedNoKey: 0,
  notVp8: 0,
  sendErrors: 0,
  keyframesAfterSwitch: 0,
  opened: 0,
  keyframesReceived: 0,
  failed: 0,
  failureKinds: {},
  duplicates: 0,
  held: 0,
  reorderRejected: 0,
  keyframeRequestsSent: 0,
  padding: 0,
  tracks: {}, // track -> { slot, agoMs }: the member a video track carried last, and when
};

/// After our key switched: a keyframe, where the browser can force one (RFC 9605 section 6.2);
/// elsewhere receivers ask for it (PLI) when a sender's generation moves on.
function groupKeyframeAfterSwitch() {
  const t = groupVideoSendTransformer;
  if (!t || typeof t.generateKeyFrame !== 'function') return;
  stats.group.video.keyframesAfterSwitch += 1;
  Promise.resolve()
    .then(() => t.generateKeyFrame())
    .catch(() => {});
}

async function sealGroupVideo(frame, controller) {
  const v = stats.group.video;
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    v.padding += 1;
    controller.enqueue(frame);
    return;
  }
  if (!groupVideoSender) {
    v.sendDroppedNoKey += 1;
    return;
  }
  if (!isVp8(frame)) {
    v.notVp8 += 1; // Its header layout is unknown: never sent.
    return;
  }
  const key = frame.type === 'key';
  const sender = groupVideoSender;
  try {
    const out = await sealVp8With((plain, prefix) => sender.encrypt(plain, prefix), data, key);
    frame.data = out.buffer;
    v.sealed += 1;
    if (key) v.keyframesSent += 1;
    controller.enqueue(frame);
  } catch {
    v.sendErrors += 1; // Dropped: never sent in the clear.
  }
}

/// Asks the member behind video track `track` for a keyframe (PLI; the SFU relays it to the
/// publisher), at most every KEYFRAME_REQUEST_EVERY_MS per track.
function groupVideoKeyframeRequest(state, transformer) {
  const now = performance.now();
  if (now - state.lastRequest < KEYFRAME_REQUEST_EVERY_MS) return;
  if (typeof transformer.sendKeyFrameRequest !== 'function') return;
  state.lastRequest = now;
  stats.group.video.keyframeRequestsSent += 1;
  Promise.resolve()
    .then(() => transformer.sendKeyFrameRequest())
    .catch(() => {});
}

function groupVideoTrack(track) {
  if (!groupVideoTracks.has(track)) {
    groupVideoTracks.set(track, { slot: null, at: 0, wantKeyframe: true, lastRequest: -Infinity, generation: null });
  }
  return groupVideoTracks.get(track);
}

/// A forwarded video frame on slot track `track`: opened by the key its KID names (the
/// sender's slot comes from the KID, not from the SFU); never passed on unopened.
async function openGroupVideo(frame, controller, transformer, track) {
  const v = stats.group.video;
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    v.padding += 1;
    controller.enqueue(frame);
    return;
  }
  const state = groupVideoTrack(track);
  const failed = (kind) => {
    if (kind === 'replay') {
      v.duplicates += 1; // A retransmitted copy of a frame already opened.
      return;
    }
    v.failed += 1;
    v.failureKinds[kind] = (v.failureKinds[kind] ?? 0) + 1;
    state.wantKeyframe = true; // Later frames refer to the one dropped.
    groupVideoKeyframeRequest(state, transformer);
  };
  let parts;
  try {
    parts = splitSealedVp8(data);
  } catch (e) {
    failed(e?.kind ?? 'error');
    return;
  }
  const deliver = (opened) => {
    const orderKey = `${track}:${opened.slot}`;
    if (!groupVideoOrders.has(orderKey)) groupVideoOrders.set(orderKey, new PlayoutOrder());
    if (groupVideoOrders.get(orderKey).accept(opened.ctr, rtpTimestamp(frame, null)) !== null) {
      v.reorderRejected += 1; // Authentic but out of its counter's place: never shown.
      return;
    }
    v.opened += 1;
    // Another member on this track (the SFU reassigned it), or its key moved on: the picture
    // restarts from a keyframe.
    if (state.slot !== opened.slot || (state.generation !== null && opened.generation > state.generation)) {
      state.wantKeyframe = true;
    }
    state.slot = opened.slot;
    state.generation = opened.generation;
    state.at = performance.now();
    if (parts.keyframe) {
      v.keyframesReceived += 1;
      state.wantKeyframe = false;
    } else if (state.wantKeyframe) {
      groupVideoKeyframeRequest(state, transformer);
    }
    frame.data = concat(parts.prefix, opened.plaintext).buffer;
    controller.enqueue(frame);
  };
  let out;
  try {
    out = await groupRing.open(parts.sealed, performance.now(), deliver, () => failed('unknown_kid'), {
      kind: KIND_VIDEO,
      metadata: parts.prefix,
    });
  } catch (e) {
    failed(e?.kind ?? 'error');
    return;
  }
  if (out.held) v.held += 1;
  else deliver(out.opened);
}

/// A member left: its video orders go, and no track says it carries that member any more.
function forgetGroupVideo(slot) {
  for (const k of [...groupVideoOrders.keys()]) if (k.endsWith(`:${slot}`)) groupVideoOrders.delete(k);
  for (const state of groupVideoTracks.values()) {
    if (state.slot === slot) {
      state.slot = null;
      state.wantKeyframe = true;
    }
  }
}

function groupVideoTrackStats() {
  const now = performance.now();
  const tracks = {};
  for (const [track, state] of groupVideoTracks) {
    if (state.slot !== null) tracks[track] = { slot: state.slot, agoMs: Math.round(now - state.at) };
  }
  stats.group.video.tracks = tracks;
}

self.onrtctransform = (event) => {
  const transformer = event.transformer;
  const side = transformer.options?.side === 'send' ? 'send' : 'recv';
  const video = transformer.options?.kind === 'video';
  if (transformer.options?.group === true) {
    const track = Number(transformer.options.track) || 0;
    const label = video ? `group-video-${side}` : `group-${side}`;
    stats.transforms[label] = (stats.transforms[label] ?? 0) + 1;
    let transform;
    if (video && side === 'send') {
      groupVideoSendTransformer = transformer;
      transform = sealGroupVideo;
    } else if (video) {
      transform = (frame, controller) => openGroupVideo(frame, controller, transformer, track);
    } else {
      transform =
        side === 'send' ? sealGroup : (frame, controller) => openGroup(frame, controller, track);
    }
    transformer.readable
      .pipeThrough(new TransformStream({ transform }))
      .pipeTo(transformer.writable)
      .catch(() => {});
    return;
  }
  stats.transforms[video ? `video-${side}` : side] =
    (stats.transforms[video ? `video-${side}` : side] ?? 0) + 1;
  let transform;
  if (video && side === 'send') {
    videoSendTransformer = transformer;
    transform = sealVideo;
  } else if (video) {
    transform = (frame, controller) => openVideo(frame, controller, transformer);
  } else {
    transform = side === 'send' ? encryptFrame : decryptFrame;
  }
  transformer.readable
    .pipeThrough(new TransformStream({ transform }))
    .pipeTo(transformer.writable)
    .catch(() => {});
};
