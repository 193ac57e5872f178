"""Reference vectors for abgate's paired (shadow vs primary) tests.

Independent of the Rust code: everything is computed from the raw simulated
pairs (per-pair differences d_i = y_i - x_i, two-pass moments with math.fsum),
never from the six running sums the Rust side keeps, so the sums <-> pairs
algebra is checked too.  The mixture formulas are those of
../shared/reference/avi.py / STATISTICS.md, in the parameterisation of gbstats
(gb_rho, gb_sequential: rho, s2 = var * N) rather than the (r, half-width) form
used in Rust:

* continuous two-sided: avi.gb_sequential(estimate, var, n_total = n pairs,
  alpha, n_star = design pairs); log e = rho^2 st2 / (2 (N rho^2 + 1)) - ln sqrt(N rho^2 + 1);
* continuous one-sided: STATISTICS.md 1.3 half-normal mixture,
  log M = ln 2 - ln(1+r)/2 + z^2 r / (2 (1+r)) + ln Phi(z sqrt(r/(1+r))),
  r = N * gb_rho(alpha, n_star, two_sided=False)^2, z = (s*est - null)/se;
* relative scale: ratio R = ybar/xbar, delta method with the covariance,
  var = (s_y^2 - 2 R s_xy + R^2 s_x^2) / (n xbar^2), each moment two-pass;
* discordant pairs: avi.beta_binomial_log_e(c, m, 1/2, a, a) (McNemar mixture),
  CS for q by bisection of that e-value against 1/alpha, mapped to the risk
  difference with the plug-in m/n;
* discordant one-sided (betting): the product over the raw pair sequence of
  (1 + lam_k (s * D_i - null)), D_i = y_i - x_i, lam_k = 2^-k / (1 + null),
  k = 1..20, averaged with equal weights.

"Not computable" rules (the specification, stated on raw data): n = 0 ->
empty_arm; n = 1 -> zero_variance; sum of squared deviations <= 1e-12 times the
raw sum of squares (absolute: sum(x^2) + sum(y^2); relative: sum(y^2) +
R^2 sum(x^2)) -> zero_variance; relative with xbar = 0 -> zero_baseline_mean;
discordant with n = 0 -> empty_arm, m = 0 -> zero_variance (two-sided only).

Usage (from the repository root):  python3 tests/it/data/stats/paired_vectors.py
writes tests/it/data/stats/paired_vectors.json.  Pure Python 3 (math, random, json).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys

RESOLUTION = 1e-12
BETS = 20


# --- mixture formulas (avi.py / STATISTICS.md) -----------------------------


def gb_rho(alpha, n_star, two_sided=True):
    a = alpha if two_sided else 2 * alpha
    return math.sqrt((-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / n_star)


def gb_sequential(point_estimate, variance, n_total, alpha, n_star):
    """avi.gb_sequential, plus the log e-value."""
    rho = gb_rho(alpha, n_star)
    s2 = variance * n_total
    tr2p1 = n_total * rho**2 + 1
    hw = math.sqrt(s2) * math.sqrt(2 * tr2p1 * math.log(math.sqrt(tr2p1) / alpha) / (n_total * rho) ** 2)
    st2 = point_estimate**2 * n_total / variance
    log_e = rho**2 * st2 / (2 * tr2p1) - 0.5 * math.log(tr2p1)
    return point_estimate - hw, point_estimate + hw, min(1.0, math.exp(-log_e)), log_e


def ln_norm_cdf(x):
    return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))


def one_sided_log_e(z, r):
    return math.log(2.0) - 0.5 * math.log1p(r) + z * z * r / (2 * (1 + r)) + ln_norm_cdf(z * math.sqrt(r / (1 + r)))


def betaln(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_binomial_log_e(k, n, q0, a, b):
    """avi.beta_binomial_log_e with the 0 * log 0 = 0 convention."""
    ll = (k * math.log(q0) if k else 0.0) + ((n - k) * math.log1p(-q0) if n - k else 0.0)
    return betaln(a + k, b + n - k) - betaln(a, b) - ll


# --- continuous pairs ------------------------------------------------------


def mean(v):
    return math.fsum(v) / len(v)


def cov(u, v):
    mu, mv = mean(u), mean(v)
    return math.fsum((a - mu) * (b - mv) for a, b in zip(u, v)) / (len(u) - 1)


def continuous_scale(xs, ys, scale):
    n = len(xs)
    if n == 0:
        return "empty_arm"
    if n == 1:
        return "zero_variance"
    if scale == "absolute":
        d = [y - x for x, y in zip(xs, ys)]
        est = mean(d)
        ss = math.fsum((v - est) ** 2 for v in d)
        raw = math.fsum(x * x for x in xs) + math.fsum(y * y for y in ys)
        if not ss > RESOLUTION * raw:
            return "zero_variance"
        return est, ss / (n - 1) / n
    xbar, ybar = mean(xs), mean(ys)
    if xbar == 0.0:
        return "zero_baseline_mean"
    r = ybar / xbar
    sx2, sy2, sxy = cov(xs, xs), cov(ys, ys), cov(xs, ys)
    bracket = sy2 - 2 * r * sxy + r * r * sx2
    raw = math.fsum(y * y for y in ys) + r * r * math.fsum(x * x for x in xs)
    if not bracket * (n - 1) > RESOLUTION * raw:
        return "zero_variance"
    return r - 1.0, bracket / (n * xbar * xbar)


def continuous_case(name, xs, ys, alpha, design, margins):
    out = {"kind": "paired_continuous", "name": name, "rel_tol": 1e-9, "inputs": {
        "alpha": alpha, "design_samples": design, "pairs": [[x, y] for x, y in zip(xs, ys)],
        "margins": margins}, "expect": {}}
    for scale in ("absolute", "relative"):
        res = continuous_scale(xs, ys, scale)
        if isinstance(res, str):
            out["expect"][scale] = {"not_computable": res}
            continue
        est, var = res
        n = len(xs)
        lo, hi, p, log_e = gb_sequential(est, var, n, alpha, design)
        r1 = n * gb_rho(alpha, design, two_sided=False) ** 2
        se = math.sqrt(var)
        one = []
        for sign, null in margins[scale]:
            one.append({"sign": sign, "null": null, "log_e": one_sided_log_e((sign * est - null) / se, r1)})
        out["expect"][scale] = {"estimate": est, "std_error": se, "ci": [lo, hi], "p_value": p,
                                "log_e": log_e, "n_total": n, "one_sided": one}
    return out


def latency_pairs(rng, n, effect, corr_noise):
    """Primary latency ~ lognormal(ms); shadow = primary * (1 + effect) + noise (same request)."""
    xs, ys = [], []
    for _ in range(n):
        x = rng.lognormvariate(math.log(200.0), 0.5)
        y = x * (1.0 + effect) + rng.gauss(0.0, corr_noise)
        xs.append(round(x, 3))
        ys.append(round(y, 3))
    return xs, ys


# --- binary pairs ----------------------------------------------------------


def binary_pairs(rng, n, p_primary_only, p_shadow_only, p_both):
    xs, ys = [], []
    for _ in range(n):
        u = rng.random()
        if u < p_primary_only:
            x, y = 1, 0
        elif u < p_primary_only + p_shadow_only:
            x, y = 0, 1
        elif u < p_primary_only + p_shadow_only + p_both:
            x, y = 1, 1
        else:
            x, y = 0, 0
        xs.append(x)
        ys.append(y)
    return xs, ys


def q_cs(c, m, alpha, a):
    inside = lambda q: beta_binomial_log_e(c, m, q, a, a) < math.log(1.0 / alpha)

    def edge(q_in, q_out):
        if q_out in (0.0, 1.0) and ((q_out == 0.0 and c == 0) or (q_out == 1.0 and c == m)):
            if inside(q_out):
                return q_out
        for _ in range(200):
            mid = 0.5 * (q_in + q_out)
            if inside(mid):
                q_in = mid
            else:
                q_out = mid
        return 0.5 * (q_in + q_out)

    mle = c / m
    return edge(mle, 0.0), edge(mle, 1.0)


def betting_log_e(xs, ys, sign, null):
    if not xs:
        return "empty_arm"
    if not (-1.0 < null < 1.0):
        return "non_finite"
    logs = []
    for k in range(1, BETS + 1):
        lam = 2.0 ** (-k) / (1.0 + null)
        logs.append(math.fsum(math.log1p(lam * (sign * (y - x) - null)) for x, y in zip(xs, ys)))
    top = max(logs)
    return top + math.log(math.fsum(math.exp(v - top) for v in logs)) - math.log(BETS)


def discordant_case(name, xs, ys, alpha, prior, one_sided):
    n = len(xs)
    b = sum(1 for x, y in zip(xs, ys) if x == 1 and y == 0)
    c = sum(1 for x, y in zip(xs, ys) if x == 0 and y == 1)
    m = b + c
    out = {"kind": "paired_discordant", "name": name, "rel_tol": 1e-9, "inputs": {
        "alpha": alpha, "prior": prior, "x": "".join(map(str, xs)), "y": "".join(map(str, ys)),
        "one_sided": one_sided}, "expect": {"pairs": n, "primary_only": b, "shadow_only": c}}
    e = out["expect"]
    if n == 0:
        e["two_sided"] = {"not_computable": "empty_arm"}
    elif m == 0:
        e["two_sided"] = {"not_computable": "zero_variance"}
    else:
        d = [y - x for x, y in zip(xs, ys)]
        est = mean(d)
        var_d = math.fsum((v - est) ** 2 for v in d) / n  # n denominator: the plug-in
        log_e = beta_binomial_log_e(c, m, 0.5, prior, prior)
        qlo, qhi = q_cs(c, m, alpha, prior)
        e["two_sided"] = {"estimate": est, "std_error": math.sqrt(var_d / n),
                          "ci": [(2 * qlo - 1) * m / n, (2 * qhi - 1) * m / n], "q_cs": [qlo, qhi],
                          "p_value": min(1.0, math.exp(-log_e)), "log_e": log_e, "n_total": n}
    e["one_sided"] = []
    for sign, null in one_sided:
        v = betting_log_e(xs, ys, sign, null)
        e["one_sided"].append({"sign": sign, "null": null, **({"not_computable": v} if isinstance(v, str) else {"log_e": v})})
    return out


def main():
    cases = []
    rng = random.Random(20261202)
    lat_margins = {"absolute": [[1.0, 0.0], [1.0, 5.0], [-1.0, -5.0]],
                   "relative": [[1.0, 0.0], [1.0, 0.02], [-1.0, -0.02]]}

    xs, ys = latency_pairs(rng, 5, 0.05, 3.0)
    cases.append(continuous_case("latency_small_n5", xs, ys, 0.05, 5000.0, lat_margins))
    xs, ys = latency_pairs(rng, 40, -0.08, 10.0)
    cases.append(continuous_case("latency_negative_n40", xs, ys, 0.05, 1000.0, lat_margins))
    xs, ys = latency_pairs(rng, 300, 0.0, 20.0)
    cases.append(continuous_case("latency_null_n300", xs, ys, 0.05, 300.0, lat_margins))
    xs, ys = latency_pairs(rng, 5000, 0.01, 15.0)
    cases.append(continuous_case("latency_correlated_n5000", xs, ys, 0.05, 5000.0, lat_margins))
    xs, ys = latency_pairs(rng, 2000, 0.03, 40.0)
    cases.append(continuous_case("latency_alpha01_n2000", xs, ys, 0.01, 20000.0, lat_margins))

    tok_margins = {"absolute": [[1.0, 0.0], [-1.0, -2.0]], "relative": [[1.0, 0.0], [-1.0, -0.05]]}
    xs = [float(rng.randint(20, 400)) for _ in range(800)]
    ys = [x + float(rng.randint(-3, 5)) for x in xs]
    cases.append(continuous_case("tokens_integer_n800", xs, ys, 0.05, 2000.0, tok_margins))
    # Not computable.
    cases.append(continuous_case("empty", [], [], 0.05, 5000.0, tok_margins))
    cases.append(continuous_case("one_pair", [120.0], [130.0], 0.05, 5000.0, tok_margins))
    xs = [float(rng.randint(20, 400)) for _ in range(50)]
    cases.append(continuous_case("constant_shift", xs, [x + 5.0 for x in xs], 0.05, 5000.0, tok_margins))
    cases.append(continuous_case("shadow_doubles", xs, [2.0 * x for x in xs], 0.05, 5000.0, tok_margins))
    zx = [-3.0, -1.0, 1.0, 3.0, -2.0, 2.0]
    cases.append(continuous_case("zero_baseline_mean", zx, [v + rng.randint(0, 4) for v in zx], 0.05, 5000.0, tok_margins))
    cases.append(continuous_case("all_zero", [0.0] * 10, [0.0] * 10, 0.05, 5000.0, tok_margins))

    err_sided = [[1.0, 0.0], [1.0, 0.005], [-1.0, -0.01], [-1.0, -0.02]]
    xs, ys = binary_pairs(rng, 3000, 0.01, 0.025, 0.005)
    cases.append(discordant_case("errors_shadow_worse_n3000", xs, ys, 0.05, 0.5, err_sided))
    cases.append(discordant_case("errors_shadow_worse_n3000_beta11", xs, ys, 0.05, 1.0, err_sided))
    xs, ys = binary_pairs(rng, 20000, 0.012, 0.004, 0.01)
    cases.append(discordant_case("errors_shadow_better_n20000", xs, ys, 0.05, 0.5, err_sided))
    xs, ys = binary_pairs(rng, 60, 0.05, 0.05, 0.02)
    cases.append(discordant_case("errors_small_n60_alpha01", xs, ys, 0.01, 0.5, err_sided))
    xs = [1, 0] * 15 + [0] * 70 + [1] * 10
    ys = [0, 1] * 15 + [0] * 70 + [1] * 10
    cases.append(discordant_case("b_equals_c", xs, ys, 0.05, 0.5, err_sided))
    xs = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    ys = [1 - v for v in xs]
    cases.append(discordant_case("all_discordant", xs, ys, 0.05, 0.5, err_sided))
    cases.append(discordant_case("all_shadow_only", [0] * 8, [1] * 8, 0.05, 0.5, err_sided))
    cases.append(discordant_case("no_discordant", [0] * 400 + [1] * 5, [0] * 400 + [1] * 5, 0.05, 0.5, err_sided))
    cases.append(discordant_case("no_pairs", [], [], 0.05, 0.5, err_sided))
    cases.append(discordant_case("margin_out_of_range", [1, 0, 0], [0, 1, 0], 0.05, 0.5, [[1.0, 1.0], [-1.0, -1.0]]))

    out = {"generator": "tests/it/data/stats/paired_vectors.py", "python": sys.version.split()[0],
           "seed": 20261202, "cases": cases}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paired_vectors.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1, allow_nan=False)
        fh.write("\n")


if __name__ == "__main__":
    main()
