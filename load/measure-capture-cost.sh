#!/bin/bash
# What `capture:` adds to a proxied chat completion, in abgate's CPU per
# request: three abgate processes (target/release, or $BIN) in front of one
# mock (2 KiB JSON answers), the same experiment with no capture, with
# `capture: { percent: 1 }` and with `capture: { percent: 100 }`. Legs
# alternate, REPEATS times each; each leg is a closed loop of REQUESTS chat
# requests over 16 connections, and abgate's CPU (the writer thread's
# included) comes from /proc/<pid>/stat. abgate runs on core 0, the mock and
# the load on core 1. Loopback only; bounded by count and time.
# Usage: load/measure-capture-cost.sh [REPEATS] [REQUESTS]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=capture-cost
# shellcheck source=load/lib.sh
source "$ROOT/load/lib.sh"
B=${BIN:-$ROOT/target/release}
REPEATS=${1:-5}
REQUESTS=${2:-20000}
P=${BASE_PORT:-28700}
[ -x "$B/abgate" ] || die "no $B/abgate: run cargo build --release"
make_work_dir abgate-capture.XXXXXX
cd "$WORK"

taskset -c 1 "$B/abgate-mock" --serve "127.0.0.1:$P,name=m,bytes=2048,chunks=64,seed=1" >mock.log 2>&1 &
PIDS+=($!)
wait_port "$P"

# start_leg NAME OFFSET CAPTURE: abgate on P+OFFSET (+1 admin).
start_leg() {
    local name=$1 off=$2 capture=$3
    local ap=$((P + off)) adm=$((P + off + 1))
    cat >"$name.yaml" <<EOF
listen: 127.0.0.1:$ap
admin: { listen: 127.0.0.1:$adm }
state_dir: $WORK/state-$name
backends:
  model: { url: "http://127.0.0.1:$P" }
experiments:
  - name: chat
    match: { path_prefix: /v1/chat }
    unit: { header: x-user-id }
    arms:
      - { name: stable, backend: model, weight: 100 }
$capture
EOF
    ABGATE_LOG=warn taskset -c 0 "$B/abgate" serve --no-watch --config "$name.yaml" >"abgate-$name.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$name=$!"
    wait_port "$ap"
}

start_leg off 10 ""
start_leg one 20 "    capture: { percent: 1, redact_headers: [x-user-id], drop_fields: [user] }"
start_leg all 30 "    capture: { percent: 100, redact_headers: [x-user-id], drop_fields: [user] }"

# run_leg NAME OFFSET: prints abgate's CPU-µs per request for one closed loop.
# The writer may still be storing the last examples: their CPU counts.
run_leg() {
    closed_chat_cpu "$(eval echo "\$PID_$1")" "http://127.0.0.1:$((P + $2))" "$REQUESTS" "load-$1.json" 0.5
}

run_leg off 10 >/dev/null
run_leg one 20 >/dev/null
run_leg all 30 >/dev/null
: >results
for i in $(seq "$REPEATS"); do
    echo "off $(run_leg off 10)" >>results
    echo "one $(run_leg one 20)" >>results
    echo "all $(run_leg all 30)" >>results
    log "repeat $i: $(tail -3 results | tr '\n' ' ')"
done
for leg in one:21 all:31; do
    curl -s "127.0.0.1:$((P + ${leg#*:}))/metrics" | grep -E '^abgate_capture_(written|dropped)_total' | sed "s/^/${leg%:*}: /" || true
done
python3 - results <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
leg = {k: [float(r[1]) for r in rows if r[0] == k] for k in ("off", "one", "all")}
for k, what in (("off", "no capture"), ("one", "capture 1%"), ("all", "capture 100%")):
    v = leg[k]
    med = statistics.median(v)
    base = statistics.median(leg["off"])
    print(f"{what:13} CPU-us/request median {med:.1f} (min {min(v):.1f}, max {max(v):.1f}), {med / base:.3f}x no capture")
    if k != "off":
        d = [x - o for x, o in zip(v, leg["off"])]
        print(f"{'':13} paired with the no-capture leg of its repeat: median {statistics.median(d):+.1f} (min {min(d):+.1f}, max {max(d):+.1f}) CPU-us/request")
EOF
