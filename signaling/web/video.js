// The video frame layout (docs/call-protocol.md, "Video"): a VP8 frame leaves as
//
//   | VP8 bytes 0..n (clear) | SFrame header | ciphertext of VP8 bytes n.. | tag |
//
// with n = 10 on keyframes (frame tag, start code, size: Chromium's depacketizer reads them
// before any transform runs) and 3 on delta frames (the frame tag), and the clear prefix as
// SFrame metadata, so AAD = SFrame header || prefix. Used by the media worker; the unit page
// runs it against the engine's SFrame (signaling/tests/browser/video.rs).

import { SframeError, concat } from './sframe.js';

export const VP8_KEY_PREFIX = 10;
export const VP8_DELTA_PREFIX = 3;

/// The clear prefix length of a VP8 frame from its first byte (bit 0 clear: a keyframe).
export const vp8PrefixLength = (byte0) => ((byte0 & 1) === 0 ? VP8_KEY_PREFIX : VP8_DELTA_PREFIX);

/// Seals one VP8 frame (bytes) with `sender` (keys.js MediaSender); `keyframe` as the encoder
/// said. Returns { frame, epoch }. A frame shorter than its prefix is refused (SframeError).
export async function sealVp8(sender, data, keyframe, now = Date.now()) {
  const n = keyframe ? VP8_KEY_PREFIX : VP8_DELTA_PREFIX;
  if (data.length < n) throw new SframeError('malformed', 'VP8 frame shorter than its header');
  const prefix = data.slice(0, n);
  const { sealed, epoch } = await sender.encryptVideo(data.subarray(n), prefix, now);
  return { frame: concat(prefix, sealed), epoch };
}

/// Opens one sealed VP8 frame (bytes) with `receiver` (keys.js MediaReceiver for video).
/// Returns { frame (the VP8 frame for the decoder), keyframe, kid, ctr } or throws SframeError.
export async function openVp8(receiver, data, now = Date.now()) {
  if (data.length === 0) throw new SframeError('malformed', 'empty frame');
  // n comes from the first byte as it arrived: it is authenticated, so a flipped bit moves
  // the SFrame header and the frame fails.
  const n = vp8PrefixLength(data[0]);
  if (data.length < n + 1) throw new SframeError('malformed', 'shorter than its prefix');
  const prefix = data.subarray(0, n);
  const opened = await receiver.decrypt(data.subarray(n), now, prefix);
  return {
    frame: concat(prefix, opened.plaintext),
    keyframe: n === VP8_KEY_PREFIX,
    kid: opened.kid,
    ctr: opened.ctr,
  };
}

/// Group calls (docs/call-protocol.md, "Group calls in the browser"): the same layout, sealed
/// by `seal(plaintext, prefix)` (an SframeSender's encrypt, the prefix as metadata) under the
/// member's group video KID. Returns the frame to send; a frame shorter than its prefix is
/// refused (SframeError).
export async function sealVp8With(seal, data, keyframe) {
  const n = keyframe ? VP8_KEY_PREFIX : VP8_DELTA_PREFIX;
  if (data.length < n) throw new SframeError('malformed', 'VP8 frame shorter than its header');
  const prefix = data.slice(0, n);
  return concat(prefix, await seal(data.subarray(n), prefix));
}

/// A sealed VP8 frame as it arrived: { prefix, sealed (the SFrame frame), keyframe }, with n
/// from byte 0 (authenticated as part of the prefix); throws SframeError if too short.
export function splitSealedVp8(data) {
  if (data.length === 0) throw new SframeError('malformed', 'empty frame');
  const n = vp8PrefixLength(data[0]);
  if (data.length < n + 1) throw new SframeError('malformed', 'shorter than its prefix');
  return { prefix: data.subarray(0, n), sealed: data.subarray(n), keyframe: n === VP8_KEY_PREFIX };
}
