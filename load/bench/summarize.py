#!/usr/bin/env python3
"""Summarises load/bench-overhead.sh runs (a TSV, one row per load run) as Markdown.

Every cell is `median (min–max)` over the repeats. Added latency is paired: each
proxy run is compared with the direct run of the same repeat and load level (they
ran minutes apart at most), then the median of those differences is reported.
"""

import argparse
import csv
import statistics
from collections import defaultdict

LEG_NAMES = {
    "direct": "direct (mock)",
    "abgate": "abgate",
    "abgate-base": "abgate (baseline build)",
    "bare": "bare hyper proxy",
    "nginx": "nginx",
    "haproxy": "HAProxy",
}


def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("--clk-tck", type=int, required=True)
    ap.add_argument("--duration", required=True)
    ap.add_argument("--repeats", required=True)
    ap.add_argument("--closed-conns", required=True)
    ap.add_argument("--elapsed", type=int, required=True)
    ap.add_argument("--load-before", required=True)
    ap.add_argument("--load-after", required=True)
    ap.add_argument("--versions", required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()

    with open(a.tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        for k in ("completed", "ok", "errors", "repeat"):
            r[k] = int(r[k])
        for k in ("rps", "duration_s", "p50_ms", "p99_ms", "load1"):
            r[k] = float(r[k])
        r["cpu_ticks"] = None if r["cpu_ticks"] == "NA" else int(r["cpu_ticks"])
        r["rss_kib"] = None if r["rss_kib"] == "NA" else int(r["rss_kib"])
        r["core1"] = int(r["core1_busy_permille"]) / 10.0
        r["core0"] = int(r["core0_busy_permille"]) / 10.0
        r["canary"] = float(r["canary_share"]) * 100.0
        r["level"] = r["rate"] if r["mode"] == "open" else r["mode"]

    legs = [l for l in LEG_NAMES if any(r["leg"] == l for r in rows)]
    rates = sorted({r["level"] for r in rows if r["mode"] == "open"}, key=float)
    by = defaultdict(list)
    for r in rows:
        by[(r["leg"], r["level"])].append(r)
    direct = {(r["repeat"], r["level"]): r for r in rows if r["leg"] == "direct"}
    bare = {(r["repeat"], r["level"]): r for r in rows if r["leg"] == "bare"}

    def cpu_us_per_req(r):
        if r["cpu_ticks"] is None or r["completed"] == 0:
            return None
        return r["cpu_ticks"] * 1e6 / a.clk_tck / r["completed"]

    def proxy_core_share(r):
        if r["cpu_ticks"] is None:
            return None
        return 100.0 * r["cpu_ticks"] / a.clk_tck / r["duration_s"]

    def added(r, q):
        d = direct.get((r["repeat"], r["level"]))
        if r["leg"] == "direct" or d is None:
            return None
        return (r[q] - d[q]) * 1000.0  # ms -> µs

    def to_bare(r):
        """CPU per request over the bare hyper proxy's in the same repeat."""
        b = bare.get((r["repeat"], r["level"]))
        mine, theirs = cpu_us_per_req(r), b and cpu_us_per_req(b)
        return mine / theirs if mine and theirs else None

    out = []
    p = out.append
    p(f"Versions: {a.versions}. Placement: each proxy pinned to core 1 (`taskset -c 1`, one worker:")
    p("abgate's tokio runtime sizes itself from the affinity mask, nginx `worker_processes 1`,")
    p("HAProxy `nbthread 1`); `abgate-load` and `abgate-mock` (fixed 0 ms latency, 256 B")
    p("bodies, `POST /predict`) on core 0. Every proxy splits 90/10 sticky on `x-user-id`")
    p(f"(10 000 users) over two mock ports with keep-alive upstreams. {a.repeats} repeats of")
    p(f"{a.duration} s per leg and load level, interleaved (leg order rotated per repeat).")
    p("Added latency is paired with the direct run of the same repeat. Cells: median (min–max)")
    p("over repeats. Open-loop latencies count from the scheduled send time; abgate-load paces")
    p("them from a dedicated thread (~0.2 ms of release and wake-up delay common to all legs);")
    p("the sequential leg shows the clean per-request cost.")
    p("")

    header = ["metric"] + [LEG_NAMES[l] for l in legs]
    p("| " + " | ".join(header) + " |")
    p("|" + "---|" * len(header))

    def row(label, fn, fmt, level, skip_direct=False):
        cells = []
        for l in legs:
            if skip_direct and l == "direct":
                cells.append("–")
                continue
            cells.append(cell([fn(r) for r in by[(l, level)]], fmt))
        p(f"| {label} | " + " | ".join(cells) + " |")

    def section(title):
        p(f"| **{title}** |" + " |" * len(legs))

    def cpu_rows(level):
        row("proxy CPU-µs per request", cpu_us_per_req, "{:.1f}", level, True)
        if bare:
            row("CPU per request ÷ bare hyper proxy's (paired)", to_bare, "{:.2f}×", level, True)

    def capacity(r):
        us = cpu_us_per_req(r)
        return None if not us else 1e6 / us

    section(f"closed loop, {a.closed_conns} connections")
    row("throughput (req/s)", lambda r: r["rps"], "{:,.0f}", "closed")
    cpu_rows("closed")
    row("one-core capacity = 1e6 / CPU-µs (req/s)", capacity, "{:,.0f}", "closed", True)
    row("proxy's share of core 1 (%)", proxy_core_share, "{:.0f}", "closed", True)
    row("core 1 busy: proxy + others (%)", lambda r: r["core1"], "{:.0f}", "closed")
    row("core 0 busy: driver + mock + others (%)", lambda r: r["core0"], "{:.0f}", "closed")
    row("p50 latency (ms)", lambda r: r["p50_ms"], "{:.3f}", "closed")
    section("sequential, 1 connection")
    row("p50 latency (µs)", lambda r: r["p50_ms"] * 1000, "{:.0f}", "seq")
    row("p99 latency (µs)", lambda r: r["p99_ms"] * 1000, "{:.0f}", "seq")
    row("added p50 over direct (µs)", lambda r: added(r, "p50_ms"), "{:+.0f}", "seq", True)
    row("added p99 over direct (µs)", lambda r: added(r, "p99_ms"), "{:+.0f}", "seq", True)
    cpu_rows("seq")
    for rate in rates:
        section(f"open loop, {rate} req/s")
        row("p50 latency (ms)", lambda r: r["p50_ms"], "{:.3f}", rate)
        row("p99 latency (ms)", lambda r: r["p99_ms"], "{:.3f}", rate)
        row("added p50 over direct (µs)", lambda r: added(r, "p50_ms"), "{:+.0f}", rate, True)
        row("added p99 over direct (µs)", lambda r: added(r, "p99_ms"), "{:+.0f}", rate, True)
        cpu_rows(rate)
    if any(r["mode"] == "wrk" for r in rows):
        section("wrk -t1, closed loop")
        row("throughput (req/s)", lambda r: r["rps"], "{:,.0f}", "wrk")
        cpu_rows("wrk")
        row("p50 latency (ms)", lambda r: r["p50_ms"], "{:.3f}", "wrk")
        row("p99 latency (ms)", lambda r: r["p99_ms"], "{:.3f}", "wrk")
    section("all runs")
    all_levels = rates + ["seq", "closed", "wrk"]
    cells = []
    for l in legs:
        v = [r["rss_kib"] / 1024 for lv in all_levels for r in by[(l, lv)] if r["rss_kib"] is not None]
        cells.append(cell(v, "{:.1f}") if l != "direct" else "–")
    p("| proxy RSS after run (MiB) | " + " | ".join(cells) + " |")
    cells = []
    for l in legs:
        # wrk reads no response headers, so its runs have no arm tally.
        runs = [r for lv in all_levels if lv != "wrk" for r in by[(l, lv)]]
        cells.append(cell([r["canary"] for r in runs], "{:.1f}") if l != "direct" else "–")
    p("| canary share of responses (%), target 10 | " + " | ".join(cells) + " |")
    cells = []
    for l in legs:
        runs = [r for lv in all_levels for r in by[(l, lv)]]
        errs = sum(r["errors"] for r in runs)
        done = sum(r["completed"] for r in runs)
        cells.append(f"{errs} / {done:,}")
    p("| errors / completed, all runs | " + " | ".join(cells) + " |")
    p("")

    loads = [r["load1"] for r in rows]
    core1_other = [max(0.0, r["core1"] - (proxy_core_share(r) or 0.0)) for r in rows]
    p(f"Machine noise: 2 cores shared with other engineers' builds. 1-min load average at run")
    p(f"starts {cell(loads, '{:.2f}')} (before: {a.load_before}; after: {a.load_after});")
    p(f"core 1 busy with work other than the proxy under test {cell(core1_other, '{:.0f}')} %")
    p(f"of each run. {len(rows)} runs in {a.elapsed} s.")
    p("")
    p(f"Command: `{a.command}`")
    print("\n".join(out))


if __name__ == "__main__":
    main()
