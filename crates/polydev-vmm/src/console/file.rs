//! Keeping a console log bounded and reading it in bounded pieces.
//!
//! The guest writes the console, so its size is the guest's choice. Every
//! driver has its VMM open the log with `O_APPEND` (QEMU's `-chardev
//! file,append=on`, Firecracker's inherited stdout), so every VMM write lands
//! at the file's current end, wherever that is. [`cap`] therefore shortens
//! the file in place while the VMM runs: it keeps the first `head` bytes (the
//! boot), a one-line marker saying how many bytes were dropped, and the last
//! `tail` bytes. Readers never take the whole file: [`read_tail`] reads its
//! end, [`read_capped`] its head and tail, and [`LogReader`] only what was
//! added since its last call.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How much of a console log is kept: the first `head` bytes and the last
/// `tail` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Bytes kept from the start of the log.
    pub head: u64,
    /// Bytes kept from the end of the log.
    pub tail: u64,
}

impl Default for Limits {
    /// 1 MiB of head and 4 MiB of tail.
    fn default() -> Self {
        Limits {
            head: 1 << 20,
            tail: 4 << 20,
        }
    }
}

impl Limits {
    /// How far past `head + tail` a log may grow before [`cap`] rewrites it
    /// (a quarter of the tail, at least 64 KiB), so that a guest printing a
    /// little costs no rewrite of megabytes each time.
    pub fn slack(&self) -> u64 {
        (self.tail / 4).max(64 << 10)
    }
}

/// How the marker line left by [`cap`] starts.
const MARKER_PREFIX: &str = "\n[polydev: ";
/// How the marker line left by [`cap`] ends, after the byte count.
const MARKER_SUFFIX: &str = " bytes of console output dropped here]\n";
/// How far into the tail [`cap`] looks for a line start.
const LINE_SEARCH: usize = 4096;

fn marker(dropped: u64) -> String {
    format!("{MARKER_PREFIX}{dropped}{MARKER_SUFFIX}")
}

/// The dropped count and the length of a marker line starting `bytes`.
fn parse_marker(bytes: &[u8]) -> Option<(u64, u64)> {
    let rest = bytes.strip_prefix(MARKER_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let n: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    rest[digits..]
        .starts_with(MARKER_SUFFIX.as_bytes())
        .then(|| {
            let len = MARKER_PREFIX.len() + digits + MARKER_SUFFIX.len();
            (n, len as u64)
        })
}

/// Reads from `offset` to the end of `f`, at most `max` bytes.
fn read_from(f: &File, offset: u64, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while (out.len() as u64) < max {
        let want = buf.len().min((max - out.len() as u64) as usize);
        let n = f.read_at(&mut buf[..want], offset + out.len() as u64)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// Shortens the console log at `path` in place when it is longer than
/// `limits.head + limits.tail + limits.slack()`: the first `head` bytes stay,
/// then a marker line with the number of bytes dropped (counting those
/// dropped by earlier calls), then the last `tail` bytes, starting at a line
/// when one starts near the cut. Returns the bytes dropped by this call, or
/// `None` when the log was short enough (or absent).
///
/// The VMM keeps writing through its own `O_APPEND` descriptor meanwhile.
/// What it writes while the tail is read is read too; what it writes in the
/// instant between the last read and the truncation is lost, and what it
/// writes between the truncation and the append lands before the marker.
pub fn cap(path: &Path, limits: Limits) -> io::Result<Option<u64>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= limits.head + limits.tail + limits.slack() {
        return Ok(None);
    }
    let (before, old_marker) = {
        let b = read_from(&f, limits.head, 128)?;
        parse_marker(&b).unwrap_or((0, 0))
    };
    let mut start = len - limits.tail;
    // What the VMM adds while this runs is read as well, up to a bound.
    let most = limits.tail + limits.slack();
    let mut kept = read_from(&f, start, most)?;
    if let Some(i) = kept.iter().take(LINE_SEARCH).position(|b| *b == b'\n') {
        kept.drain(..=i);
        start += i as u64 + 1;
    }
    loop {
        let end = start + kept.len() as u64;
        let now = f.metadata()?.len();
        if now <= end || kept.len() as u64 >= most {
            break;
        }
        kept.extend(read_from(&f, end, most - kept.len() as u64)?);
    }
    let dropped = (start - limits.head).saturating_sub(old_marker) + before;
    let mut out = marker(dropped).into_bytes();
    out.extend_from_slice(&kept);
    f.set_len(limits.head)?;
    // One write at the file's end (the descriptor is O_APPEND).
    io::Write::write_all(&mut &f, &out)?;
    Ok(Some(dropped - before))
}

/// The last `max` bytes of the file at `path` (all of it when shorter), and
/// the file's length when read. An absent file reads as empty.
pub fn read_tail(path: &Path, max: u64) -> io::Result<(Vec<u8>, u64)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    Ok((read_from(&f, start, len - start)?, len))
}

/// The console log at `path` as it may be shown: all of it when it is at
/// most `head + tail` bytes long, else its first `head` bytes, a line saying
/// how many bytes are not shown, and its last `tail` bytes. Never more than
/// `head + tail` bytes of the file are read.
pub fn read_capped(path: &Path, limits: Limits) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len <= limits.head + limits.tail {
        return read_from(&f, 0, len);
    }
    let mut out = read_from(&f, 0, limits.head)?;
    let skipped = len - limits.head - limits.tail;
    out.extend_from_slice(
        format!("\n[polydev: {skipped} bytes of console output not shown here]\n").as_bytes(),
    );
    out.extend(read_from(&f, len - limits.tail, limits.tail)?);
    Ok(out)
}

/// Reads a growing log piece by piece: each [`LogReader::read_new`] returns
/// only the bytes added since the previous one.
#[derive(Debug, Clone)]
pub struct LogReader {
    path: PathBuf,
    offset: u64,
    /// The last bytes read (at most [`CHECK_BYTES`]): still there at the same
    /// place when the file was not rewritten since.
    last: Vec<u8>,
}

/// How many of the last bytes read [`LogReader`] compares to tell that the
/// file was rewritten.
const CHECK_BYTES: usize = 64;

/// What one [`LogReader::read_new`] got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewBytes {
    /// The bytes added since the last read.
    pub bytes: Vec<u8>,
    /// The file was rewritten since the last read (shortened by [`cap`] or
    /// replaced: shorter than what had been read, or the last bytes read are
    /// no longer where they were): reading started again from its first
    /// byte, so `bytes` do not continue the previous ones.
    pub restarted: bool,
}

impl LogReader {
    /// A reader at the start of the log at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> LogReader {
        LogReader {
            path: path.into(),
            offset: 0,
            last: Vec::new(),
        }
    }

    /// How many bytes of the log have been read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The bytes added since the last call, at most `max` of them (the rest
    /// comes with the next calls). An absent file has added nothing.
    pub fn read_new(&mut self, max: u64) -> io::Result<NewBytes> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(NewBytes::default()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let restarted = len < self.offset
            || (!self.last.is_empty() && {
                let at = self.offset - self.last.len() as u64;
                read_from(&f, at, self.last.len() as u64)? != self.last
            });
        if restarted {
            self.offset = 0;
            self.last.clear();
        }
        let bytes = read_from(&f, self.offset, max.min(len - self.offset))?;
        self.offset += bytes.len() as u64;
        if bytes.len() >= CHECK_BYTES {
            self.last = bytes[bytes.len() - CHECK_BYTES..].to_vec();
        } else {
            self.last.extend_from_slice(&bytes);
            let extra = self.last.len().saturating_sub(CHECK_BYTES);
            self.last.drain(..extra);
        }
        Ok(NewBytes { bytes, restarted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn appender(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    fn lines(from: usize, to: usize) -> String {
        (from..to).map(|i| format!("line {i:06}\n")).collect()
    }

    const SMALL: Limits = Limits {
        head: 1000,
        tail: 4000,
    };

    #[test]
    fn short_logs_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        assert_eq!(cap(&p, SMALL).unwrap(), None, "absent");
        std::fs::write(&p, lines(0, 100)).unwrap();
        assert_eq!(cap(&p, SMALL).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), lines(0, 100));
    }

    #[test]
    fn cap_keeps_head_marker_and_tail_and_counts_across_calls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let all = lines(0, 10_000); // 120,000 bytes
        std::fs::write(&p, &all).unwrap();
        let dropped = cap(&p, SMALL).unwrap().expect("capped");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(&all[..1000]), "the head is kept");
        assert!(text.ends_with(&lines(9_667, 10_000)), "the tail is kept");
        let m = marker(dropped);
        assert_eq!(text.len() as u64, 1000 + m.len() as u64 + 3996);
        assert!(text[1000..].starts_with(&m), "{}", &text[990..1100]);
        // The tail starts at a line: the marker is followed by a whole line.
        assert!(text[1000 + m.len()..].starts_with("line 009667\n"));
        assert_eq!(dropped, 120_000 - 1000 - 3996);

        // More output, capped again: the count includes the first cut.
        appender(&p)
            .write_all(lines(10_000, 20_000).as_bytes())
            .unwrap();
        let again = cap(&p, SMALL).unwrap().expect("capped again");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(&all[..1000]));
        let (total, mlen) = parse_marker(&text.as_bytes()[1000..]).expect("one marker");
        assert_eq!(total, dropped + again);
        assert_eq!(text.matches("[polydev:").count(), 1, "one marker only");
        assert!(text.ends_with(&lines(19_667, 20_000)));
        assert_eq!(text.len() as u64, 1000 + mlen + 3996);
    }

    #[test]
    fn a_vmm_appending_meanwhile_never_grows_the_log_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let limits = Limits {
            head: 4096,
            tail: 64 << 10,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                // The VMM's own descriptor, opened once, O_APPEND.
                let mut f = appender(&p);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(format!("line {i:06}\n").as_bytes()).unwrap();
                    i += 1;
                }
                f.write_all(b"THE END\n").unwrap();
                i
            })
        };
        let bound = limits.head + limits.tail + limits.slack();
        let mut caps = 0;
        let started = std::time::Instant::now();
        while caps < 50 && started.elapsed() < std::time::Duration::from_secs(20) {
            if cap(&p, limits).unwrap().is_some() {
                caps += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(caps >= 1, "the writer outran nothing: {written} lines");
        cap(&p, limits).unwrap();
        let text = std::fs::read(&p).unwrap();
        assert!(
            (text.len() as u64) < bound + 200,
            "{} bytes after {caps} caps",
            text.len()
        );
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with(&lines(0, 400)[..4096]), "head kept");
        assert!(text.ends_with("THE END\n"), "the VMM's last write is last");
        assert!(text.contains(" bytes of console output dropped here]\n"));
        assert!(written > 6000, "the writer kept writing: {written}");
    }

    #[test]
    fn tails_and_capped_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        assert_eq!(read_tail(&p, 10).unwrap(), (Vec::new(), 0));
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(read_tail(&p, 4).unwrap(), (b"6789".to_vec(), 10));
        assert_eq!(read_tail(&p, 40).unwrap().0, b"0123456789");

        let l = Limits { head: 3, tail: 4 };
        std::fs::write(&p, "abcdefg").unwrap();
        assert_eq!(read_capped(&p, l).unwrap(), b"abcdefg");
        std::fs::write(&p, "abcdefghijklmnop").unwrap();
        assert_eq!(
            String::from_utf8(read_capped(&p, l).unwrap()).unwrap(),
            "abc\n[polydev: 9 bytes of console output not shown here]\nmnop"
        );
        assert!(read_capped(&dir.path().join("nope"), l).is_err());
    }

    #[test]
    fn the_reader_returns_only_new_bytes_and_restarts_after_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut r = LogReader::new(&p);
        assert_eq!(r.read_new(100).unwrap(), NewBytes::default(), "absent");
        let mut f = appender(&p);
        f.write_all(b"hello ").unwrap();
        assert_eq!(r.read_new(100).unwrap().bytes, b"hello ");
        assert_eq!(r.read_new(100).unwrap().bytes, b"");
        f.write_all(b"world, more").unwrap();
        assert_eq!(r.read_new(5).unwrap().bytes, b"world", "at most max");
        assert_eq!(r.read_new(100).unwrap().bytes, b", more");
        assert_eq!(r.offset(), 17);
        f.set_len(0).unwrap();
        f.write_all(b"again").unwrap();
        let n = r.read_new(100).unwrap();
        assert!(n.restarted);
        assert_eq!(n.bytes, b"again");
    }

    #[test]
    fn the_reader_notices_a_cap_even_when_the_log_grew_back_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut f = appender(&p);
        f.write_all(lines(0, 10_000).as_bytes()).unwrap();
        let mut r = LogReader::new(&p);
        while !r.read_new(1 << 16).unwrap().bytes.is_empty() {}
        let read = r.offset();
        cap(&p, SMALL).unwrap().expect("capped");
        // The guest writes on: the log is longer again than what was read.
        f.write_all(lines(10_000, 20_000).as_bytes()).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > read);
        let n = r.read_new(1 << 30).unwrap();
        assert!(n.restarted, "the rewrite was noticed");
        let text = String::from_utf8(n.bytes).unwrap();
        assert!(text.starts_with("line 000000\n"));
        assert!(text.ends_with("line 019999\n"));
        assert!(text.contains("line 015000\n"), "nothing new was skipped");
        // Untouched since: only what is new.
        f.write_all(b"more\n").unwrap();
        let n = r.read_new(100).unwrap();
        assert!(!n.restarted);
        assert_eq!(n.bytes, b"more\n");
    }
}
