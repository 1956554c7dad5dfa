#!/usr/bin/env bash
# The four scenarios of the distributed lock demo, with short timings (well under a minute):
#
#   1. simultaneous start   two instances start together: one wins, one fails at once
#   2. takeover             the winner is killed (SIGKILL, no release); a waiting instance
#                           takes the lease as soon as it expires
#   3. three regions        three instances start together: one wins, two fail
#   4. expiry               the winner crashes; right after, the lease is still held; once the
#                           lease duration has passed, a new instance acquires it at once
#
# Store: whatever compete.py finds (configuration in the current directory, else the embedded
# store of this machine); DEMO_URL=redis://host:port (or postgresql://...) passes --url. PYTHON
# picks the interpreter.
# Prints each instance's output and one verdict line per scenario; exits 1 if any fails.
# Every process it starts is killed when it exits, however it exits.

set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
compete=("$python" -u "$here/compete.py")
if [[ -n "${DEMO_URL:-}" ]]; then
    compete+=(--url "$DEMO_URL")
fi

# Short timings: lease LEASE s renewed every RENEW s; winners work WORK s.
LEASE=2
RENEW=1
WORK=3
run_id="demo-$(date +%s)-$$-$RANDOM"   # a fresh lock name per run: leftovers cannot interfere

tmp="$(mktemp -d "${TMPDIR:-/tmp}/competition-demo.XXXXXX")"
pids=()
failed=0

cleanup() {
    local pid
    {
        for pid in "${pids[@]}"; do
            kill -KILL "$pid"
        done
        for pid in "${pids[@]}"; do
            wait "$pid"
        done
    } 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM HUP

# start NAME REGION LOCK [compete.py options...]: runs an instance in the background, its output
# in $tmp/NAME.out; $! is the compete.py process itself (bash execs a lone background command).
declare -A pid_of=()
start() {
    local name="$1" region="$2" lock="$3"
    shift 3
    "${compete[@]}" --instance "$name" --region "$region" --lock-name "$lock" \
        --lease-seconds "$LEASE" --renew-seconds "$RENEW" "$@" >"$tmp/$name.out" 2>&1 &
    pids+=("$!")
    pid_of[$name]=$!
}

# finish NAME TIMEOUT: waits up to TIMEOUT s for the instance to exit; sets rc to its exit status
# (or "timeout") and records it in $tmp/NAME.rc.
rc=""
finish() {
    local name="$1" limit="$2" pid="${pid_of[$1]}" waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < limit * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        rc=timeout
    else
        wait "$pid"
        rc=$?
    fi
    echo "$rc" >"$tmp/$name.rc"
}

# crash NAME: kills the instance with SIGKILL (no release, no goodbye) and reaps it.
crash() {
    local pid="${pid_of[$1]}"
    # (the braces silence bash's "Killed" notice)
    { kill -KILL "$pid" && wait "$pid"; } 2>/dev/null
    echo 137 >"$tmp/$1.rc"
}

# wait_for NAME TEXT TIMEOUT: waits until the instance's output contains TEXT; fails if the
# instance exits first or TIMEOUT s pass.
wait_for() {
    local name="$1" text="$2" limit="$3" waited=0
    while ! grep -qF -- "$text" "$tmp/$name.out" 2>/dev/null; do
        ((waited >= limit * 10)) && return 1
        if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
            grep -qF -- "$text" "$tmp/$name.out" 2>/dev/null
            return
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

show() {
    local name
    for name in "$@"; do
        [[ -f "$tmp/$name.out" ]] && sed 's/^/    /' "$tmp/$name.out"
    done
}

verdict() {
    local number="$1" title="$2" ok="$3" detail="$4"
    if [[ "$ok" == yes ]]; then
        echo "Scenario $number ($title): PASS — $detail"
    else
        echo "Scenario $number ($title): FAIL — $detail"
        failed=1
    fi
}

# plural N WORD: "1 winner", "2 winners".
plural() {
    if (($1 == 1)); then echo "$1 $2"; else echo "$1 ${2}s"; fi
}

# count_rc CODE NAME...: how many of the instances exited with CODE.
count_rc() {
    local code="$1" n=0 name
    shift
    for name in "$@"; do
        [[ "$(cat "$tmp/$name.rc" 2>/dev/null)" == "$code" ]] && n=$((n + 1))
    done
    echo "$n"
}

echo "Distributed lock competition demo (lock names ${run_id}-*)"
echo

# -- Scenario 1: simultaneous start ----------------------------------------------------------
echo "--- Scenario 1: simultaneous start"
lock="$run_id-1"
start us-east-1 us-east "$lock" --work-seconds "$WORK"
start eu-west-1 eu-west "$lock" --work-seconds "$WORK"
finish us-east-1 30
finish eu-west-1 30
show us-east-1 eu-west-1
winners=$(count_rc 0 us-east-1 eu-west-1)
losers=$(count_rc 3 us-east-1 eu-west-1)
ok=no
if ((winners == 1 && losers == 1)) && grep -qF "Lock unavailable | Held by:" "$tmp"/*-1.out; then
    ok=yes
fi
verdict 1 "simultaneous start" "$ok" "$(plural "$winners" winner), $(plural "$losers" loser)"
echo

# -- Scenario 2: takeover after a crash ------------------------------------------------------
echo "--- Scenario 2: takeover on failure"
lock="$run_id-2"
start us-east-2 us-east "$lock" --work-seconds 60 --progress-seconds 1
ok=no
detail="the first instance did not acquire the lock"
if wait_for us-east-2 "Working..." 15; then
    crash us-east-2
    killed_at=$(date +%s.%N)
    start eu-west-2 eu-west "$lock" --work-seconds 1 --wait $((LEASE * 5))
    finish eu-west-2 $((LEASE * 5 + 20))
    took=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [[ "$rc" == 0 ]] && grep -qF "✓ Lock acquired" "$tmp/eu-west-2.out"; then
        ok=yes
        detail="us-east-2 killed with SIGKILL, eu-west-2 took over once the lease expired (${took}s)"
    else
        detail="eu-west-2 did not take over (exit $rc)"
    fi
fi
show us-east-2 eu-west-2
verdict 2 "takeover" "$ok" "$detail"
echo

# -- Scenario 3: three regions ---------------------------------------------------------------
echo "--- Scenario 3: multiple regions competing"
lock="$run_id-3"
start us-east-3 us-east "$lock" --work-seconds "$WORK"
start eu-west-3 eu-west "$lock" --work-seconds "$WORK"
start ap-south-3 ap-south "$lock" --work-seconds "$WORK"
for name in us-east-3 eu-west-3 ap-south-3; do finish "$name" 30; done
show us-east-3 eu-west-3 ap-south-3
winners=$(count_rc 0 us-east-3 eu-west-3 ap-south-3)
losers=$(count_rc 3 us-east-3 eu-west-3 ap-south-3)
ok=no
((winners == 1 && losers == 2)) && ok=yes
verdict 3 "three regions" "$ok" "$(plural "$winners" winner), $(plural "$losers" loser)"
echo

# -- Scenario 4: lease expiry ----------------------------------------------------------------
echo "--- Scenario 4: lock expiration"
lock="$run_id-4"
# A longer lease here, so that the check right after the crash surely finds it still held.
EXPIRY_LEASE=$((LEASE * 2 + 1))
start us-east-4 us-east "$lock" --work-seconds 60 --lease-seconds "$EXPIRY_LEASE"
ok=no
detail="the first instance did not acquire the lock"
if wait_for us-east-4 "✓ Lock acquired" 15; then
    crash us-east-4
    start eu-west-4a eu-west "$lock" --work-seconds 1
    finish eu-west-4a 20
    early=$rc
    echo "    (waiting ${EXPIRY_LEASE}s + 1s for the crashed instance's lease to expire)"
    sleep $((EXPIRY_LEASE + 1))
    start eu-west-4b eu-west "$lock" --work-seconds 1
    finish eu-west-4b 20
    late=$rc
    if [[ "$early" == 3 && "$late" == 0 ]]; then
        ok=yes
        detail="still held by the crashed us-east-4 right after the crash;"
        detail+=" acquired once its ${EXPIRY_LEASE}s lease expired"
    else
        detail="right after the crash: exit $early (want 3); after expiry: exit $late (want 0)"
    fi
fi
show us-east-4 eu-west-4a eu-west-4b
verdict 4 "expiry" "$ok" "$detail"
echo

if ((failed)); then
    echo "Some scenarios FAILED"
    exit 1
fi
echo "All scenarios passed"
