#!/usr/bin/env bash
# The four scenarios of the distributed lock demo, and a fifth of leader election, with short
# timings (about a minute):
#
#   1. simultaneous start   two instances start together: one wins, one fails at once
#   2. takeover             the winner is killed (SIGKILL, no release); a waiting instance
#                           takes the lease as soon as it expires
#   3. three regions        three instances start together: one wins, two fail
#   4. expiry               the winner crashes; right after, the lease is still held; once the
#                           lease duration has passed, a new instance acquires it at once
#   5. leader election      three instances of examples/leader.py campaign: one leads, the
#                           others follow it; the leader is killed (SIGKILL) and a follower
#                           takes over with a higher term, the third following the new leader
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
elect=("$python" -u "$here/leader.py")
if [[ -n "${DEMO_URL:-}" ]]; then
    compete+=(--url "$DEMO_URL")
    elect+=(--url "$DEMO_URL")
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

# candidate NAME REGION ELECTION: runs a leader.py instance in the background, as start does.
candidate() {
    local name="$1" region="$2" election="$3"
    "${elect[@]}" --instance "$name" --region "$region" --name "$election" \
        --lease-seconds "$LEASE" --progress-seconds 0.5 \
        >"$tmp/$name.out" 2>&1 &
    pids+=("$!")
    pid_of[$name]=$!
}

# term_of NAME: the last term NAME was elected with ("★ Elected leader | Term: N"), or nothing.
term_of() {
    sed -n 's/.*★ Elected leader | Term: \([0-9][0-9]*\).*/\1/p' "$tmp/$1.out" 2>/dev/null | tail -n 1
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

# -- Scenario 5: leader election -------------------------------------------------------------
echo "--- Scenario 5: leader election"
election="$run_id-5"
candidate us-east-5 us-east "$election"
ok=no
detail="us-east-5 was not elected"
if wait_for us-east-5 "★ Elected leader" 15; then
    first_term=$(term_of us-east-5)
    candidate eu-west-5 eu-west "$election"
    candidate ap-south-5 ap-south "$election"
    detail="the followers did not see us-east-5 lead"
    if wait_for eu-west-5 "Leader: us-east-5 | Term: $first_term" 15 &&
        wait_for ap-south-5 "Leader: us-east-5 | Term: $first_term" 15; then
        crash us-east-5
        killed_at=$(date +%s.%N)
        new_leader=""
        waited=0
        while [[ -z "$new_leader" ]] && ((waited < (LEASE * 5 + 15) * 10)); do
            for name in eu-west-5 ap-south-5; do
                [[ -n "$(term_of "$name")" ]] && new_leader="$name"
            done
            sleep 0.1
            waited=$((waited + 1))
        done
        took=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        detail="no follower took over after us-east-5 was killed"
        if [[ -n "$new_leader" ]]; then
            new_term=$(term_of "$new_leader")
            follower=eu-west-5
            [[ "$new_leader" == eu-west-5 ]] && follower=ap-south-5
            if ((new_term <= first_term)); then
                detail="$new_leader was elected with term $new_term, not above $first_term"
            elif [[ -n "$(term_of "$follower")" ]]; then
                detail="both followers were elected"
            elif ! wait_for "$follower" "Leader: $new_leader | Term: $new_term" 15; then
                detail="$follower did not see $new_leader lead"
            else
                ok=yes
                detail="us-east-5 (term $first_term) killed with SIGKILL; $new_leader elected"
                detail+=" with term $new_term after ${took}s; $follower followed it"
            fi
        fi
    fi
fi
for name in eu-west-5 ap-south-5; do
    [[ -n "${pid_of[$name]:-}" ]] && kill -TERM "${pid_of[$name]}" 2>/dev/null
done
for name in eu-west-5 ap-south-5; do
    [[ -n "${pid_of[$name]:-}" ]] && finish "$name" 20
done
show us-east-5 eu-west-5 ap-south-5
verdict 5 "leader election" "$ok" "$detail"
echo

if ((failed)); then
    echo "Some scenarios FAILED"
    exit 1
fi
echo "All scenarios passed"
