//! A warm pool of browser VMs: booted, Chromium started and answering, then
//! hibernated, so that a sign-in session resumes one (about a second) instead
//! of booting one (tens of seconds, most of it Chromium starting).
//!
//! The pool's size is `POLYDEV_BROWSER_POOL` (0, the default, turns it off).
//! While they wait, pooled VMs belong to the reserved user [`POOL_USER`]. A
//! session takes one by changing its owner in the store, compare-and-set, so
//! two sessions never share a VM; the pool then makes another. Pooled VMs are
//! ordinary VM records: hibernated on disk, they survive a controller restart,
//! and they are listed and destroyed like any other VM.
//!
//! The pool makes one VM at a time, so filling it never competes with itself
//! for the host's CPUs, and it waits to refill until every session that took
//! a VM has shown its URL and [`REFILL_SETTLE`] has passed (the page loading
//! in its Chromium): refilling does not slow a sign-in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polydev_core::vm::{VmStatus, VmType};
use tokio::sync::Notify;

use crate::runtime::Runtime;

/// Owner of the VMs waiting in the pool.
pub const POOL_USER: &str = "_pool";

/// How long a pooled VM may take to get Chromium answering.
const WARM_TIMEOUT: Duration = Duration::from_secs(600);
/// How long after a session that took a VM showed its URL the pool waits
/// before it refills.
pub const REFILL_SETTLE: Duration = Duration::from_secs(30);
/// Pause after a pooled VM failed to warm, before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// In the guest, as the guest user: starts Chromium on the display the way
/// the agent opens URLs (`polydev-browser`, so a session's URL later opens as
/// a tab in it), detached from `/exec`, once the X display's socket exists,
/// and again every 2 minutes while it does not answer (a Chromium started
/// too early dies); exits 0 once its DevTools endpoint lists a page, 1 after
/// the deadline.
const CHROMIUM_READY: &str = "const fs = require('fs'); const { spawn } = require('child_process'); \
const until = Date.now() + 540000; let next = 0; \
const launch = () => { spawn('/usr/local/bin/polydev-browser', ['about:blank'], \
  { detached: true, stdio: 'ignore' }).unref(); next = Date.now() + 120000; }; \
(async function poll() { \
  try { const r = await fetch('http://127.0.0.1:9222/json/list'); \
        if (r.ok && (await r.json()).some((t) => t.type === 'page')) process.exit(0); } catch (_) {} \
  if (Date.now() > until) process.exit(1); \
  if (Date.now() > next && fs.existsSync('/tmp/.X11-unix/X1')) launch(); \
  setTimeout(poll, 500); })();";

/// The warm pool.
pub struct BrowserPool {
    rt: Arc<Runtime>,
    size: usize,
    wake: Notify,
    /// Sessions that took a VM and have not yet shown their URL.
    starting: AtomicUsize,
}

/// A VM taken from the pool by a session that is still starting; the pool
/// refills once every such claim is dropped.
pub struct Claimed {
    pool: Arc<BrowserPool>,
    /// The VM (hibernated; resuming it is the session's).
    pub vm_id: String,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.pool.starting.fetch_sub(1, Ordering::SeqCst);
        self.pool.wake.notify_one();
    }
}

impl BrowserPool {
    /// A pool of `size` VMs over `rt`; [`BrowserPool::run`] fills it.
    pub fn new(rt: Arc<Runtime>, size: usize) -> Arc<BrowserPool> {
        Arc::new(BrowserPool {
            rt,
            size,
            wake: Notify::new(),
            starting: AtomicUsize::new(0),
        })
    }

    /// The number of VMs the pool keeps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Gives a warm VM to `user` and records it on sign-in session
    /// `session_id` in the same transaction (initializing → vm_created), or
    /// `None` when the pool is off or empty. Hold the claim until the
    /// session shows its URL or ends.
    pub async fn claim(self: &Arc<Self>, user: &str, session_id: &str) -> Option<Claimed> {
        if self.size == 0 {
            return None;
        }
        let got = self
            .rt
            .store()
            .claim_hibernated_vm_for_session(POOL_USER, user, VmType::Browser, session_id)
            .await;
        match got {
            Ok(Some(vm_id)) => {
                tracing::info!(vm_id, user, "warm browser VM taken from the pool");
                if let Err(e) = self.rt.refresh_egress_identity(&vm_id, user).await {
                    tracing::error!(vm_id, user, error = %e, "giving a warm VM its user's egress identity");
                }
                self.starting.fetch_add(1, Ordering::SeqCst);
                Some(Claimed {
                    pool: self.clone(),
                    vm_id,
                })
            }
            Ok(None) => {
                tracing::info!(user, "the browser VM pool is empty; booting one");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take a VM from the pool; booting one");
                None
            }
        }
    }

    /// How many warm VMs wait in the pool (hibernated, ready to be taken).
    pub async fn ready(&self) -> Result<usize, String> {
        let vms = self
            .rt
            .store()
            .list_vms(Some(POOL_USER), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(vms
            .iter()
            .filter(|v| v.status == VmStatus::Hibernated)
            .count())
    }

    /// Keeps the pool full, for ever. A pooled VM left running by a crash is
    /// warmed and hibernated again; one that failed is destroyed.
    pub async fn run(self: Arc<Self>) {
        if self.size == 0 {
            return;
        }
        tracing::info!(size = self.size, "browser VM pool on");
        loop {
            match self.fill_one().await {
                Ok(true) => continue,
                Ok(false) => {
                    // Full: wait for a claim, or look again in a while.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), self.wake.notified()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not warm a browser VM for the pool");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// Brings one pooled VM closer to hibernated-and-warm; false when the pool
    /// is full and nothing is left to do.
    async fn fill_one(&self) -> Result<bool, String> {
        let vms = self
            .rt
            .store()
            .list_vms(Some(POOL_USER), false)
            .await
            .map_err(|e| e.to_string())?;
        // Failed pooled VMs are of no use: reclaim them.
        for v in vms.iter().filter(|v| v.status == VmStatus::Failed) {
            let _ = self.rt.destroy(&v.vm_id).await;
        }
        // One already on its way (a crash mid-warm): finish it.
        if let Some(v) = vms
            .iter()
            .find(|v| matches!(v.status, VmStatus::Creating | VmStatus::Running))
        {
            self.warm(&v.vm_id).await?;
            return Ok(true);
        }
        let ready = vms
            .iter()
            .filter(|v| v.status == VmStatus::Hibernated)
            .count();
        if ready >= self.size || self.starting.load(Ordering::SeqCst) > 0 {
            return Ok(false);
        }
        let rec = self
            .rt
            .create(POOL_USER, VmType::Browser)
            .await
            .map_err(|e| format!("creating a pooled browser VM: {e}"))?;
        self.warm(&rec.vm_id).await?;
        Ok(true)
    }

    /// Waits until `vm_id` runs and its Chromium answers, then hibernates it.
    /// A VM that cannot be warmed is destroyed.
    async fn warm(&self, vm_id: &str) -> Result<(), String> {
        let started = Instant::now();
        let result = self.warm_inner(vm_id).await;
        match &result {
            Ok(()) => tracing::info!(
                vm_id,
                warm_ms = started.elapsed().as_millis() as u64,
                "browser VM warmed and hibernated into the pool"
            ),
            Err(_) => {
                let _ = self.rt.destroy(vm_id).await;
            }
        }
        result
    }

    async fn warm_inner(&self, vm_id: &str) -> Result<(), String> {
        let until = Instant::now() + self.rt.config().boot_timeout + Duration::from_secs(30);
        let rec = loop {
            let r = self
                .rt
                .store()
                .get_vm(vm_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("pooled VM {vm_id} vanished"))?;
            match r.status {
                VmStatus::Running => break r,
                VmStatus::Creating if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                _ => {
                    return Err(format!(
                        "pooled VM {vm_id} did not boot: {}",
                        r.failure_reason.unwrap_or_else(|| r.status.to_string())
                    ))
                }
            }
        };
        let body = serde_json::json!({
            "argv": ["node", "-e", CHROMIUM_READY],
            "user": "polydev",
            "timeoutMs": WARM_TIMEOUT.as_millis() as u64,
        });
        let v = self
            .rt
            .agent_call(
                &rec,
                "POST",
                "/exec",
                Some(body),
                WARM_TIMEOUT + Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("asking pooled VM {vm_id} whether Chromium is up: {e}"))?;
        if v.get("exitCode").and_then(|c| c.as_i64()) != Some(0) {
            return Err(format!(
                "Chromium in pooled VM {vm_id} did not come up: {v}"
            ));
        }
        self.rt
            .hibernate(vm_id)
            .await
            .map_err(|e| format!("hibernating pooled VM {vm_id}: {e}"))?;
        Ok(())
    }
}
