#!/usr/bin/env python3
"""Reads wrk's `--latency` summary and prints the fields of abgate-load's JSON
report that load/bench-overhead.sh uses, so a wrk run is one more TSV row."""

import json
import re
import sys


def main():
    t = open(sys.argv[1]).read()

    def ms(q):
        m = re.search(rf"^\s+{q}%\s+([0-9.]+)(us|ms|s)\s*$", t, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return {"us": v / 1000, "ms": v, "s": v * 1000}[unit]

    m = re.search(r"(\d+) requests in ([0-9.]+)(ms|s)", t)
    done = int(m.group(1))
    secs = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    sock = sum(int(x) for x in sock.groups()) if sock else 0
    print(json.dumps({
        "requests_completed": done,
        "requests_ok": done - non2xx,
        "errors": {"socket": sock, "non2xx": non2xx},
        "throughput_rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", t).group(1)),
        "duration_s": secs,
        "latency_ms": {"p50": ms(50), "p99": ms(99)},
        # wrk does not read response headers: no per-arm tally.
        "arms": {},
    }))


if __name__ == "__main__":
    main()
