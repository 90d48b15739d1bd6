#!/usr/bin/env bash
# Make sure PostgreSQL 15's server programs (initdb, postgres) are installed: the archive
# tests start their own instances on free ports (crates/testkit/src/postgres.rs) so that
# they can kill and restart them. Idempotent; installs the Debian package postgresql-15
# only when the programs are missing, without starting its service (the tests never use
# the standard port).
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
if [ -x "$bin/initdb" ] && [ -x "$bin/postgres" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "scripts/postgres/install.sh: $bin/initdb missing; install as root: apt-get install -y postgresql-15" >&2
  exit 1
fi
echo "[postgres-install] installing postgresql-15" >&2
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
fi
status=0
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; } || status=$?
[ "$own_policy" = 1 ] && rm -f "$policy"
exit "$status"
