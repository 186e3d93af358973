// Checks of handshake.js that need no peer: untrusted messages are refused with the right
// error, and a tampered handshake between two in-page endpoints fails where the Rust state
// machine fails (src/handshake/ tests the same cases). Returns { passed, failures }.

import { Handshake, decodeMessage } from '../handshake.js';

const hex = (n, byte = '00') => byte.repeat(n);

async function identity() {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  return { privateKey: pair.privateKey, publicKey };
}

export async function runHandshakeChecks() {
  const result = { passed: 0, failures: [] };
  const expectError = async (name, code, fn) => {
    try {
      await fn();
      result.failures.push(`${name}: accepted, expected ${code}`);
    } catch (e) {
      if (e.code === code) result.passed += 1;
      else result.failures.push(`${name}: ${e.code ?? e}, expected ${code}`);
    }
  };
  const expectOk = async (name, fn) => {
    try {
      const v = await fn();
      result.passed += 1;
      return v;
    } catch (e) {
      result.failures.push(`${name}: ${e}`);
      return null;
    }
  };

  // Parsing: the same bad inputs as the Rust wire tests.
  const bad = [
    ['null', null],
    ['array', []],
    ['no type', { v: 1 }],
    ['unknown type', { v: 1, type: 'nope' }],
    ['short hex', { v: 1, type: 'confirm', signature: '00', confirm: '00' }],
    ['bad hex', { v: 1, type: 'reply', name: 'b', identity: hex(32, 'zz'), ephemeral: hex(32) }],
    ['missing field', { v: 1, type: 'confirm', signature: hex(64) }],
    ['unknown field', { v: 1, type: 'confirm', signature: hex(64), confirm: hex(32), extra: 1 }],
    ['control char', { v: 1, type: 'reply', name: 'a\u0007b', identity: hex(32), ephemeral: hex(32) }],
    ['long name', { v: 1, type: 'reply', name: 'x'.repeat(129), identity: hex(32), ephemeral: hex(32) }],
    ['number name', { v: 1, type: 'reply', name: 5, identity: hex(32), ephemeral: hex(32) }],
    ['string v', { v: '1', type: 'confirm', signature: hex(64), confirm: hex(32) }],
    ['prototype type', { v: 1, type: '__proto__' }],
  ];
  for (const [name, msg] of bad) await expectError(`parse ${name}`, 'Malformed', () => decodeMessage(msg));
  await expectError('parse v2', 'UnsupportedVersion', () => decodeMessage({ v: 2, type: 'hello' }));
  await expectError('parse too large', 'MessageTooLarge', () =>
    decodeMessage({ v: 1, type: 'reply', name: 'x'.repeat(5000), identity: hex(32), ephemeral: hex(32) }),
  );
  await expectOk('parse uppercase hex (as Rust accepts)', () =>
    decodeMessage({ v: 1, type: 'confirm', signature: hex(64, 'AB'), confirm: hex(32, 'CD') }),
  );

  // A clean run between two endpoints in the page.
  const [alice, bob] = [await identity(), await identity()];
  const run = async (tamper = {}) => {
    const { handshake: a, hello } = await Handshake.initiator(alice, 'room', 'alice');
    const b = Handshake.responder(tamper.bobIdentity ?? bob, tamper.bobRoom ?? 'room', 'bob');
    const reply = (await b.handle(tamper.hello ? tamper.hello(hello) : hello)).send;
    const reveal = (await a.handle(reply)).send;
    const step = await b.handle(tamper.reveal ? tamper.reveal(reveal) : reveal);
    const done = await a.handle(tamper.confirm ? tamper.confirm(step.send) : step.send);
    return { a, b, bobDone: step.established, aliceDone: done.established, reveal };
  };
  const clean = await expectOk('clean handshake', () => run());
  if (clean && clean.aliceDone.safetyCode !== clean.bobDone.safetyCode) {
    result.failures.push('clean handshake: safety codes differ');
  }
  if (clean && !/^\d{4} \d{4}$/.test(clean.aliceDone.safetyCode)) {
    result.failures.push(`safety code format: ${clean.aliceDone.safetyCode}`);
  }
  if (clean) {
    await expectError('message after the end', 'Closed', () => clean.a.handle(clean.reveal));
  }

  const flip = (h) => (h[0] === '0' ? '1' : '0') + h.slice(1);
  await expectError('wrong call id', 'CallIdMismatch', () => run({ bobRoom: 'other' }));
  await expectError('reflected identity', 'ReflectedIdentity', () => run({ bobIdentity: alice }));
  await expectError('commitment mismatch', 'CommitmentMismatch', () =>
    run({ hello: (m) => ({ ...m, commitment: flip(m.commitment) }) }),
  );
  await expectError('forged reveal signature', 'BadSignature', () =>
    run({ reveal: (m) => ({ ...m, signature: flip(m.signature) }) }),
  );
  await expectError('forged reveal confirm', 'BadConfirmation', () =>
    run({ reveal: (m) => ({ ...m, confirm: flip(m.confirm) }) }),
  );
  await expectError('forged confirm signature', 'BadSignature', () =>
    run({ confirm: (m) => ({ ...m, signature: flip(m.signature) }) }),
  );
  await expectError('forged confirm tag', 'BadConfirmation', () =>
    run({ confirm: (m) => ({ ...m, confirm: flip(m.confirm) }) }),
  );
  await expectError('relay swaps the ephemeral key', 'CommitmentMismatch', () =>
    run({ reveal: (m) => ({ ...m, ephemeral: hex(32) }) }),
  );

  // Out of order: a responder given a reveal first, and one error closes it for good.
  const b = Handshake.responder(bob, 'room', 'bob');
  await expectError('reveal before hello', 'UnexpectedMessage', () =>
    b.handle({ v: 1, type: 'reveal', ephemeral: hex(32), signature: hex(64), confirm: hex(32) }),
  );
  const { hello } = await Handshake.initiator(alice, 'room', 'alice');
  await expectError('hello after an error', 'Closed', () => b.handle(hello));
  return result;
}
