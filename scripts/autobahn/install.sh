#!/usr/bin/env bash
# Install the Autobahn|Testsuite (`wstest`, Python 2.7 only) into a cached virtualenv.
#
#   scripts/autobahn/install.sh            # prints the path of wstest on the last line
#
# Idempotent: when the venv already exists, its marker matches the hash of the pin list
# and `wstest --help` works, it does nothing.
#
# Environment:
#   STARLING_CACHE     cache root (default: $HOME/.cache/starling)
#   AUTOBAHN_VENV      venv location (default: $STARLING_CACHE/autobahn-venv)
#   AUTOBAHN_PYTHON2   explicit Python 2.7 interpreter (default: pyenv's 2.7.18)
#   AUTOBAHN_PYTHON3   Python 3 used to bootstrap `virtualenv` (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements-py27.txt"
# virtualenv >= 20.22 can no longer create Python 2.7 environments.
virtualenv_pin="virtualenv==20.21.1"

cache="${STARLING_CACHE:-$HOME/.cache/starling}"
venv="${AUTOBAHN_VENV:-$cache/autobahn-venv}"
bootstrap="$cache/autobahn-bootstrap"
marker="$venv/.starling-autobahn-installed"

log() { printf '[autobahn-install] %s\n' "$*" >&2; }
die() { printf '[autobahn-install] ERROR: %s\n' "$*" >&2; exit 1; }

# Keep every cache/data dir that pip and virtualenv touch inside $cache,
# never under ~/.cache or ~/.local directly.
export PIP_CACHE_DIR="$cache/pip-cache"
export XDG_DATA_HOME="$cache/xdg-data"
export XDG_CACHE_HOME="$cache/xdg-cache"
export VIRTUALENV_OVERRIDE_APP_DATA="$cache/virtualenv-app-data"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_PYTHON_VERSION_WARNING=1
export PIP_NO_INPUT=1
unset PIP_USER PYTHONUSERBASE PYTHONHOME PYTHONPATH VIRTUAL_ENV || true

[ -f "$req" ] || die "pin list $req is missing"

pin_hash() {
  # The hash covers the pin list, the virtualenv pin and this script's layout version.
  { cat "$req"; printf '%s\nlayout=1\n' "$virtualenv_pin"; } | sha256sum | cut -d' ' -f1
}
want_hash="$(pin_hash)"

venv_ok() {
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$want_hash" ] &&
    [ -x "$venv/bin/wstest" ] && "$venv/bin/wstest" --help >/dev/null 2>&1
}

if venv_ok; then
  log "up to date: $venv (pin hash ${want_hash:0:12})"
  echo "$venv/bin/wstest"
  exit 0
fi

# --- find Python 2.7 -------------------------------------------------------------
find_python2() {
  local looked=() cand pyenv_root=""
  if [ -n "${AUTOBAHN_PYTHON2:-}" ]; then
    looked+=("\$AUTOBAHN_PYTHON2=$AUTOBAHN_PYTHON2")
    if "$AUTOBAHN_PYTHON2" -c 'import sys, ssl; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
      echo "$AUTOBAHN_PYTHON2"; return 0
    fi
  else
    if command -v pyenv >/dev/null 2>&1; then
      pyenv_root="$(pyenv root 2>/dev/null || true)"
    fi
    pyenv_root="${pyenv_root:-${PYENV_ROOT:-$HOME/.pyenv}}"
    local cands=("$pyenv_root/versions/2.7.18/bin/python2.7")
    # any other pyenv 2.7.x, then a system python2.7
    for cand in "$pyenv_root"/versions/2.7.*/bin/python2.7; do
      if [ -e "$cand" ] && [ "$cand" != "${cands[0]}" ]; then cands+=("$cand"); fi
    done
    if command -v python2.7 >/dev/null 2>&1; then cands+=("$(command -v python2.7)"); fi
    for cand in "${cands[@]}"; do
      looked+=("$cand")
      [ -x "$cand" ] || continue
      if "$cand" -c 'import sys, ssl; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
        echo "$cand"; return 0
      fi
    done
  fi
  {
    echo "[autobahn-install] ERROR: no usable Python 2.7 (with the ssl module) found."
    echo "  wstest (autobahntestsuite) is Python 2 only; Debian 12 ships no python2."
    echo "  Looked at:"
    printf '    %s\n' "${looked[@]}"
    echo "  Get one with:   pyenv install 2.7.18   (needs libssl-dev, zlib1g-dev, libbz2-dev, ...)"
    echo "  or point AUTOBAHN_PYTHON2 at a Python 2.7 interpreter."
  } >&2
  return 1
}

py2="$(find_python2)" || exit 1
log "python 2.7: $py2"

py3="${AUTOBAHN_PYTHON3:-python3}"
command -v "$py3" >/dev/null 2>&1 || die "need a Python 3 ($py3) to bootstrap virtualenv"

mkdir -p "$cache"

# Serialize concurrent installs (e.g. parallel CI jobs sharing a cache).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.autobahn-install.lock"
  flock 9
  if venv_ok; then
    log "up to date after waiting for another install: $venv"
    echo "$venv/bin/wstest"
    exit 0
  fi
fi

start=$(date +%s)

# --- bootstrap virtualenv (in a Python 3 venv) ------------------------------------
if ! "$bootstrap/bin/python" -c 'import virtualenv, sys; sys.exit(virtualenv.__version__ != sys.argv[1])' \
     "${virtualenv_pin#virtualenv==}" >/dev/null 2>&1; then
  log "creating bootstrap venv $bootstrap with $virtualenv_pin (python: $("$py3" -c 'import sys; print(sys.executable)'))"
  rm -rf "$bootstrap"
  "$py3" -m venv "$bootstrap"
  "$bootstrap/bin/python" -m pip install -q "$virtualenv_pin"
else
  log "bootstrap venv ok: $bootstrap"
fi

# --- the Python 2.7 venv ---------------------------------------------------------
log "creating Python 2.7 venv $venv"
rm -rf "$venv"
"$bootstrap/bin/python" -m virtualenv -q --no-periodic-update \
  --app-data "$VIRTUALENV_OVERRIDE_APP_DATA" -p "$py2" "$venv"

log "installing pinned requirements from ${req#"$here"/} (wsaccel is compiled with gcc)"
"$venv/bin/python" -m pip install -q -r "$req"

"$venv/bin/wstest" --help >/dev/null 2>&1 || die "wstest was installed but '$venv/bin/wstest --help' fails"
echo "$want_hash" >"$marker"
log "done in $(( $(date +%s) - start ))s: $("$venv/bin/python" -c 'import autobahntestsuite as a; print("autobahntestsuite " + a.__version__)' 2>/dev/null || echo wstest)"
echo "$venv/bin/wstest"
