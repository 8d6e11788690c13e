#!/usr/bin/env bash
# A throwaway 3-node Garage cluster (S3-compatible, replication factor 3) on
# 127.0.0.1, for the S3 storage tests (issue 16).
#
#   eval "$(scripts/garage.sh start)"   # starts it; prints the env to export
#   scripts/garage.sh env               # prints that env again
#   scripts/garage.sh stop              # stops the nodes, removes their data
#   scripts/garage.sh kill-node N       # SIGKILLs node N (1-3) alone, as a crash would
#   scripts/garage.sh start-node N      # starts node N again on its data, reconnects it
#
# kill-node and start-node are for failure tests (scripts/scale-test.sh):
# with replication factor 3, the two other nodes keep a quorum. The S3
# endpoint printed by `start` is node 1's, so kill node 2 or 3 to keep it.
#
# Garage is installed if missing: `cargo install garage --version 2.5.0
# --locked` into ${FERRY_TOOLS:-~/.cache/ferry-tools} (outside the clone,
# reused by later runs; about 13 minutes the first time). The nodes live in
# ${FERRY_GARAGE_DIR:-$TMPDIR/ferry-garage}. The key is a fixed test key:
# this cluster holds nothing worth protecting and is gone after `stop`.
# Progress goes to stderr; only the `export` lines go to stdout.
set -euo pipefail

GARAGE_VERSION=2.5.0
TOOLS="${FERRY_TOOLS:-$HOME/.cache/ferry-tools}"
GARAGE="$TOOLS/bin/garage"
DIR="${FERRY_GARAGE_DIR:-${TMPDIR:-/tmp}/ferry-garage}"
BUCKET=ferry-test
REGION=garage
KEY_ID=GK0123456789abcdef01234567
KEY_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
ADMIN_TOKEN=ferry-test-admin-token

say() { echo "garage.sh: $*" >&2; }

install_garage() {
  if [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    return 0
  fi
  say "installing garage $GARAGE_VERSION into $TOOLS (cargo install, about 13 minutes)"
  # Its own temporary target folder: not the workspace's.
  env -u CARGO_TARGET_DIR cargo install garage --version "$GARAGE_VERSION" --locked --root "$TOOLS" >&2
}

# N free TCP ports on 127.0.0.1, one per line.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

# Waits (bounded) until `$@` succeeds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  say "timed out waiting for $what"
  return 1
}

http_ok() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"
}

print_env() {
  [ -f "$DIR/env" ] || { say "not running (no $DIR/env)"; return 1; }
  cat "$DIR/env"
}

stop() {
  if [ -f "$DIR/pids" ]; then
    while read -r pid; do
      kill "$pid" 2>/dev/null || true
    done <"$DIR/pids"
    while read -r pid; do
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done <"$DIR/pids"
  fi
  rm -rf "$DIR"
}

# Node N's line in the pids file (1-3), checked.
node_arg() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) say "expected a node number 1, 2 or 3, got '${1:-}'"; return 1 ;;
  esac
  [ -f "$DIR/pids" ] || { say "not running (no $DIR/pids)"; return 1; }
}

kill_node() {
  node_arg "$1"
  local pid
  pid="$(sed -n "${1}p" "$DIR/pids")"
  kill -9 "$pid" 2>/dev/null || { say "node $1 (pid $pid) was not running"; return 0; }
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  say "killed node $1 (pid $pid)"
}

start_node() {
  node_arg "$1"
  local n=$1 pid
  pid="$(sed -n "${n}p" "$DIR/pids")"
  if kill -0 "$pid" 2>/dev/null; then
    say "node $n (pid $pid) is already running"
    return 0
  fi
  RUST_LOG=warn "$GARAGE" -c "$DIR/n$n.toml" server >>"$DIR/n$n.log" 2>&1 &
  sed -i "${n}s/.*/$!/" "$DIR/pids"
  wait_for "node $n" "$GARAGE" -c "$DIR/n$n.toml" status
  # A restarted node answers 503 for seconds unless it dials the others itself.
  local i
  for i in 1 2 3; do
    [ "$i" = "$n" ] && continue
    wait_for "node $n to reach node $i" "$GARAGE" -c "$DIR/n$n.toml" node connect \
      "$("$GARAGE" -c "$DIR/n$i.toml" node id -q 2>/dev/null)"
  done
  wait_for "node $n health" http_ok "http://127.0.0.1:$(cat "$DIR/n$n.admin")/health"
  say "node $n up again (pid $(sed -n "${n}p" "$DIR/pids"))"
}

start() {
  install_garage
  if [ -f "$DIR/pids" ]; then stop; fi
  mkdir -p "$DIR"
  # A start that fails half-way leaves no node running.
  trap 'say "start failed; stopping the nodes (logs were in $DIR)"; tail -n 5 "$DIR"/n*.log >&2 || true; stop' ERR
  mapfile -t ports < <(free_ports 9)
  # A secret of this cluster's own: with one shared by every cluster on the
  # machine, a node of another (stopped) cluster that still dials a port now
  # ours joins us, and node health waits on peers that are not ours.
  local rpc_secret
  rpc_secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  : >"$DIR/pids"
  for i in 1 2 3; do
    local rpc=${ports[$(((i - 1) * 3))]} s3=${ports[$(((i - 1) * 3 + 1))]} admin=${ports[$(((i - 1) * 3 + 2))]}
    mkdir -p "$DIR/n$i/meta" "$DIR/n$i/data"
    cat >"$DIR/n$i.toml" <<EOF
metadata_dir = "$DIR/n$i/meta"
data_dir = "$DIR/n$i/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$ADMIN_TOKEN"
EOF
    echo "$admin" >"$DIR/n$i.admin"
    [ "$i" = 1 ] && echo "$s3" >"$DIR/s3port"
    RUST_LOG=warn "$GARAGE" -c "$DIR/n$i.toml" server >"$DIR/n$i.log" 2>&1 &
    echo $! >>"$DIR/pids"
  done
  local g1=("$GARAGE" -c "$DIR/n1.toml")
  local ids=()
  for i in 1 2 3; do
    # `status` needs the daemon's RPC; `node id` alone would not.
    wait_for "node $i" "$GARAGE" -c "$DIR/n$i.toml" status
    ids+=("$("$GARAGE" -c "$DIR/n$i.toml" node id -q 2>/dev/null)")
  done
  wait_for "node 1 to reach node 2" "${g1[@]}" node connect "${ids[1]}"
  wait_for "node 1 to reach node 3" "${g1[@]}" node connect "${ids[2]}"
  for id in "${ids[@]}"; do
    "${g1[@]}" layout assign -z dc1 -c 1G "${id%@*}" >&2
  done
  "${g1[@]}" layout apply --version 1 >&2
  for i in 1 2 3; do
    wait_for "node $i health" http_ok "http://127.0.0.1:$(cat "$DIR/n$i.admin")/health"
  done
  "${g1[@]}" bucket create "$BUCKET" >&2
  "${g1[@]}" key import --yes -n ferry-test "$KEY_ID" "$KEY_SECRET" >&2
  "${g1[@]}" bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >&2
  cat >"$DIR/env" <<EOF
export FERRY_TEST_S3_ENDPOINT=http://127.0.0.1:$(cat "$DIR/s3port")
export FERRY_TEST_S3_BUCKET=$BUCKET
export FERRY_TEST_S3_REGION=$REGION
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
EOF
  say "3 nodes up (replication factor 3), bucket $BUCKET; data and logs in $DIR"
  print_env
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  kill-node) kill_node "${2:-}" ;;
  start-node) start_node "${2:-}" ;;
  *) echo "usage: $0 start|stop|env|kill-node N|start-node N" >&2; exit 2 ;;
esac
