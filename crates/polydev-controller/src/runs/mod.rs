//! Prompt runs: the queue (one run at a time per user by default, further
//! runs wait in the store), cancellation, the wake-ups of event readers, and
//! recovery after a restart. One job per file: `driver.rs` carries one run
//! from its CLI VM to its end, `reader.rs` turns the agent's process events
//! into stored, numbered events, `api.rs` is the HTTP surface (SSE included).

pub mod api;
mod driver;
mod reader;

use crate::cli_vm::CliVms;
use crate::runtime::Runtime;
use polydev_core::run::RunStatus;
use polydev_runs::settings::ProvidersFile;
use polydev_store::RunRecord;
use polydev_vault::Keyring;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Run settings.
#[derive(Debug, Clone)]
pub struct RunsConfig {
    /// Per-provider environment, configuration, model and permission mode
    /// (`POLYDEV_PROVIDERS_FILE`).
    pub providers: ProvidersFile,
    /// Largest prompt in bytes (`POLYDEV_MAX_PROMPT_BYTES`).
    pub max_prompt_bytes: usize,
    /// Deadline of a run that names none (`POLYDEV_RUN_TIMEOUT_SECS`).
    pub default_timeout: Duration,
    /// Largest deadline a run may ask for.
    pub max_timeout: Duration,
    /// Runs of one user at once (`POLYDEV_RUNS_PER_USER`); more wait.
    pub per_user: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            providers: ProvidersFile::default(),
            max_prompt_bytes: 32 * 1024,
            default_timeout: Duration::from_secs(1800),
            max_timeout: Duration::from_secs(24 * 3600),
            per_user: 1,
        }
    }
}

impl RunsConfig {
    /// Reads the environment (`POLYDEV_PROVIDERS_FILE`,
    /// `POLYDEV_MAX_PROMPT_BYTES`, `POLYDEV_RUN_TIMEOUT_SECS`,
    /// `POLYDEV_RUNS_PER_USER`); a malformed providers file is an error
    /// naming its line.
    pub fn from_env() -> Result<RunsConfig, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, v: String| -> Result<u64, String> {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{k} {v:?} is not a positive whole number"))
        };
        let mut c = RunsConfig::default();
        if let Some(path) = get("POLYDEV_PROVIDERS_FILE") {
            c.providers = ProvidersFile::load(std::path::Path::new(&path))?;
        }
        if let Some(v) = get("POLYDEV_MAX_PROMPT_BYTES") {
            c.max_prompt_bytes = num("POLYDEV_MAX_PROMPT_BYTES", v)? as usize;
        }
        if let Some(v) = get("POLYDEV_RUN_TIMEOUT_SECS") {
            c.default_timeout = Duration::from_secs(num("POLYDEV_RUN_TIMEOUT_SECS", v)?);
        }
        if let Some(v) = get("POLYDEV_RUNS_PER_USER") {
            c.per_user = num("POLYDEV_RUNS_PER_USER", v)? as usize;
        }
        Ok(c)
    }
}

/// The runs of this controller.
pub struct Runs {
    rt: Arc<Runtime>,
    cli: Arc<CliVms>,
    vault: Keyring,
    cfg: RunsConfig,
    /// Runs driven by this process, with their cancel switch.
    active: Mutex<HashMap<String, Active>>,
    /// Per run: the number of stored events, for readers waiting on more.
    watchers: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Serializes taking the next queued run of a user.
    kick_lock: tokio::sync::Mutex<()>,
}

struct Active {
    user_id: String,
    cancel: watch::Sender<bool>,
}

impl Runs {
    /// Runs over the runtime's CLI VMs.
    pub fn new(rt: Arc<Runtime>, cli: Arc<CliVms>, vault: Keyring, cfg: RunsConfig) -> Arc<Runs> {
        Arc::new(Runs {
            rt,
            cli,
            vault,
            cfg,
            active: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            kick_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RunsConfig {
        &self.cfg
    }

    /// A receiver that changes when the run stores events or ends.
    pub fn subscribe(&self, run_id: &str) -> watch::Receiver<i64> {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(run_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, run_id: &str, count: i64) {
        let w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = w.get(run_id) {
            tx.send_replace(count);
        }
    }

    fn forget_watchers(&self, run_id: &str) {
        if let Some(tx) = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id)
        {
            tx.send_modify(|c| *c += 0);
        }
    }

    /// Starts queued runs of `user_id` while fewer than the per-user limit run.
    pub async fn kick(self: &Arc<Self>, user_id: &str) {
        let _g = self.kick_lock.lock().await;
        let running = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|a| a.user_id == user_id)
            .count();
        if running >= self.cfg.per_user {
            return;
        }
        let queued = match self.rt.store().list_unfinished_runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading the run queue");
                return;
            }
        };
        for run in queued
            .into_iter()
            .filter(|r| r.user_id == user_id && r.status == RunStatus::Queued)
            .take(self.cfg.per_user - running)
        {
            match self
                .rt
                .store()
                .set_run_status(&run.run_id, RunStatus::Queued, RunStatus::Starting)
                .await
            {
                Ok(true) => self.spawn(run, false),
                Ok(false) => {}
                Err(e) => tracing::error!(run_id = %run.run_id, error = %e, "starting a run"),
            }
        }
    }

    fn spawn(self: &Arc<Self>, run: RunRecord, reattach: bool) {
        let (tx, rx) = watch::channel(false);
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                run.run_id.clone(),
                Active {
                    user_id: run.user_id.clone(),
                    cancel: tx,
                },
            );
        let me = self.clone();
        tokio::spawn(async move {
            let id = run.run_id.clone();
            let user = run.user_id.clone();
            driver::drive(&me, run, rx, reattach).await;
            me.active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            me.forget_watchers(&id);
            me.kick(&user).await;
        });
    }

    /// Cancels a run: a queued one ends at once; a starting or running one
    /// has its CLI killed (its whole process tree) and then ends `cancelled`.
    pub async fn cancel(&self, run_id: &str) -> Result<(), String> {
        let switch = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .map(|a| a.cancel.clone());
        if let Some(s) = switch {
            s.send_replace(true);
            return Ok(());
        }
        let o = polydev_store::RunOutcome {
            error: Some("cancelled before it started"),
            ..Default::default()
        };
        self.rt
            .store()
            .finish_run(run_id, RunStatus::Cancelled, &o)
            .await
            .map_err(|e| e.to_string())?;
        self.forget_watchers(run_id);
        Ok(())
    }

    /// After a restart: runs whose CLI was running are re-attached to their
    /// process (events continue from the stored checkpoint); runs that were
    /// starting start again; queued ones are queued again.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, String> {
        let runs = self
            .rt
            .store()
            .list_unfinished_runs()
            .await
            .map_err(|e| e.to_string())?;
        let mut users = Vec::new();
        let mut n = 0;
        for run in runs {
            match run.status {
                RunStatus::Running | RunStatus::Starting => {
                    tracing::info!(run_id = %run.run_id, status = %run.status, "re-attaching a run after restart");
                    let reattach = run.status == RunStatus::Running;
                    self.spawn(run, reattach);
                    n += 1;
                }
                _ => users.push(run.user_id),
            }
        }
        users.dedup();
        for u in users {
            self.kick(&u).await;
        }
        Ok(n)
    }
}
