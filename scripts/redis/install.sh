#!/usr/bin/env bash
# Make sure redis-server and redis-cli (Redis >= 7: sharded pub/sub) are installed: the
# Redis engine's tests start them (crates/testkit). Idempotent; installs the Debian
# packages redis-server and redis-tools only when a binary is missing.
set -euo pipefail

log() { printf '[redis-install] %s\n' "$*" >&2; }

if [ -x /usr/bin/redis-server ] && [ -x /usr/bin/redis-cli ]; then
  exit 0
fi
log "installing redis-server and redis-tools"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
# The package may start a service on the standard port: left alone, the tests never
# use that port.
