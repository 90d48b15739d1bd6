#!/usr/bin/env bash
# The capacity model's validation (issue 11): measures on this machine what Starling
# nodes use in four topologies under three workloads, and tabulates it against what
# `starling capacity --nodes N --shards S --json` predicts, with the default figures and
# with figures calibrated on the calibration rows (docs/SCALING.md, "Validation:
# predicted against measured").
#
#   scripts/validate-capacity.sh                      # everything: 12 runs
#   SMOKE=1 scripts/validate-capacity.sh              # tiny sizes: an end-to-end check
#   TOPOLOGIES="1 3" WORKLOADS="fanout users" scripts/validate-capacity.sh
#
# Topologies (TOPOLOGIES, "1 2 3 3s", always measured in that order, T1 first):
#   1   one node, memory engine (no Redis)
#   2   2 nodes on one Redis          3   3 nodes on one Redis
#   3s  3 nodes on 3 Redis shards (`--redis URL` once per shard)
# each Redis started here on a free loopback port without persistence (scripts/bench-lib.sh
# start_redis), fresh nodes for every run.
#
# Workloads (WORKLOADS, "idle fanout users"):
#   idle    CONNS_PER_NODE (19,000: this machine's open-files limit of 20,000 less the
#           node's reserve) idle connections per node, each subscribed to its own channel,
#           from one starling-bench process per node (`idle --server-pid`: a process holds
#           at most ~19,900 connections, and one process per node gives each node exactly
#           its share and its own RSS reading). Measured: each node's RSS growth, settled
#           (after - before). Predicted: process_memory_mib - node_base_memory_mib of
#           `starling capacity --users <total> --msg-rate 0 --nodes N --shards S`.
#   fanout  SUBS (9,000) subscribers of one channel, round-robin over the nodes; MESSAGES
#           (600) publications of SIZE (100) B at RATE (20)/s through node A's HTTP API.
#           Measured: each node's CPU over the publishing (`fanout --server-pid`: CPU
#           seconds / wall seconds from the first publication to the last delivery), and,
#           on Redis, its CPU and commands/s over the same phase (INFO stats and
#           /proc/PID/stat read when the bench starts publishing and when it ends).
#           Predicted: cpu_cores_per_node of `--users SUBS --msg-rate RATE/SUBS --fanout
#           SUBS`.
#   users   `starling-bench users`: USERS (10,000) users on personal channels, USERS_RATE
#           (1) publication/s each through every node's HTTP API (the backend's
#           connections spread over the nodes), DURATION (20) s. Measured: each node's CPU
#           over the publishing and the drain (`users --server-pid`), Redis as above.
#           Predicted: cpu_cores_per_node of `--users USERS --msg-rate USERS_RATE`.
#
# Calibration: the single-node figures come from the T1 rows (memory_per_connection_kib
# from T1 idle; deliveries_per_core_s and publishes_per_core_s from T1 fanout and users,
# solved together); with CLUSTER_CALIBRATION=1 (the default) the cluster-only figures
# come from T2 (memory_per_connection_cluster_kib from T2 idle, heard_publication_cpu_us
# from T2 users), else they keep their defaults. Those rows are calibration rows; every
# other row is a validation row, and only those count in the error
# (scripts/validate-capacity.py says how each figure is derived).
#
# Output in REPORT_DIR (reports/capacity-validation/<UTC time>): table.md (printed at the
# end), settings.json, runs.jsonl (one line per run), raw/ (every bench's JSON and log,
# Redis's samples), capacity/ (every `starling capacity` call's JSON, calls.txt their
# command lines), figures.json (the figures used and how each calibrated one was
# derived), rows.json. The nodes' logs stay in a temporary directory (printed).
#
# Environment (defaults in parentheses; SMOKE=1 changes the sizes to CONNS_PER_NODE 500,
# SUBS 300, MESSAGES 100, USERS 200, DURATION 5, TIMEOUT 60, QUIET_WAIT 0):
# CONNS_PER_NODE (19000), SUBS (9000), RATE (20), MESSAGES (600), SIZE (100), USERS
# (10000), USERS_RATE (1), DURATION (20), USERS_DRAIN (10), HTTP_CONNECTIONS (8: the
# fan-out publisher's), USERS_HTTP_CONNECTIONS (32), TOPOLOGIES, WORKLOADS,
# CLUSTER_CALIBRATION (1), TIMEOUT (120 s: set-up bound of a bench run, the run's own
# time added), QUIET_WAIT (600 s) and QUIET_LOAD (0.7) before each run, BIN_DIR (take
# starling and starling-bench from there; default: build them into
# CARGO_TARGET_DIR/release), REPORT_DIR, STORAGE_DIR ("" turns the nodes' message log off).
#
# Bounded: every bench runs under `timeout`, every wait is bounded, and the EXIT trap
# stops every process started here (nodes, Redis, benches). Everything is on 127.0.0.0/8.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

KNOBS=(SMOKE CONNS_PER_NODE SUBS RATE MESSAGES SIZE USERS USERS_RATE DURATION USERS_DRAIN
    HTTP_CONNECTIONS USERS_HTTP_CONNECTIONS TOPOLOGIES WORKLOADS CLUSTER_CALIBRATION TIMEOUT
    QUIET_WAIT QUIET_LOAD BIN_DIR REPORT_DIR STORAGE_DIR)
NAMES=(A B C D E F G H I J)

# The command as given: the knobs set in the environment, then the script.
given_command() {
    local knob words=()
    for knob in "${KNOBS[@]}"; do
        [[ -n "${!knob+x}" ]] && words+=("$knob=${!knob}")
    done
    words+=("scripts/validate-capacity.sh")
    echo "${words[*]}"
}

validation_settings() {
    COMMAND=$(given_command)
    SMOKE=${SMOKE:-0}
    if [[ "$SMOKE" == 1 ]]; then
        CONNS_PER_NODE=${CONNS_PER_NODE:-500} SUBS=${SUBS:-300} MESSAGES=${MESSAGES:-100}
        USERS=${USERS:-200} DURATION=${DURATION:-5} TIMEOUT=${TIMEOUT:-60}
        QUIET_WAIT=${QUIET_WAIT:-0}
    fi
    CONNS_PER_NODE=${CONNS_PER_NODE:-19000}
    SUBS=${SUBS:-9000}
    RATE=${RATE:-20}
    MESSAGES=${MESSAGES:-600}
    USERS=${USERS:-10000}
    USERS_RATE=${USERS_RATE:-1}
    DURATION=${DURATION:-20}
    USERS_DRAIN=${USERS_DRAIN:-10}
    USERS_HTTP_CONNECTIONS=${USERS_HTTP_CONNECTIONS:-32}
    TOPOLOGIES=${TOPOLOGIES:-1 2 3 3s}
    WORKLOADS=${WORKLOADS:-idle fanout users}
    CLUSTER_CALIBRATION=${CLUSTER_CALIBRATION:-1}
    check_settings
    # SIZE, TIMEOUT, HTTP_CONNECTIONS, BIN, LOGDIR, QUIET_*; the EXIT trap.
    cluster_settings starling-validate-capacity
    CLK_TCK=$(getconf CLK_TCK)
    REPORT_DIR=${REPORT_DIR:-$ROOT/reports/capacity-validation/$(date -u +%Y%m%dT%H%M%SZ)}
    RAW="$REPORT_DIR/raw"
}

# check_settings: refuses unknown topologies and workloads, and sizes over the limits.
check_settings() {
    local t w
    for t in $TOPOLOGIES; do
        [[ " 1 2 3 3s " == *" $t "* ]] || { echo "unknown topology in TOPOLOGIES: $t" >&2; exit 2; }
    done
    for w in $WORKLOADS; do
        [[ " idle fanout users " == *" $w "* ]] || { echo "unknown workload in WORKLOADS: $w" >&2; exit 2; }
    done
    if [[ $CONNS_PER_NODE -gt 19900 ]]; then
        echo "CONNS_PER_NODE=$CONNS_PER_NODE: over what one process holds (open files: 20,000)" >&2
        exit 2
    fi
    if [[ $SUBS -gt 19900 || $USERS -gt 19900 ]]; then
        echo "SUBS and USERS are held by one bench process: at most 19,900" >&2
        exit 2
    fi
}

# topologies_in_order: the TOPOLOGIES asked for, T1 first (the calibration rows).
topologies_in_order() {
    local t
    for t in 1 2 3 3s; do
        [[ " $TOPOLOGIES " == *" $t "* ]] && echo "$t"
    done
    return 0
}

topology_nodes() { case "$1" in 1) echo 1 ;; 2) echo 2 ;; *) echo 3 ;; esac; }
topology_shards() { case "$1" in 1) echo 0 ;; 3s) echo 3 ;; *) echo 1 ;; esac; }

# start_topology T: fresh nodes of topology T (and their Redis); stops the script when a
# cluster could not be formed (independent nodes would measure something else).
start_topology() {
    local shards
    shards=$(topology_shards "$1")
    # shellcheck disable=SC2046
    start_cluster "$(topology_nodes "$1")" "$shards" $(publisher_sets)
    if [[ $shards -gt 0 && $CLUSTERED -ne 1 ]]; then
        echo "topology $1 needs nodes joined through Redis; they could not be (see above)" >&2
        exit 1
    fi
}

# json_strings WORDS...: the words as a JSON array's items ("a","b").
json_strings() {
    local w out=()
    for w in "$@"; do out+=("\"$w\""); done
    local IFS=,
    echo "${out[*]}"
}

# record_run T WORKLOAD STATUS WINDOW FILES...: one line of runs.jsonl: the topology, the
# processes measured, the bench's output files and Redis's samples (relative paths).
record_run() {
    local topo=$1 workload=$2 status=$3 window=$4 files=() f
    shift 4
    for f in "$@"; do files+=("${f#"$REPORT_DIR"/}"); done
    local IFS=,
    printf '{"topology":"%s","workload":"%s","nodes":%d,"shards":%d,"exit":%d,"node_pids":[%s],"redis_pids":[%s],"redis_window":"%s","bench":[%s]}\n' \
        "$topo" "$workload" "${#NODE_PIDS[@]}" "${#REDIS_URLS[@]}" "$status" "${NODE_PIDS[*]}" \
        "${REDIS_PIDS[*]}" "${window#"$REPORT_DIR"/}" "$(json_strings "${files[@]}")" \
        >>"$REPORT_DIR/runs.jsonl"
}

# redis_info PORT SECTION: INFO SECTION of the Redis on PORT, without carriage returns.
redis_info() { timeout 5 redis-cli -p "$1" INFO "$2" 2>/dev/null | tr -d '\r' || true; }

# redis_snapshot AT: one JSON line: the time, and each shard's CPU ticks, commands
# processed so far and calls per command (the publish script's own calls count).
redis_snapshot() {
    local k port ticks cmds calls shards=()
    for k in "${!REDIS_URLS[@]}"; do
        port=${REDIS_URLS[k]##*:}
        ticks=$(cpu_ticks "${REDIS_PIDS[k]}")
        cmds=$(redis_info "$port" stats | awk -F: '$1 == "total_commands_processed" { print $2 }')
        calls=$(redis_info "$port" commandstats \
            | sed -nE 's/^cmdstat_([^:]+):calls=([0-9]+),.*/"\1":\2/p' | paste -sd, -)
        shards+=("{\"port\":$port,\"pid\":${REDIS_PIDS[k]},\"cpu_ticks\":$ticks,\"total_commands_processed\":${cmds:-null},\"calls\":{$calls}}")
    done
    local IFS=,
    printf '{"at":"%s","time_s":%s,"clk_tck":%s,"shards":[%s]}\n' "$1" "$(date +%s.%N)" \
        "$CLK_TCK" "${shards[*]}"
}

ws_url_of() { echo "ws://127.0.0.1:$1/connection/websocket"; }

# node_pid_args: `--server-pid PID` for each node, in the order of ws_urls.
node_pid_args() {
    local p
    for p in "${NODE_PIDS[@]}"; do printf -- '--server-pid\n%s\n' "$p"; done
}

# show_lines FILE REGEX: the matching lines of a bench's log, indented.
show_lines() { grep -E "$2" "$1" 2>/dev/null | sed 's/^/   /' || true; }

# ---------------------------------------------------------------- the workloads

# measure_idle T: CONNS_PER_NODE idle connections on each node of T, one bench process
# per node; each prints its node's RSS figures once settled, then holds the connections
# until every process has printed.
measure_idle() {
    local topo=$1 k out outs=() pids=()
    start_topology "$topo"
    say "idle on $topo: $CONNS_PER_NODE connections on each of ${#NODE_PORTS[@]} node(s)"
    for k in "${!NODE_PORTS[@]}"; do
        out="$RAW/$topo.idle.node$k.json"
        outs+=("$out")
        say "starling-bench idle --url $(ws_url_of "${NODE_PORTS[k]}") --connections $CONNS_PER_NODE --first $((k * CONNS_PER_NODE)) --no-shared-channel --server-pid ${NODE_PIDS[k]} (log $out.err)"
        timeout --signal=INT --kill-after=10 $((TIMEOUT + 90)) "$BIN/starling-bench" idle \
            --url "$(ws_url_of "${NODE_PORTS[k]}")" --connections "$CONNS_PER_NODE" \
            --first $((k * CONNS_PER_NODE)) --no-shared-channel --server-pid "${NODE_PIDS[k]}" \
            --timeout "$TIMEOUT" --hold-secs $((TIMEOUT + 60)) --json >"$out" 2>"$out.err" &
        pids+=($!)
        track_pid $!
    done
    for k in "${!pids[@]}"; do
        wait_line "${outs[k]}" '^\{' "${pids[k]}" $((TIMEOUT + 80)) \
            || say "node ${NAMES[k]}: the bench printed no figures (see ${outs[k]}.err)"
    done
    for k in "${!pids[@]}"; do
        say "node ${NAMES[k]}:"
        show_lines "${outs[k]}.err" 'connections ready|RSS|failure|warning'
        stop_pid "${pids[k]}"
    done
    record_run "$topo" idle 0 "" "${outs[@]}"
    stop_cluster
}

# run_traffic T WORKLOAD LIMIT START END ARGS...: `starling-bench ARGS` (bounded by LIMIT
# + 60 s) on the running nodes; on Redis, a snapshot when the bench's log shows START
# (publishing begins) and one when it shows END (its CPU figures are taken); records
# the run.
run_traffic() {
    local topo=$1 workload=$2 limit=$3 start=$4 end=$5
    shift 5
    local out="$RAW/$topo.$workload.json" window="" pid status=0
    say "$workload on $topo: starling-bench $* (log $out.err)"
    timeout --signal=INT --kill-after=10 $((limit + 60)) "$BIN/starling-bench" "$@" \
        >"$out" 2>"$out.err" &
    pid=$!
    track_pid "$pid"
    if [[ ${#REDIS_URLS[@]} -gt 0 ]]; then
        window="$RAW/$topo.$workload.redis.jsonl"
        if wait_line "$out.err" "$start" "$pid" $((limit + 70)); then
            redis_snapshot start >>"$window"
            wait_line "$out.err" "$end" "$pid" $((limit + 70)) && redis_snapshot end >>"$window"
        fi
    fi
    wait "$pid" || status=$?
    [[ $status -ne 0 ]] && say "starling-bench exited with status $status"
    show_lines "$out.err" '^(publications|deliveries|subscribers):|server [0-9]+ CPU|failure'
    record_run "$topo" "$workload" "$status" "$window" "$out"
}

# measure_fanout T: SUBS subscribers of one channel over the nodes of T, MESSAGES
# publications at RATE/s through node A's HTTP API.
measure_fanout() {
    local topo=$1 urls pids limit
    start_topology "$topo"
    mapfile -t urls < <(ws_urls)
    mapfile -t pids < <(node_pid_args)
    limit=$(awk -v t="$TIMEOUT" -v m="$MESSAGES" -v r="$RATE" 'BEGIN { printf "%d", t + m / r + 1 }')
    run_traffic "$topo" fanout "$limit" '^[0-9]+ subscribed, [0-9]+ failed, in ' \
        '^--- fanout result ---' fanout "${urls[@]}" \
        --publish-url "http://127.0.0.1:${NODE_PORTS[0]}" --via http \
        --subscribers "$SUBS" --messages "$MESSAGES" --rate "$RATE" --size "$SIZE" \
        --http-connections "$HTTP_CONNECTIONS" --timeout "$limit" "${pids[@]}" --json
    stop_cluster
}

# measure_users T: the users scenario over the nodes of T, publishing through all of them.
measure_users() {
    local topo=$1 urls pids publish=() p
    start_topology "$topo"
    mapfile -t urls < <(ws_urls)
    mapfile -t pids < <(node_pid_args)
    for p in "${NODE_PORTS[@]}"; do publish+=(--publish-url "http://127.0.0.1:$p"); done
    run_traffic "$topo" users $((TIMEOUT + DURATION + USERS_DRAIN + 15)) \
        '^[0-9]+ users subscribed, [0-9]+ failed, in ' '^--- users result ---' \
        users "${urls[@]}" "${publish[@]}" --users "$USERS" --rate "$USERS_RATE" \
        --duration "$DURATION" --size "$SIZE" --http-connections "$USERS_HTTP_CONNECTIONS" \
        --setup-timeout "$TIMEOUT" --drain "$USERS_DRAIN" "${pids[@]}" --json
    stop_cluster
}

# ---------------------------------------------------------------- main

write_settings() {
    local commit machine
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    machine="$(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), open files $(ulimit -Hn); nodes, Redis and the load tool share the cores, loopback"
    printf '{"started":"%s","smoke":%s,"command":"%s","machine":"%s","commit":"%s","conns_per_node":%d,"subs":%d,"rate":%s,"messages":%d,"size":%d,"users":%d,"users_rate":%s,"duration":%d,"users_drain":%d,"topologies":"%s","workloads":"%s","cluster_calibration":%d,"bin_dir":"%s","logdir":"%s"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$([[ "$SMOKE" == 1 ]] && echo true || echo false)" \
        "$COMMAND" "$machine" "$commit" "$CONNS_PER_NODE" "$SUBS" "$RATE" "$MESSAGES" "$SIZE" \
        "$USERS" "$USERS_RATE" "$DURATION" "$USERS_DRAIN" "$TOPOLOGIES" "$WORKLOADS" \
        "$CLUSTER_CALIBRATION" "$BIN" "$LOGDIR" >"$REPORT_DIR/settings.json"
}

main() {
    validation_settings
    need redis-server redis-cli python3 curl timeout
    tune_kernel
    build_binaries
    local b topo workload
    for b in starling starling-bench; do [[ -x "$BIN/$b" ]] || { echo "no $BIN/$b" >&2; exit 1; }; done
    mkdir -p "$RAW"
    : >"$REPORT_DIR/runs.jsonl"
    write_settings
    say "capacity validation: topologies $(topologies_in_order | tr '\n' ' ')- workloads $WORKLOADS; results in $REPORT_DIR"
    [[ "$SMOKE" == 1 ]] && say "SMOKE=1: tiny sizes, an end-to-end check of the script, not a validation"
    for topo in $(topologies_in_order); do
        for workload in idle fanout users; do
            [[ " $WORKLOADS " == *" $workload "* ]] || continue
            say "---- topology $topo, $workload"
            "measure_$workload" "$topo"
        done
    done
    say "predictions (starling capacity) and the table"
    python3 "$ROOT/scripts/validate-capacity.py" table "$REPORT_DIR" "$BIN/starling"
    say "table: $REPORT_DIR/table.md; raw outputs: $RAW; nodes' logs: $LOGDIR"
}

main "$@"
