//! The workspace's `sotto` binary, for tests of this crate that run the CLI.

use std::path::{Path, PathBuf};

/// `sotto`, next to this test's `deps/` directory (cargo builds it for
/// `cargo test --workspace`); `$SOTTO_BIN` overrides.
pub fn sotto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SOTTO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("sotto"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --bin sotto` (cargo test --workspace does)",
        bin.display()
    );
    bin
}
