//! `abgate pause|resume|rollback NAME`, `abgate promote NAME --arm ARM`,
//! `abgate config get|apply|history|diff|revert`.

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
    /// List the applied config versions, newest first.
    History {
        /// At most this many versions.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Only versions older than this one (the next page).
        #[arg(long)]
        before: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// A unified diff from version A to version B (secrets redacted); empty when equal.
    Diff {
        a: u64,
        b: u64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Apply version N's text again, as a new version (validated, guarded by If-Match).
    Revert {
        version: u64,
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
        ConfigCommand::History {
            limit,
            before,
            remote,
        } => block_on(async move {
            let mut path = format!("/v1/config/versions?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            match Remote::new(&remote)
                .call(Method::GET, &path, None, None)
                .await
            {
                Ok(reply) => {
                    print!("{}", render_history(&reply.body));
                    ExitCode::SUCCESS
                }
                Err(f) => f.exit(),
            }
        }),
        ConfigCommand::Diff { a, b, remote } => block_on(async move {
            let r = Remote::new(&remote);
            let mut texts = Vec::new();
            for v in [a, b] {
                match r
                    .call(Method::GET, &format!("/v1/config/versions/{v}"), None, None)
                    .await
                {
                    Ok(reply) => texts.push(reply.body["text"].as_str().unwrap_or("").to_string()),
                    Err(f) => return f.exit(),
                }
            }
            print!(
                "{}",
                super::diff::unified(
                    &format!("version {a}"),
                    &format!("version {b}"),
                    &texts[0],
                    &texts[1],
                    3
                )
            );
            ExitCode::SUCCESS
        }),
        ConfigCommand::Revert { version, remote } => block_on(async move {
            let r = Remote::new(&remote);
            let current = match current_version(&r).await {
                Ok(v) => v,
                Err(f) => return f.exit(),
            };
            match r
                .call(
                    Method::POST,
                    &format!("/v1/config/versions/{version}/revert"),
                    None,
                    Some(current),
                )
                .await
            {
                Ok(reply) => {
                    println!(
                        "reverted to version {version}: applied as config version {}",
                        reply.body["version"]
                    );
                    ExitCode::SUCCESS
                }
                Err(f) => f.exit(),
            }
        }),
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
            // Validate locally first: the same validator the server runs
            // (secret files and variables live on the server; it reads them).
            if let Err(errors) = config::parse_unresolved(&text) {
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
                let current = match current_version(&r).await {
                    Ok(v) => v,
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

/// The config version in force, to send back in If-Match.
async fn current_version(r: &Remote) -> Result<u64, super::remote::Failure> {
    let reply = r.call(Method::GET, "/v1/config", None, None).await?;
    // The ETag is the version to send back in If-Match.
    Ok(reply
        .etag
        .and_then(|e| e.parse().ok())
        .or_else(|| reply.body["version"].as_u64())
        .unwrap_or(0))
}

/// The history page as a table: version, time (UTC), actor, source, hash.
fn render_history(page: &serde_json::Value) -> String {
    let mut out = String::new();
    let versions = page["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push_str("no versions on this page\n");
    }
    for v in &versions {
        out.push_str(&format!(
            "{:>5}  {}  {:<12}  {:<24}  {}\n",
            v["version"],
            utc(v["applied_at_ms"].as_u64().unwrap_or(0)),
            v["actor"].as_str().unwrap_or(""),
            v["source"].as_str().unwrap_or(""),
            v["hash"].as_str().unwrap_or("").get(..12).unwrap_or("")
        ));
    }
    if let Some(next) = page["next_before"].as_u64() {
        out.push_str(&format!(
            "older versions: abgate config history --before {next}\n"
        ));
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SSZ` (proleptic Gregorian, UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_in_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(super::utc(1_764_288_000_123), "2025-11-28 00:00:00Z");
    }
}
