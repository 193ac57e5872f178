//! Configuration: the only place that reads config text.
//!
//! Owns: parsing YAML/JSON into a validated [`Config`], reporting every problem
//! at once with its path and line, including what the statistics engine would
//! refuse (see [`policy`]). Never: touches sockets or routing state.

mod capture;
mod decode;
pub mod model;
pub mod pem;
pub mod policy;
pub mod redact;
mod schema;
mod secret;
mod store;
mod watch;
pub mod yaml;

use std::path::Path;

pub use decode::{parse_duration, ConfigError, ConfigErrors};
pub use model::*;
pub use policy::{stats_policy, uses_events};
pub use redact::redact;
pub use schema::{percent, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN};

/// Parses and validates config text (YAML or JSON), resolving the secrets
/// backend headers refer to (`${file:...}`, `${env:...}`): a missing file or
/// variable is an error naming the key.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, true)
}

/// As [`parse`], without reading any secret: header references are checked
/// for syntax only and their values left `None`. For texts that are only
/// looked at (the config history, the lineage, a client-side check), never
/// for a config that is served.
pub fn parse_unresolved(text: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, false)
}

fn parse_with(text: &str, resolve_secrets: bool) -> Result<Config, ConfigErrors> {
    let root = yaml::parse(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: Some(e.line),
            message: format!("YAML syntax error at column {}: {}", e.column, e.message),
        }])
    })?;
    let mut decoder = decode::Decoder::default();
    decoder.resolve_secrets = resolve_secrets;
    let config = schema::decode(&mut decoder, &root);
    decoder.finish()?;
    // With no errors recorded every decoder step returned Some.
    config.ok_or_else(|| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            line: None,
            message: "config could not be decoded".into(),
        }])
    })
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is invalid:\n{errors}")]
    Invalid { path: String, errors: ConfigErrors },
}

/// Reads and validates a config file; returns the config and its text.
pub fn load(path: &Path) -> Result<(Config, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let config = parse(&text).map_err(|errors| LoadError::Invalid {
        path: path.display().to_string(),
        errors,
    })?;
    Ok((config, text))
}

#[cfg(test)]
mod tests;
