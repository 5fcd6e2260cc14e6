//! The hand-written libvpx declarations (`src/vpx.rs`) against the
//! installed headers: a C program built with the system compiler prints
//! the sizes, offsets and constants, which must equal Rust's.

use std::process::Command;

#[test]
fn ffi_matches_the_headers() {
    let facts = polydev_stream::vpx::layout_facts();
    if !std::path::Path::new("/usr/include/vpx/vpx_encoder.h").is_file() {
        panic!("/usr/include/vpx/vpx_encoder.h is missing: install libvpx-dev");
    }
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <vpx/vpx_encoder.h>\n#include <vpx/vp8cx.h>\nint main(void) {\n",
    );
    for (name, _) in &facts {
        c.push_str(&format!("  printf(\"%lld\\n\", (long long)({name}));\n"));
    }
    c.push_str("  return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // -O2 drops the headers' unused static control wrappers (no libvpx
    // needed to link).
    let out = Command::new(&cc)
        .arg("-O2")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let values: Vec<i64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), facts.len());
    let mut bad = Vec::new();
    for ((name, rust), c) in facts.iter().zip(&values) {
        if rust != c {
            bad.push(format!("{name}: Rust {rust}, C {c}"));
        }
    }
    assert!(
        bad.is_empty(),
        "FFI layout differs from the headers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn links_the_static_library() {
    // The version libvpx reports is the one of the headers we checked.
    let v = polydev_stream::encode::libvpx_version();
    let out = Command::new("pkg-config")
        .args(["--modversion", "vpx"])
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            let pc = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(
                v.trim_start_matches('v'),
                pc,
                "linked libvpx vs installed headers"
            );
        }
    }
}
