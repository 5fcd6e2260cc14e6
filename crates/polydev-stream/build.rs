//! Links libvpx statically.
//!
//! The streamer is built on the host (Debian 12, libvpx 1.12 from
//! `libvpx-dev`) and runs in a Debian 13 guest whose libvpx has another
//! soname, so the encoder is linked in: `libvpx.a` from `VPX_LIB_DIR`, else
//! from `pkg-config --variable=libdir vpx`, else from the multiarch
//! directory. The FFI declarations in `src/vpx.rs` follow libvpx 1.12's
//! headers; `tests/vpx_layout.rs` checks them against the installed ones.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VPX_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("VPX_LIB_DIR") {
        candidates.push(dir.into());
    }
    if let Ok(out) = Command::new("pkg-config")
        .args(["--variable=libdir", "vpx"])
        .output()
    {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                candidates.push(dir.into());
            }
        }
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    candidates.push(format!("/usr/lib/{multiarch}").into());
    candidates.push("/usr/lib".into());
    candidates.push("/usr/local/lib".into());
    let Some(dir) = candidates.iter().find(|d| d.join("libvpx.a").is_file()) else {
        panic!(
            "polydev-stream links libvpx statically but found no libvpx.a in {}; \
             install libvpx-dev (Debian) or set VPX_LIB_DIR",
            candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    println!("cargo:rerun-if-changed={}", dir.join("libvpx.a").display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=vpx");
    // libvpx's own dependencies (`pkg-config --static --libs vpx`).
    println!("cargo:rustc-link-lib=m");
    println!("cargo:rustc-link-lib=pthread");
}
