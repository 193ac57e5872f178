#!/usr/bin/env bash
# Controller CPU cost with many experiments.
#
# Two configs that differ only in whether the experiments have a `kind`:
#   controller:    N experiments `kind: canary` (2 arms, distinct match.path_prefix
#                  /v2/models/m<i>, analysis.interval 1s, guardrails on error and latency_ms)
#   nocontroller:  the same N experiments without `kind` (static 90/10 split, no controller)
# For each, a fresh `abgate serve` (release, fresh state_dir) gets the same light traffic:
# `abgate-feedback-bench spread` at RATE req/s round-robin over the N paths for RUN_S
# seconds. After WARMUP_S seconds, the abgate process's utime+stime (/proc/PID/stat, all
# threads) is sampled over a WINDOW_S window. controller − nocontroller is the controller's
# cost, reported in % of one core. Modes alternate (rotated order per repeat) so background
# noise hits both; medians over REPEATS.
#
# A canary starts at its first step (10%), which matches the static 90/10 split. The step
# minimums are set out of reach so no canary advances during the run; burn-in is lowered
# (min_units_per_arm / min_events) so the sequential tests actually run every tick rather
# than stopping at InsufficientData.
#
# Everything listens on and targets 127.0.0.1 only; every run is bounded by time and count
# and an outer `timeout`. Only processes started here are stopped, by pid.
#
# Usage: load/measure-controller-cpu.sh
# Environment (defaults in brackets):
#   EXPERIMENTS [100]  RATE [200]  RUN_S [30]  WARMUP_S [8]  WINDOW_S [20]  REPEATS [3]
#   MIN_UNITS [5]      burn-in per arm (the default config value is 100)
#   LOOK_EVERY [10]    analysis.look_every: a look per this many canary requests
#   BASE_PORT [28300]  4 consecutive loopback ports
#   NO_BUILD=1         use existing target/release binaries
#   OUT [load/results/controller-cpu-<date>.md]
set -euo pipefail

EXPERIMENTS=${EXPERIMENTS:-100}
RATE=${RATE:-200}
RUN_S=${RUN_S:-30}
WARMUP_S=${WARMUP_S:-8}
WINDOW_S=${WINDOW_S:-20}
REPEATS=${REPEATS:-3}
MIN_UNITS=${MIN_UNITS:-5}
LOOK_EVERY=${LOOK_EVERY:-10}
BASE_PORT=${BASE_PORT:-28300}
[ $((WARMUP_S + WINDOW_S)) -le "$RUN_S" ] || {
    echo "WARMUP_S + WINDOW_S must fit in RUN_S" >&2
    exit 2
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATE=$(date +%Y-%m-%d)
OUT=${OUT:-$ROOT/load/results/controller-cpu-$DATE.md}
BIN=$ROOT/target/release
P_STABLE=$BASE_PORT
P_CANARY=$((BASE_PORT + 1))
P_ABGATE=$((BASE_PORT + 2))
P_ADMIN=$((BASE_PORT + 3))
CLK_TCK=$(getconf CLK_TCK)

LOG_TAG=controller-cpu
# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"
for tool in python3 curl timeout; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building release binaries (CARGO_BUILD_JOBS=1, nice)"
    (cd "$ROOT" && CARGO_BUILD_JOBS=1 nice -n 5 cargo build --release --bins >&2)
fi
for b in abgate abgate-mock abgate-feedback-bench; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing (cargo build --release)"
done

make_work_dir abgate-ctlcpu.XXXXXX

# Both arms answer like a small model: lognormal latency, median 5 ms, 1% errors.
"$BIN/abgate-mock" \
    --serve "127.0.0.1:$P_STABLE,name=stable,latency=lognormal:5:0.3,error_rate=0.01,seed=1" \
    --serve "127.0.0.1:$P_CANARY,name=canary,latency=lognormal:5:0.3,error_rate=0.01,seed=2" \
    >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$P_STABLE"
wait_port "$P_CANARY"

# config MODE STATE_DIR: prints the YAML.
config() {
    local mode=$1 state=$2 i
    cat <<EOF
listen: 127.0.0.1:$P_ABGATE
admin: { listen: 127.0.0.1:$P_ADMIN }
state_dir: $state
backends:
  stable: { url: "http://127.0.0.1:$P_STABLE" }
  canary: { url: "http://127.0.0.1:$P_CANARY" }
experiments:
EOF
    for i in $(seq 0 $((EXPERIMENTS - 1))); do
        cat <<EOF
  - name: e$i
    match: { path_prefix: /v2/models/m$i }
    unit: { header: x-user-id }
    baseline: stable
EOF
        if [ "$mode" = controller ]; then
            cat <<EOF
    kind: canary
    steps: [10, 50, 100]
    step: { min_samples: 1000000, min_duration: 1h }
    analysis:
      interval: 1s
      min_units_per_arm: $MIN_UNITS
      min_events: $MIN_UNITS
      look_every: $LOOK_EVERY
      guardrails:
        - { metric: error, max_relative_increase: 0.10 }
        - { metric: latency_ms, max_relative_increase: 0.05 }
EOF
        fi
        cat <<EOF
    arms:
      - { name: stable, backend: stable, weight: 90 }
      - { name: canary, backend: canary, weight: 10 }
EOF
    done
}

printf 'run\trepeat\tmode\tcpu_ticks\twindow_s\tpct_one_core\tload1_before\tload1_after\tspread\tverdicts\n' >"$WORK/runs.tsv"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)
run=0
for r in $(seq "$REPEATS"); do
    if [ $((r % 2)) = 1 ]; then order="controller nocontroller"; else order="nocontroller controller"; fi
    for mode in $order; do
        run=$((run + 1))
        state="$WORK/state-$run"
        config "$mode" "$state" >"$WORK/abgate-$run.yaml"
        "$BIN/abgate" check "$WORK/abgate-$run.yaml" >/dev/null || die "config rejected: $WORK/abgate-$run.yaml"
        ABGATE_LOG=warn "$BIN/abgate" serve --no-watch --config "$WORK/abgate-$run.yaml" \
            >"$WORK/abgate-$run.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_port "$P_ABGATE"
        timeout $((RUN_S + 20)) "$BIN/abgate-feedback-bench" spread \
            --target "http://127.0.0.1:$P_ABGATE" --path-template '/v2/models/m{}/infer' \
            --paths "$EXPERIMENTS" --rate "$RATE" --duration "${RUN_S}s" \
            --max-requests $((RATE * RUN_S)) >"$WORK/spread-$run.json" 2>&1 &
        spread_pid=$!
        PIDS+=("$spread_pid")
        sleep "$WARMUP_S"
        load0=$(cut -d' ' -f1 /proc/loadavg)
        t0=$(cpu_ticks "$pid")
        w0=$(date +%s.%N)
        sleep "$WINDOW_S"
        t1=$(cpu_ticks "$pid")
        w1=$(date +%s.%N)
        load1=$(cut -d' ' -f1 /proc/loadavg)
        # How many controlled experiments have a verdict (proof the controller ran).
        verdicts=$(curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/v1/experiments" |
            python3 -c 'import json,sys
v = json.load(sys.stdin)
xs = v if isinstance(v, list) else v.get("experiments", [])
names = [x.get("name") for x in xs]
print(len(names))' 2>/dev/null || echo "?")
        verdict_sample=$(curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/v1/experiments/e0" |
            python3 -c 'import json,sys
v = json.load(sys.stdin)
a = v.get("analysis") or {}
print("%s/%s looks=%s" % (v.get("state"), a.get("verdict"), a.get("looks")))' 2>/dev/null || echo "?")
        wait "$spread_pid" || true
        spread=$(tr -d '\n ' <"$WORK/spread-$run.json")
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        window=$(python3 -c "print(f'{$w1 - $w0:.2f}')")
        pct=$(python3 -c "print(f'{($t1 - $t0) / $CLK_TCK / ($w1 - $w0) * 100:.2f}')")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$r" "$mode" "$((t1 - t0))" \
            "$window" "$pct" "$load0" "$load1" "$spread" "$verdicts exps; e0 $verdict_sample" >>"$WORK/runs.tsv"
        log "run $run ($mode): $pct% of one core over ${window}s; load $load0→$load1; e0 $verdict_sample; spread $spread"
    done
done
ELAPSED=$(($(date +%s) - STARTED))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
MOCK_TICKS=$(cpu_ticks "$MOCK_PID")

mkdir -p "$(dirname "$OUT")"
cp "$WORK/runs.tsv" "${OUT%.md}.tsv"
python3 - "$WORK/runs.tsv" >"$OUT" <<EOF
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {m: [float(r["pct_one_core"]) for r in rows if r["mode"] == m] for m in ("controller", "nocontroller")}
med = {m: statistics.median(v) for m, v in by.items()}
# Paired differences per repeat (the two modes of one repeat ran back to back).
pairs = {}
for r in rows:
    pairs.setdefault(r["repeat"], {})[r["mode"]] = float(r["pct_one_core"])
diffs = [p["controller"] - p["nocontroller"] for p in pairs.values() if len(p) == 2]
print("# Controller CPU with $EXPERIMENTS canary experiments ($DATE)\n")
print("abgate process CPU (utime+stime, all threads) over a ${WINDOW_S}s window after ${WARMUP_S}s of")
print("warm-up, $RATE req/s spread round-robin over $EXPERIMENTS experiment paths, ${REPEATS} repeats per mode.\n")
print("| mode | % of one core (median) | runs |")
print("| --- | ---: | --- |")
for m in ("controller", "nocontroller"):
    print(f"| {m} | {med[m]:.2f} | {', '.join(f'{x:.2f}' for x in by[m])} |")
print(f"\n**Controller cost: {med['controller'] - med['nocontroller']:.2f}% of one core** "
      f"(difference of medians); paired per-repeat differences: {', '.join(f'{d:.2f}' for d in diffs)} "
      f"(median {statistics.median(diffs):.2f}). Target: < 2%.\n")
print("Per run:\n")
print("| run | repeat | mode | ticks | window s | % core | load1 before→after | traffic | experiments; e0 state/verdict |")
print("| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |")
for r in rows:
    print(f"| {r['run']} | {r['repeat']} | {r['mode']} | {r['cpu_ticks']} | {r['window_s']} | {r['pct_one_core']} | "
          f"{r['load1_before']}→{r['load1_after']} | \`{r['spread']}\` | {r['verdicts']} |")
print(f"\nLoad average before: $LOAD_BEFORE; after: $LOAD_AFTER; elapsed ${ELAPSED}s; "
      f"CLK_TCK $CLK_TCK (1 tick = 10 ms, so one run's resolution is ±{100 / $CLK_TCK / $WINDOW_S:.2f}% of a core).")
print(f"Mock backends used {int('$MOCK_TICKS') / $CLK_TCK:.1f} CPU s in total.\n")
print("Command: \`load/measure-controller-cpu.sh\` (EXPERIMENTS=$EXPERIMENTS RATE=$RATE RUN_S=$RUN_S "
      "WARMUP_S=$WARMUP_S WINDOW_S=$WINDOW_S REPEATS=$REPEATS MIN_UNITS=$MIN_UNITS LOOK_EVERY=$LOOK_EVERY)")
EOF
cat "$OUT"
log "wrote $OUT and ${OUT%.md}.tsv"
