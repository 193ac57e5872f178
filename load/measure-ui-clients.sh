#!/usr/bin/env bash
# Does an audience of open web pages slow the data plane? The same open-loop
# load through abgate with 0 and with CLIENTS page clients attached, legs
# interleaved (every repeat runs both, in alternating order) so background
# noise hits both alike. Medians and min–max over the repeats are printed.
#
# abgate runs 50 experiments (the page's stated load: each tick carries all of
# them); the load goes to one. A page client is what an open page costs the
# server: one `GET /v1/events` stream read to the end (curl -N) plus, like the
# page, `GET /v1/experiments/{name}/history` of its experiment every
# HISTORY_EVERY seconds (the page fetches it on each decision and when
# polling); all clients run in one Python process. Everything listens on
# 127.0.0.1 only; every run is bounded.
#
# abgate's CPU is also shown without its admin runtime's threads (`abgate-admin`):
# what the page costs the data plane's workers.
#
# Usage: load/measure-ui-clients.sh
# Environment (defaults in brackets):
#   RATE          open-loop rate, req/s [1000]
#   DURATION      seconds per load run [10]
#   REPEATS       repeats of both legs [3]
#   CLIENTS       page clients in the loaded leg [50]
#   HISTORY_EVERY seconds between a client's history fetches [5]
#   BASE_PORT     first of 4 consecutive loopback ports [28300]
#   NO_BUILD=1    use the existing target/release binaries
set -euo pipefail

RATE=${RATE:-1000}
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CLIENTS=${CLIENTS:-50}
HISTORY_EVERY=${HISTORY_EVERY:-5}
BASE_PORT=${BASE_PORT:-28300}
P_STABLE=$BASE_PORT
P_CANARY=$((BASE_PORT + 1))
P_ABGATE=$((BASE_PORT + 2))
P_ADMIN=$((BASE_PORT + 3))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
LOG_TAG=measure-ui-clients
# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"

for tool in jq timeout python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --bin abgate --bin abgate-mock --bin abgate-load)
fi

make_work_dir abgate-ui-clients.XXXXXX
"$BIN/abgate-mock" \
    --serve "127.0.0.1:$P_STABLE,name=stable,latency=fixed:0,bytes=256" \
    --serve "127.0.0.1:$P_CANARY,name=canary,latency=fixed:0,bytes=256" \
    >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$P_STABLE"
wait_port "$P_CANARY"

{
    cat <<EOF
listen: 127.0.0.1:$P_ABGATE
admin: { listen: 127.0.0.1:$P_ADMIN }
state_dir: $WORK/abgate-state
backends:
  stable: { url: "http://127.0.0.1:$P_STABLE" }
  canary: { url: "http://127.0.0.1:$P_CANARY" }
experiments:
  - name: bench
    match: { path_prefix: /predict }
    unit: { header: x-user-id }
    arms:
      - { name: stable, backend: stable, weight: 90 }
      - { name: canary, backend: canary, weight: 10 }
EOF
    for i in $(seq 2 50); do
        cat <<EOF
  - name: exp-$i
    match: { path_prefix: /exp-$i }
    arms:
      - { name: stable, backend: stable, weight: 90 }
      - { name: canary, backend: canary, weight: 10 }
EOF
    done
} >"$WORK/abgate.yaml"
"$BIN/abgate" check "$WORK/abgate.yaml" >&2
ABGATE_LOG=warn "$BIN/abgate" serve --config "$WORK/abgate.yaml" >"$WORK/abgate.log" 2>&1 &
ABGATE_PID=$!
PIDS+=($!)
wait_port "$P_ABGATE"
wait_port "$P_ADMIN"

# start_clients N: N page clients, all in one light process (so the clients'
# own CPU is one Python process, not a hundred curls): each reads the event
# stream to the end and fetches its experiment's history every HISTORY_EVERY s.
CLIENT_PID=
start_clients() {
    python3 - "$1" "$P_ADMIN" "$HISTORY_EVERY" "$((DURATION + 30))" <<'PY' &
import asyncio, sys
n, port, every, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
async def stream():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    while await r.read(1 << 16):
        pass
async def history(name):
    while True:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET /v1/experiments/{name}/history HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        while await r.read(1 << 16):
            pass
        w.close()
        await asyncio.sleep(every)
async def main():
    names = ["bench"] + [f"exp-{i}" for i in range(2, 51)]
    tasks = [stream() for _ in range(n)] + [history(names[i % 50]) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*tasks), limit)
try:
    asyncio.run(main())
except (asyncio.TimeoutError, KeyboardInterrupt):
    pass
PY
    CLIENT_PID=$!
    PIDS+=($!)
}
stop_clients() {
    if [ -n "$CLIENT_PID" ]; then
        kill "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
        CLIENT_PID=
    fi
}

# run_leg CLIENTS REPEAT: one load run; appends "clients p50 p99 ok completed cpu%"
# to results, cpu% being abgate's CPU (utime+stime, all threads) over the load
# run in % of one core: unlike the tail, steal and neighbours barely move it.
run_leg() {
    local n=$1
    [ "$n" -gt 0 ] && start_clients "$n"
    # Let every stream open and a couple of ticks go out first.
    [ "$n" -gt 0 ] && sleep 2
    local t0 w0 t1 w1 a0 a1
    t0=$(cpu_ticks "$ABGATE_PID")
    a0=$(thread_ticks "$ABGATE_PID" '^abgate-admin')
    w0=$(date +%s.%N)
    timeout $((DURATION + 20)) "$BIN/abgate-load" --target "http://127.0.0.1:$P_ABGATE" \
        --kind predict --rate "$RATE" --duration "${DURATION}s" \
        --max-requests $((RATE * DURATION)) --json >"$WORK/run.json"
    t1=$(cpu_ticks "$ABGATE_PID")
    a1=$(thread_ticks "$ABGATE_PID" '^abgate-admin')
    w1=$(date +%s.%N)
    local cpu rest
    cpu=$(python3 -c "print(f'{($t1 - $t0) / $(getconf CLK_TCK) / ($w1 - $w0) * 100:.2f}')")
    # The same without the admin runtime's threads: what the data plane's
    # workers (and everything else) spent.
    rest=$(python3 -c "print(f'{($t1 - $t0 - ($a1 - $a0)) / $(getconf CLK_TCK) / ($w1 - $w0) * 100:.2f}')")
    jq -r --arg n "$n" --arg cpu "$cpu" --arg rest "$rest" '"\($n) \(.latency_ms.p50) \(.latency_ms.p99) \(.requests_ok) \(.requests_completed) \($cpu) \($rest)"' \
        "$WORK/run.json" >>"$WORK/results"
    stop_clients
}

log "rate $RATE req/s for ${DURATION}s, $REPEATS repeats, 0 vs $CLIENTS page clients, 50 experiments"
for r in $(seq "$REPEATS"); do
    if [ $((r % 2)) = 1 ]; then order="0 $CLIENTS"; else order="$CLIENTS 0"; fi
    for n in $order; do
        log "repeat $r: $n page clients"
        run_leg "$n"
    done
done

python3 - "$WORK/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
legs = {}
for n, p50, p99, ok, done, cpu, rest in rows:
    legs.setdefault(int(n), []).append((float(p50), float(p99), int(ok), int(done), float(cpu), float(rest)))
print("| page clients | p50 ms median (min–max) | p99 ms median (min–max) | abgate CPU, % of a core, median (min–max) | of which outside the admin runtime | ok / completed |")
print("| --- | --- | --- | --- | --- | --- |")
for n in sorted(legs):
    v = legs[n]
    def col(i):
        xs = [x[i] for x in v]
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"
    ok = sum(x[2] for x in v); done = sum(x[3] for x in v)
    print(f"| {n} | {col(0)} | {col(1)} | {col(4)} | {col(5)} | {ok} / {done} |")
EOF
