#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and CI (issue 16): a fresh cluster in a
# temporary folder, listening on 127.0.0.1 and a free port, with a database
# `ferry` owned by a role `ferry` whose password is generated here at each
# start (never stored in the repository). The role may create databases, so
# that tests can each take a fresh one (FERRY_TEST_DATABASE_URL).
#
#   scripts/postgres.sh start [STATE_DIR]   prints FERRY_DATABASE_URL's value on stdout
#                                           and writes STATE_DIR/env (`. STATE_DIR/env`)
#   scripts/postgres.sh stop  [STATE_DIR]   stops it and removes its files; a no-op
#                                           when nothing runs there
#
# STATE_DIR defaults to $FERRY_PG_STATE, else /tmp/ferry-pg-$UID. The cluster
# itself lives in its own mktemp folder named in STATE_DIR/pgroot, so that
# STATE_DIR may be private to the caller even when the server runs as the
# `postgres` user (as root, every PostgreSQL binary runs through
# `runuser -u postgres --`; otherwise as the caller).
#
# Exit codes: 0 done, 1 failed, 3 PostgreSQL binaries not found (tests skip).
# Every wait is bounded (pg_ctl -t).
set -euo pipefail

cmd="${1:-}"
state="${2:-${FERRY_PG_STATE:-/tmp/ferry-pg-$(id -u)}}"
wait_secs=30

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local dir
  for dir in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/psql" ] && { echo "$dir"; return 0; }
  done
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir)"
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  fi
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

# Runs a PostgreSQL binary as the owner of the cluster.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
  [ -f "$state/pgroot" ] || return 1
  local root
  root="$(cat "$state/pgroot")"
  [ -d "$root/data" ] && as_pg "$bindir/pg_ctl" -D "$root/data" status >/dev/null 2>&1
}

start() {
  if running; then
    # Idempotent: the same cluster, the same URL.
    sed -n "s/^export FERRY_DATABASE_URL='\(.*\)'$/\1/p" "$state/env"
    return 0
  fi
  # A stale state folder (a crash, a reboot): clear it first.
  stop >/dev/null 2>&1 || true
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    say "running as root needs the 'postgres' user (apt-get install postgresql)"
    return 1
  fi

  mkdir -p "$state"
  chmod 700 "$state"
  local root
  root="$(mktemp -d "${TMPDIR:-/tmp}/ferry-pg.XXXXXX")"
  echo "$root" >"$state/pgroot"
  mkdir -p "$root/sock"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$root"
  chmod 755 "$root"

  as_pg "$bindir/initdb" -D "$root/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$root/initdb.log" 2>&1 \
    || { cat "$root/initdb.log" >&2; say "initdb failed"; return 1; }

  # A free port can be taken between the probe and the bind: try a few.
  local port="" tries
  for tries in 1 2 3; do
    port="$(free_port)"
    if as_pg "$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -w -t "$wait_secs" \
      -o "-k $root/sock -p $port -h 127.0.0.1 -c fsync=off -c full_page_writes=off" start >/dev/null 2>&1; then
      break
    fi
    port=""
  done
  if [ -z "$port" ]; then
    tail -n 20 "$root/server.log" >&2 || true
    say "the server did not start"
    return 1
  fi

  # URL-safe characters only: nothing to escape in the URL or in SQL.
  local password
  password="$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  # Over the Unix socket (trust), with the password on stdin, not in argv.
  as_pg "$bindir/psql" -q -h "$root/sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE ROLE ferry LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE ferry OWNER ferry;
SQL

  local url="postgres://ferry:$password@127.0.0.1:$port/ferry"
  (umask 077; echo "export FERRY_DATABASE_URL='$url'" >"$state/env")
  say "PostgreSQL on 127.0.0.1:$port (cluster $root; . $state/env)"
  echo "$url"
}

stop() {
  if [ ! -f "$state/pgroot" ]; then
    say "nothing to stop in $state"
    return 0
  fi
  local root
  root="$(cat "$state/pgroot")"
  if [ -d "$root/data" ]; then
    as_pg "$bindir/pg_ctl" -D "$root/data" -m fast -w -t "$wait_secs" stop >/dev/null 2>&1 \
      || as_pg "$bindir/pg_ctl" -D "$root/data" -m immediate -w -t "$wait_secs" stop >/dev/null 2>&1 \
      || true
  fi
  case "$root" in
    */ferry-pg.*) rm -rf "$root" ;;
  esac
  rm -f "$state/env" "$state/pgroot"
  rmdir "$state" 2>/dev/null || true
  say "stopped"
}

case "$cmd" in
  start | stop) ;;
  *)
    echo "usage: $0 start|stop [STATE_DIR]" >&2
    exit 2
    ;;
esac
if ! bindir="$(find_bindir)"; then
  say "PostgreSQL binaries not found (apt-get install postgresql)"
  [ "$cmd" = stop ] && exit 0
  exit 3
fi
"$cmd"
