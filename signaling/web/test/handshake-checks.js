// Checks of handshake.js that need no peer: untrusted messages are refused with the right
// error, and a tampered handshake between two in-page endpoints fails where the Rust state
// machine fails (src/handshake/ tests the same cases). Returns { passed, failures }.

import { Handshake, decodeMessage, normalDtls, sdpMatchesDtls } from '../handshake.js';

const hex = (n, byte = '00') => byte.repeat(n);
const dtlsOf = (byte) => `sha-256 ${Array(32).fill(byte).join(':')}`;
const DTLS_A = dtlsOf('A1');
const DTLS_B = dtlsOf('B2');

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
    ['no type', { v: 2 }],
    ['unknown type', { v: 2, type: 'nope' }],
    ['short hex', { v: 2, type: 'confirm', signature: '00', confirm: '00' }],
    ['bad hex', { v: 2, type: 'reply', name: 'b', identity: hex(32, 'zz'), dtls: DTLS_B, ephemeral: hex(32) }],
    ['missing field', { v: 2, type: 'confirm', signature: hex(64) }],
    ['unknown field', { v: 2, type: 'confirm', signature: hex(64), confirm: hex(32), extra: 1 }],
    ['control char', { v: 2, type: 'reply', name: 'a\u0007b', identity: hex(32), dtls: DTLS_B, ephemeral: hex(32) }],
    ['long name', { v: 2, type: 'reply', name: 'x'.repeat(129), identity: hex(32), dtls: DTLS_B, ephemeral: hex(32) }],
    ['number name', { v: 2, type: 'reply', name: 5, identity: hex(32), dtls: DTLS_B, ephemeral: hex(32) }],
    ['string v', { v: '2', type: 'confirm', signature: hex(64), confirm: hex(32) }],
    ['prototype type', { v: 2, type: '__proto__' }],
  ];
  // dtls: a sha-256 fingerprint (any letter case, as the engine parses it), nothing else.
  const reply = (dtls) => ({ v: 2, type: 'reply', name: 'b', identity: hex(32), dtls, ephemeral: hex(32) });
  const noDtls = reply(DTLS_B);
  delete noDtls.dtls;
  bad.push(
    ['hello without dtls', { v: 2, type: 'hello', call_id: 'r', name: 'a', identity: hex(32), commitment: hex(32) }],
    ['reply without dtls', noDtls],
    ['sha-1 dtls', reply(`sha-1 ${Array(20).fill('AB').join(':')}`)],
    ['short dtls', reply(`sha-256 ${Array(31).fill('AB').join(':')}`)],
    ['dtls without a space', reply(`sha-256:${DTLS_B.slice(8)}`)],
    ['dtls with three-digit bytes', reply(DTLS_B.replace('B2:B2', 'B2B:2'))],
    ['dtls with a trailing colon', reply(`${DTLS_B}:`)],
    ['dtls not a string', reply(7)],
    ['dtls too long', reply(`${DTLS_B}${' AB'.repeat(30)}`)],
    ['dtls not ASCII', reply(DTLS_B.replace('B2', 'B\u00b2'))],
  );
  for (const [name, msg] of bad) await expectError(`parse ${name}`, 'Malformed', () => decodeMessage(msg));
  // Version 1 (no DTLS binding) is refused with a reason people can act on.
  const v1Hello = { v: 1, type: 'hello', call_id: 'r', name: 'a', identity: hex(32), commitment: hex(32) };
  await expectError('parse v1 hello', 'UnsupportedVersion', () => decodeMessage(v1Hello));
  try {
    decodeMessage(v1Hello);
  } catch (e) {
    if (!/version 1, which does not bind DTLS/.test(e.message)) {
      result.failures.push(`v1 refusal reason: ${e.message}`);
    }
  }
  await expectError('parse v3', 'UnsupportedVersion', () => decodeMessage({ v: 3, type: 'hello' }));
  await expectError('parse too large', 'MessageTooLarge', () =>
    decodeMessage({ v: 2, type: 'reply', name: 'x'.repeat(5000), identity: hex(32), dtls: DTLS_B, ephemeral: hex(32) }),
  );
  // Other letter cases and spacing are read in normal form, which the transcript takes.
  for (const variant of [DTLS_B.toLowerCase(), `SHA-256 ${DTLS_B.slice(8)}`, ` sha-256  ${DTLS_B.slice(8)} `]) {
    const got = await expectOk(`parse dtls ${JSON.stringify(variant.slice(0, 12))}`, () => decodeMessage(reply(variant)));
    if (got && got.dtls !== DTLS_B) result.failures.push(`dtls not normalised: ${got.dtls}`);
  }
  await expectOk('parse uppercase hex (as Rust accepts)', () =>
    decodeMessage({ v: 2, type: 'confirm', signature: hex(64, 'AB'), confirm: hex(32, 'CD') }),
  );

  // A clean run between two endpoints in the page.
  const [alice, bob] = [await identity(), await identity()];
  const run = async (tamper = {}) => {
    const { handshake: a, hello } = await Handshake.initiator(alice, 'room', 'alice', DTLS_A);
    const b = Handshake.responder(tamper.bobIdentity ?? bob, tamper.bobRoom ?? 'room', 'bob', DTLS_B);
    const reply = (await b.handle(tamper.hello ? tamper.hello(hello) : hello)).send;
    const reveal = (await a.handle(tamper.reply ? tamper.reply(reply) : reply)).send;
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
  if (clean && (clean.aliceDone.peerDtls !== DTLS_B || clean.bobDone.peerDtls !== DTLS_A)) {
    result.failures.push('clean handshake: each side must learn the other side\'s signed dtls');
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
  // A relay that puts its own DTLS fingerprint in either message breaks the signatures.
  const DTLS_M = dtlsOf('EE');
  await expectError('relay swaps the initiator dtls', 'BadSignature', () =>
    run({ hello: (m) => ({ ...m, dtls: DTLS_M }) }),
  );
  await expectError('relay swaps the responder dtls', 'BadSignature', () =>
    run({ reply: (m) => ({ ...m, dtls: DTLS_M }) }),
  );
  const relaxed = await expectOk('a relay that lower-cases a dtls changes nothing', () =>
    run({ hello: (m) => ({ ...m, dtls: m.dtls.toLowerCase() }) }),
  );
  if (relaxed && relaxed.bobDone.peerDtls !== DTLS_A) result.failures.push('lower-cased dtls not normalised');
  await expectError('own dtls not in normal form', 'Malformed', () =>
    Handshake.initiator(alice, 'room', 'alice', DTLS_A.toLowerCase()),
  );

  // The transport binding: every a=fingerprint line of the peer's SDP is its signed dtls.
  const line = (d) => `a=fingerprint:${d}`;
  const sdp = (...lines) => ['v=0', 'o=- 1 2 IN IP4 127.0.0.1', ...lines, 'm=audio 9 UDP/TLS/RTP/SAVPF 111', ''].join('\r\n');
  const binding = [
    ['one matching line', sdp(line(DTLS_B)), true],
    ['matching, other case in the SDP', sdp(line(DTLS_B.toLowerCase().replace('sha-256', 'SHA-256'))), true],
    ['session and media lines match', sdp(line(DTLS_B), line(DTLS_B)), true],
    ['no fingerprint line', sdp(), false],
    ['another fingerprint', sdp(line(DTLS_M)), false],
    ['one of two lines differs', sdp(line(DTLS_B), line(DTLS_M)), false],
    ['a sha-1 line beside', sdp(line(DTLS_B), line(`sha-1 ${Array(20).fill('AB').join(':')}`)), false],
    ['a garbled line', sdp(line('sha-256 nonsense')), false],
  ];
  for (const [name, text, want] of binding) {
    if (sdpMatchesDtls(text, DTLS_B) === want) result.passed += 1;
    else result.failures.push(`sdp binding ${name}: expected ${want}`);
  }
  if (normalDtls(' sha-256  ab:cd ') !== null || normalDtls(`SHA-256 ${DTLS_B.slice(8).toLowerCase()}`) !== DTLS_B) {
    result.failures.push('normalDtls');
  } else {
    result.passed += 1;
  }

  // Out of order: a responder given a reveal first, and one error closes it for good.
  const b = Handshake.responder(bob, 'room', 'bob', DTLS_B);
  await expectError('reveal before hello', 'UnexpectedMessage', () =>
    b.handle({ v: 2, type: 'reveal', ephemeral: hex(32), signature: hex(64), confirm: hex(32) }),
  );
  const { hello } = await Handshake.initiator(alice, 'room', 'alice', DTLS_A);
  await expectError('hello after an error', 'Closed', () => b.handle(hello));
  return result;
}
