# shellcheck shell=bash
# Shared helpers of the benchmark scripts (scripts/bench.sh, scripts/cluster-bench.sh,
# scripts/validate-capacity.sh, bench/peers/*.sh): sourced, not run. Expects ROOT, BIN
# (directory of the starling binaries), LOGDIR, QUIET_WAIT and QUIET_LOAD to be set by
# the caller (or by cluster_settings).

# cluster_settings NAME: the settings of the multi-node fan-out scripts, from the
# environment or their defaults, and a fresh log directory NAME.XXXXXX; stops every
# started process on exit.
cluster_settings() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    NODES=${NODES:-3}
    SUBS=${SUBS:-9000}
    MESSAGES=${MESSAGES:-1000}
    RATE=${RATE:-100}
    SIZE=${SIZE:-100}
    TIMEOUT=${TIMEOUT:-120}
    HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-8}
    BIN=${BIN_DIR:-$CARGO_TARGET_DIR/release}
    LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    QUIET_WAIT=${QUIET_WAIT:-600}
    QUIET_LOAD=${QUIET_LOAD:-0.7}
    trap stop_started EXIT
    trap 'exit 130' INT TERM
}

say() { printf '== %s\n' "$*"; }

load1() { cut -d' ' -f1 /proc/loadavg; }

# Waits (bounded) for a quiet machine; says how quiet it got.
wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }'; do
        if [[ $waited -ge $QUIET_WAIT ]]; then
            say "load average $(load1) after ${waited} s of waiting: measuring anyway (shared)"
            return
        fi
        sleep 10
        waited=$((waited + 10))
    done
    say "load average $(load1) (quiet; waited ${waited} s)"
}

# Server settings this build knows (an unknown key stops the server at start).
has_setting() { "$BIN/starling" config 2>/dev/null | grep -qE "^$1 = "; }

# A fresh message-log directory (the default configuration keeps a log), or none
# when STORAGE_DIR is set and empty.
storage_set() {
    if [[ -n "${STORAGE_DIR+x}" && -z "$STORAGE_DIR" ]]; then
        echo "--set=storage.dir="
    else
        echo "--set=storage.dir=${STORAGE_DIR:-$LOGDIR/data.$RANDOM$RANDOM}"
    fi
}

# --set options that let one WebSocket connection publish at any rate.
publisher_sets() {
    if has_setting command_rate; then
        echo "--set=client.command_rate=1000000 --set=client.command_burst=1000000"
    fi
}

# --set options that turn off the per-address and per-connection fairness limits of
# builds that have them (the load generators connect thousands of clients from a few
# 127.0.0.x addresses). The history byte budgets stay on: they are a cost to measure,
# not a limit on what one client may do.
fairness_sets() {
    local key
    for key in server.max_connections_per_ip server.admission_rate_per_ip client.channel_creation_rate; do
        if has_setting "${key#*.}"; then echo "--set=$key=0"; fi
    done
}

# A TCP port free on 127.0.0.1 right now (for servers that cannot take port 0).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until 127.0.0.1:PORT accepts connections.
wait_port() {
    local port=$1 _
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port" >&2
    return 1
}

# VmRSS of PID in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# cpu_ticks PIDS: user + system clock ticks of every process of PIDS (PID+PID...).
cpu_ticks() {
    local total=0 p t
    for p in ${1//+/ }; do
        # Fields after the command name (which may hold spaces): utime is the 12th.
        t=$(sed -E 's/^.*\) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# Raises the open-files soft limit and, as root, the kernel's backlog and port range.
tune_kernel() {
    say "open-files limit: soft $(ulimit -Sn), hard $(ulimit -Hn); raising soft to hard"
    ulimit -n "$(ulimit -Hn)"
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

# Builds the release binaries unless BIN_DIR names prebuilt ones.
build_binaries() {
    if [[ -n "${BIN_DIR:-}" ]]; then
        say "binaries from $BIN_DIR (not built)"
    else
        say "building release binaries"
        (cd "$ROOT" && cargo build --release -q -p starling -p starling-bench)
    fi
}

# Stops PID: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid=$1 _
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Processes a script started and must stop (servers, Redis, benches): track_pid
# PID adds one, stop_started stops them all (the scripts' EXIT trap).
STARTED=()
track_pid() { STARTED+=("$1"); }
stop_started() {
    local pid
    for pid in ${STARTED[@]+"${STARTED[@]}"}; do
        stop_pid "$pid"
    done
    STARTED=()
}

# start_redis: one Redis server on a free port (never 6379), in a directory under
# LOGDIR, without persistence; appends its URL to REDIS_URLS and its PID to REDIS_PIDS.
REDIS_URLS=()
REDIS_PIDS=()
start_redis() {
    local port dir pid
    port=$(free_port)
    dir=$(mktemp -d "$LOGDIR/redis.XXXXXX")
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" --daemonize no &
    pid=$!
    track_pid "$pid"
    wait_port "$port"
    REDIS_URLS+=("redis://127.0.0.1:$port")
    REDIS_PIDS+=("$pid")
    say "redis pid $pid on 127.0.0.1:$port"
}

loud_warning() {
    say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    say "!!! WARNING: $*"
    say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
}

# The bench, bounded in time, its command line printed first (on stderr, so that a
# caller may keep stdout for the bench's JSON).
bench() {
    say "starling-bench $*" >&2
    timeout --signal=INT --kill-after=10 $((TIMEOUT + 60)) "$BIN/starling-bench" "$@"
}

# fanout_json LABEL ARGS...: the fan-out run with the SUBS/MESSAGES/RATE/SIZE/TIMEOUT
# settings and ARGS (nodes, publisher, protocol); human-readable figures on the
# terminal, the JSON ones in LOGDIR/fanout.LABEL.json.
fanout_json() {
    local label=$1
    shift
    bench fanout "$@" --subscribers "$SUBS" --messages "$MESSAGES" --rate "$RATE" \
        --size "$SIZE" --timeout "$TIMEOUT" --http-connections "$HTTP_CONNECTIONS" \
        --json >"$LOGDIR/fanout.$label.json"
    say "figures as JSON: $LOGDIR/fanout.$label.json"
}

# need CMD...: stops the script if a command is missing.
need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "$c is not installed" >&2; exit 1; }
    done
}

# wait_line FILE REGEX [PID] [SECONDS]: waits (up to SECONDS, 10) for a line of FILE
# matching REGEX; fails early if PID exits.
wait_line() {
    local _
    for _ in $(seq 1 $((${4:-10} * 10))); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        if [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null; then break; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- nodes and clusters
# (scripts/cluster-bench.sh, scripts/validate-capacity.sh)

NODE_PIDS=()   # the current cluster's nodes
NODE_PORTS=()
CLUSTERED=0    # 1 when the nodes share a Redis engine

# start_node NAME [serve options...]: one Starling node on a free port; sets
# NODE_PID and NODE_PORT; returns 1 if it exits before listening.
NODE_SERIAL=0
start_node() {
    local name=$1 log _
    shift
    NODE_SERIAL=$((NODE_SERIAL + 1))
    log="$LOGDIR/node.$NODE_SERIAL.$name.log" # never reused: no stale "listening" line
    # shellcheck disable=SC2046
    "$BIN/starling" serve --dev --listen 127.0.0.1:0 \
        --set log.level=warn --set client.command_rate=0 --set server.admission_rate=0 \
        --set client.max_subscriptions=0 --set "server.name=bench-$name" $(fairness_sets) \
        $(storage_set) "$@" >"$log" 2>&1 &
    NODE_PID=$!
    track_pid "$NODE_PID"
    for _ in $(seq 1 100); do
        if grep -q '^starling listening on http://' "$log" 2>/dev/null; then
            NODE_PORT=$(sed -nE '1s#^starling listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$log")
            say "node $name: pid $NODE_PID on 127.0.0.1:$NODE_PORT $*"
            return 0
        fi
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    say "node $name did not start:"
    sed 's/^/    /' "$log" >&2
    stop_pid "$NODE_PID"
    return 1
}

supports_redis() {
    [[ "${INDEPENDENT:-0}" != 1 ]] && "$BIN/starling" serve --help 2>/dev/null | grep -q -- '--redis'
}

# start_cluster N SHARDS [serve options...]: N nodes sharing SHARDS Redis servers
# (SHARDS 0: the memory engine; independent nodes, with a loud warning, when this
# build cannot join a cluster); sets NODE_PIDS, NODE_PORTS, CLUSTERED.
start_cluster() {
    local n=$1 shards=$2 k redis_args=()
    wait_quiet
    NODE_PIDS=() NODE_PORTS=() REDIS_URLS=() REDIS_PIDS=() CLUSTERED=0
    if [[ $shards -gt 0 ]] && supports_redis; then
        for ((k = 0; k < shards; k++)); do start_redis; done
        for url in "${REDIS_URLS[@]}"; do redis_args+=(--redis "$url"); done
        if start_node A "${redis_args[@]}" "${@:3}"; then
            CLUSTERED=1
        else
            loud_warning "this build of starling has --redis but a node could not start with it (see above)"
        fi
    elif [[ $shards -gt 0 && $n -gt 1 ]]; then
        loud_warning "this build of starling has no --redis (or INDEPENDENT=1)"
    fi
    if [[ $shards -gt 0 && $n -gt 1 && $CLUSTERED -eq 0 ]]; then
        loud_warning "starting $n INDEPENDENT nodes (memory engine each): a publication reaches only its own node's subscribers; the per-node figures below are not cross-node figures"
        redis_args=()
    fi
    if [[ $CLUSTERED -eq 1 ]]; then
        NODE_PIDS+=("$NODE_PID") NODE_PORTS+=("$NODE_PORT")
        k=1
    else
        k=0
    fi
    local names=(A B C D E F G H I J)
    for ((; k < n; k++)); do
        start_node "${names[k]:-N$k}" ${redis_args[@]+"${redis_args[@]}"} "${@:3}" || exit 1
        NODE_PIDS+=("$NODE_PID") NODE_PORTS+=("$NODE_PORT")
    done
    sleep 0.5 # let the runtimes finish starting before any baseline RSS
}

stop_cluster() {
    stop_started
    NODE_PIDS=() NODE_PORTS=() REDIS_URLS=() REDIS_PIDS=()
    say "load average at the end: $(load1)"
}

ws_urls() {
    local p
    for p in "${NODE_PORTS[@]}"; do printf -- '--url\nws://127.0.0.1:%s/connection/websocket\n' "$p"; done
}
