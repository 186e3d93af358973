//! Video in the page: VP8 sealed in the worker with the layout of docs/call-protocol.md, sent
//! from Chromium's fake camera playing a Y4M file whose frames carry their number as a barcode,
//! and read back from `#remote-video` in the receiving page.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cdp::{Browser, Page};
use crate::{CONNECT, MEDIA, Server, room, skip, wait_status};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
const FPS: u32 = 30;
/// Frames in the file; Chromium plays it in a loop, so codes count modulo this.
const LOOP: u32 = 90;

/// A file removed when dropped, so a failing test leaves no 31 MB behind either.
pub struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A Y4M file of `LOOP` pictures of the engine's test pattern at `FPS`, picture `i` carrying
/// barcode `i` (`sotto::media::video::TestPattern`, written by its `Y4mSink`).
pub fn barcode_y4m() -> TempFile {
    use sotto::media::video::{TestPattern, VideoFrame, VideoSink, Y4mSink};
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = TempFile(std::env::temp_dir().join(format!(
        "sotto-barcode-{}-{}.y4m",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let pattern = TestPattern::new(WIDTH, HEIGHT, FPS).unwrap();
    let mut sink = Y4mSink::create(&*path, FPS).unwrap();
    let mut frame = VideoFrame::black(2, 2).unwrap();
    for i in 0..LOOP {
        pattern.draw(u64::from(i), &mut frame).unwrap();
        sink.write_frame(&frame).unwrap();
    }
    sink.finish().unwrap();
    path
}

/// Reads the barcode of every frame `#remote-video` presents (requestVideoFrameCallback and a
/// canvas readback, scaled back to the source size) into `window.__video.frames`.
const READER: &str = r#"(() => {
  const video = document.getElementById('remote-video');
  const canvas = document.createElement('canvas');
  canvas.width = 640;
  canvas.height = 360;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const rec = { frames: [], errors: 0, error: null };
  window.__video = rec;
  const read = (now, meta) => {
    try {
      ctx.drawImage(video, 0, 0, 640, 360);
      const px = ctx.getImageData(0, 0, 512, 32).data;
      let code = 0;
      for (let i = 0; i < 16; i += 1) {
        let sum = 0;
        for (let y = 8; y < 24; y += 1) {
          for (let x = 32 * i + 8; x < 32 * i + 24; x += 1) {
            const o = (y * 512 + x) * 4;
            sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2];
          }
        }
        const luma = 16 + ((sum / 256) * 219) / 255; // Back to video range.
        code = (code << 1) | (luma > 125 ? 1 : 0);
      }
      rec.frames.push({ code, t: now, rtp: meta.rtpTimestamp ?? null, w: meta.width, h: meta.height, presented: meta.presentedFrames });
    } catch (e) {
      rec.errors += 1;
      rec.error = String(e);
    }
    video.requestVideoFrameCallback(read);
  };
  video.requestVideoFrameCallback(read);
  return true;
})()"#;

/// An init script that gives the page `test/tamper-worker.js` (the real worker behind a
/// hostile network) instead of the real worker, as `window.__mediaWorker`.
const HOSTILE_WORKER: &str = r#"(() => {
  const RealWorker = window.Worker;
  window.Worker = function (url, options) {
    const hostile = String(url).endsWith('sframe-worker.js');
    const worker = new RealWorker(hostile ? '/test/tamper-worker.js' : url, options);
    if (hostile) window.__mediaWorker = worker;
    return worker;
  };
})();"#;

/// The RTP timestamps of the frames the hostile worker damaged.
const DAMAGED: &str = r#"new Promise((resolve) => {
  const w = window.__mediaWorker;
  const on = (e) => {
    if (e.data?.type !== 'tamper-stats') return;
    w.removeEventListener('message', on);
    resolve(e.data.damaged);
  };
  w.addEventListener('message', on);
  w.postMessage({ type: 'tamper-stats' });
})"#;

/// One presented frame: its barcode, when (ms, page clock), its RTP timestamp and size, and
/// how many frames the element had presented by then (a loaded compositor can present two
/// between callbacks: then the callback reads only the second).
#[derive(Debug, Clone)]
struct Shown {
    code: u32,
    t: f64,
    rtp: Option<u64>,
    width: u64,
    presented: u64,
}

async fn shown(page: &Page) -> Vec<Shown> {
    let v = page.eval("window.__video.frames").await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Shown {
            code: f["code"].as_u64().unwrap() as u32,
            t: f["t"].as_f64().unwrap(),
            rtp: f["rtp"].as_u64(),
            width: f["w"].as_u64().unwrap_or(0),
            presented: f["presented"].as_u64().unwrap(),
        })
        .collect()
}

/// Waits until the page has shown frames over `ms` milliseconds since its first (or `since`).
async fn wait_shown_for(page: &Page, since: usize, ms: u32, what: &str) -> Vec<Shown> {
    page.wait_for(
        &format!(
            "(() => {{ const f = window.__video?.frames ?? []; return f.length > {since} + 1 && f[f.length - 1].t - f[{since}].t >= {ms}; }})()"
        ),
        CONNECT,
        what,
    )
    .await;
    shown(page).await
}

/// What a run of presented frames shows about the barcodes.
#[derive(Debug)]
struct Run {
    /// Frames presented (by the element's count), and read by the callback.
    shown: u64,
    read: usize,
    /// Frames the sender captured over the same span (first to last code, unwrapped).
    sent: u32,
    /// Codes that did not come after their predecessor (modulo the loop).
    out_of_order: Vec<(u32, u32)>,
    /// Longest gap between presented frames, ms, and the mean frame interval.
    max_gap_ms: f64,
    mean_gap_ms: f64,
    /// Gaps of at least max(3 x mean, mean + 150 ms): the W3C freeze definition.
    freezes: usize,
}

fn analyse(frames: &[Shown]) -> Run {
    analyse_codes(frames, LOOP)
}

/// As `analyse`, for codes that count modulo `modulus` (the engine's test pattern: 65536).
fn analyse_codes(frames: &[Shown], modulus: u32) -> Run {
    let mut unwrapped = 0u32;
    let mut out_of_order = Vec::new();
    for pair in frames.windows(2) {
        let (a, b) = (pair[0].code, pair[1].code);
        let step = (b + modulus - a % modulus) % modulus;
        // Chromium's file camera captures the file's first frame twice when it rewinds: two
        // frames with code 0 and their own RTP timestamps. Anything else repeated is wrong.
        if b == 0 && a == 0 && pair[0].rtp != pair[1].rtp {
            unwrapped += 1;
        } else if b >= modulus || step == 0 || step > modulus / 2 {
            out_of_order.push((a, b));
        } else {
            unwrapped += step;
        }
    }
    let gaps: Vec<f64> = frames.windows(2).map(|p| p[1].t - p[0].t).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let limit = (3.0 * mean).max(mean + 150.0);
    let shown = match (frames.first(), frames.last()) {
        (Some(a), Some(b)) => b.presented - a.presented + 1,
        _ => 0,
    };
    Run {
        shown,
        read: frames.len(),
        sent: unwrapped + 1,
        out_of_order,
        max_gap_ms: gaps.iter().copied().fold(0.0, f64::max),
        mean_gap_ms: mean,
        freezes: gaps.iter().filter(|g| **g >= limit).count(),
    }
}

/// The frames after the first `warmup_ms` of presentation.
fn after_warmup(frames: &[Shown], warmup_ms: f64) -> &[Shown] {
    let start = frames[0].t + warmup_ms;
    let i = frames
        .iter()
        .position(|f| f.t >= start)
        .unwrap_or(frames.len());
    &frames[i..]
}

async fn video_stats(page: &Page) -> Value {
    page.eval("window.sotto.stats()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_video_call_shows_every_barcode_in_order() {
    let _media = MEDIA.lock().await;
    let test = "two_browsers_video_call_shows_every_barcode_in_order";
    let y4m = barcode_y4m();
    let Some(browser) = Browser::launch_with(None, Some(&y4m)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let alice = browser.new_page(None).await;
    let bob = browser.new_page(None).await;
    // Keys rotate every second: video follows audio's epochs and sends keyframes after each.
    alice
        .goto(&format!(
            "{}&video=1&rotate=1",
            server.page_url(&room, "alice")
        ))
        .await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    bob.goto(&format!(
        "{}&video=1&rotate=1",
        server.page_url(&room, "bob")
    ))
    .await;
    for page in [&alice, &bob] {
        wait_status(page, "connected", CONNECT).await;
        page.eval(READER).await;
        // The camera is on from the start, with its preview.
        let preview = page
            .eval("window.sotto.camera && document.getElementById('local-video').srcObject?.getVideoTracks()[0]?.readyState")
            .await;
        assert_eq!(preview, "live");
        assert_eq!(page.text("camera").await, "Camera off");
    }
    for (name, page) in [("alice", &alice), ("bob", &bob)] {
        let frames = wait_shown_for(page, 0, 5000, "5 s of remote video").await;
        let all = analyse(&frames);
        let run = analyse(after_warmup(&frames, 1000.0));
        let s = video_stats(page).await;
        eprintln!(
            "{name}: {run:?}; from the first frame: {} shown of {} sent; stats {s}",
            all.shown, all.sent
        );
        assert!(all.out_of_order.is_empty(), "{name}: {all:?}");
        assert!(
            run.shown as f64 >= 0.9 * f64::from(run.sent),
            "{name}: {run:?}"
        );
        assert_eq!(run.freezes, 0, "{name}: {run:?}");
        // Chromium sometimes sends 320x180 for the first seconds (its start bitrate is low);
        // the reader scales every frame back to 640x360, so the codes still read.
        let mut widths: Vec<u64> = frames.iter().map(|f| f.width).collect();
        widths.dedup();
        let v = &s["media"]["video"];
        assert_eq!(v["failed"], 0, "{name}: {s}");
        assert_eq!(v["reorderRejected"], 0, "{name}: {s}");
        assert!(v["opened"].as_u64() >= Some(run.shown), "{name}: {s}");
        assert!(v["sealed"].as_u64() >= Some(100), "{name}: {s}");
        assert_eq!(v["timestampSource"], "rtpTimestamp", "{name}: {s}");
        // Both kinds rotated together, and each switch brought a keyframe.
        assert!(v["recvEpoch"].as_u64() >= Some(2), "{name}: {s}");
        assert!(v["sendEpoch"].as_u64() >= Some(2), "{name}: {s}");
        // Each new epoch: the receiver asked for a keyframe and the sender's encoder made one.
        assert!(v["keyframeRequestsSent"].as_u64() >= Some(3), "{name}: {s}");
        assert!(v["keyframesSent"].as_u64() >= Some(3), "{name}: {s}");
        assert!(v["keyframesReceived"].as_u64() >= Some(3), "{name}: {s}");
        assert!(
            s["videoInbound"]["frameWidth"].as_u64() > Some(0),
            "{name}: {s}"
        );
        // Audio is unaffected.
        assert_eq!(s["media"]["decryptFailures"], 0, "{name}: {s}");
        eprintln!(
            "{name}: {} of {} frames shown after the first second ({} barcodes read), longest gap {:.0} ms (mean {:.1} ms); widths shown {widths:?}",
            run.shown, run.sent, run.read, run.max_gap_ms, run.mean_gap_ms
        );
    }
    drop(browser);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_video_frames_are_dropped_never_shown_and_the_camera_toggles() {
    let _media = MEDIA.lock().await;
    let test = "tampered_video_frames_are_dropped_never_shown_and_the_camera_toggles";
    let y4m = barcode_y4m();
    let Some(browser) = Browser::launch_with(None, Some(&y4m)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    // Alice's frames cross a hostile network: her worker is wrapped by one that damages them.
    let alice = browser.new_page(Some(HOSTILE_WORKER)).await;
    let bob = browser.new_page(None).await;
    // Alice's keys rotate every second, so keyframes keep coming (bob asks after each switch)
    // for the hook that damages keyframes.
    alice
        .goto(&format!(
            "{}&video=1&rotate=1",
            server.page_url(&room, "alice")
        ))
        .await;
    wait_status(&alice, "waiting for someone", CONNECT).await;
    // Bob joins without his camera: he receives only, until he turns it on.
    bob.goto(&server.page_url(&room, "bob")).await;
    wait_status(&bob, "connected", CONNECT).await;
    assert_eq!(bob.eval("window.sotto.camera").await, false);
    bob.eval(READER).await;
    let before = wait_shown_for(&bob, 0, 1000, "alice's video at bob")
        .await
        .len();

    // Damaged ciphertext, a damaged clear prefix byte, keyframes whose bit 0 says "delta", and
    // frames sent as plain VP8 (which would decode and show, were they let through).
    let mut want = 0;
    for (kind, count) in [
        ("ciphertext", 3),
        ("prefix", 3),
        ("prefix-bit0", 2),
        ("unsealed", 3),
    ] {
        alice
            .eval(&format!(
                "window.__mediaWorker.postMessage({{ type: 'tamper-video', kind: {kind:?}, count: {count} }})"
            ))
            .await;
        want += count;
        bob.wait_until(
            "window.sotto.stats()",
            |s| s["media"]["video"]["failed"].as_u64() >= Some(want),
            CONNECT,
            &format!("{kind}: damaged frames counted"),
        )
        .await;
    }
    let tampered: Vec<u64> = alice
        .eval(DAMAGED)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tampered.len() as u64, want);
    // The picture recovers (a keyframe after the failures) and goes on in order.
    let since = shown(&bob).await.len();
    let frames = wait_shown_for(&bob, since, 1000, "video after the damage").await;
    let s = video_stats(&bob).await;
    eprintln!(
        "tampered: bob {:?}; alice sent damaged {tampered:?}; bob stats {s}",
        analyse(&frames)
    );
    let v = &s["media"]["video"];
    assert_eq!(v["failed"], want, "{s}");
    // Ciphertext and prefix: authentication; bit 0 moved the header: garbage KID or header.
    let kinds = v["failureKinds"].as_object().unwrap();
    assert_eq!(
        kinds.values().filter_map(Value::as_u64).sum::<u64>(),
        want,
        "{s}"
    );
    assert!(v["failureKinds"]["auth"].as_u64() >= Some(6), "{s}");
    // None of the damaged frames was ever presented, as garbage or otherwise, from the first
    // frame bob showed to now.
    let all = shown(&bob).await;
    for f in &all {
        assert!(
            !f.rtp.is_some_and(|t| tampered.contains(&t)),
            "a damaged frame was shown: {f:?}"
        );
    }
    assert!(all.iter().all(|f| f.rtp.is_some()), "no RTP timestamps");
    assert!(analyse(&all).out_of_order.is_empty(), "{all:?}");
    assert!(frames.len() > before);

    // Bob turns his camera on mid-call: no renegotiation, alice sees it, sealed.
    alice.eval(READER).await;
    bob.eval("document.getElementById('camera').click()").await;
    bob.wait_for("window.sotto.camera === true", CONNECT, "bob's camera on")
        .await;
    let frames = wait_shown_for(&alice, 0, 1000, "bob's video at alice").await;
    let run = analyse(&frames);
    assert!(run.out_of_order.is_empty(), "{run:?}");
    let s = video_stats(&alice).await;
    assert_eq!(s["media"]["video"]["failed"], 0, "{s}");
    assert!(
        s["media"]["video"]["opened"].as_u64() >= Some(run.shown),
        "{s}"
    );
    // And off again: the track is stopped and the preview empty.
    bob.eval("document.getElementById('camera').click()").await;
    bob.wait_for(
        "window.sotto.camera === false && document.getElementById('local-video').srcObject === null",
        CONNECT,
        "bob's camera off",
    )
    .await;
    drop(browser);
}

/// The video KID of `epoch` and `direction` (video-spec): bit 24 set.
fn video_kid(epoch: u64, direction: u64) -> u64 {
    (1 << 24) | (epoch << 1) | direction
}

/// The next epoch's base key: HKDF-Expand(base, "sotto v1 ratchet", 32), one HMAC block.
fn ratchet(base: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, base);
    ring::hmac::sign(&key, b"sotto v1 ratchet\x01")
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_layout_in_the_page_matches_the_engines_sframe() {
    use sotto::sframe::{CipherSuite, Header, ReceiverContext, SenderContext};

    let test = "video_layout_in_the_page_matches_the_engines_sframe";
    let Some(browser) = Browser::launch(None).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    page.goto(&format!("http://{}/test/unit-checks.html", server.addr))
        .await;
    page.wait_for(
        "window.checksReady === true",
        CONNECT,
        "the unit checks page",
    )
    .await;
    let suite = CipherSuite::AesGcm128Sha256;
    let base = [0x42u8; 32];
    let direction = 1u64;
    // A keyframe (tag, start code, 640x360) and a delta frame as Chromium's encoder makes them,
    // a keyframe with nothing after its prefix, and a delta frame too short for its prefix.
    let mut key = vec![0x90, 0x3e, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
    key.extend((0..200u32).map(|i| (i * 7) as u8));
    let mut delta = vec![0x51, 0x15, 0x00];
    delta.extend((0..60u32).map(|i| (i * 13) as u8));
    let bare_key = key[..10].to_vec();
    let frames = serde_json::json!([
        { "hex": hex::encode(&key), "key": true },
        { "hex": hex::encode(&delta), "key": false },
        { "hex": hex::encode(&bare_key), "key": true },
        { "hex": "5115", "key": false },
    ]);

    // The page seals at epoch 2 (after two rotations); the engine opens with the prefix as
    // metadata under the video KID of that epoch.
    let sealed = page
        .eval(&format!(
            "window.videoSeal({:?}, {direction}, 2, {frames})",
            hex::encode(base)
        ))
        .await;
    let sealed: Vec<String> = sealed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sealed[3], "error: malformed", "{sealed:?}");
    let epoch2 = ratchet(&ratchet(&base));
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, video_kid(2, direction), &epoch2).unwrap();
    for (i, plain) in [&key, &delta, &bare_key].into_iter().enumerate() {
        let wire = hex::decode(&sealed[i]).unwrap();
        let n = if plain[0] & 1 == 0 { 10 } else { 3 };
        assert_eq!(
            wire[..n],
            plain[..n],
            "frame {i}: the prefix is in the clear"
        );
        let (header, _) = Header::parse(&wire[n..]).unwrap();
        assert_eq!(header.kid, video_kid(2, direction), "frame {i}");
        assert_eq!(header.ctr, i as u64, "frame {i}: video's own counter");
        // The rest is not there in the clear.
        if plain.len() > n + 8 {
            assert!(
                !wire.windows(8).any(|w| w == &plain[n..n + 8]),
                "frame {i}: plaintext on the wire"
            );
        }
        let (_, opened) = rx.decrypt_to_vec(&wire[..n], &wire[n..]).unwrap();
        assert_eq!(opened, plain[n..], "frame {i}");
        // The prefix is authenticated: another prefix (bit 0, or a size byte) fails.
        for (byte, bit) in [(0usize, 0x01u8), (1, 0x40)] {
            let mut bad = wire.clone();
            bad[byte] ^= bit;
            let m = if bad[0] & 1 == 0 { 10 } else { 3 };
            let mut fresh = ReceiverContext::new();
            fresh
                .add_key(suite, video_kid(2, direction), &epoch2)
                .unwrap();
            assert!(
                fresh.decrypt_to_vec(&bad[..m], &bad[m..]).is_err(),
                "frame {i}: byte {byte} flipped"
            );
        }
    }

    // The engine seals at epoch 0 (and one frame under the audio KID); the page opens, and
    // refuses what was changed on the way.
    let mut tx = SenderContext::new(suite, video_kid(0, direction), &base).unwrap();
    let seal = |tx: &mut SenderContext, plain: &[u8]| {
        let n = if plain[0] & 1 == 0 { 10 } else { 3 };
        let mut buf = vec![0u8; plain.len() + 64];
        let head = sotto::sframe::MAX_HEADER_LEN;
        buf[head..head + plain.len() - n].copy_from_slice(&plain[n..]);
        let range = tx
            .encrypt_in_place(&plain[..n], &mut buf, head, plain.len() - n)
            .unwrap();
        let mut wire = plain[..n].to_vec();
        wire.extend_from_slice(&buf[range]);
        wire
    };
    let good_key = seal(&mut tx, &key);
    let good_delta = seal(&mut tx, &delta);
    let mut bit0 = seal(&mut tx, &key);
    bit0[0] ^= 1;
    let mut size = seal(&mut tx, &key);
    size[7] ^= 0x10;
    let mut audio_kid = SenderContext::new(suite, direction, &base).unwrap();
    let as_audio = seal(&mut audio_kid, &delta);
    // A fresh receiver holds epochs 0 to 2: epoch 3 is unknown until 1 or 2 arrived.
    let mut tx3 = SenderContext::new(suite, video_kid(3, direction), &ratchet(&epoch2)).unwrap();
    let epoch3 = seal(&mut tx3, &delta);
    let mut tx2 = SenderContext::new(suite, video_kid(2, direction), &epoch2).unwrap();
    let epoch2_key = seal(&mut tx2, &key);
    let frames = serde_json::json!([
        hex::encode(&good_key),
        hex::encode(&good_delta),
        hex::encode(&bit0),
        hex::encode(&size),
        hex::encode(&as_audio),
        hex::encode(&good_delta),
        hex::encode(&delta),
        hex::encode(&epoch3),
        hex::encode(&epoch2_key),
        hex::encode(&epoch3),
    ]);
    let opened = page
        .eval(&format!(
            "window.videoOpen({:?}, {direction}, {frames})",
            hex::encode(base)
        ))
        .await;
    let opened = opened.as_array().unwrap();
    assert_eq!(opened[0]["hex"], hex::encode(&key), "{opened:?}");
    assert_eq!(opened[0]["keyframe"], true);
    assert_eq!(opened[0]["kid"], video_kid(0, direction));
    assert_eq!(opened[1]["hex"], hex::encode(&delta), "{opened:?}");
    assert_eq!(opened[1]["keyframe"], false);
    // Bit 0 moved the header (garbage KID); a changed size byte fails authentication; a frame
    // under the audio KID is not video; a copy is a replay; plain VP8 does not open.
    assert!(opened[2]["error"].is_string(), "{opened:?}");
    assert_eq!(opened[3]["error"], "auth", "{opened:?}");
    assert_eq!(opened[4]["error"], "unknown_kid", "{opened:?}");
    assert_eq!(opened[5]["error"], "replay", "{opened:?}");
    assert!(opened[6]["error"].is_string(), "{opened:?}");
    assert_eq!(opened[7]["error"], "unknown_kid", "{opened:?}");
    assert_eq!(opened[8]["hex"], hex::encode(&key), "{opened:?}");
    assert_eq!(opened[8]["kid"], video_kid(2, direction));
    // Epoch 2 seen: the receiver now holds 3 and 4 too (this copy of epoch 3 is new to it).
    assert_eq!(opened[9]["hex"], hex::encode(&delta), "{opened:?}");
    assert_eq!(opened[9]["kid"], video_kid(3, direction));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_and_sotto_call_cli_exchange_sealed_video() {
    use sotto::media::video::{VideoFrame, VideoSource, Y4mSource, read_code};

    let _media = MEDIA.lock().await;
    let test = "browser_and_sotto_call_cli_exchange_sealed_video";
    let y4m = barcode_y4m();
    let Some(browser) = Browser::launch_with(None, Some(&y4m)).await else {
        return skip(test);
    };
    let server = Server::start().await;
    let room = room(test);
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (seen, stats_json) = (dir.join("seen.y4m"), dir.join("stats.json"));
    let page = browser.new_page(None).await;
    // The page's keys rotate every second: the CLI follows its video epochs.
    page.goto(&format!(
        "{}&video=1&rotate=1",
        server.page_url(&room, "web")
    ))
    .await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    // The CLI sends its test pattern (the same barcode, counting on past 90) and writes what
    // it decodes of the browser's camera.
    let child = std::process::Command::new(crate::sotto_bin::sotto_bin())
        .args(["call", "--server", &server.ws_url(), "--room", &room])
        .args(["--name", "cli", "--bind", "127.0.0.1:0", "--tone", "660"])
        .args(["--duration", "6", "--video", "test-pattern"])
        .arg("--identity")
        .arg(dir.join("identity.json"))
        .arg("--output")
        .arg(dir.join("heard.wav"))
        .arg("--video-output")
        .arg(&seen)
        .arg("--stats-json")
        .arg(&stats_json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cli = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    wait_status(&page, "connected", CONNECT).await;
    page.eval(READER).await;
    let frames = wait_shown_for(&page, 0, 2000, "the CLI's video in the page").await;
    let run = analyse_codes(after_warmup(&frames, 500.0), 1 << 16);
    let s = video_stats(&page).await;
    let out = tokio::time::timeout(CONNECT + Duration::from_secs(6), cli)
        .await
        .expect("sotto call exits")
        .unwrap();
    assert!(
        out.status.success(),
        "sotto call failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_json).unwrap()).unwrap();
    // What the CLI decoded of the browser's camera: the barcodes, in order.
    let mut source = Y4mSource::open(&seen).unwrap();
    let mut picture = VideoFrame::black(WIDTH, HEIGHT).unwrap();
    let mut codes = Vec::new();
    // And how faithful they are: each picture against the pattern picture its code names.
    let (mut probe, probe_report) = sotto::media::video::VideoProbe::new(
        Some(sotto::media::video::TestPattern::new(WIDTH, HEIGHT, FPS).unwrap()),
        1,
    )
    .unwrap();
    while source.read_frame(&mut picture).unwrap() {
        codes.push(read_code(&picture));
        sotto::media::video::VideoSink::write_frame(&mut probe, &picture).unwrap();
    }
    let fidelity = probe_report.report();
    eprintln!("the CLI's pictures of the browser's camera: {fidelity:?}");
    // Chromium may send a smaller picture at first (scaled back up in the file): judge the
    // pictures at full resolution only.
    if fidelity.psnr_samples > 0 {
        assert!(fidelity.psnr_mean_db.unwrap() >= 30.0, "{fidelity:?}");
    }
    eprintln!(
        "browser <-> sotto call video: page {run:?}; page stats {}; CLI stats {stats}; CLI read {} of {} pictures' codes",
        s["media"]["video"],
        codes.iter().flatten().count(),
        codes.len()
    );
    // The page: the CLI's pattern in order, every frame opened, none failed.
    assert!(run.out_of_order.is_empty(), "{run:?}");
    assert!(run.shown as f64 >= 0.9 * f64::from(run.sent), "{run:?}");
    assert_eq!(s["media"]["video"]["failed"], 0, "{s}");
    assert!(
        s["media"]["video"]["opened"].as_u64() >= Some(run.shown),
        "{s}"
    );
    // The CLI: the browser's frames opened, decoded and in order.
    assert_eq!(stats["video_decrypt_failures"], 0, "{stats}");
    assert!(s["media"]["video"]["sendEpoch"].as_u64() >= Some(2), "{s}");
    assert!(
        stats["video_frames_decrypted"].as_u64() >= Some(60),
        "{stats}"
    );
    let read: Vec<Shown> = codes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, &c)| Shown {
            code: u32::from(c),
            t: i as f64,
            rtp: Some(i as u64),
            width: u64::from(WIDTH),
            presented: i as u64,
        })
        .collect();
    assert!(read.len() >= 60, "{} codes read", read.len());
    let cli_run = analyse(&read);
    assert!(cli_run.out_of_order.is_empty(), "{cli_run:?}");
    drop(browser);
    let _ = std::fs::remove_dir_all(&dir);
}
