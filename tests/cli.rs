//! The `sotto` commands (`sframe`, `identity`, `relay-demo`), run as a user would run them.

use std::process::{Command, Output};

use serde::Deserialize;

const VECTORS: &str = include_str!("data/rfc9605-test-vectors.json");

#[derive(Deserialize)]
struct Vectors {
    sframe: Vec<SframeVector>,
}

#[derive(Deserialize)]
struct SframeVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    metadata: String,
    pt: String,
    ct: String,
}

fn sotto(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(args)
        .output()
        .expect("run sotto")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The decrypt failure contract: nothing on stdout, one line on stderr, status 1.
fn assert_clean_failure(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: status");
    assert!(o.stdout.is_empty(), "{what}: stdout {:?}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{what}: stderr {err:?}");
    assert!(err.starts_with("sotto: "), "{what}: {err:?}");
}

#[test]
fn encrypt_and_decrypt_reproduce_the_rfc_vectors() {
    let v: Vectors = serde_json::from_str(VECTORS).unwrap();
    for sv in v.sframe {
        let suite = sv.cipher_suite.to_string();
        let kid = sv.kid.to_string();
        let ctr = sv.ctr.to_string();
        let enc = sotto(&[
            "sframe",
            "encrypt",
            "--suite",
            &suite,
            "--key",
            &sv.base_key,
            "--kid",
            &kid,
            "--ctr",
            &ctr,
            "--metadata",
            &sv.metadata,
            &sv.pt,
        ]);
        assert!(enc.status.success(), "{}", stderr(&enc));
        assert_eq!(stdout(&enc), format!("{}\n", sv.ct), "suite {suite}");

        let dec = sotto(&[
            "sframe",
            "decrypt",
            "--suite",
            &suite,
            "--key",
            &sv.base_key,
            "--metadata",
            &sv.metadata,
            &sv.ct,
        ]);
        assert!(dec.status.success(), "{}", stderr(&dec));
        assert_eq!(stdout(&dec), format!("{}\n", sv.pt), "suite {suite}");
    }
}

#[test]
fn roundtrip_without_metadata_and_with_uppercase_hex() {
    let enc = sotto(&[
        "sframe", "encrypt", "--suite", "4", "--key", "00112233", "--kid", "9", "--ctr", "0",
        "DEADBEEF",
    ]);
    assert!(enc.status.success());
    let ct = stdout(&enc).trim().to_string();
    assert_eq!(ct, ct.to_lowercase());
    let dec = sotto(&[
        "sframe", "decrypt", "--suite", "4", "--key", "00112233", &ct,
    ]);
    assert_eq!(stdout(&dec), "deadbeef\n");
    // An empty plaintext is a valid frame.
    let enc = sotto(&[
        "sframe", "encrypt", "--suite", "1", "--key", "01", "--kid", "0", "--ctr", "0", "",
    ]);
    assert!(enc.status.success());
    assert_eq!(stdout(&enc).trim().len(), 2 * (1 + 10));
}

#[test]
fn decrypt_failures_follow_the_contract() {
    let enc = sotto(&[
        "sframe",
        "encrypt",
        "--suite",
        "4",
        "--key",
        "00112233",
        "--kid",
        "9",
        "--ctr",
        "5",
        "--metadata",
        "aa",
        "cafe",
    ]);
    let ct = stdout(&enc).trim().to_string();
    let mut tampered = hex::decode(&ct).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let tampered = hex::encode(tampered);

    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "tampered tag",
            vec![
                "--suite",
                "4",
                "--key",
                "00112233",
                "--metadata",
                "aa",
                &tampered,
            ],
        ),
        (
            "wrong key",
            vec!["--suite", "4", "--key", "00112234", "--metadata", "aa", &ct],
        ),
        (
            "wrong metadata",
            vec!["--suite", "4", "--key", "00112233", "--metadata", "ab", &ct],
        ),
        (
            "wrong suite",
            vec!["--suite", "5", "--key", "00112233", "--metadata", "aa", &ct],
        ),
        (
            "truncated",
            vec![
                "--suite",
                "4",
                "--key",
                "00112233",
                "--metadata",
                "aa",
                &ct[..10],
            ],
        ),
        ("empty frame", vec!["--suite", "4", "--key", "00112233", ""]),
        ("odd hex", vec!["--suite", "4", "--key", "00112233", "abc"]),
        ("not hex", vec!["--suite", "4", "--key", "zz", &ct]),
        ("empty key", vec!["--suite", "4", "--key", "", &ct]),
        ("suite 0", vec!["--suite", "0", "--key", "00", &ct]),
        ("suite 6", vec!["--suite", "6", "--key", "00", &ct]),
        ("missing key", vec!["--suite", "4", &ct]),
        (
            "unknown flag",
            vec!["--suite", "4", "--key", "00", "--bogus", &ct],
        ),
    ];
    for (what, args) in cases {
        let mut full = vec!["sframe", "decrypt"];
        full.extend(args);
        assert_clean_failure(&sotto(&full), what);
    }
}

#[test]
fn encrypt_rejects_bad_input_cleanly() {
    assert_clean_failure(
        &sotto(&[
            "sframe", "encrypt", "--suite", "4", "--key", "00", "--kid", "-1", "--ctr", "0", "aa",
        ]),
        "negative kid",
    );
    assert_clean_failure(
        &sotto(&[
            "sframe", "encrypt", "--suite", "4", "--key", "00", "--kid", "1", "--ctr", "0", "xyz",
        ]),
        "bad plaintext hex",
    );
}

#[test]
fn help_goes_to_stdout_with_status_zero() {
    let o = sotto(&["sframe", "decrypt", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--suite"));
}

#[test]
fn relay_demo_runs_and_reports_json() {
    let wav = std::env::temp_dir().join(format!("sotto-demo-{}.wav", std::process::id()));
    let o = sotto(&[
        "relay-demo",
        "--json",
        "--frames",
        "400",
        "--output",
        wav.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["relay_saw_plaintext"], false);
    assert_eq!(report["eve_decrypted"], 0);
    assert_eq!(report["bob_decrypted"], report["bob_matched_original"]);
    assert!(report["bob_decrypted"].as_u64().unwrap() > 350);
    assert_eq!(report["alice_safety_code"], report["bob_safety_code"]);
    assert_eq!(report["relay_key_swap_refused"], true);
    assert!(report["key_rotations"].as_u64().unwrap() >= 7);
    assert!(report["bob_auth_failures"].as_u64().unwrap() > 0);
    assert!(report["bob_replays_rejected"].as_u64().unwrap() > 0);
    // What Bob heard, through Opus, SFrame, the relay, the playout buffer and FEC/PLC.
    assert!(
        (report["bob_heard_hz"].as_f64().unwrap() - 440.0).abs() <= 3.0,
        "{report}"
    );
    assert!(
        report["playout_fec_recovered"].as_u64().unwrap() > 0,
        "{report}"
    );
    let spec = hound::WavReader::open(&wav).unwrap();
    assert_eq!((spec.spec().sample_rate, spec.spec().channels), (48_000, 1));
    assert!(spec.len() >= 400 * 960);
    let _ = std::fs::remove_file(&wav);
}

#[test]
fn identity_is_created_once_and_shown() {
    let dir = std::env::temp_dir().join(format!("sotto-cli-id-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("id.json");
    let path_s = path.to_str().unwrap();
    let first = sotto(&["identity", "--identity", path_s, "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let first: serde_json::Value = serde_json::from_str(stdout(&first).trim()).unwrap();
    assert_eq!(first["created"], true);
    let second = sotto(&["identity", "--identity", path_s, "--json"]);
    let second: serde_json::Value = serde_json::from_str(stdout(&second).trim()).unwrap();
    assert_eq!(second["created"], false);
    assert_eq!(first["fingerprint"], second["fingerprint"]);
    // A directory where the file should be is a clean error.
    assert_clean_failure(
        &sotto(&["identity", "--identity", dir.to_str().unwrap()]),
        "dir",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
