// Playout order bound to the authenticated SFrame counter (docs/call-protocol.md, "Playout
// order is bound to the authenticated counter"), as the engine's src/transport/order.rs. RTP
// timestamps are not authenticated end to end, the SFrame counter is: a frame is played only
// if its RTP timestamp lies between those of its nearest accepted neighbours by counter. An
// encoded transform sees no RTP sequence numbers, so the rule applies to timestamps alone.

const HALF = 0x8000_0000;
/// Counters remembered below the newest: the SFrame replay window (sframe.js REPLAY_WINDOW);
/// older frames do not authenticate anyway.
export const ORDER_WINDOW = 1024n;

/// Whether 32-bit RTP timestamp `a` is after `b` (RFC 1982 serial arithmetic).
export function tsAfter(a, b) {
  const d = (a - b) >>> 0;
  return d !== 0 && d < HALF;
}

/// One sender's order check. `accept` returns null for a frame that may be played, else why
/// not: 'misplaced', 'duplicate' or 'too_old'. A refused frame changes nothing.
export class PlayoutOrder {
  constructor() {
    this.slots = new Array(Number(ORDER_WINDOW)).fill(null); // { ctr, ts } by ctr % window
    this.newest = null;
  }

  get(ctr) {
    const slot = this.slots[Number(ctr % ORDER_WINDOW)];
    return slot !== null && slot.ctr === ctr ? slot : null;
  }

  store(ctr, ts) {
    this.slots[Number(ctr % ORDER_WINDOW)] = { ctr, ts };
  }

  /// Checks the authenticated frame with SFrame counter `ctr` (BigInt) and RTP timestamp `ts`.
  accept(ctr, ts) {
    const t = ts >>> 0;
    if (this.newest === null || ctr > this.newest) {
      // The newest is always remembered: the only neighbour of a newer frame.
      const prev = this.newest === null ? null : this.get(this.newest);
      if (prev !== null && !tsAfter(t, prev.ts)) return 'misplaced';
      this.store(ctr, t);
      this.newest = ctr;
      return null;
    }
    if (this.newest - ctr >= ORDER_WINDOW) return 'too_old';
    if (this.get(ctr) !== null) return 'duplicate';
    // A late frame must fit between its nearest accepted neighbours.
    const oldest = this.newest >= ORDER_WINDOW - 1n ? this.newest - (ORDER_WINDOW - 1n) : 0n;
    let below = null;
    for (let c = ctr - 1n; c >= oldest && below === null; c -= 1n) below = this.get(c);
    let above = null;
    for (let c = ctr + 1n; c <= this.newest && above === null; c += 1n) above = this.get(c);
    if ((below !== null && !tsAfter(t, below.ts)) || (above !== null && !tsAfter(above.ts, t))) {
      return 'misplaced';
    }
    this.store(ctr, t);
    return null;
  }
}
