//! `abgate status [NAME] [--watch]`: a compact table of experiments and arms.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::remote::{block_on, Remote, RemoteArgs};
use crate::control::view::{render_fleet, render_status, ExperimentList, ExperimentView};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// One experiment (default: all).
    name: Option<String>,
    /// Refresh every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch")]
    count: Option<u64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn run(args: StatusArgs) -> ExitCode {
    block_on(async move {
        let remote = Remote::new(&args.remote);
        let path = match &args.name {
            Some(n) => format!("/v1/experiments/{n}"),
            None => "/v1/experiments".to_string(),
        };
        let tty = std::io::stdout().is_terminal();
        let mut shown = 0u64;
        loop {
            let reply = match remote.call(Method::GET, &path, None, None).await {
                Ok(r) => r,
                Err(f) => return f.exit(),
            };
            let experiments = match read_view(&args.name, reply.body) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!(
                        "the admin API at {} answered with an unexpected experiment view: {e}",
                        args.remote.admin
                    );
                    return ExitCode::from(1);
                }
            };
            // A fleet replica says which it is and how far it follows.
            let fleet = match remote.call(Method::GET, "/readyz", None, None).await {
                Ok(r) if r.body["fleet"].is_object() => Some(render_fleet(&r.body["fleet"])),
                _ => None,
            };
            if args.watch && tty {
                // Redraw in place.
                print!("\x1b[2J\x1b[H");
            }
            if let Some(line) = fleet {
                print!("{line}");
            }
            print!("{}", render_status(&experiments));
            shown += 1;
            if !args.watch || args.count.is_some_and(|c| shown >= c) {
                return ExitCode::SUCCESS;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// One experiment (`GET /v1/experiments/{name}`) or all (`GET /v1/experiments`).
fn read_view(name: &Option<String>, body: Value) -> serde_json::Result<Vec<ExperimentView>> {
    Ok(match name {
        Some(_) => vec![serde_json::from_value(body)?],
        None => serde_json::from_value::<ExperimentList>(body)?.experiments,
    })
}
