//! The control plane: the only writer of routing tables.
//!
//! Owns, by file: [`apply`] validates config changes (file, SIGHUP, API);
//! [`actions`] runs manual experiment actions; [`decision`] is the write-ahead
//! path every change takes (record it in the store *before* it goes live);
//! [`publish`] is the one place that builds and swaps the routing table;
//! [`history`] reads the config history back (and reverts it) and tells an
//! experiment's lineage; [`cohorts`] keeps each experiment's weight history and the bucket layout it
//! replays to; [`view`] answers what people read; [`series`] keeps each
//! experiment's history over time and [`events`] streams it live; [`watch`] re-reads the config file;
//! [`controller`] runs the experiments automatically through [`automatic`].
//! Here: the control plane's state (the config in force and each experiment's
//! recorded state laid over it) and its restore at startup.
//!
//! Changes are serialised by one async mutex around [`Current`], which owns the
//! [`publish::Publisher`]; the request path never waits for it. Store calls run
//! on the blocking pool ([`ControlPlane::blocking`]), never on the async
//! workers that also serve client connections.

pub mod actions;
pub mod apply;
mod automatic;
mod cohorts;
pub mod controller;
pub mod decision;
pub mod events;
pub mod fleet;
pub mod history;
pub mod publish;
pub mod series;
pub mod view;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::config::{self, Config};
use crate::outcomes::RecorderRegistry;
use crate::proxy::plane::DataPlane;
use crate::store::{ConfigRecord, ExperimentPhase, ExperimentState, Store, StoreError};
use crate::telemetry::Telemetry;

pub use actions::{Action, ActionError};
pub use apply::{ApplyError, IfMatch};
pub use decision::DecisionKind;
use publish::Publisher;

/// The config in force, what the store says about each experiment, and the
/// publisher: whoever holds this (behind the control plane's lock) is the only
/// one who can change what requests see.
pub(crate) struct Current {
    config_version: u64,
    text: String,
    config: Config,
    states: HashMap<String, ExperimentState>,
    /// SHA-256 of the config file's text as abgate last read it (at startup or
    /// by a reload), whether or not it was applied: a reload applies the file
    /// only when this changes (see [`apply`]).
    file_hash: Option<String>,
    /// Each experiment's weight history, replayed to its bucket layout.
    cohorts: cohorts::Cohorts,
    publisher: Publisher,
}

pub struct ControlPlane {
    /// The data plane, read here only to describe the table in force.
    pub plane: Arc<DataPlane>,
    pub recorders: Arc<RecorderRegistry>,
    pub telemetry: Arc<Telemetry>,
    pub store: Arc<dyn Store>,
    /// The watched config file, if the server was started from one.
    pub config_path: Option<PathBuf>,
    current: tokio::sync::Mutex<Current>,
    /// The controller's latest analysis per experiment (for people to read).
    analysis: dashmap::DashMap<String, serde_json::Value>,
    /// Controller runs (experiment → JSON) published since the last snapshot.
    unsaved_runs: dashmap::DashMap<String, String>,
    /// Each arm's counts as last saved: a snapshot writes only the rows that
    /// changed (most arms of many experiments are idle in any one second).
    saved_rows: std::sync::Mutex<HashMap<(String, String), String>>,
    /// How many snapshots have taken `unsaved_runs` (see `runs_taken`).
    runs_taken: std::sync::atomic::AtomicU64,
    /// Controller runs saved before this process started, each adopted (taken)
    /// by its experiment's controller on its first look.
    restored_runs: std::sync::Mutex<HashMap<String, String>>,
    /// The label sets of `abgate_arm_model_info` last set to 1 (experiment,
    /// arm, backend, model), so one no longer configured reads 0.
    model_info: std::sync::Mutex<Vec<[String; 4]>>,
    /// The label sets of `abgate_arm_role` last set to 1 (experiment, arm, role).
    role_info: std::sync::Mutex<Vec<[String; 3]>>,
    /// Each experiment's history over time (analysis points, per-arm rates).
    pub series: series::SeriesBook,
    /// Live updates for `GET /v1/events`.
    pub events: events::EventHub,
    /// Each drift watch's latest view (for people to read).
    watch_views: dashmap::DashMap<String, serde_json::Value>,
    /// The admin listener's base URL once bound (`http://127.0.0.1:9901`),
    /// for links handed to webhooks.
    admin_url: std::sync::OnceLock<String>,
    /// This replica's part in a fleet (a shared store); `None` with SQLite.
    pub(crate) fleet: Option<fleet::Fleet>,
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

/// The config with each experiment's recorded weights laid over it, and a
/// canary in its shadow step mirrored to its candidate.
fn effective(config: &Config, states: &HashMap<String, ExperimentState>) -> Config {
    let mut c = config.clone();
    for e in &mut c.experiments {
        let state = states.get(&e.name);
        if let Some(w) = state.and_then(|s| s.weights.as_ref()) {
            for a in &mut e.arms {
                a.weight = w.get(&a.name).copied().unwrap_or(0);
            }
        }
        add_step_shadow(e, state);
    }
    c
}

/// In a canary's shadow step (running or paused), its candidate's backend is
/// also a shadow arm ([`config::step_shadow_name`]), mirrored as the step
/// says, while the candidate serves nobody (its live weight is 0). Once the
/// canary goes live or ends, the step's shadow is gone with it.
pub(crate) fn add_step_shadow(e: &mut config::Experiment, state: Option<&ExperimentState>) {
    let Some((candidate, mirror)) = step_shadow(e, state) else {
        return;
    };
    let name = config::step_shadow_name(&candidate.name);
    if e.shadows.iter().any(|s| s.arm.name == name) {
        return;
    }
    let arm = config::Arm {
        name,
        weight: 0,
        ..candidate.clone()
    };
    e.shadows.push(config::ShadowArm::new(arm, mirror));
}

/// The candidate a canary's shadow step mirrors, and how, while the
/// experiment is in that step (running or paused).
pub(crate) fn step_shadow<'e>(
    e: &'e config::Experiment,
    state: Option<&ExperimentState>,
) -> Option<(&'e config::Arm, config::Mirror)> {
    let state = state?;
    if !matches!(
        state.phase,
        ExperimentPhase::Running | ExperimentPhase::Paused
    ) {
        return None;
    }
    let mirror = e
        .policy
        .as_ref()
        .zip(state.step)
        .and_then(|(p, i)| p.steps.get(i))
        .and_then(|s| s.mirror())?;
    let candidate = e.arms.iter().find(|a| a.name != e.baseline)?;
    Some((candidate, mirror))
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

/// Removes the states whose experiment is gone or whose arms the config
/// changed (the experimenter's edit replaces the recorded state); returns the
/// removed experiments' names, whose stored states the caller clears.
fn drop_stale(config: &Config, states: &mut HashMap<String, ExperimentState>) -> Vec<String> {
    let mut stale = Vec::new();
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
            stale.push(name.clone());
        }
        keep
    });
    stale
}

/// Clears stored states; a failure is logged (the state is gone from memory
/// already, and the next start drops it again by the same rule).
fn clear_states(store: &dyn Store, names: &[String]) {
    for name in names {
        if let Err(e) = store.clear_state(name) {
            tracing::error!(error = %e, experiment = %name, "cannot clear recorded experiment state");
        }
    }
}

impl ControlPlane {
    /// Restores the recorded state (or seeds it from `file_text` on the first run),
    /// re-applies decisions recorded but not yet applied, and publishes the table.
    /// Blocking (store reads and writes): run it on a blocking thread.
    pub fn restore(
        mut publisher: Publisher,
        handles: PlaneHandles,
        store: Arc<dyn Store>,
        config_path: Option<PathBuf>,
        file_text: String,
        file_config: Config,
    ) -> Result<ControlPlane, StoreError> {
        // What abgate read of the file at startup: the watcher compares later
        // reads with it, never with the recorded config that may have won here.
        let file_hash = config_path.as_ref().map(|_| text_hash(&file_text));
        // `fresh`: a version this start creates (the first run, or a recorded
        // config that no longer validates). A recorded version is not recorded
        // again: that would overwrite who applied it and when.
        let (config_version, text, config, fresh) = match store.latest_config()? {
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
                    (rec.version, rec.text, c, false)
                }
                Err(errors) => {
                    tracing::error!(%errors, "the recorded config no longer validates; using the file");
                    (rec.version + 1, file_text, file_config, true)
                }
            },
            None => (1, file_text, file_config, true),
        };
        if fresh {
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
        }
        let mut states: HashMap<String, ExperimentState> = store
            .states()?
            .into_iter()
            .map(|s| (s.experiment.clone(), s))
            .collect();
        // Write-ahead: a decision recorded but not marked applied (a crash between
        // the two) is applied now, once; applying it again is idempotent.
        for d in store.unapplied_decisions()? {
            if let Some(e) = config.experiment(&d.experiment) {
                let state = decision::state_of_unapplied(&d, e, states.get(&d.experiment));
                store.save_state(&state)?;
                states.insert(d.experiment.clone(), state);
                tracing::info!(id = d.id, experiment = %d.experiment, kind = %d.kind, "applied a decision recorded before a restart");
            }
            store.mark_applied(d.id)?;
        }
        let stale = drop_stale(&config, &mut states);
        clear_states(store.as_ref(), &stale);
        let restored_runs = store.controller_runs()?.into_iter().collect();
        let series = series::SeriesBook::restore(store.series()?);
        // Replay the weight histories; record what the restored weights add
        // (a crash between a change's record and its history step) first.
        let (mut cohorts, gone) = cohorts::replay(&config, store.weight_steps()?);
        for name in &gone {
            store.clear_weight_steps(name)?;
        }
        let in_force = effective(&config, &states);
        let changes = cohorts::plan(&cohorts, &in_force);
        cohorts::record(store.as_ref(), &changes)?;
        cohorts::apply(&mut cohorts, &changes, &in_force);
        publisher.publish(&in_force, |n| cohorts.get(n).map(|h| &h.layout));
        let fleet = store.fleet().map(fleet::Fleet::new);
        Ok(ControlPlane {
            plane: handles.plane,
            recorders: handles.recorders,
            telemetry: handles.telemetry,
            store,
            config_path,
            current: tokio::sync::Mutex::new(Current {
                config_version,
                text,
                config,
                states,
                file_hash,
                cohorts,
                publisher,
            }),
            analysis: dashmap::DashMap::new(),
            model_info: std::sync::Mutex::new(Vec::new()),
            role_info: std::sync::Mutex::new(Vec::new()),
            unsaved_runs: dashmap::DashMap::new(),
            saved_rows: std::sync::Mutex::new(HashMap::new()),
            runs_taken: std::sync::atomic::AtomicU64::new(0),
            watch_views: dashmap::DashMap::new(),
            admin_url: std::sync::OnceLock::new(),
            restored_runs: std::sync::Mutex::new(restored_runs),
            fleet,
            series,
            events: events::EventHub::default(),
        })
    }

    /// Publishes `in_force` (the config with the recorded weights laid over):
    /// first records the weight-history steps it adds (write-ahead, so a
    /// restart replays exactly the layout that was routed), then builds and
    /// swaps the table laid out by the replayed histories.
    pub(crate) async fn commit(
        &self,
        cohorts: &mut cohorts::Cohorts,
        publisher: &mut Publisher,
        in_force: &Config,
    ) -> Result<u64, StoreError> {
        let changes = cohorts::plan(cohorts, in_force);
        if !changes.is_empty() {
            let recorded = changes.clone();
            self.blocking(move |s| cohorts::record(s, &recorded))
                .await?;
        }
        cohorts::apply(cohorts, &changes, in_force);
        Ok(publisher.publish(in_force, |n| cohorts.get(n).map(|h| &h.layout)))
    }

    /// Runs a store call on the blocking pool. SQLite takes a mutex and syncs
    /// to disk; doing that on an async worker would stall every connection that
    /// worker serves. A panic in the call is resumed here.
    pub async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        off_thread(move || call(store.as_ref())).await
    }
}

/// Runs blocking work (disk, SQLite) on tokio's blocking pool and waits for
/// it. A panic in the work is resumed in the caller, as if it had run inline:
/// a `JoinError` would otherwise turn a bug into a value someone must handle.
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What the control plane reads of the data plane and the recorders.
pub struct PlaneHandles {
    pub plane: Arc<DataPlane>,
    pub recorders: Arc<RecorderRegistry>,
    pub telemetry: Arc<Telemetry>,
}
