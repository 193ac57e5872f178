//! `abgate export NAME [--since T] [--until T]`: the experiment's training
//! data (every request with feedback, labels or corrections) as JSON Lines
//! on stdout, streamed from the admin API.

use std::process::ExitCode;

use super::remote::{block_on, Remote, RemoteArgs};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The experiment.
    name: String,
    /// Requests answered from then on: ms since the epoch, an RFC 3339
    /// time, or a duration ago (24h). Default: the beginning.
    #[arg(long)]
    since: Option<String>,
    /// Requests answered before then (same forms). Default: now.
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn run(args: ExportArgs) -> ExitCode {
    let mut query = Vec::new();
    for (k, v) in [("since", &args.since), ("until", &args.until)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    let path = format!(
        "/v1/experiments/{}/dataset{}{}",
        encode(&args.name),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let remote = Remote::new(&args.remote);
    block_on(async move {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        match remote.stream(&path, &mut out).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(f) => f.exit(),
        }
    })
}

/// Percent-encodes everything but unreserved characters (an RFC 3339
/// offset's `+` must not arrive as a space).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
