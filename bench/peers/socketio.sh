#!/usr/bin/env bash
# Peer comparison, Socket.IO: the cross-node fan-out of scripts/cluster-bench.sh run
# against NODES Node.js processes of bench/peers/socketio/server.js sharing one Redis
# through @socket.io/redis-adapter (versions pinned in its package.json and
# package-lock.json, installed into bench/peers/socketio/node_modules), then against
# 1 process without Redis. starling-bench speaks engine.io v4 over a raw WebSocket
# (--protocol socketio): each subscriber joins the room, publications are made with
# POST /publish on node A (io.to(room).emit), latency is measured end to end.
#
#   bench/peers/socketio.sh
#
# Environment: NODES (3), SUBS (9000), MESSAGES (1000), RATE (100 /s), SIZE (100 B),
# HTTP_CONNECTIONS (8: publishing connections at once),
# TIMEOUT (120 s per bench run), BIN_DIR / CARGO_TARGET_DIR (starling-bench),
# QUIET_WAIT (600 s), QUIET_LOAD (0.7).
# Bounded in time; the trap stops every process it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/peers/socketio"
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cluster_settings peer-socketio

PORTS=()

# start_nodes N [REDIS_URL]
start_nodes() {
    local n=$1 redis=${2:-} k log pid
    PORTS=()
    for ((k = 0; k < n; k++)); do
        log="$LOGDIR/node.$RANDOM$RANDOM.log"
        REDIS_URL=$redis PORT=0 node "$HERE/server.js" >"$log" 2>&1 &
        pid=$!
        track_pid "$pid"
        if ! wait_line "$log" '^socketio listening on ' "$pid"; then
            cat "$log" >&2
            echo "socket.io node $k did not start" >&2
            exit 1
        fi
        PORTS+=("$(sed -nE 's#^socketio listening on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$log")")
        say "socket.io node $k: pid $pid on 127.0.0.1:${PORTS[k]}${redis:+ (redis adapter: $redis)}"
    done
}

# run LABEL: SUBS subscribers over the nodes, publications through node A.
run() {
    local urls=() p
    for p in "${PORTS[@]}"; do urls+=(--url "ws://127.0.0.1:$p/socket.io/?EIO=4&transport=websocket"); done
    fanout_json "$1" --protocol socketio "${urls[@]}" \
        --publish-url "http://127.0.0.1:${PORTS[0]}"
}

main() {
    need node npm redis-server python3
    tune_kernel
    build_binaries
    say "installing the pinned Socket.IO packages into $HERE/node_modules"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
    say "node $(node --version); the nodes, Redis and the bench share this machine's cores"
    wait_quiet
    start_redis
    start_nodes "$NODES" "${REDIS_URLS[0]}"
    say "socket.io fanout ($NODES nodes, redis adapter): $SUBS subscribers, $MESSAGES publications at $RATE/s via POST /publish on node A"
    run "${NODES}-nodes"
    stop_started
    wait_quiet
    start_nodes 1
    say "socket.io fanout (1 node): $SUBS subscribers, $MESSAGES publications at $RATE/s"
    run "1-node"
    stop_started
    say "logs in $LOGDIR"
}

main "$@"
