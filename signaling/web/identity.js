// The long-term Ed25519 identity, kept in IndexedDB. The private key is generated
// non-extractable: the page can sign with it but no script can read it out. IndexedDB stores
// the CryptoKey object itself (structured clone), not its bytes. Known peers live beside it.

import { skeleton } from './names.js';

const DB_NAME = 'sotto';
const STORE = 'identity';
const PEERS = 'peers';
const KEY = 'ed25519';
/// Pins kept at most (as the Rust engine's known-peers store).
const MAX_KNOWN_PEERS = 10_000;

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 2);
    req.onupgradeneeded = () => {
      for (const name of [STORE, PEERS]) {
        if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name);
      }
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function request(db, mode, fn, store = STORE) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/// The first 20 bytes of SHA-256(public key) in groups of four hex digits (as the Rust side).
export async function fingerprint(publicKey) {
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', publicKey)).subarray(0, 20);
  const hex = Array.from(h, (b) => b.toString(16).padStart(2, '0')).join('');
  return hex.match(/.{4}/g).join(' ');
}

/// { privateKey (CryptoKey, non-extractable), publicKey (32 bytes), created (bool) }.
export async function loadOrCreateIdentity() {
  const db = await openDb();
  try {
    const stored = await request(db, 'readonly', (s) => s.get(KEY));
    if (stored?.privateKey instanceof CryptoKey && stored.publicKey?.length === 32) {
      return { privateKey: stored.privateKey, publicKey: stored.publicKey, created: false };
    }
    const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
    await request(db, 'readwrite', (s) => s.put({ privateKey: pair.privateKey, publicKey }, KEY));
    return { privateKey: pair.privateKey, publicKey, created: true };
  } finally {
    db.close();
  }
}

const sameKey = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/// A stored pin: { identity (32 bytes), firstSeen (ms since 1970, or null), verified }. Pins
/// written by older pages were the bare key.
function pinOf(value) {
  if (value instanceof Uint8Array && value.length === 32) {
    return { identity: value, firstSeen: null, verified: false };
  }
  if (value?.identity instanceof Uint8Array && value.identity.length === 32) {
    return {
      identity: value.identity,
      firstSeen: Number.isFinite(value.firstSeen) ? value.firstSeen : null,
      verified: value.verified === true,
    };
  }
  return null;
}

/// Every pin: [{ name (canonical), identity, firstSeen, verified }], sorted by name.
export async function knownPeers() {
  const db = await openDb();
  try {
    const tx = db.transaction(PEERS, 'readonly');
    const store = tx.objectStore(PEERS);
    const [keys, values] = await Promise.all(
      [store.getAllKeys(), store.getAll()].map(
        (req) =>
          new Promise((resolve, reject) => {
            req.onsuccess = () => resolve(req.result);
            req.onerror = () => reject(req.error);
          }),
      ),
    );
    const out = [];
    keys.forEach((name, i) => {
      const pin = pinOf(values[i]);
      if (typeof name === 'string' && pin) out.push({ name, ...pin });
    });
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } finally {
    db.close();
  }
}

async function deletePin(name) {
  const db = await openDb();
  try {
    await request(db, 'readwrite', (s) => s.delete(name), PEERS);
  } finally {
    db.close();
  }
}

async function putPin(name, pin) {
  const db = await openDb();
  try {
    await request(db, 'readwrite', (s) => s.put(pin, name), PEERS);
  } finally {
    db.close();
  }
}

/// Trust on first use, as the Rust engine's known peers (src/handshake/known_peers.rs), by
/// canonical name (names.js), with lookalikes compared by skeleton. `name` must be canonical
/// already. Returns { trust, previous?, lookalike?, previousName? } where trust is
/// - 'new': neither the name, a lookalike of it, nor the key was seen: now pinned (when the
///   store is full, the oldest unverified pin makes room);
/// - 'known' / 'verified': this name, or a lookalike, with its pinned key (verified: people
///   compared codes);
/// - 'changed': another key is pinned under this name, or under a name that looks like it
///   (`lookalike` is that name); `previous` is the pinned key's fingerprint. Never re-pinned
///   silently: only markVerified replaces a pin;
/// - 'renamed': this key is pinned under another name that does not look like this one
///   (`previousName`); nothing is pinned.
export async function checkKnownPeer(name, publicKey) {
  const pins = await knownPeers();
  const trustOf = (p) => (p.verified ? 'verified' : 'known');
  const exact = pins.find((p) => p.name === name);
  if (exact) {
    if (!sameKey(exact.identity, publicKey)) {
      return { trust: 'changed', previous: await fingerprint(exact.identity) };
    }
    return { trust: trustOf(exact) };
  }
  const sk = skeleton(name);
  const lookalikes = pins.filter((p) => skeleton(p.name) === sk);
  const same = lookalikes.find((p) => sameKey(p.identity, publicKey));
  if (same) {
    // The same person under a name that looks the same: not pinned again.
    return { trust: trustOf(same), lookalike: same.name };
  }
  if (lookalikes.length) {
    return {
      trust: 'changed',
      lookalike: lookalikes[0].name,
      previous: await fingerprint(lookalikes[0].identity),
    };
  }
  const byKey = pins.find((p) => sameKey(p.identity, publicKey));
  if (byKey) return { trust: 'renamed', previousName: byKey.name };
  if (pins.length >= MAX_KNOWN_PEERS) {
    const unverified = pins.filter((p) => !p.verified);
    if (!unverified.length) return { trust: 'new' }; // Full of verified pins: not pinned.
    const oldest = unverified.reduce((a, b) => ((a.firstSeen ?? 0) <= (b.firstSeen ?? 0) ? a : b));
    await deletePin(oldest.name);
  }
  await putPin(name, { identity: Uint8Array.from(publicKey), firstSeen: Date.now(), verified: false });
  return { trust: 'new' };
}

/// Records that people compared safety codes and trust `publicKey` for `name` (canonical),
/// replacing a previous pin of that name.
export async function markVerified(name, publicKey) {
  const pins = await knownPeers();
  const old = pins.find((p) => p.name === name);
  const firstSeen = old && sameKey(old.identity, publicKey) ? old.firstSeen : Date.now();
  await putPin(name, { identity: Uint8Array.from(publicKey), firstSeen, verified: true });
}
