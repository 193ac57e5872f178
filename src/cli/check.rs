//! `abgate check FILE...`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, percent, Config, LoadError};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Config files to validate.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: CheckArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.files {
        match config::load(path) {
            Ok((c, _)) => println!("{}: ok: {}", path.display(), summary(&c)),
            Err(LoadError::Io { path, source }) => {
                eprintln!("{path}: cannot read: {source}");
                failed = true;
            }
            Err(LoadError::Invalid { path, errors }) => {
                for e in &errors.0 {
                    match e.line {
                        Some(line) => {
                            eprintln!("{path}:{line}: {}: {}", display_path(&e.path), e.message)
                        }
                        None => eprintln!("{path}: {}: {}", display_path(&e.path), e.message),
                    }
                }
                eprintln!("{path}: {} error(s)", errors.0.len());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn display_path(p: &str) -> &str {
    if p.is_empty() {
        "(document)"
    } else {
        p
    }
}

fn summary(c: &Config) -> String {
    let exps: Vec<String> = c
        .experiments
        .iter()
        .map(|e| {
            let arms: Vec<String> = e
                .arms
                .iter()
                .map(|a| format!("{} {}%", a.name, percent(a.weight)))
                .chain(
                    e.shadows
                        .iter()
                        .map(|s| format!("{} shadow {}%", s.arm.name, percent(s.percent))),
                )
                .collect();
            format!("{} ({})", e.name, arms.join(", "))
        })
        .collect();
    format!(
        "{} backend(s), {} experiment(s){}{}",
        c.backends.len(),
        c.experiments.len(),
        if exps.is_empty() { "" } else { ": " },
        exps.join("; ")
    )
}
