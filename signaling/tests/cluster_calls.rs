//! Calls across signaling nodes that share rooms through a real Redis: `sotto call` peers on
//! different nodes agree keys and talk end to end encrypted exactly as on one node.

#[path = "support/cluster_node.rs"]
mod cluster_node;
#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/sotto_bin.rs"]
mod sotto_bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cluster_node::Node;
use redis_server::{Redis, available};
use sotto::media::AudioSource;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn call(dir: &Path, server: &str, room: &str, who: &str, hz: u32, seconds: u32) -> Command {
    let mut cmd = Command::new(sotto_bin::sotto_bin());
    cmd.args(["call", "--server", server, "--room", room, "--name", who])
        .args(["--bind", "127.0.0.1:0"])
        .args([
            "--tone",
            &hz.to_string(),
            "--duration",
            &seconds.to_string(),
        ])
        .arg("--identity")
        .arg(dir.join(who).join("identity.json"))
        .arg("--output")
        .arg(dir.join(format!("{who}.wav")))
        .arg("--stats-json")
        .arg(dir.join(format!("{who}.json")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn show(who: &str, out: &Output) -> String {
    format!(
        "{who}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Share of `hz` in the two seconds before the last one of a 48 kHz WAV (in a group the
/// others hang up at slightly different times, which the last second may show).
fn tail_share(path: &Path, hz: f64) -> f64 {
    let mut src = sotto::media::WavSource::open(path).unwrap();
    let mut all = Vec::new();
    let mut frame = [0f32; 960];
    while src.read_frame(&mut frame).unwrap() {
        all.extend_from_slice(&frame);
    }
    let end = all.len().saturating_sub(48_000);
    let tail = &all[end.saturating_sub(96_000)..end];
    sotto::media::tone_share(tail, 48_000.0, hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_peers_on_two_nodes_hold_an_e2ee_call() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = Node::start(&redis.url).await;
    let b = Node::start(&redis.url).await;
    let dir = temp_dir("cluster-call");
    let alice = call(&dir, &a.url(), "across", "alice", 440, 5)
        .spawn()
        .unwrap();
    let bob = call(&dir, &b.url(), "across", "bob", 660, 5)
        .spawn()
        .unwrap();
    let alice = tokio::task::spawn_blocking(move || alice.wait_with_output().unwrap());
    let bob = tokio::task::spawn_blocking(move || bob.wait_with_output().unwrap());
    let (alice, bob) = (alice.await.unwrap(), bob.await.unwrap());
    let mut codes = Vec::new();
    for (who, out, hears) in [("alice", &alice, 660.0), ("bob", &bob, 440.0)] {
        let shown = show(who, out);
        assert!(out.status.success(), "{shown}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{who}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["e2ee"], true, "{report}");
        assert_eq!(report["decrypt_failures"], 0, "{report}");
        assert!(
            report["frames_decrypted"].as_u64().unwrap() >= 100,
            "{report}\n{shown}"
        );
        codes.push(report["safety_code"].as_str().unwrap().to_string());
        let share = tail_share(&dir.join(format!("{who}.wav")), hears);
        assert!(share > 0.5, "{who} heard {hears} Hz at {share:.2}\n{shown}");
    }
    // One key agreement between them, through two nodes.
    assert_eq!(codes[0], codes[1]);
    assert!(
        a.app
            .metrics
            .cluster_published
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scripts/cluster` with the test build's binaries: Redis, three signaling nodes and two SFU
/// nodes on loopback. Stopped (with everything it started) when dropped.
struct LocalCluster {
    child: std::process::Child,
    nodes: Vec<String>,
    dir: PathBuf,
    redis_port: u16,
}

impl LocalCluster {
    fn start(dir: &Path) -> LocalCluster {
        let bin_dir = sotto_bin::sotto_bin().parent().unwrap().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster");
        let port = free_port_block(4);
        let mut child = Command::new("bash")
            .arg(script)
            .args(["--port", &port.to_string(), "--bin-dir"])
            .arg(&bin_dir)
            .env("SOTTO_CLUSTER_DIR", dir.join("cluster"))
            .env("RUST_LOG", "sotto_signaling=info,sotto_sfu=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut nodes = Vec::new();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in std::io::BufRead::lines(stdout) {
            let line = line.unwrap();
            if let Some(url) = line.strip_prefix("signaling ") {
                nodes.push(url.to_string());
            }
            if line == "cluster ready" {
                break;
            }
        }
        assert_eq!(nodes.len(), 3, "scripts/cluster did not come up");
        // Every node offers group calls once it has seen an SFU register.
        for node in &nodes {
            wait_for_sfu(node);
        }
        LocalCluster {
            child,
            nodes,
            dir: dir.join("cluster"),
            redis_port: port,
        }
    }

    /// Kills (SIGKILL) a part of the cluster by the name the script gave its pid file
    /// (`node1`, `sfu2`, `redis`).
    fn kill_part(&self, name: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{name}.pid"))).unwrap();
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM to the script: its trap stops every part.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Joins a probe room at `node` until its `welcome` says it has an SFU.
fn wait_for_sfu(node: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (mut ws, _) = tokio_tungstenite::tungstenite::connect(node).unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"v":1,"type":"join","room":"probe","name":"probe"}"#,
        ))
        .unwrap();
        let welcome: serde_json::Value = loop {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = ws.read().unwrap() {
                break serde_json::from_str(t.as_str()).unwrap();
            }
        };
        let _ = ws.close(None);
        if welcome["sfu"] == true {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SFU at {node}: {welcome}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The first of `n` consecutive free loopback ports (from a spot that depends on this
/// process, so parallel test binaries look in different places).
fn free_port_block(n: u16) -> u16 {
    let mut base = 20_000 + (std::process::id() % 20_000) as u16;
    loop {
        let free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
        base = if base > 60_000 { 20_000 } else { base + n };
    }
}

fn group_member(dir: &Path, server: &str, who: &str, hz: u32, seconds: u32) -> Command {
    let mut cmd = call(dir, server, "four", who, hz, seconds);
    // Shown on failure: how the member moved.
    cmd.arg("--group").env("RUST_LOG", "sotto=info");
    cmd
}

/// A running `sotto call` whose stdout is read as it comes: `lines` gets every line.
struct Member {
    name: &'static str,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Member {
    fn spawn(name: &'static str, mut cmd: Command) -> Member {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Member {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to a minute) for a stdout line that `pred` accepts (or finds one printed
    /// already).
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) {
        self.wait_line_since(0, pred);
    }

    /// As [`Member::wait_line`], among the lines from the `mark`-th on.
    fn wait_line_since(&mut self, mark: usize, pred: impl Fn(&str) -> bool) {
        if !self.seen.iter().skip(mark).any(|l| pred(l)) {
            self.wait_new_line(pred);
        }
    }

    /// Waits (up to a minute) for a stdout line that `pred` accepts, among those not yet read.
    fn wait_new_line(&mut self, pred: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "{}: the line never came:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit; the status, and everything it printed.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        self.seen.extend(self.lines.iter());
        (status, format!("{}\n{}", self.seen.join("\n"), err))
    }
}

/// The id of the SFU node the room is placed on, and the name of its pid file.
fn placed_sfu(cluster_dir: &Path, redis_port: u16, room: &str) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis_port.to_string(),
            "GET",
            &format!("sotto:place:{room}"),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for i in 1..=2 {
        let printed = std::fs::read_to_string(cluster_dir.join(format!("sfu{i}.out"))).unwrap();
        if printed.lines().any(|l| l == format!("redis id {id}")) {
            return format!("sfu{i}");
        }
    }
    panic!("room {room} is not on a known SFU ({id:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_over_three_nodes_ride_out_a_killed_signaling_node_then_sfu_node() {
    if !available() {
        return;
    }
    let dir = temp_dir("cluster-four");
    let cluster = LocalCluster::start(&dir);
    let members = [("alice", 440), ("bob", 550), ("carol", 660), ("dave", 770)];
    let mut running = Vec::new();
    for (i, (who, hz)) in members.iter().enumerate() {
        // Its node, then the next one to move to.
        let servers = format!("{},{}", cluster.nodes[i % 3], cluster.nodes[(i + 1) % 3]);
        running.push(Member::spawn(
            who,
            group_member(&dir, &servers, who, *hz, 25),
        ));
    }
    // Everyone in one call: each prints the group code over the three others, and they agree.
    let over_all = |l: &str| {
        l.starts_with("group safety code: ")
            && l.split("members besides us: ")
                .nth(1)
                .is_some_and(|rest| rest.split(", ").count() == 3)
    };
    let mut codes = Vec::new();
    for m in &mut running {
        m.wait_line(over_all);
        let line = m.seen.iter().find(|l| over_all(l)).unwrap();
        codes.push(line["group safety code: ".len()..][..9].to_string());
    }
    assert!(codes.iter().all(|c| *c == codes[0]), "{codes:?}");
    let connected = |l: &str| l == "state: connected (end-to-end encrypted)";
    for m in &mut running {
        m.wait_line(connected);
    }
    // Node 1 (alice's and dave's) dies: they move to their next node and come back into the
    // call; everyone shows all three others again.
    let marks: Vec<usize> = running.iter().map(|m| m.seen.len()).collect();
    let killed_at = std::time::Instant::now();
    cluster.kill_part("node1");
    for (m, mark) in running.iter_mut().zip(&marks) {
        m.wait_line_since(*mark, over_all);
        if matches!(m.name, "alice" | "dave") {
            m.wait_line_since(*mark, connected);
        }
    }
    eprintln!(
        "all four back in one call {:?} after node 1 died",
        killed_at.elapsed()
    );
    // Then the SFU node the room is on dies: everyone moves to the other.
    let sfu = placed_sfu(&cluster.dir, cluster.redis_port, "four");
    cluster.kill_part(&sfu);
    for m in running {
        let who = m.name;
        let (status, shown) = tokio::task::spawn_blocking(move || m.finish())
            .await
            .unwrap();
        assert!(status.success(), "{who}: {status}\n{shown}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{who}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["mode"], "sfu", "{report}\n{shown}");
        assert_eq!(report["decrypt_failures"], 0, "{report}");
        // Each other member was met (again, after the move), with nothing that failed to
        // decrypt. (Whether still present depends on who hung up first at the end.)
        let mut met: Vec<&str> = report["participants"]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|p| assert_eq!(p["decrypt_failures"], 0, "{who}: {p}"))
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        met.sort_unstable();
        met.dedup();
        assert_eq!(met.len(), 3, "{report}\n{shown}");
        // After both moves, the end of the call carries every other member's tone.
        for (other, hz) in members.iter().filter(|(name, _)| *name != who) {
            let share = tail_share(&dir.join(format!("{who}.wav")), f64::from(*hz));
            assert!(
                share > 0.05,
                "{who} lost {other} ({hz} Hz: {share:.3})\n{shown}"
            );
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_whose_sfu_node_dies_during_set_up_use_the_other() {
    if !available() {
        return;
    }
    let dir = temp_dir("cluster-setup");
    let cluster = LocalCluster::start(&dir);
    let members = [("alice", 440), ("bob", 550), ("carol", 660)];
    let mut running = Vec::new();
    for (i, (who, hz)) in members.iter().enumerate() {
        running.push(Member::spawn(
            who,
            group_member(&dir, &cluster.nodes[i % 3], who, *hz, 8),
        ));
    }
    // The first offer places the room: its SFU dies before anyone's media is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sfu = loop {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &cluster.redis_port.to_string(),
                "GET",
                "sotto:place:four",
            ])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break placed_sfu(&cluster.dir, cluster.redis_port, "four");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room was never placed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    cluster.kill_part(&sfu);
    for m in running {
        let who = m.name;
        let (status, shown) = tokio::task::spawn_blocking(move || m.finish())
            .await
            .unwrap();
        assert!(status.success(), "{who}: {status}\n{shown}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{who}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["decrypt_failures"], 0, "{report}");
        for p in report["participants"].as_array().unwrap() {
            assert!(
                p["frames_decrypted"].as_u64().unwrap() >= 100,
                "{who}: {p}\n{shown}"
            );
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
