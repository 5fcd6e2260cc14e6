//! `polydev bench --runs`: what a prompt run costs on top of the CLI itself.
//! Prints figures; asserts nothing.
//!
//! It makes its own stand-in internet (`polydev_egress::testnet`) serving the
//! model stand-in (`polydev_runs::model_standin`) at `api.provider.test:8090`,
//! and the real Codex CLI of the CLI image talks to it through egress. The
//! controller's HTTP application runs in this process; requests go through
//! its router (authentication included), not over a socket.
//!
//! - `POST /api/runs` → CLI process started and → first event, with the VM
//!   running and with it hibernated;
//! - events per second through SSE (a long streamed answer, live and replayed);
//! - the same command straight through the agent's `/procs` against the
//!   whole run through the API (overhead ratio; goal ≤ 5 % + 20 ms).

use axum::body::Body;
use http_body_util::BodyExt;
use polydev_controller::runtime::Runtime;
use polydev_egress::testnet::{self, TestInternet};
use polydev_runs::model_standin::{self, ModelStandin};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const PORT: u16 = 8090;
const USER: &str = "bench";

struct Api {
    app: axum::Router,
    key: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))?;
        let resp = self.app.clone().oneshot(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Reads a run's SSE stream to its end: (events, seconds from the first
    /// event to the last).
    async fn sse(&self, run: &str) -> anyhow::Result<(usize, f64)> {
        let req = axum::http::Request::builder()
            .uri(format!("/api/runs/{run}/events"))
            .header("authorization", format!("Bearer {}", self.key))
            .body(Body::empty())?;
        let mut body = self.app.clone().oneshot(req).await?.into_body();
        let (mut n, mut first) = (0usize, None);
        let mut last = Instant::now();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f?.into_data() {
                let k = d
                    .windows(4)
                    .filter(|w| w == b"\nid:" || w == b"id: ")
                    .count();
                let k = k.max(usize::from(d.starts_with(b"id:")));
                if k > 0 {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += k;
                }
            }
        }
        let secs = first
            .map(|f| last.duration_since(f).as_secs_f64())
            .unwrap_or(0.0);
        Ok((n, secs))
    }

    async fn run(&self, prompt: &str) -> anyhow::Result<(Value, f64)> {
        let t = Instant::now();
        let (st, v) = self
            .call(
                "POST",
                "/api/runs",
                Some(json!({"userId": USER, "provider": "codex", "prompt": prompt})),
            )
            .await?;
        anyhow::ensure!(st == 202, "POST /api/runs: {st} {v}");
        let id = v["runId"].as_str().unwrap_or_default().to_string();
        self.sse(&id).await?;
        let wall = t.elapsed().as_secs_f64() * 1000.0;
        let (_, r) = self.call("GET", &format!("/api/runs/{id}"), None).await?;
        anyhow::ensure!(r["status"] == "completed", "run {id}: {r}");
        Ok((r, wall))
    }
}

fn ms(r: &Value, k: &str) -> f64 {
    (r["timings"][k].as_i64().unwrap_or(0) - r["timings"]["queuedAt"].as_i64().unwrap_or(0)) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Runs the figures with `n` runs per case.
pub async fn run(rt: &Arc<Runtime>, n: usize) -> anyhow::Result<()> {
    let served = Arc::new(ModelStandin::new());
    let net = TestInternet::start(Some(Box::new(move || {
        Box::pin(async move {
            if let Ok(l) = tokio::net::TcpListener::bind((testnet::EXTRA_ADDR, PORT)).await {
                model_standin::serve(l, served).await;
            }
        })
    })))
    .map_err(anyhow::Error::msg)?;
    let mut settings = polydev_controller::egress::EgressSettings::default();
    settings.uplink = polydev_controller::egress::Uplink::Named(net.uplink.clone());
    settings.dns_upstream = Some(testnet::DNS_ADDR.into());
    let keyring = polydev_controller::load_keyring(rt.config())?;
    // The host table the hub installs goes with the benchmark, however it ends.
    let _table = super::common::HostTable(rt.config().host_tag());
    let hub = polydev_controller::egress::EgressHub::start(
        &settings,
        &rt.config().host_tag(),
        rt.store().clone(),
        keyring.clone(),
    )
    .await?;
    rt.set_egress(hub);
    let mut cfg = polydev_controller::runs::RunsConfig::default();
    cfg.providers = polydev_runs::settings::ProvidersFile::parse(
        &format!("[codex]\nconfig = ['openai_base_url=\"http://api.provider.test:{PORT}/v1\"']\n"),
        "bench providers",
    )
    .map_err(anyhow::Error::msg)?;
    let providers = cfg.providers.clone();
    let state = polydev_controller::AppState::new(
        rt.clone(),
        keyring,
        Default::default(),
        Duration::from_secs(86_400),
        cfg,
    );
    let key = polydev_controller::auth::generate();
    rt.store()
        .insert_api_key(&key.key_id, "bench", &key.hash)
        .await?;
    let api = Api {
        app: polydev_controller::app(state),
        key: key.secret,
    };
    let (st, v) = api
        .call(
            "PUT",
            &format!("/api/credentials/{USER}/codex"),
            Some(json!({"apiKey": "sk-bench"})),
        )
        .await?;
    anyhow::ensure!(st == 200, "storing the API key: {v}");
    println!("runs: real Codex CLI in a CLI VM, the model stand-in behind the benchmark's own internet; {n} runs per case");

    let (first, _) = api.run("say hello").await?;
    println!(
        "  first run (VM booted)  POST → CLI started {:>7.0} ms   → first event {:>7.0} ms",
        ms(&first, "cliStartedAt"),
        ms(&first, "firstOutputAt")
    );
    let vm_id = first["vmId"].as_str().unwrap_or_default().to_string();
    let (mut started, mut output) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (r, _) = api.run("say hello").await?;
        started.push(ms(&r, "cliStartedAt"));
        output.push(ms(&r, "firstOutputAt"));
    }
    println!(
        "  VM running             POST → CLI started {:>7.0} ms   → first event {:>7.0} ms (medians)",
        median(started),
        median(output.clone())
    );
    let (mut hs, mut ho) = (Vec::new(), Vec::new());
    for _ in 0..n.clamp(1, 3) {
        rt.hibernate(&vm_id).await?;
        let (r, _) = api.run("say hello").await?;
        hs.push(ms(&r, "cliStartedAt"));
        ho.push(ms(&r, "firstOutputAt"));
    }
    println!(
        "  VM hibernated          POST → CLI started {:>7.0} ms   → first event {:>7.0} ms (medians)",
        median(hs),
        median(ho)
    );

    // Events per second: a long streamed answer, live and replayed.
    let t = Instant::now();
    let (st, v) = api
        .call(
            "POST",
            "/api/runs",
            Some(json!({"userId": USER, "provider": "codex", "prompt": "WORDS: 2000"})),
        )
        .await?;
    anyhow::ensure!(st == 202, "{v}");
    let id = v["runId"].as_str().unwrap_or_default().to_string();
    let (live_n, live_s) = api.sse(&id).await?;
    let _ = t;
    let t = Instant::now();
    let (replay_n, _) = api.sse(&id).await?;
    let replay_s = t.elapsed().as_secs_f64();
    println!(
        "  SSE                    live {live_n} events at {:.0}/s (as the CLI printed them)   replay {replay_n} events at {:.0}/s",
        live_n as f64 / live_s.max(1e-6),
        replay_n as f64 / replay_s.max(1e-6)
    );

    // Overhead: the same command straight through the agent, alternated
    // with whole runs through the API so that both see the same VM.
    let rec = rt
        .store()
        .get_vm(&vm_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the CLI VM vanished"))?;
    let cmd = polydev_runs::command::run_command(
        polydev_core::auth::Provider::Codex,
        &polydev_runs::command::RunSpec {
            prompt: "say hello",
            api_key: Some("sk-bench"),
            ..Default::default()
        },
        providers.get(polydev_core::auth::Provider::Codex),
    );
    let target = rt
        .agent_target(&rec)
        .ok_or_else(|| anyhow::anyhow!("no agent configuration"))?;
    let mut direct = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..n.max(3) {
        let (_, wall) = api.run("say hello").await?;
        walls.push(wall);
        let t = Instant::now();
        let v = target
            .call(
                "POST",
                "/procs",
                Some(json!({"argv": cmd.argv, "env": cmd.env, "user": "polydev", "cwd": "/home/polydev", "timeoutMs": 600_000})),
                Duration::from_secs(30),
            )
            .await?;
        let pid = v["procId"].as_str().unwrap_or_default().to_string();
        let mut body = target
            .stream(
                &format!("/procs/{pid}/events?from=0"),
                Duration::from_secs(10),
            )
            .await?;
        while let Some(f) = body.frame().await {
            if f.is_err() {
                break;
            }
        }
        direct.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (d, a) = (median(direct), median(walls));
    println!(
        "  overhead               straight through the agent {d:.0} ms   through POST /api/runs + SSE {a:.0} ms   ratio {:.3} ({:+.0} ms; goal ≤ 1.05 + 20 ms)",
        a / d.max(1e-6),
        a - d
    );
    polydev_controller::runtime::Runtime::destroy(rt, &vm_id)
        .await
        .ok();
    drop(net);
    Ok(())
}
