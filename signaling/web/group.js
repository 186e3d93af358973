// Group calls in the page (`&group=1`), as the engine's src/call/group/: one two-party
// handshake per member over signaling (the newcomer initiates with everyone already there),
// each pair's control keys sealing `{"kind":"control","frame":"<hex>"}` signals that carry the
// group key bundles and acks (`group_key` / `group_ack`, hex bodies), `mute` and `hangup`; our
// own random group key with the rules of docs/call-protocol.md "Group keys" (ratchet on each
// join, a fresh key on each leave that we switch to once every remaining member acked it or
// after 2 s, bundles sent again after 1 s, doubling to 8 s, until acked); one peer connection
// to the SFU (`sfu_offer` to peer `sfu`) with our voice sealed under our group audio KID and
// receive-only slot tracks opened by KID in the worker. In a group the DTLS peer is the SFU:
// the fingerprint each handshake signs is our certificate's, checked against no member's SDP.
// Video (the "video" section below): our camera's VP8 sealed under our group video KID on the
// first of three video m-lines, each of which is a receive slot; each tile shows the video of
// the member whose KID the frames on some slot carry.

import { Handshake, toHex } from './handshake.js';
import { checkKnownPeer, fingerprint } from './identity.js';
import { controlKey } from './keys.js';
import { canonical, isMixedScript } from './names.js';
import { SframeReceiver, SframeSender } from './sframe.js';
import {
  encodeAck,
  encodeBundle,
  groupSafetyCode,
  parseAck,
  parseBundle,
  ratchetGroup,
} from './group-keys.js';

const SFU_PEER = 'sfu';
/// Speaker slots asked of the SFU: one sendrecv audio m-line and two receive-only ones.
const AUDIO_SLOTS = 3;
const SWITCH_TIMEOUT_MS = 2000;
const RESEND_AFTER_MS = 1000;
const RESEND_MAX_MS = 8000;
const TICK_MS = 100;
/// A member counts as speaking if a frame of its opened this recently and its track's level
/// is above -45 dBov (as the engine's playout does on decoded audio).
const SPEAKING_WINDOW_MS = 300;
const SPEECH_LEVEL = 10 ** (-45 / 20);
/// A sealed control frame (hex) from a member, at most: bundles and acks are small.
const MAX_CONTROL_HEX = 2 * 32 * 1024;
/// Control frames kept per member until its keys are agreed.
const EARLY_CONTROLS = 32;
const GATHER_TIMEOUT_MS = 10_000;
/// Video slots asked of the SFU (as many as speaker slots); the first also sends our camera.
const VIDEO_SLOTS = 3;
/// A tile shows a member's video while a frame of it opened this recently, checked this often.
const VIDEO_STALE_MS = 2000;
const VIDEO_TICK_MS = 200;

const $ = (id) => document.getElementById(id);
const q = (name) => JSON.stringify(String(name));

function fromHex(text) {
  if (typeof text !== 'string' || text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}

/// Key requests to the worker, numbered across group calls (a page may be in several in turn).
let keyReqId = 0;

function randomSecret() {
  return crypto.getRandomValues(new Uint8Array(32));
}

function waitGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

/// Runs the page as a group member. `ctx` comes from app.js: params, room, name, identity,
/// dtls, stream, track, worker, workerStats, setStatus, mark, call (window.sotto),
/// offeredIceServers. With `ctx.join` (a page that moves between two-party and group calls,
/// docs/call-protocol.md "Moving between two-party and group calls") the group runs on
/// app.js's open WebSocket: `join` has `ws`, `slot`, `iceServers`, `peers` (each `{ peer: { id,
/// name, slot }, join: 'new' | 'present', initiate }`) and `onPair(peer)`, called when one other
/// member is left, after we left the SFU. It then returns `{ onMessage(msg), lost(reason) }`
/// for app.js to feed the server's messages in.
export function runGroup(ctx) {
  const { room, name, identity, dtls, stream, track, worker, call } = ctx;
  const relayOnly = ctx.params.get('relay') === '1';
  call.mode = 'sfu';
  const moving = ctx.join ?? null;
  call.group = {
    slot: null,
    code: null,
    codes: [], // { code, members, changed } each time the group code changed
    participants: {}, // name -> { trust, muted, speaking, refused }
    rekeys: 0,
    sendGeneration: null,
    bundlesResent: 0,
    sfu: 'new',
    sfuReconnects: 0, // the path to the SFU lost and back (as the engine's `sfu_reconnects`)
    sfuLost: [], // each loss: { by: 'no packets' | 'disconnected' | 'failed' | 'sfu left', at }
  };
  // Two-party parts of the page (one peer's identity, video, chat) have no place in a group.
  const hidden = [...document.querySelectorAll('.two-party')].filter((el) => !el.hidden);
  for (const el of hidden) el.hidden = true;
  const pairLabel = $('safety-code-label').textContent;
  $('safety-code-label').textContent =
    'Group safety code (read it aloud; everyone in the call must see the same)';
  $('tiles').hidden = false;

  let ended = false;
  let sfuConnected = false;
  let pc = null;
  // The SFU connection's ICE servers, and its reconnection (see openSfu).
  let sfuIceServers = [];
  let lostSince = null;
  let retryTimer = null;
  let attempts = 0;
  let sfuAnswered = false;
  let mySlot = null;

  const keyReplies = new Map();
  const members = new Map(); // peer id -> member
  const slotReceivers = []; // RTCRtpReceiver per slot track, in m-line order
  // Our sending key (src/group/sender.rs): the current generation, and the one pending after
  // a leave until everyone acked it or its deadline.
  let generation = 0;
  let secret = randomSecret();
  let pending = null; // { generation, freshGen, secret, deadline, awaiting: Set<slot> }
  let nextSeq = 0n;
  const unacked = new Map(); // `${slot}:${gen}` -> { slot, gen, body, next, wait }
  const lastSeq = new Map(); // slot -> BigInt: the newest bundle accepted from that member
  let keysQueue = Promise.resolve();
  /// Group-key work runs one step at a time, in arrival order.
  const serial = (fn) => {
    const p = keysQueue.then(fn);
    keysQueue = p.catch((e) => console.warn('group keys:', e));
    return p;
  };

  const ws =
    moving?.ws ?? new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  const sendServer = (msg) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ v: 1, ...msg }));
  };
  const keepalive = setInterval(() => sendServer({ type: 'ping' }), 20_000);
  const signalTo = (to, data) => sendServer({ type: 'signal', to, data });

  worker.addEventListener('message', (e) => {
    if (e.data?.type !== 'group-key-result') return;
    keyReplies.get(e.data.id)?.(e.data);
    keyReplies.delete(e.data.id);
  });
  /// Installs a member's key in the worker's keyring; resolves its answer.
  function installKey(slot, gen, key, onlyIfHeld) {
    keyReqId += 1;
    const id = keyReqId;
    const reply = new Promise((resolve) => keyReplies.set(id, resolve));
    const copy = Uint8Array.from(key);
    worker.postMessage(
      { type: 'group-key', id, slot, generation: gen, secret: copy, onlyIfHeld },
      [copy.buffer],
    );
    return reply;
  }
  function tellWorkerSendKey() {
    const copy = Uint8Array.from(secret);
    worker.postMessage({ type: 'group-send', slot: mySlot, generation, secret: copy }, [copy.buffer]);
    call.group.sendGeneration = generation;
  }

  function setStatus(text) {
    ctx.setStatus(text);
  }

  function end(reason) {
    if (ended) return;
    ended = true;
    ctx.mark('ended');
    clearTimeout(retryTimer);
    clearInterval(keepalive);
    setStatus(`ended: ${reason}`);
    track.stop();
    $('mute').disabled = true;
    $('hangup').disabled = true;
    secret.fill(0);
    pending?.secret.fill(0);
    for (const [k, u] of unacked) forget(k, u);
    for (const m of members.values()) worker.postMessage({ type: 'group-forget', slot: m.slot });
    stopGroupVideo();
    signalTo(SFU_PEER, { kind: 'sfu_leave' });
    pc?.close();
    sendServer({ type: 'leave' });
    ws.close();
  }

  function updateStatus() {
    if (ended) return;
    const trusted = [...members.values()].filter((m) => m.control).length;
    if (lostSince !== null) setStatus('the path to the SFU was lost: reconnecting');
    else if (!sfuConnected) setStatus('connecting to the SFU');
    else if (trusted) {
      ctx.mark('connected');
      setStatus(`connected: end-to-end encrypted, group of ${trusted + 1}`);
    } else if ([...members.values()].some((m) => m.handshake && !m.refused)) {
      setStatus('handshakes with the members');
    } else setStatus('waiting for someone to join');
  }

  // --- tiles -----------------------------------------------------------------------------

  function tile(m) {
    if (!m.tile) {
      const div = document.createElement('div');
      div.className = 'tile';
      const parts = {};
      for (const cls of ['name', 'trust', 'muted', 'speaking', 'warning']) {
        parts[cls] = Object.assign(document.createElement('span'), { className: cls });
        div.append(parts[cls]);
      }
      m.tile = { div, parts };
      $('tiles').append(div);
    }
    const { div, parts } = m.tile;
    const shown = m.info?.name ?? canonical(m.attestedName);
    div.dataset.peer = shown;
    parts.name.textContent = m.self ? `${shown} (you)` : shown;
    const trust = m.self ? 'you' : m.refused ? 'refused' : (m.info?.trust ?? 'handshake');
    parts.trust.textContent = trust;
    parts.trust.className = `trust ${trust}`;
    div.classList.toggle('refused', Boolean(m.refused));
    parts.muted.textContent = m.muted ? 'muted' : '';
    div.classList.toggle('is-muted', Boolean(m.muted));
    parts.speaking.textContent = m.speaking ? 'speaking' : '';
    div.classList.toggle('is-speaking', Boolean(m.speaking));
    parts.warning.textContent = m.warning ?? '';
    if (!m.self) {
      call.group.participants[shown] = {
        trust,
        muted: Boolean(m.muted),
        speaking: Boolean(m.speaking),
        refused: m.refused ?? null,
      };
    }
  }

  const me = { self: true, attestedName: name, info: { name: canonical(name) }, muted: Boolean(call.muted) };

  // --- the group code ------------------------------------------------------------------------

  let codeQueue = Promise.resolve();
  /// Recomputes the group code over us and every trusted member; the page says when it changed.
  function rosterChanged(why) {
    codeQueue = codeQueue.then(() => showCode(why)).catch(() => {});
    return codeQueue;
  }

  async function showCode(why) {
    const trusted = [...members.values()].filter((m) => m.control && m.info);
    let code;
    try {
      code = await groupSafetyCode(room, [identity.publicKey, ...trusted.map((m) => m.info.identity)]);
    } catch (e) {
      console.warn('no group safety code:', e);
      return;
    }
    if (code === call.group.code) return;
    // Coming from a two-party call, the first group code replaces the pair's.
    const changed = call.group.code !== null || moving?.fromPair === true;
    const names = trusted.map((m) => m.info.name).sort();
    call.group.code = code;
    call.safetyCode = code;
    call.group.codes.push({ code, members: names, changed });
    const box = $('safety-code');
    const codeSpan = Object.assign(document.createElement('span'), { className: 'code', textContent: code });
    const note = Object.assign(document.createElement('span'), {
      className: 'changed',
      textContent: changed ? ` changed at ${new Date().toLocaleTimeString()}: ${why}` : '',
    });
    box.replaceChildren(codeSpan, note);
    box.classList.toggle('changed', changed);
  }

  // --- sealed control over signaling ---------------------------------------------------------

  function sendControl(m, msg) {
    if (!m.control) return Promise.resolve(false);
    const next = m.sendQueue.then(async () => {
      const bytes = new TextEncoder().encode(JSON.stringify(msg));
      const frame = await m.control.sender.encrypt(bytes);
      bytes.fill(0);
      signalTo(m.id, { kind: 'control', frame: toHex(frame) });
      call.control.sent += 1;
      return true;
    });
    m.sendQueue = next.catch(() => false);
    return next;
  }

  function broadcast(msg) {
    return Promise.all([...members.values()].map((m) => sendControl(m, msg).catch(() => false)));
  }

  const bySlot = (slot) => [...members.values()].find((m) => m.slot === slot && m.control);

  async function onControl(m, hex) {
    if (members.get(m.id) !== m) return; // Gone: its keys with it.
    if (typeof hex !== 'string' || hex.length > MAX_CONTROL_HEX) {
      call.control.ignored += 1;
      return;
    }
    const frame = fromHex(hex);
    if (!frame) {
      call.control.ignored += 1;
      return;
    }
    let msg;
    let plaintext;
    try {
      ({ plaintext } = await m.control.receiver.decrypt(frame));
      msg = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(plaintext));
    } catch (e) {
      if (e instanceof SyntaxError || e instanceof TypeError) call.control.ignored += 1;
      else call.control.decryptFailures += 1;
      return;
    } finally {
      plaintext?.fill(0);
    }
    call.control.received += 1;
    if (msg === null || typeof msg !== 'object') return;
    if (msg.type === 'group_key' && typeof msg.body === 'string') {
      const body = fromHex(msg.body);
      msg.body = '';
      await serial(() => bundleReceived(m, body));
    } else if (msg.type === 'group_ack' && typeof msg.body === 'string') {
      await serial(() => ackReceived(m, fromHex(msg.body)));
    } else if (msg.type === 'mute' && typeof msg.muted === 'boolean') {
      m.muted = msg.muted;
      tile(m);
    } else if (msg.type === 'hangup') {
      memberLeft(m.id, `${m.info.name} hung up`);
    } else {
      call.control.ignored += 1;
    }
  }

  // --- group keys (src/group/machine.rs) -----------------------------------------------------

  function sendBundle(slot, gen, key) {
    const seq = nextSeq;
    nextSeq += 1n;
    const body = encodeBundle({ slot: mySlot, generation: gen, seq, secret: key });
    const entry = `${slot}:${gen}`;
    unacked.get(entry)?.body.fill(0);
    unacked.set(entry, { slot, gen, body, next: performance.now() + RESEND_AFTER_MS, wait: RESEND_AFTER_MS });
    sendBody(slot, 'group_key', body);
  }

  /// A bundle needs no more sending: its body (which holds a secret) is wiped.
  function forget(key, u) {
    u.body.fill(0);
    unacked.delete(key);
  }

  function sendBody(slot, type, body) {
    const m = bySlot(slot);
    if (!m) return;
    const msg = { type, body: toHex(body) };
    sendControl(m, msg).catch(() => {});
  }

  function rotate() {
    call.group.rekeys += 1;
    tellWorkerSendKey();
  }

  function switchIfDue(now) {
    if (!pending || (pending.awaiting.size && now < pending.deadline)) return;
    secret.fill(0);
    generation = pending.generation;
    secret = pending.secret;
    pending = null;
    rotate();
  }

  function trustedSlots() {
    return [...members.values()].filter((m) => m.keyed).map((m) => m.slot);
  }

  async function memberJoinedKeys(m) {
    if (members.get(m.id) !== m) return; // It left before its turn.
    worker.postMessage({ type: 'group-member', slot: m.slot });
    m.keyed = true;
    if (m.join === 'new') {
      if (pending) {
        const next = await ratchetGroup(pending.secret);
        pending.secret.fill(0);
        pending.secret = next;
        pending.generation += 1;
        pending.awaiting.add(m.slot);
        sendBundle(m.slot, pending.generation, pending.secret);
      } else {
        const next = await ratchetGroup(secret);
        secret.fill(0);
        secret = next;
        generation += 1;
        rotate();
        sendBundle(m.slot, generation, secret);
      }
    } else {
      sendBundle(m.slot, generation, secret);
      if (pending) {
        sendBundle(m.slot, pending.generation, pending.secret);
        pending.awaiting.add(m.slot);
      }
    }
  }

  function memberLeftKeys(slot) {
    worker.postMessage({ type: 'group-forget', slot });
    lastSeq.delete(slot);
    for (const [k, u] of unacked) if (u.slot === slot) forget(k, u);
    const now = performance.now();
    const remaining = trustedSlots();
    const fresh = randomSecret();
    const gen = (pending ? pending.generation : generation) + 1;
    const deadline = pending ? pending.deadline : now + SWITCH_TIMEOUT_MS;
    pending?.secret.fill(0);
    pending = { generation: gen, freshGen: gen, secret: fresh, deadline, awaiting: new Set(remaining) };
    for (const s of remaining) sendBundle(s, gen, fresh);
    switchIfDue(now);
  }

  async function bundleReceived(m, body) {
    if (!m.keyed || !body) return;
    let bundle;
    try {
      bundle = parseBundle(body);
    } catch (e) {
      console.warn(`refused a key bundle from ${q(m.info.name)}: ${e.message}`);
      return;
    } finally {
      body.fill(0);
    }
    try {
      if (bundle.slot !== m.slot) throw new Error(`slot ${bundle.slot} from the member in ${m.slot}`);
      const last = lastSeq.get(m.slot);
      if (last !== undefined && bundle.seq < last) throw new Error('an older bundle');
      const again = last !== undefined && bundle.seq === last;
      lastSeq.set(m.slot, bundle.seq);
      const r = await installKey(m.slot, bundle.generation, bundle.secret, again);
      if (!r.ok) throw new Error(r.error);
      sendBody(m.slot, 'group_ack', encodeAck({ slot: m.slot, generation: bundle.generation }));
    } catch (e) {
      console.warn(`refused a key bundle from ${q(m.info.name)}: ${e.message}`);
    } finally {
      bundle.secret.fill(0);
    }
  }

  function ackReceived(m, body) {
    if (!m.keyed || !body) return;
    let ack;
    try {
      ack = parseAck(body);
    } catch (e) {
      console.warn(`refused a key ack: ${e.message}`);
      return;
    }
    if (ack.slot !== mySlot) return;
    if (pending && ack.generation >= pending.freshGen && ack.generation <= pending.generation) {
      pending.awaiting.delete(m.slot);
    }
    for (const [k, u] of unacked) {
      if (u.slot === m.slot && u.gen <= ack.generation) forget(k, u);
    }
    switchIfDue(performance.now());
  }

  function tick() {
    if (ended) return;
    serial(() => {
      const now = performance.now();
      for (const u of unacked.values()) {
        if (u.next > now) continue;
        u.wait = Math.min(u.wait * 2, RESEND_MAX_MS);
        u.next = now + u.wait;
        call.group.bundlesResent += 1;
        sendBody(u.slot, 'group_key', u.body);
      }
      switchIfDue(now);
    });
  }
  const ticker = setInterval(() => (ended ? clearInterval(ticker) : tick()), TICK_MS);

  // --- members -------------------------------------------------------------------------------

  async function addMember(peer, join, initiate) {
    if (!Number.isInteger(peer.slot) || peer.slot < 0 || peer.slot > 127 || peer.slot === mySlot) return;
    if ([...members.values()].some((m) => m.slot === peer.slot)) return;
    const m = {
      id: peer.id,
      attestedName: peer.name,
      slot: peer.slot,
      group: peer.group === true, // always in the group call (`--group`, `&group=1`)
      join,
      handshake: null,
      control: null,
      info: null,
      refused: null,
      keyed: false,
      early: [],
      muted: false,
      speaking: false,
      hsQueue: Promise.resolve(),
      sendQueue: Promise.resolve(),
      ctrlQueue: Promise.resolve(),
    };
    members.set(m.id, m);
    tile(m);
    if (initiate) {
      m.hsQueue = m.hsQueue.then(async () => {
        const started = await Handshake.initiator(identity, room, name, dtls.dtls);
        m.handshake = started.handshake;
        signalTo(m.id, { kind: 'handshake', message: started.hello });
      });
    } else {
      m.handshake = Handshake.responder(identity, room, name, dtls.dtls);
    }
    m.hsQueue.catch((e) => refuse(m, `key agreement failed: ${e?.message ?? e}`));
    updateStatus();
  }

  function refuse(m, reason) {
    if (m.refused) return;
    m.refused = reason;
    m.handshake = null;
    m.warning = `refused: ${reason}`;
    console.warn(`member ${q(m.attestedName)} refused: ${reason}`);
    tile(m);
    updateStatus();
  }

  async function onHandshake(m, message) {
    if (!m.handshake) {
      if (m.control) call.lateHandshakeMessages += 1;
      return;
    }
    let step;
    try {
      step = await m.handshake.handle(message);
    } catch (e) {
      refuse(m, `key agreement failed: ${e?.code ?? e?.message ?? e}`);
      return;
    }
    if (step.send) signalTo(m.id, { kind: 'handshake', message: step.send });
    if (step.established) {
      m.handshake = null;
      await onEstablished(m, step.established);
    }
  }

  let trustQueue = Promise.resolve();

  async function onEstablished(m, done) {
    const claimed = canonical(done.peerName);
    const listed = canonical(m.attestedName);
    const wipe = () => {
      done.sendKey.fill(0);
      done.recvKey.fill(0);
    };
    if (claimed !== listed) {
      wipe();
      refuse(m, `joined as ${q(listed)} but claims ${q(claimed)}`);
      return;
    }
    const key = Uint8Array.from(done.peerIdentity);
    const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
    if (
      same(key, identity.publicKey) ||
      [...members.values()].some((o) => o !== m && o.info?.identity && same(o.info.identity, key))
    ) {
      wipe();
      refuse(m, 'an identity already in the call');
      return;
    }
    // Known peers, one check at a time (IndexedDB): pins and trust as in two-party calls.
    const check = trustQueue.then(() => checkKnownPeer(claimed, key));
    trustQueue = check.catch(() => {});
    let known;
    try {
      known = await check;
    } catch (e) {
      wipe();
      refuse(m, `known peers: ${e?.message ?? e}`);
      return;
    }
    if (ended || !members.has(m.id)) {
      wipe();
      return;
    }
    const sendControlKey = await controlKey(done.sendKey);
    const recvControlKey = await controlKey(done.recvKey);
    wipe();
    const receiver = new SframeReceiver();
    await receiver.addKey(BigInt(done.recvDirection), recvControlKey);
    const sender = await SframeSender.create(sendControlKey, BigInt(done.sendDirection));
    sendControlKey.fill(0);
    recvControlKey.fill(0);
    const print = await fingerprint(key);
    if (ended || !members.has(m.id)) return;
    // From here to queueing our key for it, nothing waits: a bundle it sends as soon as it
    // can is queued after our own key work for it (memberJoinedKeys), never dropped.
    m.control = { sender, receiver };
    m.info = { name: claimed, identity: key, trust: known.trust, pairCode: done.safetyCode, fingerprint: print };
    const keyed = serial(() => memberJoinedKeys(m));
    const notes = [];
    if (known.trust === 'changed') {
      notes.push(
        known.lookalike
          ? `WARNING: ${q(claimed)} looks like ${q(known.lookalike)}, a known peer with another identity (${known.previous}).`
          : `WARNING: IDENTITY CHANGED: ${q(claimed)} presents another identity than the one pinned (${known.previous}).`,
      );
    } else if (known.trust === 'renamed') {
      notes.push(`Note: this identity was known as ${q(known.previousName)}.`);
    }
    if (isMixedScript(claimed)) notes.push(`Note: ${q(claimed)} mixes writing systems.`);
    m.warning = notes.join(' ');
    tile(m);
    await keyed;
    if (me.muted) sendControl(m, { type: 'mute', muted: true }).catch(() => {});
    for (const hex of m.early.splice(0)) await onControl(m, hex);
    await rosterChanged(`${claimed} joined`);
    updateStatus();
  }

  function memberLeft(id, why) {
    const m = members.get(id);
    if (!m) return;
    members.delete(id);
    m.tile?.div.remove();
    delete call.group.participants[m.info?.name ?? canonical(m.attestedName)];
    if (m.control) {
      // After our key work for its join, if that is still queued (then it is skipped).
      serial(() => m.keyed && memberLeftKeys(m.slot));
      rosterChanged(why);
    }
    // Down to one other member: back to two-party, unless it is always in the group call.
    const [last] = members.values();
    if (moving && members.size === 1 && !last.group) {
      backToPair(last);
      return;
    }
    updateStatus();
  }

  /// One other member left: both leave the SFU and meet again peer to peer (app.js), with
  /// every group key erased. The signaling connection and the microphone stay.
  function backToPair(other) {
    ended = true;
    clearTimeout(retryTimer);
    clearInterval(keepalive);
    secret.fill(0);
    pending?.secret.fill(0);
    for (const [k, u] of unacked) forget(k, u);
    for (const m of members.values()) worker.postMessage({ type: 'group-forget', slot: m.slot });
    stopGroupVideo(true);
    signalTo(SFU_PEER, { kind: 'sfu_leave' });
    pc?.close();
    pc = null;
    for (const a of document.querySelectorAll('#slot-audio .slot-audio')) a.remove();
    $('tiles').replaceChildren();
    $('tiles').hidden = true;
    for (const el of hidden) el.hidden = false;
    $('safety-code-label').textContent = pairLabel;
    moving.onPair({ id: other.id, name: other.attestedName, slot: other.slot });
  }

  function onMemberSignal(m, data) {
    if (m.refused || data === null || typeof data !== 'object') return;
    if (data.kind === 'handshake') {
      m.hsQueue = m.hsQueue.then(() => onHandshake(m, data.message));
      m.hsQueue.catch((e) => refuse(m, `key agreement failed: ${e?.message ?? e}`));
    } else if (data.kind === 'control') {
      if (!m.control) {
        if (m.early.length < EARLY_CONTROLS) m.early.push(data.frame);
        else call.control.droppedNoKey += 1;
        return;
      }
      m.ctrlQueue = m.ctrlQueue.then(() => onControl(m, data.frame)).catch(() => {});
    }
    // SDP from a member is ignored: group media goes through the SFU.
  }

  // --- the SFU connection --------------------------------------------------------------------

  // A lost path to the SFU (as the engine does, docs/call-protocol.md): wait a second for it
  // to come back by itself, then leave the SFU and join again on a new peer connection. The
  // keys stay, and the worker's sender keeps counting, so no nonce repeats.
  const SFU_GRACE_MS = 1000;
  const SFU_GIVE_UP_MS = 30_000;
  async function connectSfu(iceServers) {
    if (relayOnly && !iceServers.some((s) => s.urls.some((u) => /^turns?:/.test(u)))) {
      end('relay-only needs a TURN server, and the signaling server offers none');
      return;
    }
    sfuIceServers = iceServers;
    await openSfu();
  }

  async function openSfu() {
    const conn = new RTCPeerConnection({
      iceServers: sfuIceServers,
      iceTransportPolicy: relayOnly ? 'relay' : 'all',
      bundlePolicy: 'max-bundle',
      certificates: [dtls.certificate],
    });
    pc = conn;
    sfuAnswered = false;
    slotReceivers.length = 0;
    // Transforms go on before any description is applied (see README: Chromium ignores later ones).
    const sender = conn.addTrack(track, stream);
    sender.transform = new RTCRtpScriptTransform(worker, { side: 'send', group: true });
    const first = conn.getTransceivers().find((t) => t.sender === sender);
    const transceivers = [first];
    for (let i = 1; i < AUDIO_SLOTS; i += 1) {
      transceivers.push(conn.addTransceiver('audio', { direction: 'recvonly' }));
    }
    transceivers.forEach((t, i) => {
      t.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'recv', group: true, track: i });
      slotReceivers.push(t.receiver);
    });
    await addVideoTransceivers(conn);
    conn.ontrack = (e) => {
      if (e.track.kind !== 'audio') return; // Video goes to the tiles (showVideos).
      const audio = document.createElement('audio');
      audio.autoplay = true;
      audio.className = 'slot-audio';
      audio.srcObject = new MediaStream([e.track]);
      $('slot-audio').append(audio);
      audio.play().catch(() => {});
    };
    conn.onconnectionstatechange = () => {
      if (conn !== pc || ended) return; // a connection already replaced
      call.group.sfu = conn.connectionState;
      if (conn.connectionState === 'connected') {
        sfuConnected = true;
        if (lostSince !== null) {
          call.group.sfuReconnects += 1;
          lostSince = null;
          attempts = 0;
          clearTimeout(retryTimer);
          retryTimer = null;
        }
      } else if (conn.connectionState === 'disconnected' && sfuConnected) {
        sfuLost(SFU_GRACE_MS, 'disconnected');
      } else if (conn.connectionState === 'failed') {
        if (sfuConnected || lostSince !== null) sfuLost(0, 'failed');
        else end('the connection to the SFU failed');
      }
      updateStatus();
    };
    await conn.setLocalDescription(await conn.createOffer());
    await waitGathered(conn);
    if (conn !== pc || ended) return;
    signalTo(SFU_PEER, { kind: 'sfu_offer', sdp: conn.localDescription.sdp });
  }

  /// The path to the SFU is lost (or the SFU is gone): reconnect after `afterMs`.
  function sfuLost(afterMs, by) {
    if (ended) return;
    if (lostSince === null) {
      lostSince = Date.now();
      silentLoss = by === 'no packets';
      call.group.sfuLost.push({ by, at: Math.round(performance.now()) });
    } else if (by !== 'no packets') silentLoss = false;
    if (retryTimer === null) retryTimer = setTimeout(retrySfu, afterMs);
    updateStatus();
  }

  function retrySfu() {
    retryTimer = null;
    if (ended || lostSince === null) return;
    if (Date.now() - lostSince >= SFU_GIVE_UP_MS) {
      end(`the path to the SFU did not come back within ${SFU_GIVE_UP_MS / 1000} s`);
      return;
    }
    attempts += 1;
    sfuConnected = false;
    signalTo(SFU_PEER, { kind: 'sfu_leave' });
    const old = pc;
    pc = null;
    old?.close();
    for (const a of document.querySelectorAll('#slot-audio .slot-audio')) a.remove();
    openSfu().catch((err) => console.warn('a new connection to the SFU:', err));
    retryTimer = setTimeout(retrySfu, Math.min(2000 * 2 ** (attempts - 1), 8000));
  }

  // A silent path, noticed sooner than ICE's `disconnected` (Chromium's consent checks take
  // about 5 s): nothing at all from the SFU (RTP, RTCP, STUN: the transport's bytes) for
  // 1.5 s, when an unmuted member's frame was opened just before it went quiet, counts as lost
  // (then the same 1 s grace). A member that pauses still sends (Opus DTX: a packet every
  // 400 ms at least), and muted members do not count, so a quiet call does not trip it.
  const SFU_SILENT_MS = 1500;
  const HEARD_BEFORE_MS = 500;
  let heardAt = null; // When an unmuted member's frame was last opened (performance.now()).
  let silentLoss = false; // The loss now pending was noticed by silence alone.
  const seen = { conn: null, bytes: 0, at: 0 };
  async function watchPath() {
    const conn = pc;
    if (ended || !conn || !sfuConnected || (lostSince !== null && !silentLoss)) return;
    let bytes = 0;
    for (const s of (await conn.getStats()).values()) {
      if (s.type === 'transport') bytes += s.bytesReceived ?? 0;
    }
    const now = performance.now();
    if (conn !== pc || ended) return;
    if (seen.conn !== conn || bytes !== seen.bytes) {
      const grew = seen.conn === conn;
      Object.assign(seen, { conn, bytes, at: now });
      // It was only quiet: the grace had not run out, nothing was torn down.
      if (grew && silentLoss && lostSince !== null && attempts === 0) {
        lostSince = null;
        silentLoss = false;
        clearTimeout(retryTimer);
        retryTimer = null;
        updateStatus();
      }
      return;
    }
    if (lostSince === null && now - seen.at >= SFU_SILENT_MS && heardAt !== null && seen.at - heardAt < HEARD_BEFORE_MS) {
      sfuLost(SFU_GRACE_MS, 'no packets');
    }
  }
  const pathWatch = setInterval(() => (ended ? clearInterval(pathWatch) : watchPath().catch(() => {})), 250);

  async function onSfuSignal(data) {
    if (data?.kind !== 'sfu_answer' || typeof data.sdp !== 'string' || sfuAnswered || !pc) return;
    sfuAnswered = true;
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: data.sdp });
    } catch (err) {
      // An answer to an earlier offer while reconnecting: the next attempt sorts it out.
      if (lostSince === null) throw err;
      console.warn("the SFU's answer while reconnecting:", err);
    }
  }

  // --- video ---------------------------------------------------------------------------------

  // docs/call-protocol.md, "Group calls in the browser": after its audio m-lines a member
  // offers VIDEO_SLOTS video m-lines, each a receive slot the SFU may fill with another
  // member's video; the first one is `sendrecv` with our camera when we have one, the others
  // (all of them without a camera) `recvonly`. The SFU tells nobody which member a slot
  // carries: the tiles follow the KIDs of the frames the worker opened on each slot track.
  const cameraReady = openGroupCamera();
  const videoReceivers = []; // RTCRtpReceiver per video slot track, in m-line order
  call.group.videos = {}; // member name -> the video slot track its tile shows

  /// The camera: app.js's if it opened one (`ctx.cameraTrack`), else ours with `&video=1`.
  /// A call moved from two-party keeps the camera as it was (on or off).
  async function openGroupCamera() {
    if (ctx.cameraTrack || moving) return ctx.cameraTrack ?? null;
    if (ctx.params.get('video') !== '1') return null;
    try {
      const media = await navigator.mediaDevices.getUserMedia({ video: true });
      return media.getVideoTracks()[0] ?? null;
    } catch (e) {
      call.cameraError = String(e?.message ?? e); // The call goes on without our video.
      return null;
    }
  }

  /// VP8 (and its retransmissions) only: the sealed layout is VP8's. Null if there is none.
  function vp8Codecs() {
    const codecs = (RTCRtpReceiver.getCapabilities('video')?.codecs ?? []).filter((c) =>
      /^video\/(vp8|rtx)$/i.test(c.mimeType),
    );
    return codecs.some((c) => /^video\/vp8$/i.test(c.mimeType)) ? codecs : null;
  }

  /// The video m-lines of an offer to the SFU, with their transforms (before any description).
  async function addVideoTransceivers(conn) {
    const camera = await cameraReady;
    // The SFU rewrites RTP timestamps per slot track, from the publisher's own on a new
    // connection: the worker's order checks start again (for audio too).
    worker.postMessage({ type: 'group-connection' });
    videoReceivers.length = 0;
    const codecs = vp8Codecs();
    if (!codecs || ended) return; // No VP8: the call stays audio only.
    call.camera = camera !== null;
    for (let i = 0; i < VIDEO_SLOTS; i += 1) {
      const sends = i === 0 && camera !== null;
      const t = sends
        ? conn.addTransceiver(camera, { direction: 'sendrecv', streams: [new MediaStream([camera])] })
        : conn.addTransceiver('video', { direction: 'recvonly' });
      if (sends) {
        t.sender.transform = new RTCRtpScriptTransform(worker, { side: 'send', group: true, kind: 'video' });
      }
      t.receiver.transform = new RTCRtpScriptTransform(worker, {
        side: 'recv',
        group: true,
        kind: 'video',
        track: i,
      });
      t.setCodecPreferences(codecs);
      videoReceivers.push(t.receiver);
    }
  }

  /// The tile's <video>, made on first use.
  function tileVideo(m) {
    if (!m.tile.video) {
      const video = document.createElement('video');
      Object.assign(video, { autoplay: true, muted: true, playsInline: true, hidden: true });
      video.className = 'tile-video';
      m.tile.div.append(video);
      m.tile.video = video;
    }
    return m.tile.video;
  }

  /// Shows `track` in m's tile (`index`: which video slot, or 'local'), or hides its video.
  function showVideo(m, track, index) {
    if (!m.tile) return;
    if (!track) {
      if (m.tile.video && !m.tile.video.hidden) {
        m.tile.video.hidden = true;
        m.tile.video.srcObject = null;
        delete m.tile.video.dataset.track;
      }
      m.videoTrack = null;
      return;
    }
    const video = tileVideo(m);
    if (m.videoTrack !== track) {
      m.videoTrack = track;
      video.srcObject = new MediaStream([track]);
      video.dataset.track = String(index);
      video.play().catch(() => {});
    }
    video.hidden = false;
  }

  /// Each trusted member's tile shows the slot track whose latest opened frame was that
  /// member's (by KID), while it is recent; our own tile shows our camera.
  async function showVideos() {
    if (ended) return;
    const camera = await cameraReady;
    const tracks = (await ctx.workerStats()).group?.video?.tracks ?? {};
    const bySender = new Map(); // slot -> { index, agoMs }
    for (const [index, t] of Object.entries(tracks)) {
      if (t.agoMs > VIDEO_STALE_MS || !videoReceivers[Number(index)]) continue;
      const best = bySender.get(t.slot);
      if (!best || t.agoMs < best.agoMs) bySender.set(t.slot, { index: Number(index), agoMs: t.agoMs });
    }
    const videos = {};
    for (const m of members.values()) {
      const on = m.keyed && !m.refused ? bySender.get(m.slot) : undefined;
      showVideo(m, on ? videoReceivers[on.index].track : null, on?.index);
      if (on && m.info) videos[m.info.name] = on.index;
    }
    call.group.videos = videos;
    showVideo(me, camera && camera.readyState === 'live' ? camera : null, 'local');
  }
  const videoTicker = setInterval(
    () => (ended ? clearInterval(videoTicker) : showVideos().catch(() => {})),
    VIDEO_TICK_MS,
  );

  /// Per member with video on its tile: what its slot track decoded (getStats).
  call.group.videoStats = async () => {
    const out = {};
    for (const m of members.values()) {
      const index = m.tile?.video?.dataset.track;
      if (!m.info || index === undefined || !m.videoTrack) continue;
      const receiver = videoReceivers[Number(index)];
      if (!receiver) continue;
      for (const s of (await receiver.getStats()).values()) {
        if (s.type !== 'inbound-rtp') continue;
        out[m.info.name] = {
          track: Number(index),
          framesDecoded: s.framesDecoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          width: m.tile.video.videoWidth,
          height: m.tile.video.videoHeight,
        };
      }
    }
    return out;
  };

  // A video transform that was not applied would send VP8 in the clear, or decode
  // ciphertext: as for audio (checkTransforms), packets without sealing end the call.
  async function checkVideoTransforms() {
    if (ended || !pc) return;
    const v = (await ctx.workerStats()).group?.video;
    if (!v) return;
    let sent = 0;
    let received = 0;
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'outbound-rtp' && s.kind === 'video') sent += s.packetsSent ?? 0;
      if (s.type === 'inbound-rtp' && s.kind === 'video') received += s.packetsReceived ?? 0;
    }
    if (sent > 50 && v.sealed === 0 && v.sendDroppedNoKey === 0) {
      end('video bypassed encryption; call ended');
    } else if (received > 50 && v.opened + v.failed + v.held + v.duplicates === 0) {
      end('incoming video bypassed decryption; call ended');
    }
  }
  const videoGuard = setInterval(
    () => (ended ? clearInterval(videoGuard) : checkVideoTransforms().catch(() => {})),
    2000,
  );

  /// `keepCamera`: back to two-party, where app.js goes on sending the camera it gave us.
  function stopGroupVideo(keepCamera = false) {
    if (!keepCamera) cameraReady.then((camera) => camera?.stop()).catch(() => {});
    for (const m of [me, ...members.values()]) showVideo(m, null);
  }

  // --- speaking ------------------------------------------------------------------------------

  async function speakingTick() {
    if (ended) return;
    const s = await ctx.workerStats();
    const senders = s.group?.senders ?? {};
    for (const m of members.values()) {
      if (!m.keyed) continue;
      const heard = senders[m.slot];
      if (!m.muted && heard?.heardAgoMs !== undefined) {
        heardAt = Math.max(heardAt ?? -Infinity, performance.now() - heard.heardAgoMs);
      }
      let speaking = false;
      if (heard && heard.heardAgoMs !== undefined && heard.heardAgoMs < SPEAKING_WINDOW_MS) {
        // The level of the slot track it was last heard on (RFC 6464, or decoded).
        const src = slotReceivers[heard.track]?.getSynchronizationSources?.()[0];
        speaking = typeof src?.audioLevel === 'number' ? src.audioLevel >= SPEECH_LEVEL : true;
      }
      if (speaking !== m.speaking) {
        m.speaking = speaking;
        tile(m);
      }
    }
  }
  // A transform that was not applied would send Opus in the clear, or play ciphertext: if
  // packets flow but none went through SFrame, the call ends (as in two-party calls).
  async function checkTransforms() {
    if (ended || !pc) return;
    const g = (await ctx.workerStats()).group;
    let sent = 0;
    let received = 0;
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') sent += s.packetsSent ?? 0;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') received += s.packetsReceived ?? 0;
    }
    if (sent > 50 && g.sealed === 0 && g.sendDroppedNoKey === 0) {
      end('media bypassed encryption; call ended');
    } else if (received > 50 && g.opened + g.failed + g.held === 0) {
      end('incoming media bypassed decryption; call ended');
    }
  }
  const guard = setInterval(() => (ended ? clearInterval(guard) : checkTransforms().catch(() => {})), 2000);

  const speaker = setInterval(() => (ended ? clearInterval(speaker) : speakingTick().catch(() => {})), 200);

  // --- signaling -----------------------------------------------------------------------------

  /// In the room with slot `slot`: to the SFU, and a handshake with each of `roster`.
  function joined(slot, iceServers, roster) {
    mySlot = slot;
    call.group.slot = mySlot;
    tellWorkerSendKey();
    tile(me);
    connectSfu(iceServers).catch((err) => end(`could not connect to the SFU: ${err?.message ?? err}`));
    for (const r of roster) addMember(r.peer, r.join, r.initiate);
    updateStatus();
  }

  if (!moving) {
    ws.onopen = () => {
      setStatus('joining');
      const token = ctx.params.get('token');
      // `group`: we are always in the group call, so members that move between two-party and
      // group calls meet us on the SFU even in a room of two.
      sendServer({ type: 'join', room, name, group: true, ...(token ? { token } : {}) });
    };
    ws.onclose = () => {
      if (!ended) end('lost the signaling server');
    };
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      onServer(msg);
    };
  }

  function onServer(msg) {
    if (msg === null || typeof msg !== 'object' || msg.v !== 1 || ended) return;
    const peerInfo = (p) =>
      p && typeof p.peer_id === 'string' && typeof p.name === 'string'
        ? { id: p.peer_id, name: p.name, slot: p.slot, group: p.group === true }
        : null;
    switch (msg.type) {
      case 'welcome': {
        ctx.mark('joined');
        if (mySlot !== null) break; // A rejoin: the call goes on.
        if (msg.sfu !== true) {
          end('this signaling server has no SFU; group calls need `sotto-signaling --sfu`');
          break;
        }
        if (!Number.isInteger(msg.slot) || msg.slot < 0 || msg.slot > 127) {
          end('the server gave us no slot');
          break;
        }
        const peers = Array.isArray(msg.peers) ? msg.peers.map(peerInfo).filter(Boolean) : [];
        // Members that were there first: we start each handshake.
        joined(
          msg.slot,
          ctx.offeredIceServers(msg.ice_servers),
          peers.map((peer) => ({ peer, join: 'present', initiate: true })),
        );
        break;
      }
      case 'peer_joined': {
        const p = peerInfo(msg);
        if (p && mySlot !== null) addMember(p, 'new', false);
        break;
      }
      case 'peer_left': {
        // The server's SFU went away: join again, wherever the server places the room now.
        if (msg.peer_id === SFU_PEER) {
          if (sfuConnected || lostSince !== null) sfuLost(0, 'sfu left');
          break;
        }
        const m = members.get(msg.peer_id);
        if (m) memberLeft(m.id, `${m.info?.name ?? canonical(m.attestedName)} left`);
        break;
      }
      case 'signal':
        if (msg.from === SFU_PEER) {
          onSfuSignal(msg.data).catch((err) => end(`the SFU's answer: ${err?.message ?? err}`));
        } else if (members.has(msg.from)) {
          onMemberSignal(members.get(msg.from), msg.data);
        }
        break;
      case 'error':
        if (['no_sfu', 'sfu_refused'].includes(msg.code) && !sfuConnected && lostSince === null) {
          end(`the SFU refused us: ${msg.code}${msg.message ? `: ${msg.message}` : ''}`);
        } else if (['room_full', 'bad_token', 'token_expired', 'server_full'].includes(msg.code)) {
          end(`the server refused: ${msg.code}`);
        }
        break;
      default:
        break;
    }
  }

  $('mute').onclick = () => {
    me.muted = !me.muted;
    call.muted = me.muted;
    track.enabled = !me.muted;
    $('mute').textContent = me.muted ? 'Unmute' : 'Mute';
    tile(me);
    broadcast({ type: 'mute', muted: me.muted });
  };
  call.hangup = async () => {
    if (ended) return;
    await broadcast({ type: 'hangup' });
    end('hung up');
  };
  $('hangup').onclick = () => call.hangup();

  /// Per member: what the worker opened from it (by name), as the engine's `participants`.
  call.stats = async () => {
    const media = await ctx.workerStats();
    const participants = [];
    for (const m of members.values()) {
      if (!m.info || !m.keyed) continue;
      const s = media.group?.senders?.[m.slot] ?? {};
      participants.push({
        name: m.info.name,
        identity: m.info.fingerprint,
        trust: m.info.trust,
        frames_decrypted: s.framesDecrypted ?? 0,
        decrypt_failures: s.decryptFailures ?? 0,
        replays: s.replays ?? 0,
        unknown_key: s.unknownKey ?? 0,
        video_frames_decrypted: s.videoFramesDecrypted ?? 0,
        held: s.held ?? 0,
        speaking: m.speaking,
        muted: m.muted,
      });
    }
    participants.sort((a, b) => (a.name < b.name ? -1 : 1));
    let outbound = null;
    if (pc) {
      for (const s of (await pc.getStats()).values()) {
        if (s.type === 'outbound-rtp' && s.kind === 'audio') outbound = { packetsSent: s.packetsSent };
      }
    }
    return JSON.parse(
      JSON.stringify({
        mode: 'sfu',
        group_safety_code: call.group.code,
        rekeys: call.group.rekeys,
        participants,
        media,
        outbound,
        control: call.control,
        lateHandshakeMessages: call.lateHandshakeMessages,
      }),
    );
  };

  if (moving) {
    joined(moving.slot, moving.iceServers, moving.peers);
    return { onMessage: onServer, lost: (reason) => end(reason) };
  }
  return null;
}
