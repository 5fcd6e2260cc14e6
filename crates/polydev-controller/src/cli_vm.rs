//! Each user's persistent CLI VM: found, created or resumed on demand (for
//! runs, terminals and credential installs), kept awake while something
//! holds it, and hibernated after `POLYDEV_CLI_IDLE_SECS` without use.
//!
//! One user has one live CLI VM. [`CliVms::ensure`] is serialized per user, so
//! two runs (or a run and a terminal) that arrive together never create two.
//! A [`Hold`] marks the VM in use; the idle loop hibernates only VMs nobody
//! holds whose last use is older than the idle time, and gives the caller a
//! chance to save what the VM changed (a refreshed OAuth token) first.

use crate::runtime::Runtime;
use polydev_core::vm::{VmStatus, VmType};
use polydev_store::VmRecord;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Called with a running CLI VM: before it hibernates, after it booted.
pub type VmHook = Arc<dyn Fn(VmRecord) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How [`CliVms::ensure`] found the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// It was running.
    Running,
    /// It was hibernated and was resumed.
    Resumed,
    /// There was none (or it was still booting): it was booted.
    Booted,
}

#[derive(Debug)]
struct Use {
    holders: usize,
    last: Instant,
}

/// The users' CLI VMs.
pub struct CliVms {
    rt: Arc<Runtime>,
    idle: Duration,
    uses: Mutex<HashMap<String, Use>>,
    user_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    before_hibernate: std::sync::OnceLock<VmHook>,
    after_boot: std::sync::OnceLock<VmHook>,
}

/// A VM in use: it does not hibernate while held; dropping it records the
/// time of last use.
pub struct Hold {
    vms: Arc<CliVms>,
    vm_id: String,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("vm_id", &self.vm_id).finish()
    }
}

impl Hold {
    /// The held VM.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut uses = self.vms.uses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = uses.get_mut(&self.vm_id) {
            u.holders = u.holders.saturating_sub(1);
            u.last = Instant::now();
        }
    }
}

impl CliVms {
    /// CLI VMs of `rt`, hibernated after `idle` without use.
    pub fn new(rt: Arc<Runtime>, idle: Duration) -> Arc<CliVms> {
        Arc::new(CliVms {
            rt,
            idle,
            uses: Mutex::new(HashMap::new()),
            user_locks: Mutex::new(HashMap::new()),
            before_hibernate: std::sync::OnceLock::new(),
            after_boot: std::sync::OnceLock::new(),
        })
    }

    /// Sets what runs before an idle VM hibernates (once).
    pub fn set_before_hibernate(&self, f: VmHook) {
        let _ = self.before_hibernate.set(f);
    }

    /// Sets what runs when [`CliVms::ensure`] booted a VM (once): the
    /// user's credential files go into its fresh home.
    pub fn set_after_boot(&self, f: VmHook) {
        let _ = self.after_boot.set(f);
    }

    /// The idle time.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The user's live CLI VM (running, booting or hibernated), if any.
    pub async fn current(&self, user_id: &str) -> Result<Option<VmRecord>, String> {
        let vms = self
            .rt
            .store()
            .list_vms(Some(user_id), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(vms.into_iter().find(|v| {
            v.vm_type == VmType::Cli
                && matches!(
                    v.status,
                    VmStatus::Running | VmStatus::Creating | VmStatus::Hibernated
                )
        }))
    }

    /// Marks a VM in use until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>, vm_id: &str) -> Hold {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        let u = uses.entry(vm_id.to_string()).or_insert(Use {
            holders: 0,
            last: Instant::now(),
        });
        u.holders += 1;
        u.last = Instant::now();
        Hold {
            vms: self.clone(),
            vm_id: vm_id.to_string(),
        }
    }

    fn user_lock(&self, user_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.user_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user_id.to_string())
            .or_default()
            .clone()
    }

    /// The user's CLI VM, running and held: the live one (resumed when
    /// hibernated, awaited when booting) or a new one.
    pub async fn ensure(
        self: &Arc<Self>,
        user_id: &str,
    ) -> Result<(VmRecord, Hold, Found), String> {
        let lock = self.user_lock(user_id);
        let _g = lock.lock().await;
        let (vm_id, mut found) = match self.current(user_id).await? {
            Some(v) if v.status == VmStatus::Running => (v.vm_id, Found::Running),
            Some(v) if v.status == VmStatus::Hibernated => (v.vm_id, Found::Resumed),
            Some(v) => (v.vm_id, Found::Booted),
            None => {
                let rec = self
                    .rt
                    .create(user_id, VmType::Cli)
                    .await
                    .map_err(|e| format!("creating the CLI VM: {e}"))?;
                (rec.vm_id, Found::Booted)
            }
        };
        let hold = self.hold(&vm_id);
        let until = Instant::now() + self.rt.config().boot_timeout + Duration::from_secs(30);
        loop {
            let r = self
                .rt
                .store()
                .get_vm(&vm_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("CLI VM {vm_id} vanished"))?;
            match r.status {
                VmStatus::Running => {
                    if found == Found::Booted {
                        if let Some(f) = self.after_boot.get() {
                            f(r.clone()).await;
                        }
                    }
                    return Ok((r, hold, found));
                }
                VmStatus::Creating if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                VmStatus::Hibernated => {
                    found = Found::Resumed;
                    self.rt
                        .resume(&vm_id)
                        .await
                        .map_err(|e| format!("resuming CLI VM {vm_id}: {e}"))?;
                }
                VmStatus::Creating => {
                    return Err(format!("CLI VM {vm_id} did not start in time"));
                }
                _ => {
                    return Err(format!(
                        "CLI VM {vm_id} failed: {} (console log: /api/vms/{vm_id}/console)",
                        r.failure_reason.unwrap_or_else(|| r.status.to_string())
                    ))
                }
            }
        }
    }

    /// Whether a VM is idle: nobody holds it and its last use (or the
    /// first time it was seen) is older than the idle time.
    fn idle_now(&self, vm_id: &str, now: Instant) -> bool {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        let u = uses.entry(vm_id.to_string()).or_insert(Use {
            holders: 0,
            last: now,
        });
        u.holders == 0 && now.duration_since(u.last) >= self.idle
    }

    /// Hibernates idle CLI VMs, checking every `every`. Runs until the
    /// controller stops.
    pub async fn idle_loop(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Ok(vms) = self.rt.store().list_vms(None, false).await else {
                continue;
            };
            let now = Instant::now();
            for rec in vms
                .into_iter()
                .filter(|r| r.vm_type == VmType::Cli && r.status == VmStatus::Running)
            {
                if !self.idle_now(&rec.vm_id, now) {
                    continue;
                }
                let lock = self.user_lock(&rec.user_id);
                let _g = lock.lock().await;
                // A run may have taken it while we waited for the lock.
                if !self.idle_now(&rec.vm_id, Instant::now()) {
                    continue;
                }
                if let Some(f) = self.before_hibernate.get() {
                    f(rec.clone()).await;
                }
                match self.rt.hibernate(&rec.vm_id).await {
                    Ok(_) => {
                        tracing::info!(vm_id = %rec.vm_id, user_id = %rec.user_id, idle_secs = self.idle.as_secs(), "idle CLI VM hibernated")
                    }
                    Err(e) => {
                        tracing::warn!(vm_id = %rec.vm_id, error = %e, "hibernating an idle CLI VM")
                    }
                }
                self.uses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&rec.vm_id);
            }
        }
    }
}
