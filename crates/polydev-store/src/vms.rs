//! VM records: what each VM holds (slot, netns, TAP, process, directory) and where
//! it is in its life.
//!
//! A VM's row is written, with its slot allocated, *before* any resource is
//! created, so a crashed controller can find and reclaim everything at start-up
//! ([`Store::list_live_vms`]).
//!
//! **Slots.** Each VM gets the lowest free integer slot ≥ 0; its network namespace
//! and TAP device are named after it by the caller. A slot is held while
//! `slot_released` is false, enforced by the unique partial index `vms_live_slot`
//! (`ON vms (slot) WHERE slot_released = FALSE`). The slot column keeps its value
//! for the record; only the flag changes. Destroying a VM releases its slot; a
//! failed VM keeps its slot (its netns/TAP may still exist, its console log is kept)
//! until [`Store::release_slot`] is called after its resources are reclaimed.
//!
//! **Status changes** are compare-and-set on the current status and return whether
//! they applied, so a destroy racing a "ready" cannot bring a VM back:
//!
//! ```text
//! creating ──▶ running ◀──▶ hibernated
//!    │            │              │
//!    └──▶ failed ◀┘              │
//!  (any but destroyed) ──▶ destroyed
//! ```

use polydev_core::vm::{now_ms, VmStatus, VmType};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::{Result, StoreError};
use crate::{get_enum, get_flag, Store};

/// How many times [`Store::insert_vm_allocating_slot`] retries when a concurrent
/// insert takes the slot it picked.
const SLOT_ATTEMPTS: u32 = 64;

/// One VM, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    /// Identifier of the VM.
    pub vm_id: String,
    /// Owner.
    pub user_id: String,
    /// Browser (login) or CLI VM.
    pub vm_type: VmType,
    /// Where the VM is in its life.
    pub status: VmStatus,
    /// Network slot (≥ 0); unique among VMs whose slot is not released.
    pub slot: i64,
    /// True once the slot may be given to another VM (destroyed, or failed and reclaimed).
    pub slot_released: bool,
    /// Name of the VM's network namespace.
    pub netns: String,
    /// Name of the VM's TAP device (inside `netns`).
    pub tap_device: String,
    /// Virtual CPUs.
    pub vcpu_count: i64,
    /// Guest memory in MiB.
    pub memory_mb: i64,
    /// Which VMM runs it: `qemu` or `firecracker`.
    pub vmm: String,
    /// Process id of the VMM, once started.
    pub vmm_pid: Option<i64>,
    /// The VMM's control socket, if it has one.
    pub socket_path: Option<String>,
    /// The VM's directory (disks, console log, sockets).
    pub dir: String,
    /// Why it failed, in words.
    pub failure_reason: Option<String>,
    /// Milliseconds from VMM start to the kernel handing over to init, if measured.
    pub kernel_boot_ms: Option<i64>,
    /// Milliseconds from VMM start to the agent announcing readiness, if measured.
    pub agent_ready_ms: Option<i64>,
    /// Milliseconds egress (link, firewall, DNS, gate) took to set up.
    pub egress_setup_ms: Option<i64>,
    /// When the row was written (Unix ms).
    pub created_at: i64,
    /// When it last became running (Unix ms).
    pub ready_at: Option<i64>,
    /// When it was destroyed (Unix ms).
    pub destroyed_at: Option<i64>,
}

impl FromRow<'_, AnyRow> for VmRecord {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(VmRecord {
            vm_id: row.try_get("vm_id")?,
            user_id: row.try_get("user_id")?,
            vm_type: get_enum(row, "vm_type")?,
            status: get_enum(row, "status")?,
            slot: row.try_get("slot")?,
            slot_released: get_flag(row, "slot_released")?,
            netns: row.try_get("netns")?,
            tap_device: row.try_get("tap_device")?,
            vcpu_count: row.try_get("vcpu_count")?,
            memory_mb: row.try_get("memory_mb")?,
            vmm: row.try_get("vmm")?,
            vmm_pid: row.try_get("vmm_pid")?,
            socket_path: row.try_get("socket_path")?,
            dir: row.try_get("dir")?,
            failure_reason: row.try_get("failure_reason")?,
            kernel_boot_ms: row.try_get("kernel_boot_ms")?,
            agent_ready_ms: row.try_get("agent_ready_ms")?,
            egress_setup_ms: row.try_get("egress_setup_ms")?,
            created_at: row.try_get("created_at")?,
            ready_at: row.try_get("ready_at")?,
            destroyed_at: row.try_get("destroyed_at")?,
        })
    }
}

const COLUMNS: &str = "vm_id, user_id, vm_type, status, slot, slot_released, netns, tap_device, \
    vcpu_count, memory_mb, vmm, vmm_pid, socket_path, dir, failure_reason, kernel_boot_ms, \
    agent_ready_ms, egress_setup_ms, created_at, ready_at, destroyed_at";

/// The lowest slot ≥ 0 not held by a VM whose slot is unreleased.
const LOWEST_FREE_SLOT: &str = "SELECT COALESCE(MIN(c.slot), 0) AS slot FROM ( \
    SELECT 0 AS slot WHERE NOT EXISTS \
        (SELECT 1 FROM vms WHERE slot = 0 AND slot_released = FALSE) \
    UNION ALL \
    SELECT v.slot + 1 AS slot FROM vms v WHERE v.slot_released = FALSE AND NOT EXISTS \
        (SELECT 1 FROM vms w WHERE w.slot = v.slot + 1 AND w.slot_released = FALSE) \
    ) c";

/// What the caller knows about a VM before it has a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVm {
    /// Identifier of the VM (unique).
    pub vm_id: String,
    /// Owner; recorded in `users` if not yet known.
    pub user_id: String,
    /// Browser or CLI VM.
    pub vm_type: VmType,
    /// Virtual CPUs.
    pub vcpu_count: i64,
    /// Guest memory in MiB.
    pub memory_mb: i64,
    /// `qemu` or `firecracker`.
    pub vmm: String,
    /// The VM's directory.
    pub dir: String,
    /// Whether it attaches the user's home disk: the store lets one live
    /// (creating, running or hibernated) VM per user do so.
    pub home_disk: bool,
}

impl Store {
    /// Records a new VM in status `creating`, holding the lowest free slot.
    ///
    /// `net_names(slot)` gives the `(netns, tap_device)` names for the slot picked.
    /// If a concurrent insert takes that slot first, the next free one is tried
    /// (at most 64 times, then [`StoreError::SlotContention`]). A duplicate `vm_id`
    /// is [`StoreError::Conflict`]. The owner is recorded in `users` if new.
    pub async fn insert_vm_allocating_slot(
        &self,
        new: &NewVm,
        net_names: impl Fn(i64) -> (String, String),
    ) -> Result<VmRecord> {
        self.ensure_user(&new.user_id).await?;
        for _ in 0..SLOT_ATTEMPTS {
            let slot: i64 = sqlx::query_scalar(LOWEST_FREE_SLOT)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| {
                    self.query_err(format!("find a free slot for VM {:?}", new.vm_id), e)
                })?;
            let (netns, tap_device) = net_names(slot);
            let rec = VmRecord {
                vm_id: new.vm_id.clone(),
                user_id: new.user_id.clone(),
                vm_type: new.vm_type,
                status: VmStatus::Creating,
                slot,
                slot_released: false,
                netns,
                tap_device,
                vcpu_count: new.vcpu_count,
                memory_mb: new.memory_mb,
                vmm: new.vmm.clone(),
                vmm_pid: None,
                socket_path: None,
                dir: new.dir.clone(),
                failure_reason: None,
                kernel_boot_ms: None,
                agent_ready_ms: None,
                egress_setup_ms: None,
                created_at: now_ms(),
                ready_at: None,
                destroyed_at: None,
            };
            let res = sqlx::query(
                "INSERT INTO vms (vm_id, user_id, vm_type, status, slot, slot_released, netns, \
                 tap_device, vcpu_count, memory_mb, vmm, dir, created_at, home_disk) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&rec.vm_id)
            .bind(&rec.user_id)
            .bind(rec.vm_type.as_str())
            .bind(rec.status.as_str())
            .bind(rec.slot)
            .bind(false)
            .bind(&rec.netns)
            .bind(&rec.tap_device)
            .bind(rec.vcpu_count)
            .bind(rec.memory_mb)
            .bind(&rec.vmm)
            .bind(&rec.dir)
            .bind(rec.created_at)
            .bind(new.home_disk)
            .execute(&self.pool)
            .await;
            match res {
                Ok(_) => return Ok(rec),
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    let slot_taken = db.constraint() == Some("vms_live_slot")
                        || db.message().contains("vms_live_slot")
                        || db.message().contains("vms.slot");
                    let home_taken = db.constraint() == Some("vms_one_home_disk")
                        || db.message().contains("vms_one_home_disk")
                        || db.message().contains("vms.user_id");
                    if home_taken {
                        return Err(StoreError::Conflict {
                            kind: self.kind,
                            what: format!(
                                "a live VM with user {:?}'s home disk (one VM at a time may attach it)",
                                new.user_id
                            ),
                        });
                    }
                    if !slot_taken {
                        return Err(StoreError::Conflict {
                            kind: self.kind,
                            what: format!("VM {:?}", new.vm_id),
                        });
                    }
                    tracing::debug!(vm_id = %new.vm_id, slot, "slot taken concurrently, retrying");
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    return Err(
                        self.query_err(format!("insert VM {:?} at slot {slot}", new.vm_id), e)
                    )
                }
            }
        }
        Err(StoreError::SlotContention {
            vm_id: new.vm_id.clone(),
            attempts: SLOT_ATTEMPTS,
        })
    }

    /// The VM with this id, if recorded.
    pub async fn get_vm(&self, vm_id: &str) -> Result<Option<VmRecord>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM vms WHERE vm_id = $1"))
            .bind(vm_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("get VM {vm_id:?}"), e))
    }

    /// VMs made since `since` (Unix ms) that failed (they carry a reason),
    /// newest first, at most `limit`.
    pub async fn list_failed_vms_since(&self, since: i64, limit: i64) -> Result<Vec<VmRecord>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM vms WHERE failure_reason IS NOT NULL AND created_at >= $1 \
             ORDER BY created_at DESC LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list failed VMs".to_string(), e))
    }

    /// VMs, newest first: of one user or all, with or without destroyed ones.
    pub async fn list_vms(
        &self,
        user_id: Option<&str>,
        include_destroyed: bool,
    ) -> Result<Vec<VmRecord>> {
        let mut conds = Vec::new();
        if user_id.is_some() {
            conds.push("user_id = $1");
        }
        if !include_destroyed {
            conds.push("status <> 'destroyed'");
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql =
            format!("SELECT {COLUMNS} FROM vms {filter} ORDER BY created_at DESC, vm_id DESC");
        let mut q = sqlx::query_as(&sql);
        if let Some(u) = user_id {
            q = q.bind(u);
        }
        q.fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err("list VMs".to_string(), e))
    }

    /// VMs that may still hold host resources, for the start-up reconciler:
    /// creating, running and hibernated ones, and failed ones whose slot is not yet
    /// released. Ordered by slot.
    pub async fn list_live_vms(&self) -> Result<Vec<VmRecord>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM vms \
             WHERE status IN ('creating', 'running', 'hibernated') \
                OR (status = 'failed' AND slot_released = FALSE) \
             ORDER BY slot, created_at"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list live VMs".to_string(), e))
    }

    /// Records the VMM process (and its control socket) of a VM that is creating,
    /// running or hibernated. Returns whether it applied.
    pub async fn set_vm_pid(
        &self,
        vm_id: &str,
        pid: i64,
        socket_path: Option<&str>,
    ) -> Result<bool> {
        self.exec_cas(
            format!("set pid of VM {vm_id:?}"),
            sqlx::query(
                "UPDATE vms SET vmm_pid = $1, socket_path = $2 \
                 WHERE vm_id = $3 AND status IN ('creating', 'running', 'hibernated')",
            )
            .bind(pid)
            .bind(socket_path)
            .bind(vm_id),
        )
        .await
    }

    /// creating|hibernated → running, with the measured boot times. Returns whether
    /// it applied (false if the VM meanwhile failed or was destroyed).
    pub async fn mark_vm_running(
        &self,
        vm_id: &str,
        ready_at: i64,
        kernel_boot_ms: Option<i64>,
        agent_ready_ms: Option<i64>,
    ) -> Result<bool> {
        self.exec_cas(
            format!("mark VM {vm_id:?} running"),
            sqlx::query(
                "UPDATE vms SET status = 'running', ready_at = $1, kernel_boot_ms = $2, \
                 agent_ready_ms = $3 \
                 WHERE vm_id = $4 AND status IN ('creating', 'hibernated')",
            )
            .bind(ready_at)
            .bind(kernel_boot_ms)
            .bind(agent_ready_ms)
            .bind(vm_id),
        )
        .await
    }

    /// running → hibernated. Returns whether it applied.
    pub async fn mark_vm_hibernated(&self, vm_id: &str) -> Result<bool> {
        self.exec_cas(
            format!("mark VM {vm_id:?} hibernated"),
            sqlx::query(
                "UPDATE vms SET status = 'hibernated', vmm_pid = NULL \
                 WHERE vm_id = $1 AND status = 'running'",
            )
            .bind(vm_id),
        )
        .await
    }

    /// creating|running → failed, with the reason in words. The slot stays held
    /// until [`Store::release_slot`]. Returns whether it applied.
    pub async fn mark_vm_failed(&self, vm_id: &str, reason: &str) -> Result<bool> {
        self.exec_cas(
            format!("mark VM {vm_id:?} failed"),
            sqlx::query(
                "UPDATE vms SET status = 'failed', failure_reason = $1 \
                 WHERE vm_id = $2 AND status IN ('creating', 'running')",
            )
            .bind(reason)
            .bind(vm_id),
        )
        .await
    }

    /// Any status but destroyed → destroyed: sets `destroyed_at` and releases the
    /// slot. Returns whether it applied (false if unknown or already destroyed).
    pub async fn mark_vm_destroyed(&self, vm_id: &str) -> Result<bool> {
        self.exec_cas(
            format!("mark VM {vm_id:?} destroyed"),
            sqlx::query(
                "UPDATE vms SET status = 'destroyed', destroyed_at = $1, slot_released = TRUE \
                 WHERE vm_id = $2 AND status <> 'destroyed'",
            )
            .bind(now_ms())
            .bind(vm_id),
        )
        .await
    }

    /// Gives the oldest hibernated VM of `vm_type` owned by `from` to `to`
    /// and, in the same transaction, records it on sign-in session
    /// `session_id` (initializing → vm_created): a crash leaves both changes
    /// or neither, never a taken VM that no session names. Concurrent
    /// claimers never get the same VM. `None` when no VM is free or the
    /// session is no longer initializing.
    pub async fn claim_hibernated_vm_for_session(
        &self,
        from: &str,
        to: &str,
        vm_type: VmType,
        session_id: &str,
    ) -> Result<Option<String>> {
        let err = |e| {
            self.query_err(
                format!("claim a hibernated VM for session {session_id:?}"),
                e,
            )
        };
        for _ in 0..SLOT_ATTEMPTS {
            let mut tx = self.pool.begin().await.map_err(err)?;
            // The write comes first, so that SQLite takes its write lock at
            // once (a read upgraded to a write can fail under contention).
            let taken: Option<(String,)> = sqlx::query_as(
                "UPDATE vms SET user_id = $1 \
                 WHERE user_id = $2 AND status = 'hibernated' AND vm_id = \
                   (SELECT vm_id FROM vms WHERE user_id = $2 AND vm_type = $3 \
                    AND status = 'hibernated' ORDER BY created_at, vm_id LIMIT 1) \
                 RETURNING vm_id",
            )
            .bind(to)
            .bind(from)
            .bind(vm_type.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
            let Some((vm_id,)) = taken else {
                let _ = tx.rollback().await;
                let any_left: Option<(String,)> = sqlx::query_as(
                    "SELECT vm_id FROM vms WHERE user_id = $1 AND vm_type = $2 \
                     AND status = 'hibernated' LIMIT 1",
                )
                .bind(from)
                .bind(vm_type.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
                if any_left.is_none() {
                    return Ok(None);
                }
                // Another claimer took the first one: try the next.
                continue;
            };
            let recorded = sqlx::query(
                "UPDATE auth_sessions SET status = 'vm_created', browser_vm_id = $1 \
                 WHERE session_id = $2 AND status = 'initializing'",
            )
            .bind(vm_id.as_str())
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected()
                == 1;
            if !recorded {
                let _ = tx.rollback().await;
                return Ok(None);
            }
            tx.commit().await.map_err(err)?;
            return Ok(Some(vm_id));
        }
        Ok(None)
    }

    /// Releases the slot of a failed VM once its resources are reclaimed (the row
    /// and its failure reason stay). Returns whether it applied (false if the VM is
    /// not failed or its slot is already released).
    pub async fn release_slot(&self, vm_id: &str) -> Result<bool> {
        self.exec_cas(
            format!("release slot of VM {vm_id:?}"),
            sqlx::query(
                "UPDATE vms SET slot_released = TRUE \
                 WHERE vm_id = $1 AND status = 'failed' AND slot_released = FALSE",
            )
            .bind(vm_id),
        )
        .await
    }

    /// Runs a conditional update; true when it changed a row.
    async fn exec_cas<'q>(
        &self,
        op: String,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<bool> {
        let r = q
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(op, e))?;
        Ok(r.rows_affected() > 0)
    }
}
