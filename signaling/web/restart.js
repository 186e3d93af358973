// ICE restarts of a two-party call (docs/call-protocol.md, "ICE restart"), as the engine does
// them (src/transport/restart.rs): only the initiator restarts, and only once the responder
// said `can_restart`; the responder answers every restart offer on the same peer connection.
// A restart keeps the DTLS association, so every restart's SDP must still carry the DTLS
// fingerprint the peer signed in the handshake; one that does not ends the call.

import { sdpMatchesDtls } from './handshake.js';
import { iceUfrag } from './trickle.js';

/// The path is lost when nothing arrived from the peer for this long (as the engine says it),
/// or when Chromium says the connection is disconnected or failed; the first restart follows
/// at once.
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

/// Waits for the end of the gathering that the next setLocalDescription starts (made before
/// it: iceGatheringState may still say 'complete' from the last gathering just after it).
/// `wait(ms)` gives true when gathering ended in time, false when it did not.
function gatheringEnd(pc) {
  let done;
  const ended = new Promise((resolve) => {
    done = resolve;
  });
  const onCandidate = (e) => {
    if (e.candidate === null) done(true);
  };
  pc.addEventListener('icecandidate', onCandidate);
  return {
    wait(ms) {
      const timer = setTimeout(() => done(false), ms);
      return ended.finally(() => {
        clearTimeout(timer);
        pc.removeEventListener('icecandidate', onCandidate);
      });
    },
    cancel() {
      done(false);
      pc.removeEventListener('icecandidate', onCandidate);
    },
  };
}

/// Watches `pc` and restarts ICE (initiator) or answers restarts (responder).
///
/// `opts`: { pc, role: 'initiator' | 'responder', signal(data), peerDtls() (the signed
/// fingerprint), checkOwnSdp() (throws if ours is not the signed one), queue(fn) (runs fn
/// after the SDP work before it), ended(), end(reason), onMismatch() (a restart's SDP does
/// not carry the signed fingerprint: ends the call), setStatus(text), onBack() (the path is
/// back), remoteApplied(sdp) (the peer's restart description was applied: trickled candidates
/// of its generation may be added), peerTrickles() (candidates found after a description follow
/// it), state (an object the page exposes: counters and times are written into it) }.
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
    this.bytes = -1;
    this.lastHeard = 0; // When bytes last arrived (performance.now()).
    this.polling = false;
    Object.assign(this.state, {
      reconnecting: false,
      peerAnswersRestarts: false,
      iceRestarts: 0, // Restart offers sent, or answered (with new credentials).
      staleAnswers: 0,
      restartErrors: 0,
      // One entry per lost path: ms since page start when it was lost, when the first
      // restart went out (null if none), and when it was back (null while lost).
      outages: [],
      // The last few restart offers: when sent and answered (ms since page start), whether
      // their gathering finished (partial), and the candidate types they carried.
      attempts: [],
    });
    this.onState = () => this.update();
    this.pc.addEventListener('connectionstatechange', this.onState);
    this.timer = setInterval(() => this.poll(), POLL_MS);
  }

  /// Follows the connection's state; `lost` says whether the path is lost now.
  update(lost = this.lostSince !== null) {
    if (this.ended()) return this.stop();
    const s = this.pc.connectionState;
    const now = performance.now();
    if (s === 'connected' && !this.connectedOnce) {
      this.connectedOnce = true;
      this.lastHeard = now;
    }
    if (!this.connectedOnce) return;
    // Chromium itself says disconnected only after ~5 s without a packet.
    const isLost = lost || s === 'disconnected' || s === 'failed';
    if (isLost && this.lostSince === null) {
      this.lostSince = now;
      // A restart still outstanding, or answered a moment ago, from the last outage paces
      // this one: its offer may have reached the peer only now (signaling held it up), so
      // its answer's checks get their time before the next restart replaces them.
      const a = this.attempt;
      if (a && this.inFlight === 0 && (a.answered === null || now - a.answered >= CHECKS_WAIT_MS)) {
        this.attempt = null;
      }
      this.state.reconnecting = true;
      this.state.outages.push({ lost: Math.round(now), restarted: null, back: null });
      this.setStatus(STATUS_RECONNECTING);
    } else if (!isLost && this.lostSince !== null && s === 'connected') {
      this.lostSince = null;
      this.episodeRestarts = 0;
      this.state.reconnecting = false;
      const last = this.state.outages[this.state.outages.length - 1];
      if (last) last.back = Math.round(now);
      this.onBack();
    }
  }

  stop() {
    clearInterval(this.timer);
    this.pc.removeEventListener('connectionstatechange', this.onState);
  }

  /// Bytes received on the peer connection's transports (media, RTCP, data channel, ICE).
  async bytesReceived() {
    let bytes = 0;
    for (const t of (await this.pc.getStats()).values()) {
      if (t.type === 'transport') bytes += t.bytesReceived ?? 0;
    }
    return bytes;
  }

  async poll() {
    if (this.ended()) return this.stop();
    if (this.polling || !this.connectedOnce) return;
    this.polling = true;
    let bytes;
    try {
      bytes = await this.bytesReceived();
    } catch {
      bytes = null;
    } finally {
      this.polling = false;
    }
    if (this.ended()) return this.stop();
    let now = performance.now();
    if (bytes !== null && bytes > this.bytes) {
      this.bytes = bytes;
      this.lastHeard = now;
    }
    // Lost, as the engine says it: nothing from the peer for LOST_MS (audio flows all the
    // time, silence when muted, and ICE consent checks answer on an idle path).
    this.update(now - this.lastHeard >= LOST_MS);
    now = performance.now();
    if (this.lostSince === null) {
      // The path came back by itself while a restart offer made in the outage was on its
      // way: once answered, the peer checks only that offer's candidates, the old ones
      // (its gathering did not finish), which a changed network does not reach. A fresh
      // offer brings the new ones (a peer that trickles gets them as they are found).
      const a = this.attempt;
      const stale = a?.partial && a.answered !== null && !a.refreshed && !this.peerTrickles();
      if (this.role === 'initiator' && stale) {
        if (now - a.answered >= PARTIAL_CHECKS_WAIT_MS) {
          a.refreshed = true;
          this.restart(true);
        }
      }
      return;
    }
    if (now - this.lostSince >= GIVE_UP_MS) {
      this.stop();
      this.end(`connection lost: the path to the peer did not come back within ${GIVE_UP_MS / 1000} s`);
      return;
    }
    if (this.role !== 'initiator' || !this.peerAnswers) return;
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

  /// Sends a restart offer (new ICE credentials, same DTLS certificate and tracks); `refresh`:
  /// also while the path is not lost.
  restart(refresh = false) {
    // Placed at once, so the next poll does not start another one meanwhile.
    const attempt = { offered: performance.now(), answered: null, partial: false, refreshed: false };
    this.attempt = attempt;
    this.episodeRestarts += 1;
    this.queue(async () => {
      if (this.ended() || (this.lostSince === null && !refresh)) return;
      const gathering = gatheringEnd(this.pc);
      try {
        await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart: true }));
        attempt.partial = !(await gathering.wait(RESTART_GATHER_MS));
        this.checkOwnSdp();
        const sdp = this.pc.localDescription.sdp;
        this.signal({ kind: 'offer', sdp });
        attempt.offered = performance.now();
        attempt.candidateTypes = [...new Set([...sdp.matchAll(/ typ (\w+)/g)].map((m) => m[1]))];
        this.inFlight += 1;
        this.state.attempts = [...this.state.attempts.slice(-9), attempt];
        this.state.iceRestarts += 1;
        const last = this.state.outages[this.state.outages.length - 1];
        if (last && last.restarted === null) last.restarted = Math.round(attempt.offered);
      } catch {
        // Not fatal: the next attempt follows, or the give-up deadline.
        gathering.cancel();
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
    // Before the handshake nothing is connected to restart (and nothing to check against).
    if (this.role !== 'responder' || this.peerDtls() === null) return;
    if (!sdpMatchesDtls(sdp, this.peerDtls())) {
      this.mismatch();
      return;
    }
    this.queue(async () => {
      if (this.ended()) return;
      const ufrag = iceUfrag(sdp);
      // Only new credentials start a new gathering; the same ones (a repeated offer) do not.
      const gathering = ufrag !== this.lastUfrag ? gatheringEnd(this.pc) : null;
      try {
        await this.pc.setRemoteDescription({ type: 'offer', sdp });
        this.remoteApplied(sdp);
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        await gathering?.wait(RESTART_GATHER_MS);
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
        gathering?.cancel();
        this.state.restartErrors += 1;
      }
    });
  }

  /// A later answer (initiator): to the newest restart offer, or to one it replaced (stale,
  /// skipped; answers come in order). Every one must carry the signed fingerprint.
  onAnswer(sdp) {
    if (this.role !== 'initiator' || this.peerDtls() === null) return;
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
        this.remoteApplied(sdp);
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
