//! `/metrics` for the per-arm outcomes: the Prometheus text exposition of
//! every arm recorder, rendered at scrape time from the recorders' atomics.
//!
//! Owns: the per-arm metric families (names, help, types, labels), the
//! seconds histograms with Prometheus' bucket bounds, and formatting them.
//! Never: counts anything itself beyond those histograms, or touches the
//! exporter's registry (the rest of `/metrics` comes from there).
//!
//! Why not the exporter's handles, as before: every outcome was then counted
//! twice per request, once in the recorder the statistics read and once in
//! the exporter, whose histograms also buffer each sample until upkeep. Here
//! a request records once; a scrape reads and formats.
//!
//! Process-lifetime values: recorders are restored from the store at
//! startup, but a Prometheus counter starts from zero with its process. A
//! restart that lost the last second's counts would otherwise read as a
//! counter reset to a lower value, and `rate()` would count the whole history
//! again. Each recorder keeps what it restored and subtracts it here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::recorder::{FailureKind, StatusClass};

/// Upper bounds (µs) of the seconds histograms' buckets, as before they moved
/// here: sub-millisecond proxy overhead up to minute-long streamed
/// completions.
const BOUNDS_US: [u64; 17] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// A Prometheus histogram in seconds: a count per bucket (the last one for
/// values above every bound) and the sum. Recording is a binary search over
/// 17 bounds and two relaxed adds: exact at every bound, which the
/// recorder's own log-linear buckets are not (500 µs falls inside one).
#[derive(Default)]
pub struct SecondsHistogram {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl SecondsHistogram {
    pub fn record(&self, us: u64) {
        // `le` is inclusive: the first bound at or above the value.
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// gRPC status codes 1..=16 plus one slot (index 0) for anything else.
pub const GRPC_CODES: usize = 17;

/// One arm's process-lifetime values, assigned and forced requests together.
pub struct ArmSeries<'a> {
    pub experiment: &'a str,
    pub arm: &'a str,
    /// Responses by [`StatusClass::ALL`] order.
    pub classes: [u64; 5],
    /// Failures by [`FailureKind::ALL`] order.
    pub failures: [u64; 6],
    pub forced: u64,
    /// Prompt, completion.
    pub tokens: [f64; 2],
    pub cost: f64,
    pub streams: u64,
    pub incomplete: u64,
    pub unparsed: u64,
    /// Non-zero gRPC statuses by code (index 0: above 16).
    pub grpc: [u64; GRPC_CODES],
    pub duration: &'a SecondsHistogram,
    pub ttfb: &'a SecondsHistogram,
    pub ttft: &'a SecondsHistogram,
    pub itl: &'a SecondsHistogram,
}

type Value = fn(&ArmSeries) -> f64;
/// Which histogram of an arm a family shows.
type Pick = for<'a> fn(&ArmSeries<'a>) -> &'a SecondsHistogram;

/// Appends the per-arm families to `out`, each family's series together
/// (the text format requires it), arms in the order given.
pub fn render(arms: &[ArmSeries], out: &mut String) {
    if arms.is_empty() {
        return;
    }
    labelled(
        out,
        arms,
        "abgate_requests_total",
        "Responses sent to clients, by experiment, arm and status class.",
        "counter",
        "class",
        &StatusClass::ALL.map(StatusClass::label),
        |a, i| a.classes[i] as f64,
    );
    labelled(
        out,
        arms,
        "abgate_upstream_errors_total",
        "Transport failures and client disconnects, by experiment, arm and kind.",
        "counter",
        "kind",
        &FailureKind::ALL.map(FailureKind::label),
        |a, i| a.failures[i] as f64,
    );
    family(
        out,
        arms,
        "abgate_forced_requests_total",
        "Requests whose arm was forced by the x-abgate-arm header (excluded from statistics).",
        "counter",
        |a| a.forced as f64,
    );
    labelled(
        out,
        arms,
        "abgate_tokens_total",
        "Tokens reported in responses' usage, by experiment, arm and kind (prompt, completion).",
        "counter",
        "kind",
        &["prompt", "completion"],
        |a, i| a.tokens[i],
    );
    family(
        out,
        arms,
        "abgate_cost_total",
        "Cost of responses from their usage and the backend's price table, in the config's currency, by experiment and arm (only grows; a gauge because it is fractional).",
        "gauge",
        |a| a.cost,
    );
    let plain: [(&str, &str, Value); 3] = [
        (
            "abgate_streams_total",
            "Event streams whose end the backend decided (client disconnects excluded), by experiment and arm.",
            |a| a.streams as f64,
        ),
        (
            "abgate_stream_incomplete_total",
            "Event streams that ended before [DONE], a finish reason or a terminal event, by experiment and arm.",
            |a| a.incomplete as f64,
        ),
        (
            "abgate_unparsed_responses_total",
            "Responses the inference scanner could not read (their HTTP outcome still counts), by experiment and arm.",
            |a| a.unparsed as f64,
        ),
    ];
    for (name, help, value) in plain {
        family(out, arms, name, help, "counter", value);
    }
    grpc(out, arms);
    let histograms: [(&str, &str, Pick); 4] = [
        (
            "abgate_request_duration_seconds",
            "Time from request received to last response byte.",
            |a| a.duration,
        ),
        (
            "abgate_time_to_first_byte_seconds",
            "Time from request received to the first response body byte.",
            |a| a.ttfb,
        ),
        (
            "abgate_time_to_first_token_seconds",
            "Time from request received to the first event with generated content (streams).",
            |a| a.ttft,
        ),
        (
            "abgate_inter_token_latency_seconds",
            "Per stream, the mean gap between events with generated content.",
            |a| a.itl,
        ),
    ];
    for (name, help, h) in histograms {
        histogram(out, arms, name, help, h);
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `experiment="...",arm="..."`, escaped as the text format requires.
fn arm_labels(out: &mut String, a: &ArmSeries) {
    out.push_str("experiment=\"");
    escape(out, a.experiment);
    out.push_str("\",arm=\"");
    escape(out, a.arm);
    out.push('"');
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A value as the exporter writes it: whole numbers without a fraction.
fn number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = writeln!(out, "{}", v as i64);
    } else {
        let _ = writeln!(out, "{v}");
    }
}

fn family(out: &mut String, arms: &[ArmSeries], name: &str, help: &str, kind: &str, value: Value) {
    header(out, name, help, kind);
    for a in arms {
        let _ = write!(out, "{name}{{");
        arm_labels(out, a);
        out.push_str("} ");
        number(out, value(a));
    }
}

#[allow(clippy::too_many_arguments)]
fn labelled(
    out: &mut String,
    arms: &[ArmSeries],
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    values: &[&str],
    value: fn(&ArmSeries, usize) -> f64,
) {
    header(out, name, help, kind);
    for a in arms {
        for (i, v) in values.iter().enumerate() {
            let _ = write!(out, "{name}{{");
            arm_labels(out, a);
            let _ = write!(out, ",{label}=\"{v}\"}} ");
            number(out, value(a, i));
        }
    }
}

/// Only the codes an arm has answered with: most arms never speak gRPC, and
/// 17 empty series per arm would bury the ones that matter.
fn grpc(out: &mut String, arms: &[ArmSeries]) {
    if arms.iter().all(|a| a.grpc.iter().all(|&n| n == 0)) {
        return;
    }
    header(
        out,
        "abgate_grpc_errors_total",
        "Responses whose grpc-status (trailer, or header of a trailers-only response) was not 0, by experiment, arm and code (1-16, or other).",
        "counter",
    );
    for a in arms {
        for (code, &n) in a.grpc.iter().enumerate().filter(|(_, &n)| n > 0) {
            out.push_str("abgate_grpc_errors_total{");
            arm_labels(out, a);
            if code == 0 {
                out.push_str(",code=\"other\"} ");
            } else {
                let _ = write!(out, ",code=\"{code}\"}} ");
            }
            number(out, n as f64);
        }
    }
}

fn histogram(out: &mut String, arms: &[ArmSeries], name: &str, help: &str, of: Pick) {
    header(out, name, help, "histogram");
    for a in arms {
        let h = of(a);
        // One read of each slot, so the cumulative counts, `+Inf` and
        // `_count` agree with each other under concurrent records.
        let counts: [u64; BOUNDS_US.len() + 1] = std::array::from_fn(|i| h.counts[i].load(Relaxed));
        let mut cumulative = 0;
        for (i, bound) in BOUNDS_US.iter().enumerate() {
            cumulative += counts[i];
            let _ = write!(out, "{name}_bucket{{");
            arm_labels(out, a);
            let _ = writeln!(out, ",le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        cumulative += counts[BOUNDS_US.len()];
        let _ = write!(out, "{name}_bucket{{");
        arm_labels(out, a);
        let _ = writeln!(out, ",le=\"+Inf\"}} {cumulative}");
        let _ = write!(out, "{name}_sum{{");
        arm_labels(out, a);
        out.push_str("} ");
        let _ = writeln!(out, "{}", h.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = write!(out, "{name}_count{{");
        arm_labels(out, a);
        let _ = writeln!(out, "}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::outcomes::recorder::{ArmState, RecorderRegistry};
    use crate::telemetry::Telemetry;

    fn text(r: &RecorderRegistry) -> String {
        let mut out = String::new();
        r.render_prometheus(&mut out);
        out
    }

    /// `name{labels} value` lines of `text` whose name and labels start so.
    fn value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_bucket_bound_is_inclusive_and_exact() {
        let r = RecorderRegistry::new(Telemetry::new());
        let a = r.arm("e", "a");
        // 500 µs is the first bound (0.0005 s); the recorder's own log-linear
        // bucket around it spans 496..512 µs, so only these counts tell them apart.
        for us in [499, 500, 501, 1_000, 400_000_000] {
            a.record_latency(false, Duration::from_micros(us));
        }
        let t = text(&r);
        let b = |le: &str| {
            value(
                &t,
                &format!("abgate_request_duration_seconds_bucket{{experiment=\"e\",arm=\"a\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0005"), 2.0);
        assert_eq!(b("0.001"), 4.0);
        assert_eq!(b("300"), 4.0);
        assert_eq!(b("+Inf"), 5.0);
        let count = value(
            &t,
            "abgate_request_duration_seconds_count{experiment=\"e\",arm=\"a\"}",
        );
        let sum = value(
            &t,
            "abgate_request_duration_seconds_sum{experiment=\"e\",arm=\"a\"}",
        );
        assert_eq!(count, 5.0);
        assert!((sum - 400.0025).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn counters_count_from_process_start_not_from_the_restored_state() {
        let before = RecorderRegistry::new(Telemetry::new());
        let a = before.arm("e", "a");
        for _ in 0..7 {
            a.record_response(false, http::StatusCode::OK);
        }
        a.record_response(true, http::StatusCode::BAD_GATEWAY);
        let saved: ArmState = a.state();
        // A restart: the statistics keep the history, /metrics starts at 0.
        let after = RecorderRegistry::new(Telemetry::new());
        let b = after.arm("e", "a");
        b.restore(&saved);
        assert_eq!(b.snapshot().assigned.requests(), 7);
        let t = text(&after);
        assert_eq!(
            value(
                &t,
                "abgate_requests_total{experiment=\"e\",arm=\"a\",class=\"2xx\"}"
            ),
            0.0
        );
        assert_eq!(
            value(
                &t,
                "abgate_forced_requests_total{experiment=\"e\",arm=\"a\"}"
            ),
            0.0
        );
        b.record_response(false, http::StatusCode::OK);
        b.record_response(true, http::StatusCode::OK);
        let t = text(&after);
        assert_eq!(
            value(
                &t,
                "abgate_requests_total{experiment=\"e\",arm=\"a\",class=\"2xx\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "abgate_requests_total{experiment=\"e\",arm=\"a\",class=\"5xx\"}"
            ),
            0.0
        );
        assert_eq!(
            value(
                &t,
                "abgate_forced_requests_total{experiment=\"e\",arm=\"a\"}"
            ),
            1.0
        );
    }

    #[test]
    fn each_family_is_declared_once_with_its_series_together_and_labels_escaped() {
        let r = RecorderRegistry::new(Telemetry::new());
        r.arm("b", "x").record_grpc_error(false, 14, false);
        r.arm("a", "we\"ird\\arm")
            .record_latency(false, Duration::from_millis(3));
        let t = text(&r);
        // Every sample line belongs to the family of the TYPE line above it.
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        let mut current = String::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                *types.entry(current.clone()).or_default() += 1;
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "{l} outside its family in\n{t}");
            }
        }
        assert!(types.values().all(|&n| n == 1), "{types:?}");
        assert_eq!(types.len(), 13, "{types:?}");
        assert!(t.contains("arm=\"we\\\"ird\\\\arm\""), "{t}");
        // gRPC series exist only for codes seen.
        assert_eq!(
            value(
                &t,
                "abgate_grpc_errors_total{experiment=\"b\",arm=\"x\",code=\"14\"}"
            ),
            1.0
        );
        assert!(!t.contains("code=\"13\""), "{t}");
        // Arms in (experiment, arm) order within a family.
        let first_a = t.find("abgate_requests_total{experiment=\"a\"").unwrap();
        let first_b = t.find("abgate_requests_total{experiment=\"b\"").unwrap();
        assert!(first_a < first_b);
    }

    #[test]
    fn no_arms_render_nothing() {
        let r = RecorderRegistry::new(Telemetry::new());
        assert_eq!(text(&r), "");
    }
}
