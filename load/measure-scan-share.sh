#!/bin/bash
# What the response scanner adds to a proxied 2 KiB JSON chat completion, in
# abgate's CPU per request: two abgate processes (target/release, or $BIN), each
# in front of its own mock serving the same 2 KiB completion; one mock labels it
# `application/json` (scanned), the other `application/octet-stream` (not
# scanned). Legs alternate, REPEATS times each; each leg is a closed loop of
# REQUESTS chat requests over 16 connections, and abgate's CPU comes from
# /proc/<pid>/stat. abgate runs on core 0, the mocks and the load on core 1.
# Loopback only; bounded by count and time.
# Usage: load/measure-scan-share.sh [REPEATS] [REQUESTS]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=scan-share
# shellcheck source=load/lib.sh
source "$ROOT/load/lib.sh"
B=${BIN:-$ROOT/target/release}
REPEATS=${1:-5}
REQUESTS=${2:-20000}
P=${BASE_PORT:-28600}
[ -x "$B/abgate" ] || die "no $B/abgate: run cargo build --release"
make_work_dir abgate-scan.XXXXXX
cd "$WORK"

# leg NAME OFFSET CONTENT_TYPE: a mock on P+OFFSET, abgate on P+OFFSET+1 (+2 admin).
start_leg() {
    local name=$1 off=$2 ct=$3
    local mp=$((P + off)) ap=$((P + off + 1)) adm=$((P + off + 2))
    taskset -c 1 "$B/abgate-mock" --serve "127.0.0.1:$mp,name=$name,bytes=2048,chunks=64,content_type=$ct,seed=1" >"mock-$name.log" 2>&1 &
    PIDS+=($!)
    cat >"$name.yaml" <<EOF
listen: 127.0.0.1:$ap
admin: { listen: 127.0.0.1:$adm }
state_dir: $WORK/state-$name
backends:
  model: { url: "http://127.0.0.1:$mp" }
experiments:
  - name: chat
    match: { path_prefix: /v1/chat }
    unit: { header: x-user-id }
    arms:
      - { name: stable, backend: model, weight: 100 }
EOF
    ABGATE_LOG=warn taskset -c 0 "$B/abgate" serve --no-watch --config "$name.yaml" >"abgate-$name.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$name=$!"
    wait_port "$mp"
    wait_port "$ap"
}

start_leg json 0 application/json
start_leg plain 10 application/octet-stream

# run_leg NAME OFFSET: prints abgate's CPU-µs per request for one closed loop.
run_leg() {
    closed_chat_cpu "$(eval echo "\$PID_$1")" "http://127.0.0.1:$((P + $2 + 1))" "$REQUESTS" "load-$1.json"
}

# Warm both (connection pools, allocator), then alternate.
run_leg json 0 >/dev/null
run_leg plain 10 >/dev/null
: >results
for i in $(seq "$REPEATS"); do
    echo "json $(run_leg json 0)" >>results
    echo "plain $(run_leg plain 10)" >>results
    log "repeat $i: $(tail -2 results | tr '\n' ' ')"
done
if [ "${PERF:-0}" = 1 ]; then
    # The scanner's share of abgate's own samples during one more scanned leg.
    perf record -F 4999 -p "$PID_json" -o perf.data -- sleep 8 >/dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.5
    run_leg json 0 >/dev/null
    wait "$PERF_PID" || true
    perf report -i perf.data --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' >perf.txt || true
    python3 - perf.txt <<'EOF2'
import re, sys
total = scan = 0.0
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s+([0-9.]+)%\s+\[\.\]\s+(.*)", line)
    if not m:
        continue
    share, sym = float(m.group(1)), m.group(2)
    if "outcomes::scan" in sym:
        scan += share
        rows.append((share, sym.strip()))
# memchr is the scanner's string skipping, but other code may call it too:
# counted with the scanner, so the share is an upper bound.
memchr = sum(float(re.match(r"\s+([0-9.]+)%", l).group(1)) for l in open(sys.argv[1]) if "memchr" in l)
print(f"perf: scanner symbols hold {scan:.2f}% of abgate's samples (user and kernel), {scan + memchr:.2f}% with every memchr sample")
for share, sym in rows[:8]:
    print(f"  {share:5.2f}%  {sym[:110]}")
EOF2
fi
curl -s "127.0.0.1:$((P + 2))/metrics" | grep -E '^abgate_tokens_total' >tokens || true
[ -s tokens ] || die "the scanned leg read no tokens: is the scanner on?"
python3 - results <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
leg = {k: [float(r[1]) for r in rows if r[0] == k] for k in ("json", "plain")}
n = {k: [int(r[2]) for r in rows if r[0] == k] for k in ("json", "plain")}
for k in ("plain", "json"):
    v = leg[k]
    print(f"{k:6} CPU-us/request median {statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f}), {len(v)} legs of {min(n[k])}-{max(n[k])} ok requests")
pairs = [j - p for j, p in zip(leg["json"], leg["plain"])]
med = statistics.median(pairs)
print(f"scanner: median paired difference {med:+.2f} CPU-us/request (min {min(pairs):+.2f}, max {max(pairs):+.2f}) = {100 * med / statistics.median(leg['plain']):+.1f}% of the unscanned request")
EOF
