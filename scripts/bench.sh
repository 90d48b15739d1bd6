#!/usr/bin/env bash
# Starling whole-system benchmarks: builds release, starts a dev-mode server on a free
# loopback port per measurement, runs starling-bench against it, stops the server and
# prints the figures. Everything stays on 127.0.0.0/8.
#
#   scripts/bench.sh [all|idle|fanout|burst|http|breakdown]...   (default: all = idle fanout burst)
#
# Environment: CONNS (10000), MESSAGES (1000), RATE (100 /s), SIZE (100 B),
# TIMEOUT (120 s per bench run), CARGO_TARGET_DIR (default: target/).
#
# Server settings used (see docs/BENCHMARKS.md):
#   idle:    defaults (ping every 25 s; the bench answers pings).
#   fanout:  client.max_queue_bytes=16777216 for the burst runs, so that a burst of
#            M publications queued to every subscriber at once is not cut as a slow
#            consumer (the queue is a byte bound, not a preallocation).
#   breakdown (stage tcp): websocket.handshake_timeout_secs=600 so raw TCP
#            connections that never send a request stay open while RSS is read.
# As root it raises net.core.somaxconn, net.ipv4.tcp_max_syn_backlog and
# net.ipv4.ip_local_port_range (runtime only, said in the output).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONNS=${CONNS:-10000}
MESSAGES=${MESSAGES:-1000}
RATE=${RATE:-100}
SIZE=${SIZE:-100}
TIMEOUT=${TIMEOUT:-120}
BIN=$CARGO_TARGET_DIR/release
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/starling-bench.XXXXXX")
SERVER_PID=""
SERVER_PORT=""

say() { printf '== %s\n' "$*"; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT

# start_server [ENV=VALUE...] -- [--set k=v...]
# The flood limits (command rate, admission pacing, subscriptions) are off: the
# benchmarks measure what the node can do, not what it allows one client to do.
start_server() {
    local envs=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    local log="$LOGDIR/server.$RANDOM.log"
    env ${envs[@]+"${envs[@]}"} "$BIN/starling" serve --dev --listen 127.0.0.1:0 \
        --set log.level=warn --set client.command_rate=0 --set server.admission_rate=0 \
        --set client.max_subscriptions=0 "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if grep -q '^starling listening on http://' "$log" 2>/dev/null; then
            SERVER_PORT=$(sed -nE '1s#^starling listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$log")
            say "server pid $SERVER_PID on 127.0.0.1:$SERVER_PORT ${envs[*]+${envs[*]}} $*"
            sleep 0.5 # let the runtime finish starting before the baseline RSS
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$log" >&2
    echo "server did not start" >&2
    exit 1
}

bench() {
    timeout --signal=INT --kill-after=10 $((TIMEOUT + 60)) "$BIN/starling-bench" "$@"
}

url() { echo "ws://127.0.0.1:$SERVER_PORT/connection/websocket"; }

tune_kernel() {
    if [[ $(id -u) -ne 0 ]]; then
        say "not root: kernel settings left as they are"
        return
    fi
    raise() { # key min
        local cur
        cur=$(sysctl -n "$1" 2>/dev/null | awk '{print $1}') || return 0
        if [[ -n "$cur" && "$cur" -lt "$2" ]]; then
            if sysctl -qw "$1=$2" 2>/dev/null; then
                say "root: set $1=$2 (was $cur; runtime only)"
            else
                say "root: could not set $1 (stays $cur)"
            fi
        fi
    }
    raise net.core.somaxconn 8192
    raise net.ipv4.tcp_max_syn_backlog 8192
    local range
    range=$(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr -s '\t ' ' ') || range=""
    if [[ -n "$range" && "${range%% *}" -gt 10000 ]]; then
        if sysctl -qw net.ipv4.ip_local_port_range="10000 65000" 2>/dev/null; then
            say "root: set net.ipv4.ip_local_port_range=10000 65000 (was $range; runtime only)"
        fi
    fi
}

run_idle() {
    start_server --
    bench idle --url "$(url)" --connections "$CONNS" --server-pid "$SERVER_PID" --timeout "$TIMEOUT"
    stop_server
}

run_fanout() { # extra server settings..., then bench args after --
    local sets=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do sets+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    start_server -- ${sets[@]+"${sets[@]}"}
    bench fanout --url "$(url)" --subscribers "$CONNS" --messages "$MESSAGES" --size "$SIZE" \
        --timeout "$TIMEOUT" "$@"
    stop_server
}

run_breakdown() {
    for stage in tcp upgrade connect subscribe; do
        start_server -- --set websocket.handshake_timeout_secs=600
        bench idle --url "$(url)" --connections "$CONNS" --server-pid "$SERVER_PID" \
            --stage "$stage" --timeout "$TIMEOUT" | grep -E '^(stage|RSS delta|server metrics|warning)'
        stop_server
    done
    say "same, server with MALLOC_ARENA_MAX=2"
    start_server MALLOC_ARENA_MAX=2 --
    bench idle --url "$(url)" --connections "$CONNS" --server-pid "$SERVER_PID" --timeout "$TIMEOUT" \
        | grep -E '^(stage|server RSS|RSS delta|server metrics|warning)'
    stop_server
}

main() {
    local what=("$@")
    [[ ${#what[@]} -eq 0 ]] && what=(all)
    say "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    say "open-files limit: soft $(ulimit -Sn), hard $(ulimit -Hn); raising soft to hard"
    ulimit -n "$(ulimit -Hn)"
    tune_kernel
    say "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p starling -p starling-bench)
    say "note: the server and the bench share this machine's cores"
    for w in "${what[@]}"; do
        case "$w" in
            all)
                say "idle: $CONNS subscribed connections"; run_idle
                say "fanout: steady $RATE/s via ws"; run_fanout -- --rate "$RATE" --via ws
                say "fanout: burst via ws"; run_fanout --set client.max_queue_bytes=16777216 -- --burst --via ws
                ;;
            idle) say "idle: $CONNS subscribed connections"; run_idle ;;
            fanout) say "fanout: steady $RATE/s via ws"; run_fanout -- --rate "$RATE" --via ws ;;
            burst) say "fanout: burst via ws"; run_fanout --set client.max_queue_bytes=16777216 -- --burst --via ws ;;
            http) say "fanout: steady $RATE/s via http"; run_fanout -- --rate "$RATE" --via http ;;
            breakdown) say "memory breakdown by stage"; run_breakdown ;;
            *) echo "unknown measurement: $w" >&2; exit 2 ;;
        esac
    done
    say "logs in $LOGDIR"
}

main "$@"
