//! Fleet mode in the control plane: replicas sharing one PostgreSQL store.
//!
//! Owns:
//! - **who leads**: only the lease holder runs the controllers and drift
//!   watches ([`ControlPlane::leads`]). Before it starts them it adopts the
//!   runs the previous leader saved and repairs any change that leader left
//!   half made, so a ramp goes on from its step with its evidence.
//! - **every change on the latest state**: [`ControlPlane::change`] takes the
//!   fleet's change lock and re-reads the store before a change is decided
//!   and recorded, so two replicas never interleave their writes, and a
//!   person's pause on one replica is what the leader's controller sees next
//!   (manual control wins fleet-wide).
//! - **following**: each recorded change bumps the store's revision and
//!   notifies; every replica then re-reads config, states and weight history
//!   and republishes ([`ControlPlane::sync`]), with a poll every second behind
//!   the notifications.
//! - **the fleet's counts**: see `outcomes::fleet`; the snapshot saves this
//!   replica's own and adds the others'.
//!
//! With the embedded SQLite store there is no fleet: this process leads,
//! changes need no lock and nothing is followed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, MutexGuard};

use super::{cohorts, drop_stale, effective, ControlPlane, Current};
use crate::config;
use crate::outcomes::fleet::FleetCounts;
use crate::store::fleet::{lag_ms, ChangeLock, FleetLink};
use crate::store::{ExperimentState, StoreError, WeightStep};

/// A replica's part in the fleet.
pub struct Fleet {
    pub link: Arc<FleetLink>,
    pub counts: FleetCounts,
    /// Set once this replica, holding the lease, has adopted the saved runs:
    /// only then do its controllers start.
    leading: AtomicBool,
    /// The store revision this replica's table reflects.
    applied: AtomicU64,
    /// Commit-to-swap time of the last change this replica followed (ms).
    last_propagation_ms: AtomicU64,
    /// The weight history as last read, to tell whether a sync changed it.
    steps: Mutex<Vec<WeightStep>>,
}

impl Fleet {
    pub fn new(link: Arc<FleetLink>) -> Fleet {
        Fleet {
            link,
            counts: FleetCounts::default(),
            leading: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            last_propagation_ms: AtomicU64::new(0),
            steps: Mutex::new(Vec::new()),
        }
    }

    /// What `/readyz` and `status` show of this replica.
    pub fn view(&self) -> serde_json::Value {
        let latest = self.link.revision().borrow().clone();
        let applied = self.applied.load(Ordering::Acquire);
        serde_json::json!({
            "replica": self.link.replica(),
            "role": if self.leading.load(Ordering::Acquire) { "leader" } else { "follower" },
            "store_reachable": self.link.is_reachable(),
            "revision": applied,
            "store_revision": latest.n,
            "lag_ms": lag_ms(applied, &latest),
            "last_propagation_ms": self.last_propagation_ms.load(Ordering::Relaxed),
            "lease_ttl_ms": self.link.lease_ttl().as_millis() as u64,
        })
    }
}

/// The control plane's state, held for a change (see [`ControlPlane::change`]).
pub(crate) struct Changing<'a> {
    cur: MutexGuard<'a, Current>,
    /// Released after the local lock (fields drop in order).
    _fleet: Option<ChangeLock>,
}

impl std::ops::Deref for Changing<'_> {
    type Target = Current;
    fn deref(&self) -> &Current {
        &self.cur
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut Current {
        &mut self.cur
    }
}

impl ControlPlane {
    /// Whether this replica runs the controllers and drift watches: always
    /// with an embedded store; in a fleet, the lease holder once it has
    /// taken over.
    pub fn leads(&self) -> bool {
        self.fleet
            .as_ref()
            .is_none_or(|f| f.leading.load(Ordering::Acquire) && f.link.is_leader())
    }

    /// How long after a weight change the counts of before it keep arriving:
    /// in a fleet, another replica swaps its table within milliseconds, but
    /// what it counted before then reaches this one with its next snapshot
    /// and this one's next read, up to two seconds later. Zero with an
    /// embedded store, whose counts are all live.
    pub fn counts_settle(&self) -> std::time::Duration {
        match self.fleet {
            Some(_) => std::time::Duration::from_secs(3),
            None => std::time::Duration::ZERO,
        }
    }

    /// What `/readyz` shows of the fleet (`None` with an embedded store).
    pub fn fleet_view(&self) -> Option<serde_json::Value> {
        self.fleet.as_ref().map(|f| f.view())
    }

    /// The control plane's state for a change. In a fleet: first the fleet's
    /// change lock, then the latest state from the store, and any change a
    /// replica that died mid-way left unapplied is applied (a change is only
    /// ever recorded under this lock, so an unapplied one seen here is one
    /// whose maker is gone).
    pub(crate) async fn change(&self) -> Result<Changing<'_>, StoreError> {
        let Some(fleet) = &self.fleet else {
            return Ok(Changing {
                cur: self.current.lock().await,
                _fleet: None,
            });
        };
        let lock = fleet.link.lock_changes().await?;
        let mut cur = self.current.lock().await;
        self.sync_locked(&mut cur).await?;
        self.repair_unapplied(&mut cur).await?;
        Ok(Changing {
            cur,
            _fleet: Some(lock),
        })
    }

    /// Re-reads the store and republishes if another replica changed
    /// anything; returns whether it did.
    pub async fn sync(&self) -> Result<bool, StoreError> {
        let mut cur = self.current.lock().await;
        self.sync_locked(&mut cur).await
    }

    async fn sync_locked(&self, cur: &mut Current) -> Result<bool, StoreError> {
        let Some(fleet) = &self.fleet else {
            return Ok(false);
        };
        // Read before the records: a change committed meanwhile notifies
        // again, and is read then.
        let revision = fleet.link.revision().borrow().clone();
        let (latest, states, steps) = self
            .blocking(|s| -> Result<_, StoreError> {
                Ok((s.latest_config()?, s.states()?, s.weight_steps()?))
            })
            .await?;
        let mut changed = false;
        if let Some(rec) = latest.filter(|r| r.version != cur.config_version) {
            match config::parse(&rec.text) {
                Ok(c) => {
                    cur.config_version = rec.version;
                    cur.text = rec.text;
                    cur.config = c;
                    changed = true;
                }
                Err(errors) => {
                    tracing::error!(version = rec.version, %errors,
                        "another replica recorded a config this replica cannot read; it keeps its table");
                    return Ok(false);
                }
            }
        }
        let mut states: HashMap<String, ExperimentState> = states
            .into_iter()
            .map(|s| (s.experiment.clone(), s))
            .collect();
        // In memory only: the replica that changed the config clears them.
        drop_stale(&cur.config, &mut states);
        if states != cur.states {
            cur.states = states;
            changed = true;
        }
        {
            let mut known = fleet.steps.lock().unwrap_or_else(|e| e.into_inner());
            if *known != steps {
                *known = steps.clone();
                changed = true;
            }
        }
        if changed {
            let in_force = effective(&cur.config, &cur.states);
            let (mut replayed, _gone) = cohorts::replay(&cur.config, steps);
            // A step the writer has not recorded yet (it records it next) is
            // laid out here the same way: replaying is deterministic.
            let pending = cohorts::plan(&replayed, &in_force);
            cohorts::apply(&mut replayed, &pending, &in_force);
            cur.cohorts = replayed;
            cur.publisher
                .publish(&in_force, |n| cur.cohorts.get(n).map(|h| &h.layout));
            if revision.at_ms > 0 {
                let took = crate::clock::now_ms().saturating_sub(revision.at_ms);
                fleet.last_propagation_ms.store(took, Ordering::Relaxed);
                self.telemetry
                    .gauge("abgate_fleet_propagation_seconds", &[])
                    .set(took as f64 / 1000.0);
            }
        }
        fleet.applied.fetch_max(revision.n, Ordering::AcqRel);
        let applied = fleet.applied.load(Ordering::Acquire);
        self.telemetry
            .gauge("abgate_fleet_revision", &[])
            .set(applied as f64);
        let latest = fleet.link.revision().borrow().clone();
        self.telemetry
            .gauge("abgate_fleet_lag_seconds", &[])
            .set(lag_ms(applied, &latest) as f64 / 1000.0);
        Ok(changed)
    }

    /// Applies decisions recorded but never marked applied (their maker died
    /// between the two), as a restart does. Called holding the change lock.
    async fn repair_unapplied(&self, cur: &mut Current) -> Result<(), StoreError> {
        let unapplied = self.blocking(|s| s.unapplied_decisions()).await?;
        if unapplied.is_empty() {
            return Ok(());
        }
        for d in unapplied {
            if let Some(e) = cur.config.experiment(&d.experiment).cloned() {
                let state =
                    super::decision::state_of_unapplied(&d, &e, cur.states.get(&d.experiment));
                let saved = state.clone();
                self.blocking(move |s| s.save_state(&saved)).await?;
                cur.states.insert(d.experiment.clone(), state);
                tracing::info!(id = d.id, experiment = %d.experiment, kind = %d.kind,
                    "applied a decision another replica recorded and did not finish");
            }
            let id = d.id;
            self.blocking(move |s| s.mark_applied(id)).await?;
        }
        let in_force = effective(&cur.config, &cur.states);
        let Current {
            cohorts, publisher, ..
        } = cur;
        self.commit(cohorts, publisher, &in_force).await?;
        Ok(())
    }

    /// Takes over as leader: under the change lock (which repairs what the
    /// previous leader left half done), adopts the runs it saved.
    async fn take_over(&self) -> Result<(), StoreError> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let changing = self.change().await?;
        let runs = self.blocking(|s| s.controller_runs()).await?;
        *self.restored_runs.lock().unwrap_or_else(|e| e.into_inner()) = runs.into_iter().collect();
        // A run published before an earlier step-down is stale now.
        self.unsaved_runs.clear();
        fleet.leading.store(true, Ordering::Release);
        drop(changing);
        self.telemetry.gauge("abgate_fleet_leader", &[]).set(1.0);
        tracing::info!(replica = %fleet.link.replica(), "leading the fleet: controllers and drift watches run here");
        Ok(())
    }
}

/// Follows the store's revision and the lease until `stop`. Does nothing
/// without a fleet.
pub fn spawn(
    control: Arc<ControlPlane>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(fleet) = &control.fleet else { return };
        let mut revision = fleet.link.revision();
        let mut leader = fleet.link.leader();
        // Whatever they say already (the lease may be held since the store
        // opened) is acted on first.
        leader.mark_changed();
        revision.mark_changed();
        control.telemetry.gauge("abgate_fleet_leader", &[]).set(0.0);
        enum Wake {
            Stop,
            Revision,
            Lease,
        }
        loop {
            // Decided here, acted on below: the stop signal's guard must not
            // live across the awaits that follow.
            let wake = tokio::select! {
                _ = stop.wait_for(|s| *s) => Wake::Stop,
                r = revision.changed() => if r.is_ok() { Wake::Revision } else { Wake::Stop },
                l = leader.changed() => if l.is_ok() { Wake::Lease } else { Wake::Stop },
            };
            match wake {
                Wake::Stop => return,
                Wake::Revision => {
                    let n = revision.borrow_and_update().n;
                    if n > fleet.applied.load(Ordering::Acquire) {
                        if let Err(e) = control.sync().await {
                            tracing::warn!(error = %e, "cannot read the fleet's latest change; retrying at the next");
                        }
                    }
                }
                Wake::Lease => {
                    let leads = *leader.borrow_and_update();
                    if leads {
                        if let Err(e) = control.take_over().await {
                            // The lease task keeps the lease; try again shortly.
                            tracing::warn!(error = %e, "cannot take over as leader yet");
                            leader.mark_changed();
                            tokio::time::sleep(fleet.link.lease_ttl() / 5).await;
                        }
                    } else if fleet.leading.swap(false, Ordering::AcqRel) {
                        control.telemetry.gauge("abgate_fleet_leader", &[]).set(0.0);
                        tracing::warn!(replica = %fleet.link.replica(), "no longer leading: controllers stop here");
                    }
                }
            }
        }
    })
}
