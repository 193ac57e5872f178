//! Paired outcomes of shadow copies: each mirrored request's primary twin and
//! its shadow copy, recorded together.
//!
//! Owns: the meeting point of a request's two outcomes ([`PairSlot`]: whichever
//! side finishes second records the pair) and the per-(experiment, shadow)
//! sums a paired test reads ([`PairBook`]): for each continuous metric
//! `n, Σx, Σy, Σx², Σy², Σxy` (x the primary, y the shadow), for each binary
//! one the discordant counts.
//!
//! Why pairs: both outcomes answer the same request, so the request's own
//! difficulty (prompt length, cache state, backend load at that moment)
//! cancels in `y − x`; the per-pair differences vary far less than two
//! independent samples do, and a paired interval is much tighter.
//!
//! A pair is left out when either side does not describe the model: a client
//! that left before the primary's end (its latency is cut short), or a copy
//! that was never sent. Nothing here locks or allocates per request beyond the
//! one slot shared by the two sides of a mirrored request.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use super::metrics::AtomicF64;
use crate::stats::paired::PairedSums;

/// What one side of a pair did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairOutcome {
    /// Describes the model: false when the client left (primary) or the copy
    /// failed before it was sent; such pairs are left out.
    pub counted: bool,
    /// A 5xx, a non-zero gRPC status or an upstream transport failure.
    pub error: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    /// Streams only.
    pub ttft_ms: Option<f64>,
    pub completion_tokens: Option<f64>,
    /// Streams only: ended before their terminal event.
    pub incomplete: Option<bool>,
}

impl PairOutcome {
    /// A request that failed without a response (an error, `latency` long).
    pub fn failed(latency: std::time::Duration) -> PairOutcome {
        PairOutcome {
            counted: true,
            error: true,
            latency_ms: latency.as_secs_f64() * 1e3,
            ..PairOutcome::uncounted()
        }
    }

    /// A side that tells nothing about the model.
    pub fn uncounted() -> PairOutcome {
        PairOutcome {
            counted: false,
            error: false,
            latency_ms: 0.0,
            ttfb_ms: None,
            ttft_ms: None,
            completion_tokens: None,
            incomplete: None,
        }
    }
}

/// Which side of a pair reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Shadow,
}

/// Where a mirrored request's two outcomes meet.
pub struct PairSlot {
    primary: OnceLock<PairOutcome>,
    shadow: OnceLock<PairOutcome>,
    arrived: AtomicU8,
    book: Arc<PairBook>,
}

impl PairSlot {
    pub fn new(book: Arc<PairBook>) -> Arc<PairSlot> {
        Arc::new(PairSlot {
            primary: OnceLock::new(),
            shadow: OnceLock::new(),
            arrived: AtomicU8::new(0),
            book,
        })
    }

    /// Reports one side (once; a second report of the same side is
    /// ignored). The second side to arrive records the pair.
    pub fn report(&self, side: Side, outcome: PairOutcome) {
        let cell = match side {
            Side::Primary => &self.primary,
            Side::Shadow => &self.shadow,
        };
        if cell.set(outcome).is_err() {
            return;
        }
        // AcqRel: the second arrival must see the first side's outcome.
        if self
            .arrived
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            if let (Some(p), Some(s)) = (self.primary.get(), self.shadow.get()) {
                self.book.record(p, s);
            }
        }
    }
}

/// Running sums of one continuous metric over pairs.
#[derive(Default)]
struct PairCell {
    n: AtomicU64,
    sx: AtomicF64,
    sy: AtomicF64,
    sxx: AtomicF64,
    syy: AtomicF64,
    sxy: AtomicF64,
}

impl PairCell {
    fn record(&self, x: f64, y: f64) {
        self.n.fetch_add(1, Relaxed);
        self.sx.add(x);
        self.sy.add(y);
        self.sxx.add(x * x);
        self.syy.add(y * y);
        self.sxy.add(x * y);
    }

    fn restore(&self, s: &PairedSums) {
        self.n.fetch_add(s.n, Relaxed);
        self.sx.add(s.sum_x);
        self.sy.add(s.sum_y);
        self.sxx.add(s.sum_xx);
        self.syy.add(s.sum_yy);
        self.sxy.add(s.sum_xy);
    }

    fn get(&self) -> PairedSums {
        PairedSums {
            n: self.n.load(Relaxed),
            sum_x: self.sx.get(),
            sum_y: self.sy.get(),
            sum_xx: self.sxx.get(),
            sum_yy: self.syy.get(),
            sum_xy: self.sxy.get(),
        }
    }
}

/// Discordant counts of one binary metric over pairs.
#[derive(Default)]
struct DiscordantCell {
    pairs: AtomicU64,
    primary_only: AtomicU64,
    shadow_only: AtomicU64,
    both: AtomicU64,
}

/// A copy of a [`DiscordantCell`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Discordant {
    /// Pairs where both sides reported this metric.
    pub pairs: u64,
    /// Pairs where only the primary had the event (an error, say).
    pub primary_only: u64,
    /// Pairs where only the shadow had it.
    pub shadow_only: u64,
    /// Pairs where both had it (a relative margin on the rate needs them:
    /// the primary's rate is `(primary_only + both) / pairs`).
    #[serde(default)]
    pub both: u64,
}

impl Discordant {
    /// What accrued since `base` (an earlier copy of the same cell).
    pub fn since(&self, base: &Discordant) -> Discordant {
        Discordant {
            pairs: self.pairs.saturating_sub(base.pairs),
            primary_only: self.primary_only.saturating_sub(base.primary_only),
            shadow_only: self.shadow_only.saturating_sub(base.shadow_only),
            both: self.both.saturating_sub(base.both),
        }
    }
}

impl DiscordantCell {
    fn record(&self, x: bool, y: bool) {
        self.pairs.fetch_add(1, Relaxed);
        match (x, y) {
            (true, false) => self.primary_only.fetch_add(1, Relaxed),
            (false, true) => self.shadow_only.fetch_add(1, Relaxed),
            (true, true) => self.both.fetch_add(1, Relaxed),
            (false, false) => 0,
        };
    }

    fn get(&self) -> Discordant {
        Discordant {
            pairs: self.pairs.load(Relaxed),
            primary_only: self.primary_only.load(Relaxed),
            shadow_only: self.shadow_only.load(Relaxed),
            both: self.both.load(Relaxed),
        }
    }
}

/// One shadow arm's pairs with its primary twins.
#[derive(Default)]
pub struct PairBook {
    /// Pairs left out (a side that does not describe the model).
    dropped: AtomicU64,
    latency_ms: PairCell,
    ttfb_ms: PairCell,
    ttft_ms: PairCell,
    completion_tokens: PairCell,
    error: DiscordantCell,
    stream_incomplete: DiscordantCell,
}

/// A copy of a [`PairBook`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairSnapshot {
    pub dropped: u64,
    pub latency_ms: PairedSums,
    pub ttfb_ms: PairedSums,
    pub ttft_ms: PairedSums,
    pub completion_tokens: PairedSums,
    pub error: Discordant,
    pub stream_incomplete: Discordant,
}

impl PairSnapshot {
    /// Pairs recorded (each has a latency on both sides).
    pub fn pairs(&self) -> u64 {
        self.latency_ms.n
    }

    /// What accrued since `base`, an earlier snapshot of the same book. A
    /// book that restarted below it (state saved before pairs were, or
    /// lost) is taken whole.
    pub fn since(&self, base: &PairSnapshot) -> PairSnapshot {
        if self.pairs() < base.pairs() || self.dropped < base.dropped {
            return *self;
        }
        PairSnapshot {
            dropped: self.dropped - base.dropped,
            latency_ms: self.latency_ms.minus(&base.latency_ms),
            ttfb_ms: self.ttfb_ms.minus(&base.ttfb_ms),
            ttft_ms: self.ttft_ms.minus(&base.ttft_ms),
            completion_tokens: self.completion_tokens.minus(&base.completion_tokens),
            error: self.error.since(&base.error),
            stream_incomplete: self.stream_incomplete.since(&base.stream_incomplete),
        }
    }

    /// A continuous metric's sums by name (the names the view uses).
    pub fn continuous(&self, metric: &str) -> Option<&PairedSums> {
        match metric {
            "latency_ms" => Some(&self.latency_ms),
            "ttfb_ms" => Some(&self.ttfb_ms),
            "ttft_ms" => Some(&self.ttft_ms),
            "completion_tokens" => Some(&self.completion_tokens),
            _ => None,
        }
    }

    /// A binary metric's counts by name.
    pub fn binary(&self, metric: &str) -> Option<&Discordant> {
        match metric {
            "error" => Some(&self.error),
            "stream_incomplete" => Some(&self.stream_incomplete),
            _ => None,
        }
    }
}

impl PairBook {
    fn record(&self, p: &PairOutcome, s: &PairOutcome) {
        if !(p.counted && s.counted) {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.latency_ms.record(p.latency_ms, s.latency_ms);
        self.error.record(p.error, s.error);
        if let (Some(x), Some(y)) = (p.ttfb_ms, s.ttfb_ms) {
            self.ttfb_ms.record(x, y);
        }
        if let (Some(x), Some(y)) = (p.ttft_ms, s.ttft_ms) {
            self.ttft_ms.record(x, y);
        }
        if let (Some(x), Some(y)) = (p.completion_tokens, s.completion_tokens) {
            self.completion_tokens.record(x, y);
        }
        if let (Some(x), Some(y)) = (p.incomplete, s.incomplete) {
            self.stream_incomplete.record(x, y);
        }
    }

    /// Adds saved pairs (at startup, before traffic).
    pub fn restore(&self, s: &PairSnapshot) {
        self.dropped.fetch_add(s.dropped, Relaxed);
        for (cell, sums) in [
            (&self.latency_ms, &s.latency_ms),
            (&self.ttfb_ms, &s.ttfb_ms),
            (&self.ttft_ms, &s.ttft_ms),
            (&self.completion_tokens, &s.completion_tokens),
        ] {
            cell.restore(sums);
        }
        for (cell, d) in [
            (&self.error, &s.error),
            (&self.stream_incomplete, &s.stream_incomplete),
        ] {
            cell.pairs.fetch_add(d.pairs, Relaxed);
            cell.primary_only.fetch_add(d.primary_only, Relaxed);
            cell.shadow_only.fetch_add(d.shadow_only, Relaxed);
            cell.both.fetch_add(d.both, Relaxed);
        }
    }

    pub fn snapshot(&self) -> PairSnapshot {
        PairSnapshot {
            dropped: self.dropped.load(Relaxed),
            latency_ms: self.latency_ms.get(),
            ttfb_ms: self.ttfb_ms.get(),
            ttft_ms: self.ttft_ms.get(),
            completion_tokens: self.completion_tokens.get(),
            error: self.error.get(),
            stream_incomplete: self.stream_incomplete.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(error: bool, latency_ms: f64) -> PairOutcome {
        PairOutcome {
            counted: true,
            error,
            latency_ms,
            ttfb_ms: Some(latency_ms / 2.0),
            ttft_ms: None,
            completion_tokens: None,
            incomplete: None,
        }
    }

    #[test]
    fn the_second_side_records_the_pair_in_either_order() {
        let book = Arc::new(PairBook::default());
        let a = PairSlot::new(book.clone());
        a.report(Side::Primary, side(false, 10.0));
        assert_eq!(book.snapshot().pairs(), 0, "one side is not a pair");
        a.report(Side::Shadow, side(true, 14.0));
        let b = PairSlot::new(book.clone());
        b.report(Side::Shadow, side(false, 20.0));
        b.report(Side::Primary, side(true, 16.0));
        // A repeated report of a side changes nothing.
        b.report(Side::Primary, side(true, 99.0));
        let s = book.snapshot();
        assert_eq!(s.pairs(), 2);
        assert_eq!(
            s.latency_ms.mean_shadow() - s.latency_ms.mean_primary(),
            4.0
        );
        assert_eq!(
            (s.latency_ms.sum_xy, s.latency_ms.sum_xx),
            (10.0 * 14.0 + 16.0 * 20.0, 100.0 + 256.0)
        );
        assert_eq!(
            s.error,
            Discordant {
                pairs: 2,
                primary_only: 1,
                shadow_only: 1,
                both: 0,
            }
        );
        assert_eq!(s.ttfb_ms.n, 2);
        assert_eq!(s.ttft_ms.n, 0, "only pairs where both sides streamed");
    }

    #[test]
    fn a_side_that_does_not_describe_the_model_drops_the_pair() {
        let book = Arc::new(PairBook::default());
        let a = PairSlot::new(book.clone());
        a.report(Side::Primary, PairOutcome::uncounted());
        a.report(Side::Shadow, side(false, 5.0));
        let s = book.snapshot();
        assert_eq!((s.pairs(), s.dropped), (0, 1));
    }

    #[test]
    fn both_sides_at_once_record_exactly_one_pair() {
        let book = Arc::new(PairBook::default());
        for _ in 0..200 {
            let slot = PairSlot::new(book.clone());
            let other = slot.clone();
            let t = std::thread::spawn(move || other.report(Side::Shadow, side(false, 2.0)));
            slot.report(Side::Primary, side(false, 1.0));
            t.join().unwrap();
        }
        assert_eq!(book.snapshot().pairs(), 200);
    }

    #[test]
    fn saved_pairs_restore_whole_so_a_step_base_still_subtracts_after_a_restart() {
        let book = Arc::new(PairBook::default());
        for i in 0..3 {
            let slot = PairSlot::new(book.clone());
            slot.report(Side::Primary, side(i == 0, 10.0 + i as f64));
            slot.report(Side::Shadow, side(false, 12.0));
        }
        let saved = book.snapshot();
        // Through the store's JSON, as the snapshot writes it.
        let state = crate::outcomes::recorder::ArmState {
            pairs: Some(saved),
            ..Default::default()
        };
        let state: crate::outcomes::recorder::ArmState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let fresh = Arc::new(PairBook::default());
        fresh.restore(&state.pairs.unwrap());
        assert_eq!(fresh.snapshot(), saved);
        // A shadow step's base taken before the restart: one new pair after it.
        let slot = PairSlot::new(fresh.clone());
        slot.report(Side::Primary, side(false, 10.0));
        slot.report(Side::Shadow, side(true, 15.0));
        let since = fresh.snapshot().since(&saved);
        assert_eq!(since.pairs(), 1);
        assert_eq!(since.latency_ms.sum_y, 15.0);
        assert_eq!((since.error.pairs, since.error.shadow_only), (1, 1));
        // Arms without pairs save no `pairs` field.
        let plain = serde_json::to_string(&crate::outcomes::recorder::ArmState::default()).unwrap();
        assert!(!plain.contains("pairs"), "{plain}");
    }
}
