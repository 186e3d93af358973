//! The page as a group member (`&group=1`): its group-key code against the engine's (KIDs,
//! bundle and ack bodies, the join ratchet, the group safety code, a frame the engine sealed),
//! and one group call of three `sotto call --group` processes and one Chromium page through
//! the SFU: everyone hears the page, the page opens every member's frames with no failures,
//! and all four show one group safety code.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotto::group::{GroupKeys, GroupKid, GroupSecret, JoinKind, KeyAck, KeyBundle, KeyKind, Slot};
use sotto::handshake::{IdentityKey, group_safety_code};
use sotto::media::{AudioSource, WavSource};
use sotto::sframe::CipherSuite;

use crate::cdp::Browser;
use crate::peer::RustPeer;
use crate::sotto_bin::sotto_bin;
use crate::{CONNECT, Server, room, skip, tone_wav, wait_status};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Computed by the page's modules; compared with the engine's results for the same inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_group_keys_match_the_engines() {
    let Some(browser) = Browser::launch(None).await else {
        return skip("the_pages_group_keys_match_the_engines");
    };
    let server = Server::start().await;
    let page = browser.new_page(None).await;
    page.goto(&format!("http://{}/", server.addr)).await;
    page.wait_for("document.readyState === 'complete'", CONNECT, "the page")
        .await;

    // The engine's side.
    let keys: Vec<IdentityKey> = [3u8, 1, 2, 9]
        .iter()
        .map(|&n| {
            let mut k = [n; 32];
            k[31] = n.wrapping_mul(37);
            IdentityKey::from_bytes(k)
        })
        .collect();
    let code = group_safety_code("trio room", &keys).unwrap().to_string();
    let code3 = group_safety_code("trio room", &keys[..3])
        .unwrap()
        .to_string();
    let secret = [7u8; 32];
    let ratcheted = GroupSecret::from_bytes(secret)
        .ratchet()
        .unwrap()
        .ratchet()
        .unwrap();
    let bundle = KeyBundle {
        slot: Slot::new(5).unwrap(),
        generation: 2,
        seq: 300,
        secret: ratcheted,
    }
    .encode();
    let ack = KeyAck {
        slot: Slot::new(127).unwrap(),
        generation: 70,
    }
    .encode();
    let kid = GroupKid::new(70, Slot::new(127).unwrap(), KeyKind::Audio)
        .unwrap()
        .to_u64();
    // Frames the engine sealed under generation 0 and, after three joins ratcheted its key,
    // generation 3 of slot 4. The page holds only generation 0: it must derive the ratchet
    // forward, as members that were in the room do when someone joins.
    let mut engine = GroupKeys::with_secret(
        CipherSuite::AesGcm128Sha256,
        Slot::new(4).unwrap(),
        GroupSecret::from_bytes([9; 32]),
    )
    .unwrap();
    let frame0 = engine.seal(KeyKind::Audio, b"generation zero").unwrap();
    for joiner in 10..13 {
        engine
            .member_joined(
                Instant::now(),
                Slot::new(joiner).unwrap(),
                JoinKind::NewJoiner,
            )
            .unwrap();
    }
    assert_eq!(engine.send_generation(), 3);
    let frame3 = engine.seal(KeyKind::Audio, b"generation three").unwrap();

    let keys_hex: Vec<String> = keys.iter().map(|k| hex(k.as_bytes())).collect();
    let js = format!(
        r#"(async () => {{
            const g = await import('/group-keys.js');
            const {{ SframeSender }} = await import('/sframe.js');
            const bytes = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
            const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
            const keys = {keys}.map(bytes);
            const r1 = await g.ratchetGroup(new Uint8Array(32).fill(7));
            const r2 = await g.ratchetGroup(r1);
            const ring = new g.GroupKeyring();
            ring.addSender(4);
            await ring.insert(4, 0, new Uint8Array(32).fill(9));
            const opened = await ring.open(bytes('{frame0}'), performance.now(), null, null);
            const derived = await ring.open(bytes('{frame3}'), performance.now(), null, null);
            // Held until its key comes, then released; never without it.
            const s6 = new Uint8Array(32).fill(6);
            const early = await SframeSender.create(s6, g.groupKid(0, 6));
            ring.addSender(6);
            let released = null;
            const held = await ring.open(await early.encrypt(Uint8Array.of(1, 2)), performance.now(), (o) => (released = o), () => {{}});
            const heldThen = released;
            const inserted = await ring.insert(6, 0, s6);
            // A key never replaces a held one of the same generation.
            const again = await ring.insert(6, 0, new Uint8Array(32).fill(66));
            const afterAgain = await ring.open(await early.encrypt(Uint8Array.of(3)), performance.now(), null, null);
            // Too far past any held generation to derive: held, then dropped and counted.
            const far = await SframeSender.create(s6, g.groupKid(20, 6));
            let dropped = false;
            const farOut = await ring.open(await far.encrypt(Uint8Array.of(4)), performance.now(), () => {{}}, () => (dropped = true));
            ring.expire(performance.now() + g.HOLD_MS + 1);
            await ring.senders.get(6).queue;
            // Reserved kinds (4-7) are refused.
            const reserved = await SframeSender.create(s6, g.groupKid(0, 6) | 5n);
            const reservedOut = await Promise.resolve()
                .then(async () => ring.open(await reserved.encrypt(Uint8Array.of(5)), performance.now(), null, null))
                .then(() => 'opened', (e) => e.kind);
            const held6 = {{
                held: held.held === true,
                heldThen,
                released: released ? Array.from(released.plaintext) : null,
                inserted,
                again,
                afterAgain: afterAgain.opened ? Array.from(afterAgain.opened.plaintext) : null,
                far: farOut.held === true,
                dropped,
                stats: ring.stats()[6],
                reservedOut,
            }};
            const parsed = g.parseBundle(bytes('{bundle}'));
            let refused = [];
            for (const bad of ['{bad_version}', '{short}', '{ack}']) {{
                try {{ g.parseBundle(bytes(bad)); refused.push(false); }} catch {{ refused.push(true); }}
            }}
            return {{
                code: await g.groupSafetyCode('trio room', keys),
                code3: await g.groupSafetyCode('trio room', keys.slice(0, 3)),
                duplicate: await g.groupSafetyCode('trio room', [keys[0], keys[0]]).then(() => false, () => true),
                bundle: hex(g.encodeBundle({{ slot: 5, generation: 2, seq: 300n, secret: r2 }})),
                parsed: {{ slot: parsed.slot, generation: parsed.generation, seq: Number(parsed.seq), secret: hex(parsed.secret) }},
                ack: hex(g.encodeAck({{ slot: 127, generation: 70 }})),
                kid: g.groupKid(70, 127).toString(),
                opened: new TextDecoder().decode(opened.opened.plaintext),
                derived: derived.opened ? [derived.opened.generation, new TextDecoder().decode(derived.opened.plaintext)] : null,
                refused,
                held6,
            }};
        }})()"#,
        keys = serde_json::to_string(&keys_hex).unwrap(),
        frame0 = hex(&frame0),
        frame3 = hex(&frame3),
        bundle = hex(&bundle),
        bad_version = hex(&[&[3u8][..], &bundle[1..]].concat()),
        short = hex(&bundle[..50]),
        ack = hex(&ack),
    );
    let out = page.eval(&js).await;
    assert_eq!(out["code"], code, "{out}");
    assert_eq!(out["code3"], code3, "{out}");
    assert_ne!(code, code3);
    assert_eq!(out["duplicate"], true, "{out}");
    assert_eq!(out["bundle"], hex(&bundle), "{out}");
    assert_eq!(out["parsed"]["slot"], 5, "{out}");
    assert_eq!(out["parsed"]["generation"], 2, "{out}");
    assert_eq!(out["parsed"]["seq"], 300, "{out}");
    assert_eq!(out["parsed"]["secret"], hex(&bundle[19..]), "{out}");
    assert_eq!(out["ack"], hex(&ack), "{out}");
    assert_eq!(out["kid"], kid.to_string(), "{out}");
    assert_eq!(out["opened"], "generation zero", "{out}");
    assert_eq!(
        out["derived"],
        serde_json::json!([3, "generation three"]),
        "{out}"
    );
    assert_eq!(
        out["refused"],
        serde_json::json!([true, true, true]),
        "{out}"
    );
}

/// 48 kHz mono samples of a WAV as `--output` writes it.
fn read_wav(path: &Path) -> Vec<f32> {
    let mut src = WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    all
}

/// Mean share of `hz` over 100 ms blocks.
fn share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    blocks
        .iter()
        .map(|b| sotto::media::tone_share(b, 48_000.0, hz))
        .sum::<f64>()
        / blocks.len().max(1) as f64
}

/// The group codes a CLI member printed, each with the members it covered.
fn printed_codes(out: &Output) -> Vec<(String, Vec<String>)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("group safety code: ")?;
            let code = rest.get(..9)?.to_owned();
            let members = rest.split("members besides us: ").nth(1)?;
            let mut members: Vec<String> = members
                .trim_end_matches(')')
                .split(", ")
                .map(str::to_owned)
                .collect();
            members.sort();
            Some((code, members))
        })
        .collect()
}

pub(crate) async fn wait_peers(server: &Server, n: u64) {
    let deadline = Instant::now() + CONNECT;
    while server.app.metrics.peers.load(Relaxed) < n {
        assert!(Instant::now() < deadline, "the room never had {n} members");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cli_members_and_a_page_share_one_group_call() {
    let test = "three_cli_members_and_a_page_share_one_group_call";
    let _media = crate::MEDIA.lock().await;
    let page_hz = 880.0;
    let wav = tone_wav(page_hz, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let room = room("group");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let members = [
        ("alice", 440.0, 14),
        ("bob", 550.0, 10),
        ("carol", 660.0, 10),
    ];
    let spawn = |name: &str, hz: f64, secs: u32| {
        Command::new(sotto_bin())
            .args([
                "call",
                "--group",
                "--server",
                &server.ws_url(),
                "--room",
                &room,
            ])
            .args(["--name", name, "--bind", "127.0.0.1:0"])
            .args(["--tone", &hz.to_string(), "--duration", &secs.to_string()])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // alice first, then the page (a joiner: it gets alice's ratcheted key, and initiates),
    // then bob and carol (the page was there first for them).
    let mut children = vec![("alice", spawn("alice", 440.0, members[0].2))];
    wait_peers(&server, 1).await;
    let page = browser.new_page(None).await;
    page.goto(&format!("{}&group=1", server.page_url(&room, "web")))
        .await;
    wait_peers(&server, 2).await;
    for (name, hz, secs) in &members[1..] {
        children.push((name, spawn(name, *hz, *secs)));
    }

    // The page: all three members trusted, one code over all four, frames from each.
    let tiles = page
        .wait_until(
            "Array.from(document.querySelectorAll('#tiles .tile[data-peer]'), (t) => [t.dataset.peer, t.querySelector('.trust').textContent])",
            |v| {
                v.as_array().is_some_and(|a| {
                    a.iter().filter(|t| t[1] == "new" || t[1] == "known").count() == 3
                })
            },
            CONNECT,
            "three trusted members' tiles",
        )
        .await;
    let stats = page
        .wait_until(
            "window.sotto.stats()",
            |s| {
                s["participants"].as_array().is_some_and(|p| {
                    p.len() == 3
                        && p.iter()
                            .all(|p| p["frames_decrypted"].as_u64() >= Some(100))
                })
            },
            CONNECT,
            "100 frames from each member in the page",
        )
        .await;
    let speaking = page
        .wait_for(
            "(() => { const s = Array.from(document.querySelectorAll('#tiles .tile.is-speaking'), (t) => t.dataset.peer); return s.length ? s : null; })()",
            CONNECT,
            "a speaking indicator",
        )
        .await;
    // Mute and unmute: each member prints both, from the page's sealed control signals.
    page.eval("document.getElementById('mute').click()").await;
    page.wait_for(
        "document.querySelector('#tiles .tile[data-peer=\"web\"]').classList.contains('is-muted')",
        CONNECT,
        "our tile muted",
    )
    .await;
    page.eval("document.getElementById('mute').click()").await;
    let page_codes = page.eval("window.sotto.group.codes").await;
    let shown = page
        .eval("document.querySelector('#safety-code .code').textContent")
        .await;
    let status = page.text("status").await;

    let mut outputs = Vec::new();
    for (name, child) in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        if !out.status.success() {
            eprintln!("{name} stdout:\n{}", String::from_utf8_lossy(&out.stdout));
            eprintln!("{name} stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(out.status.success(), "{name} failed");
        outputs.push((name, out));
    }
    // After alice, the last member, hung up: the page saw everyone leave.
    let final_codes = page.eval("window.sotto.group.codes").await;
    let after = page.eval("window.sotto.stats()").await;

    // One group code over all four, on every screen.
    let everyone = ["alice", "bob", "carol"];
    let page_full = page_codes
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["members"] == serde_json::json!(everyone))
        .unwrap_or_else(|| panic!("the page never showed a code over all three: {page_codes}"));
    let code = page_full["code"].as_str().unwrap().to_owned();
    assert_eq!(
        shown,
        code.as_str(),
        "#safety-code shows {shown}, not {code}"
    );
    for (name, out) in &outputs {
        let mut others: Vec<String> = everyone
            .iter()
            .filter(|n| *n != name)
            .map(|n| (*n).to_owned())
            .chain(["web".to_owned()])
            .collect();
        others.sort();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("\"web\" muted") && stdout.contains("\"web\" unmuted"),
            "{name} did not hear the page mute and unmute:\n{stdout}"
        );
        let codes = printed_codes(out);
        let full = codes
            .iter()
            .find(|(_, m)| *m == others)
            .unwrap_or_else(|| panic!("{name} never printed a code over all: {codes:?}"));
        assert_eq!(full.0, code, "{name} printed another group code");
    }
    // The page said the code changed as members came and went.
    let changes = final_codes.as_array().unwrap();
    assert!(
        changes.iter().skip(1).all(|c| c["changed"] == true) && changes.len() >= 4,
        "{final_codes}"
    );
    assert_eq!(
        page.eval(
            "document.querySelector('#safety-code .changed').textContent.includes('changed')"
        )
        .await,
        true
    );

    // The page rekeyed: a ratchet for each of bob and carol, a fresh key after each left.
    assert!(after["rekeys"].as_u64() >= Some(4), "{after}");
    assert!(
        after["media"]["group"]["sendGeneration"].as_u64() >= Some(4),
        "{after}"
    );

    // The page opened every member's frames with no failures.
    for p in stats["participants"].as_array().unwrap() {
        assert_eq!(p["decrypt_failures"], 0, "{stats}");
        assert_eq!(p["replays"], 0, "{stats}");
    }
    assert_eq!(
        stats["media"]["group"]["failureKinds"]["auth"],
        Value::Null,
        "{stats}"
    );
    assert!(
        stats["media"]["group"]["sealed"].as_u64() >= Some(100),
        "{stats}"
    );

    // Every member heard the page's tone, and opened its frames with no failures.
    for (name, hz, secs) in members {
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["mode"], "sfu", "{name}: {report}");
        assert_eq!(report["decrypt_failures"], 0, "{name}: {report}");
        let web = report["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "web")
            .unwrap_or_else(|| panic!("{name} has no participant web: {report}"));
        assert_eq!(web["decrypt_failures"], 0, "{name}: {web}");
        assert!(
            web["frames_decrypted"].as_u64() >= Some(100),
            "{name}: {web}"
        );
        // The last 3 s before the 1 s of hanging up: alice alone with the page by then, bob
        // and carol with everyone.
        let heard = read_wav(&dir.join(format!("{name}.wav")));
        let end = heard.len().saturating_sub(48_000);
        let window = &heard[end.saturating_sub(3 * 48_000)..end];
        let page_share = share(window, page_hz);
        let own = share(window, hz);
        eprintln!("{name} ({secs} s) hears the page at share {page_share:.2}, itself {own:.2}");
        assert!(
            page_share > 0.15,
            "{name} barely hears the page: {page_share:.2}"
        );
        assert!(own < 0.05, "{name} hears itself: {own:.2}");
    }
    eprintln!(
        "group call: tiles {tiles}; speaking {speaking}; status {status}; page codes {final_codes}; page stats {stats}; after {after}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}

/// The SFU forgets everyone mid-call (their ICE consent fails): the page and two CLI members
/// each leave and join the SFU again on a new connection with the keys they have, and hear
/// each other again with zero decrypt failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_cli_members_reconnect_to_an_sfu_that_lost_them() {
    let test = "a_page_and_cli_members_reconnect_to_an_sfu_that_lost_them";
    let _media = crate::MEDIA.lock().await;
    let page_hz = 880.0;
    let wav = tone_wav(page_hz, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let sfu = std::sync::Arc::new(crate::forgetful_sfu::ForgetfulSfu::new(
        Server::loopback_sfu(),
    ));
    let server = Server::start_with_sfu_link(sfu.clone()).await;
    let room = room("sfu-lost");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let members = [("alice", 440.0), ("bob", 660.0)];
    let mut children = Vec::new();
    for (name, hz) in members {
        let child = Command::new(sotto_bin())
            .args(["call", "--group", "--server", &server.ws_url()])
            .args(["--room", &room, "--name", name, "--bind", "127.0.0.1:0"])
            .args(["--tone", &hz.to_string(), "--duration", "16"])
            .arg("--identity")
            .arg(dir.join(name).join("identity.json"))
            .arg("--stats-json")
            .arg(dir.join(format!("{name}.json")))
            .arg("--output")
            .arg(dir.join(format!("{name}.wav")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((name, child));
    }
    wait_peers(&server, 2).await;
    let page = browser.new_page(None).await;
    page.goto(&format!("{}&group=1", server.page_url(&room, "web")))
        .await;
    let frames = |min: u64| {
        move |s: &Value| {
            s["participants"].as_array().is_some_and(|p| {
                p.len() == 2
                    && p.iter()
                        .all(|p| p["frames_decrypted"].as_u64() >= Some(min))
            })
        }
    };
    let before = page
        .wait_until(
            "window.sotto.stats()",
            frames(50),
            CONNECT,
            "50 frames from each member",
        )
        .await;
    let forgotten = Instant::now();
    assert_eq!(sfu.forget(&room), 3);
    let lost = page
        .wait_until(
            "window.sotto.group.sfuLost",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
            CONNECT,
            "the page noticing the lost path",
        )
        .await;
    let noticed = forgotten.elapsed();
    page.wait_until(
        "window.sotto.group.sfuReconnects",
        |v| v.as_u64() >= Some(1),
        CONNECT,
        "the page back on the SFU",
    )
    .await;
    let back = forgotten.elapsed();
    // Noticed from the page's own receive stats (nothing for 1.5 s right after members were
    // heard), not by ICE's `disconnected`, which comes seconds later.
    assert_eq!(lost[0]["by"], "no packets", "{lost}");
    // 100 more frames (2 s) from each member, opened after the new connection.
    let most = before["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["frames_decrypted"].as_u64())
        .max()
        .unwrap();
    let after = page
        .wait_until(
            "window.sotto.stats()",
            frames(most + 100),
            CONNECT,
            "the members' frames again",
        )
        .await;
    eprintln!(
        "the page noticed after {noticed:?} and was back on the SFU {back:?} after it forgot \
         everyone; stats {after}"
    );
    for p in after["participants"].as_array().unwrap() {
        assert_eq!(p["decrypt_failures"], 0, "{after}");
    }
    // And played: the new connection's RTP timestamps start afresh, so the playout order
    // (bound to the SFrame counter, which runs on) must start afresh too, or every frame on
    // the new connection is refused as misplaced.
    let opened = before["media"]["group"]["opened"].as_u64().unwrap();
    page.wait_until(
        "window.sotto.stats()",
        |s| s["media"]["group"]["opened"].as_u64() >= Some(opened + 150),
        CONNECT,
        "frames played after the reconnection",
    )
    .await;
    let status = page.text("status").await;
    assert!(
        status.as_str().is_some_and(|s| s.starts_with("connected")),
        "{status}"
    );
    for (name, child) in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            report["sfu_reconnects"].as_u64() >= Some(1),
            "{name}: {report}"
        );
        assert_eq!(report["decrypt_failures"], 0, "{name}: {report}");
        // The last 3 s before the last second: the page's tone and the other member's.
        let heard = read_wav(&dir.join(format!("{name}.wav")));
        let end = heard.len().saturating_sub(48_000);
        let window = &heard[end.saturating_sub(3 * 48_000)..end];
        for (other, hz) in [("web", page_hz), ("alice", 440.0), ("bob", 660.0)] {
            let s = share(window, hz);
            eprintln!("{name} hears {other} at share {s:.2} after the reconnection");
            if other != name {
                assert!(s > 0.15, "{name} barely hears {other}: {s:.2}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}

/// A member that signs another name than the server attested is refused by the page alone:
/// its tile says why, and the call with the others goes on under the same group code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_failing_the_name_check_is_refused_alone() {
    let test = "a_member_failing_the_name_check_is_refused_alone";
    let _media = crate::MEDIA.lock().await;
    let wav = tone_wav(880.0, 5);
    let Some(browser) = Browser::launch(Some(&wav)).await else {
        return skip(test);
    };
    let server = Server::start_with_sfu().await;
    let room = room("group-refused");
    let dir = std::env::temp_dir().join(format!("sotto-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = browser.new_page(None).await;
    page.goto(&format!("{}&group=1", server.page_url(&room, "web")))
        .await;
    wait_status(&page, "waiting for someone", CONNECT).await;
    let alice = Command::new(sotto_bin())
        .args([
            "call",
            "--group",
            "--server",
            &server.ws_url(),
            "--room",
            &room,
        ])
        .args(["--name", "alice", "--bind", "127.0.0.1:0"])
        .args(["--tone", "440", "--duration", "7"])
        .arg("--identity")
        .arg(dir.join("alice").join("identity.json"))
        .arg("--output")
        .arg(dir.join("alice.wav"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let alice_trusted =
        "document.querySelector('#tiles .tile[data-peer=\"alice\"] .trust')?.textContent === 'new'";
    page.wait_for(alice_trusted, CONNECT, "alice trusted").await;
    let code = page.eval("window.sotto.group.code").await;

    // Joined as "rust2", signs "mallory".
    let mallory = RustPeer::join(&server.ws_url(), &room, "rust2").await;
    mallory.set_claim("mallory");
    mallory.handshake(CONNECT).await;
    let refused = page
        .wait_for(
            "(() => { const t = document.querySelector('#tiles .tile[data-peer=\"rust2\"]'); return t?.querySelector('.trust').textContent === 'refused' ? t.querySelector('.warning').textContent : null; })()",
            CONNECT,
            "rust2 refused",
        )
        .await;
    assert_eq!(
        refused, "refused: joined as \"rust2\" but claims \"mallory\"",
        "{refused}"
    );
    // The call goes on: alice's frames keep opening, nothing failed, the code did not change.
    let before = page.eval("window.sotto.stats()").await["participants"][0]["frames_decrypted"]
        .as_u64()
        .unwrap();
    let stats = page
        .wait_until(
            "window.sotto.stats()",
            |s| s["participants"][0]["frames_decrypted"].as_u64() >= Some(before + 50),
            CONNECT,
            "alice's frames after the refusal",
        )
        .await;
    assert_eq!(
        stats["participants"].as_array().unwrap().len(),
        1,
        "{stats}"
    );
    assert_eq!(stats["participants"][0]["name"], "alice", "{stats}");
    assert_eq!(stats["participants"][0]["decrypt_failures"], 0, "{stats}");
    assert_eq!(page.eval("window.sotto.group.code").await, code);
    assert!(
        page.text("status")
            .await
            .as_str()
            .unwrap()
            .starts_with("connected"),
    );
    let out = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "alice failed");
    let codes = printed_codes(&out);
    assert!(
        codes.iter().any(|(c, m)| *c == code && *m == ["web"]),
        "alice printed {codes:?}, the page {code}"
    );
    drop(mallory);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(wav);
}
