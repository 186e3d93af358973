//! Compiles the web client (`web/*.html`, `*.js`, `*.css`) into the binary, so a server copied
//! to another machine still serves its page. Writes `$OUT_DIR/web_files.rs`: a sorted slice of
//! (name, bytes) pairs.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("web");
    println!("cargo:rerun-if-changed=web");
    let mut names: Vec<String> = match std::fs::read_dir(&web) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".html") || n.ends_with(".js") || n.ends_with(".css"))
            .collect(),
        Err(e) => panic!("cannot read {}: {e}", web.display()),
    };
    names.sort();
    let mut out = String::from("&[\n");
    for name in &names {
        let path = web.join(name);
        let _ = writeln!(
            out,
            "    ({name:?}, include_bytes!({:?}).as_slice()),",
            path.display().to_string()
        );
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("web_files.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
