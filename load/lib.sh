# Shared by the load scripts (source it; bash only): logging, a work directory
# whose processes are stopped on exit, waiting for a port, process CPU time.
# Set LOG_TAG before sourcing to name the script in log lines.

log() { echo "[${LOG_TAG:-load} $(date +%T)] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# make_work_dir TEMPLATE: sets WORK (a fresh temp dir) and PIDS; on exit every
# pid in PIDS (only processes the script started) is stopped and WORK removed.
make_work_dir() {
    WORK=$(mktemp -d -t "$1")
    PIDS=()
    trap stop_started EXIT
    trap 'exit 130' INT TERM
}

stop_started() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listening on 127.0.0.1:$1 (logs in $WORK)"
}

# pid_tree PID: the pid and its descendants (nginx's master has one worker).
pid_tree() {
    local p=$1
    echo "$p"
    for c in $(cat "/proc/$p/task/"*/children 2>/dev/null); do
        pid_tree "$c"
    done
}

# cpu_ticks PID: utime+stime (clock ticks) of a process tree, all threads.
cpu_ticks() {
    local sum=0 p
    for p in $(pid_tree "$1"); do
        # Fields after the parenthesised comm: utime is the 12th, stime the 13th.
        sum=$((sum + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$sum"
}

# closed_chat_cpu PID URL REQUESTS OUT [SETTLE]: one closed loop of REQUESTS
# chat requests over 16 connections against URL ($B/abgate-load on core 1,
# seed 7, at most 60 s; its report in OUT); prints PID's CPU-µs per ok request
# and the ok count. The CPU is read SETTLE seconds after the last answer, so
# work the process finishes after it (a writer thread's) counts.
closed_chat_cpu() {
    local pid=$1 url=$2 requests=$3 out=$4 settle=${5:-0} t0 t1 ok
    t0=$(cpu_ticks "$pid")
    taskset -c 1 "${B:?}/abgate-load" --target "$url" --kind chat \
        --connections 16 --max-requests "$requests" --duration 60s --seed 7 --json >"$out" 2>/dev/null
    [ "$settle" = 0 ] || sleep "$settle"
    t1=$(cpu_ticks "$pid")
    ok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_ok"])' "$out")
    python3 -c 'import sys; t,n=float(sys.argv[1]),int(sys.argv[2]); print(f"{t*1e6/100/max(n,1):.1f} {n}")' "$((t1 - t0))" "$ok"
}

# thread_ticks PID REGEX: utime+stime (clock ticks) of PID's threads whose name
# (comm) matches REGEX; `-v REGEX` sums the others.
thread_ticks() {
    local pid=$1 sel=$2 re=${3:-} sum=0 t name
    [ "$sel" = -v ] || re=$sel
    for t in /proc/"$pid"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        if [[ "$name" =~ $re ]]; then [ "$sel" = -v ] && continue; else [ "$sel" = -v ] || continue; fi
        sum=$((sum + $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')))
    done
    echo "$sum"
}
