//! Trust from the command line: `sotto peers` lists, verifies and forgets pins;
//! `sotto call --require-verified` refuses unverified and changed peers before any media and
//! accepts verified ones.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{TestServer, sotto_cli};

/// Calls in this binary run one at a time (real-time audio on 2 cores).
static ONE_CALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn identity(dir: &Path, who: &str) -> PathBuf {
    dir.join(who).join("identity.json")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The fingerprint `sotto identity` prints for `path` (creating it).
fn fingerprint(path: &Path) -> String {
    let out = sotto_cli()
        .args(["identity", "--json", "--identity"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["fingerprint"].as_str().unwrap().to_string()
}

fn peers(id: &Path, args: &[&str]) -> Output {
    sotto_cli()
        .arg("peers")
        .args(args)
        .arg("--identity")
        .arg(id)
        .output()
        .unwrap()
}

fn peers_json(id: &Path) -> serde_json::Value {
    let out = peers(id, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Alice joins, then Bob; both send tones for `secs` unless the call ends sooner.
async fn call(
    url: &str,
    room: &str,
    dir: &Path,
    alice_args: &[&str],
    secs: &str,
) -> (Output, Output) {
    let args = |who: &str, hz: &str| {
        let mut cmd = sotto_cli();
        cmd.args(["call", "--server", url, "--room", room, "--name", who])
            .args(["--bind", "127.0.0.1:0", "--tone", hz, "--duration", secs])
            .arg("--identity")
            .arg(identity(dir, who))
            .arg("--output")
            .arg(dir.join(format!("{who}.wav")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut alice = args("alice", "440");
    alice.args(alice_args);
    let alice = alice.spawn().unwrap();
    // Whoever joins second initiates, so the order only matters for the roles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bob = args("bob", "660");
    let bob = tokio::task::spawn_blocking(move || bob.output().unwrap());
    let alice = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap());
    (alice.await.unwrap(), bob.await.unwrap())
}

fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("sotto: "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(out));
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_listed_verified_against_their_fingerprint_and_forgotten() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-trust-peers");
    let (alice_id, bob_id) = (identity(&dir, "alice"), identity(&dir, "bob"));
    let bob_fp = fingerprint(&bob_id);
    let alice_fp = fingerprint(&alice_id);

    let listed = peers(&alice_id, &[]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("no known peers"));

    let (a, b) = call(&server.url, "peers", &dir, &[], "3").await;
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));

    let list = peers_json(&alice_id);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["name"], "bob");
    assert_eq!(rows[0]["fingerprint"], bob_fp.as_str());
    assert_eq!(rows[0]["trust"], "known");
    assert!(rows[0]["first_seen"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(peers_json(&bob_id)[0]["fingerprint"], alice_fp.as_str());

    // A wrong fingerprint is one clear line and changes nothing.
    let wrong = peers(&alice_id, &["verify", "bob", "--fingerprint", &alice_fp]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(one_error_line(&wrong).contains("does not match"));
    assert_eq!(peers_json(&alice_id)[0]["trust"], "known");
    let unknown = peers(&alice_id, &["verify", "carol"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(one_error_line(&unknown).contains("no known peer"));

    // Upper case and colons are fine: it is the same fingerprint.
    let colons = bob_fp.replace(' ', ":").to_uppercase();
    let ok = peers(&alice_id, &["verify", "BOB", "--fingerprint", &colons]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(peers_json(&alice_id)[0]["trust"], "verified");
    let human = peers(&alice_id, &[]);
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    assert!(
        human.contains("verified") && human.contains(&bob_fp),
        "{human}"
    );

    let forget = peers(&alice_id, &["forget", "bob"]);
    assert!(forget.status.success(), "{}", text(&forget));
    assert_eq!(peers_json(&alice_id), serde_json::json!([]));
    let again = peers(&alice_id, &["forget", "bob"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_verified_refuses_unverified_and_changed_peers_and_accepts_verified_ones() {
    let _one = ONE_CALL.lock().await;
    let server = TestServer::start().await;
    let dir = common::temp_dir("cli-trust-strict");
    let (alice_id, bob_id) = (identity(&dir, "alice"), identity(&dir, "bob"));
    let strict = ["--require-verified", "--stats-json"];
    let stats = dir.join("alice.json");
    let strict: Vec<&str> = strict
        .iter()
        .copied()
        .chain([stats.to_str().unwrap()])
        .collect();

    // First contact: refused before any media, exit 1, one line.
    let (a, _b) = call(&server.url, "strict-1", &dir, &strict, "20").await;
    assert_eq!(a.status.code(), Some(1), "{}", text(&a));
    let line = one_error_line(&a);
    assert!(line.contains("not verified"), "{line}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(report["frames_sent"], 0, "{report}");
    assert_eq!(report["frames_decrypted"], 0, "{report}");

    // Bob was pinned (unverified) by the refused call; verified, the call goes through.
    assert_eq!(peers_json(&alice_id)[0]["trust"], "known");
    let bob_fp = fingerprint(&bob_id);
    let ok = peers(&alice_id, &["verify", "bob", "--fingerprint", &bob_fp]);
    assert!(ok.status.success(), "{}", text(&ok));
    let (a, b) = call(&server.url, "strict-2", &dir, &strict, "3").await;
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(report["peer_trust"], "verified", "{report}");
    assert!(report["frames_decrypted"].as_u64().unwrap() > 0, "{report}");

    // Bob's key changes (a new device, or someone in the middle): refused.
    std::fs::remove_file(&bob_id).unwrap();
    let (a, _b) = call(&server.url, "strict-3", &dir, &strict, "20").await;
    assert_eq!(a.status.code(), Some(1), "{}", text(&a));
    let line = one_error_line(&a);
    assert!(line.contains("differs from the one pinned"), "{line}");
    let listed = peers_json(&alice_id);
    assert_eq!(listed[0]["fingerprint"], bob_fp.as_str(), "the pin stays");
    assert!(listed[0]["presented_fingerprint"].is_string(), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}
