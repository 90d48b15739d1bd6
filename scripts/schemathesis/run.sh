#!/usr/bin/env bash
# Property-based testing of the HTTP API against its own OpenAPI document (schemathesis,
# pinned, installed into a venv under $STARLING_CACHE on first use). Starts the release
# binary on a free port with an API key and a few namespaces, then runs every operation
# with all checks twice: with the key, and without it (every answer must then be a
# documented 401). Fails on any failed check.
#
#   scripts/schemathesis/run.sh <starling binary> <report dir>
#
# Tunables (environment): ST_MAX_EXAMPLES (default 100 per operation), ST_SEED (1).
set -euo pipefail
bin="$1"
out="$2"
version=4.32.5
cache="${STARLING_CACHE:-$HOME/.cache/starling}"
venv="$cache/schemathesis-$version"
if [ ! -x "$venv/bin/st" ]; then
  echo "installing schemathesis $version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

rm -rf "$out"
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key="schemathesis-key"
# A realistic node: a message log (durable publishes are tried), a namespace with history
# and one private one. Messages up to 1 MiB, so that generated `data` stays within the
# limit (a 413 to a schema-valid body would be a failed check, not a finding).
"$bin" serve --listen "127.0.0.1:$port" --api-key "$key" \
  --set "storage.dir=\"$out/data\"" \
  --set websocket.max_message_size=1048576 \
  --set client.max_queue_bytes=4194304 \
  --set namespaces.chat.history_size=10 \
  --set namespaces.chat.allow_publish=true \
  --set namespaces.secret.private=true >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening" "$out/server.log" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$out/server.log"; exit 1; }
  sleep 0.1
done

st_run() {
  local name="$1"
  shift
  echo "-- schemathesis: $name"
  "$venv/bin/st" run "http://127.0.0.1:$port/api/openapi.json" \
    --checks all \
    --max-examples "${ST_MAX_EXAMPLES:-100}" \
    --seed "${ST_SEED:-1}" \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check all \
    --report junit --report-dir "$out/$name" \
    "$@"
}
status=0
st_run with-key --header "Authorization: apikey $key" || status=1
st_run without-key || status=1
kill -0 $server 2>/dev/null || { echo "the server died during the schemathesis run"; cat "$out/server.log"; exit 1; }
exit $status
