//! Deterministic reference vectors (see `data/stats/PROVENANCE.md`), each at the
//! tolerance stated in the vector file.

use abgate::stats::attribution::{
    attribution_sprt_llr, dirichlet_attribution, wald_asn_bernoulli, wald_thresholds,
};
use abgate::stats::mixture::{
    compare, log_e_with_tau2, normal_mixture_bound_one_sided, normal_mixture_bound_two_sided,
    r_star, MixtureConfig, NotComputable, Scale,
};
use abgate::stats::srm::{sequential_log_bf, srm_test};
use abgate::stats::{BinaryStats, ContinuousStats, Moments};
use serde_json::Value;

const VECTORS: &str = include_str!("data/stats/vectors.json");

fn vectors(kind: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(VECTORS).expect("vector file parses");
    let v: Vec<Value> = all["deterministic"]
        .as_array()
        .expect("deterministic array")
        .iter()
        .filter(|v| v["kind"] == kind)
        .cloned()
        .collect();
    assert!(!v.is_empty(), "no vectors of kind {kind}");
    v
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[track_caller]
fn close(got: f64, want: f64, rel_tol: f64, what: &str) {
    let scale = want.abs().max(1e-300);
    assert!(
        (got - want).abs() <= rel_tol * scale || got == want,
        "{what}: got {got:e}, want {want:e} (rel tol {rel_tol:e}, rel err {:e})",
        (got - want).abs() / scale
    );
}

fn instant_p(log_e: f64) -> f64 {
    if log_e <= 0.0 {
        1.0
    } else {
        (-log_e).exp()
    }
}

#[test]
fn binary_two_arm() {
    for v in vectors("binary_two_arm") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let a = BinaryStats::new(u(&i["n_a"]), u(&i["s_a"]))
            .unwrap()
            .moments();
        let b = BinaryStats::new(u(&i["n_b"]), u(&i["s_b"]))
            .unwrap()
            .moments();
        let cfg = MixtureConfig::new(f(&i["alpha"]), 5000.0).unwrap();
        let abs = compare(&a, &b, Scale::Absolute, &cfg).expect("computable");
        close(abs.ci[0], f(&e["gb_abs_nstar5000_ci"][0]), tol, "abs lo");
        close(abs.ci[1], f(&e["gb_abs_nstar5000_ci"][1]), tol, "abs hi");
        close(abs.p_value, f(&e["gb_abs_p"]), tol, "abs p");
        let rel = compare(&a, &b, Scale::Relative, &cfg).expect("computable");
        close(rel.ci[0], f(&e["gb_rel_nstar5000_ci"][0]), tol, "rel lo");
        close(rel.ci[1], f(&e["gb_rel_nstar5000_ci"][1]), tol, "rel hi");
        close(rel.p_value, f(&e["gb_rel_p"]), tol, "rel p");
        // Johari mSPRT with tau² = 1e-4 and the unpooled plug-in variance.
        let var = a.variance / a.n as f64 + b.variance / b.n as f64;
        let p = instant_p(log_e_with_tau2(b.mean - a.mean, var, 1e-4));
        close(p, f(&e["msprt_tau2_1em4_av_p"]), tol, "msprt p");
    }
}

#[test]
fn binary_acceptance_numbers_from_the_brief() {
    let a = BinaryStats::new(10_000, 1000).unwrap().moments();
    let b = BinaryStats::new(10_000, 1100).unwrap().moments();
    let cfg = MixtureConfig::default();
    let abs = compare(&a, &b, Scale::Absolute, &cfg).unwrap();
    close(abs.ci[0], -0.00355524, 1e-5, "abs lo");
    close(abs.ci[1], 0.0235552, 1e-5, "abs hi");
    close(abs.p_value, 0.43372, 1e-5, "abs p");
    let rel = compare(&a, &b, Scale::Relative, &cfg).unwrap();
    close(rel.ci[0], -0.0422064, 1e-5, "rel lo");
    close(rel.ci[1], 0.242206, 1e-5, "rel hi");
    close(rel.p_value, 0.549038, 1e-5, "rel p");
}

#[test]
fn continuous_two_arm() {
    for v in vectors("continuous_two_arm") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let a = ContinuousStats::from_moments(u(&i["n_a"]), f(&i["mean_a"]), f(&i["var_a"]))
            .unwrap()
            .moments();
        let b = ContinuousStats::from_moments(u(&i["n_b"]), f(&i["mean_b"]), f(&i["var_b"]))
            .unwrap()
            .moments();
        close(a.variance, f(&i["var_a"]), 1e-12, "variance round trip");
        let cfg = MixtureConfig::new(f(&i["alpha"]), 5000.0).unwrap();
        let abs = compare(&a, &b, Scale::Absolute, &cfg).expect("computable");
        close(abs.ci[0], f(&e["gb_abs_ci"][0]), tol, "abs lo");
        close(abs.ci[1], f(&e["gb_abs_ci"][1]), tol, "abs hi");
        close(abs.p_value, f(&e["gb_abs_p"]), tol, "abs p");
        match compare(&a, &b, Scale::Relative, &cfg) {
            Ok(rel) => {
                close(rel.ci[0], f(&e["gb_rel_ci"][0]), tol, "rel lo");
                close(rel.ci[1], f(&e["gb_rel_ci"][1]), tol, "rel hi");
                close(rel.p_value, f(&e["gb_rel_p"]), tol, "rel p");
            }
            Err(nc) => {
                // The reference has NaN (null after copying) exactly when mean_a = 0.
                assert!(e["gb_rel_p"].is_null(), "unexpected {nc:?}");
                assert_eq!(nc, NotComputable::ZeroBaselineMean);
            }
        }
        let var = a.variance / a.n as f64 + b.variance / b.n as f64;
        let p = instant_p(log_e_with_tau2(b.mean - a.mean, var, f(&i["tau2"])));
        close(p, f(&e["msprt_av_p"]), tol, "msprt p");
    }
}

#[test]
fn normal_mixture_identity() {
    for v in vectors("normal_mixture_identity") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        // n pairs, per-arm variance σ²: Var(D̂) = 2σ²/n (Johari's V/n).
        let var = 2.0 * f(&i["sigma2_per_arm"]) / f(&i["n_pairs"]);
        let e_value = log_e_with_tau2(f(&i["diff"]), var, f(&i["tau2"])).exp();
        close(e_value, f(&e["e_value"]), tol, "e-value");
    }
}

#[test]
fn tuning_r_star() {
    for v in vectors("tuning_r_star") {
        let tol = f(&v["rel_tol"]);
        let alphas = v["inputs"]["alpha"].as_array().unwrap();
        let want = v["expect"]["r_star"].as_array().unwrap();
        for (a, w) in alphas.iter().zip(want) {
            close(r_star(f(a)), f(w), tol, "r*");
        }
    }
}

#[test]
fn confseq_normal_mixture_bound() {
    for v in vectors("confseq_normal_mixture_bound") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let (vv, v_opt, a, a_opt) = (
            f(&i["v"]),
            f(&i["v_opt"]),
            f(&i["alpha"]),
            f(&i["alpha_opt"]),
        );
        close(
            normal_mixture_bound_two_sided(vv, v_opt, a, a_opt),
            f(&e["two_sided"]),
            tol,
            "two-sided",
        );
        close(
            normal_mixture_bound_one_sided(vv, v_opt, a, a_opt),
            f(&e["one_sided"]),
            tol,
            "one-sided",
        );
    }
}

#[test]
fn srm() {
    for v in vectors("srm") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let counts: Vec<u64> = i["counts"].as_array().unwrap().iter().map(u).collect();
        let weights: Vec<f64> = i["weights"].as_array().unwrap().iter().map(f).collect();
        let r100 = srm_test(&counts, &weights, 100.0).unwrap();
        let r10k = srm_test(&counts, &weights, 10_000.0).unwrap();
        // chi2 = 0 compares exactly; others relatively.
        assert!(
            (r100.chi2 - f(&e["chi2"])).abs() <= tol * f(&e["chi2"]).max(1e-12),
            "chi2"
        );
        close(r100.chi2_p, f(&e["chi2_p"]), tol, "chi2 p");
        close(r100.p_value, f(&e["seq_p_k100"]), tol, "seq p k=100");
        close(r10k.p_value, f(&e["seq_p_k10000"]), tol, "seq p k=1e4");
    }
}

#[test]
fn srm_path_day() {
    // Days of one path, in order; the running minimum is taken across them.
    let mut running = 1.0_f64;
    for v in vectors("srm_path_day") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let counts: Vec<u64> = i["cum_counts"].as_array().unwrap().iter().map(u).collect();
        let theta: Vec<f64> = i["theta0"].as_array().unwrap().iter().map(f).collect();
        let r = srm_test(&counts, &theta, f(&i["k"])).unwrap();
        running = running.min(r.p_value);
        close(running, f(&e["running_min_p"]), tol, "running min p");
        close(r.chi2_p, f(&e["chi2_p"]), tol, "chi2 p");
    }
}

/// (look, n per arm, successes A, successes B, expected running minima (mSPRT, GB)).
type Look = (u64, u64, u64, u64, Option<(f64, f64)>);

#[test]
fn av_p_path_binary() {
    let mut looks: Vec<Look> = vectors("av_p_path_binary")
        .iter()
        .map(|v| {
            let i = &v["inputs"];
            let e = &v["expect"];
            (
                u(&i["look"]),
                u(&i["n_per_arm"]),
                u(&i["s_a"]),
                u(&i["s_b"]),
                Some((f(&e["msprt_running_min"]), f(&e["gb_running_min"]))),
            )
        })
        .collect();
    // Look 4 is missing from the reference path although the minima at looks 5-7
    // were attained there; 400 vs 450 of 4000 is the unique integer reconstruction
    // (see PROVENANCE.md). It has no expectation of its own.
    looks.push((4, 4000, 400, 450, None));
    looks.sort_by_key(|l| l.0);
    let cfg = MixtureConfig::default();
    let (mut run_m, mut run_g) = (1.0_f64, 1.0_f64);
    for (look, n, sa, sb, want) in looks {
        let a = BinaryStats::new(n, sa).unwrap().moments();
        let b = BinaryStats::new(n, sb).unwrap().moments();
        let var = a.variance / n as f64 + b.variance / n as f64;
        run_m = run_m.min(instant_p(log_e_with_tau2(b.mean - a.mean, var, 1e-4)));
        run_g = run_g.min(compare(&a, &b, Scale::Absolute, &cfg).unwrap().p_value);
        if let Some((m, g)) = want {
            close(run_m, m, 1e-6, &format!("msprt running min at look {look}"));
            close(run_g, g, 1e-6, &format!("gb running min at look {look}"));
        }
    }
}

#[test]
fn error_attribution_sprt() {
    for v in vectors("error_attribution_sprt") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let (q1, up, dn) = attribution_sprt_llr(f(&i["w"]), f(&i["rr"]));
        close(q1, f(&e["q1"]), tol, "q1");
        close(up, f(&e["llr_canary"]), tol, "llr canary");
        close(dn, f(&e["llr_base"]), tol, "llr base");
    }
}

#[test]
fn event_count_attribution_dirichlet() {
    for v in vectors("event_count_attribution_dirichlet") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let c: Vec<u64> = i["counts_baseline_canary"]
            .as_array()
            .unwrap()
            .iter()
            .map(u)
            .collect();
        let shares: Vec<f64> = i["shares"].as_array().unwrap().iter().map(f).collect();
        let (p, ci) = dirichlet_attribution(c[0], c[1], shares[1], f(&i["k"]), 0.05).unwrap();
        close(p, f(&e["p"]), tol, "p");
        // Same number via the SRM Bayes factor on [baseline, canary].
        let bf = sequential_log_bf(&c, &shares, f(&i["k"])).unwrap();
        close(instant_p(bf), f(&e["p"]), tol, "p via srm");
        // The reference CI came from a convex solver: 1e-3 per the vector's note.
        close(ci[0], f(&e["log_rr_ci"][0]), 1e-3, "log rr lo");
        close(ci[1], f(&e["log_rr_ci"][1]), 1e-3, "log rr hi");
    }
}

#[test]
fn wald_thresholds_vectors() {
    for v in vectors("wald_thresholds") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let (la, lb) = wald_thresholds(f(&i["alpha"]), f(&i["beta"]));
        close(la, f(&e["lnA"]), tol, "ln A");
        close(lb, f(&e["lnB"]), tol, "ln B");
    }
}

#[test]
fn wald_bernoulli_asn() {
    for v in vectors("wald_bernoulli_asn") {
        let (i, e, tol) = (&v["inputs"], &v["expect"], f(&v["rel_tol"]));
        let (p0, p1) = (f(&i["p0"]), f(&i["p1"]));
        let (up, dn) = abgate::stats::attribution::bernoulli_llr_increments(p0, p1);
        close(up, f(&e["llr_err"]), tol, "llr err");
        close(dn, f(&e["llr_ok"]), tol, "llr ok");
        let (a0, a1) = wald_asn_bernoulli(p0, p1, f(&i["alpha"]), f(&i["beta"]));
        close(a0, f(&e["asn_p0"]), tol, "asn p0");
        close(a1, f(&e["asn_p1"]), tol, "asn p1");
    }
}

#[test]
fn welford_and_chan_merge_agree_with_two_pass() {
    let xs: Vec<f64> = (0..1000)
        .map(|i| 1e6 + ((i * 37) % 101) as f64 * 0.25)
        .collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    let mut whole = ContinuousStats::default();
    let (mut left, mut right) = (ContinuousStats::default(), ContinuousStats::default());
    for (k, &x) in xs.iter().enumerate() {
        whole.push(x).unwrap();
        if k < 333 {
            left.push(x).unwrap()
        } else {
            right.push(x).unwrap()
        }
    }
    left.merge(&right);
    close(whole.mean, mean, 1e-14, "welford mean");
    close(whole.variance(), var, 1e-9, "welford variance");
    close(left.mean, mean, 1e-14, "merged mean");
    close(left.variance(), var, 1e-9, "merged variance");
    assert_eq!(left.n, 1000);
    assert!(ContinuousStats::default().push(f64::NAN).is_err());
    assert!(BinaryStats::new(10, 11).is_err());
    assert!(ContinuousStats::from_moments(10, 1.0, -1.0).is_err());
}

#[test]
fn degenerate_inputs_are_not_computable() {
    let cfg = MixtureConfig::default();
    let empty = Moments::default();
    let some = BinaryStats::new(100, 10).unwrap().moments();
    assert_eq!(
        compare(&empty, &some, Scale::Absolute, &cfg),
        Err(NotComputable::EmptyArm)
    );
    let zeros = BinaryStats::new(100, 0).unwrap().moments();
    assert_eq!(
        compare(&zeros, &zeros, Scale::Absolute, &cfg),
        Err(NotComputable::ZeroVariance)
    );
    assert_eq!(
        compare(&zeros, &some, Scale::Relative, &cfg),
        Err(NotComputable::ZeroBaselineMean)
    );
}
