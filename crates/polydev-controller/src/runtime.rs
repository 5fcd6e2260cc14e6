//! The VM runtime: creates, watches, destroys and re-adopts VMs.
//!
//! Every resource a VM holds (slot, namespace, TAP, directory, process) is
//! recorded in the store before it is made, so that a controller that dies at
//! any point can find and reclaim it at its next start ([`Runtime::reconcile`]).
//! Destruction is journaled in the cleanup queue and is idempotent.

use crate::agent_client::AgentTarget;
pub use crate::artifacts::Artifacts;
use crate::config::Config;
use polydev_core::guest::{AgentConfig, AGENT_CONFIG_REL, AGENT_PORT};
use polydev_core::vm::{now_ms, VmStatus, VmType};
use polydev_store::{NewVm, Store, VmRecord};
use polydev_vmm::accel::AccelChoice;
use polydev_vmm::process::{self, VmmProcess};
use polydev_vmm::{console, VmSpec, Vmm};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors from the runtime that an API caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The kernel or image is not built.
    #[error("{0}")]
    ArtifactsMissing(String),
    /// No such VM.
    #[error("no VM with id {0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] polydev_store::StoreError),
    /// The VM is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// The VMM failed the operation.
    #[error("{0}")]
    Vmm(String),
    /// The host has no room for the VM (what is short, in words).
    #[error("{0}")]
    Capacity(String),
    /// The user is at one of their caps.
    #[error("{0}")]
    UserLimit(String),
}

/// What the controller remembers of how a VM was started, so that it can be
/// snapshotted and restored with the same kernel, image and disks even after
/// newer images were built.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredSpec {
    kernel: PathBuf,
    rootfs: PathBuf,
    extra_kernel_args: Vec<String>,
    #[serde(default)]
    home_disk: Option<PathBuf>,
}

/// Name of the file in a VM's directory recording how it was started.
pub const SPEC_FILE: &str = "spec.json";
/// Directory inside a VM's directory holding its hibernation snapshot.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Name of the file in a VM's directory holding its agent configuration
/// (the token), readable only by the controller.
pub const AGENT_FILE: &str = "agent.json";
/// Name of the per-VM state disk in a VM's directory.
pub const STATE_DISK: &str = "state.ext4";

/// The VM runtime.
pub struct Runtime {
    store: Store,
    cfg: Arc<Config>,
    vmm: Arc<dyn Vmm>,
    accel: AccelChoice,
    vmm_reason: String,
    procs: Mutex<HashMap<String, VmmProcess>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    egress: std::sync::OnceLock<Arc<crate::egress::EgressHub>>,
}

impl Runtime {
    /// A runtime over `store` driving `vmm`.
    pub fn new(
        store: Store,
        cfg: Arc<Config>,
        vmm: Arc<dyn Vmm>,
        accel: AccelChoice,
        vmm_reason: String,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            store,
            cfg,
            vmm,
            accel,
            vmm_reason,
            procs: Mutex::new(HashMap::new()),
            op_locks: Mutex::new(HashMap::new()),
            egress: std::sync::OnceLock::new(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The VMM driver.
    pub fn vmm(&self) -> &dyn Vmm {
        self.vmm.as_ref()
    }
    /// Why this VMM was chosen.
    pub fn vmm_reason(&self) -> &str {
        &self.vmm_reason
    }
    /// The acceleration choice and its reason.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// Turns on egress for the VMs this runtime boots from now on (and
    /// those [`Runtime::reconcile`] finds). Without it VMs have no way out.
    pub fn set_egress(&self, hub: Arc<crate::egress::EgressHub>) {
        let _ = self.egress.set(hub);
    }

    /// Egress, when on.
    pub fn egress(&self) -> Option<&Arc<crate::egress::EgressHub>> {
        self.egress.get()
    }

    /// A VM's egress policy: the stored one, else its type's default.
    pub async fn vm_policy(
        &self,
        rec: &VmRecord,
    ) -> Result<polydev_egress::policy::Policy, String> {
        match self
            .store
            .get_vm_egress(&rec.vm_id)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                format!(
                    "the stored egress policy of {} is unreadable: {e}",
                    rec.vm_id
                )
            }),
            None => Ok(self.cfg.egress.policy_for(rec.vm_type).clone()),
        }
    }

    /// Stores a VM's policy and applies it at once when its egress is up.
    pub async fn set_vm_policy(
        &self,
        rec: &VmRecord,
        policy: &polydev_egress::policy::Policy,
    ) -> Result<(), String> {
        let json = serde_json::to_string(policy).expect("serialisable");
        self.store
            .set_vm_egress(&rec.vm_id, &json)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(h) = self.egress() {
            if h.egress.is_attached(&rec.vm_id) {
                h.egress
                    .set_policy(&rec.vm_id, policy)
                    .await
                    .map_err(|e| format!("applying the egress policy of {}: {e}", rec.vm_id))?;
            }
        }
        Ok(())
    }

    /// Gives a VM whose namespace exists its egress (link, firewall, DNS,
    /// gate), with its policy and its owner's identity; records the time.
    async fn attach_egress(&self, rec: &VmRecord) -> Result<(), String> {
        let Some(h) = self.egress() else {
            return Ok(());
        };
        let policy = self.vm_policy(rec).await?;
        let identity = h.identity(&rec.user_id).await?;
        let net = polydev_egress::VmNet {
            vm_id: rec.vm_id.clone(),
            netns: rec.netns.clone(),
            slot: rec.slot,
        };
        let took = h
            .egress
            .attach(&net, &policy, identity)
            .await
            .map_err(|e| format!("setting up egress: {e}"))?;
        let _ = self
            .store
            .set_vm_egress_setup_ms(&rec.vm_id, took.as_millis() as i64)
            .await;
        Ok(())
    }

    /// Gives an attached VM its (new) owner's identity: a warm VM claimed
    /// by a user.
    pub async fn refresh_egress_identity(&self, vm_id: &str, user_id: &str) -> Result<(), String> {
        let Some(h) = self.egress() else {
            return Ok(());
        };
        if !h.egress.is_attached(vm_id) {
            return Ok(());
        }
        let identity = h.identity(user_id).await?;
        h.egress
            .set_identity(vm_id, identity)
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops a VM's egress and removes its link and source element.
    async fn detach_egress(&self, rec: &VmRecord) -> Result<(), String> {
        let Some(h) = self.egress() else {
            return Ok(());
        };
        h.egress
            .detach(&rec.vm_id, rec.slot)
            .await
            .map_err(|e| format!("removing egress: {e}"))
    }

    /// Finds the kernel and golden image for a VM type (any type when
    /// `None`), or says how to build them.
    pub fn artifacts(&self, vm_type: Option<VmType>) -> Result<Artifacts, RuntimeError> {
        crate::artifacts::locate(&self.cfg, vm_type).map_err(RuntimeError::ArtifactsMissing)
    }

    fn op_lock(&self, vm_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.op_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(vm_id.to_string())
            .or_default()
            .clone()
    }

    /// How to reach a VM's agent (its namespace, port and token).
    pub fn agent_target(&self, rec: &VmRecord) -> Option<AgentTarget> {
        let raw = std::fs::read(Path::new(&rec.dir).join(AGENT_FILE)).ok()?;
        let cfg: AgentConfig = serde_json::from_slice(&raw).ok()?;
        Some(AgentTarget {
            netns: rec.netns.clone(),
            port: cfg.port,
            token: cfg.token,
        })
    }

    /// Records a new VM and starts booting it in the background. Returns the
    /// record (status `creating`) at once.
    pub async fn create(
        self: &Arc<Self>,
        user_id: &str,
        vm_type: VmType,
    ) -> Result<VmRecord, RuntimeError> {
        self.create_with_id(&new_vm_id(), user_id, vm_type).await
    }

    /// Whether one more VM of `size` for `user_id` may start: the user's
    /// cap of live VMs (users whose id starts with `_`, the controller's
    /// own, have none), then the host's slots, memory and disk.
    async fn admit(
        &self,
        user_id: &str,
        vm_type: VmType,
        size: crate::config::VmSize,
        home_disk: bool,
    ) -> Result<(), RuntimeError> {
        let cfg = &self.cfg.admission;
        let all = self.store.list_vms(None, false).await?;
        let holds_slot = |v: &&VmRecord| !v.slot_released;
        if !user_id.starts_with('_') {
            let mine = all
                .iter()
                .filter(holds_slot)
                .filter(|v| v.user_id == user_id && v.status != VmStatus::Failed)
                .count();
            if mine >= cfg.user_max_vms {
                return Err(RuntimeError::UserLimit(format!(
                    "user {user_id} has {mine} live VMs, the most allowed (POLYDEV_USER_MAX_VMS={}); destroy one first",
                    cfg.user_max_vms
                )));
            }
        }
        let pending_memory_mb = all
            .iter()
            .filter(|v| v.status == VmStatus::Creating)
            .map(|v| v.memory_mb.max(0) as u64)
            .sum();
        let home = self
            .cfg
            .data_dir
            .join("users")
            .join(user_id)
            .join("home.ext4");
        let home_mb = if home_disk && !home.exists() {
            self.cfg.home_disk_mb
        } else {
            0
        };
        let demand = crate::admission::Demand {
            memory_mb: size.memory_mb as u64,
            disk_mb: self.cfg.state_disk_mb + home_mb + size.memory_mb as u64,
            pending_memory_mb,
            live_vms: all.iter().filter(holds_slot).count(),
        };
        let data_dir = self.cfg.data_dir.clone();
        let free = tokio::task::spawn_blocking(move || crate::admission::host_free(&data_dir))
            .await
            .map_err(|e| RuntimeError::Capacity(format!("reading host capacity: {e}")))?
            .map_err(RuntimeError::Capacity)?;
        crate::admission::check_host(cfg, free, demand).map_err(|why| {
            tracing::warn!(user_id, vm_type = %vm_type, %why, "VM refused");
            RuntimeError::Capacity(why)
        })
    }

    /// [`Runtime::create`] with an id chosen by the caller, so that the
    /// caller can record the id before the VM exists.
    pub async fn create_with_id(
        self: &Arc<Self>,
        vm_id: &str,
        user_id: &str,
        vm_type: VmType,
    ) -> Result<VmRecord, RuntimeError> {
        let artifacts = self.artifacts(Some(vm_type))?;
        self.store.ensure_user(user_id).await?;
        if artifacts.home_disk {
            // One home disk must never be attached to two running VMs.
            let live = self.store.list_vms(Some(user_id), false).await?;
            if let Some(other) = live.iter().find(|v| {
                v.vm_type == VmType::Cli
                    && matches!(
                        v.status,
                        VmStatus::Creating | VmStatus::Running | VmStatus::Hibernated
                    )
            }) {
                return Err(RuntimeError::Conflict(format!(
                    "user {user_id} already has CLI VM {} ({}); their home disk can be attached to one VM only",
                    other.vm_id, other.status
                )));
            }
        }
        let size = self.cfg.size(vm_type);
        self.admit(user_id, vm_type, size, artifacts.home_disk)
            .await?;
        let vm_id = vm_id.to_string();
        let dir =
            crate::private::child(&self.cfg.vms_dir(), &vm_id).map_err(RuntimeError::Conflict)?;
        let prefix = self.cfg.netns_prefix();
        let rec = self
            .store
            .insert_vm_allocating_slot(
                &NewVm {
                    vm_id: vm_id.clone(),
                    user_id: user_id.to_string(),
                    vm_type,
                    vcpu_count: size.vcpus as i64,
                    memory_mb: size.memory_mb as i64,
                    vmm: self.vmm.kind().as_str().to_string(),
                    dir: dir.display().to_string(),
                    home_disk: artifacts.home_disk,
                },
                |slot| {
                    (
                        format!("{prefix}{slot}"),
                        polydev_core::guest::TAP_NAME.to_string(),
                    )
                },
            )
            .await
            .map_err(|e| match e {
                polydev_store::StoreError::Conflict { .. } => RuntimeError::Conflict(e.to_string()),
                e => e.into(),
            })?;
        let policy =
            serde_json::to_string(self.cfg.egress.policy_for(vm_type)).expect("serialisable");
        self.store.set_vm_egress(&rec.vm_id, &policy).await?;
        tracing::info!(vm_id = %rec.vm_id, user_id, vm_type = %vm_type, slot = rec.slot, netns = %rec.netns, image = %artifacts.image_note, "creating VM");
        let rt = self.clone();
        let r = rec.clone();
        tokio::spawn(async move { rt.boot(r, artifacts).await });
        Ok(rec)
    }

    async fn boot(self: Arc<Self>, rec: VmRecord, artifacts: Artifacts) {
        let started = Instant::now();
        let lock = self.op_lock(&rec.vm_id);
        let guard = lock.lock().await;
        // A destroy may have run before we got the lock.
        match self.store.get_vm(&rec.vm_id).await {
            Ok(Some(r)) if r.status == VmStatus::Creating => {}
            _ => return,
        }
        let prepared = {
            let rt = self.clone();
            let rec = rec.clone();
            tokio::task::spawn_blocking(move || rt.prepare(&rec, &artifacts))
                .await
                .unwrap_or_else(|e| Err(format!("VM start task failed: {e}")))
        };
        let prepared = match prepared {
            Ok(spec) => match self.attach_egress(&rec).await {
                Ok(()) => {
                    let vmm = self.vmm.clone();
                    tokio::task::spawn_blocking(move || {
                        vmm.start(&spec).map_err(|e| {
                            // What the VMM itself said is the root cause.
                            match polydev_vmm::diagnose::explain(&spec.dir) {
                                Some(cause) => format!("starting the VMM: {cause} ({e})"),
                                None => format!("starting the VMM: {e}"),
                            }
                        })
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("VM start task failed: {e}")))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let proc_ = match prepared {
            Ok(p) => p,
            Err(reason) => {
                drop(guard);
                self.fail(&rec, &reason).await;
                return;
            }
        };
        if let Err(e) = self
            .store
            .set_vm_pid(
                &rec.vm_id,
                proc_.pid as i64,
                proc_
                    .socket_path
                    .as_ref()
                    .map(|p| p.to_string_lossy())
                    .as_deref(),
            )
            .await
        {
            tracing::error!(vm_id = %rec.vm_id, error = %e, "recording VMM pid");
        }
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.vm_id.clone(), proc_);
        drop(guard);
        let deadline = started + self.cfg.boot_timeout;
        self.await_ready(rec, deadline).await;
    }

    /// Makes the VM's directory, state disk and network namespace; returns
    /// the spec the VMM starts from.
    fn prepare(&self, rec: &VmRecord, artifacts: &Artifacts) -> Result<VmSpec, String> {
        let dir = PathBuf::from(&rec.dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let agent = AgentConfig {
            vm_id: rec.vm_id.clone(),
            token: new_token(),
            port: AGENT_PORT,
        };
        let agent_json = serde_json::to_vec_pretty(&agent).expect("serialisable");
        write_private(&dir.join(AGENT_FILE), &agent_json)
            .map_err(|e| format!("writing the agent configuration: {e}"))?;
        let state = dir.join(STATE_DISK);
        polydev_image::state_disk::make_state_disk(
            &state,
            self.cfg.state_disk_mb,
            &[(AGENT_CONFIG_REL, &agent_json, 0o600)],
        )
        .map_err(|e| format!("making the state disk: {e}"))?;
        polydev_net::setup_vm_network(&rec.netns)
            .map_err(|e| format!("setting up the VM network: {e}"))?;
        let stored = StoredSpec {
            kernel: artifacts.kernel.clone(),
            rootfs: artifacts.rootfs.clone(),
            extra_kernel_args: self.cfg.extra_kernel_args.clone(),
            home_disk: if artifacts.home_disk {
                Some(self.home_disk_for(&rec.user_id)?)
            } else {
                None
            },
        };
        write_private(
            &dir.join(SPEC_FILE),
            &serde_json::to_vec_pretty(&stored).expect("serialisable"),
        )
        .map_err(|e| format!("writing the VM spec: {e}"))?;
        let spec = self.spec_of(rec)?;
        debug_assert_eq!(spec.state_disk, state);
        Ok(spec)
    }

    /// The VMM spec of a recorded VM, from its record and its `spec.json`.
    fn spec_of(&self, rec: &VmRecord) -> Result<VmSpec, String> {
        let dir = PathBuf::from(&rec.dir);
        let raw = std::fs::read(dir.join(SPEC_FILE))
            .map_err(|e| format!("reading {SPEC_FILE} of {}: {e}", rec.vm_id))?;
        let stored: StoredSpec = serde_json::from_slice(&raw)
            .map_err(|e| format!("parsing {SPEC_FILE} of {}: {e}", rec.vm_id))?;
        Ok(VmSpec {
            vm_id: rec.vm_id.clone(),
            dir: dir.clone(),
            kernel: stored.kernel,
            rootfs: stored.rootfs,
            state_disk: dir.join(STATE_DISK),
            vcpus: rec.vcpu_count as u32,
            memory_mb: rec.memory_mb as u32,
            netns: rec.netns.clone(),
            extra_kernel_args: stored.extra_kernel_args,
            home_disk: stored.home_disk,
        })
    }

    /// The user's persistent home disk (`<data-dir>/users/<user>/home.ext4`),
    /// made on first use. It outlives every VM of the user.
    fn home_disk_for(&self, user_id: &str) -> Result<PathBuf, String> {
        let dir = crate::private::child(&self.cfg.data_dir.join("users"), user_id)?;
        let path = dir.join("home.ext4");
        if !path.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            polydev_image::home_disk::make_home_disk(&path, self.cfg.home_disk_mb)
                .map_err(|e| format!("making the home disk of {user_id}: {e}"))?;
            tracing::info!(user_id, path = %path.display(), size_mb = self.cfg.home_disk_mb, "made a home disk");
        }
        Ok(path)
    }

    /// The VMM process of a VM: our child, or a re-adopted process found by
    /// its recorded pid and command line.
    fn process_of(&self, rec: &VmRecord) -> Option<VmmProcess> {
        if let Some(p) = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rec.vm_id)
        {
            return Some(p.clone());
        }
        let pid = rec.vmm_pid? as u32;
        process::is_alive(pid, &rec.dir).then(|| VmmProcess {
            pid,
            socket_path: rec.socket_path.as_ref().map(PathBuf::from),
            exit: Default::default(),
        })
    }

    /// The record and spec of a VM that must be in `want` for `verb`.
    async fn vm_in(
        &self,
        vm_id: &str,
        want: VmStatus,
        verb: &str,
    ) -> Result<(VmRecord, VmSpec), RuntimeError> {
        let rec = self
            .store
            .get_vm(vm_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(vm_id.into()))?;
        if rec.status != want {
            return Err(RuntimeError::Conflict(format!(
                "VM {vm_id} is {}; only a {want} VM can {verb}",
                rec.status
            )));
        }
        let spec = self.spec_of(&rec).map_err(RuntimeError::Vmm)?;
        Ok((rec, spec))
    }

    /// Hibernates a running VM: a full VMM snapshot into its directory, then
    /// the VMM exits. The namespace and slot stay reserved for the resume.
    ///
    /// Runs as its own task: a caller that goes away (an HTTP client that
    /// disconnects) cannot cut it in half and leave a VMM unrecorded.
    pub async fn hibernate(self: &Arc<Self>, vm_id: &str) -> Result<VmRecord, RuntimeError> {
        self.detached("hibernating", vm_id, |me, id| async move {
            me.hibernate_now(&id).await
        })
        .await
    }

    /// Runs `op` for `vm_id` as its own task and waits for it: dropping the
    /// caller's future does not stop it halfway.
    async fn detached<F, Fut>(
        self: &Arc<Self>,
        what: &str,
        vm_id: &str,
        op: F,
    ) -> Result<VmRecord, RuntimeError>
    where
        F: FnOnce(Arc<Self>, String) -> Fut,
        Fut: std::future::Future<Output = Result<VmRecord, RuntimeError>> + Send + 'static,
    {
        tokio::spawn(op(self.clone(), vm_id.to_string()))
            .await
            .map_err(|e| RuntimeError::Vmm(format!("{what} {vm_id}: {e}")))?
    }

    async fn hibernate_now(&self, vm_id: &str) -> Result<VmRecord, RuntimeError> {
        let lock = self.op_lock(vm_id);
        let _g = lock.lock().await;
        let (rec, spec) = self.vm_in(vm_id, VmStatus::Running, "hibernate").await?;
        let proc_ = self
            .process_of(&rec)
            .ok_or_else(|| RuntimeError::Conflict(format!("VM {vm_id}'s VMM is not running")))?;
        let vmm = self.vmm.clone();
        let dest = spec.dir.join(SNAPSHOT_DIR);
        let started = Instant::now();
        let meta = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&dest)
                .map_err(|e| format!("creating {}: {e}", dest.display()))?;
            vmm.snapshot(&spec, &proc_, &dest)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| RuntimeError::Vmm(e.to_string()))?
        .map_err(|e| RuntimeError::Vmm(format!("snapshot of {vm_id} failed: {e}")))?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        self.store.mark_vm_hibernated(vm_id).await?;
        tracing::info!(
            vm_id,
            snapshot_ms = started.elapsed().as_millis() as u64,
            files = ?meta.files,
            "VM hibernated"
        );
        Ok(self.store.get_vm(vm_id).await?.unwrap_or(rec))
    }

    /// Sets a resumed guest's wall clock to the host's: it stood still while
    /// the VM slept, and TLS and the CLIs' token expiry times need the real
    /// time. A failure is logged; the VM still runs.
    async fn set_guest_clock(&self, rec: &VmRecord) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let at = format!("@{}.{:03}", now.as_secs(), now.subsec_millis());
        let body = serde_json::json!({"argv": ["date", "-u", "-s", at], "timeoutMs": 10000});
        match self
            .agent_call(rec, "POST", "/exec", Some(body), Duration::from_secs(15))
            .await
        {
            Ok(v) if v.get("exitCode").and_then(|c| c.as_i64()) == Some(0) => {}
            Ok(v) => {
                tracing::warn!(vm_id = %rec.vm_id, result = %v, "could not set the resumed guest's clock")
            }
            Err(e) => {
                tracing::warn!(vm_id = %rec.vm_id, error = %e, "could not set the resumed guest's clock")
            }
        }
    }

    /// Resumes a hibernated VM from its snapshot and waits until its agent
    /// answers again. On failure the VM stays hibernated with its snapshot.
    ///
    /// Runs as its own task: a caller that goes away cannot stop it between
    /// starting the VMM and recording its pid.
    pub async fn resume(self: &Arc<Self>, vm_id: &str) -> Result<VmRecord, RuntimeError> {
        self.detached("resuming", vm_id, |me, id| async move {
            me.resume_now(&id).await
        })
        .await
    }

    async fn resume_now(&self, vm_id: &str) -> Result<VmRecord, RuntimeError> {
        let lock = self.op_lock(vm_id);
        let _g = lock.lock().await;
        let (rec, spec) = self.vm_in(vm_id, VmStatus::Hibernated, "resume").await?;
        let vmm = self.vmm.clone();
        let started = Instant::now();
        let remade = {
            let ns = spec.netns.clone();
            tokio::task::spawn_blocking(move || -> Result<bool, String> {
                if polydev_net::netns::exists(&ns) {
                    return Ok(false);
                }
                polydev_net::setup_vm_network(&ns).map_err(|e| e.to_string())?;
                Ok(true)
            })
            .await
            .map_err(|e| RuntimeError::Vmm(e.to_string()))?
            .map_err(|e| RuntimeError::Vmm(format!("restore of {vm_id} failed: {e}")))?
        };
        if let Some(h) = self.egress() {
            if remade || !h.egress.is_attached(vm_id) {
                let _ = self.detach_egress(&rec).await;
                self.attach_egress(&rec)
                    .await
                    .map_err(|e| RuntimeError::Vmm(format!("restore of {vm_id} failed: {e}")))?;
            }
        }
        let proc_ = tokio::task::spawn_blocking(move || -> Result<VmmProcess, String> {
            let meta = polydev_vmm::snapshot::SnapshotMeta::load(&spec.dir.join(SNAPSHOT_DIR))
                .map_err(|e| e.to_string())?;
            vmm.restore(&spec, &meta).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| RuntimeError::Vmm(e.to_string()))?
        .map_err(|e| RuntimeError::Vmm(format!("restore of {vm_id} failed: {e}")))?;
        let socket = proc_
            .socket_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        self.store
            .set_vm_pid(vm_id, proc_.pid as i64, socket.as_deref())
            .await?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.to_string(), proc_.clone());
        if let Err(e) = self
            .health_until(&rec, Instant::now() + Duration::from_secs(60))
            .await
        {
            let marker = rec.dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                process::stop(proc_.pid, &marker, Duration::from_secs(3))
            })
            .await;
            return Err(RuntimeError::Vmm(format!(
                "VM {vm_id} was restored but its agent did not answer: {e}"
            )));
        }
        self.set_guest_clock(&rec).await;
        self.store
            .mark_vm_running(vm_id, now_ms(), rec.kernel_boot_ms, rec.agent_ready_ms)
            .await?;
        tracing::info!(
            vm_id,
            resume_ms = started.elapsed().as_millis() as u64,
            "VM resumed"
        );
        Ok(self.store.get_vm(vm_id).await?.unwrap_or(rec))
    }

    /// Waits for the agent's readiness announcement and a first
    /// authenticated health answer; marks the VM running or failed.
    async fn await_ready(self: &Arc<Self>, rec: VmRecord, deadline: Instant) {
        let console_path = Path::new(&rec.dir).join(polydev_vmm::CONSOLE_FILE);
        // Read piece by piece, off the async threads: only what the guest
        // added since the last look.
        let watch = Arc::new(Mutex::new(console::BootWatch::new(console_path)));
        let marker = rec.dir.clone();
        let timeout_secs = self.cfg.boot_timeout.as_secs();
        loop {
            let progress = poll_console(&watch).await;
            if let Some(ready) = &progress.ready {
                match self.health_until(&rec, deadline).await {
                    Ok(()) => {
                        let kernel_ms = progress.init_ms.map(|m| m as i64);
                        let agent_ms = progress
                            .init_ms
                            .map(|i| ready.uptime_ms.saturating_sub(i) as i64);
                        match self
                            .store
                            .mark_vm_running(&rec.vm_id, now_ms(), kernel_ms, agent_ms)
                            .await
                        {
                            Ok(true) => {
                                tracing::info!(vm_id = %rec.vm_id, create_to_ready_ms = now_ms() - rec.created_at, "VM running")
                            }
                            Ok(false) => {
                                tracing::info!(vm_id = %rec.vm_id, "VM became ready after it was destroyed or failed")
                            }
                            Err(e) => {
                                tracing::error!(vm_id = %rec.vm_id, error = %e, "marking VM running")
                            }
                        }
                    }
                    Err(e) => {
                        self.fail(
                            &rec,
                            &format!("agent announced readiness but did not answer: {e}"),
                        )
                        .await
                    }
                }
                return;
            }
            let pid = self.store.get_vm(&rec.vm_id).await.ok().flatten();
            let Some(now) = pid else { return };
            if now.status != VmStatus::Creating {
                return;
            }
            let exited = match now.vmm_pid {
                Some(pid) if !process::is_alive(pid as u32, &marker) => {
                    Some(self.exit_text(&rec.vm_id, Path::new(&rec.dir), pid as u32))
                }
                _ => None,
            };
            if progress.panic.is_some() || exited.is_some() {
                // Let the last console bytes land.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let progress = poll_console(&watch).await;
                let reason = console::failure_reason(&progress, exited.as_deref(), None);
                self.fail(&rec, &reason).await;
                return;
            }
            if Instant::now() >= deadline {
                let reason = console::failure_reason(&progress, None, Some(timeout_secs));
                self.fail(&rec, &reason).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Describes how a VMM ended: its exit status when it was our child, and
    /// the root cause its own log names (the first error, in words; see
    /// [`polydev_vmm::diagnose`]).
    fn exit_text(&self, vm_id: &str, dir: &Path, pid: u32) -> String {
        let status = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .and_then(|p| p.exit_status());
        let mut text = match status {
            Some(s) => format!("pid {pid}, {s}"),
            None => format!("pid {pid} is gone"),
        };
        if let Some(cause) = polydev_vmm::diagnose::explain(dir) {
            text.push_str(&format!(": {cause}"));
        }
        text
    }

    /// Watches live VMs: keeps each one's console log within the configured
    /// head and tail ([`console::cap`]); one whose VMM died (guest crash, KVM
    /// internal error, killed) is marked failed with the reason and
    /// reclaimed, its logs kept. Runs until the controller stops.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Ok(vms) = self.store.list_vms(None, false).await else {
                continue;
            };
            self.cap_consoles(&vms).await;
            for rec in vms.into_iter().filter(|r| r.status == VmStatus::Running) {
                let Some(pid) = rec.vmm_pid else { continue };
                if process::is_alive(pid as u32, &rec.dir) {
                    continue;
                }
                // Re-read: a hibernate or destroy may have just stopped it.
                let lock = self.op_lock(&rec.vm_id);
                let still_running = {
                    let _g = lock.lock().await;
                    matches!(self.store.get_vm(&rec.vm_id).await, Ok(Some(r)) if r.status == VmStatus::Running && r.vmm_pid == Some(pid))
                };
                if !still_running {
                    continue;
                }
                let path = Path::new(&rec.dir).join(polydev_vmm::CONSOLE_FILE);
                let console = tokio::task::spawn_blocking(move || {
                    console::read_tail(&path, DIED_CONSOLE_TAIL).map(|(b, _)| b)
                })
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
                let exit = self.exit_text(&rec.vm_id, Path::new(&rec.dir), pid as u32);
                let progress = console::scan(&String::from_utf8_lossy(&console));
                let reason = match progress.panic {
                    Some(p) => format!("VMM exited while running ({exit}); kernel panic: {p}"),
                    None => format!("VMM exited while running ({exit})"),
                };
                self.fail(&rec, &reason).await;
            }
        }
    }

    /// Shortens the console log of every VM whose VMM may be writing it
    /// (creating or running) to the configured head and tail.
    async fn cap_consoles(&self, vms: &[VmRecord]) {
        let limits = self.cfg.console;
        let logs: Vec<(String, PathBuf)> = vms
            .iter()
            .filter(|r| matches!(r.status, VmStatus::Creating | VmStatus::Running))
            .map(|r| {
                let path = Path::new(&r.dir).join(polydev_vmm::CONSOLE_FILE);
                (r.vm_id.clone(), path)
            })
            .collect();
        if logs.is_empty() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            for (vm_id, path) in logs {
                match console::cap(&path, limits) {
                    Ok(Some(dropped)) => {
                        tracing::info!(vm_id, dropped, "console log shortened")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(vm_id, error = %e, path = %path.display(), "shortening the console log")
                    }
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "shortening console logs");
        }
    }

    async fn health_until(&self, rec: &VmRecord, deadline: Instant) -> Result<(), String> {
        let target = self
            .agent_target(rec)
            .ok_or("the VM's agent configuration is missing")?;
        let mut last = String::new();
        let until = deadline.max(Instant::now() + Duration::from_secs(10));
        while Instant::now() < until {
            match target.get_json("/health", Duration::from_secs(5)).await {
                Ok(v) if v.get("vmId").and_then(|x| x.as_str()) == Some(rec.vm_id.as_str()) => {
                    return Ok(())
                }
                Ok(v) => last = format!("unexpected health answer {v}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Asks a running VM's agent for its health.
    pub async fn agent_health(&self, rec: &VmRecord) -> Result<serde_json::Value, String> {
        self.agent_call(rec, "GET", "/health", None, Duration::from_secs(5))
            .await
    }

    /// Any authenticated request to a VM's agent, JSON in and out: the
    /// whole exchange within `timeout`, an answer of at most
    /// [`crate::agent_client::MAX_ANSWER_BYTES`].
    pub async fn agent_call(
        &self,
        rec: &VmRecord,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        self.agent_call_limited(
            rec,
            method,
            path,
            body,
            timeout,
            crate::agent_client::MAX_ANSWER_BYTES,
        )
        .await
    }

    /// [`Runtime::agent_call`] taking answers of up to `max_bytes` (an
    /// `/exec` that asked for more output than the default bound).
    pub async fn agent_call_limited(
        &self,
        rec: &VmRecord,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<serde_json::Value, String> {
        let target = self
            .agent_target(rec)
            .ok_or("the VM's agent configuration is missing")?;
        target
            .call_limited(method, path, body, timeout, max_bytes)
            .await
            .map_err(|e| e.to_string())
    }

    /// Marks a VM failed with `reason` and reclaims everything but its logs.
    async fn fail(&self, rec: &VmRecord, reason: &str) {
        match self.store.mark_vm_failed(&rec.vm_id, reason).await {
            Ok(true) => tracing::warn!(vm_id = %rec.vm_id, reason, "VM failed"),
            Ok(false) => return,
            Err(e) => tracing::error!(vm_id = %rec.vm_id, error = %e, "marking VM failed"),
        }
        let lock = self.op_lock(&rec.vm_id);
        let _g = lock.lock().await;
        if let Err(e) = self.reclaim(rec, true).await {
            tracing::error!(vm_id = %rec.vm_id, error = %e, "reclaiming a failed VM");
        }
    }

    /// Stops the VMM and removes the namespace, TAP and files (all but the
    /// console and VMM logs when `keep_logs`), then frees the slot.
    async fn reclaim(&self, rec: &VmRecord, keep_logs: bool) -> Result<(), String> {
        let now = self.store.get_vm(&rec.vm_id).await.ok().flatten();
        let pid = now.as_ref().and_then(|r| r.vmm_pid).or(rec.vmm_pid);
        let slot_held = !now.map(|r| r.slot_released).unwrap_or(rec.slot_released);
        let dir = PathBuf::from(&rec.dir);
        let netns = rec.netns.clone();
        let marker = rec.dir.clone();
        let spec = self.spec_of(rec).ok();
        if slot_held {
            // Before the namespace goes: the DNS and gate sockets hold it.
            self.detach_egress(rec).await?;
        }
        let vmm = self.vmm.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            if let Some(pid) = pid {
                process::stop(pid as u32, &marker, Duration::from_secs(3))
                    .map_err(|e| e.to_string())?;
            }
            if let Some(spec) = spec {
                vmm.cleanup(&spec).map_err(|e| e.to_string())?;
            }
            polydev_net::teardown_vm_network(&netns).map_err(|e| e.to_string())?;
            remove_vm_files(&dir, keep_logs).map_err(|e| format!("removing {}: {e}", dir.display()))
        })
        .await
        .map_err(|e| e.to_string())??;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.vm_id);
        self.store
            .release_slot(&rec.vm_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Destroys a VM: journals the request, stops the VMM, removes the
    /// namespace, TAP and every file, marks it destroyed and frees its slot.
    pub async fn destroy(&self, vm_id: &str) -> Result<VmRecord, RuntimeError> {
        self.destroy_journaled(vm_id, None).await
    }

    /// Destroys a sign-in session's browser VM; the journal entry names the
    /// session.
    pub async fn destroy_for_session(
        &self,
        vm_id: &str,
        session_id: &str,
    ) -> Result<VmRecord, RuntimeError> {
        self.destroy_journaled(vm_id, Some(session_id)).await
    }

    async fn destroy_journaled(
        &self,
        vm_id: &str,
        session_id: Option<&str>,
    ) -> Result<VmRecord, RuntimeError> {
        let rec = self
            .store
            .get_vm(vm_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(vm_id.into()))?;
        if rec.status == VmStatus::Destroyed {
            return Ok(rec);
        }
        let task = self.store.begin_cleanup(vm_id, session_id).await?;
        let done = self.run_destroy(&rec).await;
        self.settle_cleanup(&task, done).await;
        Ok(self.store.get_vm(vm_id).await?.unwrap_or(rec))
    }

    /// Records how a cleanup attempt went: completed, or due again after a
    /// backoff that doubles with each attempt (2 s up to 5 min) — a cleanup
    /// is retried until it is done, never given up.
    async fn settle_cleanup(&self, task: &polydev_store::CleanupTask, done: Result<(), String>) {
        let r = match &done {
            Ok(()) => self.store.complete_cleanup(&task.task_id).await,
            Err(e) => {
                let wait = cleanup_backoff(task.attempts);
                tracing::warn!(vm_id = %task.vm_id, attempts = task.attempts, retry_in_s = wait.as_secs(), error = %e, "cleanup failed; will retry");
                self.store
                    .fail_cleanup(&task.task_id, e, Some(now_ms() + wait.as_millis() as i64))
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(task_id = %task.task_id, error = %e, "recording a cleanup attempt");
        }
    }

    /// Runs the cleanups that fell due (retries, and tasks whose worker
    /// died), every `every`, for ever.
    pub async fn retry_cleanups(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.run_due_cleanups(now_ms(), 64).await {
                tracing::warn!(error = %e, "running due cleanups");
            }
        }
    }

    /// Runs every cleanup due at `now`; returns the VMs destroyed.
    async fn run_due_cleanups(&self, now: i64, limit: i64) -> Result<Vec<String>, RuntimeError> {
        let mut destroyed = Vec::new();
        for task in self.store.claim_due_cleanups(now, limit).await? {
            let done = match self.store.get_vm(&task.vm_id).await? {
                Some(rec) if rec.status != VmStatus::Destroyed => {
                    let r = self.run_destroy(&rec).await;
                    if r.is_ok() {
                        destroyed.push(rec.vm_id);
                    }
                    r
                }
                _ => Ok(()),
            };
            self.settle_cleanup(&task, done).await;
        }
        Ok(destroyed)
    }

    async fn run_destroy(&self, rec: &VmRecord) -> Result<(), String> {
        let lock = self.op_lock(&rec.vm_id);
        let _g = lock.lock().await;
        // A persistent home disk must not lose what the guest still caches:
        // ask the guest to flush before its VMM is stopped.
        let has_home = self
            .spec_of(rec)
            .map(|s| s.home_disk.is_some())
            .unwrap_or(false);
        if has_home && rec.status == VmStatus::Running {
            let body = serde_json::json!({"argv": ["sync"], "timeoutMs": 10000});
            if let Err(e) = self
                .agent_call(rec, "POST", "/exec", Some(body), Duration::from_secs(15))
                .await
            {
                tracing::warn!(vm_id = %rec.vm_id, error = %e, "could not flush the guest before destroying it");
            }
        }
        if let Err(e) = self.reclaim(rec, false).await {
            tracing::error!(vm_id = %rec.vm_id, error = %e, "destroying VM");
            return Err(e);
        }
        self.store
            .mark_vm_destroyed(&rec.vm_id)
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.store.delete_vm_egress(&rec.vm_id).await;
        tracing::info!(vm_id = %rec.vm_id, "VM destroyed");
        Ok(())
    }

    /// Start-up reconciliation: re-adopts VMs whose VMM is alive and whose
    /// agent answers, resumes waiting for VMs still booting, fails and
    /// reclaims the rest, finishes journaled destroys, and removes namespaces,
    /// processes and directories that no record owns.
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport, RuntimeError> {
        let mut report = ReconcileReport::default();
        // Journaled destroys first (every one, whatever its retry time).
        report.destroyed = self.run_due_cleanups(i64::MAX, 10_000).await?;
        for rec in self.store.list_live_vms().await? {
            let alive = rec
                .vmm_pid
                .map(|p| process::is_alive(p as u32, &rec.dir))
                .unwrap_or(false);
            match rec.status {
                VmStatus::Running if alive => match self.agent_health(&rec).await {
                    Ok(_) => {
                        tracing::info!(vm_id = %rec.vm_id, pid = ?rec.vmm_pid, "re-adopted running VM");
                        report.adopted.push(rec.vm_id);
                    }
                    Err(e) => {
                        self.fail(
                            &rec,
                            &format!("agent did not answer after a controller restart: {e}"),
                        )
                        .await;
                        report.failed.push(rec.vm_id);
                    }
                },
                VmStatus::Creating if alive => {
                    tracing::info!(vm_id = %rec.vm_id, "resuming the wait for a booting VM");
                    let started = Instant::now()
                        - Duration::from_millis((now_ms() - rec.created_at).max(0) as u64);
                    let deadline = started + self.cfg.boot_timeout;
                    let rt = self.clone();
                    let r = rec.clone();
                    tokio::spawn(async move { rt.await_ready(r, deadline).await });
                    report.adopted.push(rec.vm_id);
                }
                VmStatus::Creating | VmStatus::Running => {
                    let reason = match rec.vmm_pid {
                        Some(pid) => {
                            format!("VMM process (pid {pid}) was gone when the controller started")
                        }
                        None => "the controller stopped before the VMM was started".to_string(),
                    };
                    self.fail(&rec, &reason).await;
                    report.failed.push(rec.vm_id);
                }
                VmStatus::Failed => {
                    let lock = self.op_lock(&rec.vm_id);
                    let _g = lock.lock().await;
                    if let Err(e) = self.reclaim(&rec, true).await {
                        tracing::error!(vm_id = %rec.vm_id, error = %e, "reclaiming failed VM");
                    }
                    report.reclaimed.push(rec.vm_id);
                }
                VmStatus::Hibernated | VmStatus::Destroyed => {}
            }
        }
        // Egress for every VM that still holds its namespace: the DNS and
        // gate sockets died with the previous controller.
        if self.egress().is_some() {
            for rec in self.store.list_live_vms().await? {
                let holds = !rec.slot_released
                    && matches!(
                        rec.status,
                        VmStatus::Creating | VmStatus::Running | VmStatus::Hibernated
                    )
                    && polydev_net::netns::exists(&rec.netns);
                if holds {
                    if let Err(e) = self.attach_egress(&rec).await {
                        tracing::error!(vm_id = %rec.vm_id, error = %e, "re-attaching egress");
                    }
                }
            }
        }
        report.orphans = self.sweep_orphans().await?;
        Ok(report)
    }

    async fn sweep_orphans(&self) -> Result<Vec<String>, RuntimeError> {
        let live = self.store.list_live_vms().await?;
        let all = self.store.list_vms(None, true).await?;
        let prefix = self.cfg.netns_prefix();
        let vms_dir = self.cfg.vms_dir();
        let owned_ns: Vec<String> = live
            .iter()
            .filter(|r| !r.slot_released)
            .map(|r| r.netns.clone())
            .collect();
        let live_dirs: Vec<String> = live
            .iter()
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.dir.clone())
            .collect();
        let known_dirs: Vec<String> = all
            .iter()
            .filter(|r| r.status != VmStatus::Destroyed)
            .map(|r| r.dir.clone())
            .collect();
        // Host links and source elements of slots no VM holds.
        let egress_orphans = match self.egress() {
            Some(h) => {
                let owned: Vec<i64> = live
                    .iter()
                    .filter(|r| !r.slot_released)
                    .map(|r| r.slot)
                    .collect();
                h.egress.sweep(&owned).await
            }
            None => Vec::new(),
        };
        tokio::task::spawn_blocking(move || {
            let mut removed = egress_orphans;
            let marker = format!("{}/", vms_dir.display());
            for pid in process::find_by_marker(&marker) {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if !live_dirs.iter().any(|d| cmd.contains(&format!("{d}/"))) {
                    let _ = process::stop(pid, &marker, Duration::from_secs(2));
                    removed.push(format!("process {pid}"));
                }
            }
            for ns in polydev_net::netns::list(&prefix) {
                if !owned_ns.contains(&ns) && polydev_net::teardown_vm_network(&ns).is_ok() {
                    removed.push(format!("netns {ns}"));
                }
            }
            if let Ok(rd) = std::fs::read_dir(&vms_dir) {
                for e in rd.flatten() {
                    let p = e.path().display().to_string();
                    if !known_dirs.contains(&p) && std::fs::remove_dir_all(e.path()).is_ok() {
                        removed.push(format!("dir {p}"));
                    }
                }
            }
            for r in &removed {
                tracing::warn!(what = %r, "removed an orphan");
            }
            Ok(removed)
        })
        .await
        .unwrap_or_else(|e| Ok(vec![format!("orphan sweep failed: {e}")]))
    }
}

/// What start-up reconciliation did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReconcileReport {
    /// VMs re-adopted (running, or still booting).
    pub adopted: Vec<String>,
    /// VMs found dead and marked failed.
    pub failed: Vec<String>,
    /// Failed VMs whose leftovers were reclaimed.
    pub reclaimed: Vec<String>,
    /// VMs whose journaled destroy was finished.
    pub destroyed: Vec<String>,
    /// Orphans (processes, namespaces, directories) removed.
    pub orphans: Vec<String>,
}

fn remove_vm_files(dir: &Path, keep_logs: bool) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !keep_logs {
        return std::fs::remove_dir_all(dir);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if Path::new(&name).extension().is_some_and(|x| x == "log") {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// How long a failed cleanup waits before its next attempt: 2 s doubled
/// with each attempt, at most 5 minutes.
fn cleanup_backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 20) as u32;
    Duration::from_secs(2u64.saturating_pow(exp).min(300))
}

#[cfg(test)]
mod cleanup_tests {
    #[test]
    fn cleanup_backoff_doubles_up_to_five_minutes() {
        let s = |a| super::cleanup_backoff(a).as_secs();
        assert_eq!((s(0), s(1), s(2), s(3)), (2, 2, 4, 8));
        assert_eq!(s(8), 256);
        assert_eq!(s(9), 300);
        assert_eq!(s(i64::MAX), 300);
    }
}

/// How much of the console's end is read for the panic of a VM whose VMM
/// died while it ran.
const DIED_CONSOLE_TAIL: u64 = 1 << 20;

/// What a booting VM's console shows so far, reading what it gained since
/// the last call on a blocking thread.
async fn poll_console(watch: &Arc<Mutex<console::BootWatch>>) -> console::BootProgress {
    let watch = watch.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
        w.poll().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading a console log");
            w.progress()
        })
    })
    .await;
    read.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading a console log");
        console::BootProgress::default()
    })
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// A new VM id: `vm_` and 16 hex digits.
pub fn new_vm_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    format!("vm_{}", hex::encode(b))
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}
