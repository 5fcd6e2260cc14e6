//! Firecracker's HTTP API over its Unix socket: a blocking HTTP/1.1 client
//! (one connection per request, `Content-Length` bodies, which is all
//! Firecracker's server speaks) and one function per request body, named
//! after the API's swagger definitions so the unit tests can hold each body
//! against the documented field names. A refused request becomes
//! [`VmmError::Api`] carrying Firecracker's `fault_message` verbatim.

use crate::{Result, VmmError, VmmKind};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest response body accepted (Firecracker's are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// A client for one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// Connects to a Unix socket at any path length: a jailed VMM's socket lies
/// deep under its chroot, past the 108 bytes `sun_path` holds, so a long
/// path is reached through its directory's descriptor
/// (`/proc/self/fd/<dir>/<name>`).
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return UnixStream::connect(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path);
    };
    use std::os::unix::fs::OpenOptionsExt;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&d).to_string())
        .join(name);
    UnixStream::connect(short)
}

impl Client {
    /// A client for the socket at `socket`; each request may take `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until the API socket accepts connections (Firecracker binds it
    /// a moment after starting), or `wait` passes. `alive` is asked between
    /// tries so a VMM that died is reported at once.
    pub fn wait_ready(&self, wait: Duration, alive: &dyn Fn() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            match connect(&self.socket) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() >= wait || !alive() => {
                    return Err(VmmError::Control {
                        path: self.socket.clone(),
                        detail: format!(
                            "API socket not ready after {} ms{}: {e}",
                            start.elapsed().as_millis(),
                            if alive() { "" } else { " (firecracker exited)" }
                        ),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Sends `method path` with an optional JSON body; returns the response
    /// body (JSON, or `null` for 204).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let request = format!("{method} {path}");
        let ctl = |detail: String| VmmError::Control {
            path: self.socket.clone(),
            detail: format!("{request}: {detail}"),
        };
        let mut s = connect(&self.socket).map_err(|e| ctl(format!("connecting: {e}")))?;
        s.set_read_timeout(Some(self.timeout))
            .and_then(|_| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| ctl(format!("setting timeouts: {e}")))?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if body.is_some() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(payload.as_bytes()))
            .map_err(|e| ctl(format!("sending: {e}")))?;
        let (status, text) = read_response(&mut BufReader::new(s)).map_err(ctl)?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .map_err(|e| ctl(format!("unparsable answer ({e}): {text}")));
        }
        Err(VmmError::Api {
            vmm: VmmKind::Firecracker,
            request,
            detail: fault_message(status, &text),
        })
    }

    /// `PUT path` with `body`.
    pub fn put(&self, path: &str, body: &Value) -> Result<()> {
        self.request("PUT", path, Some(body)).map(drop)
    }

    /// `PATCH path` with `body`.
    pub fn patch(&self, path: &str, body: &Value) -> Result<()> {
        self.request("PATCH", path, Some(body)).map(drop)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.request("GET", path, None)
    }
}

/// Reads one HTTP/1.1 response: status code and body.
fn read_response(r: &mut impl BufRead) -> std::result::Result<(u16, String), String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    let mut length = 0usize;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("reading headers: {e}"))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length {:?}", v.trim()))?;
            }
        }
    }
    if length > MAX_BODY {
        return Err(format!("answer of {length} bytes is too large"));
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Firecracker's `fault_message`, verbatim, or the raw answer when it has none.
fn fault_message(status: u16, text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}: {}", text.trim()))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `Logger`: Firecracker's own log into `log_path`.
pub fn logger(log_path: &Path) -> Value {
    json!({ "log_path": p(log_path), "level": "Info", "show_level": true, "show_log_origin": false })
}

/// `Metrics`: JSON metrics lines into `metrics_path`.
pub fn metrics(metrics_path: &Path) -> Value {
    json!({ "metrics_path": p(metrics_path) })
}

/// `MachineConfiguration`.
pub fn machine_config(vcpus: u32, memory_mb: u32) -> Value {
    json!({ "vcpu_count": vcpus, "mem_size_mib": memory_mb, "smt": false, "track_dirty_pages": false })
}

/// `BootSource`: an uncompressed ELF kernel and its command line.
pub fn boot_source(kernel: &Path, boot_args: &str) -> Value {
    json!({ "kernel_image_path": p(kernel), "boot_args": boot_args })
}

/// `Drive`: a virtio-block disk backed by `path`.
pub fn drive(drive_id: &str, path: &Path, is_root_device: bool, is_read_only: bool) -> Value {
    json!({
        "drive_id": drive_id,
        "path_on_host": p(path),
        "is_root_device": is_root_device,
        "is_read_only": is_read_only,
        "cache_type": "Unsafe",
        "io_engine": "Sync",
    })
}

/// `NetworkInterface`: virtio-net on the host TAP `host_dev_name`.
pub fn network_interface(iface_id: &str, host_dev_name: &str, guest_mac: &str) -> Value {
    json!({ "iface_id": iface_id, "host_dev_name": host_dev_name, "guest_mac": guest_mac })
}

/// `Vsock`: a virtio-vsock device proxied through the Unix socket `uds_path`.
pub fn vsock(guest_cid: u32, uds_path: &Path) -> Value {
    json!({ "guest_cid": guest_cid, "uds_path": p(uds_path) })
}

/// `EntropyDevice`: virtio-rng, unlimited.
pub fn entropy() -> Value {
    json!({})
}

/// `SerialDevice`: the guest's serial output into `serial_out_path`
/// (API 1.14 and later).
pub fn serial(serial_out_path: &Path) -> Value {
    json!({ "serial_out_path": p(serial_out_path) })
}

/// `InstanceActionInfo` for `InstanceStart`.
pub fn instance_start() -> Value {
    json!({ "action_type": "InstanceStart" })
}

/// `Vm`: pause or resume.
pub fn vm_state(paused: bool) -> Value {
    json!({ "state": if paused { "Paused" } else { "Resumed" } })
}

/// `SnapshotCreateParams` for a full snapshot.
pub fn snapshot_create(snapshot_path: &Path, mem_file_path: &Path) -> Value {
    json!({
        "snapshot_type": "Full",
        "snapshot_path": p(snapshot_path),
        "mem_file_path": p(mem_file_path),
    })
}

/// `SnapshotLoadParams`: memory from a file, the TAP named again (every VM's
/// TAP has the same name in its own namespace, so this is the same device
/// name, stated so a snapshot never depends on the name it was taken with),
/// resumed at once when `resume_vm`.
pub fn snapshot_load(
    snapshot_path: &Path,
    mem_file: &Path,
    resume_vm: bool,
    iface: Option<(&str, &str)>,
) -> Value {
    let mut v = json!({
        "snapshot_path": p(snapshot_path),
        "mem_backend": { "backend_type": "File", "backend_path": p(mem_file) },
        "track_dirty_pages": false,
        "resume_vm": resume_vm,
    });
    if let Some((iface_id, host_dev_name)) = iface {
        v["network_overrides"] = json!([{ "iface_id": iface_id, "host_dev_name": host_dev_name }]);
    }
    v
}

#[cfg(test)]
mod tests {

    #[test]
    fn connects_to_a_socket_past_the_sun_path_limit() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("firecracker.sock");
        assert!(sock.as_os_str().len() > 110);
        let l = std::os::unix::net::UnixListener::bind(
            Path::new("/proc/self/fd")
                .join(
                    std::os::fd::AsRawFd::as_raw_fd(&std::fs::File::open(&deep).unwrap())
                        .to_string(),
                )
                .join("firecracker.sock"),
        );
        // Binding through /proc/self/fd is a test convenience; the VMM binds
        // its own short path inside its chroot.
        let _l = l.unwrap();
        assert!(UnixStream::connect(&sock).is_err(), "too long for sun_path");
        connect(&sock).unwrap();
    }
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Read;

    /// Property names of the swagger definitions (Firecracker 1.14 to 1.16,
    /// `src/firecracker/swagger/firecracker.yaml`), and which are required.
    fn documented(def: &str) -> (&'static [&'static str], &'static [&'static str]) {
        match def {
            "Logger" => (
                &[
                    "level",
                    "log_path",
                    "show_level",
                    "show_log_origin",
                    "module",
                ],
                &[],
            ),
            "Metrics" => (&["metrics_path"], &["metrics_path"]),
            "MachineConfiguration" => (
                &[
                    "cpu_template",
                    "smt",
                    "mem_size_mib",
                    "track_dirty_pages",
                    "vcpu_count",
                    "huge_pages",
                ],
                &["mem_size_mib", "vcpu_count"],
            ),
            "BootSource" => (
                &["boot_args", "initrd_path", "kernel_image_path"],
                &["kernel_image_path"],
            ),
            "Drive" => (
                &[
                    "drive_id",
                    "partuuid",
                    "is_root_device",
                    "cache_type",
                    "is_read_only",
                    "path_on_host",
                    "rate_limiter",
                    "io_engine",
                    "socket",
                ],
                &["drive_id", "is_root_device"],
            ),
            "NetworkInterface" => (
                &[
                    "guest_mac",
                    "host_dev_name",
                    "iface_id",
                    "rx_rate_limiter",
                    "tx_rate_limiter",
                ],
                &["host_dev_name", "iface_id"],
            ),
            "Vsock" => (
                &["guest_cid", "uds_path", "vsock_id"],
                &["guest_cid", "uds_path"],
            ),
            "EntropyDevice" => (&["rate_limiter"], &[]),
            "SerialDevice" => (&["serial_out_path"], &[]),
            "InstanceActionInfo" => (&["action_type"], &["action_type"]),
            "Vm" => (&["state"], &["state"]),
            "SnapshotCreateParams" => (
                &["mem_file_path", "snapshot_path", "snapshot_type"],
                &["mem_file_path", "snapshot_path"],
            ),
            "SnapshotLoadParams" => (
                &[
                    "enable_diff_snapshots",
                    "track_dirty_pages",
                    "mem_file_path",
                    "mem_backend",
                    "snapshot_path",
                    "resume_vm",
                    "network_overrides",
                    "vsock_override",
                    "clock_realtime",
                    "huge_pages",
                ],
                &["snapshot_path"],
            ),
            "MemoryBackend" => (
                &["backend_type", "backend_path"],
                &["backend_type", "backend_path"],
            ),
            "NetworkOverride" => (
                &["iface_id", "host_dev_name"],
                &["iface_id", "host_dev_name"],
            ),
            other => panic!("no such definition {other}"),
        }
    }

    fn conforms(def: &str, v: &Value) {
        let (props, required) = documented(def);
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{def}: not an object: {v}"));
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        for k in &keys {
            assert!(props.contains(k), "{def}: undocumented field {k} in {v}");
        }
        for r in required {
            assert!(keys.contains(r), "{def}: required field {r} missing in {v}");
        }
    }

    #[test]
    fn bodies_use_documented_fields_and_values() {
        let d = Path::new("/vms/vm_1");
        conforms("Logger", &logger(&d.join("firecracker.log")));
        assert_eq!(logger(d)["level"], "Info");
        conforms("Metrics", &metrics(&d.join("metrics.json")));
        let mc = machine_config(1, 512);
        conforms("MachineConfiguration", &mc);
        assert_eq!(
            (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
            (Some(1), Some(512))
        );
        let bs = boot_source(Path::new("/k/vmlinux"), "console=ttyS0 ro");
        conforms("BootSource", &bs);
        assert_eq!(bs["kernel_image_path"], "/k/vmlinux");
        let root = drive("root", Path::new("/i/rootfs.ext4"), true, true);
        conforms("Drive", &root);
        assert_eq!(
            (
                root["is_root_device"].as_bool(),
                root["is_read_only"].as_bool()
            ),
            (Some(true), Some(true))
        );
        for (field, allowed) in [
            ("cache_type", ["Unsafe", "Writeback"]),
            ("io_engine", ["Sync", "Async"]),
        ] {
            assert!(allowed.contains(&root[field].as_str().unwrap()));
        }
        conforms(
            "Drive",
            &drive("state", Path::new("/vms/vm_1/state.ext4"), false, false),
        );
        let net = network_interface("eth0", "tap0", "06:00:a9:fe:00:16");
        conforms("NetworkInterface", &net);
        assert_eq!(net["host_dev_name"], "tap0");
        conforms("Vsock", &vsock(3, &d.join("v.sock")));
        conforms("EntropyDevice", &entropy());
        conforms("SerialDevice", &serial(&d.join("console.log")));
        let start = instance_start();
        conforms("InstanceActionInfo", &start);
        assert_eq!(start["action_type"], "InstanceStart");
        conforms("Vm", &vm_state(true));
        assert_eq!(
            (
                vm_state(true)["state"].as_str(),
                vm_state(false)["state"].as_str()
            ),
            (Some("Paused"), Some("Resumed"))
        );
        let sc = snapshot_create(&d.join("vmstate"), &d.join("memory"));
        conforms("SnapshotCreateParams", &sc);
        assert_eq!(sc["snapshot_type"], "Full");
        let sl = snapshot_load(
            &d.join("vmstate"),
            &d.join("memory"),
            true,
            Some(("eth0", "tap0")),
        );
        conforms("SnapshotLoadParams", &sl);
        conforms("MemoryBackend", &sl["mem_backend"]);
        assert_eq!(sl["mem_backend"]["backend_type"], "File");
        // Exactly one of mem_backend / mem_file_path.
        assert!(sl.get("mem_file_path").is_none());
        conforms("NetworkOverride", &sl["network_overrides"][0]);
        assert!(snapshot_load(d, d, false, None)
            .get("network_overrides")
            .is_none());
    }

    /// A fake Firecracker answering one request with `status` and `body`;
    /// returns what it received.
    fn fake(
        status: &'static str,
        body: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            let mut w = s;
            write!(
                w,
                "HTTP/1.1 {status}\r\nServer: Firecracker API\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            head + &String::from_utf8(b).unwrap()
        });
        (d, sock, t)
    }

    #[test]
    fn sends_json_and_accepts_no_content() {
        let (_d, sock, t) = fake("204 No Content", "");
        let c = Client::new(&sock, Duration::from_secs(5));
        c.put("/machine-config", &machine_config(2, 256)).unwrap();
        let got = t.join().unwrap();
        assert!(got.starts_with("PUT /machine-config HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("Content-Type: application/json\r\n"), "{got}");
        let body: Value = serde_json::from_str(got.rsplit("\r\n\r\n").next().unwrap()).unwrap();
        assert_eq!(body, machine_config(2, 256));
    }

    #[test]
    fn fault_message_is_kept_verbatim() {
        let fault = r#"{"fault_message":"Invalid block device path: /nope (No such file or directory (os error 2))"}"#;
        let (_d, sock, _t) = fake("400 Bad Request", fault);
        let c = Client::new(&sock, Duration::from_secs(5));
        let e = c
            .put(
                "/drives/root",
                &drive("root", Path::new("/nope"), true, true),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "firecracker PUT /drives/root: Invalid block device path: /nope (No such file or directory (os error 2))"
        );
        let (_d, sock, _t) = fake("500 Internal Server Error", "garbage");
        let e = Client::new(&sock, Duration::from_secs(5))
            .get("/")
            .unwrap_err();
        assert!(e.to_string().ends_with("HTTP 500: garbage"), "{e}");
    }

    #[test]
    fn get_parses_json() {
        let (_d, sock, _t) = fake(
            "200 OK",
            r#"{"id":"x","state":"Paused","vmm_version":"1.16.0","app_name":"Firecracker"}"#,
        );
        let v = Client::new(&sock, Duration::from_secs(5)).get("/").unwrap();
        assert_eq!(v["state"], "Paused");
    }
}
