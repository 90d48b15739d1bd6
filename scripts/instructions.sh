#!/usr/bin/env bash
# Instructions the server executes per delivery, for a fixed fan-out: SUBS subscribers
# of one channel, MESSAGES publications over one WebSocket publisher. A count of
# instructions does not depend on the load of the machine the way time does, so it
# compares two builds on a shared 2-core box.
#
#   scripts/instructions.sh              # SUBS=1000 MESSAGES=200
#   SUBS=50 MESSAGES=20 scripts/instructions.sh   # a quick smoke run
#
# How: the server runs twice under the counter, once with MESSAGES publications and
# once with none (same subscribers, same publisher connection); the difference is the
# cost of the publications alone (connection set-up, subscribing and start-up cancel
# out), divided by the deliveries the bench saw.
# Counter: `perf stat -e instructions:u` when this machine's perf supports the event
# (`perf stat -e instructions true` says "<not supported>" in many VMs), else
# valgrind's callgrind (its "Ir", instructions executed in user space; the server runs
# ~50x slower under it, one thread at a time). TOOL=perf|callgrind forces one.
#
# Environment: SUBS (1000), MESSAGES (200), RATE (publications/s, 100), SIZE (100 B),
# TIMEOUT (600 s per bench run), CARGO_TARGET_DIR (default target/), BIN_DIR (take
# starling and starling-bench from this directory and build nothing), TOOL (auto).
# The server: dev mode on a free loopback port, no message log, no flood limits.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SUBS=${SUBS:-1000}
MESSAGES=${MESSAGES:-200}
RATE=${RATE:-100}
SIZE=${SIZE:-100}
TIMEOUT=${TIMEOUT:-600}
TOOL=${TOOL:-auto}
BIN=${BIN_DIR:-$CARGO_TARGET_DIR/release}
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/starling-instructions.XXXXXX")
QUIET_WAIT=0
QUIET_LOAD=100
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
trap stop_started EXIT
trap 'exit 130' INT TERM

if [[ "$TOOL" == auto ]]; then
    if command -v perf >/dev/null && ! perf stat -e instructions:u true 2>&1 | grep -q 'not supported'; then
        TOOL=perf
    else
        TOOL=callgrind
    fi
fi
case "$TOOL" in
    perf) need perf ;;
    callgrind) need valgrind ;;
    *) echo "TOOL must be perf or callgrind" >&2; exit 2 ;;
esac
need python3
build_binaries
say "counter: $TOOL; $SUBS subscribers, $MESSAGES publications of ~$SIZE B at $RATE/s; logs in $LOGDIR"

# count M: runs the server under the counter with M publications to SUBS subscribers;
# sets COUNT (instructions) and DELIVERED (deliveries the bench saw).
count() {
    local m=$1 log="$LOGDIR/server.$1.log" out="$LOGDIR/count.$1" json="$LOGDIR/fanout.$1.json"
    local runner=()
    : >"$log"
    case "$TOOL" in
        perf) runner=(perf stat -e instructions:u -x, -o "$out" --) ;;
        callgrind) runner=(valgrind --tool=callgrind "--callgrind-out-file=$out" --) ;;
    esac
    # shellcheck disable=SC2046
    "${runner[@]}" "$BIN/starling" serve --dev --listen 127.0.0.1:0 --set log.level=warn \
        --set storage.dir= --set client.command_rate=0 --set server.admission_rate=0 \
        --set client.max_subscriptions=0 --set client.max_queue_bytes=16777216 \
        $(fairness_sets) >"$log" 2>&1 &
    local pid=$! port="" _
    track_pid "$pid"
    # Start-up under valgrind takes seconds.
    for _ in $(seq 1 1200); do
        port=$(sed -nE 's#^starling listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$log" | head -1)
        [[ -n "$port" ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$port" ]]; then
        cat "$log" >&2
        echo "server did not start" >&2
        exit 1
    fi
    bench fanout --url "ws://127.0.0.1:$port/connection/websocket" --subscribers "$SUBS" \
        --messages "$m" --rate "$RATE" --size "$SIZE" --timeout "$TIMEOUT" --json \
        >"$json" 2>"$LOGDIR/fanout.$m.log" || { cat "$LOGDIR/fanout.$m.log" >&2; exit 1; }
    # perf counts its child: stop the server itself, then perf writes its figures.
    local server=$pid
    if [[ "$TOOL" == perf ]]; then
        server=$(pgrep -P "$pid" | head -1)
    fi
    kill -INT "$server" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$pid"
    case "$TOOL" in
        perf) COUNT=$(awk -F, '/instructions/ { print $1; exit }' "$out") ;;
        callgrind) COUNT=$(awk '/^(summary|totals):/ { print $2; exit }' "$out") ;;
    esac
    if ! [[ "$COUNT" =~ ^[0-9]+$ ]]; then
        echo "no instruction count in $out" >&2
        exit 1
    fi
    DELIVERED=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["deliveries"])' "$json")
    say "$m publications: $COUNT instructions, $DELIVERED deliveries"
}

count 0
base=$COUNT
count "$MESSAGES"
full=$COUNT
delivered=$DELIVERED
expected=$((SUBS * MESSAGES))
[[ "$delivered" -eq "$expected" ]] || loud_warning "$delivered deliveries of $expected expected"
python3 - "$base" "$full" "$delivered" "$MESSAGES" <<'EOF'
import sys
base, full, delivered, messages = (int(v) for v in sys.argv[1:])
extra = full - base
print(f"== server instructions for the publications: {extra} ({full} - {base} without them)")
if delivered > 0:
    print(f"== per delivery: {extra / delivered:.0f} instructions ({delivered} deliveries)")
if messages > 0:
    print(f"== per publication: {extra / messages:.0f} instructions")
EOF
