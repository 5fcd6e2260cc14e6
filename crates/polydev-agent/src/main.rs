//! `polydev-agent`: the guest agent binary.
//!
//! Usage: `polydev-agent [--config PATH]`. Reads the per-VM configuration,
//! listens on `0.0.0.0:<port>` and on the open-url hook socket, and
//! announces readiness on the console.
//!
//! `polydev-agent open-url URL` (the image's `$BROWSER` hook) hands a URL to
//! the running agent and exits.

#![warn(missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use polydev_agent::{api, config, open_url, ready, uptime};
use polydev_core::guest::ReadyLine;

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("open-url") {
        args.next();
        let (Some(url), None) = (args.next(), args.next()) else {
            eprintln!("polydev-agent: usage: polydev-agent open-url URL");
            std::process::exit(2);
        };
        match open_url::client(std::path::Path::new(open_url::SOCKET_PATH), &url) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("polydev-agent open-url: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut path = config::default_path();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => {
                path = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a path")?;
            }
            "--version" => {
                println!("polydev-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                "unknown argument {other:?}; usage: polydev-agent [--config PATH] | open-url URL"
            ))
            }
        }
    }
    Ok(path)
}

fn main() -> ExitCode {
    let path = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("polydev-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("polydev-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("polydev-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("polydev-agent: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        ready::announce(&ReadyLine {
            vm_id: config.vm_id.clone(),
            port: config.port,
            uptime_ms: uptime::uptime_ms(),
        });
        let state = api::AppState::new(&config);
        let urls = state.urls.clone();
        tokio::spawn(async move {
            let path = std::path::Path::new(open_url::SOCKET_PATH);
            if let Err(e) = open_url::serve_socket(path, urls).await {
                eprintln!("polydev-agent: open-url socket {}: {e}", path.display());
            }
        });
        let app = api::router(state);
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("polydev-agent: server on {addr} failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
