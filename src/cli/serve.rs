//! `abgate serve --config FILE`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::StartOptions;
use crate::config;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The YAML (or JSON) config file (watched for changes; SIGHUP re-reads it).
    #[arg(long, short)]
    config: PathBuf,
    /// Do not watch the config file (reload only on SIGHUP or through the API).
    #[arg(long)]
    no_watch: bool,
    /// Bearer token for the admin API's state-changing calls.
    #[arg(long, env = "ABGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Outcome-token signing keys, `id:secret[,id:secret...]`, newest last.
    #[arg(long, env = "ABGATE_TOKEN_KEYS", hide_env_values = true)]
    token_keys: Option<String>,
}

pub fn run(args: ServeArgs) -> ExitCode {
    init_logging();
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", args.config.display());
            return ExitCode::from(1);
        }
    };
    if let Err(errors) = config::parse(&text) {
        for e in &errors.0 {
            eprintln!("{}: {e}", args.config.display());
        }
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let server = match crate::app::start(StartOptions {
            config_text: text,
            config_path: Some(args.config.clone()),
            watch_file: !args.no_watch,
            admin_token: args.admin_token,
            token_keys: args.token_keys,
        })
        .await
        {
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
