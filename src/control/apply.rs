//! Applying a whole config: from the API, the watched file or SIGHUP.
//!
//! Owns: the `If-Match` comparison on the config version (under the lock, so
//! no change slips in between), validation (the one validator,
//! `config::parse`), recording the new version in the store before it goes
//! live, dropping recorded state the edit replaced, and publishing; and the
//! precedence rule between the file and the API.
//!
//! Precedence: the file is the source of truth only for what it changes. A
//! reload applies the file only when the file's *own* content changed since
//! abgate last read it (its hash is compared with the last file text read, not
//! with the text in force), so an API change, a manual action or a controller
//! decision stays until the file is edited again; reading the file, or
//! re-asserting the same bytes, changes nothing.
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
    #[error("If-Match {given} does not name config version {current}, the one in force")]
    StaleVersion { current: u64, given: String },
    #[error("invalid config:\n{0}")]
    Invalid(ConfigErrors),
    #[error("the server was not started from a config file")]
    NoConfigFile,
    /// A revert named a version that is not (or no longer) kept.
    #[error("no config version {version} is kept; {}", super::history::kept_range(*.kept))]
    UnknownVersion {
        version: u64,
        kept: Option<(u64, u64)>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An `If-Match` precondition (RFC 9110 §13.1.1) on the config version,
/// compared under the control plane's lock. The config's entity-tag is
/// `"<version>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current config matches (there always is one).
    Any,
    /// The strong entity-tags listed, as their opaque text between the quotes.
    /// Weak tags are not kept: the comparison is strong, so they never match.
    Tags(Vec<String>),
}

impl IfMatch {
    /// The precondition "version `v` is in force".
    pub fn version(v: u64) -> IfMatch {
        IfMatch::Tags(vec![v.to_string()])
    }

    /// Strong comparison: a tag matches only if its text is exactly the
    /// version's (`"01"` does not match version 1).
    pub fn matches(&self, version: u64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => {
                let v = version.to_string();
                tags.contains(&v)
            }
        }
    }
}

impl std::fmt::Display for IfMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IfMatch::Any => f.write_str("*"),
            IfMatch::Tags(tags) if tags.is_empty() => f.write_str("(only weak tags)"),
            IfMatch::Tags(tags) => {
                let quoted: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
                f.write_str(&quoted.join(", "))
            }
        }
    }
}

impl ControlPlane {
    /// Validates `text` whole and, if valid, records and applies it.
    /// `precondition` is the API's If-Match, compared under the lock.
    pub async fn apply_text(
        &self,
        text: String,
        actor: &Actor,
        precondition: Option<IfMatch>,
    ) -> Result<u64, ApplyError> {
        let parsed = config::parse(&text).map_err(ApplyError::Invalid);
        let mut cur = self.change().await?;
        self.apply_counted(&mut cur, text, parsed, actor, precondition.as_ref())
            .await
    }

    /// Applies an already validated config (or reports why it is not), and
    /// counts the attempt in `abgate_config_reload_total{result,source}`.
    async fn apply_counted(
        &self,
        cur: &mut Current,
        text: String,
        parsed: Result<Config, ApplyError>,
        actor: &Actor,
        precondition: Option<&IfMatch>,
    ) -> Result<u64, ApplyError> {
        let result = match parsed {
            Ok(config) => {
                self.apply_valid(cur, text, config, actor, precondition)
                    .await
            }
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.count_reload(outcome, &actor.name);
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
        cur: &mut Current,
        text: String,
        config: Config,
        actor: &Actor,
        precondition: Option<&IfMatch>,
    ) -> Result<u64, ApplyError> {
        if let Some(p) = precondition {
            if !p.matches(cur.config_version) {
                return Err(ApplyError::StaleVersion {
                    current: cur.config_version,
                    given: p.to_string(),
                });
            }
        }
        if config.listen != cur.config.listen || config.admin.listen != cur.config.admin.listen {
            tracing::warn!("listen addresses changed; they take effect after a restart");
        }
        if config.store != cur.config.store {
            // The store holds this very version: it cannot move under it.
            tracing::warn!("store changed; it takes effect after a restart");
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
            publisher,
            states,
            cohorts,
            ..
        } = cur;
        self.commit(cohorts, publisher, &effective(&config, states))
            .await?;
        // Renewed certificates take effect for new connections.
        if let Err(e) = publisher.reload_tls(&config) {
            tracing::warn!(error = %e, "listener certificate not reloaded; the previous one stays in use");
        }
        cur.config_version = version;
        cur.text = text;
        cur.config = config;
        Ok(version)
    }

    /// Re-reads the watched config file (file watch and SIGHUP) and applies
    /// it only if its content changed since abgate last read it (see the
    /// module doc); an unchanged file is counted as `unchanged` and changes
    /// nothing. Returns the version in force afterwards.
    pub async fn reload_file(&self, actor_name: &str) -> Result<u64, ApplyError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApplyError::NoConfigFile);
        };
        // Held across the read: two reloads (the watcher and a SIGHUP) must not
        // interleave, or an older read could be applied after a newer one.
        let mut cur = self.change().await?;
        let read_path = path.clone();
        let loaded = super::off_thread(move || std::fs::read_to_string(&read_path)).await;
        let text = loaded.map_err(|source| ApplyError::Read {
            path: path.clone(),
            source,
        })?;
        let hash = text_hash(&text);
        if cur.file_hash.as_deref() == Some(hash.as_str()) {
            self.count_reload("unchanged", actor_name);
            return Ok(cur.config_version);
        }
        // Remembered whatever the outcome: an invalid file is reported once,
        // not again on every later look at the same bytes.
        cur.file_hash = Some(hash.clone());
        if hash == text_hash(&cur.text) {
            // The file now says what is already in force (e.g. the operator
            // wrote an API change back into it): nothing to apply.
            self.count_reload("unchanged", actor_name);
            return Ok(cur.config_version);
        }
        let parsed = config::parse(&text).map_err(ApplyError::Invalid);
        let actor = Actor {
            name: actor_name.to_string(),
            source: path.display().to_string(),
        };
        self.apply_counted(&mut cur, text, parsed, &actor, None)
            .await
    }

    fn count_reload(&self, result: &str, actor_name: &str) {
        let source = match actor_name {
            "file" | "sighup" => actor_name,
            _ => "api",
        };
        self.telemetry
            .counter(
                "abgate_config_reload_total",
                &[("result", result), ("source", source)],
            )
            .increment(1);
    }

    /// The config text and version in force.
    pub async fn config_text(&self) -> (u64, String) {
        let cur = self.current.lock().await;
        (cur.config_version, cur.text.clone())
    }
}
