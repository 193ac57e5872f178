//! History people can read and undo: the applied config versions (listed,
//! shown redacted, reverted) and each experiment's lineage.
//!
//! Owns: reading the config history back from the store, the revert of a
//! version (its stored text goes through the same validator and `If-Match` as
//! a PUT, as a new version), and the lineage of an experiment: which arm (and
//! backend) was its baseline when, what each config version changed of it, and
//! which decision moved its traffic.
//!
//! Never: shows a secret (texts are redacted by `config::redact`), or rewrites
//! history (a revert appends a version; nothing is deleted).

use serde::Serialize;
use serde_json::{json, Value};

use super::apply::{ApplyError, IfMatch};
use super::{Actor, ControlPlane};
use crate::config::{self, redact};
use crate::store::{ConfigRecord, ConfigVersionInfo, Decision, StoreError};

/// The largest page of the config history.
pub const MAX_PAGE: usize = 1000;

/// One page of the config history, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct VersionsPage {
    pub versions: Vec<ConfigVersionInfo>,
    /// The oldest and newest versions kept (`null` before the first).
    pub oldest: Option<u64>,
    pub newest: Option<u64>,
    /// The `before` that reads the next (older) page, when there is one.
    pub next_before: Option<u64>,
}

/// Why a stored version cannot be shown or reverted.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("no config version {version} is kept; {}", kept_range(*.kept))]
    Unknown {
        version: u64,
        kept: Option<(u64, u64)>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// "versions 1..=7 are kept", for error details.
pub fn kept_range(kept: Option<(u64, u64)>) -> String {
    match kept {
        Some((a, b)) if a == b => format!("only version {a} is kept"),
        Some((a, b)) => format!("versions {a} to {b} are kept"),
        None => "no version is kept yet".to_string(),
    }
}

impl ControlPlane {
    /// A page of applied versions, newest first: below `before` (all when
    /// `None`), skipping `offset`, at most `limit` (capped at [`MAX_PAGE`]). A
    /// page past the end is empty.
    pub async fn config_versions(
        &self,
        before: Option<u64>,
        offset: usize,
        limit: usize,
    ) -> Result<VersionsPage, StoreError> {
        let limit = limit.min(MAX_PAGE);
        self.blocking(move |s| {
            // One more than asked tells whether an older page exists.
            let mut versions = s.config_versions(before, offset, limit + 1)?;
            let more = versions.len() > limit;
            versions.truncate(limit);
            let range = s.config_version_range()?;
            Ok(VersionsPage {
                next_before: if more {
                    versions.last().map(|v| v.version)
                } else {
                    None
                },
                versions,
                oldest: range.map(|r| r.0),
                newest: range.map(|r| r.1),
            })
        })
        .await
    }

    /// One applied version with its text redacted.
    pub async fn config_version(&self, version: u64) -> Result<ConfigRecord, VersionError> {
        let mut rec = self.stored_version(version).await?;
        rec.text = redact(&rec.text);
        Ok(rec)
    }

    async fn stored_version(&self, version: u64) -> Result<ConfigRecord, VersionError> {
        let (rec, kept) = self
            .blocking(move |s| {
                Ok::<_, StoreError>((s.config_version(version)?, s.config_version_range()?))
            })
            .await?;
        rec.ok_or(VersionError::Unknown { version, kept })
    }

    /// Applies version `version`'s stored text again, as a new version: the
    /// same validator and `If-Match` as a PUT, recorded with the actor and
    /// "revert of version N" as its source.
    pub async fn revert(
        &self,
        version: u64,
        actor: &Actor,
        precondition: Option<IfMatch>,
    ) -> Result<u64, ApplyError> {
        let rec = match self.stored_version(version).await {
            Ok(r) => r,
            Err(VersionError::Unknown { version, kept }) => {
                return Err(ApplyError::UnknownVersion { version, kept })
            }
            Err(VersionError::Store(e)) => return Err(ApplyError::Store(e)),
        };
        let actor = Actor {
            name: actor.name.clone(),
            source: format!("{} (revert of version {version})", actor.source),
        };
        self.apply_text(rec.text, &actor, precondition).await
    }

    /// The experiment's lineage, oldest first: every config version that
    /// introduced or changed its definition (baseline, arms, backends,
    /// weights) or removed it, and every decision about it. Each entry names
    /// the baseline arm and backend in force after it. `series`: the
    /// experiment's history over time (see [`super::series`]). `None` if the
    /// experiment is neither configured now nor in any kept version.
    pub async fn experiment_history(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let owned = name.to_string();
        let lineage_of = name.to_string();
        // The lineage parses every kept config version: on the blocking pool
        // with the reads, so a page asking for it never stalls an async
        // worker that serves traffic.
        let history = self
            .blocking(move |s| {
                let mut texts = Vec::new();
                let mut before = None;
                loop {
                    let page = s.config_versions(before, 0, 200)?;
                    let Some(last) = page.last() else { break };
                    before = Some(last.version);
                    for v in &page {
                        if let Some(rec) = s.config_version(v.version)? {
                            texts.push(rec);
                        }
                    }
                }
                texts.reverse();
                let mut d = s.decisions(Some(&owned), 10_000)?;
                d.reverse();
                Ok::<_, StoreError>(lineage(&lineage_of, &texts, &d))
            })
            .await?;
        let mut history = history;
        if let Some(Value::Object(m)) = &mut history {
            // Added to the lineage's fields, which stay as they were.
            m.insert("series".into(), self.series.json(name));
        }
        Ok(history)
    }
}

/// What one config version says about an experiment.
#[derive(PartialEq)]
struct Definition {
    baseline: String,
    baseline_backend: String,
    arms: Vec<(String, String, u32)>,
}

fn definition(text: &str, name: &str) -> Option<Definition> {
    // Only looked at: a secret a past version referred to is not read again.
    let c = config::parse_unresolved(text).ok()?;
    let e = c.experiment(name)?;
    Some(Definition {
        baseline: e.baseline.clone(),
        baseline_backend: e
            .arms
            .iter()
            .find(|a| a.name == e.baseline)
            .map(|a| a.backend.clone())
            .unwrap_or_default(),
        arms: e
            .arms
            .iter()
            .map(|a| (a.name.clone(), a.backend.clone(), a.weight))
            .collect(),
    })
}

fn lineage(name: &str, versions: &[ConfigRecord], decisions: &[Decision]) -> Option<Value> {
    let mut entries: Vec<(u64, u8, Value)> = Vec::new();
    let mut prev: Option<Definition> = None;
    // The baseline in force at each config version, to name it in decisions.
    let mut baselines: Vec<(u64, Option<(String, String)>)> = Vec::new();
    for v in versions {
        let def = definition(&v.text, name);
        baselines.push((
            v.applied_at_ms,
            def.as_ref()
                .map(|d| (d.baseline.clone(), d.baseline_backend.clone())),
        ));
        if def == prev {
            continue;
        }
        let entry = match &def {
            Some(d) => json!({
                "at_ms": v.applied_at_ms,
                "cause": "config",
                "config_version": v.version,
                "actor": v.actor,
                "source": v.source,
                "change": if prev.is_none() { "added" } else { "changed" },
                "baseline": {"arm": d.baseline, "backend": d.baseline_backend},
                "arms": d.arms.iter().map(|(a, b, w)| json!({
                    "name": a, "backend": b, "weight": f64::from(*w) / 100.0,
                })).collect::<Vec<_>>(),
            }),
            None => json!({
                "at_ms": v.applied_at_ms,
                "cause": "config",
                "config_version": v.version,
                "actor": v.actor,
                "source": v.source,
                "change": "removed",
            }),
        };
        entries.push((v.applied_at_ms, 0, entry));
        prev = def;
    }
    for d in decisions {
        let baseline = baselines
            .iter()
            .rev()
            .find(|(at, _)| *at <= d.created_at_ms)
            .and_then(|(_, b)| b.clone());
        // Promote and rollback leave one arm serving everything: the model in
        // production from then on.
        let serving_all = d
            .to_weights
            .iter()
            .find(|(_, w)| **w == crate::config::BUCKETS)
            .map(|(a, _)| a.clone());
        entries.push((
            d.created_at_ms,
            1,
            json!({
                "at_ms": d.created_at_ms,
                "cause": "decision",
                "decision_id": d.id,
                "kind": d.kind,
                "actor": d.actor,
                "summary": d.reason.get("summary").cloned().unwrap_or(Value::Null),
                "applied": d.applied,
                "weights": d.to_weights.iter().map(|(a, w)| (a.clone(), json!(f64::from(*w) / 100.0))).collect::<serde_json::Map<_, _>>(),
                "serving_all": serving_all,
                // Model-aware experiments: "serving_model replaced replaced_models".
                "serving_model": d.reason.get("serving_model").cloned().unwrap_or(Value::Null),
                "replaced_models": d.reason.get("replaced_models").cloned().unwrap_or(Value::Null),
                "models": d.reason.get("models").cloned().unwrap_or(Value::Null),
                "baseline": baseline.map(|(arm, backend)| json!({"arm": arm, "backend": backend})),
            }),
        ));
    }
    if entries.is_empty() {
        return None;
    }
    // Stable: at equal times a config version comes before the decisions it enabled.
    entries.sort_by_key(|(at, order, _)| (*at, *order));
    Some(json!({
        "experiment": name,
        "lineage": entries.into_iter().map(|(_, _, e)| e).collect::<Vec<_>>(),
    }))
}
