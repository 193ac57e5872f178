//! The control plane's interface for the controller: read an experiment's
//! config, state and weights; apply an automatic decision; publish the latest
//! analysis for people to read.

use std::time::Duration;

use serde_json::Value;

use super::actions::{phase_name, ActionError};
use super::decision::{Change, DecisionKind};
use super::ControlPlane;
use crate::config::{ControlPolicy, Experiment, Watch};
use crate::store::{ExperimentPhase, ExperimentState, Weights};

impl ControlPlane {
    /// Experiments the controller runs, with their policies.
    pub async fn controlled_experiments(&self) -> Vec<(String, ControlPolicy)> {
        let cur = self.current.lock().await;
        cur.config
            .experiments
            .iter()
            .filter_map(|e| e.policy.clone().map(|p| (e.name.clone(), p)))
            .collect()
    }

    /// Experiments with a drift watch (declared, or the default a promotion
    /// starts), with their watches.
    pub async fn watched_experiments(&self) -> Vec<(String, Watch)> {
        let cur = self.current.lock().await;
        cur.config
            .experiments
            .iter()
            .filter_map(|e| e.watch.clone().map(|w| (e.name.clone(), w)))
            .collect()
    }

    /// The experiment's config, recorded state and the weights in force.
    pub async fn controller_view(
        &self,
        name: &str,
    ) -> Option<(Experiment, Option<ExperimentState>, Weights)> {
        let cur = self.current.lock().await;
        let e = cur.config.experiment(name)?.clone();
        let state = cur.states.get(name).cloned();
        let weights = cur.weights_in_force(name)?;
        Some((e, state, weights))
    }

    /// Applies an automatic decision through the write-ahead path, unless a
    /// person paused or ended the experiment meanwhile (manual control wins).
    pub async fn controller_decide(
        &self,
        name: &str,
        kind: DecisionKind,
        to: Weights,
        reason: Value,
    ) -> Result<i64, ActionError> {
        self.decide_when(name, kind, to, reason, "decide automatically on", |p| {
            p == ExperimentPhase::Running
        })
        .await
    }

    /// Records what the drift watch found (`drift`, weights unchanged, in
    /// any phase) or did (`revert`, in any phase but paused: a person who
    /// paused the experiment is looking, and a revert would undo what they
    /// froze).
    pub async fn watch_decide(
        &self,
        name: &str,
        kind: DecisionKind,
        to: Weights,
        reason: Value,
    ) -> Result<i64, ActionError> {
        self.decide_when(name, kind, to, reason, "revert on drift", |p| {
            kind != DecisionKind::Revert || p != ExperimentPhase::Paused
        })
        .await
    }

    async fn decide_when(
        &self,
        name: &str,
        kind: DecisionKind,
        to: Weights,
        reason: Value,
        action: &'static str,
        allowed: impl Fn(ExperimentPhase) -> bool,
    ) -> Result<i64, ActionError> {
        let mut cur = self.change().await?;
        if !self.leads() {
            // Stepped down since the look: the new leader decides.
            return Err(ActionError::NotLeader);
        }
        let e = cur
            .config
            .experiment(name)
            .ok_or_else(|| ActionError::UnknownExperiment(name.to_string()))?
            .clone();
        let phase = cur
            .states
            .get(name)
            .map_or(ExperimentPhase::Running, |s| s.phase);
        if !allowed(phase) {
            return Err(ActionError::Conflict {
                action,
                experiment: name.to_string(),
                phase: phase_name(phase),
            });
        }
        let from = cur.weights_in_force(name).unwrap_or_default();
        let change = Change {
            kind,
            from: from.clone(),
            to: to.clone(),
            reason: reason.clone(),
            actor: "controller".to_string(),
        };
        let id = self.record_and_apply(&mut cur, &e, change).await?;
        if let Some(url) = e.policy.as_ref().and_then(|p| p.notify_url.clone()) {
            let body = serde_json::json!({
                "id": id, "experiment": name, "kind": kind,
                "from_weights": from, "to_weights": to, "reason": reason,
            });
            tokio::spawn(notify(url, body));
        }
        Ok(id)
    }

    /// Publishes a drift watch's latest view.
    pub fn set_watch_view(&self, name: &str, view: Value) {
        self.watch_views.insert(name.to_string(), view);
    }

    /// A drift watch's latest view.
    pub fn watch_view(&self, name: &str) -> Option<Value> {
        self.watch_views.get(name).map(|v| v.clone())
    }

    /// Forgets a saved run: the next snapshot saves `null` in its place.
    pub fn clear_run(&self, key: &str) {
        self.unsaved_runs
            .insert(key.to_string(), "null".to_string());
    }

    /// Records the admin listener's address once it is bound.
    pub fn set_admin_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.admin_url.set(format!("http://{addr}"));
    }

    /// The admin listener's base URL, once bound.
    pub fn admin_url(&self) -> Option<&str> {
        self.admin_url.get().map(String::as_str)
    }

    /// POSTs `body` to a webhook in the background (three tries).
    pub fn post_webhook(&self, url: String, body: Value) {
        tokio::spawn(notify(url, body));
    }

    /// Publishes the latest analysis of an experiment (shown by the admin API).
    pub fn set_analysis(&self, name: &str, analysis: Value) {
        self.analysis.insert(name.to_string(), analysis);
    }

    pub fn analysis(&self, name: &str) -> Option<Value> {
        self.analysis.get(name).map(|v| v.clone())
    }

    /// Publishes what a controller run carries between ticks (JSON), to be
    /// saved with the next snapshot of the per-arm counts.
    pub fn publish_run(&self, name: &str, run: String) {
        self.unsaved_runs.insert(name.to_string(), run);
    }

    /// The run saved for `name` before this process started, once.
    pub fn take_restored_run(&self, name: &str) -> Option<String> {
        self.restored_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// How many times a snapshot has taken the published runs.
    pub fn runs_taken(&self) -> u64 {
        self.runs_taken.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes the runs published since the last snapshot.
    pub(super) fn take_unsaved_runs(&self) -> Vec<(String, String)> {
        // Counted before taking: a run published after the count but before
        // the take is saved now and published again after the next look.
        self.runs_taken
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let names: Vec<String> = self.unsaved_runs.iter().map(|e| e.key().clone()).collect();
        names
            .into_iter()
            .filter_map(|n| self.unsaved_runs.remove(&n))
            .collect()
    }
}

/// POSTs a decision to a webhook: three tries with backoff, never blocking the
/// controller (it runs on its own task), loopback or configured hosts only as
/// the operator configured them.
async fn notify(url: String, body: Value) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for attempt in 0..3u32 {
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())));
        let Ok(req) = req else { return };
        match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return,
            outcome => {
                tracing::warn!(%url, attempt, ok = outcome.is_ok(), "decision webhook failed");
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
        }
    }
}
