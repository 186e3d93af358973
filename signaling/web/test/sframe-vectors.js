// Runs the RFC 9605 test vectors that concern suite 4 (AES_128_GCM_SHA256_128) against
// ../sframe.js: every header encoding, and the suite's full SFrame vector (labels, derived
// key and salt, nonce, AAD, ciphertext, and decryption back). The harness passes the vector
// file's text; KID and CTR exceed 2^53, so they are read as BigInt from the text itself.

import {
  SframeReceiver,
  SframeSender,
  decodeHeader,
  deriveKeySalt,
  encodeHeader,
  labels,
  nonceFor,
} from '../sframe.js';

const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (x) => parseInt(x, 16));

/// JSON.parse with 64-bit integer fields kept exact (as BigInt).
function parseExact(text) {
  const quoted = text.replace(/"(kid|ctr)"\s*:\s*(\d+)/g, '"$1":"$2"');
  return JSON.parse(quoted, (key, value) =>
    (key === 'kid' || key === 'ctr') && typeof value === 'string' ? BigInt(value) : value,
  );
}

export async function runVectors(text) {
  const vectors = parseExact(text);
  const result = { header: 0, sframe: 0, failures: [] };
  const check = (name, got, want) => {
    if (got !== want) result.failures.push(`${name}: got ${got}, want ${want}`);
    return got === want;
  };

  for (const v of vectors.header) {
    const name = `header kid=${v.kid} ctr=${v.ctr}`;
    let ok = check(`${name} encode`, hex(encodeHeader(v.kid, v.ctr)), v.encoded);
    const parsed = decodeHeader(unhex(v.encoded));
    ok = check(`${name} decode kid`, parsed.kid, v.kid) && ok;
    ok = check(`${name} decode ctr`, parsed.ctr, v.ctr) && ok;
    ok = check(`${name} decode len`, parsed.len, v.encoded.length / 2) && ok;
    if (ok) result.header += 1;
  }

  for (const v of vectors.sframe.filter((s) => s.cipher_suite === 4)) {
    const name = `sframe suite 4 kid=${v.kid} ctr=${v.ctr}`;
    const l = labels(v.kid, 4);
    let ok = check(`${name} key label`, hex(l.key), v.sframe_key_label);
    ok = check(`${name} salt label`, hex(l.salt), v.sframe_salt_label) && ok;
    const { salt } = await deriveKeySalt(unhex(v.base_key), v.kid);
    ok = check(`${name} salt`, hex(salt), v.sframe_salt) && ok;
    ok = check(`${name} nonce`, hex(nonceFor(salt, v.ctr)), v.nonce) && ok;
    const sender = await SframeSender.create(unhex(v.base_key), v.kid, v.ctr);
    const ct = await sender.encrypt(unhex(v.pt), unhex(v.metadata));
    ok = check(`${name} ciphertext`, hex(ct), v.ct) && ok;
    // The AAD is the header and the metadata: the header is the ciphertext's prefix.
    const headerLen = decodeHeader(ct).len;
    ok = check(`${name} aad`, hex(ct.subarray(0, headerLen)) + v.metadata, v.aad) && ok;
    const receiver = new SframeReceiver();
    await receiver.addKey(v.kid, unhex(v.base_key));
    const back = await receiver.decrypt(unhex(v.ct), unhex(v.metadata));
    ok = check(`${name} decrypt`, hex(back.plaintext), v.pt) && ok;
    // One flipped bit anywhere must fail authentication.
    const tampered = unhex(v.ct);
    tampered[tampered.length - 1] ^= 1;
    let refused = false;
    try {
      const fresh = new SframeReceiver();
      await fresh.addKey(v.kid, unhex(v.base_key));
      await fresh.decrypt(tampered, unhex(v.metadata));
    } catch (e) {
      refused = e.kind === 'auth';
    }
    ok = check(`${name} tampered refused`, refused, true) && ok;
    if (ok) result.sframe += 1;
  }
  return result;
}
