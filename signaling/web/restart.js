// ICE restarts of a two-party call (docs/call-protocol.md, "ICE restart"), as the engine does
// them (src/transport/restart.rs): only the initiator restarts, and only once the responder
// said `can_restart`; the responder answers every restart offer on the same peer connection.
// A restart keeps the DTLS association, so every restart's SDP must still carry the DTLS
// fingerprint the peer signed in the handshake; one that does not ends the call.

import { sdpMatchesDtls } from './handshake.js';

/// The connection must stay disconnected or failed this long before the first restart
/// (Chromium itself reports it only after ~2.5 s without a packet).
export const LOST_MS = 1500;
/// A path lost this long (restarts included) ends the call.
export const GIVE_UP_MS = 30_000;
/// After an answer that did not bring the path back, the next restart follows after this,
/// doubled for every further one (back-off), at most BACKOFF_MAX_MS.
const CHECKS_WAIT_MS = 1500;
const BACKOFF_MAX_MS = 6000;
/// The same after an answer to an offer whose gathering did not finish (made in the outage,
/// so it holds only the old candidates): its answer says signaling is back, gather afresh.
const PARTIAL_CHECKS_WAIT_MS = 500;
/// An unanswered restart offer is replaced after this long.
const ANSWER_WAIT_MS = 5000;
/// A restart's description waits at most this long for gathering (a STUN or TURN server
/// behind the failed link would hold it up).
const RESTART_GATHER_MS = 1000;
const POLL_MS = 250;
const STATUS_RECONNECTING = 'reconnecting: the path to the peer was lost';

/// The first `a=ice-ufrag` of an SDP, or null.
export function iceUfrag(sdp) {
  const m = /^a=ice-ufrag:(\S+)\s*$/m.exec(sdp);
  return m ? m[1] : null;
}

/// The selected candidate pair's types and protocol in a getStats() report, or null: which
/// path the media takes (host, srflx, prflx or relay at each end).
export function selectedPath(report) {
  for (const t of report.values()) {
    if (t.type !== 'transport' || !t.selectedCandidatePairId) continue;
    const pair = report.get(t.selectedCandidatePairId);
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    if (!local || !remote) return null;
    return { local: local.candidateType, remote: remote.candidateType, protocol: local.protocol };
  }
  return null;
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve(false);
    }, ms);
    const onChange = () => {
      if (pc.iceGatheringState !== 'complete') return;
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve(true);
    };
    pc.addEventListener('icegatheringstatechange', onChange);
  });
}

/// Watches `pc` and restarts ICE (initiator) or answers restarts (responder).
///
/// `opts`: { pc, role: 'initiator' | 'responder', signal(data), peerDtls() (the signed
/// fingerprint), checkOwnSdp() (throws if ours is not the signed one), queue(fn) (runs fn
/// after the SDP work before it), ended(), end(reason), onMismatch() (a restart's SDP does
/// not carry the signed fingerprint: ends the call), setStatus(text), onBack() (the path is
/// back), state (an object the page exposes: counters and times are written into it) }.
export class IceRestarts {
  constructor(opts) {
    Object.assign(this, opts);
    this.connectedOnce = false;
    this.peerAnswers = false;
    this.lostSince = null;
    this.attempt = null; // { offered, answered, partial }
    this.inFlight = 0; // Restart offers sent whose answers have not arrived.
    this.episodeRestarts = 0;
    this.lastUfrag = null;
    Object.assign(this.state, {
      reconnecting: false,
      peerAnswersRestarts: false,
      iceRestarts: 0, // Restart offers sent, or answered (with new credentials).
      staleAnswers: 0,
      restartErrors: 0,
      // One entry per lost path: ms since page start when it was lost, when the first
      // restart went out (null if none), and when it was back (null while lost).
      outages: [],
    });
    this.onState = () => this.update();
    this.pc.addEventListener('connectionstatechange', this.onState);
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  /// Follows the connection's state: lost on disconnected/failed after it was connected.
  update() {
    if (this.ended()) return this.stop();
    const s = this.pc.connectionState;
    const now = performance.now();
    if (s === 'connected') {
      this.connectedOnce = true;
      if (this.lostSince !== null) {
        this.lostSince = null;
        this.attempt = null;
        this.episodeRestarts = 0;
        this.state.reconnecting = false;
        const last = this.state.outages[this.state.outages.length - 1];
        if (last) last.back = Math.round(now);
        this.onBack();
      }
    } else if ((s === 'disconnected' || s === 'failed') && this.connectedOnce) {
      if (this.lostSince === null) {
        this.lostSince = now;
        this.state.reconnecting = true;
        this.state.outages.push({ lost: Math.round(now), restarted: null, back: null });
        this.setStatus(STATUS_RECONNECTING);
      }
    }
  }

  stop() {
    clearInterval(this.timer);
    this.pc.removeEventListener('connectionstatechange', this.onState);
  }

  poll() {
    if (this.ended()) return this.stop();
    if (this.lostSince === null) return;
    const now = performance.now();
    if (now - this.lostSince >= GIVE_UP_MS) {
      this.stop();
      this.end(`connection lost: the path to the peer did not come back within ${GIVE_UP_MS / 1000} s`);
      return;
    }
    if (this.role !== 'initiator' || !this.peerAnswers || now - this.lostSince < LOST_MS) return;
    const a = this.attempt;
    let due;
    if (!a) {
      due = true;
    } else if (a.answered === null) {
      due = now - a.offered >= ANSWER_WAIT_MS;
    } else {
      const backoff = Math.min(CHECKS_WAIT_MS * 2 ** Math.max(0, this.episodeRestarts - 1), BACKOFF_MAX_MS);
      due = now - a.answered >= (a.partial ? PARTIAL_CHECKS_WAIT_MS : backoff);
    }
    if (due) this.restart();
  }

  /// Sends a restart offer (new ICE credentials, same DTLS certificate and tracks).
  restart() {
    // Placed at once, so the next poll does not start another one meanwhile.
    const attempt = { offered: performance.now(), answered: null, partial: false };
    this.attempt = attempt;
    this.episodeRestarts += 1;
    this.queue(async () => {
      if (this.ended() || this.lostSince === null) return;
      try {
        await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart: true }));
        attempt.partial = !(await gathered(this.pc, RESTART_GATHER_MS));
        this.checkOwnSdp();
        this.signal({ kind: 'offer', sdp: this.pc.localDescription.sdp });
        attempt.offered = performance.now();
        this.inFlight += 1;
        this.state.iceRestarts += 1;
        const last = this.state.outages[this.state.outages.length - 1];
        if (last && last.restarted === null) last.restarted = Math.round(attempt.offered);
      } catch {
        // Not fatal: the next attempt follows, or the give-up deadline.
        this.state.restartErrors += 1;
      }
    });
  }

  /// The responder said it answers restart offers.
  onCanRestart() {
    if (this.role !== 'initiator') return;
    this.peerAnswers = true;
    this.state.peerAnswersRestarts = true;
  }

  /// The responder answered the first `offer`: from now on it answers restarts (a later
  /// offer with other ICE credentials is one).
  firstAnswerSent(offer) {
    this.lastUfrag = iceUfrag(offer);
    this.signal({ kind: 'can_restart' });
  }

  /// A later offer (responder): the initiator restarting ICE. Its fingerprint must be the
  /// signed one; its failures are not fatal (the initiator tries again).
  onOffer(sdp) {
    if (this.role !== 'responder') return;
    if (!sdpMatchesDtls(sdp, this.peerDtls())) {
      this.mismatch();
      return;
    }
    this.queue(async () => {
      if (this.ended()) return;
      try {
        const ufrag = iceUfrag(sdp);
        await this.pc.setRemoteDescription({ type: 'offer', sdp });
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        await gathered(this.pc, RESTART_GATHER_MS);
        this.checkOwnSdp();
        this.signal({ kind: 'answer', sdp: this.pc.localDescription.sdp });
        if (ufrag !== this.lastUfrag) {
          this.lastUfrag = ufrag;
          this.state.iceRestarts += 1;
          const last = this.state.outages[this.state.outages.length - 1];
          if (last && last.back === null && last.restarted === null) {
            last.restarted = Math.round(performance.now());
          }
        }
      } catch {
        this.state.restartErrors += 1;
      }
    });
  }

  /// A later answer (initiator): to the newest restart offer, or to one it replaced (stale,
  /// skipped; answers come in order). Every one must carry the signed fingerprint.
  onAnswer(sdp) {
    if (this.role !== 'initiator') return;
    if (!sdpMatchesDtls(sdp, this.peerDtls())) {
      this.mismatch();
      return;
    }
    if (this.inFlight === 0) return; // Not asked for.
    this.inFlight -= 1;
    if (this.inFlight > 0) {
      this.state.staleAnswers += 1;
      return;
    }
    if (this.attempt) this.attempt.answered = performance.now();
    this.queue(async () => {
      if (this.ended() || this.pc.signalingState !== 'have-local-offer') return;
      try {
        await this.pc.setRemoteDescription({ type: 'answer', sdp });
      } catch {
        this.state.restartErrors += 1;
      }
      if (this.attempt) this.attempt.answered = performance.now();
    });
  }

  mismatch() {
    this.stop();
    this.onMismatch();
  }
}
