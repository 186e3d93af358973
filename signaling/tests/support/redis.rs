//! A real `redis-server` for the scale-out tests: on a free loopback port, nothing saved to
//! disk, killed when dropped, restartable on the same port. Skipped (with a note) when it is
//! not installed, unless `SOTTO_REQUIRE_REDIS=1` (CI).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Whether `redis-server` is installed; if not, says the test is skipped (or fails with
/// `SOTTO_REQUIRE_REDIS=1`).
pub fn available() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("SOTTO_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-server is missing and SOTTO_REQUIRE_REDIS=1"
        );
        eprintln!("skipped: redis-server is not installed");
    }
    installed
}

/// A `redis-server` of this test, killed when dropped.
pub struct Redis {
    child: Child,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one, or returns `None` (the test is skipped) when it is not installed.
    pub fn start() -> Option<Redis> {
        if !available() {
            return None;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let url = format!("redis://127.0.0.1:{port}");
            if let Some(child) = spawn_redis(&url) {
                return Some(Redis { child, url, port });
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
        }
    }

    /// Kills it and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + WAIT;
        // The port may take a moment to be free again.
        loop {
            if let Some(child) = spawn_redis(&self.url) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A connection to it.
    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// Starts `redis-server` for `url` (`redis://127.0.0.1:PORT`) and waits until it answers;
/// `None` if it exits first (the port is taken). The server that answers must be this one,
/// not another test's on a port reused meanwhile.
fn spawn_redis(url: &str) -> Option<Child> {
    let port = url.rsplit(':').next().unwrap();
    let mut child = Command::new("redis-server")
        .args(["--port", port, "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ours = format!("process_id:{}\r\n", child.id());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let info = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
        match info {
            Ok(info) if info.contains(&ours) => return Some(child),
            Ok(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "redis-server did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Redis {
    /// Kills it (its data is gone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
