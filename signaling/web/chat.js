// Text messages with disappearing timers: the browser's side of docs/call-protocol.md,
// "Messages". No I/O here: a Conversation takes what we send and what the peer's sealed
// control channel delivers, with the time, and gives back what to send and events; expiry
// runs from poll(now). Times are performance.now() milliseconds (monotonic): a message
// expires at its send or receipt time plus its TTL, and the sender's clock is never used.

export const MAX_TEXT_BYTES = 4096;
export const MIN_TTL_S = 5;
export const MAX_TTL_S = 86_400;
const SEEN_IDS = 4096;
const ID_RE = /^[0-9a-f]{32}$/;

/// UTF-8 length of a string.
export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/// Checks a TTL in seconds: null (off) or an integer in 5..86400.
export function validTtl(ttl) {
  return ttl === null || (Number.isSafeInteger(ttl) && ttl >= MIN_TTL_S && ttl <= MAX_TTL_S);
}

/// "30 s", "5 min", "1 h", or "off".
export function timerText(ttl) {
  if (ttl === null) return 'off';
  if (ttl % 3600 === 0) return `${ttl / 3600} h`;
  if (ttl % 60 === 0) return `${ttl / 60} min`;
  return `${ttl} s`;
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class Conversation {
  /// `me`: the name we send as `from`; `peer`: the authenticated peer's canonical name;
  /// `canonical`: the name canonicalisation (names.js).
  constructor(me, peer, canonical) {
    this.me = me;
    this.peer = peer;
    this.canonical = canonical;
    this.ttl = null;
    this.nextSeq = 1;
    this.peerSeq = 0;
    this.seen = new Set();
    this.pending = new Set();
    // id -> { id, from (null: ours), text, ttl, expires (ms or null) }
    this.live = new Map();
    this.counters = { sent: 0, received: 0, rejected: 0, expired: 0 };
  }

  /// Sends `text` at `now`: { wire, event } or { error }.
  send(text, now) {
    if (typeof text !== 'string' || text.length === 0) return { error: 'message is empty' };
    const len = utf8Length(text);
    if (len > MAX_TEXT_BYTES) {
      return { error: `message too long: ${len} bytes (at most ${MAX_TEXT_BYTES})` };
    }
    const id = randomId();
    const ttl = this.ttl;
    this.live.set(id, { id, from: null, text, ttl, expires: ttl === null ? null : now + ttl * 1000 });
    this.pending.add(id);
    this.counters.sent += 1;
    return {
      wire: { type: 'message', id, seq: this.nextSeq++, from: this.me, text, ttl_s: ttl },
      event: { event: 'sent', id, text, ttl_s: ttl },
    };
  }

  /// Sets our timer: { wire, event } or { error }.
  setTimer(ttl) {
    if (!validTtl(ttl)) {
      return { error: `disappearing timer must be off or between 5 s and 24 h, got ${ttl}` };
    }
    this.ttl = ttl;
    return {
      wire: { type: 'timer', seq: this.nextSeq++, from: this.me, ttl_s: ttl },
      event: { event: 'timer', from: this.me, ttl_s: ttl },
    };
  }

  /// Handles an item from the peer (already authenticated): { events, reply }.
  receive(msg, now) {
    const events = [];
    const reject = (reason) => {
      this.counters.rejected += 1;
      events.push({ event: 'rejected', reason });
      return { events, reply: null };
    };
    if (msg.type === 'delivered') {
      if (typeof msg.id === 'string' && this.pending.delete(msg.id)) {
        events.push({ event: 'delivered', id: msg.id, to: this.peer });
      }
      return { events, reply: null };
    }
    const fromPeer = typeof msg.from === 'string' && this.canonical(msg.from) === this.peer;
    const seqOk = Number.isSafeInteger(msg.seq) && msg.seq > this.peerSeq;
    if (msg.type === 'timer') {
      if (!fromPeer) return reject('message claims another sender');
      if (msg.ttl_s === undefined || !validTtl(msg.ttl_s)) return reject('message timer out of range');
      if (!seqOk) return reject('replayed or reordered message');
      this.peerSeq = msg.seq;
      this.ttl = msg.ttl_s;
      events.push({ event: 'timer', from: this.peer, ttl_s: msg.ttl_s });
      return { events, reply: null };
    }
    // A message.
    if (typeof msg.id !== 'string' || !ID_RE.test(msg.id) || typeof msg.text !== 'string') {
      return reject('malformed message');
    }
    if (utf8Length(msg.text) > MAX_TEXT_BYTES) return reject('message too long');
    if (msg.text.length === 0) return reject('malformed message');
    const ttl = msg.ttl_s === undefined ? null : msg.ttl_s;
    if (!validTtl(ttl)) return reject('message timer out of range');
    if (!fromPeer) return reject('message claims another sender');
    if (!seqOk) return reject('replayed or reordered message');
    if (this.seen.has(msg.id)) return reject('duplicate message id');
    this.peerSeq = msg.seq;
    this.seen.add(msg.id);
    if (this.seen.size > SEEN_IDS) this.seen.delete(this.seen.values().next().value);
    this.live.set(msg.id, {
      id: msg.id,
      from: this.peer,
      text: msg.text,
      ttl,
      expires: ttl === null ? null : now + ttl * 1000,
    });
    this.counters.received += 1;
    events.push({
      event: 'message',
      id: msg.id,
      from: this.peer,
      text: msg.text,
      ttl_s: ttl,
      received_at: Date.now(),
    });
    return { events, reply: { type: 'delivered', id: msg.id } };
  }

  /// Expires what is due at `now`: the events.
  poll(now) {
    const events = [];
    for (const [id, m] of this.live) {
      if (m.expires !== null && m.expires <= now) {
        this.live.delete(id);
        m.text = null;
        this.counters.expired += 1;
        events.push({ event: 'expired', id });
      }
    }
    return events;
  }

  /// The call ended: what the peer never acknowledged.
  end() {
    const events = [...this.pending].map((id) => ({ event: 'undelivered', id }));
    this.pending.clear();
    return events;
  }
}
