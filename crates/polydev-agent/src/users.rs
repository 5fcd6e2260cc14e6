//! Looking up guest users in `/etc/passwd` (the guest has no NSS modules
//! beyond files, so parsing the file is exact).

use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Finds `name` in passwd-format `text`.
pub fn parse(text: &str, name: &str) -> Option<User> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(User {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_owned(),
            shell: f[6].to_owned(),
        })
    })
}

/// Finds `name` in `/etc/passwd`, or says why not.
pub fn lookup(name: &str) -> Result<User, String> {
    lookup_in(Path::new("/etc/passwd"), name)
}

/// Finds `name` in the passwd file at `path`, or says why not.
pub fn lookup_in(path: &Path, name: &str) -> Result<User, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, name).ok_or_else(|| format!("no user {name:?} in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let text =
            "root:x:0:0:root:/root:/bin/bash\npolydev:x:1000:1000::/home/polydev:/bin/bash\n";
        let u = parse(text, "polydev").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/polydev");
        assert!(parse(text, "nobody").is_none());
        assert!(parse("bad:x:zz:0::/:/bin/sh", "bad").is_none());
    }
}
