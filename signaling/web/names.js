// Peer names as people see them, exactly as the engine's src/names.rs: a canonical form for
// showing and pinning, a confusable skeleton for comparing, a mixed-script flag. JavaScript has
// NFKC/NFD but no case folding and no UTS #39 data, so those come from confusables.js,
// generated from the same Rust crates (tests/web_names.rs checks it is current).

import { FOLD, IGNORABLE, PROTOTYPE, SCRIPTS } from './confusables.js';

const pairs = (flat) => {
  const map = new Map();
  for (let i = 0; i < flat.length; i += 2) map.set(flat[i], flat[i + 1]);
  return map;
};
const prototypes = pairs(PROTOTYPE);
const folds = pairs(FOLD);

function ignorable(cp) {
  // Few ranges (about 20): a scan is enough.
  return IGNORABLE.some(([first, last]) => cp >= first && cp <= last);
}

function skeletonOfForm(s) {
  let mapped = '';
  for (const c of s.normalize('NFD')) {
    const cp = c.codePointAt(0);
    if (ignorable(cp)) continue;
    mapped += prototypes.get(cp) ?? c;
  }
  return mapped.normalize('NFD');
}

/// The form of `raw` that is shown and pinned: NFKC, default case folding, NFKC again, invisible
/// (default-ignorable) characters removed.
export function canonical(raw) {
  let folded = '';
  for (const c of String(raw).normalize('NFKC')) folded += folds.get(c.codePointAt(0)) ?? c;
  let out = '';
  for (const c of folded.normalize('NFKC')) {
    if (skeletonOfForm(c) !== '') out += c;
  }
  return out;
}

/// The UTS #39 confusable skeleton of `raw`'s canonical form: equal for names that look alike.
/// Not for display.
export function skeleton(raw) {
  return skeletonOfForm(canonical(raw));
}

/// Whether two names look alike (equal skeletons).
export const confusable = (a, b) => skeleton(a) === skeleton(b);

function scriptsOf(cp) {
  // SCRIPTS is [start, tokens, start, tokens, ...] sorted by start: binary search the run.
  let lo = 0;
  let hi = SCRIPTS.length / 2 - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (SCRIPTS[2 * mid] <= cp) lo = mid;
    else hi = mid - 1;
  }
  return SCRIPTS[2 * lo + 1];
}

/// Whether `raw` mixes writing systems (its UTS #39 resolved script set is empty), as a name
/// imitating another usually does. Digits, spaces and punctuation belong to every script.
export function isMixedScript(raw) {
  let set = null; // null: every script so far.
  for (const c of canonical(raw)) {
    const tokens = scriptsOf(c.codePointAt(0));
    if (tokens === '*') continue;
    const these = tokens ? tokens.split(' ') : [];
    set = set === null ? these : set.filter((t) => these.includes(t));
  }
  return set !== null && set.length === 0;
}
