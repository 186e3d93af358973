// Playout order bound to the authenticated SFrame counter (docs/call-protocol.md, "Playout
// order is bound to the authenticated counter"). RTP timestamps are not authenticated end to
// end, the SFrame counter is: a frame is played only if its timestamp order agrees with its
// counter order against the newest frame accepted so far.

const HALF = 0x8000_0000;

/// Whether 32-bit RTP timestamp `a` is after `b` (RFC 1982 serial arithmetic).
export function tsAfter(a, b) {
  const d = (a - b) >>> 0;
  return d !== 0 && d < HALF;
}

/// One sender's order check: the highest counter accepted (`cMax`, a BigInt) and its timestamp.
export class PlayoutOrder {
  constructor() {
    this.cMax = null;
    this.tMax = 0;
  }

  /// Whether a frame that authenticated with counter `ctr` (BigInt) and RTP timestamp `ts`
  /// may be played; an accepted frame with a higher counter becomes the new reference.
  accept(ctr, ts) {
    const t = ts >>> 0;
    if (this.cMax === null) {
      this.cMax = ctr;
      this.tMax = t;
      return true;
    }
    if (ctr > this.cMax && tsAfter(t, this.tMax)) {
      this.cMax = ctr;
      this.tMax = t;
      return true;
    }
    return ctr < this.cMax && tsAfter(this.tMax, t);
  }
}
