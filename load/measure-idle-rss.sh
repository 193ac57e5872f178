#!/usr/bin/env bash
# RSS with many idle client connections: abgate (release build) in front of
# one mock backend; N keep-alive client connections (default 1000) each send
# one request, read the answer and then stay open and idle. RSS is read from
# /proc before, with the connections open, and after they close. The same
# for nginx (one worker, keepalive upstream) when it is installed, as the
# reference. Loopback only; bounded by N and a 60 s timeout per leg.
# Usage: load/measure-idle-rss.sh [N]   (BASE_PORT [28530]: 4 ports)
set -euo pipefail
N=${1:-1000}
P=${BASE_PORT:-28530}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=idle-rss
# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"
make_work_dir abgate-idle.XXXXXX
"$ROOT/target/release/abgate-mock" --serve "127.0.0.1:$((P + 2)),name=m,latency=fixed:0" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/c.yaml" <<YAML
listen: 127.0.0.1:$P
admin: { listen: 127.0.0.1:$((P + 1)) }
state_dir: $WORK/state
backends:
  a: { url: "http://127.0.0.1:$((P + 2))" }
experiments:
  - name: idle
    arms:
      - { name: a, backend: a, weight: 100 }
YAML
ABGATE_LOG=warn "$ROOT/target/release/abgate" serve --no-watch --config "$WORK/c.yaml" >"$WORK/abgate.log" 2>&1 &
AP=$!
PIDS+=("$AP")
wait_port $((P + 2))
wait_port "$P"

# Opens N connections, one request each, then holds them for HOLD seconds
# while the caller reads RSS; prints "ready" once all answered.
cat >"$WORK/idle.py" <<'PY'
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nx-user-id: u%d\r\ncontent-length: 2\r\n\r\n{}" % i)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    socks.append(s)
print("ready", flush=True)
time.sleep(hold)
for s in socks:
    s.close()
PY

measure() { # name pid port
    local name=$1 pid=$2 port=$3
    rss() { awk '/VmRSS/{print $2}' "/proc/$pid/status"; }
    # One request first, so the upstream connection and lazy state exist.
    curl -s -o /dev/null -X POST -d '{}' "http://127.0.0.1:$port/predict"
    local before; before=$(rss)
    timeout 60 python3 "$WORK/idle.py" "$port" "$N" 3 >"$WORK/idle.out" &
    local py=$!
    for _ in $(seq 600); do grep -q ready "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    local with; with=$(rss)
    wait $py
    sleep 1
    local after; after=$(rss)
    printf '%-7s RSS before %6d KiB, with %d idle connections %6d KiB (+%d KiB, %.1f KiB each), after they closed %6d KiB\n' \
        "$name" "$before" "$N" "$with" $((with - before)) "$(echo "($with - $before) / $N" | bc -l)" "$after"
}
measure abgate "$AP" "$P"

if command -v nginx >/dev/null 2>&1; then
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections $((N + 100)); }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    upstream m { server 127.0.0.1:$((P + 2)); keepalive 64; }
    server {
        listen 127.0.0.1:$((P + 3));
        keepalive_timeout 75s;
        keepalive_requests 100000;
        location / { proxy_pass http://m; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGX
    nginx -c "$WORK/nginx.conf" -g 'daemon off; master_process off;' &
    NP=$!
    PIDS+=("$NP")
    wait_port $((P + 3))
    measure nginx "$NP" $((P + 3))
fi
