#!/usr/bin/env bash
# Proxy overhead: the same load against (a) the mock backend directly, (b) abgate,
# (c) a bare hyper proxy (load/bare_proxy.rs: the same hyper and hyper-util client,
# nothing else), (d) nginx and (e) HAProxy, each proxy splitting 90/10 on x-user-id
# over two mock ports. Legs are interleaved (every repeat runs every target at every load level,
# in a rotated order) so background noise hits all legs alike; medians and min–max
# over the repeats are written to load/results/overhead-<date>.md and printed.
#
# Load levels, all driven by abgate-load: open loop at each of RATES (latency from
# the scheduled send time), sequential (1 connection, closed loop: the clean
# per-request latency, free of the open-loop scheduler's ~1 ms timer granularity)
# and closed loop with CLOSED_CONNS connections (max throughput).
#
# Placement: proxies pinned to core 1 (`taskset -c 1`), the load driver and the
# mock backend to core 0. abgate's tokio multi-thread runtime sizes itself from the
# affinity mask, so it runs one worker thread, like nginx `worker_processes 1` and
# HAProxy `nbthread 1`.
#
# Everything listens on and targets 127.0.0.1 only. Every load run is bounded by
# --duration, --max-requests and an outer `timeout`.
#
# Usage:
#   load/bench-overhead.sh [--quick]
# Environment (defaults in brackets):
#   DURATION     seconds per load run [8]          (--quick: 3)
#   RATES        open-loop rates, req/s ["2000 5000"] (--quick: "2000")
#   REPEATS      repeats of every leg [3]          (--quick: 2)
#   CLOSED_CONNS closed-loop connections [32]
#   WRK_CONNS    connections of the wrk closed-loop leg (wrk -t1; 0 = no wrk leg) [50]
#   TARGETS      legs to run ["direct abgate bare nginx haproxy"]
#   BASE_PORT    first of 9 consecutive loopback ports [28100]
#   NO_BUILD=1   use the existing target/release binaries without `cargo build`
#   BASELINE_ABGATE  path of another abgate binary (e.g. a build of the previous
#                commit copied aside): adds the leg `abgate-base`, same config,
#                so a change is judged against its baseline in the same run
#   OUT          results file [load/results/overhead-<date>.md]
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-3}
    RATES=${RATES:-2000}
    REPEATS=${REPEATS:-2}
else
    DURATION=${DURATION:-8}
    RATES=${RATES:-2000 5000}
    REPEATS=${REPEATS:-3}
fi
CLOSED_CONNS=${CLOSED_CONNS:-32}
WRK_CONNS=${WRK_CONNS:-50}
TARGETS=${TARGETS:-direct abgate bare nginx haproxy}
BASE_PORT=${BASE_PORT:-28100}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATE=$(date +%Y-%m-%d)
OUT=${OUT:-$ROOT/load/results/overhead-$DATE.md}
BIN=$ROOT/target/release

P_STABLE=$BASE_PORT
P_CANARY=$((BASE_PORT + 1))
P_ABGATE=$((BASE_PORT + 2))
P_ADMIN=$((BASE_PORT + 3))
P_NGINX=$((BASE_PORT + 4))
P_HAPROXY=$((BASE_PORT + 5))
P_BASELINE=$((BASE_PORT + 6))
P_BASELINE_ADMIN=$((BASE_PORT + 7))
P_BARE=$((BASE_PORT + 8))

LOG_TAG=bench-overhead
# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"

# --- tools --------------------------------------------------------------------

for tool in taskset jq python3 curl timeout; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[ "$(nproc --all)" -ge 2 ] || die "needs at least 2 cores (proxy on core 1, driver on core 0)"

apt_install() {
    # Only for the optional comparison proxies; the registry is Debian's own mirror.
    if [ "$(id -u)" != 0 ]; then
        log "$1 missing and not root: skipping its leg"
        return 1
    fi
    if ! apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update >&2 || return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2 || return 1
}

wanted() { [[ " $TARGETS " == *" $1 "* ]]; }

if wanted nginx && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx || TARGETS=${TARGETS/nginx/}
fi
if wanted haproxy && ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
    apt_install haproxy || TARGETS=${TARGETS/haproxy/}
fi
# A second, independent driver: wrk's closed loop (one thread), as others measure.
if [ "$WRK_CONNS" -gt 0 ] && ! command -v wrk >/dev/null; then
    apt_install wrk || WRK_CONNS=0
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building release binaries (CARGO_BUILD_JOBS=1, nice)"
    (cd "$ROOT" && CARGO_BUILD_JOBS=1 nice -n 5 cargo build --release --bins --example bare-proxy >&2)
fi
for b in abgate abgate-mock abgate-load; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing (cargo build --release)"
done

# --- processes ----------------------------------------------------------------

make_work_dir abgate-bench.XXXXXX
# nginx workers drop root privileges; they must be able to reach their temp dirs.
chmod 755 "$WORK"

log "work dir $WORK"
taskset -c 0 "$BIN/abgate-mock" \
    --serve "127.0.0.1:$P_STABLE,name=stable,latency=fixed:0,bytes=256" \
    --serve "127.0.0.1:$P_CANARY,name=canary,latency=fixed:0,bytes=256" \
    >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$P_STABLE"
wait_port "$P_CANARY"

declare -A PORT PID
PORT[direct]=$P_STABLE

if wanted abgate; then
    cat >"$WORK/abgate.yaml" <<EOF
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
    "$BIN/abgate" check "$WORK/abgate.yaml" >&2
    ABGATE_LOG=warn taskset -c 1 "$BIN/abgate" serve --config "$WORK/abgate.yaml" \
        >"$WORK/abgate.log" 2>&1 &
    PID[abgate]=$!
    PIDS+=($!)
    PORT[abgate]=$P_ABGATE
    wait_port "$P_ABGATE"
    if [ -n "${BASELINE_ABGATE:-}" ]; then
        [ -x "$BASELINE_ABGATE" ] || die "BASELINE_ABGATE=$BASELINE_ABGATE is not executable"
        sed -e "s/127.0.0.1:$P_ABGATE\$/127.0.0.1:$P_BASELINE/" \
            -e "s/127.0.0.1:$P_ADMIN }/127.0.0.1:$P_BASELINE_ADMIN }/" \
            -e "s#abgate-state#abgate-base-state#" "$WORK/abgate.yaml" >"$WORK/abgate-base.yaml"
        ABGATE_LOG=warn taskset -c 1 "$BASELINE_ABGATE" serve --config "$WORK/abgate-base.yaml" \
            >"$WORK/abgate-base.log" 2>&1 &
        PID[abgate-base]=$!
        PIDS+=($!)
        PORT[abgate-base]=$P_BASELINE
        wait_port "$P_BASELINE"
        TARGETS="$TARGETS abgate-base"
    fi
fi

if wanted bare; then
    # The reference: hyper 1.x + hyper-util's legacy client, the same split, nothing else.
    [ -x "$BIN/examples/bare-proxy" ] || die "$BIN/examples/bare-proxy missing (cargo build --release --example bare-proxy)"
    taskset -c 1 "$BIN/examples/bare-proxy" "127.0.0.1:$P_BARE" "127.0.0.1:$P_STABLE" "127.0.0.1:$P_CANARY" \
        >"$WORK/bare.log" 2>&1 &
    PID[bare]=$!
    PIDS+=($!)
    PORT[bare]=$P_BARE
    wait_port "$P_BARE"
fi

if wanted nginx; then
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 1000000;
    upstream stable { server 127.0.0.1:$P_STABLE; keepalive 256; keepalive_requests 1000000; }
    upstream canary { server 127.0.0.1:$P_CANARY; keepalive 256; keepalive_requests 1000000; }
    # The same sticky 90/10 split abgate does (MurmurHash2 instead of XXH3).
    split_clients "\${http_x_user_id}" \$arm { 90% stable; * canary; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://\$arm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            add_header x-abgate-arm \$arm always;
        }
    }
}
EOF
    # -e: the error log before the config is read (the default path may not be writable).
    taskset -c 1 "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
        >"$WORK/nginx.log" 2>&1 &
    PID[nginx]=$!
    PIDS+=($!)
    PORT[nginx]=$P_NGINX
    wait_port "$P_NGINX"
fi

if wanted haproxy; then
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 60s
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$P_HAPROXY
    default_backend arms
backend arms
    # Sticky weighted split on the unit key (map-based hashing honours weights).
    balance hdr(x-user-id)
    hash-type map-based
    http-response set-header x-abgate-arm %[srv_name]
    server stable 127.0.0.1:$P_STABLE weight 90
    server canary 127.0.0.1:$P_CANARY weight 10
EOF
    taskset -c 1 "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    PIDS+=($!)
    PORT[haproxy]=$P_HAPROXY
    wait_port "$P_HAPROXY"
fi

read -r -a LEGS <<<"$TARGETS"
log "legs: ${LEGS[*]}; open-loop rates: $RATES; sequential (1 conn); closed loop: $CLOSED_CONNS conns; ${DURATION}s × $REPEATS repeats"

# --- measurement helpers ------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# Resident set size (KiB) of a process tree.
rss_kib() {
    local sum=0 p
    for p in $(pid_tree "$1"); do
        sum=$((sum + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
    done
    echo "$sum"
}

# "busy total" jiffies of one core from /proc/stat.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c {busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6}' /proc/stat
}

# run_load LEG MODE RATE RUN_ID REPEAT: one bounded abgate-load run; appends a TSV row.
run_load() {
    local leg=$1 mode=$2 rate=$3 id=$4 repeat=$5
    local url="http://127.0.0.1:${PORT[$leg]}"
    local args=(--target "$url" --kind predict --path /predict --duration "${DURATION}s"
        --timeout 5s --users 10000 --seed "$id" --json)
    case "$mode" in
        open) args+=(--rate "$rate" --max-requests "$(python3 -c "print(int($rate * $DURATION) + 1)")") ;;
        closed) args+=(--connections "$CLOSED_CONNS" --max-requests 5000000) ;;
        seq) args+=(--connections 1 --max-requests 5000000) ;;
    esac
    local pid=${PID[$leg]:-}
    local t0 t1 c0 c1 k0 k1 d0 d1 j0 j1 load1
    load1=$(cut -d' ' -f1 /proc/loadavg)
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    read -r c0 k0 <<<"$(core_jiffies 1)"
    read -r d0 j0 <<<"$(core_jiffies 0)"
    local json=$WORK/run-$id-$leg-$mode-$rate.json
    if [ "$mode" = wrk ]; then
        timeout $((DURATION + 30)) taskset -c 0 wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" --latency \
            -s "$WORK/wrk.lua" "$url/" >"$json.txt" 2>"$json.err" ||
            die "wrk failed for $leg: $(tail -3 "$json.err")"
        # The same fields abgate-load reports, read from wrk's summary.
        python3 "$ROOT/load/bench/wrk_report.py" "$json.txt" >"$json"
    else
        timeout $((DURATION + 30)) taskset -c 0 "$BIN/abgate-load" "${args[@]}" >"$json" 2>"$json.err" ||
            die "abgate-load failed for $leg $mode $rate: $(tail -3 "$json.err")"
    fi
    read -r c1 k1 <<<"$(core_jiffies 1)"
    read -r d1 j1 <<<"$(core_jiffies 0)"
    local cpu_ticks_used=NA rss=NA
    if [ -n "$pid" ]; then
        t1=$(cpu_ticks "$pid")
        cpu_ticks_used=$((t1 - t0))
        rss=$(rss_kib "$pid")
    fi
    jq -r --arg leg "$leg" --arg mode "$mode" --arg rate "$rate" --arg id "$id" --arg r "$repeat" \
        --arg cpu "$cpu_ticks_used" --arg rss "$rss" --arg load1 "$load1" \
        --arg core1 "$(((c1 - c0) * 1000 / (k1 - k0 + 1)))" \
        --arg core0 "$(((d1 - d0) * 1000 / (j1 - j0 + 1)))" \
        '[$id, $r, $leg, $mode, $rate, .requests_completed, .requests_ok, (.errors | [.[]] | add),
          .throughput_rps, .duration_s, .latency_ms.p50, .latency_ms.p99, $cpu, $rss, $load1,
          $core1, $core0, ((.arms.canary.responses // 0) / ([.requests_completed, 1] | max))] | @tsv' "$json" >>"$WORK/runs.tsv"
    log "$(tail -1 "$WORK/runs.tsv" | awk -F'\t' '{printf "#%s %-8s %-6s %5s: %7.0f rps  p50 %.3f ms  p99 %.3f ms  ok %d/%d  cpu %s ticks  load %s", $2, $3, $4, $5, $9, $11, $12, $7, $6, $13, $15}')"
}

# --- warm-up, then interleaved legs --------------------------------------------

log "warm-up (1 s closed loop per leg, not recorded)"
for leg in "${LEGS[@]}"; do
    timeout 30 taskset -c 0 "$BIN/abgate-load" --target "http://127.0.0.1:${PORT[$leg]}" \
        --kind predict --path /predict --duration 1s --connections "$CLOSED_CONNS" \
        --max-requests 200000 --json >/dev/null
done

# wrk's requests: POST /predict as one of 10 000 users, drawn from a seeded RNG.
cat >"$WORK/wrk.lua" <<'EOF'
math.randomseed(7)
request = function()
  return wrk.format("POST", "/predict", {["x-user-id"] = "user-" .. math.random(0, 9999), ["content-type"] = "application/json"}, "{}")
end
EOF
WRK_LEVEL=
[ "$WRK_CONNS" -gt 0 ] && WRK_LEVEL=wrk

printf 'id\trepeat\tleg\tmode\trate\tcompleted\tok\terrors\trps\tduration_s\tp50_ms\tp99_ms\tcpu_ticks\trss_kib\tload1\tcore1_busy_permille\tcore0_busy_permille\tcanary_share\n' >"$WORK/runs.tsv"
STARTED=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
id=0
for r in $(seq "$REPEATS"); do
    for level in $RATES seq closed $WRK_LEVEL; do
        # Rotate the leg order each repeat so no leg always runs first or last.
        n=${#LEGS[@]}
        for k in $(seq 0 $((n - 1))); do
            leg=${LEGS[$(((k + r) % n))]}
            id=$((id + 1))
            case "$level" in
                seq | closed | wrk) run_load "$leg" "$level" 0 "$id" "$r" ;;
                *) run_load "$leg" open "$level" "$id" "$r" ;;
            esac
        done
    done
done
ELAPSED=$(($(date +%s) - STARTED))

# --- report --------------------------------------------------------------------

mkdir -p "$(dirname "$OUT")"
cp "$WORK/runs.tsv" "${OUT%.md}.tsv"
python3 "$ROOT/load/bench/summarize.py" "$WORK/runs.tsv" \
    --clk-tck "$CLK_TCK" --duration "$DURATION" --repeats "$REPEATS" \
    --closed-conns "$CLOSED_CONNS" --elapsed "$ELAPSED" --load-before "$LOAD_BEFORE" \
    --load-after "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --versions "abgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$([ -x "$NGINX" ] && echo ", $("$NGINX" -v 2>&1 | sed 's/.*version: //')")$([ -x "$HAPROXY" ] && echo ", $("$HAPROXY" -v 2>/dev/null | head -1 | awk '{print "HAProxy " $3}')")" \
    --command "$0 $*  (DURATION=$DURATION RATES=\"$RATES\" REPEATS=$REPEATS CLOSED_CONNS=$CLOSED_CONNS)" \
    >"$OUT"
cat "$OUT"
log "wrote $OUT and ${OUT%.md}.tsv"
