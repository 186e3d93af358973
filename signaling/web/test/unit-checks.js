// In-page checks of modules that need no peer: the playout-order rule (order.js), the name
// functions (names.js) and the video frame layout (video.js), whose answers the Rust tests
// compare with src/names.rs and the engine's SFrame.

import { PlayoutOrder, tsAfter } from '../order.js';
import { canonical, confusable, isMixedScript, skeleton } from '../names.js';
import { MediaReceiver, MediaSender } from '../keys.js';
import { openVp8, sealVp8 } from '../video.js';
import {
  MAX_CANDIDATES_PER_GENERATION,
  MAX_HELD_CANDIDATES,
  RemoteCandidates,
  iceUfrag,
  parseCandidate,
} from '../trickle.js';

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/// Seals VP8 frames ([{ hex, key }]) under base key `baseHex` of `direction`, after rotating
/// `epoch` times; returns the sealed frames as hex (or 'error: kind' for refused ones).
export async function videoSeal(baseHex, direction, epoch, frames) {
  const sender = await MediaSender.create(fromHex(baseHex), direction, { intervalMs: null });
  for (let i = 0; i < epoch; i += 1) await sender.rotate();
  const out = [];
  for (const f of frames) {
    try {
      out.push(toHex((await sealVp8(sender, fromHex(f.hex), f.key)).frame));
    } catch (e) {
      out.push(`error: ${e.kind ?? e}`);
    }
  }
  return out;
}

/// Opens sealed frames (hex) with a fresh video receiver for base key `baseHex` and
/// `direction`; returns { hex, keyframe, kid } or { error } for each.
export async function videoOpen(baseHex, direction, frames) {
  const receiver = await MediaReceiver.create(fromHex(baseHex), direction, { video: true });
  const out = [];
  for (const hex of frames) {
    try {
      const o = await openVp8(receiver, fromHex(hex));
      out.push({ hex: toHex(o.frame), keyframe: o.keyframe, kid: Number(o.kid) });
    } catch (e) {
      out.push({ error: e.kind ?? String(e) });
    }
  }
  return out;
}

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
  const base = 0xffff_ffff - 960 * 3 + 1;
  const tsOf = (c) => (base + Number(c - 10n) * 960) >>> 0;
  let all = true;
  // 13 and 16 are late (held back by the network).
  for (const c of [10n, 11n, 12n, 14n, 15n, 17n, 18n, 19n]) all &&= o.accept(c, tsOf(c)) === null;
  expect('in-order stream across the wrap', all, true);
  expect('the first frame of a receiver is accepted', new PlayoutOrder().accept(500n, 7), null);
  // A relay that held 13 and 16 back delivers them with their timestamps exchanged.
  expect('held back, timestamps exchanged: 13', o.accept(13n, tsOf(16n)), 'misplaced');
  expect('held back, timestamps exchanged: 16', o.accept(16n, tsOf(13n)), 'misplaced');
  expect('an old frame spliced after the newest', o.accept(16n, tsOf(20n)), 'misplaced');
  expect('a newer counter with an older timestamp', o.accept(20n, tsOf(18n)), 'misplaced');
  expect('a newer counter with the newest timestamp', o.accept(20n, tsOf(19n)), 'misplaced');
  expect('refused frames change nothing', o.newest === 19n && o.get(13n) === null, true);
  expect('late genuine frame between its neighbours', o.accept(13n, tsOf(13n)), null);
  expect('another late genuine frame', o.accept(16n, tsOf(16n)), null);
  expect('a counter accepted already', o.accept(16n, tsOf(16n)), 'duplicate');
  expect('the next genuine frame', o.accept(20n, tsOf(20n)), null);
  // The window: 1024 counters below the newest and further are refused.
  const w = new PlayoutOrder();
  w.accept(2000n, 2000 * 960);
  expect('1024 below the newest', w.accept(976n, 976 * 960), 'too_old');
  expect('1023 below the newest, in order', w.accept(977n, 977 * 960), null);
  expect('late, timestamp after its upper neighbour', w.accept(978n, 2001 * 960), 'misplaced');
  // Two frames swapped by a relay that rewrote their timestamps: the second one is refused.
  const s = new PlayoutOrder();
  s.accept(1n, 1000);
  expect('swap: counter 3 arrives with slot 2', s.accept(3n, 1960), null);
  expect('swap: counter 2 arrives with slot 3', s.accept(2n, 2920), 'misplaced');
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

/// For each payload, the candidate the page takes from it (as trickle.js parses it), or null.
export function trickleParse(payloads) {
  return payloads.map((p) => parseCandidate(p));
}

/// The peer-candidate rules of trickle.js, as src/call/trickle.rs has them: { passed, failures }.
export function runTrickleChecks() {
  const result = { passed: 0, failures: [] };
  const expect = (name, got, want) => {
    if (JSON.stringify(got) === JSON.stringify(want)) result.passed += 1;
    else result.failures.push(`${name}: got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  };
  const c = (n, ufrag) => ({ candidate: `candidate:${n} 1 udp 1 10.0.0.1 ${1000 + n} typ host`, ufrag });
  const peer = new RemoteCandidates();
  expect('held before its description', peer.candidate(c(1, 'gen1')), 'held');
  expect('held, next generation', peer.candidate(c(2, 'gen2')), 'held');
  expect('released with gen1', peer.described('gen1'), [c(1, 'gen1')]);
  expect('applied in gen1', peer.candidate(c(3, 'gen1')), 'apply');
  expect('released with gen2', peer.described('gen2'), [c(2, 'gen2')]);
  expect('gen1 is stale', peer.candidate(c(4, 'gen1')), 'dropped');
  expect('applied in gen2', peer.candidate(c(5, 'gen2')), 'apply');
  let applied = 2;
  for (let n = 0; n < 100; n += 1) if (peer.candidate(c(100 + n, 'gen2')) === 'apply') applied += 1;
  expect('capped per generation', applied, MAX_CANDIDATES_PER_GENERATION);
  const full = new RemoteCandidates();
  for (let n = 0; n < MAX_HELD_CANDIDATES; n += 1) full.candidate(c(n, 'later'));
  expect('held are capped', full.candidate(c(999, 'later')), 'dropped');
  expect('ufrag from SDP', iceUfrag('v=0\r\na=ice-ufrag:abcd \r\n'), 'abcd');
  return result;
}
