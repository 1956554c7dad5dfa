#!/usr/bin/env bash
# Where the time of scenario 1 goes (one task, acquire+release on one key), for this library
# and redis-py, with the benchmark and a private redis-server pinned to CPU 0:
#   - perf record -C 0 (every process on the CPU): the share of each thread kind (python,
#     tokio worker "distributed-lea", redis-server) and of each binary (kernel, libpython, ours);
#   - strace -c: system calls per cycle on the benchmark's side.
#
#   bash bench/profile.sh [seconds per run, default 4]      (needs perf, strace, redis-server,
#                                                           and redis-py for the peer rows)
# Install the wheel first (maturin build --release; pip install). Sampling slows every run the
# same way: compare shares and counts, and take rates from bench/run.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-4}
PY=${PYTHON:-python3}
for tool in perf strace redis-server redis-cli taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TMP=$(mktemp -d)
taskset -c 0 redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" \
    >/dev/null 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null; wait $RPID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
URL="redis://127.0.0.1:$PORT"
MODES=${MODES:-ours-async ours-sync redispy-async redispy-sync}
for mode in $MODES; do
    echo
    echo "### $mode"
    out=$(perf record -o "$TMP/$mode.data" -C 0 -q -- taskset -c 0 "$PY" bench/s1loop.py "$mode" "$URL" "$SECS" 2>/dev/null)
    echo "under perf: $out"
    echo "-- CPU 0 by thread kind (comm), then by binary:"
    perf report -i "$TMP/$mode.data" --no-children --sort comm --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | head -5
    perf report -i "$TMP/$mode.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | head -8
    echo "-- system calls per cycle (strace -f -c; the run is slower under strace):"
    cycles=$(strace -f -c -o "$TMP/$mode.strace" taskset -c 0 "$PY" bench/s1loop.py "$mode" "$URL" "$SECS" | cut -d' ' -f1)
    awk -v n="$cycles" '$NF ~ /^(epoll_wait|recvfrom|sendto|writev|write|read|futex|getpid|getrandom|epoll_ctl)$/ {
            printf "   %-11s %6.2f\n", $NF, $4 / n }' "$TMP/$mode.strace"
done
