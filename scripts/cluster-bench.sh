#!/usr/bin/env bash
# Starling cluster benchmarks: starts a Redis (on a free loopback port, in a temporary
# directory, no persistence; never 6379) and NODES Starling nodes joined through it
# (`starling serve --redis redis://127.0.0.1:PORT`), runs starling-bench against them,
# stops everything it started and prints the figures. Everything stays on 127.0.0.0/8.
#
#   scripts/cluster-bench.sh [fanout|held|shards|all]...   (default: fanout held)
#
#   fanout: SUBS subscribers spread round-robin over the NODES nodes, publications
#           through node A's HTTP API (POST /api/publish): deliveries/s and latency
#           p50/p99 overall and per node (node A's subscribers are same-node, the
#           others cross-node); then the same run on 1 node on Redis (the engine's
#           cost alone; only when the cluster ran) and on 1 node with the memory
#           engine, for comparison.
#   held:   HELD subscribed idle connections over the NODES nodes, opened by
#           HELD_PROCS bench processes (one process holds at most ~19,900
#           connections: the open-files limit is 20,000 per process); each node's RSS
#           (before, after, per connection) and its starling_connections.
#   shards: the fanout run on a cluster whose engine spreads channels over SHARDS
#           independent Redis servers (`--redis` once per shard).
#
# Environment: NODES (3), SUBS (9000), MESSAGES (1000), RATE (100 /s), SIZE (100 B),
# VIA (http; or ws: the publisher's WebSocket on node A), HTTP_CONNECTIONS (8: HTTP
# publishing connections at once, as a backend's pool; with 1 each publication waits
# for the previous reply), HELD (57000),
# HELD_PROCS (3), SHARDS (3), TIMEOUT (120 s per bench run), CARGO_TARGET_DIR,
# BIN_DIR (take starling and starling-bench from there and build nothing),
# QUIET_WAIT (600 s), QUIET_LOAD (0.7), STORAGE_DIR ("" turns the message log off),
# INDEPENDENT=1 (start independent nodes even if the build has the Redis engine).
#
# Without the Redis engine (`starling serve --help` has no --redis, or a node started
# with it exits), the nodes are started independently with a loud warning: then a
# publication made on node A reaches only A's subscribers, so the fanout run
# publishes through every node's API to keep the delivery counts whole, and its
# per-node figures are NOT cross-node figures.
#
# Bounded: every bench run is under `timeout`, every wait for a server is bounded,
# and the trap stops every process this script started (servers, Redis, benches).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cluster_settings starling-cluster-bench
VIA=${VIA:-http}
HELD=${HELD:-57000}
HELD_PROCS=${HELD_PROCS:-3}
SHARDS=${SHARDS:-3}

# fanout_run LABEL: SUBS subscribers over the current nodes, publications through
# node A (or every node when they are independent).
fanout_run() {
    local label=$1 urls publish=() p
    mapfile -t urls < <(ws_urls)
    if [[ $CLUSTERED -eq 1 || ${#NODE_PORTS[@]} -eq 1 ]]; then
        publish=(--publish-url "http://127.0.0.1:${NODE_PORTS[0]}")
    else
        for p in "${NODE_PORTS[@]}"; do publish+=(--publish-url "http://127.0.0.1:$p"); done
    fi
    say "fanout ($label): $SUBS subscribers over ${#NODE_PORTS[@]} node(s), $MESSAGES publications at $RATE/s via $VIA"
    fanout_json "$label" "${urls[@]}" "${publish[@]}" --via "$VIA"
}

run_fanout() {
    # shellcheck disable=SC2046
    start_cluster "$NODES" 1 $(publisher_sets)
    local clustered=$CLUSTERED
    fanout_run "${NODES}-nodes"
    stop_cluster
    if [[ $clustered -eq 1 ]]; then
        # The engine's own cost without crossing nodes: 1 node on Redis.
        # shellcheck disable=SC2046
        start_cluster 1 1 $(publisher_sets)
        fanout_run "1-node-redis"
        stop_cluster
    fi
    # shellcheck disable=SC2046
    start_cluster 1 0 $(publisher_sets)
    fanout_run "1-node"
    stop_cluster
}

run_shards() {
    # shellcheck disable=SC2046
    start_cluster "$NODES" "$SHARDS" $(publisher_sets)
    [[ $CLUSTERED -eq 1 ]] && say "shards: ${REDIS_URLS[*]}"
    fanout_run "${NODES}-nodes-${SHARDS}-shards"
    stop_cluster
}

# held: HELD idle subscribed connections over the nodes, HELD_PROCS bench processes.
run_held() {
    local per=$((HELD / HELD_PROCS)) k urls pids=() ready=() before=() _
    if [[ $per -gt 19900 ]]; then
        echo "HELD=$HELD over HELD_PROCS=$HELD_PROCS is $per connections per bench process: over the open-files limit (20,000); raise HELD_PROCS" >&2
        exit 2
    fi
    if [[ $((HELD / NODES)) -gt 19900 ]]; then
        say "warning: $((HELD / NODES)) connections per node is over a node's open-files limit (20,000)"
    fi
    start_cluster "$NODES" 1
    mapfile -t urls < <(ws_urls)
    for k in "${!NODE_PIDS[@]}"; do before+=("$(rss_kib "${NODE_PIDS[k]}")"); done
    say "held: $HELD connections over ${#NODE_PORTS[@]} nodes from $HELD_PROCS bench processes ($per each)"
    for ((k = 0; k < HELD_PROCS; k++)); do
        ready+=("$LOGDIR/held.$k.ready")
        rm -f "${ready[k]}"
        say "starling-bench idle ${urls[*]} --connections $per --first $((k * per)) --hold-secs $((TIMEOUT + 30)) --ready-file ${ready[k]}"
        timeout --signal=INT --kill-after=10 $((TIMEOUT + 60)) "$BIN/starling-bench" idle \
            "${urls[@]}" --connections "$per" --first $((k * per)) --timeout "$TIMEOUT" \
            --hold-secs $((TIMEOUT + 30)) --ready-file "${ready[k]}" --json \
            >"$LOGDIR/held.$k.json" 2>"$LOGDIR/held.$k.err" &
        pids+=($!)
        track_pid $!
    done
    # Every process has set its connections up (or given up), bounded.
    local waited=0 all
    while :; do
        all=1
        for f in "${ready[@]}"; do [[ -s "$f" ]] || all=0; done
        [[ $all -eq 1 ]] && break
        if [[ $waited -ge $((TIMEOUT * 10 + 100)) ]]; then
            say "held: not every bench process was ready in time"
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    for k in "${!ready[@]}"; do
        read -r r f < <(cat "${ready[k]}" 2>/dev/null || echo "? ?")
        say "held: bench process $k: $r connections ready, $f failed"
    done
    # Each node's RSS once it stops growing: 3 reads 500 ms apart within 64 KiB, at most 30 s.
    local k2 rss last stable tries
    for k in "${!NODE_PIDS[@]}"; do
        last=$(rss_kib "${NODE_PIDS[k]}") stable=0 tries=0
        while [[ $stable -lt 3 && $tries -lt 60 ]]; do
            sleep 0.5
            rss=$(rss_kib "${NODE_PIDS[k]}")
            if [[ $rss -le $((last + 64)) ]]; then stable=$((stable + 1)); else last=$rss stable=0; fi
            tries=$((tries + 1))
        done
        local conns
        conns=$(curl -s --max-time 10 "http://127.0.0.1:${NODE_PORTS[k]}/metrics" \
            | awk '$1 == "starling_connections" { print $2 }')
        k2=$(( rss - before[k] ))
        printf '{"node":%d,"port":%d,"starling_connections":%s,"rss_kib_before":%d,"rss_kib_after":%d,"settled":%s}\n' \
            "$k" "${NODE_PORTS[k]}" "${conns:-null}" "${before[k]}" "$rss" \
            "$([[ $stable -ge 3 ]] && echo true || echo false)" >>"$LOGDIR/held.nodes.json"
        say "node $k (127.0.0.1:${NODE_PORTS[k]}): starling_connections ${conns:-?}, RSS ${before[k]} KiB at 0 -> $rss KiB$([[ $stable -lt 3 ]] && echo ' (still growing)'), delta $k2 KiB$( [[ -n "$conns" && "${conns%.*}" -gt 0 ]] && awk -v d="$k2" -v c="${conns%.*}" 'BEGIN { printf ", %.2f KiB per connection", d / c }')"
    done
    say "figures as JSON lines: $LOGDIR/held.nodes.json (nodes), $LOGDIR/held.N.json (bench processes)"
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    for ((k = 0; k < HELD_PROCS; k++)); do
        say "bench process $k: $(grep -E 'connections ready|failure|warning' "$LOGDIR/held.$k.err" | tr '\n' ' ')"
    done
    stop_cluster
}

main() {
    local what=("$@")
    [[ ${#what[@]} -eq 0 ]] && what=(fanout held)
    say "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    tune_kernel
    build_binaries
    need redis-server curl python3
    say "note: the nodes, Redis and the bench share this machine's cores"
    for w in "${what[@]}"; do
        case "$w" in
            all) run_fanout; run_held; run_shards ;;
            fanout) run_fanout ;;
            held) run_held ;;
            shards) run_shards ;;
            *) echo "unknown measurement: $w" >&2; exit 2 ;;
        esac
    done
    say "logs in $LOGDIR"
}

main "$@"
