//! Video in the page's group calls (issue 14): the page's group video frames against the
//! engine's (`src/group/`, kind video, the VP8 prefix as SFrame metadata), and a group call of
//! two pages with fake cameras and one `sotto call --group --video test-pattern` member through
//! the SFU, where every member shows every other's video.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotto::group::{
    GroupKeys, GroupKid, GroupSecret, KeyKind, Keyring, OpenOutcome, OpenedFrame, Slot,
};
use sotto::sframe::CipherSuite;

use crate::cdp::Browser;
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, MEDIA, Server, room, skip, tone_wav};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A VP8 keyframe's first 10 bytes (frame tag, start code, 640x480) and a body.
fn vp8_keyframe() -> Vec<u8> {
    let mut f = vec![0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
    f.extend((0..300u32).map(|i| (i * 7) as u8));
    f
}

/// A VP8 delta frame (byte 0 bit 0 set: a 3-byte prefix) and a body.
fn vp8_delta() -> Vec<u8> {
    let mut f = vec![0x31, 0x05, 0x00];
    f.extend((0..120u32).map(|i| (i * 13 + 1) as u8));
    f
}

/// The page seals and opens group video exactly as the engine: keys from the member's group
/// secret under its video KID (kind 1), the VP8 prefix in the clear and authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_group_video_frames_match_the_engines() {
    let Some(browser) = Browser::launch(None).await else {
        return skip("the_pages_group_video_frames_match_the_engines");
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    page.goto(&format!("http://{}/", server.addr)).await;
    page.wait_for("document.readyState === 'complete'", CONNECT, "the page")
        .await;

    // The engine seals a keyframe as member 9 (generation 0) under its video key.
    let mut engine = GroupKeys::with_secret(
        CipherSuite::AesGcm128Sha256,
        Slot::new(9).unwrap(),
        GroupSecret::from_bytes([5; 32]),
    )
    .unwrap();
    let key = vp8_keyframe();
    let sealed = engine
        .sender(KeyKind::Video)
        .encrypt_to_vec(&key[..10], &key[10..])
        .unwrap();
    let from_engine = [&key[..10], &sealed[..]].concat();
    // The next keyframe (counter 1), to be damaged on the way.
    let sealed = engine
        .sender(KeyKind::Video)
        .encrypt_to_vec(&key[..10], &key[10..])
        .unwrap();
    let second = [&key[..10], &sealed[..]].concat();
    // The same keyframe under the engine's AUDIO key: not a video frame, refused on a video track.
    let audio_sealed = engine
        .sender(KeyKind::Audio)
        .encrypt_to_vec(&key[..10], &key[10..])
        .unwrap();
    let audio_kind = [&key[..10], &audio_sealed[..]].concat();
    let video_kid = GroupKid::new(3, Slot::new(12).unwrap(), KeyKind::Video)
        .unwrap()
        .to_u64();

    let js = format!(
        r#"(async () => {{
            const g = await import('/group-keys.js');
            const v = await import('/video.js');
            const {{ SframeSender }} = await import('/sframe.js');
            const bytes = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
            const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
            const ring = new g.GroupKeyring();
            ring.addSender(9);
            await ring.insert(9, 0, new Uint8Array(32).fill(5));
            const open = async (wire) => {{
                try {{
                    const p = v.splitSealedVp8(wire);
                    const out = await ring.open(p.sealed, performance.now(), null, null, {{ kind: g.KIND_VIDEO, metadata: p.prefix }});
                    return {{ kind: out.opened.kind, slot: out.opened.slot, frame: hex(new Uint8Array([...p.prefix, ...out.opened.plaintext])), keyframe: p.keyframe }};
                }} catch (e) {{
                    return {{ error: e.kind ?? String(e) }};
                }}
            }};
            const opened = await open(bytes('{from_engine}'));
            // The clear prefix is authenticated: flipping a bit of it fails.
            const tampered = bytes('{second}');
            tampered[1] ^= 0x40;
            const tamperedOut = await open(tampered);
            const audioKind = await open(bytes('{audio_kind}'));
            // An audio track refuses a video frame.
            const onAudio = await ring.open(v.splitSealedVp8(bytes('{from_engine}')).sealed, performance.now(), null, null)
                .then(() => 'opened', (e) => e.kind);
            // The page seals a delta frame as member 12, generation 3, for the engine to open.
            const sender = await SframeSender.create(new Uint8Array(32).fill(6), g.groupKid(3, 12, g.KIND_VIDEO));
            const sealed = await v.sealVp8With((plain, prefix) => sender.encrypt(plain, prefix), bytes('{delta}'), false);
            // No key for member 12 here: refused, never returned unopened.
            const unknown = await open(sealed);
            return {{
                opened,
                unknown,
                tamperedOut,
                audioKind,
                onAudio,
                kid: g.groupKid(3, 12, g.KIND_VIDEO).toString(),
                sealed: hex(sealed),
                stats: ring.stats()[9],
            }};
        }})()"#,
        from_engine = hex(&from_engine),
        second = hex(&second),
        audio_kind = hex(&audio_kind),
        delta = hex(&vp8_delta()),
    );
    let out = page.eval(&js).await;
    assert_eq!(
        out["opened"],
        json!({ "kind": 1, "slot": 9, "frame": hex(&key), "keyframe": true }),
        "{out}"
    );
    assert_eq!(out["tamperedOut"], json!({ "error": "auth" }), "{out}");
    assert_eq!(out["audioKind"], json!({ "error": "malformed" }), "{out}");
    assert_eq!(out["onAudio"], "malformed", "{out}");
    assert_eq!(out["unknown"], json!({ "error": "unknown_kid" }), "{out}");
    assert_eq!(out["kid"], video_kid.to_string(), "{out}");
    assert_eq!(out["stats"]["videoFramesDecrypted"], 1, "{out}");
    assert_eq!(out["stats"]["decryptFailures"], 1, "{out}");

    // The engine opens the page's frame with member 12's generation-3 secret.
    let sealed = unhex(out["sealed"].as_str().unwrap());
    let delta = vp8_delta();
    assert_eq!(&sealed[..3], &delta[..3], "the prefix stays in the clear");
    let mut ring = Keyring::new(CipherSuite::AesGcm128Sha256);
    let now = Instant::now();
    ring.add_sender(Slot::new(12).unwrap()).unwrap();
    ring.insert(
        now,
        Slot::new(12).unwrap(),
        3,
        0,
        GroupSecret::from_bytes([6; 32]),
    )
    .unwrap();
    match ring.open(now, &sealed[..3], &sealed[3..]).unwrap() {
        OpenOutcome::Opened(OpenedFrame {
            slot,
            kind,
            generation,
            payload,
            ..
        }) => {
            assert_eq!(
                (slot, kind, generation),
                (Slot::new(12).unwrap(), KeyKind::Video, 3)
            );
            assert_eq!(payload, &delta[3..]);
        }
        other => panic!("the engine could not open the page's video frame: {other:?}"),
    }
}

async fn wait_peers(server: &Server, n: u64) {
    let deadline = Instant::now() + CONNECT;
    while server.app.metrics.peers.load(Relaxed) < n {
        assert!(Instant::now() < deadline, "the room never had {n} members");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first frame the tile's <video> presents from now: [width, height] (rVFC metadata).
fn presented(peer: &str) -> String {
    format!(
        r#"new Promise((resolve) => {{
            const v = document.querySelector('#tiles .tile[data-peer="{peer}"] video');
            if (!v || v.hidden) return resolve(null);
            v.requestVideoFrameCallback((now, meta) => resolve([meta.width, meta.height]));
            setTimeout(() => resolve(null), 5000);
        }})"#
    )
}

/// Two pages with cameras and one CLI member sending its test pattern: each page's tiles for
/// the other page and for the CLI member play their video (decoded on each tile's own slot
/// track, a sane size), the CLI member decodes both pages' cameras, nothing failed to open,
/// and everyone still hears everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_see_each_others_video_in_a_group_call() {
    let test = "two_pages_see_each_others_video_in_a_group_call";
    let _media = MEDIA.lock().await;
    let wav = tone_wav(880.0, 5);
    // Chromium's own fake camera (640x480, moving); each page is its own profile.
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let sfu = std::sync::Arc::new(crate::forgetful_sfu::ForgetfulSfu::new(
        Server::loopback_sfu(),
    ));
    let server = Server::start_with_sfu_link(sfu.clone()).await;
    let room = room("group-video");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cli = Command::new(sotto_bin())
        .args(["call", "--group", "--server", &server.ws_url()])
        .args(["--room", &room, "--name", "carol", "--bind", "127.0.0.1:0"])
        .args(["--tone", "440", "--duration", "25"])
        .args(["--video", "test-pattern"])
        .arg("--identity")
        .arg(dir.join("carol").join("identity.json"))
        .arg("--stats-json")
        .arg(dir.join("carol.json"))
        .arg("--output")
        .arg(dir.join("carol.wav"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_peers(&server, 1).await;
    let ann = browser.new_page(None).await;
    ann.goto(&format!(
        "{}&group=1&video=1",
        server.page_url(&room, "ann")
    ))
    .await;
    wait_peers(&server, 2).await;
    let ben = browser.new_page(None).await;
    ben.goto(&format!(
        "{}&group=1&video=1",
        server.page_url(&room, "ben")
    ))
    .await;

    for (me, page, other) in [("ann", &ann, "ben"), ("ben", &ben, "ann")] {
        let video = page
            .wait_until(
                "window.sotto.group?.videoStats?.()",
                |v| {
                    [other, "carol"].iter().all(|o| {
                        v[o]["framesDecoded"].as_u64() >= Some(30)
                            && v[o]["frameWidth"].as_u64() > Some(0)
                    })
                },
                CONNECT,
                &format!("{me}'s tiles for {other} and carol decoding video"),
            )
            .await;
        // The engine's test pattern is 640x360 (the encoder may start smaller).
        let (w, h) = (
            video["carol"]["frameWidth"].as_u64().unwrap(),
            video["carol"]["frameHeight"].as_u64().unwrap(),
        );
        assert!(
            (80..=640).contains(&w) && w * 9 == h * 16,
            "{me} shows carol at {w}x{h}"
        );
        let size = page
            .wait_until(
                &presented(other),
                |v| !v.is_null(),
                CONNECT,
                &format!("a frame presented on {me}'s tile for {other}"),
            )
            .await;
        let (w, h) = (size[0].as_u64().unwrap(), size[1].as_u64().unwrap());
        // The fake camera is 640x480; Chromium may send less while its bitrate ramps up.
        assert!(
            (80..=640).contains(&w) && (60..=480).contains(&h) && w * 3 == h * 4,
            "{me} shows {other} at {w}x{h}"
        );
        // Every other member's tile has a slot track of its own; ours shows our camera.
        let tiles = page
            .eval(
                "Object.fromEntries(Array.from(document.querySelectorAll('#tiles .tile'), (t) => { const v = t.querySelector('video'); return [t.dataset.peer, v && !v.hidden ? v.dataset.track : null]; }))",
            )
            .await;
        assert_eq!(tiles[me], "local", "{me}: {tiles}");
        for o in [other, "carol"] {
            assert!(
                tiles[o].as_str().is_some_and(|t| t != "local"),
                "{me}: {tiles}"
            );
        }
        assert_ne!(tiles[other], tiles["carol"], "{me}: {tiles}");
        let names = page.eval("window.sotto.group.videos").await;
        assert_eq!(
            names,
            json!({ other: video[other]["track"], "carol": video["carol"]["track"] }),
            "{me}: {names}"
        );
    }

    // Audio goes on: each page opens 100 audio frames from both others, nothing failed.
    for (me, page) in [("ann", &ann), ("ben", &ben)] {
        let stats = page
            .wait_until(
                "window.sotto.stats()",
                |s| {
                    s["participants"].as_array().is_some_and(|p| {
                        p.len() == 2
                            && p.iter().all(|p| {
                                p["frames_decrypted"].as_u64().unwrap_or(0)
                                    - p["video_frames_decrypted"].as_u64().unwrap_or(0)
                                    >= 100
                            })
                    })
                },
                CONNECT,
                &format!("{me} hearing both others"),
            )
            .await;
        let v = &stats["media"]["group"]["video"];
        eprintln!("{me}: video {v}; participants {}", stats["participants"]);
        for p in stats["participants"].as_array().unwrap() {
            assert_eq!(p["decrypt_failures"], 0, "{me}: {stats}");
            assert_eq!(p["replays"], 0, "{me}: {stats}");
            let video = p["video_frames_decrypted"].as_u64().unwrap();
            assert!(video >= 30, "{me}: {stats}");
        }
        // Frames that came before their sender's key are dropped (never shown) and counted as
        // unknown_kid; nothing else may fail.
        let unknown = v["failureKinds"]["unknown_kid"].as_u64().unwrap_or(0);
        assert_eq!(v["failed"].as_u64(), Some(unknown), "{me}: {v}");
        assert!(v["sealed"].as_u64() >= Some(30), "{me}: {v}");
        assert_eq!(v["reorderRejected"], 0, "{me}: {v}");
        assert_eq!(stats["media"]["group"]["failureKinds"]["auth"], Value::Null);
    }

    // The SFU forgets everyone: both pages join it again on new connections, and each tile
    // shows the other's video again, decoded on the new connection's slot track.
    assert_eq!(sfu.forget(&room), 3);
    for (me, page, other) in [("ann", &ann, "ben"), ("ben", &ben, "ann")] {
        page.wait_until(
            "window.sotto.group.sfuReconnects",
            |v| v.as_u64() >= Some(1),
            CONNECT,
            &format!("{me} back on the SFU"),
        )
        .await;
        let video = page
            .wait_until(
                "window.sotto.group.videoStats()",
                |v| v[other]["framesDecoded"].as_u64() >= Some(30),
                CONNECT,
                &format!("{me}'s tile for {other} decoding video again"),
            )
            .await;
        eprintln!("{me} after the SFU came back: {video}");
        // Every frame opened on the new connection was played: the order checks started
        // again with its timestamps.
        let g = &page.eval("window.sotto.stats()").await["media"]["group"];
        assert_eq!(g["reorderRejected"], 0, "{me}: {g}");
        assert_eq!(g["video"]["reorderRejected"], 0, "{me}: {g}");
    }
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "carol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("carol.json")).unwrap()).unwrap();
    for name in ["ann", "ben"] {
        let p = report["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("carol has no participant {name}: {report}"));
        assert_eq!(p["decrypt_failures"], 0, "{name}: {p}");
        assert_eq!(p["video_decrypt_failures"], 0, "{name}: {p}");
        assert!(p["frames_decrypted"].as_u64() >= Some(100), "{name}: {p}");
        // The engine decoded the page's camera, opened under the page's video key.
        assert!(
            p["video_frames_decrypted"].as_u64() >= Some(30),
            "{name}: {p}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
