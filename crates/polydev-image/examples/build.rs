//! Manual driver until the `polydev` CLI is wired:
//! `build kernel` | `build image <flavour> <agent-binary>` |
//! `build state-disk <path> <agent.json>`.

use std::path::Path;
use std::process::ExitCode;

use polydev_image::{cache_dir_from_env, kernel, rootfs, StderrProgress};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache = cache_dir_from_env();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["kernel"] => kernel::build(&cache, &mut StderrProgress::new("kernel"))
            .map(|k| format!("{} (cached: {})", k.path.display(), k.cached)),
        ["image", flavour, agent] => flavour.parse().and_then(|f| {
            rootfs::build(
                f,
                &cache,
                Path::new(agent),
                &mut StderrProgress::new("image"),
            )
            .map(|a| format!("{} (cached: {})", a.path.display(), a.cached))
        }),
        ["state-disk", path, config] => std::fs::read(config)
            .map_err(|e| polydev_image::Error::io("read", config)(e))
            .and_then(|json| {
                rootfs::make_state_disk(Path::new(path), 64, &[("config/agent.json", &json, 0o600)])
                    .map(|()| path.to_string())
            }),
        _ => {
            eprintln!("usage: build kernel | image <flavour> <agent-bin> | state-disk <path> <agent.json>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
