//! `sotto demo --group N`: a local group call of N members through the signaling server's
//! SFU. Each member sends its own tone; the summary says which members each one heard, and
//! the group safety code each one sees.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sotto::call::{Call, CallEvent, CallState, CallStats};
use sotto::media::{ToneSource, tone_share};
use sotto::text::Printable;

use crate::demo::{Recorder, builder};

const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// Member `i`'s tone: far enough apart that each is told from the others in a mix.
fn tone_of(i: usize) -> f64 {
    440.0 + 110.0 * i as f64
}

/// A tone counts as heard when it holds this share of the power of what was played (N - 1
/// equal tones share it about evenly).
const HEARD_SHARE: f64 = 0.1;

#[derive(Debug, Serialize)]
struct Heard {
    name: &'static str,
    hz: f64,
    share: f64,
}

#[derive(Debug, Serialize)]
struct Member {
    name: &'static str,
    sends_hz: f64,
    /// Every other member's tone, and the share of what was played it holds.
    heard: Vec<Heard>,
    ended: String,
    #[serde(flatten)]
    stats: CallStats,
}

#[derive(Debug, Serialize)]
struct Report {
    e2ee: bool,
    server: String,
    members: usize,
    group_codes_match: bool,
    group: Vec<Member>,
}

/// Mean share of `hz` over the 100 ms blocks of `x`: short blocks keep the phase seams that
/// playout adaptation leaves from cancelling a tone out of one long window.
fn block_share(x: &[f32], hz: f64) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(4800).collect();
    let sum: f64 = blocks.iter().map(|b| tone_share(b, 48_000.0, hz)).sum();
    sum / blocks.len().max(1) as f64
}

/// Reads events until the member is connected and its code covers every other member.
async fn until_complete(call: &mut Call, others: usize) -> Result<(), String> {
    let mut connected = false;
    let mut covered = false;
    while !(connected && covered) {
        match tokio::time::timeout(Duration::from_secs(30), call.next_event()).await {
            Ok(Some(CallEvent::State(CallState::Connected))) => connected = true,
            Ok(Some(CallEvent::GroupSafetyCode { members, .. })) => {
                covered = members.len() == others;
            }
            Ok(Some(CallEvent::Ended { reason, .. })) => return Err(reason.to_string()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("call ended".into()),
            Err(_) => return Err("not everyone's keys after 30 s".into()),
        }
    }
    Ok(())
}

/// Runs the group demo against the server at `url`.
pub async fn demo(
    n: usize,
    duration: f64,
    json: bool,
    url: &str,
    ca_cert: Option<&PathBuf>,
) -> Result<(), String> {
    let room = format!("group-demo-{}", std::process::id());
    if !json {
        println!("signaling server with SFU: {url} (forwards sealed audio; never holds a key)");
        let who: Vec<String> = (0..n)
            .map(|i| format!("{} {:.0} Hz", NAMES[i], tone_of(i)))
            .collect();
        println!("{n} members, each sending a tone: {}", who.join(", "));
    }
    let mut calls = Vec::new();
    for (i, name) in NAMES.iter().enumerate().take(n) {
        let recorder = Recorder::default();
        let call = builder(url, ca_cert, &room, name)?
            .source(ToneSource::new(tone_of(i), 0.3))
            .sink(recorder.clone())
            .configure(|c| c.group = true)
            .start()
            .map_err(|e| e.to_string())?;
        calls.push((*name, call, recorder));
    }
    for (name, call, _) in &mut calls {
        until_complete(call, n - 1)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    if !json {
        println!("everyone holds everyone's keys; talking for {duration} s ...");
    }
    // Drain events while they talk, so the queues never fill.
    let talk = tokio::time::sleep(Duration::from_secs_f64(duration));
    tokio::pin!(talk);
    loop {
        let any = futures_next(&mut calls);
        tokio::select! {
            _ = &mut talk => break,
            ended = any => if let Some((name, reason)) = ended {
                return Err(format!("{name}: {reason}"));
            },
        }
    }
    // The codes while everyone is in: each hang-up below changes the others' code.
    let before: Vec<CallStats> = calls.iter().map(|(_, call, _)| call.stats()).collect();
    let everyone = before
        .iter()
        .all(|s| s.participants.iter().filter(|p| p.present).count() == n - 1);
    let codes = before.into_iter().map(|s| s.group_safety_code);
    let mut members = Vec::new();
    for (i, ((name, mut call, recorder), code)) in calls.into_iter().zip(codes).enumerate() {
        let reason = call.hang_up().await;
        let played = recorder.last_two_seconds();
        let heard = (0..n)
            .filter(|&j| j != i)
            .map(|j| Heard {
                name: NAMES[j],
                hz: tone_of(j),
                share: block_share(&played, tone_of(j)),
            })
            .collect();
        members.push(Member {
            name,
            sends_hz: tone_of(i),
            heard,
            ended: Printable(&reason.to_string()).to_string(),
            stats: CallStats {
                group_safety_code: code,
                ..call.stats()
            },
        });
    }
    let first = members
        .first()
        .and_then(|m| m.stats.group_safety_code.clone());
    let report = Report {
        e2ee: true,
        server: url.to_owned(),
        members: n,
        group_codes_match: first.is_some()
            && members.iter().all(|m| m.stats.group_safety_code == first),
        group: members,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_summary(&report);
    }
    // With more than four members each hears the SFU's three loudest others.
    let expected = (n - 1).min(3);
    let clean = report.group.iter().all(|m| {
        m.stats.decrypt_failures == 0
            && m.heard.iter().filter(|h| h.share >= HEARD_SHARE).count() >= expected
    });
    if report.group_codes_match && everyone && clean {
        Ok(())
    } else {
        Err("the group call did not complete cleanly (see the summary)".into())
    }
}

/// The first member whose call ended while the others talk, if any.
async fn futures_next(calls: &mut [(&'static str, Call, Recorder)]) -> Option<(String, String)> {
    let waits = calls.iter_mut().map(|(name, call, _)| {
        Box::pin(async move {
            loop {
                match call.next_event().await {
                    Some(CallEvent::Ended { reason, .. }) => {
                        return (name.to_string(), reason.to_string());
                    }
                    Some(_) => {}
                    None => return (name.to_string(), "call ended".to_string()),
                }
            }
        })
    });
    let (ended, _, _) = futures_util::future::select_all(waits).await;
    Some(ended)
}

fn print_summary(r: &Report) {
    println!();
    let codes: Vec<String> = r
        .group
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m.name,
                m.stats.group_safety_code.as_deref().unwrap_or("-")
            )
        })
        .collect();
    println!(
        "group safety codes: {} -> {}",
        codes.join(" / "),
        if r.group_codes_match {
            "all match: nobody is in the middle of any pair, and everyone sees the same members"
        } else {
            "DIFFER: someone is in the middle, or members see different rosters"
        }
    );
    println!("E2EE: SFrame on every Opus frame, each member's own key; the SFU cannot decrypt");
    println!(
        "{:<6} {:>6} {:>9} {:>9} {:>7} {:>8}  heard (share of what was played)",
        "", "sent", "decrypted", "failures", "rekeys", "set-up"
    );
    for m in &r.group {
        let heard: Vec<String> = m
            .heard
            .iter()
            .map(|h| format!("{} {:.0} Hz {:.0} %", h.name, h.hz, 100.0 * h.share))
            .collect();
        println!(
            "{:<6} {:>6} {:>9} {:>9} {:>7} {:>8}  {}",
            m.name,
            m.stats.frames_sent,
            m.stats.frames_decrypted,
            m.stats.decrypt_failures,
            m.stats.rekeys,
            m.stats
                .setup_ms
                .map_or("-".into(), |v| format!("{v:.0} ms")),
            heard.join(", ")
        );
    }
}
