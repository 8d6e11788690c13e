#!/usr/bin/env bash
# Two ferry servers as one (issue 16): both on the same S3 bucket (a 3-node
# Garage cluster, replication factor 3) and the same PostgreSQL database,
# with the same TLS certificate and SSH host key, as docs/DEPLOY.md sets up.
# Proves, one line per check (`PASS name` / `FAIL name: why`):
#
#   1 users-shared       a user added beside server A logs in on server B
#   2 resume-across      an upload cut through A resumes through B, and
#                        downloads identical through A
#   3 quota-shared       one user's uploads through A and B at once never
#                        together pass the user's quota
#   4 ban-shared         a wrong-password flood through A bans on B
#   5 storage-node-loss  killing one Garage node during a 1 GiB upload loses
#                        nothing (the upload completes, or a resume does)
#   6 restart            restarting both servers loses nothing: files are
#                        identical after, and a cut upload resumes after it
#
# Check 4 runs last: its ban holds 127.0.0.1, the only client address here.
#
#   bash scripts/scale-test.sh            # builds the debug `ferry`
#   FERRY=path/to/ferry bash scripts/scale-test.sh
#
# Services: the PostgreSQL named by FERRY_TEST_DATABASE_URL (a fresh database
# is created in it and dropped at the end) and the Garage cluster of
# FERRY_TEST_S3_ENDPOINT (started by `scripts/garage.sh start` with the same
# FERRY_GARAGE_DIR, which check 5 needs to stop a node), as .ci/run starts
# them; without that environment the script starts its own (scripts/postgres.sh,
# scripts/garage.sh) and stops them on exit. Everything listens on 127.0.0.1;
# every wait is bounded; all state lives in one mktemp folder, removed on exit.
# Exit code: 0 when every check passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

MIB=$((1 << 20))
# A cut upload is held after this many bytes (S3 parts are 5 MiB: several
# parts are stored by then, so a resume has something to resume from).
CUT_AT=$((20 * MIB))
# Bounds of the waits, seconds.
T_CMD=${SCALE_CMD_TIMEOUT:-120}
T_BIG=${SCALE_BIG_TIMEOUT:-600}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-scale.XXXXXX")
started_pids=()
own_pg="" own_garage="" shared_db="" killed_node=""
failures=0

say() { echo "scale-test: $*" >&2; }

stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do stop_pid "$pid"; done
  wait 2>/dev/null
  if [ -n "$killed_node" ] && [ -z "$own_garage" ]; then
    # A node of someone else's cluster: give it back.
    bash scripts/garage.sh start-node "$killed_node" >/dev/null 2>&1 || true
  fi
  if [ -n "$shared_db" ]; then
    "$PSQL" -q "$FERRY_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $shared_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  [ -n "$own_garage" ] && FERRY_GARAGE_DIR="$own_garage" bash scripts/garage.sh stop >/dev/null 2>&1
  [ -n "$own_pg" ] && bash scripts/postgres.sh stop "$own_pg" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $1"; }
fail() {
  echo "FAIL $1: $2"
  failures=$((failures + 1))
}

# ------------------------------------------------------------------ binary
if [ -z "${FERRY:-}" ]; then
  say "building ferry (cargo build -p ferry-cli)"
  cargo build --quiet -p ferry-cli || { echo "FAIL build: cargo build -p ferry-cli"; exit 1; }
  FERRY="${CARGO_TARGET_DIR:-$root/target}/debug/ferry"
fi
[ -x "$FERRY" ] || { echo "FAIL build: no ferry binary at $FERRY"; exit 1; }
say "ferry: $FERRY ($("$FERRY" --version))"

# ------------------------------------------------------------------ services
# psql of the installed PostgreSQL (Debian's /usr/bin/psql is a wrapper that wants a local cluster).
PSQL=$(ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1)
PSQL=${PSQL:-psql}
if [ -n "${FERRY_TEST_DATABASE_URL:-}" ]; then
  shared_db="ferry_scale_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  "$PSQL" -q "$FERRY_TEST_DATABASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $shared_db" >/dev/null \
    || { echo "FAIL setup: cannot create a database in FERRY_TEST_DATABASE_URL"; shared_db=""; exit 1; }
  DB_URL="${FERRY_TEST_DATABASE_URL%/*}/$shared_db"
else
  own_pg="$TMP/pg"
  DB_URL=$(bash scripts/postgres.sh start "$own_pg" 2>"$TMP/pg-start.log") \
    || { echo "FAIL setup: scripts/postgres.sh start:"; tail -n 5 "$TMP/pg-start.log"; exit 1; }
fi
if [ -z "${FERRY_TEST_S3_ENDPOINT:-}" ]; then
  own_garage="$TMP/garage"
  export FERRY_GARAGE_DIR="$own_garage"
  garage_env=$(bash scripts/garage.sh start 2>"$TMP/garage-start.log") \
    || { echo "FAIL setup: scripts/garage.sh start:"; tail -n 5 "$TMP/garage-start.log"; exit 1; }
  eval "$garage_env"
fi
for v in FERRY_TEST_S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  [ -n "${!v:-}" ] || { echo "FAIL setup: FERRY_TEST_S3_ENDPOINT is set but $v is not"; exit 1; }
done
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
say "S3: $FERRY_TEST_S3_ENDPOINT bucket $FERRY_TEST_S3_BUCKET ($([ -n "$own_garage" ] && echo "own Garage" || echo "shared"));" \
  "PostgreSQL database ${shared_db:-ferry (own server)}"

# ------------------------------------------------------------------ servers
prefix="scale-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')/"
CFG="$TMP/ferry.toml"
# One file for both servers (DEPLOY.md: keep it identical). A small ban
# threshold keeps check 4's flood short.
cat >"$CFG" <<EOF
[storage]
kind = "s3"
endpoint = "$FERRY_TEST_S3_ENDPOINT"
bucket = "$FERRY_TEST_S3_BUCKET"
region = "${FERRY_TEST_S3_REGION:-garage}"
path_style = true
prefix = "$prefix"
part_size = $((5 * MIB))

[users]
kind = "postgres"

[auth]
scram_iterations = 4096
free_failures = 2
ban_after = 5
ban_secs = 600
max_delay_ms = 300
EOF

declare -A port sftp_port pid_of
# Starts server NAME (a or b) on its own data folder; sets port[NAME].
start_server() {
  local name=$1 log="$TMP/server-$1.log"
  mkdir -p "$TMP/data-$name"
  FERRY_DATABASE_URL="$DB_URL" "$FERRY" serve --data "$TMP/data-$name" --config "$CFG" \
    --listen 127.0.0.1:0 --sftp-listen 127.0.0.1:0 >>"$log" 2>&1 &
  pid_of[$name]=$!
  started_pids+=("$!")
  local p="" s=""
  for _ in $(seq 1 300); do
    p=$(sed -n 's/^ferry listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | tail -n 1)
    s=$(sed -n 's/^sftp listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | tail -n 1)
    [ -n "$p" ] && [ -n "$s" ] && break
    kill -0 "${pid_of[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$p" ] || [ -z "$s" ]; then
    echo "FAIL setup: server $name did not start:"
    tail -n 20 "$log"
    exit 1
  fi
  port[$name]=$p sftp_port[$name]=$s
}

# Stops server NAME with SIGTERM (a graceful shutdown), bounded.
stop_server() {
  local pid=${pid_of[$1]}
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -9 "$pid"; say "server $1 ignored SIGTERM for 30 s: killed"; }
  wait "$pid" 2>/dev/null
  # Truncate the log, so that start_server reads the new ports only.
  : >"$TMP/server-$1.log"
}

start_server a
# DEPLOY.md, step 2: the certificate, key and host key of the first server
# go to every other one.
mkdir -p "$TMP/data-b"
cp -p "$TMP/data-a/cert.pem" "$TMP/data-a/key.pem" "$TMP/data-a/ssh_host_ed25519_key" "$TMP/data-b/"
start_server b
fp_of() { sed -n 's/^certificate fingerprint: \(.*\)$/\1/p' "$TMP/server-$1.log" | tail -n 1; }
hk_of() { sed -n 's/^ssh host key fingerprint: \(.*\)$/\1/p' "$TMP/server-$1.log" | tail -n 1; }
FP=$(fp_of a)
if [ -z "$FP" ] || [ "$FP" != "$(fp_of b)" ] || [ "$(hk_of a)" != "$(hk_of b)" ]; then
  echo "FAIL setup: the servers do not present the same certificate and host key"
  exit 1
fi
say "server A on 127.0.0.1:${port[a]}, B on 127.0.0.1:${port[b]} (same certificate $FP), S3 prefix $prefix"

# ------------------------------------------------------------------ helpers
# A TCP relay 127.0.0.1:0 -> 127.0.0.1:UPSTREAM that counts the bytes the
# client sends (in FILE.count) and, with HOLD > 0, stops relaying them after
# HOLD bytes (FILE.held appears): a transfer frozen mid-way, to be cut.
cat >"$TMP/relay.py" <<'EOF'
import os, socket, sys, threading
upstream, hold, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
total, lock = 0, threading.Lock()

def note(name, text):
    with open(base + name + ".tmp", "w") as f:
        f.write(text)
    os.replace(base + name + ".tmp", base + name)

def up(c, u):
    global total
    last = 0
    try:
        while True:
            if hold and total >= hold:
                note(".count", str(total))
                note(".held", "")
                threading.Event().wait()  # until the relay is killed
            data = c.recv(1 << 20)
            if not data:
                break
            u.sendall(data)
            with lock:
                total += len(data)
                if total - last >= 4 << 20:
                    last = total
                    note(".count", str(total))
    except OSError:
        pass
    note(".count", str(total))
    try:
        u.shutdown(socket.SHUT_WR)
    except OSError:
        pass

def down(u, c):
    try:
        while True:
            data = u.recv(1 << 20)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    try:
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
note(".count", "0")
note(".port", str(s.getsockname()[1]))
while True:
    c, _ = s.accept()
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=up, args=(c, u), daemon=True).start()
    threading.Thread(target=down, args=(u, c), daemon=True).start()
EOF
relay_n=0
# relay UPSTREAM_PORT HOLD: starts a relay; sets relay_port, relay_pid, relay_base.
relay() {
  relay_n=$((relay_n + 1))
  relay_base="$TMP/relay$relay_n"
  python3 "$TMP/relay.py" "$1" "$2" "$relay_base" &
  relay_pid=$!
  started_pids+=("$relay_pid")
  for _ in $(seq 1 100); do [ -s "$relay_base.port" ] && break; sleep 0.05; done
  relay_port=$(cat "$relay_base.port" 2>/dev/null)
  [ -n "$relay_port" ] || { echo "FAIL setup: the relay did not start"; exit 1; }
}
relay_count() { cat "$relay_base.count" 2>/dev/null || echo 0; }

# ferry CMD... as USER (password PASS) with the pinned certificate; bounded.
# Output in $TMP/out, $TMP/err.
fy() {
  local user_pass=$1; shift
  FERRY_PASSWORD="$user_pass" FERRY_STATE_DIR="$TMP/state" \
    timeout "$T_CMD" "$FERRY" "$@" --fingerprint "$FP" --known-hosts "$TMP/known_hosts" -q \
    </dev/null >"$TMP/out" 2>"$TMP/err"
}
# ferry user add NAME PASS [ARGS...] beside server A (its data folder and configuration).
user_add() {
  local name=$1 pw=$2; shift 2
  echo "$pw" | FERRY_DATABASE_URL="$DB_URL" timeout "$T_CMD" "$FERRY" user add "$name" --password-stdin \
    --config "$CFG" --data "$TMP/data-a" "$@" >"$TMP/out" 2>"$TMP/err"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# A file of N MiB of random bytes.
random_file() { head -c $(($2 * MIB)) /dev/urandom >"$1"; }
err1() { head -c 300 "$TMP/err" | tr '\n' ' '; }

# cut_upload PORT USER PASS LOCAL REMOTE: `ferry put` through a relay that
# holds after CUT_AT bytes; once held, SIGKILLs the client, then the relay
# (the server sees the connection drop mid-body). 0 when cut as planned.
cut_upload() {
  local up=$1 user=$2 pw=$3 local=$4 remote=$5 client
  relay "$up" "$CUT_AT"
  # No `timeout` wrapper: the SIGKILL below must reach ferry itself.
  FERRY_PASSWORD="$pw" FERRY_STATE_DIR="$TMP/state" "$FERRY" put -q "$local" \
    "$user@127.0.0.1:$relay_port/$remote" --fingerprint "$FP" --known-hosts "$TMP/known_hosts" \
    </dev/null >/dev/null 2>"$TMP/cut.err" &
  client=$!
  local held=1
  for _ in $(seq 1 600); do
    [ -e "$relay_base.held" ] && { held=0; break; }
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$client" 2>/dev/null
  wait "$client" 2>/dev/null
  stop_pid "$relay_pid"
  wait "$relay_pid" 2>/dev/null
  # The server stores the part in flight and the state after the drop.
  sleep 2
  return $held
}

# resume_upload PORT USER PASS LOCAL REMOTE: `ferry put -c` through a
# counting relay; sets resent (bytes the client sent). 0 when it succeeded
# and resumed (did not start over, sent less than the file).
resume_upload() {
  local up=$1 user=$2 pw=$3 local=$4 remote=$5
  relay "$up" 0
  fy "$pw" put -c "$local" "$user@127.0.0.1:$relay_port/$remote"
  local rc=$?
  resent=$(relay_count)
  stop_pid "$relay_pid"
  wait "$relay_pid" 2>/dev/null
  resent=$(relay_count)
  [ $rc = 0 ] || { resume_why="put -c failed: $(err1)"; return 1; }
  grep -q "starting over" "$TMP/err" && { resume_why="started over: $(err1)"; return 1; }
  [ "$resent" -lt "$(($(size "$local") - CUT_AT / 2))" ] \
    || { resume_why="sent $resent bytes of $(size "$local"): not resumed"; return 1; }
  return 0
}

# same_remote PORT USER PASS REMOTE LOCAL: downloads REMOTE and compares its SHA-256 with LOCAL's.
same_remote() {
  local back="$TMP/back.bin"
  rm -f "$back"
  fy "$3" get -f "$2@127.0.0.1:$1/$4" "$back" || { same_why="get $4 failed: $(err1)"; return 1; }
  [ "$(sha "$back")" = "$(sha "$5")" ] || { same_why="$4 downloaded differs from what was uploaded"; return 1; }
  rm -f "$back"
}

# Bytes of a `ferry df` size ("60.0 MiB", "0 B").
df_used() {
  awk 'NR == 2 { m = 1; u = $2
    if (u == "KiB") m = 1024; else if (u == "MiB") m = 1048576; else if (u == "GiB") m = 1073741824
    printf "%.0f\n", $1 * m }' "$TMP/out"
}

# ------------------------------------------------------------------ 1
check_users_shared() {
  user_add carol 'carol pass 1' || { fail users-shared "ferry user add beside A: $(err1)"; return; }
  fy 'carol pass 1' login "carol@127.0.0.1:${port[b]}" \
    || { fail users-shared "login on B refused: $(err1)"; return; }
  grep -q "logged in as carol" "$TMP/out" || { fail users-shared "login on B said: $(cat "$TMP/out")"; return; }
  pass users-shared
}

# ------------------------------------------------------------------ 2
check_resume_across() {
  user_add alice 'alice pass 2' || { fail resume-across "user add: $(err1)"; return; }
  random_file "$TMP/f2.bin" 48
  cut_upload "${port[a]}" alice 'alice pass 2' "$TMP/f2.bin" f2.bin \
    || { fail resume-across "the upload through A never reached $CUT_AT bytes: $(head -c 300 "$TMP/cut.err")"; return; }
  resume_upload "${port[b]}" alice 'alice pass 2' "$TMP/f2.bin" f2.bin \
    || { fail resume-across "through B: $resume_why"; return; }
  same_remote "${port[a]}" alice 'alice pass 2' f2.bin "$TMP/f2.bin" \
    || { fail resume-across "through A: $same_why"; return; }
  say "resume-across: cut after $CUT_AT bytes through A; the resume through B sent $resent of $(size "$TMP/f2.bin")"
  pass resume-across
}

# ------------------------------------------------------------------ 3
check_quota_shared() {
  local quota=$((100 * MIB))
  user_add dave 'dave pass 3' --quota 100MiB || { fail quota-shared "user add: $(err1)"; return; }
  random_file "$TMP/q1.bin" 60
  random_file "$TMP/q2.bin" 60
  local a b ra rb
  FERRY_PASSWORD='dave pass 3' timeout "$T_CMD" "$FERRY" put -q "$TMP/q1.bin" "dave@127.0.0.1:${port[a]}/q1.bin" \
    --fingerprint "$FP" --known-hosts "$TMP/known_hosts" </dev/null >/dev/null 2>"$TMP/q1.err" &
  a=$!
  FERRY_PASSWORD='dave pass 3' timeout "$T_CMD" "$FERRY" put -q "$TMP/q2.bin" "dave@127.0.0.1:${port[b]}/q2.bin" \
    --fingerprint "$FP" --known-hosts "$TMP/known_hosts" </dev/null >/dev/null 2>"$TMP/q2.err" &
  b=$!
  wait "$a"; ra=$?
  wait "$b"; rb=$?
  local ok=0
  [ $ra = 0 ] && ok=$((ok + 1))
  [ $rb = 0 ] && ok=$((ok + 1))
  fy 'dave pass 3' ls -l "dave@127.0.0.1:${port[b]}/" || { fail quota-shared "ls: $(err1)"; return; }
  local stored
  stored=$(awk '{ s += $2 } END { printf "%.0f\n", s }' "$TMP/out")
  local used_a used_b
  fy 'dave pass 3' df "dave@127.0.0.1:${port[a]}" && used_a=$(df_used) || used_a="?"
  fy 'dave pass 3' df "dave@127.0.0.1:${port[b]}" && used_b=$(df_used) || used_b="?"
  say "quota-shared: uploads through A rc=$ra, through B rc=$rb; stored $stored bytes; df used A $used_a, B $used_b"
  [ $ok = 2 ] || say "quota-shared: refused: $(cat "$TMP/q1.err" "$TMP/q2.err" | head -n 1)"
  if [ $ok -gt 1 ]; then
    fail quota-shared "both 60 MiB uploads succeeded under a 100 MiB quota (stored $stored bytes)"
  elif [ "$stored" -gt "$quota" ]; then
    fail quota-shared "the home holds $stored bytes, over the quota of $quota"
  elif [ "$used_a" = "?" ] || [ "$used_b" = "?" ] || [ "$used_a" -gt "$quota" ] || [ "$used_b" -gt "$quota" ]; then
    fail quota-shared "df says used $used_a (A) and $used_b (B), quota $quota"
  elif [ $ok = 0 ] && ! grep -qi quota "$TMP/q1.err" "$TMP/q2.err"; then
    fail quota-shared "neither upload succeeded, and not for the quota: $(head -c 200 "$TMP/q1.err")"
  else
    pass quota-shared
  fi
  fy 'dave pass 3' rm "dave@127.0.0.1:${port[a]}/q1.bin" "q2.bin" >/dev/null 2>&1
  rm -f "$TMP/q1.bin" "$TMP/q2.bin"
}

# ------------------------------------------------------------------ 4
check_ban_shared() {
  local i banned=""
  for i in $(seq 1 10); do
    fy 'not the password' login "carol@127.0.0.1:${port[a]}" && { fail ban-shared "A let a wrong password in"; return; }
    if grep -q "too many failed logins" "$TMP/err"; then banned=$i; break; fi
  done
  [ -n "$banned" ] || { fail ban-shared "10 wrong passwords through A and no ban: $(err1)"; return; }
  if fy 'carol pass 1' login "carol@127.0.0.1:${port[b]}"; then
    fail ban-shared "B let the banned address in with the right password"
  elif ! grep -q "too many failed logins" "$TMP/err"; then
    fail ban-shared "B refused, but not with the ban: $(err1)"
  else
    say "ban-shared: A banned at try $banned; B refused the right password: $(err1)"
    pass ban-shared
  fi
}

# ------------------------------------------------------------------ 5
check_storage_node_loss() {
  local big="$TMP/big.bin" client rc
  user_add erin 'erin pass 5' || { fail storage-node-loss "user add: $(err1)"; return; }
  random_file "$big" 1024
  # Hashed meanwhile (a second core), for the comparison at the end.
  sha "$big" >"$TMP/big.sha" &
  local hasher=$!
  relay "${port[a]}" 0
  local t0=$SECONDS
  FERRY_PASSWORD='erin pass 5' FERRY_STATE_DIR="$TMP/state" timeout "$T_BIG" "$FERRY" put -q "$big" \
    "erin@127.0.0.1:$relay_port/big.bin" --fingerprint "$FP" --known-hosts "$TMP/known_hosts" \
    </dev/null >/dev/null 2>"$TMP/big.err" &
  client=$!
  # A third of the file on its way, then node 3 dies (node 1 is the endpoint).
  for _ in $(seq 1 $((T_BIG * 10))); do
    [ "$(relay_count)" -ge $((340 * MIB)) ] && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  local at
  at=$(relay_count)
  if ! kill -0 "$client" 2>/dev/null; then
    wait "$client"
    fail storage-node-loss "the upload ended before a node could be killed (after $at bytes): $(head -c 300 "$TMP/big.err")"
    return
  fi
  if ! bash scripts/garage.sh kill-node 3 2>"$TMP/kill.err"; then
    kill -TERM "$client" # `timeout` passes it on to ferry
    wait "$client"
    fail storage-node-loss "cannot stop a Garage node: $(head -c 200 "$TMP/kill.err")"
    return
  fi
  killed_node=3
  say "storage-node-loss: killed Garage node 3 after $at of $(size "$big") bytes"
  wait "$client"
  rc=$?
  stop_pid "$relay_pid"
  local how="completed"
  if [ $rc != 0 ]; then
    say "storage-node-loss: the upload failed (rc $rc: $(head -c 200 "$TMP/big.err")); resuming"
    how="failed, a resume completed it"
    rc=1
    for _ in 1 2; do
      FERRY_PASSWORD='erin pass 5' FERRY_STATE_DIR="$TMP/state" timeout "$T_BIG" "$FERRY" put -c -q "$big" \
        "erin@127.0.0.1:${port[a]}/big.bin" --fingerprint "$FP" --known-hosts "$TMP/known_hosts" \
        </dev/null >/dev/null 2>"$TMP/big.err" && { rc=0; break; }
    done
    [ $rc = 0 ] || { fail storage-node-loss "the upload and its resumes failed: $(head -c 300 "$TMP/big.err")"; return; }
  fi
  local up_secs=$((SECONDS - t0))
  # Downloaded through the other server, with node 3 still down.
  local back="$TMP/big.back"
  t0=$SECONDS
  FERRY_PASSWORD='erin pass 5' timeout "$T_BIG" "$FERRY" get -q -f "erin@127.0.0.1:${port[b]}/big.bin" "$back" \
    --fingerprint "$FP" --known-hosts "$TMP/known_hosts" </dev/null >/dev/null 2>"$TMP/big.err" \
    || { fail storage-node-loss "download through B failed: $(head -c 300 "$TMP/big.err")"; return; }
  local down_secs=$((SECONDS - t0))
  wait "$hasher"
  if [ "$(sha "$back")" != "$(cat "$TMP/big.sha")" ]; then
    fail storage-node-loss "the 1 GiB download differs from the upload"
  else
    say "storage-node-loss: upload $how in ${up_secs}s, download through B in ${down_secs}s"
    pass storage-node-loss
  fi
  rm -f "$back" "$big"
  fy 'erin pass 5' rm "erin@127.0.0.1:${port[a]}/big.bin" >/dev/null 2>&1
  if bash scripts/garage.sh start-node 3 2>"$TMP/kill.err"; then
    killed_node=""
  else
    say "node 3 did not come back ($(head -c 200 "$TMP/kill.err")); the rest runs on two nodes"
  fi
}

# ------------------------------------------------------------------ 6
check_restart() {
  user_add frank 'frank pass 6' || { fail restart "user add: $(err1)"; return; }
  random_file "$TMP/r1.bin" 12
  random_file "$TMP/r2.bin" 48
  fy 'frank pass 6' put "$TMP/r1.bin" "frank@127.0.0.1:${port[a]}/r1.bin" || { fail restart "put r1: $(err1)"; return; }
  cut_upload "${port[b]}" frank 'frank pass 6' "$TMP/r2.bin" r2.bin \
    || { fail restart "the upload through B never reached $CUT_AT bytes: $(head -c 300 "$TMP/cut.err")"; return; }
  stop_server a
  stop_server b
  start_server a
  start_server b
  say "restart: both servers restarted: A on 127.0.0.1:${port[a]}, B on 127.0.0.1:${port[b]}"
  same_remote "${port[b]}" frank 'frank pass 6' r1.bin "$TMP/r1.bin" || { fail restart "$same_why"; return; }
  same_remote "${port[b]}" alice 'alice pass 2' f2.bin "$TMP/f2.bin" || { fail restart "$same_why"; return; }
  resume_upload "${port[a]}" frank 'frank pass 6' "$TMP/r2.bin" r2.bin \
    || { fail restart "the upload cut before the restart, through A: $resume_why"; return; }
  same_remote "${port[b]}" frank 'frank pass 6' r2.bin "$TMP/r2.bin" || { fail restart "$same_why"; return; }
  say "restart: the cut upload resumed after the restart sending $resent of $(size "$TMP/r2.bin") bytes"
  pass restart
}

t_start=$SECONDS
check_users_shared
check_resume_across
check_quota_shared
check_storage_node_loss
check_restart
check_ban_shared
say "done in $((SECONDS - t_start)) s: $failures failed"
[ $failures = 0 ]
