//! `config::policy`: an experiment's configured analysis as the statistics
//! engine sees it.
//!
//! Owns: the one translation from a [`ControlPolicy`] to a [`stats::Policy`]
//! (the schema validates what it yields, the controller runs with it, so a
//! config that passes `abgate check` is one the controller accepts), and the way
//! back from a statistics field name to the config key it came from.
//! Never: reads config text or judges data; `stats` stays below it.

use super::model::{ControlPolicy, Direction, ExperimentKind, Guardrail};
use crate::stats::{self, GuardrailPolicy, Margin, PrimaryPolicy, Scale};

fn direction(d: Direction) -> stats::Direction {
    match d {
        Direction::Increase => stats::Direction::Increase,
        Direction::Decrease => stats::Direction::Decrease,
    }
}

/// Whether a guardrail is judged by the attribution test on event counts (errors
/// and slow requests with a relative margin): it stays valid while the canary's
/// share changes during a ramp, and needs no baseline rate.
pub fn uses_events(g: &Guardrail) -> bool {
    g.relative && g.harm == Direction::Increase && matches!(g.metric.as_str(), "error" | "slow")
}

/// The statistics policy of a configured experiment. One `alpha` sets both the
/// primary and the guardrail level; settings without a config key (SRM level
/// and concentration, equivalence margin) keep the engine's defaults.
pub fn stats_policy(p: &ControlPolicy) -> stats::Policy {
    stats::Policy {
        kind: match p.kind {
            ExperimentKind::Canary => stats::ExperimentKind::Canary,
            ExperimentKind::Ab => stats::ExperimentKind::Ab,
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
        min_exact_events: p.min_exact_events,
        ..stats::Policy::default()
    }
}

/// The config key, relative to the experiment, that a [`stats::Policy`] field
/// (as named by [`stats::PolicyError::BadParameter`]) was translated from:
/// `guardrail_alpha` → `analysis.alpha`, `guardrails[1].margin` →
/// `analysis.guardrails[1].max_relative_increase`. `None` for fields no config
/// key sets (they hold the engine's defaults).
pub(super) fn config_key(field: &str, p: &ControlPolicy) -> Option<String> {
    let key = match field {
        "alpha" | "guardrail_alpha" => "analysis.alpha",
        "design_samples" => "analysis.design_samples",
        "min_units_per_arm" => "analysis.min_units_per_arm",
        "min_events" => "analysis.min_events",
        "min_exact_events" => "analysis.min_exact_events",
        "primary.min_effect" => "analysis.primary.min_effect",
        _ => {
            let i: usize = field
                .strip_prefix("guardrails[")?
                .strip_suffix("].margin")?
                .parse()
                .ok()?;
            let g = p.guardrails.get(i)?;
            let margin = match (g.relative, g.harm) {
                (true, Direction::Increase) => "max_relative_increase",
                (false, Direction::Increase) => "max_absolute_increase",
                (true, Direction::Decrease) => "max_relative_decrease",
                (false, Direction::Decrease) => "max_absolute_decrease",
            };
            return Some(format!("analysis.guardrails[{i}].{margin}"));
        }
    };
    Some(key.to_string())
}
