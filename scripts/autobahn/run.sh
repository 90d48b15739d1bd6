#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against an already running WebSocket server
# and judge the result.
#
#   scripts/autobahn/run.sh URL OUTDIR [options]
#
#   --cases PATS     comma-separated case patterns (repeatable), default '*'
#   --exclude PATS   comma-separated case patterns to exclude (repeatable), default none
#   --expect N       required number of case results (517 = all incl. 12.*/13.* compression,
#                    301 = without); default: the number of cases the selection resolves to
#   --jobs N         split the cases across N parallel wstest processes (default 1)
#   --summary FILE   also write a Markdown conformance summary to FILE
#   --agent NAME     agent name in the reports (default: starling)
#
# The caller starts and stops the server. wstest always exits 0, so the verdict comes from
# OUTDIR/index.json (judge.py). Exit status: 0 pass, 1 conformance failure, 2 usage/setup error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { printf '[autobahn-run] %s\n' "$*" >&2; }
die() { printf '[autobahn-run] ERROR: %s\n' "$*" >&2; exit 2; }

[ $# -ge 2 ] || usage
url="$1"; outdir="$2"; shift 2
cases=(); exclude=(); expect=""; jobs=1; summary=""; agent="starling"
while [ $# -gt 0 ]; do
  case "$1" in
    --cases)   [ $# -ge 2 ] || usage; cases+=("$2"); shift 2 ;;
    --exclude) [ $# -ge 2 ] || usage; exclude+=("$2"); shift 2 ;;
    --expect)  [ $# -ge 2 ] || usage; expect="$2"; shift 2 ;;
    --jobs)    [ $# -ge 2 ] || usage; jobs="$2"; shift 2 ;;
    --summary) [ $# -ge 2 ] || usage; summary="$2"; shift 2 ;;
    --agent)   [ $# -ge 2 ] || usage; agent="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1" ;;
  esac
done
case "$url" in ws://*|wss://*) ;; *) die "URL must start with ws:// or wss:// (got '$url')" ;; esac
case "$jobs" in ''|*[!0-9]*|0) die "--jobs needs a positive integer" ;; esac
case "$expect" in *[!0-9]*) die "--expect needs a non-negative integer" ;; esac

command -v python3 >/dev/null 2>&1 || die "python3 is needed for judge.py"

# Install (or verify, fast when cached) wstest; install.sh prints its path last.
wstest="$("$here/install.sh" | tail -n 1)"
venv_python="$(dirname "$wstest")/python"

# Fail early and clearly when nothing listens at URL (wstest would just write an empty report).
python3 - "$url" <<'EOF' || die "no server is accepting connections at $url (start it first)"
import socket, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
port = u.port or (443 if u.scheme == "wss" else 80)
try:
    socket.create_connection((u.hostname, port), timeout=5).close()
except OSError as e:
    sys.exit(f"[autobahn-run] cannot connect to {u.hostname}:{port}: {e}")
EOF

# Fresh output dir: stale per-case files from a previous run must not leak into this one.
rm -rf "$outdir"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"

plan_args=()
for c in ${cases[@]+"${cases[@]}"}; do plan_args+=(--cases "$c"); done
for e in ${exclude[@]+"${exclude[@]}"}; do plan_args+=(--exclude "$e"); done
mapfile -t specs < <("$venv_python" "$here/wstest_helper.py" plan "$outdir" "$url" "$agent" "$jobs" \
  ${plan_args[@]+"${plan_args[@]}"}) || die "could not plan the run"
[ "${#specs[@]}" -ge 1 ] || die "could not plan the run"
ncases="$(wc -l <"$outdir/cases.txt")"
[ -n "$expect" ] || expect="$ncases"
log "url=$url agent=$agent cases=$ncases (expect $expect) jobs=${#specs[@]} outdir=$outdir"

pids=()
cleanup() {
  local p
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

start=$(date +%s)
if [ "${#specs[@]}" -eq 1 ]; then
  log "running: wstest -m fuzzingclient -s ${specs[0]}  (log: $outdir/wstest.log)"
  (cd "$outdir" && exec "$wstest" -m fuzzingclient -s "${specs[0]}") >"$outdir/wstest.log" 2>&1 &
  pids+=($!)
  wait "${pids[0]}" || log "wstest exited with status $? (see $outdir/wstest.log)"
else
  jobdirs=()
  for spec in "${specs[@]}"; do
    jobdir="$(dirname "$spec")"
    jobdirs+=("$jobdir")
    log "running: wstest -m fuzzingclient -s $spec  ($(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["cases"]))' "$spec") cases, log: $jobdir/wstest.log)"
    (cd "$jobdir" && exec "$wstest" -m fuzzingclient -s "$spec") >"$jobdir/wstest.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || log "wstest job $i exited with status $? (see ${jobdirs[$i]}/wstest.log)"
  done
  "$venv_python" "$here/wstest_helper.py" merge "$outdir" "${jobdirs[@]}" >&2 ||
    log "merging the job reports failed; judging what is there"
fi
pids=()
trap - INT TERM
log "wstest finished in $(( $(date +%s) - start ))s; report: $outdir/index.html"

judge_args=("$outdir" --expect "$expect" --agent "$agent" --cases-file "$outdir/cases.txt")
[ -z "$summary" ] || judge_args+=(--summary "$summary")
exec python3 "$here/judge.py" "${judge_args[@]}"
