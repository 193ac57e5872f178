#!/usr/bin/env bash
# Memory per streamed response: one chat completion stream of MB megabytes
# (default 2000) through abgate (release build, scanner on: the path is
# /v1/chat/completions), its RSS sampled every 250 ms. The scanner's state is
# bounded per response, so RSS must stay flat however long the stream.
# Loopback only; bounded by the stream's size and a 120 s timeout.
# Usage: load/measure-stream-rss.sh [MB]   (BASE_PORT [28510]: 3 ports)
set -euo pipefail
MB=${1:-2000}
P=${BASE_PORT:-28510}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'kill ${AP:-} ${BP:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat >"$WORK/c.yaml" <<YAML
listen: 127.0.0.1:$P
admin: { listen: 127.0.0.1:$((P + 1)) }
state_dir: $WORK/state
backends:
  a: { url: "http://127.0.0.1:$((P + 2))" }
  b: { url: "http://127.0.0.1:$((P + 2))" }
experiments:
  - name: llm
    match: { path_prefix: /v1/chat/completions }
    arms:
      - { name: a, backend: a, weight: 50 }
      - { name: b, backend: b, weight: 50 }
YAML
python3 "$ROOT/load/sse-stream-backend.py" $((P + 2)) "$MB" &
BP=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$((P + 2))) 2>/dev/null && break; sleep 0.1; done
ABGATE_LOG=warn "$ROOT/target/release/abgate" serve --no-watch --config "$WORK/c.yaml" >"$WORK/abgate.log" 2>&1 &
AP=$!
for _ in $(seq 50); do curl -s "127.0.0.1:$((P + 1))/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$AP/status"; }
echo "RSS before: $(rss) KiB"
timeout 120 curl -sN -X POST -H 'content-type: application/json' \
    -d '{"model":"m","stream":true,"messages":[]}' \
    "http://127.0.0.1:$P/v1/chat/completions" -o /dev/null \
    -w 'streamed %{size_download} bytes in %{time_total}s\n' &
CP=$!
samples=""
while kill -0 $CP 2>/dev/null; do samples="$samples $(rss)"; sleep 0.25; done
wait $CP
echo "RSS during the stream (KiB):$samples"
echo "RSS after: $(rss) KiB"
