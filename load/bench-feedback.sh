#!/usr/bin/env bash
# Feedback ingestion bench: mock backend + abgate serve (fresh state_dir in a
# temp dir) + abgate-feedback-bench; arguments go to the bench. Bounded: every
# phase has a time bound and the whole run a 180 s timeout. Loopback only.
#   cargo build --release
#   NMETRICS=20 load/bench-feedback.sh --tokens 30000 --metrics 20 [--skip-batched]
# BIN=DIR runs other binaries (e.g. a baseline build copied aside).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
P_MOCK=${P_MOCK:-28200}; P_ABGATE=$((P_MOCK + 2)); P_ADMIN=$((P_MOCK + 3))
LOG_TAG=bench-feedback
# shellcheck source=load/lib.sh
. "$(dirname "$0")/lib.sh"
make_work_dir abgate-fb.XXXXXX
"$BIN/abgate-mock" --serve "127.0.0.1:$P_MOCK,name=stable,latency=fixed:0,bytes=64" \
                   --serve "127.0.0.1:$((P_MOCK + 1)),name=canary,latency=fixed:0,bytes=64" >"$WORK/mock.log" 2>&1 &
PIDS+=($!); wait_port "$P_MOCK"
METRICS=$(for i in $(seq 0 $((${NMETRICS:-10} - 1))); do printf '      - { name: m%d, source: feedback, type: binary }\n' "$i"; done)
cat >"$WORK/abgate.yaml" <<YAML
listen: 127.0.0.1:$P_ABGATE
admin: { listen: 127.0.0.1:$P_ADMIN }
state_dir: $WORK/state
backends:
  stable: { url: "http://127.0.0.1:$P_MOCK" }
  canary: { url: "http://127.0.0.1:$((P_MOCK + 1))" }
experiments:
  - name: fb
    match: { path_prefix: /predict }
    unit: { header: x-user-id }
    metrics:
$METRICS
    attribution_window: 1h
    arms:
      - { name: stable, backend: stable, weight: 50 }
      - { name: canary, backend: canary, weight: 50 }
YAML
"$BIN/abgate" check "$WORK/abgate.yaml" >&2
ABGATE_LOG=warn "$BIN/abgate" serve --no-watch --config "$WORK/abgate.yaml" >"$WORK/abgate.log" 2>&1 &
ABGATE_PID=$!; PIDS+=($ABGATE_PID); wait_port "$P_ABGATE"
if [ "${STRACE:-0}" = 1 ]; then
  for t in /proc/$ABGATE_PID/task/*; do grep -q '^abgate-feedback' "$t/comm" && WTID=${t##*/}; done
  strace -tt -T -e trace=fsync,fdatasync,pwrite64,pread64,write -p "$WTID" -o "${STRACE_OUT:-/tmp/fbrun/strace.txt}" 2>/dev/null &
  PIDS+=($!); sleep 0.5
fi
if [ "${PERF:-0}" = 1 ]; then
  for t in /proc/$ABGATE_PID/task/*; do grep -q '^abgate-feedback' "$t/comm" && WTID=${t##*/}; done
  timeout 120 perf trace -t "$WTID" --duration 1 -o "${PERF_OUT:-/tmp/fbrun/perf-trace.txt}" 2>/dev/null &
  PIDS+=($!); sleep 1
fi
echo "state_dir $WORK/state on $(df -T "$WORK" | awk 'NR==2 {print $1, $2}')" >&2
timeout 180 "$BIN/abgate-feedback-bench" feedback --target "http://127.0.0.1:$P_ABGATE" --path /predict \
    --server-pid "$ABGATE_PID" "$@"
ls -la "$WORK/state" >&2
