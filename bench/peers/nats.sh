#!/usr/bin/env bash
# Peer comparison, NATS: the cross-node fan-out of scripts/cluster-bench.sh run
# against a cluster of NODES nats-server processes (routes between all of them, a
# WebSocket listener each: `websocket { port: N, no_tls: true }`), then against one
# server. starling-bench speaks the NATS text protocol over WebSocket
# (--protocol nats): subscribers `SUB` the subject on their node, the publisher is a
# NATS client on node A (`PUB`), latency is measured end to end.
#
#   bench/peers/nats.sh
#
# Environment: NODES (3), SUBS (9000), MESSAGES (1000), RATE (100 /s), SIZE (100 B),
# TIMEOUT (120 s per bench run), SETTLE_MS (1000: subscription interest travels over
# the routes asynchronously, so publishing waits this long after the last SUB),
# NATS_SERVER (nats-server from PATH, or /usr/sbin/nats-server), BIN_DIR /
# CARGO_TARGET_DIR (starling-bench), QUIET_WAIT (600 s), QUIET_LOAD (0.7).
# Bounded in time; the trap stops every process it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
cluster_settings peer-nats
SETTLE_MS=${SETTLE_MS:-1000}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}

WS_PORTS=()

# start_nodes N: N servers, each routed to all the others when N > 1.
start_nodes() {
    local n=$1 k j client=() route=() ws=() mon=() routes conf pid
    WS_PORTS=()
    for ((k = 0; k < n; k++)); do
        client+=("$(free_port)") route+=("$(free_port)") ws+=("$(free_port)") mon+=("$(free_port)")
    done
    for ((k = 0; k < n; k++)); do
        routes=""
        for ((j = 0; j < n; j++)); do
            [[ $j -ne $k ]] && routes+="${routes:+, }\"nats-route://127.0.0.1:${route[j]}\""
        done
        conf="$LOGDIR/nats.$k.$RANDOM.conf"
        {
            echo "server_name: n$k"
            echo "listen: 127.0.0.1:${client[k]}"
            echo "http: 127.0.0.1:${mon[k]}"
            echo "websocket { listen: \"127.0.0.1:${ws[k]}\", no_tls: true }"
            if [[ $n -gt 1 ]]; then
                echo "cluster { name: bench, listen: 127.0.0.1:${route[k]}, routes: [ ${routes} ] }"
            fi
        } >"$conf"
        "$NATS_SERVER" -c "$conf" >"$conf.log" 2>&1 &
        pid=$!
        track_pid "$pid"
        wait_port "${ws[k]}" || { cat "$conf.log" >&2; exit 1; }
        WS_PORTS+=("${ws[k]}")
        say "nats node $k: pid $pid, websocket 127.0.0.1:${ws[k]}, client ${client[k]}, routes ${route[k]}"
    done
    # Every server sees its N-1 routes (bounded: 10 s).
    if [[ $n -gt 1 ]]; then
        for ((k = 0; k < n; k++)); do
            local _ got=0
            for _ in $(seq 1 100); do
                got=$(curl -s --max-time 2 "http://127.0.0.1:${mon[k]}/routez" \
                    | python3 -c 'import json, sys; print(json.load(sys.stdin).get("num_routes", 0))' 2>/dev/null || echo 0)
                [[ $got -ge $((n - 1)) ]] && break
                sleep 0.1
            done
            say "nats node $k: $got route(s)"
        done
    fi
}

# run LABEL: SUBS subscribers over the nodes, publications by a client of node A.
run() {
    local urls=() p
    for p in "${WS_PORTS[@]}"; do urls+=(--url "ws://127.0.0.1:$p/"); done
    fanout_json "$1" --protocol nats "${urls[@]}" \
        --publish-url "ws://127.0.0.1:${WS_PORTS[0]}/" --settle-ms "$SETTLE_MS"
}

main() {
    need "$NATS_SERVER" curl python3
    tune_kernel
    build_binaries
    say "$("$NATS_SERVER" --version); the servers and the bench share this machine's cores"
    wait_quiet
    start_nodes "$NODES"
    say "nats fanout ($NODES routed servers): $SUBS subscribers, $MESSAGES publications at $RATE/s, PUB on node A"
    run "${NODES}-nodes"
    stop_started
    wait_quiet
    start_nodes 1
    say "nats fanout (1 server): $SUBS subscribers, $MESSAGES publications at $RATE/s"
    run "1-node"
    stop_started
    say "logs in $LOGDIR"
}

main "$@"
