//! The controller: evidence in, routing change out, with a record of why.
//!
//! Owns: one task per experiment that has a `kind`, ticking every
//! `analysis.interval`: it snapshots the per-arm statistics, runs the `stats`
//! verdict, and acts through the control plane's write-ahead path (record the
//! decision, swap the table, mark it applied). Manual control wins: a paused or
//! ended experiment is only observed, never changed.
//!
//! Never: computes statistics itself (see `stats`) or touches the hot path.

mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::ControlPolicy;
use crate::control::ControlPlane;

pub use crate::config::stats_policy;

/// Starts the supervisor: it keeps exactly one task per controlled experiment,
/// restarting a task when its policy changes and stopping it when the
/// experiment is removed.
pub fn spawn(control: Arc<ControlPlane>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Dropping the supervisor (shutdown) drops these, stopping every task.
        let mut tasks: HashMap<String, (ControlPolicy, AbortOnDrop)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let wanted = control.controlled_experiments().await;
            tasks.retain(|name, (policy, handle)| {
                wanted.iter().any(|(n, p)| n == name && p == policy) && !handle.0.is_finished()
            });
            for (name, policy) in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name.clone()) {
                    let handle = tokio::spawn(run::run(control.clone(), name, policy.clone()));
                    slot.insert((policy, AbortOnDrop(handle)));
                }
            }
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
