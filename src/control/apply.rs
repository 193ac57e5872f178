//! Applying a whole config: from the API, the watched file or SIGHUP.
//!
//! Owns: `If-Match` on the config version, validation (the one validator,
//! `config::parse`), recording the new version in the store before it goes
//! live, dropping recorded state the edit replaced, and publishing.
//!
//! Never: applies a config that failed validation: the running table stays.

use std::path::PathBuf;

use super::{clear_states, drop_stale, effective, text_hash, Actor, ControlPlane, Current};
use crate::clock::now_ms;
use crate::config::{self, Config, ConfigErrors};
use crate::store::{ConfigRecord, StoreError};

/// Why a config change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("config version {current} is current, not {expected}")]
    StaleVersion { current: u64, expected: u64 },
    #[error("invalid config:\n{0}")]
    Invalid(ConfigErrors),
    #[error("the server was not started from a config file")]
    NoConfigFile,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControlPlane {
    /// Validates `text` whole and, if valid, records and applies it.
    /// `expected_version` implements If-Match for the API.
    pub async fn apply_text(
        &self,
        text: String,
        actor: &Actor,
        expected_version: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let parsed = config::parse(&text).map_err(ApplyError::Invalid);
        self.apply_counted(text, parsed, actor, expected_version)
            .await
    }

    /// Applies an already validated config (or reports why it is not), and
    /// counts the attempt in `abgate_config_reload_total{result,source}`.
    async fn apply_counted(
        &self,
        text: String,
        parsed: Result<Config, ApplyError>,
        actor: &Actor,
        expected_version: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let source_label = match actor.name.as_str() {
            "file" | "sighup" => actor.name.clone(),
            _ => "api".to_string(),
        };
        let result = match parsed {
            Ok(config) => {
                self.apply_valid(text, config, actor, expected_version)
                    .await
            }
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.telemetry
            .counter(
                "abgate_config_reload_total",
                &[("result", outcome), ("source", &source_label)],
            )
            .increment(1);
        match &result {
            Ok(v) => tracing::info!(version = v, actor = %actor.name, "config applied"),
            Err(e) => {
                tracing::warn!(actor = %actor.name, error = %e, "config change rejected; the running table stays")
            }
        }
        result
    }

    async fn apply_valid(
        &self,
        text: String,
        config: Config,
        actor: &Actor,
        expected_version: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let mut cur = self.current.lock().await;
        if let Some(expected) = expected_version {
            if expected != cur.config_version {
                return Err(ApplyError::StaleVersion {
                    current: cur.config_version,
                    expected,
                });
            }
        }
        if config.listen != cur.config.listen || config.admin.listen != cur.config.admin.listen {
            tracing::warn!("listen addresses changed; they take effect after a restart");
        }
        let version = cur.config_version + 1;
        let record = ConfigRecord {
            version,
            hash: text_hash(&text),
            text: text.clone(),
            applied_at_ms: now_ms(),
            actor: actor.name.clone(),
            source: actor.source.clone(),
        };
        self.blocking(move |s| s.record_config(&record)).await?;
        let stale = drop_stale(&config, &mut cur.states);
        if !stale.is_empty() {
            self.blocking(move |s| clear_states(s, &stale)).await;
        }
        let Current {
            publisher, states, ..
        } = &mut *cur;
        publisher.publish(&effective(&config, states));
        // Renewed certificates take effect for new connections.
        if let Err(e) = publisher.reload_tls(&config) {
            tracing::warn!(error = %e, "listener certificate not reloaded; the previous one stays in use");
        }
        cur.config_version = version;
        cur.text = text;
        cur.config = config;
        Ok(version)
    }

    /// Re-reads the watched config file (file watch and SIGHUP); an unchanged
    /// file changes nothing.
    pub async fn reload_file(&self, actor_name: &str) -> Result<u64, ApplyError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApplyError::NoConfigFile);
        };
        let read_path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&read_path))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let (parsed, text) = match loaded {
            Ok((config, text)) => (Ok(config), text),
            Err(config::LoadError::Io { source, .. }) => {
                return Err(ApplyError::Read { path, source });
            }
            // The text in force always validates, so an invalid file differs.
            Err(config::LoadError::Invalid { errors, .. }) => {
                (Err(ApplyError::Invalid(errors)), String::new())
            }
        };
        if parsed.is_ok() {
            let cur = self.current.lock().await;
            if text_hash(&text) == text_hash(&cur.text) {
                return Ok(cur.config_version);
            }
        }
        let actor = Actor {
            name: actor_name.to_string(),
            source: path.display().to_string(),
        };
        self.apply_counted(text, parsed, &actor, None).await
    }

    /// The config text and version in force.
    pub async fn config_text(&self) -> (u64, String) {
        let cur = self.current.lock().await;
        (cur.config_version, cur.text.clone())
    }
}
