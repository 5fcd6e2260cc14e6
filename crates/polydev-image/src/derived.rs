//! Derived images: a built golden image plus a few files, made without
//! mounting anything. The base image is copied sparsely and the files are
//! written into the copy with `debugfs -w` (e2fsprogs), which edits an ext4
//! file system offline, from user space.
//!
//! The one derived image polydev makes is the *stand-in* browser image used
//! by the connect-flow tests: the browser image with the three provider CLIs
//! replaced by stand-ins (see `polydev_login::standins`). It lives in the
//! cache as `images/<name>-<hash>/`, a name no flavour starts with, so the
//! controller never mistakes it for a golden image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::command;
use crate::error::{Error, Result};
use crate::hashing::{file_sha256, parts_sha256};
use crate::lock::BuildLock;
use crate::manifest::{self, Manifest};
use crate::progress::{format_elapsed, Progress};
use crate::rootfs::ImageArtifact;

/// A file written into a derived image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedFile {
    /// Absolute path in the image; whatever is there (a symlink, say) is replaced.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits (`0o755`); owner and group are root.
    pub mode: u32,
}

/// The input hash of a derived image: its name, its base and its files.
pub fn input_hash(name: &str, base: &ImageArtifact, files: &[DerivedFile]) -> String {
    let mut parts: Vec<(String, Vec<u8>)> = vec![
        ("name".into(), name.as_bytes().to_vec()),
        ("base".into(), base.hash.as_bytes().to_vec()),
    ];
    for f in files {
        parts.push((format!("file:{}:{:o}", f.path, f.mode), f.content.clone()));
    }
    let borrowed: Vec<(&str, &[u8])> = parts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    parts_sha256(&borrowed)
}

/// The newest complete derived image called `name`, if any.
pub fn latest(name: &str, cache_dir: &Path) -> Result<Option<ImageArtifact>> {
    let images = cache_dir.join("images");
    let entries = match std::fs::read_dir(&images) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list", &images)(e)),
    };
    let prefix = format!("{name}-");
    let mut best: Option<(u64, ImageArtifact)> = None;
    for entry in entries {
        let entry = entry.map_err(Error::io("list", &images))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(hash) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let a = artifact(&entry.path(), hash);
        let Ok(m) = Manifest::read(&a.manifest_path) else {
            continue;
        };
        if a.path.is_file() && !matches!(&best, Some((t, _)) if *t >= m.built_at_unix) {
            best = Some((m.built_at_unix, a));
        }
    }
    Ok(best.map(|(_, a)| a))
}

fn artifact(dir: &Path, hash: &str) -> ImageArtifact {
    ImageArtifact {
        path: dir.join("rootfs.ext4"),
        manifest_path: dir.join("manifest.json"),
        hash: hash.to_owned(),
        cached: true,
    }
}

/// Makes (or finds in the cache) the image `name`: `base` plus `files`.
pub fn build(
    name: &str,
    base: &ImageArtifact,
    files: &[DerivedFile],
    cache_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<ImageArtifact> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::InvalidInput(format!(
            "derived image name {name:?} must be letters, digits and dashes"
        )));
    }
    for f in files {
        if !f.path.starts_with('/') || f.path.contains(['"', '\n', ' ']) || f.path.contains("/../")
        {
            return Err(Error::InvalidInput(format!(
                "derived image file path {:?} must be absolute, without quotes, spaces or ..",
                f.path
            )));
        }
    }
    let hash = input_hash(name, base, files);
    let dir = cache_dir.join("images").join(format!("{name}-{hash}"));
    let done = artifact(&dir, &hash);
    if done.path.is_file() && done.manifest_path.is_file() {
        return Ok(done);
    }
    let images = cache_dir.join("images");
    let _lock = BuildLock::acquire(&images.join(".lock"))?;
    if done.path.is_file() && done.manifest_path.is_file() {
        return Ok(done);
    }
    let started = Instant::now();
    let result = build_locked(name, base, files, &dir, &hash, progress);
    progress.finish();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    progress.note(&format!(
        "image {} built in {}",
        done.path.display(),
        format_elapsed(started.elapsed())
    ));
    Ok(ImageArtifact {
        cached: false,
        ..done
    })
}

fn build_locked(
    name: &str,
    base: &ImageArtifact,
    files: &[DerivedFile],
    dir: &Path,
    hash: &str,
    progress: &mut dyn Progress,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let started = Instant::now();
    let base_manifest = Manifest::read(&base.manifest_path)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(Error::io("remove", dir))?;
    }
    std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    progress.phase("copying the base image (sparse)");
    let tmp = dir.join("rootfs.ext4.tmp");
    command::run_quiet(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&base.path)
            .arg(&tmp),
    )?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(Error::io("chmod", &tmp))?;

    progress.phase("writing files with debugfs");
    let stage = dir.join("files");
    std::fs::create_dir_all(&stage).map_err(Error::io("create directory", &stage))?;
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        let src = stage.join(i.to_string());
        std::fs::write(&src, &f.content).map_err(Error::io("write", &src))?;
        script.push_str(&debugfs_commands(f, &src));
    }
    let script_path = dir.join("debugfs.cmds");
    std::fs::write(&script_path, &script).map_err(Error::io("write", &script_path))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&tmp)
        .output()
        .map_err(|e| Error::ImageCheck(format!("running debugfs (e2fsprogs): {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs reports most failures on stderr and still exits 0.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        // `rm` of a path the base lacks and `mkdir` of one it has are fine.
        .filter(|l| !l.contains("File not found by ext2_lookup"))
        .filter(|l| !l.contains("Ext2 directory already exists"))
        .collect();
    if !out.status.success() {
        return Err(Error::ImageCheck(format!(
            "debugfs failed on {} ({}): {}",
            tmp.display(),
            out.status,
            complaints.join("; ")
        )));
    }
    if !complaints.is_empty() {
        return Err(Error::ImageCheck(format!(
            "debugfs could not write the files into {}: {}",
            tmp.display(),
            complaints.join("; ")
        )));
    }
    for f in files {
        verify(&tmp, f)?;
    }
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_file(&script_path);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
        .map_err(Error::io("chmod", &tmp))?;
    progress.phase("hashing the image");
    let image_sha256 = file_sha256(&tmp)?;
    let image = dir.join("rootfs.ext4");
    std::fs::rename(&tmp, &image).map_err(Error::io("rename", &tmp))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let m = Manifest {
        flavour: format!(
            "{name} (derived from {} {})",
            base_manifest.flavour, base.hash
        ),
        input_hash: hash.into(),
        image_sha256,
        build_seconds: started.elapsed().as_secs(),
        built_at: manifest::rfc3339(now),
        built_at_unix: now,
        ..base_manifest
    };
    m.write(&dir.join("manifest.json"))
}

/// The debugfs commands that put `f` (staged at `src`) into the image:
/// remove what is there, write the file, set mode and owner.
fn debugfs_commands(f: &DerivedFile, src: &Path) -> String {
    let parent = Path::new(&f.path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let mut s = String::new();
    // Parent directories (mkdir of an existing one only complains).
    let mut acc = PathBuf::from("/");
    for c in Path::new(&parent).components().skip(1) {
        acc.push(c);
        s.push_str(&format!("mkdir \"{}\"\n", acc.display()));
    }
    s.push_str(&format!("rm \"{}\"\n", f.path));
    s.push_str(&format!("write \"{}\" \"{}\"\n", src.display(), f.path));
    s.push_str(&format!(
        "set_inode_field \"{}\" mode 0{:o}\n",
        f.path,
        0o100000 | (f.mode & 0o7777)
    ));
    s.push_str(&format!("set_inode_field \"{}\" uid 0\n", f.path));
    s.push_str(&format!("set_inode_field \"{}\" gid 0\n", f.path));
    s
}

/// Reads `f` back out of the image and compares it.
fn verify(image: &Path, f: &DerivedFile) -> Result<()> {
    let out = command::run_quiet(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat \"{}\"", f.path))
            .arg(image),
    )?;
    if out.stdout.as_bytes() != f.content.as_slice() {
        return Err(Error::ImageCheck(format!(
            "{} in {} does not hold what was written ({} bytes read, {} expected)",
            f.path,
            image.display(),
            out.stdout.len(),
            f.content.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_replace_the_file_and_set_mode_and_owner() {
        let f = DerivedFile {
            path: "/usr/local/bin/claude".into(),
            content: b"#!/bin/sh\n".to_vec(),
            mode: 0o755,
        };
        let s = debugfs_commands(&f, Path::new("/tmp/0"));
        assert!(s.contains("mkdir \"/usr\"\nmkdir \"/usr/local\"\nmkdir \"/usr/local/bin\"\n"));
        assert!(s.contains(
            "rm \"/usr/local/bin/claude\"\nwrite \"/tmp/0\" \"/usr/local/bin/claude\"\n"
        ));
        assert!(s.contains("mode 0100755"));
        assert!(s.contains("uid 0") && s.contains("gid 0"));
    }

    #[test]
    fn hash_covers_base_and_files() {
        let base = |h: &str| ImageArtifact {
            path: "/x".into(),
            manifest_path: "/y".into(),
            hash: h.into(),
            cached: true,
        };
        let f = |c: &[u8]| DerivedFile {
            path: "/a".into(),
            content: c.to_vec(),
            mode: 0o644,
        };
        let h = input_hash("t", &base("1"), &[f(b"x")]);
        assert_ne!(h, input_hash("t", &base("2"), &[f(b"x")]));
        assert_ne!(h, input_hash("t", &base("1"), &[f(b"y")]));
        assert_ne!(h, input_hash("u", &base("1"), &[f(b"x")]));
        assert_eq!(h, input_hash("t", &base("1"), &[f(b"x")]));
    }
}
