//! `abgate serve --config FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The YAML (or JSON) config file.
    #[arg(long, short)]
    config: PathBuf,
}

pub fn run(args: ServeArgs) -> ExitCode {
    init_logging();
    let cfg = match config::load(&args.config) {
        Ok((c, _text)) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let server = match crate::server::start(&cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        eprintln!(
            "abgate listening on {} (admin on {})",
            server.data_addr, server.admin_addr
        );
        wait_for_stop_signal().await;
        eprintln!("stopping: draining in-flight requests");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ABGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
