//! A run's periods of constant weights, each with what its arms accumulated.
//!
//! The comparisons are stratified by period (`stats::strata`): a canary's
//! share grows at every step, and a metric that moves over time (load, a
//! neighbour, the time of day) would otherwise read as the canary's fault.
//!
//! A period begins when the weights change: right after this loop's own
//! decision (at the sums of the look that made it), or, for a change made
//! elsewhere (a manual action, a config PUT), at the first look that sees
//! the new weights; up to one look's requests then count in the period
//! before, the price of not reading the sums on every table swap.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::outcomes::summary::ArmSums;

/// Weights as the look reads them: (arm, weight) in declared order.
pub(super) type ArmWeights = Vec<(String, u32)>;

/// Ended periods beyond this are merged, oldest first: an experiment whose
/// weights are changed every few seconds for days keeps a bounded run (and
/// loses only the stratification between its oldest periods).
const MAX_ENDED: usize = 32;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct Periods {
    /// Every arm's running sums when the first period began.
    origin: Vec<ArmSums>,
    /// What each ended period accumulated per arm, oldest first.
    ended: Vec<Vec<ArmSums>>,
    /// The current period's weights and every arm's running sums when it began.
    current: Option<(ArmWeights, Vec<ArmSums>)>,
}

/// `now` minus `then` for each arm of `now` (an arm missing from `then`
/// accumulated everything in the window).
fn since(now: &[ArmSums], then: &[ArmSums]) -> Vec<ArmSums> {
    now.iter()
        .map(|a| match then.iter().find(|s| s.arm == a.arm) {
            Some(s) => a.since(s),
            None => a.clone(),
        })
        .collect()
}

impl Periods {
    /// Whether the first period has begun.
    pub fn begun(&self) -> bool {
        self.current.is_some()
    }

    /// Begins the first period with `weights`, at the running sums `origin`.
    pub fn begin(&mut self, weights: ArmWeights, origin: Vec<ArmSums>) {
        self.origin.clone_from(&origin);
        self.ended.clear();
        self.current = Some((weights, origin));
    }

    /// A look with `weights` in force: weights other than the current
    /// period's end it at `now` and begin the next.
    pub fn look(&mut self, weights: &[(String, u32)], now: &[ArmSums]) {
        match &self.current {
            None => self.begin(weights.to_vec(), now.to_vec()),
            Some((w, _)) if w.as_slice() != weights => self.turn(weights.to_vec(), now),
            Some(_) => {}
        }
    }

    /// Ends the current period at `now` and begins one with `weights`.
    pub fn turn(&mut self, weights: ArmWeights, now: &[ArmSums]) {
        let Some((_, start)) = self.current.take() else {
            self.begin(weights, now.to_vec());
            return;
        };
        self.ended.push(since(now, &start));
        if self.ended.len() > MAX_ENDED {
            let oldest = self.ended.remove(0);
            let next = &mut self.ended[0];
            *next = since_merge(&oldest, next);
        }
        self.current = Some((weights, now.to_vec()));
    }

    /// What every arm accumulated since the first period began.
    pub fn total(&self, now: &[ArmSums]) -> Vec<ArmSums> {
        since(now, &self.origin)
    }

    /// How many periods there are (the current one included).
    pub fn count(&self) -> usize {
        self.ended.len() + usize::from(self.current.is_some())
    }

    /// What every arm accumulated in each period, oldest first; the current
    /// one ends at `now`. Ended periods are lent, not copied: a look reads
    /// them all.
    pub fn windows<'a>(&'a self, now: &[ArmSums]) -> impl Iterator<Item = Cow<'a, [ArmSums]>> {
        let current = self
            .current
            .as_ref()
            .map(|(_, start)| Cow::Owned(since(now, start)));
        self.ended
            .iter()
            .map(|p| Cow::Borrowed(p.as_slice()))
            .chain(current)
    }
}

/// Two consecutive periods' sums as one, per arm.
fn since_merge(older: &[ArmSums], newer: &[ArmSums]) -> Vec<ArmSums> {
    newer
        .iter()
        .map(|n| match older.iter().find(|o| o.arm == n.arm) {
            Some(o) => o.plus(n),
            None => n.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::MetricKind;
    use crate::outcomes::metrics::MetricSums;

    fn sums(arm: &str, assigned: u64, latency: (u64, f64)) -> ArmSums {
        ArmSums {
            arm: arm.into(),
            assigned,
            metrics: BTreeMap::from([(
                "latency_ms".to_string(),
                (
                    MetricKind::Continuous,
                    MetricSums {
                        n: latency.0,
                        sum: latency.1,
                        sum_sq: latency.1 * latency.1,
                    },
                ),
            )]),
        }
    }

    fn w(stable: u32, canary: u32) -> ArmWeights {
        vec![("stable".into(), stable), ("canary".into(), canary)]
    }

    fn latency_n(p: &[ArmSums], arm: &str) -> u64 {
        p.iter().find(|a| a.arm == arm).unwrap().metrics["latency_ms"]
            .1
            .n
    }

    #[test]
    fn a_weight_change_seen_at_a_look_starts_a_period_there() {
        let mut p = Periods::default();
        let t0 = [sums("stable", 10, (10, 100.0)), sums("canary", 0, (0, 0.0))];
        p.look(&w(9000, 1000), &t0);
        let t1 = [
            sums("stable", 100, (100, 1000.0)),
            sums("canary", 10, (10, 100.0)),
        ];
        p.look(&w(9000, 1000), &t1);
        assert_eq!(p.count(), 1);
        p.look(&w(5000, 5000), &t1);
        let t2 = [
            sums("stable", 150, (150, 2000.0)),
            sums("canary", 60, (60, 900.0)),
        ];
        let windows: Vec<_> = p.windows(&t2).collect();
        assert_eq!(windows.len(), 2);
        assert_eq!(latency_n(&windows[0], "stable"), 90);
        assert_eq!(latency_n(&windows[0], "canary"), 10);
        assert_eq!(latency_n(&windows[1], "stable"), 50);
        assert_eq!(latency_n(&windows[1], "canary"), 50);
        let total = p.total(&t2);
        assert_eq!(latency_n(&total, "stable"), 140);
        assert_eq!(
            total.iter().find(|a| a.arm == "canary").unwrap().assigned,
            60
        );
    }

    #[test]
    fn a_decision_turns_the_period_at_its_own_look_and_the_next_look_keeps_it() {
        let mut p = Periods::default();
        let t0 = [sums("stable", 0, (0, 0.0)), sums("canary", 0, (0, 0.0))];
        p.look(&w(9000, 1000), &t0);
        let t1 = [
            sums("stable", 90, (90, 900.0)),
            sums("canary", 10, (10, 100.0)),
        ];
        p.turn(w(5000, 5000), &t1);
        p.look(&w(5000, 5000), &t1);
        assert_eq!(p.count(), 2);
    }

    #[test]
    fn many_weight_changes_keep_a_bounded_run_and_lose_no_unit() {
        let mut p = Periods::default();
        let mut n = 0;
        p.look(
            &w(9000, 1000),
            &[sums("stable", 0, (0, 0.0)), sums("canary", 0, (0, 0.0))],
        );
        for i in 0..200u32 {
            n += 10;
            let now = [
                sums("stable", n, (n, n as f64)),
                sums("canary", n, (n, n as f64)),
            ];
            p.look(&w(9000 - i, 1000 + i), &now);
        }
        let now = [
            sums("stable", n, (n, n as f64)),
            sums("canary", n, (n, n as f64)),
        ];
        let windows: Vec<_> = p.windows(&now).collect();
        assert_eq!(windows.len(), MAX_ENDED + 1);
        let counted: u64 = windows.iter().map(|w| latency_n(w, "stable")).sum();
        assert_eq!(counted, n);
    }
}
