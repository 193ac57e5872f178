//! The controller: evidence in, routing change out, with a record of why.
//!
//! Owns: one task per experiment that has a `kind`, ticking every
//! `analysis.interval`: it snapshots the per-arm statistics, runs the `stats`
//! verdict, and acts through the control plane's write-ahead path (record the
//! decision, swap the table, mark it applied). Manual control wins: a paused or
//! ended experiment is only observed, never changed.
//!
//! Beside them, one drift watch per watched experiment (see [`drift`]).
//!
//! Never: computes statistics itself (see `stats`) or touches the hot path.

mod drift;
mod periods;
mod run;
mod saved;

pub use drift::run_key as watch_run_key;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ControlPolicy, Watch};
use crate::control::ControlPlane;

pub use crate::config::stats_policy;

/// How long a stop waits for the experiment loops to finish their look and
/// publish their runs before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Starts the supervisor: it keeps exactly one task per controlled experiment,
/// restarting a task when its policy changes and stopping it when the
/// experiment is removed. When `stop` turns true every loop finishes its
/// current look, publishes its run for the last snapshot, and the supervisor
/// returns (a loop still busy after [`STOP_GRACE`] is aborted).
pub fn spawn(control: Arc<ControlPlane>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Dropping the supervisor (an abort) drops these, stopping every task.
        let mut tasks: HashMap<String, (ControlPolicy, AbortOnDrop)> = HashMap::new();
        let mut watches: HashMap<String, (Watch, AbortOnDrop)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut stopping = stop.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
            // In a fleet only the leader runs them; a replica that steps
            // down drops its tasks here, within a tick.
            let leads = control.leads();
            let wanted = if leads {
                control.controlled_experiments().await
            } else {
                Vec::new()
            };
            tasks.retain(|name, (policy, handle)| {
                wanted.iter().any(|(n, p)| n == name && p == policy) && !handle.0.is_finished()
            });
            for (name, policy) in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name.clone()) {
                    let handle = tokio::spawn(run::run(
                        control.clone(),
                        name,
                        policy.clone(),
                        stop.clone(),
                    ));
                    slot.insert((policy, AbortOnDrop(handle)));
                }
            }
            let watched = if leads {
                control.watched_experiments().await
            } else {
                Vec::new()
            };
            watches.retain(|name, (w, handle)| {
                watched.iter().any(|(n, x)| n == name && x == w) && !handle.0.is_finished()
            });
            for (name, w) in watched {
                if let std::collections::hash_map::Entry::Vacant(slot) = watches.entry(name.clone())
                {
                    let handle =
                        tokio::spawn(drift::run(control.clone(), name, w.clone(), stop.clone()));
                    slot.insert((w, AbortOnDrop(handle)));
                }
            }
        }
        let finished = async {
            for (_, (_, task)) in tasks.iter_mut() {
                let _ = (&mut task.0).await;
            }
            for (_, (_, task)) in watches.iter_mut() {
                let _ = (&mut task.0).await;
            }
        };
        if tokio::time::timeout(STOP_GRACE, finished).await.is_err() {
            tracing::warn!("an experiment loop did not stop in time; its last look is not saved");
        }
    })
}

/// A task that stops when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
