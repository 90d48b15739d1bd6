#!/usr/bin/env bash
# Starling whole-system benchmarks: builds release, starts a dev-mode server on a free
# loopback port per measurement, runs starling-bench against it, stops the server and
# prints the figures. Everything stays on 127.0.0.0/8.
#
#   scripts/bench.sh [all|idle|fanout|burst|http|breakdown|churn|slow|log|users]...
#   (default: all = idle fanout burst)
#
# Environment: CONNS (10000), MESSAGES (1000), RATE (100 /s), SIZE (100 B),
# TIMEOUT (120 s per bench run), CARGO_TARGET_DIR (default: target/),
# BIN_DIR (take starling and starling-bench from this directory and build nothing: to
#   compare two builds in one session, run the script once per directory).
#   churn: CHURN_CONNS (19000) over CHURN_PROCS (2) bench processes, OBSERVERS (100),
#          ADMISSION_RATES ("default 1000000000": values of server.admission_rate to
#          compare, used only if this build has that setting).
#   slow:  SLOW_SUBS (100), SLOW_RATE (1000 /s), SLOW_SIZE (1000 B), PHASE (15 s).
#   log:   PUBLISHERS ("1 8 64"), DURATION (10 s).
#   users: USERS (10000), GROUP_SIZE (100), USER_RATE (1 /s per user), GROUP_RATE (0),
#          DURATION (30 s), HTTP_CONNECTIONS (32); plot and JSON in the log dir.
# Quiet machine: before each measurement the script waits (up to QUIET_WAIT s, 600,
# checking every 10 s) for the 1-minute load average to drop below QUIET_LOAD (0.7),
# and prints the load average at the start and end of each run; "(shared)" marks a
# run that started on a busy machine.
# Storage: every server gets a fresh message-log directory under the log dir (the
# default configuration keeps a log); STORAGE_DIR="" turns the log off.
#
# Server settings used (see docs/BENCHMARKS.md):
#   idle:    defaults (ping every 25 s; the bench answers pings).
#   fanout:  client.max_queue_bytes=16777216 for the burst runs, so that a burst of
#            M publications queued to every subscriber at once is not cut as a slow
#            consumer (the queue is a byte bound, not a preallocation).
#   breakdown (stage tcp): websocket.handshake_timeout_secs=600 so raw TCP
#            connections that never send a request stay open while RSS is read.
#   churn:   namespaces.churn.history_size=100 (so the resubscribe recovers).
#   log:     namespaces.log.history_size=100 (the channel exists without subscribers);
#            storage.dir="" vs a fresh directory.
#   A publisher over WebSocket sends more than the per-connection command rate limit
#   allows: when this build has client.command_rate, it is raised to 1000000.
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
BIN=${BIN_DIR:-$CARGO_TARGET_DIR/release}
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/starling-bench.XXXXXX")
SERVER_PID=""
SERVER_PORT=""
QUIET_WAIT=${QUIET_WAIT:-600}
QUIET_LOAD=${QUIET_LOAD:-0.7}
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        stop_pid "$SERVER_PID"
        say "load average at the end: $(load1)"
    fi
    SERVER_PID=""
}
trap stop_server EXIT

# start_server [ENV=VALUE...] -- [--set k=v...]
# The flood limits (command rate, admission pacing, subscriptions, per-address shares,
# channel creation) are off: the benchmarks measure what the node can do, not what it
# allows one client to do.
start_server() {
    local envs=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    local log="$LOGDIR/server.$RANDOM.log"
    wait_quiet
    # shellcheck disable=SC2046
    env ${envs[@]+"${envs[@]}"} "$BIN/starling" serve --dev --listen 127.0.0.1:0 \
        --set log.level=warn --set client.command_rate=0 --set server.admission_rate=0 \
        --set client.max_subscriptions=0 $(fairness_sets) $(storage_set) "$@" >"$log" 2>&1 &
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

url() { echo "ws://127.0.0.1:$SERVER_PORT/connection/websocket"; }

run_idle() {
    start_server --
    bench idle --url "$(url)" --connections "$CONNS" --server-pid "$SERVER_PID" --timeout "$TIMEOUT"
    stop_server
}

run_fanout() { # extra server settings..., then bench args after --
    local sets=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do sets+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    # shellcheck disable=SC2046
    start_server -- ${sets[@]+"${sets[@]}"} $(publisher_sets)
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

# churn: CHURN_CONNS clients over CHURN_PROCS processes drop at one wall-clock moment
# and reconnect; a separate process holds the observers.
run_churn() {
    local total=${CHURN_CONNS:-19000} procs=${CHURN_PROCS:-2} observers=${OBSERVERS:-100}
    local rates=(${ADMISSION_RATES:-default 1000000000})
    has_setting admission_rate || rates=(absent)
    for rate in "${rates[@]}"; do
        local sets=(--set namespaces.churn.history_size=100)
        case "$rate" in
            absent) say "churn: this build has no server.admission_rate (no pacing to compare)" ;;
            default)
                local def
                def=$("$BIN/starling" config | sed -nE 's/^admission_rate = ([0-9.]+).*/\1/p' | head -1)
                sets+=(--set "server.admission_rate=${def:-0}")
                say "churn: server.admission_rate=${def:-?} (the configuration default)" ;;
            *) sets+=(--set "server.admission_rate=$rate"); say "churn: server.admission_rate=$rate" ;;
        esac
        start_server -- "${sets[@]}"
        local per=$((total / procs)) drop_at=$(( $(date +%s%3N) + 30000 )) pids=() done_files=()
        local k
        for ((k = 0; k < procs; k++)); do
            local f="$LOGDIR/churn.$k.done"
            rm -f "$f"
            done_files+=("$f")
            bench churn --url "$(url)" --connections "$per" --first $((k * per)) \
                --drop-at "$drop_at" --done-file "$f" --after-ms 3000 --timeout "$TIMEOUT" \
                >"$LOGDIR/churn.$k.out" 2>&1 &
            pids+=($!)
        done
        bench churn --url "$(url)" --connections 0 --observers "$observers" --first "$total" \
            --drop-at "$drop_at" --wait-done "$(IFS=,; echo "${done_files[*]}")" \
            --after-ms 3000 --timeout "$TIMEOUT" >"$LOGDIR/churn.obs.out" 2>&1 &
        pids+=($!)
        for p in "${pids[@]}"; do wait "$p" || true; done
        for ((k = 0; k < procs; k++)); do
            grep -vE '^  \+' "$LOGDIR/churn.$k.out"
        done
        cat "$LOGDIR/churn.obs.out"
        local all
        all=$(cat "${done_files[@]}" 2>/dev/null | sort -n | tail -1)
        say "churn: all $total clients re-admitted and re-subscribed ${all:-?} ms after the drop"
        stop_server
    done
}

# slow: a control run without the stalled subscriber, then one with it.
run_slow() {
    local subs=${SLOW_SUBS:-100} rate=${SLOW_RATE:-1000} size=${SLOW_SIZE:-1000} phase=${PHASE:-15}
    for variant in --no-stall ""; do
        # shellcheck disable=SC2046
        start_server -- $(publisher_sets)
        bench slow --url "$(url)" --subscribers "$subs" --rate "$rate" --size "$size" \
            --phase-secs "$phase" --server-pid "$SERVER_PID" --timeout "$TIMEOUT" ${variant:+"$variant"}
        stop_server
    done
}

# log: publish throughput without a message log, with one, and with durable: true.
run_log() {
    local dur=${DURATION:-10} p
    for p in ${PUBLISHERS:-1 8 64}; do
        say "log: $p publishers, storage.dir=\"\" (no log)"
        STORAGE_DIR="" start_server -- --set namespaces.log.history_size=100
        bench publish --url "$(url)" --publishers "$p" --duration "$dur"
        stop_server
        say "log: $p publishers, storage.dir=<fresh dir>, not durable"
        start_server -- --set namespaces.log.history_size=100
        bench publish --url "$(url)" --publishers "$p" --duration "$dur"
        stop_server
        say "log: $p publishers, storage.dir=<fresh dir>, durable: true"
        start_server -- --set namespaces.log.history_size=100
        bench publish --url "$(url)" --publishers "$p" --duration "$dur" --durable
        stop_server
    done
}

# users: the application scenario (personal + group channel per user, HTTP publishing).
run_users() {
    local dur=${DURATION:-30}
    start_server --
    bench users --url "$(url)" --users "${USERS:-10000}" --group-size "${GROUP_SIZE:-100}" \
        --rate "${USER_RATE:-1}" --group-rate "${GROUP_RATE:-0}" --duration "$dur" --size "$SIZE" \
        --http-connections "${HTTP_CONNECTIONS:-32}" --server-pid "$SERVER_PID" \
        --plot "$LOGDIR/users.svg" --json >"$LOGDIR/users.json"
    say "users: plot $LOGDIR/users.svg, figures as JSON $LOGDIR/users.json"
    stop_server
}

main() {
    local what=("$@")
    [[ ${#what[@]} -eq 0 ]] && what=(all)
    say "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    tune_kernel
    build_binaries
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
            churn) run_churn ;;
            slow) say "slow: a stalled subscriber on a busy channel"; run_slow ;;
            log) run_log ;;
            users) say "users: ${USERS:-10000} users, HTTP publishing"; run_users ;;
            *) echo "unknown measurement: $w" >&2; exit 2 ;;
        esac
    done
    say "logs in $LOGDIR"
}

main "$@"
