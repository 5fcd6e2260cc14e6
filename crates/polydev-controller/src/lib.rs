//! The polydev controller: the HTTP API over the VM runtime and the store.
//!
//! [`serve`] wires it together: it opens the store, chooses the VMM, runs
//! start-up reconciliation ([`runtime::Runtime::reconcile`]) and serves the
//! API until it is told to stop.
#![warn(missing_docs)]

pub mod accounts;
pub mod admission;
pub mod agent_client;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod auth_flow;
pub mod cli_vm;
pub mod config;
pub mod credentials;
pub mod dashboard;
pub mod egress;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod live;
pub mod pool;
pub mod private;
pub mod request_log;
pub mod runs;
pub mod runtime;
pub mod sign_in;
pub mod terminal;

use axum::Router;
use config::Config;
use polydev_store::Store;
use polydev_vmm::accel;
use std::sync::Arc;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The VM runtime (and through it the store).
    pub runtime: Arc<runtime::Runtime>,
    /// The provider connect flow.
    pub auth: Arc<auth_flow::AuthFlow>,
    /// The users' CLI VMs.
    pub cli: Arc<cli_vm::CliVms>,
    /// Prompt runs.
    pub runs: Arc<runs::Runs>,
    /// API keys verified in memory.
    pub keys: Arc<auth::KeyCache>,
    /// Changing requests counted per API key and per user.
    pub limits: Arc<admission::RateLimiter>,
    /// End users' accounts and dashboard sessions.
    pub accounts: Arc<accounts::Accounts>,
}

impl AppState {
    /// The application over a runtime: users' CLI VMs hibernated after
    /// `cli_idle`, prompt runs with `runs_cfg`, the connect flow with
    /// `auth_cfg`, an empty key cache and rate counters. Starts no task.
    pub fn new(
        rt: Arc<runtime::Runtime>,
        keyring: polydev_vault::Keyring,
        auth_cfg: auth_flow::AuthFlowConfig,
        cli_idle: std::time::Duration,
        runs_cfg: runs::RunsConfig,
    ) -> AppState {
        let cli = cli_vm::CliVms::new(rt.clone(), cli_idle);
        let runs = runs::Runs::new(rt.clone(), cli.clone(), keyring.clone(), runs_cfg);
        let auth = auth_flow::AuthFlow::new(rt.clone(), keyring, auth_cfg, cli.clone());
        let secure = rt
            .config()
            .live
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        AppState {
            accounts: Arc::new(accounts::Accounts::new(
                rt.store().clone(),
                &rt.config().accounts,
                secure,
            )),
            keys: auth::KeyCache::new(rt.store().clone()),
            runtime: rt,
            auth,
            cli,
            runs,
            limits: Default::default(),
        }
    }
}

/// The vault keyring: from the environment (`POLYDEV_MASTER_KEY`,
/// `POLYDEV_MASTER_KEY_FILE`), else `<data-dir>/master.key`, made (mode 0600)
/// on first start so that the defaults work.
pub fn load_keyring(cfg: &Config) -> anyhow::Result<polydev_vault::Keyring> {
    let configured = ["POLYDEV_MASTER_KEY", "POLYDEV_MASTER_KEY_FILE"]
        .iter()
        .any(|v| std::env::var(v).map(|x| !x.is_empty()).unwrap_or(false));
    if configured {
        return Ok(polydev_vault::Keyring::from_env()?);
    }
    let path = cfg.data_dir.join("master.key");
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let k = polydev_vault::MasterKey::generate();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                anyhow::anyhow!("creating the vault master key {}: {e}", path.display())
            })?;
        f.write_all(k.to_hex().as_bytes())?;
        tracing::warn!(key_id = k.id(), path = %path.display(), "no master key configured: made one; back it up, or set POLYDEV_MASTER_KEY_FILE");
    }
    Ok(polydev_vault::Keyring::new(
        polydev_vault::MasterKey::from_file(&path)?,
    ))
}

/// Opens the store named by the configuration (creating the data directory).
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("creating data directory {}: {e}", cfg.data_dir.display()))?;
    Ok(Store::connect(&cfg.effective_database_url()).await?)
}

/// Builds the runtime: store, VMM choice (with its reason), driver.
pub async fn build_runtime(cfg: Config) -> anyhow::Result<Arc<runtime::Runtime>> {
    let store = open_store(&cfg).await?;
    let qemu = polydev_vmm::qemu::default_binary();
    let kernel = artifacts::locate(&cfg, None).ok().map(|a| a.kernel);
    let cache = accel::cache_path(&cfg.data_dir);
    let choice = {
        let force = cfg.accel;
        let q = qemu.clone();
        tokio::task::spawn_blocking(move || {
            accel::choose(&q, kernel.as_deref(), Some(&cache), force)
        })
        .await?
    };
    let vmm_choice =
        polydev_vmm::choice::choose_vmm(cfg.vmm, polydev_vmm::firecracker::find_binary(), &choice);
    tracing::info!(vmm = %vmm_choice.kind, reason = %vmm_choice.reason, accel = choice.accel.as_str(), accel_reason = %choice.reason, "VMM chosen");
    // Firecracker runs only under its jailer (chroot, its own uid/gid and
    // cgroup); without one, a choice made for us falls back to QEMU.
    let jailer = vmm_choice
        .firecracker
        .as_deref()
        .and_then(polydev_vmm::firecracker::jailer::find_binary);
    let mut vmm_choice = vmm_choice;
    if vmm_choice.kind == polydev_vmm::VmmKind::Firecracker
        && vmm_choice.firecracker.is_some()
        && jailer.is_none()
    {
        if cfg.vmm == Some(polydev_vmm::VmmKind::Firecracker) {
            anyhow::bail!("the Firecracker VMM was forced but its jailer was not found (POLYDEV_JAILER, a `jailer` beside the firecracker binary, or PATH): Firecracker runs only jailed");
        }
        vmm_choice.kind = polydev_vmm::VmmKind::Qemu;
        vmm_choice.reason = format!(
            "{}; but no jailer was found beside it (POLYDEV_JAILER), and Firecracker runs only jailed: QEMU",
            vmm_choice.reason
        );
    }
    let driver: Arc<dyn polydev_vmm::Vmm> = match (vmm_choice.kind, &vmm_choice.firecracker) {
        (polydev_vmm::VmmKind::Firecracker, Some(bin)) => {
            let mut fc = polydev_vmm::firecracker::Firecracker::new(bin.clone());
            let id = |var: &str| -> anyhow::Result<u32> {
                match std::env::var(var).ok().filter(|v| !v.is_empty()) {
                    None => Ok(65534),
                    Some(v) => v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{var}: {v:?} is not a numeric id")),
                }
            };
            fc.jailer = Some(polydev_vmm::firecracker::jailer::JailerConfig {
                binary: jailer.clone().expect("checked above"),
                uid: id("POLYDEV_JAILER_UID")?,
                gid: id("POLYDEV_JAILER_GID")?,
                chroot_base: None,
                parent_cgroup: None,
                cgroup_version: polydev_vmm::firecracker::jailer::JailerConfig::host_cgroup_version(
                ),
            });
            Arc::new(fc)
        }
        (polydev_vmm::VmmKind::Firecracker, None) => {
            anyhow::bail!("the Firecracker VMM was forced but {}", vmm_choice.reason)
        }
        (polydev_vmm::VmmKind::Qemu, _) => Arc::new(polydev_vmm::qemu::Qemu {
            binary: qemu.into(),
            accel: choice.accel,
        }),
    };
    std::fs::create_dir_all(cfg.vms_dir())?;
    Ok(runtime::Runtime::new(
        store,
        Arc::new(cfg),
        driver,
        choice,
        vmm_choice.reason,
    ))
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let max = state.runtime.config().max_body_bytes;
    Router::new()
        .route("/health", axum::routing::get(api::health))
        .merge(api::routes(state.clone()))
        .merge(live::routes(state.clone()))
        .merge(terminal::routes(state.clone()))
        .merge(dashboard::routes())
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(dashboard::admin::count_changes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            accounts::guard::cross_site,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_log::span::<axum::body::Body>),
        )
        .with_state(state)
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn serve(cfg: Config, auth_cfg: auth_flow::AuthFlowConfig) -> anyhow::Result<()> {
    let listen = cfg.listen;
    private::restrict_umask();
    for d in [&cfg.data_dir, &cfg.cache_dir] {
        if let Err(e) = private::private_dir(d) {
            tracing::warn!(error = %e, "could not make a directory private");
        }
    }
    for loose in private::loose_modes(&cfg.data_dir) {
        tracing::warn!(what = %loose, "readable by other accounts: chmod go-rwx (polydev doctor lists them)");
    }
    let rt = build_runtime(cfg).await?;
    let keyring = load_keyring(rt.config())?;
    tracing::info!(key_id = keyring.current_id(), "credential vault ready");
    let hub = egress::EgressHub::start(
        &rt.config().egress,
        &rt.config().host_tag(),
        rt.store().clone(),
        keyring.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting VM egress: {e}"))?;
    rt.set_egress(hub);
    let report = rt.reconcile().await?;
    tracing::info!(?report, "start-up reconciliation done");
    tokio::spawn(rt.clone().watch(std::time::Duration::from_secs(2)));
    tokio::spawn(rt.clone().retry_cleanups(std::time::Duration::from_secs(5)));
    let state = AppState::new(
        rt.clone(),
        keyring.clone(),
        auth_cfg,
        rt.config().cli_idle,
        rt.config().runs.clone(),
    );
    // The decoy hash checked for unknown accounts is made now, so that the
    // first such sign-in takes no longer than any other.
    tokio::task::spawn_blocking(|| accounts::password::verify("", None));
    let (cli, runs, auth) = (&state.cli, &state.runs, &state.auth);
    tokio::spawn(cli.clone().idle_loop(std::time::Duration::from_secs(1)));
    {
        let (rt2, vault) = (rt.clone(), keyring.clone());
        cli.set_before_hibernate(Arc::new(move |vm| {
            let (rt, vault) = (rt2.clone(), vault.clone());
            Box::pin(async move { credentials::sync_all(&rt, &vault, &vm).await })
        }));
        let (rt2, vault) = (rt.clone(), keyring.clone());
        cli.set_after_boot(Arc::new(move |vm| {
            let (rt, vault) = (rt2.clone(), vault.clone());
            Box::pin(async move { credentials::restore_missing(&rt, &vault, &vm).await })
        }));
    }
    let resumed = auth.recover().await?;
    tracing::info!(resumed, "sign-in sessions recovered");
    let reattached = runs.recover().await.map_err(anyhow::Error::msg)?;
    tracing::info!(reattached, "runs recovered");
    tokio::spawn(auth.pool().clone().run());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    tracing::info!(%listen, store = %rt.store().kind(), "polydev controller listening");
    eprintln!("polydev: listening on http://{listen}");
    tokio::spawn(state.keys.clone().refresh_loop(auth::REFRESH_EVERY));
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down; VMs keep running and are re-adopted at the next start");
}
