#!/bin/bash
# Per-look controller CPU: serves N canary experiments from target/release (or $BIN),
# drives RATE req/s round-robin over them, and prints the process CPU over 12 s and
# abgate's own look counters. Loopback only; bounded by count and time.
# Usage: load/measure-look-cpu.sh [LOOK_EVERY] [PERF 0|1] [EXPERIMENTS] [RATE]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d); cd "$WORK"; B=${BIN:-$ROOT/target/release}; P=${BASE_PORT:-28400}; LE=${1:-1}; PERF=${2:-0}; N=${3:-10}; RATE=${4:-2000}
$B/abgate-mock --serve "127.0.0.1:$P,name=stable,latency=lognormal:5:0.3,error_rate=0.01,seed=1" --serve "127.0.0.1:$((P+1)),name=canary,latency=lognormal:5:0.3,error_rate=0.01,seed=2" > mock.log 2>&1 &
MP=$!
sleep 0.5
{ cat <<EOF
listen: 127.0.0.1:$((P+2))
admin: { listen: 127.0.0.1:$((P+3)) }
state_dir: $WORK/state
backends:
  stable: { url: "http://127.0.0.1:$P" }
  canary: { url: "http://127.0.0.1:$((P+1))" }
experiments:
EOF
for i in $(seq 0 $((N-1))); do cat <<EOF
  - name: e$i
    match: { path_prefix: /v2/models/m$i }
    unit: { header: x-user-id }
    baseline: stable
    kind: canary
    steps: [10, 50, 100]
    step: { min_samples: 1000000, min_duration: 1h }
    analysis:
      interval: 1s
      min_units_per_arm: 5
      min_events: 5
      look_every: $LE
      guardrails:
        - { metric: error, max_relative_increase: 0.10 }
        - { metric: latency_ms, max_relative_increase: 0.05 }
    arms:
      - { name: stable, backend: stable, weight: 90 }
      - { name: canary, backend: canary, weight: 10 }
EOF
done; } > c.yaml
rm -rf state; ABGATE_LOG=warn $B/abgate serve --no-watch --config c.yaml > ab.log 2>&1 &
APID=$!
sleep 1
timeout 40 $B/abgate-feedback-bench spread --target http://127.0.0.1:$((P+2)) --path-template '/v2/models/m{}/infer' --paths $N --rate $RATE --duration 25s --max-requests 60000 > spread.json 2>&1 &
sleep 5
t0=$(awk '{print $14+$15}' /proc/$APID/stat)
if [ $PERF = 1 ]; then perf record -F 999 -g -p $APID -o perf.data -- sleep 12 2>&1 | tail -1; else sleep 12; fi
t1=$(awk '{print $14+$15}' /proc/$APID/stat)
echo "cpu% over 12s: $(python3 -c "print(($t1-$t0)/100/12*100)")"
curl -s 127.0.0.1:$((P+3))/v1/experiments/e0 | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["state"], v["analysis"]["verdict"], "looks", v["analysis"]["looks"])'
wait %3 2>/dev/null; cat spread.json | tr -d '\n '; echo
curl -s 127.0.0.1:$((P+3))/metrics | grep -E "^abgate_controller_look" | awk -v OFS="\t" "{split(\$1,a,\"\\\"\"); k[a[1]]+=\$2} END {for (x in k) print x, k[x]}"
kill $APID $MP
