#!/usr/bin/env bash
# Fleet mode numbers: one PostgreSQL (initdb in a temp dir, a free port, the
# shipped durability: fsync on) and three release replicas of N canary
# experiments (default 100) that never decide on their own (steps wait an hour),
# all on this machine. Measures, in order:
#   1. the leading replica's CPU per request against an SQLite-mode abgate with
#      the same experiments: closed loops of REQUESTS, interleaved, REPEATS times;
#   2. propagation over SWAPS manual swaps (pause/resume of e0 through replica 1):
#      from the commit of the revision a replica read to its table swap, as each
#      other replica measured it (`last_propagation_ms` on /readyz), and from the
#      acknowledgement to the change being visible, as a client polling every 2 ms
#      sees it;
#   3. each replica's process CPU over 10 s while RATE req/s are spread over the
#      three replicas and N experiments: the leader's surplus over the followers
#      is what leading costs (controllers, drift watches, saving their runs);
#   4. fleet-wide feedback ingestion: one batched feedback bench per replica at
#      once (8 clients x 100-event batches for 10 s each), accepted events/s summed.
# Loopback only; every phase is bounded by a count and a time.
#   cargo build --release && load/measure-fleet.sh
#   N=100 SWAPS=100 RATE=1000 REQUESTS=20000 REPEATS=3 load/measure-fleet.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${BIN:-$ROOT/target/release}
N=${N:-100}; SWAPS=${SWAPS:-100}; RATE=${RATE:-1000}; REQUESTS=${REQUESTS:-20000}; REPEATS=${REPEATS:-3}
P=${BASE_PORT:-28600}
LOG_TAG=fleet
# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"
make_work_dir abgate-fleet.XXXXXX
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] || die "run as root: PostgreSQL runs as the postgres user"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || die "no PostgreSQL server binaries (apt-get install postgresql)"

PG=$((P + 20))
mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -U abgate --auth=trust >"$WORK/initdb.log" 2>&1
runuser -u postgres -- "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PG" -k "$WORK/pg" \
    -c listen_addresses=127.0.0.1 >"$WORK/pg.log" 2>&1 &
PIDS+=($!); wait_port "$PG"
for _ in $(seq 50); do
    runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PG" -U abgate fleet 2>/dev/null && break
    sleep 0.2
done
URL="postgres://abgate@127.0.0.1:$PG/fleet"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG (fsync on)"

"$B/abgate-mock" --serve "127.0.0.1:$P,name=stable,latency=lognormal:5:0.3,error_rate=0.01,seed=1" \
    --serve "127.0.0.1:$((P + 1)),name=canary,latency=lognormal:5:0.3,error_rate=0.01,seed=2" >"$WORK/mock.log" 2>&1 &
PIDS+=($!); wait_port "$P"

# config I STORE_YAML: replica I's file (listeners P+2+2I, P+3+2I).
config() {
    local i=$1 store=$2
    cat <<EOF
listen: 127.0.0.1:$((P + 2 + 2 * i))
admin: { listen: 127.0.0.1:$((P + 3 + 2 * i)) }
state_dir: $WORK/state$i
$store
backends:
  stable: { url: "http://127.0.0.1:$P" }
  canary: { url: "http://127.0.0.1:$((P + 1))" }
experiments:
EOF
    for e in $(seq 0 $((N - 1))); do cat <<EOF
  - name: e$e
    match: { path_prefix: /v2/models/m$e }
    unit: { header: x-user-id }
    baseline: stable
    kind: canary
    steps: [10, 50, 100]
    step: { min_samples: 1000000, min_duration: 1h }
    metrics: [ { name: m0, source: feedback, type: binary } ]
    analysis:
      interval: 1s
      min_units_per_arm: 5
      min_events: 5
      guardrails:
        - { metric: error, max_relative_increase: 0.10 }
        - { metric: latency_ms, max_relative_increase: 0.05 }
    arms:
      - { name: stable, backend: stable, weight: 90 }
      - { name: canary, backend: canary, weight: 10 }
EOF
    done
}

STORE="store: { kind: postgres, url: \"$URL\", pool: 8 }"
KEYS=k1:fleet-measure-key-0123456789abcdef
RPID=()
for i in 0 1 2; do
    config "$i" "$STORE" >"$WORK/r$i.yaml"
    ABGATE_TOKEN_KEYS=$KEYS ABGATE_LOG=warn "$B/abgate" serve --no-watch --config "$WORK/r$i.yaml" >"$WORK/r$i.log" 2>&1 &
    RPID+=($!); PIDS+=($!); wait_port $((P + 2 + 2 * i))
done
admin() { echo "http://127.0.0.1:$((P + 3 + 2 * $1))"; }
data() { echo "http://127.0.0.1:$((P + 2 + 2 * $1))"; }
role() { curl -s "$(admin "$1")/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fleet"]["role"])'; }
for _ in $(seq 100); do
    LEADER=""
    for i in 0 1 2; do [ "$(role $i)" = leader ] && LEADER=$i; done
    [ -n "$LEADER" ] && break
    sleep 0.1
done
[ -n "$LEADER" ] || die "no replica leads (logs in $WORK)"
log "3 replicas of $N experiments; replica $LEADER leads"
# The SQLite-mode process for phase 1, started now so both make their first
# decisions (each canary's start) before anything is measured.
config 3 "" | sed "s|$WORK/state3|$WORK/state-sqlite|" >"$WORK/sqlite.yaml"
ABGATE_LOG=warn "$B/abgate" serve --no-watch --config "$WORK/sqlite.yaml" >"$WORK/sqlite.log" 2>&1 &
SQ=$!; PIDS+=($SQ); wait_port $((P + 8))
starts() {
    runuser -u postgres -- "$PGBIN/psql" -h 127.0.0.1 -p "$PG" -U abgate -d fleet -Atc \
        "SELECT count(*) FROM decisions WHERE kind = 'start' AND applied"
}
for _ in $(seq 300); do [ "$(starts)" -ge "$N" ] && break; sleep 0.1; done
[ "$(starts)" -ge "$N" ] || die "the leader did not start every canary"
sleep 2
log "every canary started (step 1) in both modes"

# 1. CPU per request, first, while every experiment is fresh in both modes
# (the leader runs the same controllers as the SQLite-mode process): the
# leader replica (the others idle) against SQLite, interleaved.
# closed PID URL OUT: one closed loop of REQUESTS predict requests over 16
# connections; prints PID's CPU-us per ok request (read 1 s after, so each
# second's snapshot is in) and the ok count.
closed() {
    local t0 t1 ok
    t0=$(cpu_ticks "$1")
    "$B/abgate-load" --target "$2" --kind predict --path /v2/models/m1/infer --connections 16 \
        --max-requests "$REQUESTS" --duration 60s --seed 7 --json >"$3" 2>/dev/null
    sleep 1
    t1=$(cpu_ticks "$1")
    ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_ok"])' "$3")
    python3 -c 'import sys; t,n=float(sys.argv[1]),int(sys.argv[2]); print(f"{t*1e6/100/max(n,1):.1f} {n}")' "$((t1 - t0))" "$ok"
}
for r in $(seq "$REPEATS"); do
    pg=$(closed "${RPID[$LEADER]}" "$(data "$LEADER")" "$WORK/c-pg.json")
    sq=$(closed "$SQ" "http://127.0.0.1:$((P + 8))" "$WORK/c-sq.json")
    echo "repeat $r: fleet replica ${pg% *} CPU-us/request (${pg#* } ok), sqlite ${sq% *} (${sq#* } ok)"
done

# 2. Propagation.
python3 - "$SWAPS" "$(admin 0)" "$(admin 1)" "$(admin 2)" <<'PY'
import json, sys, time, urllib.request
swaps, admins = int(sys.argv[1]), sys.argv[2:]
def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)
def post(url):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status
commit_to_swap, ack_to_visible = [], []
others = [admins[0], admins[2]]
for k in range(swaps):
    action, state = ("pause", "paused") if k % 2 == 0 else ("resume", "running")
    assert post(f"{admins[1]}/v1/experiments/e0/{action}") == 200
    acked = time.monotonic()
    for a in others:
        deadline = acked + 5
        while get(f"{a}/v1/experiments/e0")["state"] != state:
            assert time.monotonic() < deadline, f"{a} never saw {state}"
            time.sleep(0.002)
        ack_to_visible.append((time.monotonic() - acked) * 1000)
        commit_to_swap.append(get(f"{a}/readyz")["fleet"]["last_propagation_ms"])
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]
for name, xs in [("commit-to-swap (replica's own clock)", commit_to_swap),
                 ("acknowledged-to-visible (client, 2 ms polls)", ack_to_visible)]:
    print(f"propagation {name}: {len(xs)} samples over {swaps} swaps: p50 {q(xs, .5):.1f} ms, "
          f"p99 {q(xs, .99):.1f} ms, min {min(xs):.1f}, max {max(xs):.1f}")
PY

# 3. CPU per replica under spread load.
SPREAD=()
for i in 0 1 2; do
    timeout 40 "$B/abgate-feedback-bench" spread --target "$(data $i)" --path-template '/v2/models/m{}/infer' \
        --paths "$N" --rate $((RATE / 3)) --duration 20s --max-requests $((RATE * 20)) >"$WORK/spread$i.json" 2>&1 &
    SPREAD+=($!)
done
sleep 5
declare -a T0 T1
for i in 0 1 2; do T0[$i]=$(cpu_ticks "${RPID[$i]}"); done
sleep 10
for i in 0 1 2; do T1[$i]=$(cpu_ticks "${RPID[$i]}"); done
wait "${SPREAD[@]}" || true
python3 - "$LEADER" "$RATE" "$N" "${T0[@]}" "${T1[@]}" <<'PY'
import sys
leader, rate, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0, t1 = list(map(int, sys.argv[4:7])), list(map(int, sys.argv[7:10]))
cpu = [(b - a) / 100 / 10 * 100 for a, b in zip(t0, t1)]
followers = [c for i, c in enumerate(cpu) if i != leader]
f = sum(followers) / len(followers)
print(f"CPU over 10 s at {rate} req/s spread over 3 replicas and {n} experiments: "
      + ", ".join(f"replica {i}{' (leader)' if i == leader else ''} {c:.1f}%" for i, c in enumerate(cpu))
      + f"; leading costs {cpu[leader] - f:+.1f}% of a core")
PY

# 4. Fleet-wide feedback ingestion.
FB=()
for i in 0 1 2; do
    timeout 120 "$B/abgate-feedback-bench" feedback --target "$(data $i)" --path /v2/models/m0/infer \
        --tokens 20000 --metric-prefix m --metrics 1 --clients 8 --batch 100 --batched-duration 10s \
        --skip-single --server-pid "${RPID[$i]}" >"$WORK/fb$i.json" 2>"$WORK/fb$i.err" &
    FB+=($!)
done
wait "${FB[@]}" || true
python3 - "$WORK"/fb0.json "$WORK"/fb1.json "$WORK"/fb2.json <<'PY'
import json, sys
runs = []
for path in sys.argv[1:]:
    text = open(path).read()
    try:
        runs.append(json.loads(text[text.index("{"):]))
    except Exception:
        print(f"{path}: no report: {text[:300]}")
b = [r.get("batched") or {} for r in runs]
rates = [x.get("accepted_per_s", 0) for x in b]
dups = sum(x.get("duplicates", 0) for x in b)
print(f"fleet feedback ingestion (3 replicas x 8 clients x 100-event batches, 10 s): "
      f"{sum(rates):,.0f} accepted events/s ({', '.join(f'{r:,.0f}' for r in rates)}), duplicates {dups}")
PY

