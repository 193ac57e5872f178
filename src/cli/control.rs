//! `abgate pause|resume|rollback NAME`, `abgate promote NAME --arm ARM`,
//! `abgate config get|apply`.

use std::path::PathBuf;
use std::process::ExitCode;

use http::Method;

use super::remote::{block_on, Remote, RemoteArgs};
use crate::config;
use crate::control::view::{render_status, ExperimentView};

#[derive(clap::Args)]
pub struct ActionArgs {
    /// The experiment.
    name: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(clap::Args)]
pub struct PromoteArgs {
    /// The experiment.
    name: String,
    /// The arm that gets 100% of the traffic.
    #[arg(long)]
    arm: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the config in force (its text; the version goes to stderr).
    Get {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Validate FILE locally, then replace the running config (guarded by its version).
    Apply {
        file: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub fn action(verb: &'static str, args: ActionArgs) -> ExitCode {
    post(verb, args.name, None, args.remote)
}

pub fn promote(args: PromoteArgs) -> ExitCode {
    let body = serde_json::json!({"arm": args.arm}).to_string();
    post("promote", args.name, Some(body), args.remote)
}

fn post(verb: &'static str, name: String, body: Option<String>, remote: RemoteArgs) -> ExitCode {
    block_on(async move {
        let r = Remote::new(&remote);
        let path = format!("/v1/experiments/{name}/{verb}");
        match r
            .call(
                Method::POST,
                &path,
                body.map(|b| (b, "application/json")),
                None,
            )
            .await
        {
            Ok(reply) => {
                // `{}` when the experiment is gone by the time the view is read.
                let view: Option<ExperimentView> =
                    serde_json::from_value(reply.body["experiment"].clone()).ok();
                println!(
                    "{verb}: {name} is now {} (decision {})",
                    view.as_ref().map_or("?", |v| v.state.as_str()),
                    reply.body["decision_id"]
                );
                if let Some(v) = &view {
                    print!("{}", render_status(std::slice::from_ref(v)));
                }
                ExitCode::SUCCESS
            }
            Err(f) => f.exit(),
        }
    })
}

pub fn config(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Get { remote } => block_on(async move {
            match Remote::new(&remote)
                .call(Method::GET, "/v1/config", None, None)
                .await
            {
                Ok(reply) => {
                    eprintln!("# version {}", reply.body["version"]);
                    print!("{}", reply.body["text"].as_str().unwrap_or(""));
                    ExitCode::SUCCESS
                }
                Err(f) => f.exit(),
            }
        }),
        ConfigCommand::Apply { file, remote } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: cannot read: {e}", file.display());
                    return ExitCode::from(1);
                }
            };
            // Validate locally first: the same validator the server runs.
            if let Err(errors) = config::parse(&text) {
                for e in &errors.0 {
                    let line = e.line.map(|l| format!("{l}:")).unwrap_or_default();
                    eprintln!("{}:{line} {}: {}", file.display(), e.path, e.message);
                }
                eprintln!(
                    "{}: {} error(s); nothing was sent",
                    file.display(),
                    errors.0.len()
                );
                return ExitCode::from(1);
            }
            block_on(async move {
                let r = Remote::new(&remote);
                let current = match r.call(Method::GET, "/v1/config", None, None).await {
                    // The ETag is the version to send back in If-Match.
                    Ok(reply) => reply
                        .etag
                        .and_then(|e| e.parse().ok())
                        .or_else(|| reply.body["version"].as_u64())
                        .unwrap_or(0),
                    Err(f) => return f.exit(),
                };
                match r
                    .call(
                        Method::PUT,
                        "/v1/config",
                        Some((text, "application/yaml")),
                        Some(current),
                    )
                    .await
                {
                    Ok(reply) => {
                        println!(
                            "applied {} as config version {}",
                            file.display(),
                            reply.body["version"]
                        );
                        ExitCode::SUCCESS
                    }
                    Err(f) => f.exit(),
                }
            })
        }
    }
}
