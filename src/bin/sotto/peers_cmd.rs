//! `sotto peers`: list, verify and forget the peers whose identity keys are pinned.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use sotto::call::known_peers_path;
use sotto::handshake::{KnownPeers, PeerRecord, default_identity_path};

#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// Identity file whose known peers to use (default: $XDG_CONFIG_HOME/sotto/identity.json);
    /// the peers are in known_peers.json in the same directory.
    #[arg(long, value_name = "PATH", global = true)]
    identity: Option<PathBuf>,
    /// List the peers as one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Mark a peer's pinned key verified, once you compared safety codes (or fingerprints)
    /// with that person over another channel.
    Verify {
        /// The peer's name (compared in canonical form).
        name: String,
        /// The fingerprint the peer's `sotto identity` shows: the pinned key must match it.
        /// If the peer's key changed since it was pinned, the new key is accepted when it
        /// matches this fingerprint.
        #[arg(long, value_name = "HEX")]
        fingerprint: Option<String>,
    },
    /// Remove a peer's pin; the next call with that name pins its key anew.
    Forget {
        /// The peer's name.
        name: String,
    },
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    fingerprint: String,
    identity: String,
    trust: &'static str,
    first_seen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    presented_fingerprint: Option<String>,
}

fn listed(r: &PeerRecord) -> Listed<'_> {
    Listed {
        name: &r.name,
        fingerprint: r.identity.fingerprint(),
        identity: r.identity.to_hex(),
        trust: if r.verified { "verified" } else { "known" },
        first_seen: r.first_seen,
        presented_fingerprint: r.presented.map(|k| k.fingerprint()),
    }
}

pub fn run(args: PeersArgs) -> Result<(), String> {
    let id_path = args.identity.clone().unwrap_or_else(default_identity_path);
    let path = known_peers_path(&id_path);
    let mut store = KnownPeers::load(&path).map_err(|e| e.to_string())?;
    match args.action {
        None => list(&store, args.json),
        Some(Action::Verify { name, fingerprint }) => {
            let key = store
                .verify(&name, fingerprint.as_deref())
                .map_err(|e| e.to_string())?;
            store.save().map_err(|e| e.to_string())?;
            println!(
                "{:?} is verified: identity {}",
                sotto::names::canonical(&name),
                key.fingerprint()
            );
            Ok(())
        }
        Some(Action::Forget { name }) => {
            let canonical = sotto::names::canonical(&name);
            if !store.forget(&name) {
                return Err(format!("no known peer is named {canonical:?}"));
            }
            store.save().map_err(|e| e.to_string())?;
            println!("forgot {canonical:?}");
            Ok(())
        }
    }
}

fn list(store: &KnownPeers, json: bool) -> Result<(), String> {
    let rows: Vec<Listed<'_>> = store.records().map(listed).collect();
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    if rows.is_empty() {
        println!("no known peers yet");
        return Ok(());
    }
    println!(
        "{:<24} {:<49} {:<9} first seen",
        "name", "fingerprint", "trust"
    );
    for row in rows {
        println!(
            "{:<24} {:<49} {:<9} {}",
            format!("{:?}", row.name),
            row.fingerprint,
            row.trust,
            utc_date(row.first_seen)
        );
        if let Some(p) = &row.presented_fingerprint {
            println!("  WARNING: a different identity {p} was presented under this name since");
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM UTC` for Unix seconds (0: unknown).
fn utc_date(secs: u64) -> String {
    if secs == 0 {
        return "unknown".into();
    }
    let days = (secs / 86_400) as i64;
    let minutes = (secs % 86_400) / 60;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "unknown");
        assert_eq!(utc_date(86_400 + 3_660), "1970-01-02 01:01 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_795_996_800), "2026-11-30 00:00 UTC");
    }
}
