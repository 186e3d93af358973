// The long-term Ed25519 identity, kept in IndexedDB. The private key is generated
// non-extractable: the page can sign with it but no script can read it out. IndexedDB stores
// the CryptoKey object itself (structured clone), not its bytes.

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

/// Trust on first use, as the Rust engine's known peers: the first key a peer name presents is
/// pinned; later calls report 'known', or 'changed' for a different key (never re-pinned
/// silently). Returns { trust: 'new' | 'known' | 'changed', previous (fingerprint) }.
export async function checkKnownPeer(name, publicKey) {
  const db = await openDb();
  try {
    const pinned = await request(db, 'readonly', (s) => s.get(name), PEERS);
    if (pinned instanceof Uint8Array && pinned.length === 32) {
      const same = pinned.every((b, i) => b === publicKey[i]);
      return same ? { trust: 'known' } : { trust: 'changed', previous: await fingerprint(pinned) };
    }
    const count = await request(db, 'readonly', (s) => s.count(), PEERS);
    if (count < MAX_KNOWN_PEERS) {
      await request(db, 'readwrite', (s) => s.put(Uint8Array.from(publicKey), name), PEERS);
    }
    return { trust: 'new' };
  } finally {
    db.close();
  }
}
