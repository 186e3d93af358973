// In-page checks of modules that need no peer: the playout-order rule (order.js) and the
// name functions (names.js), whose answers the Rust test compares with src/names.rs.

import { PlayoutOrder, tsAfter } from '../order.js';
import { canonical, confusable, isMixedScript, skeleton } from '../names.js';

/// { passed, failures } for the playout-order rule of docs/call-protocol.md.
export function runOrderChecks() {
  const result = { passed: 0, failures: [] };
  const expect = (name, got, want) => {
    if (got === want) result.passed += 1;
    else result.failures.push(`${name}: got ${got}, expected ${want}`);
  };
  // Serial arithmetic on 32 bits.
  expect('after', tsAfter(960, 0), true);
  expect('not after itself', tsAfter(5, 5), false);
  expect('before', tsAfter(0, 960), false);
  expect('after across the wrap', tsAfter(100, 0xffff_ff00), true);
  expect('before across the wrap', tsAfter(0xffff_ff00, 100), false);
  expect('half way is neither', tsAfter(0x8000_0000, 0), false);
  expect('half way is neither, reversed', tsAfter(0, 0x8000_0000), false);

  // A genuine stream: counters and timestamps both grow, across the 32-bit wrap.
  const o = new PlayoutOrder();
  let ts = 0xffff_ffff - 960 * 3 + 1;
  let all = true;
  for (let c = 10n; c < 20n; c += 1n) {
    all &&= o.accept(c, ts);
    ts = (ts + 960) >>> 0;
  }
  expect('in-order stream across the wrap', all, true);
  // Now at c_max = 19, t_max = ts - 960.
  const tMax = (ts - 960) >>> 0;
  expect('the first frame of a receiver sets the reference', new PlayoutOrder().accept(500n, 7), true);
  expect('late genuine frame, earlier counter and timestamp', o.accept(15n, (tMax - 960 * 4) >>> 0), true);
  expect('late frame does not move c_max', o.cMax, 19n);
  expect('spliced old frame at a later timestamp', o.accept(12n, (tMax + 960) >>> 0), false);
  expect('newer counter with an old timestamp', o.accept(21n, (tMax - 960) >>> 0), false);
  expect('refused frames do not move the reference', o.cMax === 19n && o.tMax === tMax, true);
  expect('newer counter with an equal timestamp', o.accept(22n, tMax), false);
  expect('equal counter', o.accept(19n, (tMax + 960) >>> 0), false);
  expect('next genuine frame', o.accept(20n, (tMax + 960) >>> 0), true);
  // Two frames swapped by a relay that rewrote their timestamps: the second one is refused.
  const s = new PlayoutOrder();
  s.accept(1n, 1000);
  expect('swap: counter 3 arrives with slot 2', s.accept(3n, 1960), true);
  expect('swap: counter 2 arrives with slot 3', s.accept(2n, 2920), false);
  return result;
}

/// canonical, skeleton and mixed-script flag of each name, for comparison with Rust.
export function namesOf(list) {
  return list.map((name) => ({
    name,
    canonical: canonical(name),
    skeleton: skeleton(name),
    mixed: isMixedScript(name),
  }));
}

export { confusable };
