// Trickle ICE for the two-party page (docs/call-protocol.md, "Trickle ICE"), as the engine's
// src/call/trickle.rs: the `trickle`, `candidate` and `end_of_candidates` payloads, checked
// as the engine checks them, and which of the peer's candidates to add now, hold or drop.

export const MAX_CANDIDATE_LEN = 512;
export const MIN_UFRAG_LEN = 4;
export const MAX_UFRAG_LEN = 256;
export const MAX_MID_LEN = 32;
/// The peer's candidates taken per ICE generation (user fragment); more are dropped.
export const MAX_CANDIDATES_PER_GENERATION = 64;
/// The peer's candidates held until the description of their generation is applied.
export const MAX_HELD_CANDIDATES = 32;
/// Earlier generations remembered, so their late candidates are dropped.
const OLD_GENERATIONS = 8;
/// How long a trickled description waits for its first candidate at most, so a peer that does
/// not trickle still finds one in it. The host ones usually come within milliseconds and the
/// wait ends there; on a loaded machine Chromium took over 50 ms.
export const HOST_CANDIDATE_WAIT_MS = 500;

const isUfrag = (u) =>
  typeof u === 'string' &&
  u.length >= MIN_UFRAG_LEN &&
  u.length <= MAX_UFRAG_LEN &&
  /^[A-Za-z0-9+/]+$/.test(u);

/// The ICE user fragment of an SDP (its first `a=ice-ufrag`), or null.
export function iceUfrag(sdp) {
  const m = /^a=ice-ufrag:(.*)$/m.exec(sdp ?? '');
  return m ? m[1].trim() : null;
}

const FIELDS = new Set(['kind', 'candidate', 'sdp_mid', 'sdp_mline_index', 'ufrag']);

/// A `candidate` payload checked as the engine checks it: { candidate, ufrag, sdpMid,
/// sdpMLineIndex } or null (ignored).
export function parseCandidate(data) {
  if (data === null || typeof data !== 'object' || data.kind !== 'candidate') return null;
  if (Object.keys(data).some((k) => !FIELDS.has(k))) return null;
  const { candidate, ufrag } = data;
  if (typeof candidate !== 'string' || candidate.length > MAX_CANDIDATE_LEN) return null;
  // Printable ASCII, `candidate:` and something after it.
  if (!/^candidate:[\x20-\x7e]*$/.test(candidate) || !candidate.slice(10).trim()) return null;
  if (!isUfrag(ufrag)) return null;
  // Absent or null alike, as serde reads them.
  const mid = data.sdp_mid ?? null;
  if (mid !== null && (typeof mid !== 'string' || mid.length > MAX_MID_LEN)) return null;
  const index = data.sdp_mline_index ?? null;
  if (index !== null && !(Number.isInteger(index) && index >= 0 && index <= 65535)) return null;
  return { candidate, ufrag, sdpMid: mid, sdpMLineIndex: index };
}

/// An `end_of_candidates` payload's user fragment, or null.
export function parseEndOfCandidates(data) {
  if (data === null || typeof data !== 'object' || data.kind !== 'end_of_candidates') return null;
  if (Object.keys(data).some((k) => k !== 'kind' && k !== 'ufrag')) return null;
  return isUfrag(data.ufrag) ? data.ufrag : null;
}

/// The peer's candidates: which generation was applied last, what it took, what waits.
export class RemoteCandidates {
  constructor() {
    this.current = null;
    this.taken = 0;
    this.old = [];
    this.held = [];
  }

  /// A parsed candidate arrived: 'apply', 'held' or 'dropped'.
  candidate(c) {
    if (c.ufrag === this.current) {
      if (this.taken >= MAX_CANDIDATES_PER_GENERATION) return 'dropped';
      this.taken += 1;
      return 'apply';
    }
    if (this.old.includes(c.ufrag) || this.held.length >= MAX_HELD_CANDIDATES) return 'dropped';
    this.held.push(c);
    return 'held';
  }

  /// The peer's description with user fragment `ufrag` was applied: the held candidates of
  /// its generation to add now.
  described(ufrag) {
    if (ufrag !== this.current) {
      if (this.current !== null) {
        this.old = this.old.filter((u) => u !== ufrag);
        this.old.push(this.current);
        if (this.old.length > OLD_GENERATIONS) this.old.shift();
      }
      this.current = ufrag;
      this.taken = 0;
    }
    this.held = this.held.filter((c) => !this.old.includes(c.ufrag));
    const now = this.held.filter((c) => c.ufrag === ufrag);
    this.held = this.held.filter((c) => c.ufrag !== ufrag);
    const apply = now.slice(0, Math.max(0, MAX_CANDIDATES_PER_GENERATION - this.taken));
    this.taken += apply.length;
    return apply;
  }
}

/// Resolves once `pc` found its first candidate or finished gathering, or after
/// HOST_CANDIDATE_WAIT_MS.
export function firstCandidate(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener('icecandidate', done);
      pc.removeEventListener('icegatheringstatechange', gathered);
      resolve();
    };
    const gathered = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    pc.addEventListener('icecandidate', done);
    pc.addEventListener('icegatheringstatechange', gathered);
    setTimeout(done, HOST_CANDIDATE_WAIT_MS);
  });
}

/// Trickle ICE of one call. `send(data)` relays a payload to the peer.
export class Trickle {
  constructor(send) {
    this.send = send;
    this.remote = new RemoteCandidates();
    // Whether the peer trickles: true once it said so, false once its first description came
    // without that.
    this.peerTrickles = null;
    // Our candidates go out only after our first description did (the earlier ones are in it).
    this.described = false;
  }

  /// Our candidates as the browser finds them; `pc.onicecandidate` calls this.
  onLocal(event) {
    if (!this.described || this.peerTrickles === false) return;
    const c = event.candidate;
    if (c && c.candidate) {
      const ufrag = c.usernameFragment ?? iceUfrag(event.target?.localDescription?.sdp);
      if (!ufrag) return;
      this.send({
        kind: 'candidate',
        candidate: c.candidate,
        sdp_mid: c.sdpMid ?? '0',
        sdp_mline_index: c.sdpMLineIndex ?? 0,
        ufrag,
      });
    } else if (!c) {
      const ufrag = iceUfrag(event.target?.localDescription?.sdp);
      if (ufrag) this.send({ kind: 'end_of_candidates', ufrag });
    }
  }

  /// We sent our description: candidates found from now on follow it.
  sent() {
    this.described = true;
  }

  /// The peer said `trickle` (before its first description).
  peerSaidTrickle() {
    if (this.peerTrickles === null) this.peerTrickles = true;
  }

  /// The peer's first description arrived: without `trickle` before it, the peer does not.
  peerDescribed() {
    if (this.peerTrickles === null) this.peerTrickles = false;
  }

  /// A `candidate` payload from the peer; `add(init)` adds one to the peer connection (the
  /// caller orders it after the description it belongs to).
  onCandidate(data, add) {
    const c = parseCandidate(data);
    if (!c) return;
    if (this.remote.candidate(c) === 'apply') add(toInit(c));
  }

  /// The peer's description `sdp` was applied: its candidates that came early, to add now.
  applied(sdp) {
    const ufrag = iceUfrag(sdp);
    return ufrag ? this.remote.described(ufrag).map(toInit) : [];
  }
}

function toInit(c) {
  const init = { candidate: c.candidate, usernameFragment: c.ufrag };
  if (c.sdpMid !== null) init.sdpMid = c.sdpMid;
  if (c.sdpMLineIndex !== null || c.sdpMid === null) init.sdpMLineIndex = c.sdpMLineIndex ?? 0;
  return init;
}
