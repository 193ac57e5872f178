//! Cohort-preserving bucket layout: which arm owns each of the 10,000 buckets.
//!
//! Owns: the layout algorithm, a pure function of an experiment's recorded
//! sequence of weight vectors (each in the arms' declared order, basis points).
//! It is part of abgate's contract, like the bucket hash: every replica that
//! replays the same sequence computes the same owner for every bucket.
//!
//! ```text
//! shares(w)   = the buckets each arm gets: cumulative weights clamped to 10,000
//!               in declared order, the last arm taking any remainder
//! first layout: arms own contiguous ranges in declared order
//!               (arm 0 gets [0, s0), arm 1 gets [s0, s0+s1), ...)
//! each later vector w':
//!   1. every arm whose share fell gives up (old - new) buckets, taking its
//!      highest-numbered buckets first ("from the end of its ranges");
//!   2. the freed buckets are queued: falling arms in declared order, each
//!      arm's freed buckets in ascending order;
//!   3. every arm whose share rose takes (new - old) buckets from the front of
//!      that queue, in declared order.
//! ```
//!
//! So a weight change moves only users of arms whose weight fell, only into
//! arms whose weight rose, and nobody else: the first layout is today's
//! contiguous one, so a history of one vector routes exactly as abgate always
//! did, and raising the last arm only moves users into it.
//!
//! Never: reads the store or the clock. Recording the sequence is the control
//! plane's job; here it is only replayed.

use crate::config::{BasisPoints, BUCKETS};

/// The owner of every bucket, after replaying a weight history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `owner[b]`: index (declared order) of the arm owning bucket `b`.
    owner: Box<[u32]>,
    arms: usize,
    /// Derived from `owner` whenever it changes, so building a table from a
    /// layout copies a few runs instead of scanning 10,000 buckets.
    shares: Vec<u32>,
    run_starts: Box<[u32]>,
    run_arms: Box<[u32]>,
}

/// The buckets each arm gets for `weights` (the same split the contiguous
/// bounds always gave): cumulative sums clamped to [`BUCKETS`], the last arm
/// taking whatever the others leave.
pub fn shares(weights: &[BasisPoints]) -> Vec<u32> {
    let mut out = Vec::with_capacity(weights.len());
    let mut acc = 0u32;
    for &w in weights {
        let next = acc.saturating_add(w).min(BUCKETS);
        out.push(next - acc);
        acc = next;
    }
    if let Some(last) = out.last_mut() {
        *last += BUCKETS - acc;
    }
    out
}

impl Layout {
    /// The first layout of a history: contiguous ranges in declared order.
    pub fn initial(weights: &[BasisPoints]) -> Layout {
        let mut owner = Vec::with_capacity(BUCKETS as usize);
        for (arm, share) in shares(weights).into_iter().enumerate() {
            owner.extend(std::iter::repeat_n(arm as u32, share as usize));
        }
        // No arms at all (not a valid config): every bucket to arm 0.
        owner.resize(BUCKETS as usize, 0);
        let mut l = Layout {
            owner: owner.into_boxed_slice(),
            arms: weights.len(),
            shares: Vec::new(),
            run_starts: Box::new([]),
            run_arms: Box::new([]),
        };
        l.derive();
        l
    }

    /// The runs of the contiguous layout of `weights`, without building it
    /// (what a table without a recorded history uses).
    pub fn contiguous_runs(weights: &[BasisPoints]) -> (Box<[u32]>, Box<[u32]>) {
        let (mut starts, mut arms) = (vec![0], vec![0]);
        let mut at = 0;
        for (arm, share) in shares(weights).into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            if at == 0 {
                arms[0] = arm as u32;
            } else {
                starts.push(at);
                arms.push(arm as u32);
            }
            at += share;
        }
        (starts.into_boxed_slice(), arms.into_boxed_slice())
    }

    /// Recomputes what is derived from `owner`.
    fn derive(&mut self) {
        let mut shares = vec![0u32; self.arms];
        let (mut starts, mut arms) = (Vec::new(), Vec::new());
        for (b, &a) in self.owner.iter().enumerate() {
            if let Some(n) = shares.get_mut(a as usize) {
                *n += 1;
            }
            if arms.last() != Some(&a) {
                starts.push(b as u32);
                arms.push(a);
            }
        }
        self.shares = shares;
        self.run_starts = starts.into_boxed_slice();
        self.run_arms = arms.into_boxed_slice();
    }

    /// Replays a whole history (oldest first); `None` when it is empty.
    pub fn replay<'h>(history: impl IntoIterator<Item = &'h [BasisPoints]>) -> Option<Layout> {
        let mut it = history.into_iter();
        let mut layout = Layout::initial(it.next()?);
        for w in it {
            layout.reweight(w);
        }
        Some(layout)
    }

    /// Moves to the next weight vector of the history (see the module doc).
    /// A vector for a different number of arms starts a new history.
    pub fn reweight(&mut self, weights: &[BasisPoints]) {
        if weights.len() != self.arms {
            *self = Layout::initial(weights);
            return;
        }
        let old = self.shares.clone();
        let new = shares(weights);
        let mut queue: Vec<usize> = Vec::new();
        for arm in 0..self.arms {
            let give = old[arm].saturating_sub(new[arm]) as usize;
            if give == 0 {
                continue;
            }
            let start = queue.len();
            queue.extend(
                (0..self.owner.len())
                    .rev()
                    .filter(|&b| self.owner[b] == arm as u32)
                    .take(give),
            );
            queue[start..].reverse();
        }
        let mut next = queue.iter();
        for arm in 0..self.arms {
            let take = new[arm].saturating_sub(old[arm]);
            for &b in next.by_ref().take(take as usize) {
                self.owner[b] = arm as u32;
            }
        }
        debug_assert!(next.next().is_none(), "shares always sum to BUCKETS");
        self.derive();
    }

    /// The number of buckets each arm owns, in declared order.
    pub fn shares(&self) -> &[u32] {
        &self.shares
    }

    /// How many arms the history is for.
    pub fn arms(&self) -> usize {
        self.arms
    }

    /// The arm owning bucket `b` (0..BUCKETS).
    pub fn owner(&self, b: u32) -> usize {
        self.owner[(b % BUCKETS) as usize] as usize
    }

    /// The layout as maximal runs: `(starts, owners)`, `starts[0] == 0`, run
    /// `i` covering `starts[i]..starts[i + 1]` (the last one up to BUCKETS).
    /// What the routing table binary-searches per request.
    pub fn runs(&self) -> (Box<[u32]>, Box<[u32]>) {
        (self.run_starts.clone(), self.run_arms.clone())
    }

    /// The bucket ranges arm `arm` owns, ascending (for people to read).
    pub fn ranges(&self, arm: usize) -> Vec<std::ops::Range<u32>> {
        let (starts, owners) = self.runs();
        (0..starts.len())
            .filter(|&i| owners[i] as usize == arm)
            .map(|i| starts[i]..starts.get(i + 1).copied().unwrap_or(BUCKETS))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so the property test
    /// needs no RNG crate and replays the same cases everywhere.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A weight vector of `n` arms summing to BUCKETS, often with zeros.
        fn weights(&mut self, n: usize) -> Vec<u32> {
            let mut cuts: Vec<u32> = (0..n - 1)
                .map(|_| {
                    if self.next().is_multiple_of(4) {
                        0
                    } else {
                        (self.next() % u64::from(BUCKETS + 1)) as u32
                    }
                })
                .collect();
            cuts.sort_unstable();
            let mut prev = 0;
            let mut w: Vec<u32> = cuts
                .iter()
                .map(|&c| {
                    let x = c - prev;
                    prev = c;
                    x
                })
                .collect();
            w.push(BUCKETS - prev);
            w
        }
    }

    #[test]
    fn shares_match_the_contiguous_bounds() {
        assert_eq!(shares(&[9000, 1000]), vec![9000, 1000]);
        assert_eq!(shares(&[0, 10_000]), vec![0, 10_000]);
        // Short of 10,000: the last arm takes the rest (as the old fallback did).
        assert_eq!(shares(&[3000, 3000]), vec![3000, 7000]);
        // Over: later arms are clamped.
        assert_eq!(shares(&[8000, 8000, 1]), vec![8000, 2000, 0]);
    }

    #[test]
    fn the_first_layout_is_contiguous_in_declared_order() {
        let l = Layout::initial(&[3400, 3300, 3300]);
        assert_eq!(l.ranges(0), vec![0..3400]);
        assert_eq!(l.ranges(1), vec![3400..6700]);
        assert_eq!(l.ranges(2), vec![6700..10_000]);
        let (starts, owners) = l.runs();
        assert_eq!((&*starts, &*owners), (&[0, 3400, 6700][..], &[0, 1, 2][..]));
    }

    #[test]
    fn a_zeroed_arm_hands_its_buckets_to_the_arm_that_rose_and_nobody_else_moves() {
        let mut l = Layout::initial(&[3400, 3300, 3300]);
        l.reweight(&[6700, 3300, 0]);
        assert_eq!(l.ranges(0), vec![0..3400, 6700..10_000]);
        assert_eq!(l.ranges(1), vec![3400..6700]);
        assert!(l.ranges(2).is_empty());
        // A ramp takes from the end of the falling arm's ranges.
        let mut c = Layout::initial(&[9500, 500]);
        c.reweight(&[9000, 1000]);
        assert_eq!(c.ranges(1), vec![9000..10_000]);
        c.reweight(&[5000, 5000]);
        assert_eq!(c.ranges(1), vec![5000..10_000]);
        c.reweight(&[10_000, 0]);
        assert_eq!(c.ranges(0), vec![0..10_000]);
    }

    #[test]
    fn every_reweighting_moves_units_only_from_falling_to_rising_arms() {
        let mut g = Gen(0x5eed_2026_1128);
        for case in 0..200 {
            let n = 2 + (g.next() % 5) as usize;
            let mut history = vec![g.weights(n)];
            let mut layout = Layout::initial(&history[0]);
            for _ in 0..6 {
                let next = g.weights(n);
                let before = layout.clone();
                let (old, new) = (shares(history.last().unwrap()), shares(&next));
                layout.reweight(&next);
                assert_eq!(layout.shares(), &new[..], "case {case}");
                assert_eq!(
                    Layout::contiguous_runs(&next),
                    Layout::initial(&next).runs(),
                    "case {case}"
                );
                for b in 0..BUCKETS {
                    let (from, to) = (before.owner(b), layout.owner(b));
                    if from != to {
                        assert!(
                            new[from] < old[from] && new[to] > old[to],
                            "case {case}: bucket {b} moved {from} -> {to} ({old:?} -> {new:?})"
                        );
                    }
                }
                // Exactly the falling arms' surplus moves, no more.
                let moved = (0..BUCKETS)
                    .filter(|&b| before.owner(b) != layout.owner(b))
                    .count() as u32;
                let fell: u32 = (0..n).map(|a| old[a].saturating_sub(new[a])).sum();
                assert_eq!(moved, fell, "case {case}");
                history.push(next);
            }
            // Pure: replaying the recorded history gives the same layout.
            assert_eq!(
                Layout::replay(history.iter().map(Vec::as_slice)),
                Some(layout),
                "case {case}"
            );
        }
    }

    #[test]
    fn a_different_arm_count_starts_a_new_history() {
        let mut l = Layout::initial(&[5000, 5000]);
        l.reweight(&[10_000, 0]);
        l.reweight(&[2000, 3000, 5000]);
        assert_eq!(l, Layout::initial(&[2000, 3000, 5000]));
        assert_eq!(Layout::replay(std::iter::empty()), None);
    }
}
