//! The control plane: the only writer of routing tables.
//!
//! Owns: validating config changes (file, SIGHUP, API), manual experiment actions,
//! layering each experiment's recorded state over the config, recording every
//! change in the store *before* it goes live, and publishing the result with one
//! `ArcSwap` store. Changes are serialized by one async mutex; the request path
//! never waits for it.

pub mod actions;
mod automatic;
pub mod view;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::config::{self, Config, ConfigErrors};
use crate::server::Shared;
use crate::store::{ConfigRecord, ExperimentState, Store, StoreError};

pub use actions::{Action, ActionError};

/// The config in force and what the store says about each experiment.
pub(crate) struct Current {
    config_version: u64,
    text: String,
    config: Config,
    states: HashMap<String, ExperimentState>,
}

pub struct ControlPlane {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    /// The watched config file, if the server was started from one.
    pub config_path: Option<PathBuf>,
    current: tokio::sync::Mutex<Current>,
    /// The controller's latest analysis per experiment (for people to read).
    analysis: dashmap::DashMap<String, serde_json::Value>,
    /// Controller runs (experiment → JSON) published since the last snapshot.
    unsaved_runs: dashmap::DashMap<String, String>,
    /// Controller runs saved before this process started, each adopted (taken)
    /// by its experiment's controller on its first look.
    restored_runs: std::sync::Mutex<HashMap<String, String>>,
}

/// Why a config change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("config version {current} is current, not {expected}")]
    StaleVersion { current: u64, expected: u64 },
    #[error("invalid config:\n{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asked for a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Token name, `file`, `sighup`, `startup`.
    pub name: String,
    /// Remote address or file path.
    pub source: String,
}

/// SHA-256 of a config text, hex.
pub fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fingerprint of an experiment's arms as configured: when it changes, the
/// experimenter edited the arms and their edit replaces any recorded state.
pub fn arms_fingerprint(e: &config::Experiment) -> String {
    let mut h = Sha256::new();
    for a in &e.arms {
        h.update(format!(
            "{}\u{1f}{}\u{1f}{}\u{1e}",
            a.name, a.backend, a.weight
        ));
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The config with each experiment's recorded weights laid over it.
fn effective(config: &Config, states: &HashMap<String, ExperimentState>) -> Config {
    let mut c = config.clone();
    for e in &mut c.experiments {
        if let Some(w) = states.get(&e.name).and_then(|s| s.weights.as_ref()) {
            for a in &mut e.arms {
                a.weight = w.get(&a.name).copied().unwrap_or(0);
            }
        }
    }
    c
}

impl Current {
    /// The weights in force for one experiment: its configured weights with its
    /// recorded weights laid over them (the same rule as [`effective`], without
    /// rebuilding the whole config).
    pub(crate) fn weights_in_force(&self, name: &str) -> Option<crate::store::Weights> {
        let e = self.config.experiment(name)?;
        let recorded = self.states.get(name).and_then(|s| s.weights.as_ref());
        Some(
            e.arms
                .iter()
                .map(|a| {
                    let w = match recorded {
                        Some(w) => w.get(&a.name).copied().unwrap_or(0),
                        None => a.weight,
                    };
                    (a.name.clone(), w)
                })
                .collect(),
        )
    }
}

/// Keeps only states whose experiment still exists with the same arms.
fn retain_matching(
    config: &Config,
    states: &mut HashMap<String, ExperimentState>,
    store: &dyn Store,
) {
    states.retain(|name, s| {
        let keep = config
            .experiment(name)
            .is_some_and(|e| arms_fingerprint(e) == s.arms_fingerprint);
        if !keep {
            tracing::warn!(
                experiment = %name,
                phase = ?s.phase,
                "the config changed this experiment's arms; its recorded state is replaced by the config"
            );
            if let Err(e) = store.clear_state(name) {
                tracing::error!(error = %e, "cannot clear recorded experiment state");
            }
        }
        keep
    });
}

impl ControlPlane {
    /// Restores the recorded state (or seeds it from `file_text` on the first run),
    /// re-applies decisions recorded but not yet applied, and publishes the table.
    pub fn restore(
        shared: Arc<Shared>,
        store: Arc<dyn Store>,
        config_path: Option<PathBuf>,
        file_text: String,
        file_config: Config,
    ) -> Result<ControlPlane, StoreError> {
        let (config_version, text, config) = match store.latest_config()? {
            Some(rec) => match config::parse(&rec.text) {
                Ok(c) => {
                    if rec.hash != text_hash(&file_text) {
                        tracing::warn!(
                            version = rec.version,
                            "the config file differs from the recorded config; the recorded state wins \
                             (a restart never undoes a change). To apply the file: `abgate config apply FILE`, \
                             or start with an empty state_dir to reset"
                        );
                    }
                    (rec.version, rec.text, c)
                }
                Err(errors) => {
                    tracing::error!(%errors, "the recorded config no longer validates; using the file");
                    (rec.version + 1, file_text, file_config)
                }
            },
            None => (1, file_text, file_config),
        };
        store.record_config(&ConfigRecord {
            version: config_version,
            hash: text_hash(&text),
            text: text.clone(),
            applied_at_ms: now_ms(),
            actor: "startup".into(),
            source: config_path
                .as_ref()
                .map_or_else(|| "inline".into(), |p| p.display().to_string()),
        })?;
        let mut states: HashMap<String, ExperimentState> = store
            .states()?
            .into_iter()
            .map(|s| (s.experiment.clone(), s))
            .collect();
        // Write-ahead: a decision recorded but not marked applied (a crash between
        // the two) is applied now, once; applying it again is idempotent.
        for d in store.unapplied_decisions()? {
            if let Some(e) = config.experiment(&d.experiment) {
                let state = actions::state_after(
                    &d.kind,
                    e,
                    &d.to_weights,
                    &d.reason,
                    states.get(&d.experiment),
                );
                store.save_state(&state)?;
                states.insert(d.experiment.clone(), state);
                tracing::info!(id = d.id, experiment = %d.experiment, kind = %d.kind, "applied a decision recorded before a restart");
            }
            store.mark_applied(d.id)?;
        }
        retain_matching(&config, &mut states, store.as_ref());
        let restored_runs = store.controller_runs()?.into_iter().collect();
        shared.apply(&effective(&config, &states));
        Ok(ControlPlane {
            shared,
            store,
            config_path,
            current: tokio::sync::Mutex::new(Current {
                config_version,
                text,
                config,
                states,
            }),
            analysis: dashmap::DashMap::new(),
            unsaved_runs: dashmap::DashMap::new(),
            restored_runs: std::sync::Mutex::new(restored_runs),
        })
    }

    /// Validates `text` whole and, if valid, records and applies it.
    /// `expected_version` implements If-Match for the API.
    pub async fn apply_text(
        &self,
        text: String,
        actor: &Actor,
        expected_version: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let source_label = match actor.name.as_str() {
            "file" | "sighup" => actor.name.clone(),
            _ => "api".to_string(),
        };
        let result = self.apply_text_inner(text, actor, expected_version).await;
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.shared
            .telemetry
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

    async fn apply_text_inner(
        &self,
        text: String,
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
        let config = config::parse(&text).map_err(ApplyError::Invalid)?;
        if config.listen != cur.config.listen || config.admin.listen != cur.config.admin.listen {
            tracing::warn!("listen addresses changed; they take effect after a restart");
        }
        let version = cur.config_version + 1;
        self.store.record_config(&ConfigRecord {
            version,
            hash: text_hash(&text),
            text: text.clone(),
            applied_at_ms: now_ms(),
            actor: actor.name.clone(),
            source: actor.source.clone(),
        })?;
        let mut states = std::mem::take(&mut cur.states);
        retain_matching(&config, &mut states, self.store.as_ref());
        self.shared.apply(&effective(&config, &states));
        // Renewed certificates take effect for new connections.
        if let Err(e) = self.shared.reload_tls(&config) {
            tracing::warn!(error = %e, "listener certificate not reloaded; the previous one stays in use");
        }
        *cur = Current {
            config_version: version,
            text,
            config,
            states,
        };
        Ok(version)
    }

    /// Re-reads the watched config file (file watch and SIGHUP).
    pub async fn reload_file(&self, actor_name: &str) -> Result<u64, ApplyError> {
        let Some(path) = &self.config_path else {
            return Err(ApplyError::Invalid(ConfigErrors(vec![
                config::ConfigError {
                    path: String::new(),
                    line: None,
                    message: "the server was not started from a file".into(),
                },
            ])));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ApplyError::Invalid(ConfigErrors(vec![config::ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }]))
        })?;
        {
            let cur = self.current.lock().await;
            if text_hash(&text) == text_hash(&cur.text) {
                return Ok(cur.config_version);
            }
        }
        let actor = Actor {
            name: actor_name.to_string(),
            source: path.display().to_string(),
        };
        self.apply_text(text, &actor, None).await
    }

    /// The config text and version in force.
    pub async fn config_text(&self) -> (u64, String) {
        let cur = self.current.lock().await;
        (cur.config_version, cur.text.clone())
    }
}
