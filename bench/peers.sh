#!/usr/bin/env bash
# Peer comparison (issue 8): the same scenarios, measured with starling-bench, against
# one fresh server per measurement of each of
#   starling  Starling (release binary, `serve --dev`, flood limits off, as scripts/bench.sh)
#   nchan     Nchan: nginx with the nchan module, 2 workers; config generated here:
#             WebSocket subscribers on /sub/<channel> (or /sub/<a>,<b>: one subscriber
#             of each), publishers POST /pub/<channel>, no message kept
#             (nchan_message_buffer_length 0)
#   nats      NATS (nats-server) with its WebSocket listener (own free ports, never 4222)
#   ws        Node.js `ws` broadcast server (bench/peers/ws, pinned in its package-lock)
#   socketio  Socket.IO 4 (bench/peers/socketio, one process, no Redis)
#   baseline  the featureless tokio-tungstenite broadcast server (crates/bench/src/bin/baseline.rs)
# all on 127.0.0.1, on free ports. Scenarios:
#   idle       IDLE_CONNS (18,500) idle subscribed connections, each on its own channel:
#              server memory (RSS delta / connections; Nchan: master + workers summed, PSS
#              too) and the connect + subscribe rate of the first RATE_FIRST (10,000).
#              Starling's clients connect and subscribe after the 101 (two round trips,
#              as a browser must); PIPELINE=1 sends those commands with the upgrade
#              request (one round trip, as the peers' subscribe-in-the-URL); DEFLATE=1
#              has Starling's clients negotiate permessage-deflate (a client whose
#              upgrade is answered without it fails).
#   fanout     SUBS (10,000) subscribers of one channel, SIZE (100) B publications made
#              through the server's HTTP publish (NATS: a client PUB over WebSocket) at
#              each of RATES ("1 10 100") publications/s for DURATION (10) s: p50/p99.
#   sustained  the same at each rung of LADDER (publications/s, ascending) for
#              LADDER_DURATION s until one fails: max sustained deliveries/s = the last
#              rung with nothing lost, no subscriber failed, p99 <= SUSTAINED_P99_MS
#              (1000) and the publisher at >= 90 % of the rate.
#   http       HTTP publish with no subscriber: wrk, WRK_CONNECTIONS (64) connections,
#              SIZE-byte bodies, WRK_DURATION (10) s. Starling twice: with its message log
#              (a fresh storage.dir) and without (storage.dir=""), channel log:bench whose
#              namespace keeps history (as `scripts/bench.sh log`). Not for NATS.
#              ARCHIVE_URL (a PostgreSQL connection string) adds a third Starling run
#              with the archive on (variant log-archive); FANOUT_VARIANT=archive runs
#              the fan-out with it on too.
#   users      the application scenario (`starling-bench users`): USERS (10,000) users,
#              each one connection subscribed to its personal channel and its group's
#              (groups of USERS_GROUP_SIZE, 100), USERS_RATE (1) publication/s to every
#              personal channel spread evenly over each second (USERS_GROUP_RATE, 0, per
#              group channel) through the server's HTTP publish (NATS: PUB from a NATS
#              client), SIZE-byte data, for USERS_DURATION (20) s: p50/p99 and the
#              server's CPU over the publishing (every process: Nchan's master and
#              workers). Nchan, ws and baseline subscribe to both channels on one
#              connection through the path /sub/<personal>,<group>.
#
#   bench/peers.sh                                   # everything, RUNS=3
#   SERVERS="starling nchan" SCENARIOS="idle http" RUNS=1 bench/peers.sh
#   SCENARIOS=users USERS=200 USERS_DURATION=3 RUNS=1 QUIET_WAIT=0 bench/peers.sh  # smoke
#
# Environment (defaults in parentheses): SERVERS ("starling nchan nats ws socketio
# baseline"), SCENARIOS ("idle http fanout sustained users", in that order, each for
# every server and run before the next), RUNS (3: the table gives
# the median), IDLE_CONNS (18500), RATE_FIRST (10000), SUBS (10000), SIZE (100), RATES
# ("1 10 100"), DURATION (10 s), MIN_MESSAGES (10), LADDER ("5 10 20 40 60 80 100 150
# 200 300"), LADDER_DURATION (10 s), SUSTAINED_P99_MS (1000), HTTP_CONNECTIONS (8:
# publishing keep-alive connections of the fan-out publisher), SETTLE_MS (1000: wait
# after the last subscription before publishing; Nchan's two workers pass
# subscriptions between them asynchronously), WRK_CONNECTIONS (64), WRK_THREADS (2),
# WRK_DURATION (10), USERS (10000), USERS_GROUP_SIZE (100), USERS_RATE (1),
# USERS_GROUP_RATE (0), USERS_DURATION (20 s), USERS_HTTP_CONNECTIONS (32: the users
# backend's keep-alive publishing connections), USERS_DRAIN (10 s: wait for the last
# deliveries), TIMEOUT (120 s: bound of one bench run, raised to cover the
# publishing time; users: the bound of its set-up), TOTAL_LIMIT (21600 s: no
# measurement starts after it), QUIET_WAIT (600 s) and QUIET_LOAD (0.7): before each
# measurement, wait for a 1-minute load average below QUIET_LOAD, at most QUIET_WAIT s. INSTALL (1: apt-get install what is
# missing, npm ci the Node servers; 0: only check), BIN_DIR (take starling,
# starling-bench and baseline from there, build nothing; else cargo build --release
# into CARGO_TARGET_DIR), NATS_SERVER, NCHAN_MODULE (the .so, if nginx loads it),
# RESULTS_DIR (reports/peers-<UTC time>).
#
# Time: about 150-200 measurements with the defaults (RUNS=3), each a fresh server, a
# quiet wait (about a minute after a busy run on 2 cores) and 10-60 s of work: 4-6 h.
# RUNS=1 takes a third of that; SERVERS and SCENARIOS pick a part.
#
# Output in RESULTS_DIR: results.md (the comparison table, peers as columns), runs.jsonl
# (one JSON line per run: server, scenario, variant, run, server_cpu_s and the bench's
# --json figures or wrk's), raw/ (every bench's output), logs/ (servers' logs, configs).
# Bounded in time: every bench and wrk run has a timeout; the EXIT trap stops every
# process the script started. As root it raises the kernel's backlog and port range
# (scripts/bench-lib.sh tune_kernel; runtime only).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS="$ROOT/bench/peers"
SUMMARY="$PEERS/summarize.py"
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN_DIR:-$CARGO_TARGET_DIR/release}
SERVERS=${SERVERS:-starling nchan nats ws socketio baseline}
SCENARIOS=${SCENARIOS:-idle http fanout sustained users}
RUNS=${RUNS:-3}
IDLE_CONNS=${IDLE_CONNS:-18500}
RATE_FIRST=${RATE_FIRST:-10000}
SUBS=${SUBS:-10000}
SIZE=${SIZE:-100}
RATES=${RATES:-1 10 100}
DURATION=${DURATION:-10}
MIN_MESSAGES=${MIN_MESSAGES:-10}
LADDER=${LADDER:-5 10 20 40 60 80 100 150 200 300}
LADDER_DURATION=${LADDER_DURATION:-10}
SUSTAINED_P99_MS=${SUSTAINED_P99_MS:-1000}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-8}
SETTLE_MS=${SETTLE_MS:-1000}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WRK_DURATION=${WRK_DURATION:-10}
USERS=${USERS:-10000}
USERS_GROUP_SIZE=${USERS_GROUP_SIZE:-100}
USERS_RATE=${USERS_RATE:-1}
USERS_GROUP_RATE=${USERS_GROUP_RATE:-0}
USERS_DURATION=${USERS_DURATION:-20}
USERS_HTTP_CONNECTIONS=${USERS_HTTP_CONNECTIONS:-32}
USERS_DRAIN=${USERS_DRAIN:-10}
TIMEOUT=${TIMEOUT:-120}
TOTAL_LIMIT=${TOTAL_LIMIT:-21600}
QUIET_WAIT=${QUIET_WAIT:-600}
QUIET_LOAD=${QUIET_LOAD:-0.7}
INSTALL=${INSTALL:-1}
PIPELINE=${PIPELINE:-0}
DEFLATE=${DEFLATE:-0}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/reports/peers-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS_DIR/raw" "$RESULTS_DIR/logs"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
LOGDIR="$RESULTS_DIR/logs"
RUNS_FILE="$RESULTS_DIR/runs.jsonl"
STARTED_AT=$(date +%s)
CLK_TCK=$(getconf CLK_TCK)

trap stop_started EXIT
trap 'exit 130' INT TERM

# What the running server is (set by start_server).
SRV_PIDS=""    # PID[+PID...]: every process of the server (nginx: master and workers)
SRV_PORT=""
PROTO=""       # starling-bench --protocol
WS_URL=""      # starling-bench --url (for nchan and ws the channel is appended)
PUB_URL=""     # starling-bench --publish-url

known_server() { [[ " starling nchan nats ws socketio baseline " == *" $1 "* ]]; }

time_left() { (($(date +%s) - STARTED_AT < TOTAL_LIMIT)); }

# ---------------------------------------------------------------- installation

# install_missing: the packages and Node modules the selected servers need.
install_missing() {
    local pkgs=() s
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v jq >/dev/null || pkgs+=(jq)
    for s in $SERVERS; do
        case "$s" in
            nchan)
                command -v nginx >/dev/null || pkgs+=(nginx)
                [[ -e "$NCHAN_MODULE" ]] || pkgs+=(libnginx-mod-nchan) ;;
            nats) [[ -x "$NATS_SERVER" ]] || pkgs+=(nats-server) ;;
            ws | socketio) command -v node >/dev/null || pkgs+=(nodejs npm) ;;
        esac
    done
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        if [[ "$INSTALL" == 1 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            say "installing: ${pkgs[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
        else
            echo "missing: ${pkgs[*]} (INSTALL=1 as root installs them with apt-get)" >&2
            exit 1
        fi
    fi
    NATS_SERVER=$(command -v nats-server || echo "$NATS_SERVER")
    for s in $SERVERS; do
        case "$s" in
            ws | socketio)
                if [[ "$INSTALL" == 1 ]]; then
                    say "npm ci in bench/peers/$s (versions pinned by its package-lock.json)"
                    (cd "$PEERS/$s" && npm ci --no-audit --no-fund --loglevel=error)
                fi
                [[ -d "$PEERS/$s/node_modules" ]] || { echo "bench/peers/$s: run npm ci" >&2; exit 1; } ;;
        esac
    done
}

# ---------------------------------------------------------------- servers

# wait_listening LOG REGEX PID: the port a server printed in its line
# "NAME listening on http://127.0.0.1:PORT" (REGEX matches that line).
wait_listening() {
    if ! wait_line "$1" "$2" "$3"; then
        cat "$1" >&2
        return 1
    fi
    grep -E "$2" "$1" | head -1 | sed -nE 's#.*listening on http://127\.0\.0\.1:([0-9]+).*#\1#p'
}

# start_server NAME [VARIANT]: a fresh server, waits until it accepts connections.
# VARIANT: for starling, "log" (a fresh message log; the default) or "nolog", and
# "history" gives the namespace `log` a history (for the http scenario).
start_server() {
    local name=$1 variant=${2:-} log pid
    wait_quiet
    log="$LOGDIR/$name.$(date +%H%M%S).$RANDOM.log"
    case "$name" in
        starling)
            local sets=(--set log.level=warn --set client.command_rate=0 --set server.admission_rate=0
                --set client.max_subscriptions=0)
            # shellcheck disable=SC2207
            sets+=($(fairness_sets))
            if [[ "$variant" == *nolog* ]]; then
                sets+=(--set "storage.dir=")
            else
                sets+=(--set "storage.dir=$LOGDIR/data.$RANDOM$RANDOM")
            fi
            [[ "$variant" == *history* ]] && sets+=(--set namespaces.log.history_size=100)
            # The PostgreSQL archive on (ARCHIVE_URL: a connection string).
            [[ "$variant" == *archive* ]] && sets+=(--set archive.enabled=true
                --set "archive.url=\"$ARCHIVE_URL\"")
            "$BIN/starling" serve --dev --listen 127.0.0.1:0 "${sets[@]}" >"$log" 2>&1 &
            pid=$!
            track_pid "$pid"
            SRV_PORT=$(wait_listening "$log" '^starling listening on http://' "$pid") || return 1
            SRV_PIDS=$pid
            PROTO=starling
            WS_URL="ws://127.0.0.1:$SRV_PORT/connection/websocket"
            PUB_URL="http://127.0.0.1:$SRV_PORT"
            ;;
        nchan)
            local dir
            dir=$(mktemp -d "$LOGDIR/nchan.XXXXXX")
            SRV_PORT=$(free_port)
            write_nchan_conf "$dir" "$SRV_PORT"
            nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$log" 2>&1 &
            pid=$!
            track_pid "$pid"
            wait_port "$SRV_PORT" || { cat "$log" "$dir/error.log" >&2; return 1; }
            local workers="" _
            for _ in $(seq 1 50); do
                workers=$(pgrep -P "$pid" | tr '\n' '+' | sed 's/+$//')
                [[ $(tr -cd '+' <<<"$workers" | wc -c) -ge 1 ]] && break
                sleep 0.1
            done
            SRV_PIDS="$pid${workers:++$workers}"
            PROTO=nchan
            WS_URL="ws://127.0.0.1:$SRV_PORT/sub/"
            PUB_URL="http://127.0.0.1:$SRV_PORT"
            ;;
        nats)
            local conf client
            conf="$LOGDIR/nats.$RANDOM$RANDOM.conf"
            client=$(free_port)
            SRV_PORT=$(free_port)
            {
                echo "listen: 127.0.0.1:$client"
                echo "websocket { listen: \"127.0.0.1:$SRV_PORT\", no_tls: true }"
            } >"$conf"
            "$NATS_SERVER" -c "$conf" >"$log" 2>&1 &
            pid=$!
            track_pid "$pid"
            wait_port "$SRV_PORT" || { cat "$log" >&2; return 1; }
            SRV_PIDS=$pid
            PROTO=nats
            WS_URL="ws://127.0.0.1:$SRV_PORT/"
            PUB_URL="ws://127.0.0.1:$SRV_PORT/"
            ;;
        ws | socketio)
            PORT=0 node "$PEERS/$name/server.js" >"$log" 2>&1 &
            pid=$!
            track_pid "$pid"
            SRV_PORT=$(wait_listening "$log" "^$name listening on http://" "$pid") || return 1
            SRV_PIDS=$pid
            PROTO=$name
            if [[ $name == ws ]]; then
                WS_URL="ws://127.0.0.1:$SRV_PORT/sub/"
            else
                WS_URL="ws://127.0.0.1:$SRV_PORT/socket.io/?EIO=4&transport=websocket"
            fi
            PUB_URL="http://127.0.0.1:$SRV_PORT"
            ;;
        baseline)
            "$BIN/baseline" --listen 127.0.0.1:0 >"$log" 2>&1 &
            pid=$!
            track_pid "$pid"
            SRV_PORT=$(wait_listening "$log" '^baseline listening on http://' "$pid") || return 1
            SRV_PIDS=$pid
            PROTO=ws
            WS_URL="ws://127.0.0.1:$SRV_PORT/sub/"
            PUB_URL="http://127.0.0.1:$SRV_PORT"
            ;;
        *) echo "unknown server: $name" >&2; return 1 ;;
    esac
    # Let the runtime finish starting before the baseline RSS.
    sleep 0.5
    say "$name${variant:+ ($variant)}: pid(s) $SRV_PIDS on 127.0.0.1:$SRV_PORT"
}

stop_server() {
    stop_started
    # Starling's message logs (the http runs write ~100 MB each).
    rm -rf "$LOGDIR"/data.*
    say "load average at the end: $(load1)"
}

# write_nchan_conf DIR PORT: nginx with nchan, 2 workers, everything under DIR.
write_nchan_conf() {
    local dir=$1 port=$2 nofile user=""
    nofile=$(ulimit -Hn)
    [[ "$nofile" == unlimited ]] && nofile=1048576
    # As root the workers would switch to nobody, who cannot write DIR.
    [[ $(id -u) -eq 0 ]] && user="user root;"
    mkdir -p "$dir/tmp"
    {
        # A build with nchan compiled in has no module to load.
        [[ -e "$NCHAN_MODULE" ]] && echo "load_module $NCHAN_MODULE;"
        cat <<EOF
$user
worker_processes 2;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $nofile;
events {
    worker_connections $((nofile - 100));
}
http {
    access_log off;
    # Publications live in shared memory for nchan_message_timeout even with no buffer:
    # at wrk's rates the default pool runs out and most publishes get 507 ("Increase
    # nchan_max_reserved_memory"), which counted as throughput before.
    nchan_max_reserved_memory 1024M;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # Keep-alive publishers (the bench, wrk) send many requests per connection.
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$port backlog=8192;
        # WebSocket subscriber of <channel>, or of each of <a>,<b>,... (multiplexed:
        # a publication arrives once per channel it was published to): starts at the
        # next publication.
        location ~ ^/sub/(.+)\$ {
            nchan_subscriber websocket;
            nchan_channel_id \$1;
            nchan_channel_id_split_delimiter ",";
            nchan_subscriber_first_message newest;
        }
        # POST /pub/<channel>: the body is the message; nothing is kept for later
        # subscribers (as the other peers, which have no history).
        location ~ ^/pub/(.+)\$ {
            nchan_publisher http;
            nchan_channel_id \$1;
            nchan_message_buffer_length 0;
            nchan_message_timeout 10s;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
}

# ---------------------------------------------------------------- measurement helpers

cpu_seconds() { awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }'; }

# record KEY=VALUE... --bench FILE|--wrk FILE|--error TEXT: one line of runs.jsonl.
record() { python3 "$SUMMARY" record "$@" >>"$RUNS_FILE"; }

# measure SERVER SCENARIO VARIANT RUN KIND OUT CMD...: runs CMD (output to OUT) while
# counting the server's CPU time, then records the run (KIND: bench or wrk).
measure() {
    local server=$1 scenario=$2 variant=$3 run=$4 kind=$5 out=$6 extra=${EXTRA_KEYS:-}
    shift 6
    local before after status=0 child
    before=$(cpu_ticks "$SRV_PIDS")
    # In the background, so that a signal to the script stops it at once (the traps
    # run during `wait`, and stop_started ends it with the servers).
    "$@" >"$out" 2>"$out.err" &
    child=$!
    track_pid "$child"
    wait "$child" || status=$?
    untrack_pid "$child"
    after=$(cpu_ticks "$SRV_PIDS")
    local keys=(server="$server" scenario="$scenario" variant="$variant" run="$run"
        server_cpu_s="$(cpu_seconds "$before" "$after")" exit="$status")
    # shellcheck disable=SC2206
    [[ -n "$extra" ]] && keys+=($extra)
    if [[ $status -ne 0 && ! -s "$out" ]]; then
        record "${keys[@]}" --error "exit $status: $(tail -1 "$out.err" 2>/dev/null | cut -c1-200)"
    else
        record "${keys[@]}" "--$kind" "$out"
    fi
    grep -E -- '---|connections ready|rate:|RSS delta|deliveries:|latency|publications:|failure' \
        "$out.err" 2>/dev/null | sed 's/^/   /' || true
    return "$status"
}

# untrack_pid PID: forget a process that ended (no stop at exit).
untrack_pid() {
    local kept=() p
    for p in ${STARTED[@]+"${STARTED[@]}"}; do [[ "$p" == "$1" ]] || kept+=("$p"); done
    STARTED=(${kept[@]+"${kept[@]}"})
}

# bench_t SECONDS ARGS...: starling-bench bounded in time (exec: run in the
# background by measure, the job's PID is timeout's, which passes signals on).
bench_t() {
    local limit=$1
    shift
    say "starling-bench $*" >&2
    exec timeout --signal=INT --kill-after=10 "$((limit + 60))" "$BIN/starling-bench" "$@"
}

messages_for() { # RATE SECONDS: publications for that long, at least MIN_MESSAGES
    awk -v r="$1" -v s="$2" -v m="$MIN_MESSAGES" 'BEGIN { n = int(r * s + 0.5); print (n < m ? m : n) }'
}

# fanout_args: the publisher's side of a fan-out run for the running server.
fanout_args() {
    local a=(--protocol "$PROTO" --url "$WS_URL" --publish-url "$PUB_URL" --settle-ms "$SETTLE_MS"
        --http-connections "$HTTP_CONNECTIONS")
    [[ "$PROTO" == starling ]] && a+=(--via http)
    printf '%s\n' "${a[@]}"
}

# ---------------------------------------------------------------- scenarios

run_idle() { # SERVER RUN
    local server=$1 run=$2 out="$RESULTS_DIR/raw/idle.$1.$2.json"
    start_server "$server" || { record server="$server" scenario=idle run="$run" --error "server did not start"; stop_server; return; }
    local extra=()
    [[ "$PROTO" == starling ]] && extra=(--no-shared-channel)
    [[ "$PROTO" == starling && "$PIPELINE" == 1 ]] && extra+=(--pipeline)
    [[ "$PROTO" == starling && "$DEFLATE" == 1 ]] && extra+=(--deflate)
    measure "$server" idle "" "$run" bench "$out" \
        bench_t "$TIMEOUT" idle --protocol "$PROTO" --url "$WS_URL" --connections "$IDLE_CONNS" \
        --rate-first "$RATE_FIRST" --server-pid "$SRV_PIDS" --timeout "$TIMEOUT" --json "${extra[@]}" || true
    stop_server
}

# fanout_once SERVER SCENARIO VARIANT RUN RATE SECONDS: one fan-out run on a fresh
# server; returns the bench's exit status; its JSON is in the file printed last.
fanout_once() {
    local server=$1 scenario=$2 variant=$3 run=$4 rate=$5 secs=$6
    local out="$RESULTS_DIR/raw/$scenario.$server.$variant.$run.json" msgs limit
    LAST_OUT=""
    msgs=$(messages_for "$rate" "$secs")
    limit=$((TIMEOUT > secs + 60 ? TIMEOUT : secs + 60))
    start_server "$server" "$variant" || { record server="$server" scenario="$scenario" variant="$variant" run="$run" rate="$rate" --error "server did not start"; stop_server; return 1; }
    local args
    mapfile -t args < <(fanout_args)
    local status=0
    EXTRA_KEYS="rate=$rate" measure "$server" "$scenario" "$variant" "$run" bench "$out" \
        bench_t "$limit" fanout "${args[@]}" --subscribers "$SUBS" --messages "$msgs" \
        --rate "$rate" --size "$SIZE" --timeout "$limit" --json || status=$?
    stop_server
    LAST_OUT=$out
    return "$status"
}

run_fanout() { # SERVER RUN
    local rate
    for rate in $RATES; do
        time_left || return 0
        say "fanout: $1, $SUBS subscribers, $rate publication(s)/s for $DURATION s (run $2)"
        fanout_once "$1" fanout "${FANOUT_VARIANT:+$FANOUT_VARIANT,}rate=$rate" "$2" "$rate" "$DURATION" || true
    done
}

run_sustained() { # SERVER RUN: climbs LADDER until a rung does not hold
    local rate
    for rate in $LADDER; do
        time_left || return 0
        say "sustained: $1, $SUBS subscribers, $rate publications/s for $LADDER_DURATION s (run $2)"
        fanout_once "$1" sustained "rate=$rate" "$2" "$rate" "$LADDER_DURATION" || true
        if ! python3 "$SUMMARY" sustained "$LAST_OUT" "$rate" "$SUSTAINED_P99_MS"; then
            say "sustained: $1 did not hold $rate publications/s; the ladder stops"
            return 0
        fi
    done
}

# pad_body PREFIX SUFFIX: PREFIX + x... + SUFFIX, SIZE bytes long (never shorter than
# PREFIX + SUFFIX).
pad_body() {
    local n=$((SIZE - ${#1} - ${#2}))
    ((n < 0)) && n=0
    printf '%s%s%s' "$1" "$(head -c "$n" /dev/zero | tr '\0' x)" "$2"
}

# http_once SERVER VARIANT RUN: wrk against the server's HTTP publish, no subscriber.
http_once() {
    local server=$1 variant=$2 run=$3 path body auth="" lua
    local out="$RESULTS_DIR/raw/http.$server.${variant:-default}.$run.txt"
    case "$server" in
        starling)
            path=/api/publish auth="apikey dev-api-key"
            body=$(pad_body '{"channel":"log:bench","data":{"pad":"' '"}}') ;;
        nchan) path=/pub/bench body=$(pad_body '{"pad":"' '"}') ;;
        ws | baseline) path=/publish/bench body=$(pad_body '{"pad":"' '"}') ;;
        socketio) path=/publish body=$(pad_body '{"room":"bench","data":{"pad":"' '"}}') ;;
        *) return 0 ;;
    esac
    lua="$LOGDIR/wrk.$server.lua"
    {
        echo 'wrk.method = "POST"'
        echo "wrk.body = '$body'"
        echo 'wrk.headers["Content-Type"] = "application/json"'
        [[ -n "$auth" ]] && echo "wrk.headers[\"Authorization\"] = \"$auth\""
    } >"$lua"
    start_server "$server" "${variant:+$variant,history}" || { record server="$server" scenario=http variant="$variant" run="$run" --error "server did not start"; stop_server; return; }
    say "wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WRK_DURATION}s --latency -s $lua http://127.0.0.1:$SRV_PORT$path (body ${#body} B)"
    measure "$server" http "$variant" "$run" wrk "$out" \
        timeout --kill-after=10 "$((WRK_DURATION + 30))" wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" \
        -d"${WRK_DURATION}s" --latency -s "$lua" "http://127.0.0.1:$SRV_PORT$path" || true
    grep -E 'Requests/sec|Non-2xx|Socket errors|^ +(50|99)%' "$out" | sed 's/^/   /' || true
    stop_server
}

run_http() { # SERVER RUN
    case "$1" in
        nats) say "http: nats has no HTTP publish API (skipped)" ;;
        starling)
            http_once starling log "$2"
            http_once starling nolog "$2"
            [[ -n "${ARCHIVE_URL:-}" ]] && http_once starling log-archive "$2"
            return 0 ;;
        *) http_once "$1" "" "$2" ;;
    esac
}

# pid_args PIDS: `--server-pid P` for each process of PIDS (PID+PID...).
pid_args() {
    local p
    for p in ${1//+/ }; do printf -- '--server-pid\n%s\n' "$p"; done
}

# run_users SERVER RUN: `starling-bench users` on a fresh server. Server CPU: the
# bench's own figure over the publishing and drain (every process of the server);
# server_cpu_s of runs.jsonl also counts the set-up.
run_users() {
    local server=$1 run=$2 out="$RESULTS_DIR/raw/users.$1.$2.json" limit pids
    limit=$((TIMEOUT + USERS_DURATION + USERS_DRAIN + 15))
    say "users: $server, $USERS users (groups of $USERS_GROUP_SIZE), $USERS_RATE publication(s)/s each for $USERS_DURATION s (run $run)"
    start_server "$server" || { record server="$server" scenario=users run="$run" --error "server did not start"; stop_server; return; }
    mapfile -t pids < <(pid_args "$SRV_PIDS")
    EXTRA_KEYS="users=$USERS" measure "$server" users "" "$run" bench "$out" \
        bench_t "$limit" users --protocol "$PROTO" --url "$WS_URL" --publish-url "$PUB_URL" \
        --users "$USERS" --group-size "$USERS_GROUP_SIZE" --rate "$USERS_RATE" \
        --group-rate "$USERS_GROUP_RATE" --duration "$USERS_DURATION" --size "$SIZE" \
        --http-connections "$USERS_HTTP_CONNECTIONS" --settle-ms "$SETTLE_MS" \
        --setup-timeout "$TIMEOUT" --drain "$USERS_DRAIN" "${pids[@]}" --json || true
    stop_server
}

# ---------------------------------------------------------------- main

versions_json() {
    local nats="" nginx="" nchan="" node="" ws="" sio="" starling=""
    [[ -x "$NATS_SERVER" ]] && nats=$("$NATS_SERVER" --version 2>&1 | awk '{print $NF}')
    command -v nginx >/dev/null && nginx=$(nginx -v 2>&1 | sed 's#.*nginx/##')
    nchan=$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || true)
    command -v node >/dev/null && node=$(node --version)
    ws=$(sed -nE 's/.*"ws": "([^"]+)".*/\1/p' "$PEERS/ws/package.json" | head -1)
    sio=$(sed -nE 's/.*"socket.io": "([^"]+)".*/\1/p' "$PEERS/socketio/package.json" | head -1)
    starling=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    jq -n --arg nats "$nats" --arg nginx "$nginx" --arg nchan "$nchan" --arg node "$node" \
        --arg ws "$ws" --arg sio "$sio" --arg starling "$starling" \
        '{"starling (commit)": $starling, "nats-server": $nats, "nginx": $nginx,
          "nchan (Debian)": $nchan, "node": $node, "ws": $ws, "socket.io": $sio,
          "nats_short": ($nats | ltrimstr("v") | split(".")[0:2] | join("."))}'
}

write_meta() {
    local to_json='split(" ") | map(select(length > 0))'
    jq -n --argjson runs "$RUNS" --argjson idle "$IDLE_CONNS" --argjson first "$RATE_FIRST" \
        --argjson subs "$SUBS" --argjson size "$SIZE" --argjson p99 "$SUSTAINED_P99_MS" \
        --argjson wrkc "$WRK_CONNECTIONS" --arg servers "$SERVERS" --arg rates "$RATES" \
        --arg ladder "$LADDER" --argjson versions "$(versions_json)" --arg scenarios "$SCENARIOS" \
        --argjson users "$USERS" --argjson urate "$USERS_RATE" --argjson ugrate "$USERS_GROUP_RATE" \
        --argjson ugroup "$USERS_GROUP_SIZE" --argjson udur "$USERS_DURATION" \
        --arg conditions "$(nproc) cores, servers and load generator on the same machine, loopback; measured $(date -u +%Y-%m-%d)" \
        "{runs: \$runs, idle_connections: \$idle, rate_first: \$first, subscribers: \$subs,
          size: \$size, sustained_p99_ms: \$p99, wrk_connections: \$wrkc,
          servers: (\$servers | $to_json), rates: (\$rates | $to_json | map(tonumber)),
          ladder: (\$ladder | $to_json | map(tonumber)), versions: \$versions,
          scenarios: (\$scenarios | $to_json),
          users: {users: \$users, rate: \$urate, group_rate: \$ugrate, group_size: \$ugroup,
                  duration_s: \$udur},
          conditions: \$conditions}" >"$RESULTS_DIR/meta.json"
}

main() {
    local s sc run
    for s in $SERVERS; do known_server "$s" || { echo "unknown server in SERVERS: $s" >&2; exit 2; }; done
    for sc in $SCENARIOS; do
        [[ " idle fanout sustained http users " == *" $sc "* ]] || { echo "unknown scenario: $sc" >&2; exit 2; }
    done
    need python3
    install_missing
    need wrk jq
    tune_kernel
    if [[ -n "${BIN_DIR:-}" ]]; then
        say "binaries from $BIN_DIR (not built)"
    else
        say "building release binaries (starling, starling-bench, baseline)"
        (cd "$ROOT" && cargo build --release -q -p starling -p starling-bench)
    fi
    for s in "$BIN/starling-bench" "$BIN/baseline"; do [[ -x "$s" ]] || { echo "no $s" >&2; exit 1; }; done
    [[ " $SERVERS " == *" starling "* && ! -x "$BIN/starling" ]] && { echo "no $BIN/starling" >&2; exit 1; }
    say "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); servers and bench share the cores"
    say "servers: $SERVERS; scenarios: $SCENARIOS; $RUNS run(s) each; results in $RESULTS_DIR"
    write_meta
    : >"$RUNS_FILE"
    for sc in $SCENARIOS; do
        for ((run = 1; run <= RUNS; run++)); do
            for s in $SERVERS; do
                if ! time_left; then
                    say "TOTAL_LIMIT ($TOTAL_LIMIT s) reached: no more measurements"
                    break 3
                fi
                say "---- $sc, $s, run $run of $RUNS"
                "run_$sc" "$s" "$run"
            done
        done
    done
    python3 "$SUMMARY" table "$RUNS_FILE" "$RESULTS_DIR/meta.json" >"$RESULTS_DIR/results.md"
    say "comparison table ($RESULTS_DIR/results.md):"
    cat "$RESULTS_DIR/results.md"
    say "per-run figures: $RUNS_FILE; raw outputs: $RESULTS_DIR/raw; logs: $LOGDIR"
}

main "$@"
