//! include/sotto.h is what cbindgen generates from ffi/src, and a C compiler accepts it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ffi/ has a parent")
        .to_path_buf()
}

fn generate() -> String {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(crate_dir).join("cbindgen.toml"))
        .expect("cbindgen.toml parses");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = repo().join("include/sotto.h");
    let generated = generate();
    if std::env::var_os("SOTTO_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/sotto.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/sotto.h differs from what ffi/src generates; \
         run SOTTO_BLESS=1 cargo test -p sotto-ffi --test header and commit it"
    );
}

#[test]
fn header_has_the_contract() {
    let h = generate();
    for needle in [
        "#ifndef SOTTO_H",
        "#include <stdbool.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "extern \"C\"",
        "SOTTO_OK = 0",
        "SOTTO_ERR_INTERNAL = 8",
        "typedef struct sotto_call sotto_call;",
        "typedef struct sotto_sframe_sender sotto_sframe_sender;",
        "typedef struct sotto_sframe_receiver sotto_sframe_receiver;",
        "typedef void (*sotto_event_cb)(void *user_data, const char *event_json);",
        "const char *sotto_last_error(void);",
        "size_t sotto_sframe_overhead(uint16_t suite);",
        "sotto_status sotto_call_wait(sotto_call *call, uint32_t timeout_ms);",
    ] {
        assert!(h.contains(needle), "the header lacks {needle:?}");
    }
}

/// gcc (or $CC) compiles a C11 file that includes the header, with every warning an error,
/// and a C++ compiler does too when there is one.
#[test]
fn header_compiles_as_c11_and_cpp() {
    let dir = std::env::temp_dir().join(format!("sotto-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let include = repo().join("include");
    let source = "#include \"sotto.h\"\n\
        int use(void);\n\
        int use(void) {\n\
            sotto_status s = sotto_sframe_encrypt(4, NULL, 0, 0, 0, NULL, 0, NULL, 0, NULL, 0, NULL);\n\
            sotto_audio_io io = { NULL, NULL, NULL };\n\
            (void)io;\n\
            return (int)s + (int)sotto_sframe_overhead(1) + (sotto_last_error() == NULL);\n\
        }\n";
    let c_file = dir.join("use.c");
    std::fs::write(&c_file, source).expect("write use.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let status = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-c",
            "-o",
        ])
        .arg(dir.join("use.o"))
        .arg("-I")
        .arg(&include)
        .arg(&c_file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "{cc} -std=c11 rejects include/sotto.h");
    let cpp_file = dir.join("use.cpp");
    std::fs::write(&cpp_file, source).expect("write use.cpp");
    if let Ok(cpp) = Command::new("g++")
        .args(["-std=c++11", "-Wall", "-Werror", "-c", "-o"])
        .arg(dir.join("use_cpp.o"))
        .arg("-I")
        .arg(&include)
        .arg(&cpp_file)
        .status()
    {
        assert!(cpp.success(), "g++ rejects include/sotto.h");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
