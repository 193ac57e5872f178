//! `abgate analyze FILE|-`: re-check any decision offline from exported statistics.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::stats::{analyze_json, render_table};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Json,
    Table,
}

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Statistics JSON (as exported by GET /v1/experiments/{name}/export), or `-` for stdin.
    input: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
}

pub fn run(args: AnalyzeArgs) -> ExitCode {
    let name = args.input.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(&args.input)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    match analyze_json(&text) {
        Ok(out) => {
            match args.format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("a JSON value serializes")
                ),
                Format::Table => print!("{}", render_table(&out)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}
