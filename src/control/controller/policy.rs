//! Translating an experiment's configured policy into the statistics engine's.

use crate::config::{self, ControlPolicy};
use crate::stats::{self, GuardrailPolicy, Margin, PrimaryPolicy, Scale};

fn direction(d: config::Direction) -> stats::Direction {
    match d {
        config::Direction::Increase => stats::Direction::Increase,
        config::Direction::Decrease => stats::Direction::Decrease,
    }
}

/// Whether a guardrail is judged by the attribution test on event counts (errors
/// and slow requests with a relative margin): it stays valid while the canary's
/// share changes during a ramp, and needs no baseline rate.
pub fn uses_events(g: &config::Guardrail) -> bool {
    g.relative
        && g.harm == config::Direction::Increase
        && matches!(g.metric.as_str(), "error" | "slow")
}

pub fn stats_policy(p: &ControlPolicy) -> stats::Policy {
    stats::Policy {
        kind: match p.kind {
            config::ExperimentKind::Canary => stats::ExperimentKind::Canary,
            config::ExperimentKind::Ab => stats::ExperimentKind::Ab,
        },
        alpha: p.alpha,
        guardrail_alpha: p.alpha,
        design_samples: p.design_samples,
        primary: p.primary.as_ref().map(|pr| PrimaryPolicy {
            metric: pr.metric.clone(),
            direction: direction(pr.direction),
            scale: Scale::Relative,
            min_effect: pr.min_effect,
            equivalence_margin: None,
        }),
        guardrails: p
            .guardrails
            .iter()
            .map(|g| GuardrailPolicy {
                metric: g.metric.clone(),
                direction: direction(g.harm),
                margin: if g.relative {
                    Margin::Relative(g.margin)
                } else {
                    Margin::Absolute(g.margin)
                },
            })
            .collect(),
        min_units_per_arm: p.min_units_per_arm,
        min_events: p.min_events,
        ..stats::Policy::default()
    }
}
