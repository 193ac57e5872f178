//! The fleet's counts: every replica of a shared store saves its own per-arm
//! counts each second, and adds what the others saved into its recorders, so
//! the controller, the drift watch and every view read the fleet's sums on
//! whichever replica they run.
//!
//! Owns: the arithmetic of [`ArmState`] (all of it is sums, so the fleet's
//! state is the sum of the replicas'), what each other replica's row held when
//! it was last added, and the total added, which a replica subtracts before
//! saving its own row (its recorders hold the fleet's counts; its row must hold
//! only what it counted, or the sum would count the others twice).
//!
//! Never: touches the request path. The counts added here go into the
//! recorders' restored share, which `/metrics` leaves out: a replica's
//! Prometheus counters stay its own traffic, as Prometheus expects when it
//! sums over instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::histogram::HistogramState;
use super::metrics::MetricSums;
use super::pairs::{Discordant, PairSnapshot};
use super::recorder::{ArmState, InferenceState, OutcomeState};
use super::RecorderRegistry;
use crate::stats::PairedSums;

/// Sums that can be added and taken away (a count never below zero).
trait Tally {
    fn add(&mut self, o: &Self);
    fn sub(&mut self, o: &Self);
}

impl Tally for u64 {
    fn add(&mut self, o: &Self) {
        *self = self.saturating_add(*o);
    }
    fn sub(&mut self, o: &Self) {
        *self = self.saturating_sub(*o);
    }
}

impl Tally for f64 {
    fn add(&mut self, o: &Self) {
        *self += o;
    }
    fn sub(&mut self, o: &Self) {
        *self -= o;
    }
}

impl<const N: usize> Tally for [u64; N] {
    fn add(&mut self, o: &Self) {
        self.iter_mut().zip(o).for_each(|(a, b)| a.add(b));
    }
    fn sub(&mut self, o: &Self) {
        self.iter_mut().zip(o).for_each(|(a, b)| a.sub(b));
    }
}

/// Field by field: `tally!(Type { a, b, c })`.
macro_rules! tally {
    ($t:ty { $($f:ident),* $(,)? }) => {
        impl Tally for $t {
            fn add(&mut self, o: &Self) {
                $( self.$f.add(&o.$f); )*
            }
            fn sub(&mut self, o: &Self) {
                $( self.$f.sub(&o.$f); )*
            }
        }
    };
}

tally!(MetricSums { n, sum, sum_sq });
tally!(PairedSums {
    n,
    sum_x,
    sum_y,
    sum_xx,
    sum_yy,
    sum_xy
});
tally!(Discordant {
    pairs,
    primary_only,
    shadow_only,
    both
});
tally!(PairSnapshot {
    dropped,
    latency_ms,
    ttfb_ms,
    ttft_ms,
    completion_tokens,
    error,
    stream_incomplete
});
tally!(InferenceState {
    prompt_tokens,
    completion_tokens,
    cost,
    ttft,
    itl,
    streams,
    incomplete,
    finished,
    finish_length,
    unparsed
});
tally!(OutcomeState {
    classes,
    failures,
    errors,
    abandoned,
    slow,
    latency,
    ttfb,
    inference
});

impl Tally for HistogramState {
    fn add(&mut self, o: &Self) {
        self.merge(o, |a, b| a.saturating_add(b));
        self.sum_us.add(&o.sum_us);
        self.sum_sq_ms.add(&o.sum_sq_ms);
    }
    fn sub(&mut self, o: &Self) {
        self.merge(o, |a, b| a.saturating_sub(b));
        self.sum_us.sub(&o.sum_us);
        self.sum_sq_ms.sub(&o.sum_sq_ms);
    }
}

impl HistogramState {
    /// Combines the sparse buckets (both sorted by index), keeping the
    /// non-empty ones.
    fn merge(&mut self, o: &Self, f: impl Fn(u64, u64) -> u64) {
        let mine: BTreeMap<u32, u64> = self.buckets.drain(..).collect();
        let mut all = mine.clone();
        for &(i, c) in &o.buckets {
            let v = f(mine.get(&i).copied().unwrap_or(0), c);
            all.insert(i, v);
        }
        self.buckets = all.into_iter().filter(|&(_, c)| c > 0).collect();
    }
}

impl<K: Ord + Clone, V: Tally + Default> Tally for BTreeMap<K, V> {
    fn add(&mut self, o: &Self) {
        for (k, v) in o {
            self.entry(k.clone()).or_default().add(v);
        }
    }
    fn sub(&mut self, o: &Self) {
        for (k, v) in o {
            self.entry(k.clone()).or_default().sub(v);
        }
    }
}

impl<T: Tally + Default> Tally for Option<T> {
    fn add(&mut self, o: &Self) {
        if let Some(o) = o {
            self.get_or_insert_with(T::default).add(o);
        }
    }
    fn sub(&mut self, o: &Self) {
        if let (Some(s), Some(o)) = (self.as_mut(), o) {
            s.sub(o);
        }
    }
}

tally!(ArmState {
    assigned,
    forced,
    header_metrics,
    feedback_metrics,
    pairs
});

/// `a - b`.
fn minus(a: &ArmState, b: &ArmState) -> ArmState {
    let mut d = a.clone();
    d.sub(b);
    d
}

type ArmKey = (String, String);

#[derive(Default)]
struct Absorbed {
    /// Each other replica's row as last added: (replica, experiment, arm).
    seen: HashMap<(String, String, String), ArmState>,
    /// The same rows as the store sent them: an unchanged row (an idle arm,
    /// most of them) is recognised without being parsed.
    seen_json: HashMap<(String, String, String), String>,
    /// What was added per (experiment, arm): the sum of `seen`.
    total: HashMap<ArmKey, ArmState>,
}

/// How far back a read of the others' rows reaches before the last read: a
/// row is stamped when its statement runs and seen once committed, so a read
/// overlaps the last by far more than any commit takes.
const OVERLAP_MS: u64 = 10_000;

/// Every this many reads, one reads every row, whatever its stamp.
const FULL_EVERY: u64 = 60;

/// What this replica added of the others' counts (see the module doc).
#[derive(Default)]
pub struct FleetCounts {
    // Locked once a second by the snapshot, never by a request.
    absorbed: Mutex<Absorbed>,
    /// Reads so far, and the store's clock at the last.
    reads: Mutex<(u64, Option<u64>)>,
}

impl FleetCounts {
    /// Where the next read of the others' rows starts (`None`: all of them):
    /// rows saved since a little before the last read (an idle arm is saved
    /// once, and read again only by the periodic full read).
    pub fn next_read(&self) -> Option<u64> {
        let (n, last) = *self.reads.lock().unwrap_or_else(|e| e.into_inner());
        if n % FULL_EVERY == 0 {
            return None;
        }
        last.map(|t| t.saturating_sub(OVERLAP_MS))
    }

    /// Notes a read made at `read_at_ms` (the store's clock).
    pub fn read_done(&self, read_at_ms: u64) {
        let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        *r = (r.0 + 1, Some(read_at_ms));
    }

    /// Adds into `recorders` what each other replica counted since its row was
    /// last added. `rows`: (replica, experiment, arm, JSON) as the store holds
    /// them. Returns how many rows had grown.
    pub fn absorb(
        &self,
        recorders: &RecorderRegistry,
        rows: &[(String, String, String, String)],
    ) -> Result<usize, serde_json::Error> {
        let mut absorbed = self.absorbed.lock().unwrap_or_else(|e| e.into_inner());
        let mut grown = 0;
        for (replica, experiment, arm, json) in rows {
            let key = (replica.clone(), experiment.clone(), arm.clone());
            if absorbed.seen_json.get(&key) == Some(json) {
                continue;
            }
            let now: ArmState = serde_json::from_str(json)?;
            let delta = match absorbed.seen.get(&key) {
                Some(before) if *before == now => {
                    absorbed.seen_json.insert(key, json.clone());
                    continue;
                }
                Some(before) => minus(&now, before),
                None => now.clone(),
            };
            recorders.arm(experiment, arm).restore(&delta);
            if let Some(pairs) = &delta.pairs {
                recorders.pair_book(experiment, arm).restore(pairs);
            }
            for (metric, sums) in delta.header_metrics.iter().chain(&delta.feedback_metrics) {
                recorders
                    .metrics
                    .cell(experiment, arm, metric)
                    .restore(*sums);
            }
            absorbed
                .total
                .entry((experiment.clone(), arm.clone()))
                .or_default()
                .add(&delta);
            absorbed.seen.insert(key.clone(), now);
            absorbed.seen_json.insert(key, json.clone());
            grown += 1;
        }
        Ok(grown)
    }

    /// This replica's own counts: each of `states` (what its recorders hold)
    /// less what [`Self::absorb`] added to it.
    pub fn own(&self, states: Vec<(String, String, ArmState)>) -> Vec<(String, String, ArmState)> {
        let absorbed = self.absorbed.lock().unwrap_or_else(|e| e.into_inner());
        if absorbed.total.is_empty() {
            return states;
        }
        states
            .into_iter()
            .map(|(e, a, s)| {
                let own = match absorbed.total.get(&(e.clone(), a.clone())) {
                    Some(others) => minus(&s, others),
                    None => s,
                };
                (e, a, own)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn state(requests: u64, errors: u64, latencies_ms: &[u64]) -> ArmState {
        let r = RecorderRegistry::new(Telemetry::new());
        let arm = r.arm("e", "a");
        for i in 0..requests {
            let status = if i < errors { 500 } else { 200 };
            arm.record_response(false, http::StatusCode::from_u16(status).unwrap());
        }
        for &ms in latencies_ms {
            arm.record_latency(false, std::time::Duration::from_millis(ms));
        }
        let mut s = arm.state();
        s.header_metrics.insert(
            "m".into(),
            MetricSums {
                n: requests,
                sum: 2.5 * requests as f64,
                sum_sq: 1.0,
            },
        );
        s
    }

    #[test]
    fn the_others_counts_are_added_once_and_never_saved_as_ones_own() {
        let recorders = RecorderRegistry::new(Telemetry::new());
        let mine = recorders.arm("e", "a");
        for _ in 0..5 {
            mine.record_response(false, http::StatusCode::OK);
        }
        let fleet = FleetCounts::default();
        let row = |replica: &str, s: &ArmState| {
            (
                replica.to_string(),
                "e".to_string(),
                "a".to_string(),
                serde_json::to_string(s).unwrap(),
            )
        };
        let (b1, c1) = (state(10, 1, &[5, 50]), state(7, 0, &[9]));
        assert_eq!(
            fleet
                .absorb(&recorders, &[row("b", &b1), row("c", &c1)])
                .unwrap(),
            2
        );
        let total = |r: &RecorderRegistry| r.totals("e", "a").unwrap();
        assert_eq!(
            (total(&recorders).requests(), total(&recorders).errors),
            (22, 1)
        );
        // Unchanged rows add nothing; a grown row adds only its growth.
        assert_eq!(
            fleet
                .absorb(&recorders, &[row("b", &b1), row("c", &c1)])
                .unwrap(),
            0
        );
        let b2 = state(16, 4, &[5, 50, 700]);
        assert_eq!(
            fleet
                .absorb(&recorders, &[row("b", &b2), row("c", &c1)])
                .unwrap(),
            1
        );
        assert_eq!(
            (total(&recorders).requests(), total(&recorders).errors),
            (28, 4)
        );
        assert_eq!(total(&recorders).latency.n, 4);
        assert_eq!(recorders.metrics.cell("e", "a", "m").sums().n, 23);

        // What this replica saves is its own five requests, exactly.
        let own = fleet.own(recorders.states());
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].2.assigned.classes.iter().sum::<u64>(), 5);
        assert_eq!(own[0].2.assigned.errors, 0);
        assert!(
            own[0].2.assigned.latency.buckets.is_empty(),
            "{:?}",
            own[0].2.assigned.latency
        );
        // The fleet's state is the sum of the replicas' rows.
        let mut sum = own[0].2.clone();
        sum.add(&b2);
        sum.add(&c1);
        assert_eq!(sum.assigned, recorders.states()[0].2.assigned);
    }

    #[test]
    fn reads_start_a_little_before_the_last_and_every_sixtieth_reads_all() {
        let fleet = FleetCounts::default();
        assert_eq!(fleet.next_read(), None, "the first read takes every row");
        fleet.read_done(100_000);
        assert_eq!(fleet.next_read(), Some(100_000 - OVERLAP_MS));
        for k in 1..FULL_EVERY {
            fleet.read_done(100_000 + k);
        }
        assert_eq!(fleet.next_read(), None);
    }

    #[test]
    fn sparse_histograms_add_and_subtract_bucket_by_bucket() {
        let mut a = HistogramState {
            buckets: vec![(1, 2), (5, 1)],
            sum_us: 10,
            sum_sq_ms: 1.0,
        };
        let b = HistogramState {
            buckets: vec![(0, 4), (5, 2), (9, 1)],
            sum_us: 7,
            sum_sq_ms: 0.5,
        };
        a.add(&b);
        assert_eq!(a.buckets, vec![(0, 4), (1, 2), (5, 3), (9, 1)]);
        a.sub(&b);
        assert_eq!(a.buckets, vec![(1, 2), (5, 1)]);
        assert_eq!((a.sum_us, a.sum_sq_ms), (10, 1.0));
    }
}
