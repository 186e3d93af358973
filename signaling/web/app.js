// The sotto browser client: UI, signaling, WebRTC and the encrypted control channel.
// Protocol: docs/call-protocol.md (roles, payloads, media, control); the handshake is in
// handshake.js, media encryption in sframe-worker.js. Never joins without end-to-end
// encryption: a browser without RTCRtpScriptTransform is told so and does not connect.
// Video: one VP8 m-line after the audio one, always negotiated (sendrecv: the camera can be
// turned on at any time without renegotiation, by replacing the sender's track).

import { Handshake, normalDtls, sdpMatchesDtls } from './handshake.js';
import {
  checkKnownPeer,
  fingerprint,
  knownPeers,
  loadOrCreateIdentity,
  markVerified,
} from './identity.js';
import { controlKey } from './keys.js';
import { Conversation, MAX_TEXT_BYTES, timerText } from './chat.js';
import { canonical, isMixedScript } from './names.js';
import { SframeReceiver, SframeSender } from './sframe.js';
import { runGroup } from './group.js';
import { IceRestarts, selectedPath } from './restart.js';
import { Trickle, firstCandidate } from './trickle.js';

// A chat message of 4 KiB of text needs up to 6 x that as escaped JSON.
const MAX_CONTROL_MESSAGE = 32 * 1024;
const COUNTDOWN_EVERY_MS = 250;
const GATHER_TIMEOUT_MS = 10_000;
const PING_EVERY_MS = 5_000;
const STATUS_CONNECTED = 'connected: end-to-end encrypted';
const STATUS_UNDECRYPTABLE =
  "connected, but the peer's media cannot be decrypted: keys differ (possible interception)";
const DTLS_MISMATCH =
  "the peer's DTLS fingerprint does not match its handshake (possible interception)";

const $ = (id) => document.getElementById(id);
/// A name in quotes, with quotes and control characters inside it escaped: peers choose names.
const q = (name) => JSON.stringify(String(name));
const t0 = performance.now();

/// What tests and curious people can read: window.sotto.
const call = {
  status: 'starting',
  // 'p2p' or 'sfu' (a group call); `moves` counts moves between the two (group.js).
  mode: 'p2p',
  moves: 0,
  role: null,
  safetyCode: null,
  peer: null, // { id, name (as the server listed it), shown (canonical) }
  muted: false,
  peerMuted: false,
  rttMs: null,
  timings: {}, // ms since page start: joined, established, connected, ended
  control: { sent: 0, received: 0, decryptFailures: 0, droppedNoKey: 0, ignored: 0 },
  handshakeError: null,
  // Handshake messages that arrived after the keys were agreed: ignored, only counted.
  lateHandshakeMessages: 0,
  // The peer's media has failed authentication for a second with nothing decrypting.
  undecryptable: false,
  // 'new' | 'known' | 'verified' | 'changed' | 'renamed' (pinned per canonical name).
  peerTrust: null,
  peerName: null, // The peer's canonical name, once the handshake is done.
  lookalike: null, // A pinned name the peer's name looks like, if any.
  mixedScript: false,
  camera: false, // Our camera is on (sent, sealed, once the call has keys).
  cameraError: null,
  remoteVideo: false, // The peer's video is attached to #remote-video (only once keys exist).
  // ICE restarts (restart.js): reconnecting, iceRestarts, outages [{ lost, restarted, back }].
  restart: {},
  // Text messages (docs/call-protocol.md, "Messages"): the events as `sotto call --chat-json`
  // writes them (a text is null once its message expired), the counters, and send/setTimer.
  chat: { events: [], counters: { sent: 0, received: 0, rejected: 0, expired: 0 }, ttl: null },
};
window.sotto = call;

function setStatus(text) {
  call.status = text;
  $('status').textContent = text;
}

function mark(event) {
  call.timings[event] ??= Math.round(performance.now() - t0);
}

/// Our DTLS certificate and its sha-256 fingerprint in normal form (signed in the handshake).
async function dtlsCertificate() {
  const certificate = await RTCPeerConnection.generateCertificate({
    name: 'ECDSA',
    namedCurve: 'P-256',
  });
  const sha256 = certificate.getFingerprints().find((f) => f.algorithm === 'sha-256');
  const dtls = sha256 ? normalDtls(`sha-256 ${sha256.value}`) : null;
  if (!dtls) throw new Error('the DTLS certificate has no sha-256 fingerprint');
  return { certificate, dtls };
}

/// What is missing for an end-to-end encrypted call here, or null when nothing is.
async function missingSupport() {
  if (typeof RTCPeerConnection !== 'function') return 'WebRTC';
  if (typeof RTCRtpScriptTransform !== 'function') return 'encoded transforms (RTCRtpScriptTransform)';
  if (!globalThis.crypto?.subtle) return 'WebCrypto (a secure context is needed)';
  try {
    await crypto.subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
    await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign']);
  } catch {
    return 'WebCrypto X25519/Ed25519';
  }
  if (!globalThis.indexedDB) return 'IndexedDB';
  return null;
}

function showPeers(peers) {
  const list = $('peers');
  list.replaceChildren(
    ...[...peers.values()].map((p) => {
      const li = document.createElement('li');
      li.textContent = p.id === call.peer?.id && call.peerMuted ? `${p.shown} (muted)` : p.shown;
      return li;
    }),
  );
}

/// The known-peers table: name (canonical), identity fingerprint, trust, first seen.
async function showKnownPeers() {
  const rows = [];
  for (const p of await knownPeers()) {
    const seen = p.firstSeen === null ? '-' : new Date(p.firstSeen).toISOString().slice(0, 16);
    const cells = [p.name, await fingerprint(p.identity), p.verified ? 'verified' : 'unverified', seen];
    const tr = document.createElement('tr');
    for (const text of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    rows.push(tr);
  }
  $('known-peers').replaceChildren(...rows);
}

function waitGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === 'complete') resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, GATHER_TIMEOUT_MS); // Go with the candidates there are.
  });
}

async function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get('room');
  const name = params.get('name') || 'guest';
  // Key rotation interval (docs/handshake.md: 60 s by default); tests shorten it.
  const rotateSecs = Math.max(1, Number(params.get('rotate')) || 60);
  const videoAtJoin = params.get('video') === '1';
  // &relay=1: media only through TURN, so the peer never learns this machine's addresses.
  const relayOnly = params.get('relay') === '1';
  // The STUN and TURN servers the signaling server offers in its welcome.
  let iceServers = [];
  const missing = await missingSupport();
  if (missing) {
    // Never fall back to an unencrypted call.
    setStatus(`unsupported: this browser lacks ${missing}, so it cannot make an end-to-end encrypted call`);
    return;
  }
  if (!room) {
    $('join').hidden = false;
    setStatus('enter a room and a name to join');
    return;
  }
  $('room').textContent = room;
  $('call').hidden = false;

  const identity = await loadOrCreateIdentity();
  const dtls = await dtlsCertificate();
  $('fingerprint').textContent = await fingerprint(identity.publicKey);
  await showKnownPeers();

  setStatus('opening the microphone');
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const track = stream.getAudioTracks()[0];
  let cameraTrack = null;
  if (videoAtJoin) {
    setStatus('opening the camera');
    try {
      cameraTrack = (await navigator.mediaDevices.getUserMedia({ video: true })).getVideoTracks()[0];
    } catch (e) {
      call.cameraError = String(e?.message ?? e); // The call goes on without our video.
    }
  }

  const worker = new Worker('sframe-worker.js', { type: 'module' });
  const workerStats = () =>
    new Promise((resolve) => {
      const onMessage = (e) => {
        if (e.data?.type !== 'stats') return;
        worker.removeEventListener('message', onMessage);
        resolve(e.data.stats);
      };
      worker.addEventListener('message', onMessage);
      worker.postMessage({ type: 'stats' });
    });

  worker.addEventListener('message', (e) => {
    if (e.data?.type !== 'media-state') return;
    call.undecryptable = e.data.undecryptable === true;
    updateConnected();
  });

  // &group=1: a member of a group call through the SFU (group.js), not a two-party call.
  if (params.get('group') === '1') {
    runGroup({
      params,
      room,
      name,
      identity,
      dtls,
      stream,
      track,
      cameraTrack, // the one camera `&video=1` opened, so it is not opened twice
      worker,
      workerStats,
      setStatus,
      mark,
      call,
      offeredIceServers,
    });
    return;
  }

  const roomPeers = new Map();
  let pc = null;
  let restarts = null; // IceRestarts, with the peer connection.
  let channel = null;
  let handshake = null;
  let established = null; // Set once the media keys are installed.
  let videoSender = null;
  let remoteVideoTrack = null;
  let handshakeDone = false;
  // The transport binding (docs/handshake.md): the peer's SDP (offer or answer) and the DTLS
  // fingerprint it signed. The SDP is applied only once it matched, so DTLS never starts
  // with an unchecked fingerprint and a mismatch always ends the call with its own reason.
  let peerSdp = null;
  let peerDtls = null;
  let bindingOk;
  let bound = new Promise((resolve) => {
    bindingOk = resolve;
  });
  function checkBinding() {
    if (peerSdp === null || peerDtls === null || ended) return;
    if (sdpMatchesDtls(peerSdp, peerDtls)) {
      bindingOk();
    } else {
      call.handshakeError = 'DtlsMismatch';
      end(DTLS_MISMATCH);
    }
  }
  let control = null; // { sender, receiver }
  let chat = null; // Conversation, once the keys are agreed.
  // A control frame from the peer authenticated: its end of the channel is open, so chat
  // items sent now are not dropped. Until then they wait here, in order.
  let peerHeard = false;
  const chatOutbox = [];
  let ended = false;
  let hsQueue = Promise.resolve();
  let sdpQueue = Promise.resolve();
  let controlQueue = Promise.resolve();
  let pingId = 0;
  const pingsSent = new Map();

  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  const sendServer = (msg) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ v: 1, ...msg }));
  };
  const signal = (data) => sendServer({ type: 'signal', to: call.peer.id, data });
  // Trickle ICE (docs/call-protocol.md): candidates go as they are found.
  let trickle = new Trickle(signal);
  // Moving between two-party and group calls (docs/call-protocol.md): on a server with an SFU
  // a third person moves everyone to a group call (group.js, on this WebSocket), and down to
  // two we meet peer to peer again. `pairGen` counts two-party calls: work left over from an
  // earlier one checks it and stops.
  let mySlot = null;
  let serverSfu = false;
  let group = null; // runGroup's handle while in a group call
  let pairGen = 0;
  let pairUi = null; // call.hangup and call.stats of two-party calls
  const keepalive = setInterval(() => sendServer({ type: 'ping' }), 20_000);

  /// Ends the call; `before` (a promise) runs before the connections close.
  function end(reason, before = Promise.resolve()) {
    if (ended) return;
    ended = true;
    mark('ended');
    clearInterval(keepalive);
    setStatus(`ended: ${reason}`);
    track.stop();
    cameraTrack?.stop();
    $('mute').disabled = true;
    $('hangup').disabled = true;
    $('camera').disabled = true;
    if (chat) for (const ev of chat.end()) onChatEvent(ev);
    $('chat-input').disabled = true;
    $('timer-select').disabled = true;
    before.finally(() => {
      pc?.close();
      sendServer({ type: 'leave' });
      ws.close();
    });
  }
  const fail = (what) => {
    const gen = pairGen;
    return (e) => {
      if (!ended && gen === pairGen) end(`${what}: ${e?.message ?? e}`);
    };
  };

  function updateConnected() {
    if (!ended && established && pc?.connectionState === 'connected') {
      mark('connected');
      // Never "end-to-end encrypted" while the peer's frames fail authentication.
      setStatus(call.undecryptable ? STATUS_UNDECRYPTABLE : STATUS_CONNECTED);
    }
  }

  // One at a time, so messages leave in the order they were made (mute, then unmute).
  let controlSend = Promise.resolve();
  function sendControl(msg) {
    const next = controlSend.then(async () => {
      if (!control || channel?.readyState !== 'open') return false;
      const frame = await control.sender.encrypt(new TextEncoder().encode(JSON.stringify(msg)));
      channel.send(frame);
      call.control.sent += 1;
      return true;
    });
    controlSend = next.catch(() => false);
    return next;
  }

  async function onControl(data) {
    if (!(data instanceof ArrayBuffer) || data.byteLength > MAX_CONTROL_MESSAGE) {
      call.control.ignored += 1;
      return;
    }
    if (!control) {
      call.control.droppedNoKey += 1;
      return;
    }
    let msg;
    try {
      const { plaintext } = await control.receiver.decrypt(new Uint8Array(data));
      msg = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(plaintext));
    } catch (e) {
      if (e instanceof SyntaxError || e instanceof TypeError) call.control.ignored += 1;
      else call.control.decryptFailures += 1;
      return;
    }
    call.control.received += 1;
    if (!peerHeard) {
      peerHeard = true;
      for (const item of chatOutbox.splice(0)) sendControl(item).catch(() => {});
    }
    if (msg === null || typeof msg !== 'object') return;
    if (['message', 'delivered', 'timer'].includes(msg.type) && chat) {
      const { events, reply } = chat.receive(msg, performance.now());
      for (const ev of events) onChatEvent(ev);
      if (reply) sendChat(reply);
      return;
    }
    if (msg.type === 'mute' && typeof msg.muted === 'boolean') {
      call.peerMuted = msg.muted;
      showPeers(roomPeers);
    } else if (msg.type === 'hangup') {
      end('the peer hung up');
    } else if (msg.type === 'ping' && Number.isSafeInteger(msg.id)) {
      await sendControl({ type: 'pong', id: msg.id });
    } else if (msg.type === 'pong' && pingsSent.has(msg.id)) {
      call.rttMs = Math.round(performance.now() - pingsSent.get(msg.id));
      pingsSent.delete(msg.id);
      $('rtt').textContent = `${call.rttMs} ms`;
    } else {
      call.control.ignored += 1;
    }
  }

  /// Sends a chat item once the peer's end of the control channel is known to be open.
  function sendChat(item) {
    if (peerHeard) sendControl(item).catch(() => {});
    else chatOutbox.push(item);
  }

  /// #chat-log: one .message[data-id] per live message, with a countdown while it has one.
  function chatLine(className, text) {
    const div = document.createElement('div');
    div.className = className;
    div.textContent = text;
    $('chat-log').append(div);
    $('chat-log').scrollTop = $('chat-log').scrollHeight;
    return div;
  }

  function onChatEvent(ev) {
    call.chat.events.push(ev);
    Object.assign(call.chat.counters, chat.counters);
    call.chat.ttl = chat.ttl;
    if (ev.event === 'message' || ev.event === 'sent') {
      const div = document.createElement('div');
      div.className = ev.event === 'sent' ? 'message mine' : 'message';
      div.dataset.id = ev.id;
      const who = Object.assign(document.createElement('span'), {
        className: 'from',
        textContent: ev.event === 'sent' ? 'you' : ev.from,
      });
      const text = Object.assign(document.createElement('span'), {
        className: 'text',
        textContent: ev.text,
      });
      const countdown = Object.assign(document.createElement('span'), { className: 'countdown' });
      div.append(who, ': ', text, countdown);
      $('chat-log').append(div);
      $('chat-log').scrollTop = $('chat-log').scrollHeight;
      showCountdowns();
    } else if (ev.event === 'delivered') {
      $('chat-log').querySelector(`.message[data-id="${ev.id}"]`)?.classList.add('delivered');
    } else if (ev.event === 'undelivered') {
      const div = $('chat-log').querySelector(`.message[data-id="${ev.id}"]`);
      div?.classList.add('undelivered');
      div?.append(' (not delivered)');
    } else if (ev.event === 'expired') {
      // Gone from the page and from the events kept here.
      $('chat-log').querySelector(`.message[data-id="${ev.id}"]`)?.remove();
      for (const old of call.chat.events) if (old.id === ev.id && 'text' in old) old.text = null;
    } else if (ev.event === 'timer') {
      $('timer-select').value = ev.ttl_s === null ? '' : String(ev.ttl_s);
      const who = ev.from === name ? 'you' : ev.from;
      chatLine(
        'notice',
        ev.ttl_s === null
          ? `${who} turned disappearing messages off`
          : `${who} set messages to disappear after ${timerText(ev.ttl_s)}`,
      );
    } else if (ev.event === 'rejected') {
      chatLine('notice', `refused a message from the peer: ${ev.reason}`);
    }
  }

  /// Expires what is due and shows the seconds left of the rest.
  function showCountdowns() {
    if (!chat) return;
    const now = performance.now();
    for (const ev of chat.poll(now)) onChatEvent(ev);
    for (const m of chat.live.values()) {
      if (m.expires === null) continue;
      const div = $('chat-log').querySelector(`.message[data-id="${m.id}"] .countdown`);
      if (div) div.textContent = ` (${Math.max(0, Math.ceil((m.expires - now) / 1000))} s)`;
    }
  }
  setInterval(showCountdowns, COUNTDOWN_EVERY_MS);

  function chatError(text) {
    $('chat-error').textContent = text;
    call.chat.events.push({ event: 'error', reason: text });
  }

  call.chat.send = (text) => {
    if (!chat || ended) return chatError('the call is not connected'), false;
    const { wire, event, error } = chat.send(text, performance.now());
    if (error) return chatError(error), false;
    $('chat-error').textContent = '';
    onChatEvent(event);
    sendChat(wire);
    return event.id;
  };
  call.chat.setTimer = (ttl) => {
    if (!chat || ended) return chatError('the call is not connected'), false;
    const { wire, event, error } = chat.setTimer(ttl);
    if (error) return chatError(error), false;
    onChatEvent(event);
    sendChat(wire);
    return true;
  };
  $('chat-form').onsubmit = (e) => {
    e.preventDefault();
    const input = $('chat-input');
    if (call.chat.send(input.value) !== false) input.value = '';
  };
  $('timer-select').onchange = () => {
    const v = $('timer-select').value;
    call.chat.setTimer(v === '' ? null : Number(v));
  };
  $('chat-input').maxLength = MAX_TEXT_BYTES;

  let peerKey = null; // The peer's identity key, for mark-verified.

  /// #peer-trust (the trust word) and #trust-warning (as prominent as the CLI's warning).
  function showTrustWarning(known) {
    const name = call.peerName;
    $('peer-trust').textContent = known.trust;
    $('peer-trust').className = known.trust;
    const warning = [];
    const notes = [];
    if (known.trust === 'changed' && known.lookalike) {
      warning.push(
        `WARNING: ${q(name)} looks like ${q(known.lookalike)}, a known peer with another identity (${known.previous}). Someone may be imitating them or be in the middle of this call. Compare the safety code over another channel before you talk.`,
      );
    } else if (known.trust === 'changed') {
      warning.push(
        `WARNING: IDENTITY CHANGED: ${q(name)} presents another identity than the one pinned (${known.previous}): someone may be in the middle. Compare the safety code over another channel before you talk.`,
      );
    } else if (known.lookalike) {
      notes.push(`Note: ${q(name)} looks like ${q(known.lookalike)}, which has the same identity.`);
    }
    if (known.trust === 'renamed') {
      notes.push(`Note: this identity was known as ${q(known.previousName)}.`);
    }
    if (call.mixedScript) {
      notes.push(
        `Note: ${q(name)} mixes writing systems (for example Latin and Cyrillic), as lookalike names do.`,
      );
    }
    const box = $('trust-warning');
    box.replaceChildren(
      ...warning.map((text) => Object.assign(document.createElement('p'), { textContent: text })),
      ...notes.map((text) =>
        Object.assign(document.createElement('p'), { textContent: text, className: 'note' }),
      ),
    );
    box.hidden = warning.length + notes.length === 0;
  }

  /// Known peers (identity.js): pins a new peer, reports a changed or lookalike one.
  async function showTrust(done) {
    call.peerName = canonical(done.peerName);
    call.mixedScript = isMixedScript(call.peerName);
    peerKey = Uint8Array.from(done.peerIdentity);
    const known = await checkKnownPeer(call.peerName, peerKey);
    showTrustWarning(known);
    $('mark-verified').disabled = known.trust === 'verified';
    await showKnownPeers();
    // Set last: once the trust is known, the warning and the known-peers table show it too.
    call.lookalike = known.lookalike ?? null;
    call.peerTrust = known.trust;
  }

  $('mark-verified').onclick = async () => {
    if (!peerKey || !call.peerName) return;
    $('mark-verified').disabled = true;
    try {
      await markVerified(call.peerName, peerKey);
    } catch (e) {
      $('mark-verified').disabled = false; // Nothing changed: people can try again.
      console.error('could not mark the peer verified', e);
      return;
    }
    showTrustWarning({ trust: 'verified' });
    await showKnownPeers();
    call.lookalike = null;
    call.peerTrust = 'verified';
  };

  /// The handshake is done: check the peer's name against the server's attestation and, once
  /// its SDP is known, its DTLS fingerprint; show the code and trust; only then install the
  /// media and control keys.
  async function onEstablished(done) {
    const gen = pairGen;
    const stale = () => ended || gen !== pairGen;
    mark('established');
    // docs/call-protocol.md, "Names": the name the server listed for this peer must be the
    // name it signed, after canonicalisation; otherwise no media.
    const listed = canonical(call.peer.name);
    const claimed = canonical(done.peerName);
    if (listed !== claimed) {
      call.handshakeError = 'PeerNotTrusted';
      end(`the peer joined as ${q(listed)} but claims ${q(claimed)}`);
      return;
    }
    peerDtls = done.peerDtls;
    checkBinding();
    if (ended) return;
    call.safetyCode = done.safetyCode;
    $('safety-code').textContent = done.safetyCode;
    $('peer-fingerprint').textContent = await fingerprint(done.peerIdentity);
    await showTrust(done);
    await bound;
    if (stale()) return;
    const sendControlKey = await controlKey(done.sendKey);
    const recvControlKey = await controlKey(done.recvKey);
    const receiver = new SframeReceiver();
    await receiver.addKey(BigInt(done.recvDirection), recvControlKey);
    control = {
      sender: await SframeSender.create(sendControlKey, BigInt(done.sendDirection)),
      receiver,
    };
    sendControlKey.fill(0);
    recvControlKey.fill(0);
    chat = new Conversation(name, call.peerName, canonical);
    $('chat-input').disabled = false;
    $('timer-select').disabled = false;
    // The worker gets copies (transferred); ours are erased.
    const send = Uint8Array.from(done.sendKey);
    const recv = Uint8Array.from(done.recvKey);
    done.sendKey.fill(0);
    done.recvKey.fill(0);
    const installed = new Promise((resolve) => {
      const onMessage = (e) => {
        if (e.data?.type !== 'keys-installed') return;
        worker.removeEventListener('message', onMessage);
        resolve(e.data);
      };
      worker.addEventListener('message', onMessage);
    });
    worker.postMessage(
      {
        type: 'keys',
        send,
        recv,
        sendDirection: done.sendDirection,
        recvDirection: done.recvDirection,
        rotateMs: rotateSecs * 1000,
      },
      [send.buffer, recv.buffer],
    );
    const result = await installed;
    if (stale()) return;
    if (!result.ok) throw new Error(`media keys not installed: ${result.error}`);
    established = done; // Only now may the status say "connected": media keys are in place.
    attachRemoteVideo();
    setStatus('keys agreed; connecting media');
    if (channel.readyState === 'open') onChannelOpen();
    updateConnected();
  }

  function onChannelOpen() {
    if (!control) return; // Runs again once the keys exist.
    if (call.muted) sendControl({ type: 'mute', muted: true }).catch(() => {});
    const ping = () => {
      pingId += 1;
      pingsSent.set(pingId, performance.now());
      sendControl({ type: 'ping', id: pingId }).catch(() => {});
    };
    ping();
    const gen = pairGen;
    const timer = setInterval(() => (ended || gen !== pairGen ? clearInterval(timer) : ping()), PING_EVERY_MS);
  }

  async function onHandshake(message) {
    if (handshakeDone) {
      // docs/call-protocol.md: never acted on, so nobody can end an established call with one.
      call.lateHandshakeMessages += 1;
      return;
    }
    if (!handshake || handshake.closed) return;
    let step;
    try {
      step = await handshake.handle(message);
    } catch (e) {
      call.handshakeError = e.code ?? String(e);
      throw e;
    }
    if (step.send) signal({ kind: 'handshake', message: step.send });
    if (step.established) {
      handshakeDone = true;
      // Not awaited: it waits for the peer's SDP, and late messages must still be counted.
      onEstablished(step.established).catch(fail('call setup failed'));
    }
  }

  // Both transforms go on before any description is applied: Chrome short-circuits encoded
  // streams that have no transform once negotiation runs, and a later transform is ignored.
  // The responder's addTrack happens before the offer too, so the offer's m-line reuses it.
  // Video likewise: a transceiver made by addTrack is the one a remote offer's video m-line
  // reuses, so without a camera a placeholder track makes it and is replaced by none at once.
  function addSender() {
    const sender = pc.addTrack(track, stream);
    sender.transform = new RTCRtpScriptTransform(worker, { side: 'send' });
    const transceiver = pc.getTransceivers().find((t) => t.sender === sender);
    transceiver.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'recv' });

    const placeholder = cameraTrack ? null : placeholderVideoTrack();
    videoSender = pc.addTrack(cameraTrack ?? placeholder, stream);
    videoSender.transform = new RTCRtpScriptTransform(worker, { side: 'send', kind: 'video' });
    const video = pc.getTransceivers().find((t) => t.sender === videoSender);
    video.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'recv', kind: 'video' });
    // VP8 only: the encryption layout keeps VP8's header in the clear (docs/call-protocol.md).
    const codecs = (RTCRtpReceiver.getCapabilities('video')?.codecs ?? []).filter((c) =>
      /^video\/(vp8|rtx)$/i.test(c.mimeType),
    );
    if (!codecs.some((c) => /^video\/vp8$/i.test(c.mimeType))) {
      throw new Error('this browser has no VP8');
    }
    video.setCodecPreferences(codecs);
    if (placeholder) {
      videoSender.replaceTrack(null).catch(() => {});
      placeholder.stop();
    }
  }

  /// A video track that never has a frame: only there to create the video transceiver.
  function placeholderVideoTrack() {
    const canvas = document.createElement('canvas');
    canvas.width = 2;
    canvas.height = 2;
    return canvas.captureStream(0).getVideoTracks()[0];
  }

  /// The peer's video goes to #remote-video only once media keys exist (nothing before them
  /// could be shown anyway: the worker drops every frame until then).
  function attachRemoteVideo() {
    if (!established || !remoteVideoTrack || call.remoteVideo) return;
    const video = $('remote-video');
    video.srcObject = new MediaStream([remoteVideoTrack]);
    video.play().catch(() => {});
    call.remoteVideo = true;
  }

  function showLocalVideo() {
    const preview = $('local-video');
    preview.srcObject = cameraTrack ? new MediaStream([cameraTrack]) : null;
    if (cameraTrack) preview.play().catch(() => {});
    $('camera').textContent = cameraTrack ? 'Camera off' : 'Camera on';
    call.camera = cameraTrack !== null;
  }

  /// Turns the camera on or off during the call: the sender's track is replaced, with no
  /// renegotiation (the video m-line is always there).
  async function setCamera(on) {
    // Not during a group call: group.js sends the camera it was given as it is.
    if (ended || group || on === (cameraTrack !== null)) return;
    if (on) {
      let next;
      try {
        next = (await navigator.mediaDevices.getUserMedia({ video: true })).getVideoTracks()[0];
      } catch (e) {
        call.cameraError = String(e?.message ?? e);
        return;
      }
      if (ended || cameraTrack) {
        next.stop();
        return;
      }
      cameraTrack = next;
      call.cameraError = null;
      await videoSender?.replaceTrack(cameraTrack);
    } else {
      const old = cameraTrack;
      cameraTrack = null;
      await videoSender?.replaceTrack(null);
      old.stop();
    }
    showLocalVideo();
  }

  // A transform that was not applied would send Opus in the clear, or play ciphertext: if
  // packets flow but none went through SFrame, the call ends.
  async function checkTransforms() {
    if (ended || !pc) return;
    const s = await call.stats();
    const m = s.media;
    if ((s.outbound?.packetsSent ?? 0) > 50 && m.encrypted === 0 && m.sendDroppedNoKey === 0) {
      end('media bypassed encryption; call ended');
    }
    const seen = m.decrypted + m.decryptFailures + m.recvDroppedNoKey + m.padding;
    if ((s.inbound?.packetsReceived ?? 0) > 50 && seen === 0) {
      end('incoming media bypassed decryption; call ended');
    }
    const v = m.video;
    const sent = v.sealed + v.sendDroppedNoKey + v.sendErrors + v.notVp8 + v.padding;
    if ((s.videoOutbound?.packetsSent ?? 0) > 50 && sent === 0) {
      end('video bypassed encryption; call ended');
    }
    const opened =
      v.opened + v.failed + v.duplicates + v.recvDroppedNoKey + v.padding + v.reorderRejected;
    if ((s.videoInbound?.packetsReceived ?? 0) > 50 && opened === 0) {
      end('incoming video bypassed decryption; call ended');
    }
    showVideoStats(s);
  }

  // The welcome's ice_servers, checked as the engine checks them (signaling/PROTOCOL.md).
  function offeredIceServers(list) {
    if (!Array.isArray(list) || list.length > 8) return [];
    const text = (v) => typeof v === 'string' && v.length <= 512;
    const out = [];
    for (const s of list) {
      if (!s || !Array.isArray(s.urls) || !s.urls.length || s.urls.length > 4) return [];
      if (!s.urls.every((u) => text(u) && /^(stun|stuns|turn|turns):/.test(u))) return [];
      const server = { urls: s.urls };
      if (s.username !== undefined || s.credential !== undefined) {
        if (!text(s.username) || !text(s.credential)) return [];
        server.username = s.username;
        server.credential = s.credential;
      }
      out.push(server);
    }
    return out;
  }

  function startCall(role, peer) {
    call.role = role;
    call.peer = peer;
    setStatus(`handshake with ${peer.shown}`);
    // Our own certificate: its fingerprint is the one we sign in the handshake.
    if (relayOnly && !iceServers.some((s) => s.urls.some((u) => /^turns?:/.test(u)))) {
      end('relay-only needs a TURN server, and the signaling server offers none');
      return;
    }
    pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: relayOnly ? 'relay' : 'all',
      certificates: [dtls.certificate],
    });
    const conn = pc;
    const gen = pairGen;
    pc.ontrack = (e) => {
      if (pc !== conn) return;
      const kind = e.track.kind === 'video' ? 'video' : 'audio';
      if (!e.receiver.transform) {
        // Not expected (addSender covers our two m-lines); checkTransforms guards it.
        e.receiver.transform = new RTCRtpScriptTransform(worker, { side: 'recv', kind });
      }
      if (kind === 'video') {
        remoteVideoTrack = e.track;
        attachRemoteVideo();
        return;
      }
      const audio = $('remote-audio');
      audio.srcObject = new MediaStream([e.track]);
      audio.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc !== conn) return; // A two-party call we left for a group call.
      // Once connected, a failed path is the restarts' to repair (or give up on).
      if (pc.connectionState === 'failed' && !restarts?.connectedOnce) end('the connection failed');
      updateConnected();
    };
    pc.onicecandidate = (e) => pc === conn && trickle.onLocal(e);
    restarts = watchRestarts(role);
    const guard = setInterval(() => (ended || gen !== pairGen ? clearInterval(guard) : checkTransforms()), 2000);
    channel = pc.createDataChannel('sotto-control', { negotiated: true, id: 0, ordered: true });
    channel.binaryType = 'arraybuffer';
    channel.onopen = () => gen === pairGen && onChannelOpen();
    channel.onmessage = (e) => {
      if (gen !== pairGen) return;
      controlQueue = controlQueue.then(() => onControl(e.data)).catch(() => {});
    };
    if (role === 'initiator') {
      hsQueue = hsQueue.then(async () => {
        const started = await Handshake.initiator(identity, room, name, dtls.dtls);
        handshake = started.handshake;
        signal({ kind: 'handshake', message: started.hello });
      });
      hsQueue.catch(fail('handshake failed'));
      sdpQueue = hsQueue.then(async () => {
        addSender();
        // Before the offer, so the peer may answer at once.
        signal({ kind: 'trickle' });
        await pc.setLocalDescription(await pc.createOffer());
        await firstCandidate(pc);
        checkOwnSdp();
        signal({ kind: 'offer', sdp: pc.localDescription.sdp });
        trickle.sent();
      });
      sdpQueue.catch(fail('could not offer'));
    } else {
      handshake = Handshake.responder(identity, room, name, dtls.dtls);
    }
  }

  // One of the peer's candidates, queued behind the descriptions; a refused one is not fatal.
  function addPeerCandidate(init) {
    sdpQueue = sdpQueue.then(() => pc.addIceCandidate(init).catch(() => {}));
  }

  // Our SDP must carry the fingerprint we sign, or the peer would (rightly) end the call.
  function checkOwnSdp() {
    if (!sdpMatchesDtls(pc.localDescription.sdp, dtls.dtls)) {
      throw new Error('the browser did not use the certificate whose fingerprint we sign');
    }
  }

  function onSignal(from, data) {
    if (!call.peer || from !== call.peer.id || ended) return; // A third peer: ignored.
    if (data === null || typeof data !== 'object') return;
    const gen = pairGen;
    if (data.kind === 'handshake') {
      hsQueue = hsQueue.then(() => gen === pairGen && onHandshake(data.message));
      hsQueue.catch(fail('handshake failed'));
    } else if (data.kind === 'trickle') {
      trickle.peerSaidTrickle();
    } else if (data.kind === 'candidate') {
      // After the description it belongs to; one that does not apply costs nothing.
      trickle.onCandidate(data, addPeerCandidate);
    } else if (data.kind === 'offer' && call.role === 'responder' && typeof data.sdp === 'string') {
      if (peerSdp !== null) return restarts.onOffer(data.sdp); // An ICE restart.
      peerSdp = data.sdp;
      checkBinding();
      trickle.peerDescribed();
      const trickling = trickle.peerTrickles;
      if (trickling) signal({ kind: 'trickle' });
      sdpQueue = sdpQueue.then(async () => {
        await bound;
        if (gen !== pairGen) return;
        addSender();
        await pc.setRemoteDescription({ type: 'offer', sdp: data.sdp });
        trickle.applied(data.sdp).forEach(addPeerCandidate);
        await pc.setLocalDescription(await pc.createAnswer());
        // A peer that does not trickle gets a complete answer, as before.
        await (trickling ? firstCandidate(pc) : waitGathered(pc));
        checkOwnSdp();
        signal({ kind: 'answer', sdp: pc.localDescription.sdp });
        if (trickling) trickle.sent();
        restarts.firstAnswerSent(data.sdp);
      });
      sdpQueue.catch(fail('could not answer'));
    } else if (data.kind === 'answer' && call.role === 'initiator' && typeof data.sdp === 'string') {
      if (peerSdp !== null) return restarts.onAnswer(data.sdp); // To an ICE restart.
      peerSdp = data.sdp;
      checkBinding();
      trickle.peerDescribed();
      sdpQueue = sdpQueue.then(async () => {
        await bound;
        if (gen !== pairGen) return;
        await pc.setRemoteDescription({ type: 'answer', sdp: data.sdp });
        trickle.applied(data.sdp).forEach(addPeerCandidate);
      });
      sdpQueue.catch(fail('could not accept the answer'));
    } else if (data.kind === 'can_restart') {
      restarts.onCanRestart();
    }
  }

  /// ICE restarts on this call's peer connection (restart.js), after the SDP work before.
  function watchRestarts(role) {
    const conn = pc;
    return new IceRestarts({
      pc,
      role,
      signal,
      peerDtls: () => peerDtls,
      checkOwnSdp,
      queue: (fn) => {
        sdpQueue = sdpQueue.then(fn, () => {});
      },
      ended: () => ended || pc !== conn,
      end,
      onMismatch: () => {
        call.handshakeError = 'DtlsMismatch';
        end(DTLS_MISMATCH);
      },
      setStatus,
      onBack: updateConnected,
      // A restart's description applied: its generation's candidates that came early.
      remoteApplied: (sdp) => trickle.applied(sdp).forEach(addPeerCandidate),
      peerTrickles: () => trickle.peerTrickles === true,
      state: call.restart,
    });
  }

  ws.onopen = () => {
    setStatus('joining');
    // Servers with a secret need a join token (signaling/PROTOCOL.md): `&token=...`.
    const token = params.get('token');
    sendServer({ type: 'join', room, name, ...(token ? { token } : {}) });
  };
  ws.onclose = () => {
    if (group) group.lost('lost the signaling server');
    else if (!ended) end('lost the signaling server');
  };

  const validSlot = (slot) => Number.isInteger(slot) && slot >= 0 && slot <= 127;
  /// Whether a third person moves this call to the SFU (as the engine's can_move_to_group):
  /// the server hosts one and the room gave slots. Our camera moves with us.
  const canMove = (p) => serverSfu && mySlot !== null && validSlot(p.slot);

  /// Two-party media stops (the peer connection closes 3 s later, so the peer does not take
  /// the move for a failure) and the pair's state is new for the next two-party call.
  function leavePair() {
    const old = pc;
    if (old) {
      for (const sender of old.getSenders()) sender.replaceTrack(null).catch(() => {});
      setTimeout(() => old.close(), 3000);
    }
    $('remote-audio').srcObject = null;
    $('remote-video').srcObject = null;
    if (chat) for (const ev of chat.end()) onChatEvent(ev);
    $('chat-input').disabled = true;
    $('timer-select').disabled = true;
    pairGen += 1;
    pc = null;
    restarts = null;
    channel = null;
    handshake = null;
    established = null;
    videoSender = null;
    remoteVideoTrack = null;
    handshakeDone = false;
    peerSdp = null;
    peerDtls = null;
    bound = new Promise((resolve) => {
      bindingOk = resolve;
    });
    control = null;
    chat = null;
    peerHeard = false;
    chatOutbox.length = 0;
    hsQueue = Promise.resolve();
    sdpQueue = Promise.resolve();
    controlQueue = Promise.resolve();
    controlSend = Promise.resolve();
    pingsSent.clear();
    trickle = new Trickle(signal);
    peerKey = null;
    Object.assign(call, {
      role: null,
      peer: null,
      safetyCode: null,
      peerMuted: false,
      rttMs: null,
      remoteVideo: false,
      undecryptable: false,
      peerTrust: null,
      peerName: null,
      lookalike: null,
      mixedScript: false,
    });
    call.restart = {};
    $('safety-code').textContent = '-';
    $('safety-code').classList.remove('changed');
    $('peer-fingerprint').textContent = '-';
    $('peer-trust').textContent = '-';
    $('rtt').textContent = '-';
    $('trust-warning').hidden = true;
  }

  /// Into the group call (group.js) on this WebSocket, with `roster` ({ peer, join, initiate }).
  function enterGroup(roster, fromPair) {
    call.moves += 1;
    setStatus(fromPair ? 'a third person joined: moving to a group call' : 'joining the group call');
    group = runGroup({
      params,
      room,
      name,
      identity,
      dtls,
      stream,
      track,
      // The camera as it is now (null when off): group.js sends it and hands it back on
      // the way back to two-party; it opens none of its own in a moved call.
      cameraTrack,
      worker,
      workerStats,
      setStatus,
      mark,
      call,
      offeredIceServers,
      join: {
        ws,
        slot: mySlot,
        iceServers,
        fromPair,
        peers: roster.map((r) => ({
          ...r,
          peer: { id: r.peer.id, name: r.peer.name, slot: r.peer.slot, group: r.peer.group === true },
        })),
        onPair: backToPair,
      },
    });
  }

  /// The group is down to one other member: meet it again peer to peer, with a new handshake
  /// and a new peer connection; the higher slot starts (as a joiner would).
  function backToPair(peer) {
    group = null;
    call.moves += 1;
    call.mode = 'p2p';
    call.safetyCode = null;
    delete call.group;
    Object.assign(call, pairUi);
    $('mute').onclick = pairMute;
    $('hangup').onclick = () => call.hangup();
    const other = { ...peer, shown: canonical(peer.name) };
    startCall(mySlot > peer.slot ? 'initiator' : 'responder', other);
  }

  ws.onmessage = (e) => {
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== 'object' || msg.v !== 1) return;
    const peerInfo = (p) =>
      p && typeof p.peer_id === 'string' && typeof p.name === 'string'
        ? { id: p.peer_id, name: p.name, shown: canonical(p.name), slot: p.slot, group: p.group === true }
        : null;
    if (msg.type === 'peer_joined' && peerInfo(msg)) roomPeers.set(msg.peer_id, peerInfo(msg));
    if (msg.type === 'peer_left') roomPeers.delete(msg.peer_id);
    if (group) {
      group.onMessage(msg);
      return;
    }
    switch (msg.type) {
      case 'welcome': {
        mark('joined');
        iceServers = offeredIceServers(msg.ice_servers);
        serverSfu = msg.sfu === true;
        mySlot = validSlot(msg.slot) ? msg.slot : null;
        roomPeers.set(msg.peer_id, { id: msg.peer_id, shown: `${canonical(name)} (you)` });
        const peers = Array.isArray(msg.peers) ? msg.peers.map(peerInfo).filter(Boolean) : [];
        for (const p of peers) roomPeers.set(p.id, p);
        showPeers(roomPeers);
        if ((peers.length >= 2 || peers.some((p) => p.group)) && peers.every(canMove)) {
          // Two or more are here already, or a member always in the group call (`--group`,
          // `&group=1`): a group call, and we start every pair.
          enterGroup(peers.map((peer) => ({ peer, join: 'present', initiate: true })), false);
        } else if (peers.length) startCall('initiator', peers[0]);
        else setStatus('waiting for someone to join');
        break;
      }
      case 'peer_joined': {
        const p = peerInfo(msg);
        if (!p) break;
        showPeers(roomPeers);
        if (ended) break;
        if (!call.peer && p.group && canMove(p)) {
          // A member always in the group call joined us: we meet it on the SFU (it starts).
          enterGroup([{ peer: p, join: 'new', initiate: false }], false);
        } else if (!call.peer) startCall('responder', p);
        else if (canMove(p) && canMove(call.peer)) {
          // A third person: everyone moves to the SFU with new keys.
          const partner = call.peer;
          leavePair();
          enterGroup(
            [
              { peer: partner, join: 'present', initiate: mySlot > partner.slot },
              { peer: p, join: 'new', initiate: false },
            ],
            true,
          );
        }
        break;
      }
      case 'peer_left':
        showPeers(roomPeers);
        if (msg.peer_id === call.peer?.id) end('the peer left');
        break;
      case 'signal':
        onSignal(msg.from, msg.data);
        break;
      case 'error':
        if (['room_full', 'bad_token', 'token_expired', 'server_full'].includes(msg.code)) {
          end(`the server refused: ${msg.code}`);
        }
        break;
      default:
        break;
    }
  };

  const pairMute = () => {
    call.muted = !call.muted;
    track.enabled = !call.muted;
    $('mute').textContent = call.muted ? 'Unmute' : 'Mute';
    sendControl({ type: 'mute', muted: call.muted }).catch(() => {});
  };
  $('mute').onclick = pairMute;
  $('hangup').onclick = () => call.hangup();
  $('camera').onclick = () => {
    setCamera(!cameraTrack).catch(() => {});
  };
  call.setCamera = (on) => setCamera(Boolean(on));
  showLocalVideo();

  /// #video-stats: what the worker sealed and opened, and what was decoded.
  function showVideoStats(s) {
    const v = s.media.video;
    const size = s.videoInbound?.frameWidth
      ? `${s.videoInbound.frameWidth}x${s.videoInbound.frameHeight}`
      : '-';
    $('video-stats').textContent =
      `sent ${v.sealed} (${v.keyframesSent} key), received ${v.opened} (${v.keyframesReceived} key), ` +
      `failed ${v.failed}, ${size}`;
  }

  call.hangup = async () => {
    if (ended) return;
    let sent = false;
    try {
      sent = await sendControl({ type: 'hangup' });
    } catch {
      // Ending anyway; the peer learns from peer_left.
    }
    // Let the message leave before the connection closes.
    const drained = (async () => {
      const until = performance.now() + 1000;
      while (sent && channel.bufferedAmount > 0 && performance.now() < until) {
        await new Promise((r) => setTimeout(r, 20));
      }
      if (sent) await new Promise((r) => setTimeout(r, 250));
    })();
    end('hung up', drained);
    await drained;
  };

  /// Everything the tests check: SFrame counters from the worker and WebRTC's own stats.
  call.stats = async () => {
    const out = {
      media: await workerStats(),
      inbound: null,
      outbound: null,
      videoInbound: null,
      videoOutbound: null,
    };
    if (pc) {
      const report = await pc.getStats();
      out.path = selectedPath(report);
      out.restart = call.restart;
      for (const s of report.values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          out.inbound = {
            packetsReceived: s.packetsReceived,
            totalAudioEnergy: s.totalAudioEnergy,
            totalSamplesReceived: s.totalSamplesReceived,
            concealedSamples: s.concealedSamples,
          };
        } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
          out.outbound = { packetsSent: s.packetsSent };
        } else if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.videoInbound = {
            packetsReceived: s.packetsReceived,
            framesReceived: s.framesReceived,
            framesDecoded: s.framesDecoded,
            keyFramesDecoded: s.keyFramesDecoded,
            frameWidth: s.frameWidth,
            frameHeight: s.frameHeight,
            framesPerSecond: s.framesPerSecond,
            freezeCount: s.freezeCount,
            totalFreezesDuration: s.totalFreezesDuration,
            pliCount: s.pliCount,
            firCount: s.firCount,
            decoderImplementation: s.decoderImplementation,
          };
        } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
          out.videoOutbound = {
            packetsSent: s.packetsSent,
            framesEncoded: s.framesEncoded,
            keyFramesEncoded: s.keyFramesEncoded,
            frameWidth: s.frameWidth,
            frameHeight: s.frameHeight,
            pliCount: s.pliCount,
            firCount: s.firCount,
            qualityLimitationReason: s.qualityLimitationReason,
            encoderImplementation: s.encoderImplementation,
          };
        }
      }
    }
    return JSON.parse(
      JSON.stringify({
        ...out,
        control: call.control,
        lateHandshakeMessages: call.lateHandshakeMessages,
      }),
    );
  };
  // What a group call replaces and a move back to two-party restores.
  pairUi = { hangup: call.hangup, stats: call.stats };
}

main().catch((e) => setStatus(`error: ${e?.message ?? e}`));
