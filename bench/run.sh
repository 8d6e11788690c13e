#!/usr/bin/env bash
# ferry benchmark against the peer tools and the machine's own floor, measured in the same run.
#
# Builds the release binaries, makes the test data on tmpfs, starts the peers (sshd, rsync daemon, vsftpd plain and a
# second vsftpd with FTPS on ferry's certificate; scripts in ../shared/bench/peers/) and two ferry servers (TLS with
# its SFTP and FTPS front ends, and --insecure-plaintext with plain FTP), all on 127.0.0.1 only, measures everything
# with the peers' hyperfine wrapper (`bench` in lib.sh: process start and login included, destination deleted before
# every run, integrity checked afterwards), stops every server it started (by PID, also on failure) and prints one
# Markdown table: each ferry row against its peers and its floor, as ratios against the issues' targets.
#
# S3 (issue 16): a 3-node Garage cluster (scripts/garage.sh, replication factor 3) holds the homes of a third ferry
# server ([storage] kind = "s3", TLS); rclone (Debian's package, installed if missing) talks S3 to the same cluster
# directly, configured through its environment only. Rows ferry-s3-* against rclone-s3-*; skipped with a message when
# Garage or rclone cannot be had, and not started at all when ONLY selects none of them (e.g. ONLY='s3' runs only them).
# Garage starts after every other row has run, so that its start-up work does not fall on them.
#
# The floor (issue 17): `ferry-load pipe` moves the same 1 GiB file through a loopback socket, plain or TLS 1.3
# AES-128-GCM, with no hash or with SHA-256/BLAKE3 on both ends, into tmpfs: the least work a (verified) transfer can
# do. One-core primitive speeds (openssl speed, b3sum, sha256sum) are printed beside.
#
# Usage (as root, from anywhere):  bash bench/run.sh [--install] [--keep-data]
#   --install    first install the peers' Debian packages (00-install.sh, apt-get)
#   --keep-data  keep the test data in $BD afterwards (default: removed; it is 1 GiB+ of RAM on tmpfs)
# Settings (environment): RUNS (default 5: the peers swing by 1.5x between runs here; quote medians of two whole
#   runs), BD, ST, RES, SSH_PORT, RSYNC_PORT, FTP_PORT (see the peers' env.sh), FTPS_PORT (2122, the FTPS vsftpd),
#   FERRY_TLS_PORT (7741), FERRY_PLAIN_PORT (7742), FERRY_SFTP_PORT (7743), FERRY_FTPS_PORT (7744), FERRY_FTP_PORT
#   (7745), FERRY_S3_PORT (7746, the server on S3), FERRY_GARAGE_DIR (default $ST/garage), PEERS (the peers' folder), CARGO_TARGET_DIR, FERRY and FERRY_LOAD (prebuilt binaries: skip the build),
#   FTP_SMALL_RUNS (default 3: the lftp small-file rows), ONLY (a regular expression: run only the measurement ids it matches, e.g. ONLY='sftp|pipe').
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
PEERS=${PEERS:-$root/../shared/bench/peers}
[ -f "$PEERS/lib.sh" ] || PEERS=/work/shared/bench/peers
[ -f "$PEERS/lib.sh" ] || { echo "peers folder not found (set PEERS=...)"; exit 1; }
PEERS=$(cd "$PEERS" && pwd)

install=0 keep=0
for a in "$@"; do
  case $a in
    --install) install=1 ;;
    --keep-data) keep=1 ;;
    *) echo "usage: $0 [--install] [--keep-data]"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (the peers start sshd/vsftpd and add a throwaway FTP user)"; exit 1; }

# Our own data/state folders (not the peers' defaults), so that a peer run elsewhere on the machine is not disturbed.
export BD=${BD:-/dev/shm/ferrybench}
export ST=${ST:-/tmp/ferrybench}
export RUNS=${RUNS:-5}
# lftp mirror of 2,000 files over FTP(S) takes 10-60 s a run (a data connection, and a TLS handshake, per file).
export FTP_SMALL_RUNS=${FTP_SMALL_RUNS:-3}
export FTPS_PORT=${FTPS_PORT:-2122}
export FERRY_SFTP_PORT=${FERRY_SFTP_PORT:-7743} FERRY_FTPS_PORT=${FERRY_FTPS_PORT:-7744} FERRY_FTP_PORT=${FERRY_FTP_PORT:-7745}
export FERRY_TLS_PORT=${FERRY_TLS_PORT:-7741} FERRY_S3_PORT=${FERRY_S3_PORT:-7746}
export FERRY_PLAIN_PORT=${FERRY_PLAIN_PORT:-7742}
# shellcheck source=/dev/null
. "$PEERS/lib.sh"   # env.sh (ports, URLs, BIG_BYTES, SMALL_N) + bench/record/same_file/same_dir

[ $install = 1 ] && { bash "$PEERS/00-install.sh" || exit 1; }
for t in hyperfine jq sshd scp sftp rsync vsftpd curl lftp openssl b3sum ssh-keygen ss cmp; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "missing $t: run with --install"; exit 1; }
done

# Refuse ports someone else is listening on (else the start scripts would "find" a foreign server).
for p in "$SSH_PORT" "$RSYNC_PORT" "$FTP_PORT" "$FTPS_PORT" "$FERRY_TLS_PORT" "$FERRY_PLAIN_PORT" "$FERRY_SFTP_PORT" \
  "$FERRY_FTPS_PORT" "$FERRY_FTP_PORT" "$FERRY_S3_PORT"; do
  if ss -ltnH "sport = :$p" | grep -q .; then
    echo "port $p is already in use on this machine; pick others (SSH_PORT, RSYNC_PORT, FTP_PORT, FERRY_*_PORT)"
    exit 1
  fi
done

# ---------------------------------------------------------------- 1. build
if [ -z "${FERRY:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
  echo "#### cargo build --release -p ferry-cli -p ferry-load (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$root" && cargo build --release -p ferry-cli -p ferry-load) || { echo "build failed"; exit 1; }
  FERRY=$CARGO_TARGET_DIR/release/ferry
  FERRY_LOAD=${FERRY_LOAD:-$CARGO_TARGET_DIR/release/ferry-load}
fi
FERRY_LOAD=${FERRY_LOAD:-$(dirname "$FERRY")/ferry-load}
export FERRY FERRY_LOAD
[ -x "$FERRY" ] || { echo "no ferry binary at $FERRY"; exit 1; }
[ -x "$FERRY_LOAD" ] || { echo "no ferry-load binary at $FERRY_LOAD (the floor pipe): set FERRY_LOAD"; exit 1; }

garage_started=0
cleanup() {
  bash "$PEERS/99-stop-servers.sh"   # stops every PID in $ST/pids (peers and the ferry servers), removes FTP user
  [ $garage_started = 0 ] || bash "$root/scripts/garage.sh" stop
  rm -rf "$BD/dst" "$BD/ftp" "$BD"/ferry-*
  if [ $keep = 0 ]; then rm -rf "$BD"; echo "removed test data $BD (keep it with --keep-data)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$RES/results.tsv"
echo "#### machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "#### ferry: $("$FERRY" --version) ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"

# ---------------------------------------------------------------- 2. data + peer servers
bash "$PEERS/01-make-data.sh" || exit 1
bash "$PEERS/10-start-servers.sh" || exit 1

# ---------------------------------------------------------------- 3. ferry servers (+ an FTPS vsftpd)
export FERRY_PASSWORD=bench-$$-$RANDOM
export FKH=$ST/ferry_kh
export FHOME_TLS=$BD/ferry-tls-home FHOME_PLAIN=$BD/ferry-plain-home     # homes on the tmpfs, like the peers' data
export FERRY_TLS=bench@127.0.0.1:$FERRY_TLS_PORT FERRY_PLAIN=bench@127.0.0.1:$FERRY_PLAIN_PORT
rm -rf "$ST/ferry-tls" "$ST/ferry-plain" "$FHOME_TLS" "$FHOME_PLAIN" "$FKH"

wait_listen() { for _ in $(seq 100); do ss -ltnH "sport = :$1" | grep -q LISTEN && return 0; sleep 0.1; done; return 1; }

start_ferry() {  # NAME PORT HOME CONFIG [--insecure-plaintext]
  local name=$1 port=$2 home=$3 config=$4; shift 4
  local data=$ST/$name
  mkdir -p "$data" "$home"
  echo "$FERRY_PASSWORD" | "$FERRY" user add bench --password-stdin --data "$data" --home "$home" >/dev/null || return 1
  "$FERRY" serve --data "$data" --config "$config" --listen "127.0.0.1:$port" "$@" >"$ST/$name.log" 2>&1 &
  echo $! >"$ST/pids/$name"
  wait_listen "$port" || { echo "$name did not start:"; cat "$ST/$name.log"; return 1; }
  # Served copies for the downloads: a hard link of the big file (as vsftpd's ftp/big.bin), a copy of the small tree.
  ln -f "$BD/big.bin" "$home/big.bin"
  rm -rf "$home/small"; cp -r "$BD/small" "$home/small"
}
# The TLS server also runs the SSH front end (SFTP) and FTPS; the plaintext one plain FTP. Passive ranges apart.
cat >"$ST/ferry-tls.toml" <<CFG
[sftp]
listen = "127.0.0.1:$FERRY_SFTP_PORT"
[ftp]
enabled = true
listen = "127.0.0.1:$FERRY_FTPS_PORT"
passive_ports = "50200-50299"
CFG
cat >"$ST/ferry-plain.toml" <<CFG
[sftp]
enabled = false
[ftp]
enabled = true
listen = "127.0.0.1:$FERRY_FTP_PORT"
passive_ports = "50300-50399"
allow_plaintext = true
CFG
start_ferry ferry-tls "$FERRY_TLS_PORT" "$FHOME_TLS" "$ST/ferry-tls.toml" || exit 1
start_ferry ferry-plain "$FERRY_PLAIN_PORT" "$FHOME_PLAIN" "$ST/ferry-plain.toml" --insecure-plaintext || exit 1
for p in "$FERRY_SFTP_PORT" "$FERRY_FTPS_PORT" "$FERRY_FTP_PORT"; do
  wait_listen "$p" || { echo "ferry front end on $p did not start:"; cat "$ST"/ferry-*.log; exit 1; }
done
"$FERRY" login -q --accept-new --known-hosts "$FKH" "$FERRY_TLS" || { echo "ferry login (TLS) failed"; exit 1; }
"$FERRY" login -q --insecure-plaintext "$FERRY_PLAIN" || { echo "ferry login (plaintext) failed"; exit 1; }
echo "ferry TLS on 127.0.0.1:$FERRY_TLS_PORT (pinned: $(cut -d' ' -f2 "$FKH")), plaintext on 127.0.0.1:$FERRY_PLAIN_PORT"

# OpenSSH's sftp to ferry's SSH front end: a throwaway key on the bench user, the same cipher as the peer rows.
rm -f "$ST/ferry_ed25519" "$ST/ferry_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -f "$ST/ferry_ed25519" || exit 1
"$FERRY" user key add --data "$ST/ferry-tls" bench "$(cat "$ST/ferry_ed25519.pub")" >/dev/null || exit 1
export FSSHCFG=$ST/ferry_ssh_config
cat >"$FSSHCFG" <<CFG
Host benchferry
  HostName 127.0.0.1
  Port $FERRY_SFTP_PORT
  User bench
  IdentityFile $ST/ferry_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
CFG
echo 'pwd' | sftp -F "$FSSHCFG" -q -b - benchferry >/dev/null || { echo "sftp to ferry failed"; cat "$ST/ferry-tls.log"; exit 1; }

# A second vsftpd with explicit FTPS required, on ferry's own certificate, for the FTPS rows.
cat "$ST/ftp/vsftpd.conf" - >"$ST/ftp/vsftpd-tls.conf" <<CFG
ssl_enable=YES
rsa_cert_file=$ST/ferry-tls/cert.pem
rsa_private_key_file=$ST/ferry-tls/key.pem
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=NO
ssl_ciphers=HIGH
CFG
sed -i -e "s/^listen_port=.*/listen_port=$FTPS_PORT/" -e 's/^pasv_min_port=.*/pasv_min_port=31000/' \
  -e 's/^pasv_max_port=.*/pasv_max_port=31999/' "$ST/ftp/vsftpd-tls.conf"
vsftpd "$ST/ftp/vsftpd-tls.conf" >"$ST/ftp/vsftpd-tls.out" 2>&1 & echo $! >"$ST/pids/vsftpd-tls"
wait_listen "$FTPS_PORT" || { echo "FTPS vsftpd did not start:"; cat "$ST/ftp/vsftpd-tls.out"; exit 1; }

# ---------------------------------------------------------------- 3b. S3 (issue 16): Garage, ferry on it, rclone
S3_IDS="ferry-s3-big-up ferry-s3-big-down ferry-s3-small-up ferry-s3-small-down
  rclone-s3-big-up rclone-s3-big-down rclone-s3-small-up rclone-s3-small-down"
s3_wanted() {
  [ -z "${ONLY:-}" ] && return 0
  local i; for i in $S3_IDS; do [[ $i =~ $ONLY ]] && return 0; done
  return 1
}
# Started after every other row (s3_setup, below): Garage keeps the CPU busy for a while after it starts, which
# would otherwise fall on the floor pipes measured first.
s3=0
s3_setup() {
  if ! command -v rclone >/dev/null; then
    echo "#### installing rclone (apt-get install -y rclone)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone; } >/dev/null 2>&1
  fi
  # Garage's data on disk (as a store's would be), under our own state folder unless told otherwise.
  export FERRY_GARAGE_DIR=${FERRY_GARAGE_DIR:-$ST/garage}
  if ! command -v rclone >/dev/null; then
    echo "#### SKIPPED the S3 rows: rclone is missing and could not be installed (apt-get install -y rclone)"
  elif ! genv=$(bash "$root/scripts/garage.sh" start 2>"$ST/garage-start.log"); then
    echo "#### SKIPPED the S3 rows: Garage did not start (scripts/garage.sh start):"; tail -n 5 "$ST/garage-start.log"
  else
    garage_started=1
    eval "$genv"
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    export FERRY_S3=bench@127.0.0.1:$FERRY_S3_PORT
    rm -rf "$ST/ferry-s3"; mkdir -p "$ST/ferry-s3"
    cat >"$ST/ferry-s3.toml" <<CFG
[sftp]
enabled = false
[storage]
kind = "s3"
endpoint = "$FERRY_TEST_S3_ENDPOINT"
bucket = "$FERRY_TEST_S3_BUCKET"
region = "$FERRY_TEST_S3_REGION"
path_style = true
prefix = "ferry/"
CFG
    echo "$FERRY_PASSWORD" | "$FERRY" user add bench --password-stdin --data "$ST/ferry-s3" >/dev/null || exit 1
    "$FERRY" serve --data "$ST/ferry-s3" --config "$ST/ferry-s3.toml" --listen "127.0.0.1:$FERRY_S3_PORT" \
      >"$ST/ferry-s3.log" 2>&1 &
    echo $! >"$ST/pids/ferry-s3"
    wait_listen "$FERRY_S3_PORT" || { echo "ferry on S3 did not start:"; cat "$ST/ferry-s3.log"; exit 1; }
    "$FERRY" login -q --accept-new --known-hosts "$FKH" "$FERRY_S3" || { echo "ferry login (S3) failed"; exit 1; }
    # rclone from the environment only (no configuration file): remote "garage", path-style, provider Other.
    export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other
    export RCLONE_CONFIG_GARAGE_ENDPOINT=$FERRY_TEST_S3_ENDPOINT RCLONE_CONFIG_GARAGE_REGION=$FERRY_TEST_S3_REGION
    export RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
    export RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true RCLONE_CONFIG=$ST/rclone-unused.conf
    # The endpoint is plain HTTP on loopback; rclone 1.60 fails on any AWS_CA_BUNDLE ("unable to load custom CA
    # bundle, HTTPClient's transport unsupported type"), which some machines set for their own HTTPS.
    unset AWS_CA_BUNDLE
    export RC=garage:$FERRY_TEST_S3_BUCKET/rclone
    # The served copies for the downloads, each written by its own tool.
    "$FERRY" put -q -f --known-hosts "$FKH" "$BD/big.bin" "$FERRY_S3/big.bin" &&
      "$FERRY" put -q -r -f --known-hosts "$FKH" "$BD/small" "$FERRY_S3/small" &&
      rclone copyto -q "$BD/big.bin" "$RC/big.bin" && rclone copy -q "$BD/small" "$RC/small" ||
      { echo "could not store the served copies on S3"; tail -n 20 "$ST/ferry-s3.log"; exit 1; }
    s3=1
    echo "Garage at $FERRY_TEST_S3_ENDPOINT (bucket $FERRY_TEST_S3_BUCKET); ferry on S3 on 127.0.0.1:$FERRY_S3_PORT; $(rclone version | head -n 1)"
  fi
}

# ---------------------------------------------------------------- 4. measurements
# m ID TOOL DIRECTION UNIT AMOUNT CMD PREPARE [CHECK...]: one row (skipped unless ONLY matches ID), then its check.
# Peak RSS per ferry row: every ferry server's high-water mark (VmHWM) is reset (clear_refs 5) before the row and
# read after it, one line "ID SERVER KiB" per server in $ST/rss.txt.
ferry_pids() { for n in ferry-tls ferry-plain ferry-s3; do [ -f "$ST/pids/$n" ] && echo "$n $(cat "$ST/pids/$n")"; done; }
rss_reset() { ferry_pids | while read -r _ p; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null; done; }
rss_read() {
  ferry_pids | while read -r n p; do awk -v id="$1" -v n="$n" '/^VmHWM/ { print id, n, $2 }' "/proc/$p/status" 2>/dev/null; done >>"$ST/rss.txt"
}
rm -f "$ST/rss.txt"
m() {
  local id=$1; shift
  [ -z "${ONLY:-}" ] || [[ $id =~ $ONLY ]] || return 0
  local tool=$1 dir=$2 unit=$3 amount=$4 cmd=$5 prep=$6; shift 6
  [[ $id == ferry-* ]] && rss_reset
  bench "$id" "$tool" "$dir" "$unit" "$amount" "$cmd" "$prep" || return 1
  [[ $id == ferry-* ]] && rss_read "$id"
  [ $# = 0 ] || "$@"
}
UP='rm -f $BD/dst/big.up'; DOWN='rm -f $BD/dst/big.down'
SUP='rm -rf $BD/dst/small_up'; SDOWN='rm -rf $BD/dst/small_down'
AES=aes128-gcm@openssh.com
T13='--tls13-ciphers TLS_AES_128_GCM_SHA256'
same_big_up() { same_file "$BD/big.bin" "$1"; }
same_big_down() { same_file "$BD/big.bin" "$BD/dst/big.down"; }

echo "#### floor: the same 1 GiB through a loopback pipe into tmpfs (ferry-load pipe), and one-core primitives"
for tls in plain tls; do
  flag=""; [ $tls = tls ] && flag=--tls
  for h in none sha256 blake3; do
    m "pipe-$tls-$h" "pipe $tls, hash $h" "pipe" MB $BIG_BYTES \
      "\$FERRY_LOAD pipe $flag --hash $h --input \$BD/big.bin --output \$BD/dst/pipe.out" 'rm -f $BD/dst/pipe.out' \
      same_file "$BD/big.bin" "$BD/dst/pipe.out"
  done
done
rm -f "$BD/dst/pipe.out"
if [ -z "${ONLY:-}" ] || [[ prim =~ $ONLY ]]; then
  for alg in aes-128-gcm sha256; do
    vals=()
    for _ in 1 2 3; do
      vals+=("$(openssl speed -evp "$alg" -bytes 16384 -seconds 2 2>/dev/null | tail -1 |
        awk '{v=$NF; sub(/k$/,"",v); printf "%.1f", v/1000}')")
    done
    record "prim-ossl-$alg" "openssl speed -evp $alg (1 core)" "16 KiB blocks" "MB/s" "-" \
      "openssl speed -evp $alg -bytes 16384 -seconds 2" "${vals[@]}"
  done
  bench prim-b3sum-1t "b3sum --num-threads 1" "hash 1 GiB" MB $BIG_BYTES 'b3sum --num-threads 1 $BD/big.bin'
  bench prim-sha256sum "sha256sum (1 core)" "hash 1 GiB" MB $BIG_BYTES 'sha256sum $BD/big.bin'
fi

echo "#### peers, 1 GiB, encrypted (ssh, aes128-gcm; sftp to OpenSSH's sftp-server)"
m scp-aes128-gcm-up   "scp ($AES)" upload   MB $BIG_BYTES "scp -F \$SSHCFG -q -c $AES \$BD/big.bin benchssh:\$BD/dst/big.up" "$UP" same_big_up "$BD/dst/big.up"
m scp-aes128-gcm-down "scp ($AES)" download MB $BIG_BYTES "scp -F \$SSHCFG -q -c $AES benchssh:\$BD/big.bin \$BD/dst/big.down" "$DOWN" same_big_down
m sftp-aes-put "sftp -b -> sftp-server (aes128-gcm)" upload   MB $BIG_BYTES "echo \"put \$BD/big.bin \$BD/dst/big.up\" | sftp -F \$SSHCFG -c $AES -q -b - benchssh" "$UP" same_big_up "$BD/dst/big.up"
m sftp-aes-get "sftp -b -> sftp-server (aes128-gcm)" download MB $BIG_BYTES "echo \"get \$BD/big.bin \$BD/dst/big.down\" | sftp -F \$SSHCFG -c $AES -q -b - benchssh" "$DOWN" same_big_down
rm -f "$BD/dst/big.up" "$BD/dst/big.down"

echo "#### peers, 1 GiB, plaintext (rsync daemon, curl -> vsftpd) and FTPS (curl -> vsftpd, explicit TLS 1.3 AES-128-GCM)"
m rsyncd-up   "rsync daemon (rsync://)" upload   MB $BIG_BYTES 'rsync -a $BD/big.bin $RSYNCURL/dst/big.up' "$UP" same_big_up "$BD/dst/big.up"
m rsyncd-down "rsync daemon (rsync://)" download MB $BIG_BYTES 'rsync -a $RSYNCURL/big.bin $BD/dst/big.down' "$DOWN" same_big_down
m ftp-curl-up   "curl -> vsftpd" upload   MB $BIG_BYTES 'curl -s -S -T $BD/big.bin $FTPURL/up/big.up' 'rm -f $BD/ftp/up/big.up' same_big_up "$BD/ftp/up/big.up"
m ftp-curl-down "curl -> vsftpd" download MB $BIG_BYTES 'curl -s -S -o $BD/dst/big.down $FTPURL/big.bin' "$DOWN" same_big_down
VFTPS="ftp://$FTP_USER:$FTP_PASS@127.0.0.1:$FTPS_PORT"
m ftps-curl-up   "curl -> vsftpd (FTPS)" upload   MB $BIG_BYTES "curl -s -S --ssl-reqd -k $T13 -T \$BD/big.bin $VFTPS/up/big.up" 'rm -f $BD/ftp/up/big.up' same_big_up "$BD/ftp/up/big.up"
m ftps-curl-down "curl -> vsftpd (FTPS)" download MB $BIG_BYTES "curl -s -S --ssl-reqd -k $T13 -o \$BD/dst/big.down $VFTPS/big.bin" "$DOWN" same_big_down
rm -f "$BD/dst/big.up" "$BD/dst/big.down" "$BD/ftp/up/big.up"

echo "#### peers, $SMALL_N x 4 KiB"
m small-sftp-put "sftp -b put -r -> sftp-server (aes128-gcm)" upload   files $SMALL_N "echo \"put -r \$BD/small \$BD/dst/small_up\" | sftp -F \$SSHCFG -c $AES -q -b - benchssh" "$SUP" same_dir "$BD/small" "$BD/dst/small_up"
m small-sftp-get "sftp -b get -r -> sftp-server (aes128-gcm)" download files $SMALL_N "echo \"get -r \$BD/small \$BD/dst/small_down\" | sftp -F \$SSHCFG -c $AES -q -b - benchssh" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
m small-rsyncd-up   "rsync daemon (rsync://)" upload   files $SMALL_N 'rsync -a $BD/small/ $RSYNCURL/dst/small_up/' "$SUP" same_dir "$BD/small" "$BD/dst/small_up"
m small-rsyncd-down "rsync daemon (rsync://)" download files $SMALL_N 'rsync -a $RSYNCURL/small/ $BD/dst/small_down/' "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
VLFTP="lftp -c \"set ftp:ssl-allow no; open -u $FTP_USER,$FTP_PASS -p $FTP_PORT 127.0.0.1;"
VLFTPS="lftp -c \"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; open -u $FTP_USER,$FTP_PASS -p $FTPS_PORT 127.0.0.1;"
RUNS=$FTP_SMALL_RUNS m small-ftp-lftp-up     "lftp mirror -R -> vsftpd" upload   files $SMALL_N "$VLFTP mirror -R \$BD/small up/small_up\"" 'rm -rf $BD/ftp/up/small_up' same_dir "$BD/small" "$BD/ftp/up/small_up"
RUNS=$FTP_SMALL_RUNS m small-ftp-lftp-down   "lftp mirror -> vsftpd" download files $SMALL_N "$VLFTP mirror small \$BD/dst/small_down\"" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
RUNS=$FTP_SMALL_RUNS m small-ftps-lftp-up    "lftp mirror -R -> vsftpd (FTPS)" upload   files $SMALL_N "$VLFTPS mirror -R \$BD/small up/small_up\"" 'rm -rf $BD/ftp/up/small_up' same_dir "$BD/small" "$BD/ftp/up/small_up"
RUNS=$FTP_SMALL_RUNS m small-ftps-lftp-down  "lftp mirror -> vsftpd (FTPS)" download files $SMALL_N "$VLFTPS mirror small \$BD/dst/small_down\"" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
rm -rf "$BD/dst/small_up" "$BD/dst/small_down" "$BD/ftp/up/small_up"

# ferry: TLS (pinned fingerprint) and plaintext. Each run = process start + connect + TLS + SCRAM login + transfer
# (the client and server check the hash of every file) + close.
for mode in tls plain; do
  if [ $mode = tls ]; then R='$FERRY_TLS' H='$FHOME_TLS' O='--known-hosts $FKH' label="ferry (TLS)"
  else R='$FERRY_PLAIN' H='$FHOME_PLAIN' O='--insecure-plaintext' label="ferry (--insecure-plaintext)"; fi
  home=$FHOME_TLS; [ $mode = plain ] && home=$FHOME_PLAIN
  echo "#### $label"
  m "ferry-$mode-big-up"   "$label" upload   MB $BIG_BYTES "\$FERRY put -q -f $O \$BD/big.bin $R/big.up" "rm -f $H/big.up" same_big_up "$home/big.up"
  m "ferry-$mode-big-down" "$label" download MB $BIG_BYTES "\$FERRY get -q -f $O $R/big.bin \$BD/dst/big.down" "$DOWN" same_big_down
  rm -f "$home/big.up" "$BD/dst/big.down"
  m "ferry-$mode-small-up"   "$label" upload   files $SMALL_N "\$FERRY put -q -r -f $O \$BD/small $R/small_up" "rm -rf $H/small_up" same_dir "$BD/small" "$home/small_up"
  m "ferry-$mode-small-down" "$label" download files $SMALL_N "\$FERRY get -q -r -f $O $R/small \$BD/dst/small_down" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
  rm -rf "$home/small_up" "$BD/dst/small_down"
done

echo "#### ferry's SFTP front end (OpenSSH sftp, aes128-gcm)"
m ferry-sftp-big-up "sftp -b -> ferry SFTP (aes128-gcm)" upload MB $BIG_BYTES "echo \"put \$BD/big.bin /big.up\" | sftp -F \$FSSHCFG -c $AES -q -b - benchferry" 'rm -f $FHOME_TLS/big.up' same_big_up "$FHOME_TLS/big.up"
m ferry-sftp-big-down "sftp -b -> ferry SFTP (aes128-gcm)" download MB $BIG_BYTES "echo \"get /big.bin \$BD/dst/big.down\" | sftp -F \$FSSHCFG -c $AES -q -b - benchferry" "$DOWN" same_big_down
m ferry-sftp-small-up "sftp -b put -r -> ferry SFTP (aes128-gcm)" upload files $SMALL_N "echo \"put -r \$BD/small /small_up\" | sftp -F \$FSSHCFG -c $AES -q -b - benchferry" 'rm -rf $FHOME_TLS/small_up' same_dir "$BD/small" "$FHOME_TLS/small_up"
m ferry-sftp-small-down "sftp -b get -r -> ferry SFTP (aes128-gcm)" download files $SMALL_N "echo \"get -r /small \$BD/dst/small_down\" | sftp -F \$FSSHCFG -c $AES -q -b - benchferry" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
rm -rf "$FHOME_TLS/big.up" "$FHOME_TLS/small_up" "$BD/dst/big.down" "$BD/dst/small_down"

echo "#### ferry's FTP front end (curl for 1 GiB, lftp mirror for the small files), plaintext and FTPS"
FFTP="ftp://bench:\$FERRY_PASSWORD@127.0.0.1:$FERRY_FTP_PORT"
FFTPS="ftp://bench:\$FERRY_PASSWORD@127.0.0.1:$FERRY_FTPS_PORT"
m ferry-ftp-big-up    "curl -> ferry FTP" upload   MB $BIG_BYTES "curl -s -S -T \$BD/big.bin $FFTP/big.up" 'rm -f $FHOME_PLAIN/big.up' same_big_up "$FHOME_PLAIN/big.up"
m ferry-ftp-big-down  "curl -> ferry FTP" download MB $BIG_BYTES "curl -s -S -o \$BD/dst/big.down $FFTP/big.bin" "$DOWN" same_big_down
m ferry-ftps-big-up   "curl -> ferry FTPS" upload   MB $BIG_BYTES "curl -s -S --ssl-reqd -k $T13 -T \$BD/big.bin $FFTPS/big.up" 'rm -f $FHOME_TLS/big.up' same_big_up "$FHOME_TLS/big.up"
m ferry-ftps-big-down "curl -> ferry FTPS" download MB $BIG_BYTES "curl -s -S --ssl-reqd -k $T13 -o \$BD/dst/big.down $FFTPS/big.bin" "$DOWN" same_big_down
FLFTP="lftp -c \"set ftp:ssl-allow no; open -u bench,\$FERRY_PASSWORD -p $FERRY_FTP_PORT 127.0.0.1;"
FLFTPS="lftp -c \"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; open -u bench,\$FERRY_PASSWORD -p $FERRY_FTPS_PORT 127.0.0.1;"
RUNS=$FTP_SMALL_RUNS m ferry-ftp-small-up    "lftp mirror -R -> ferry FTP" upload   files $SMALL_N "$FLFTP mirror -R \$BD/small small_up\"" 'rm -rf $FHOME_PLAIN/small_up' same_dir "$BD/small" "$FHOME_PLAIN/small_up"
RUNS=$FTP_SMALL_RUNS m ferry-ftp-small-down  "lftp mirror -> ferry FTP" download files $SMALL_N "$FLFTP mirror small \$BD/dst/small_down\"" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
RUNS=$FTP_SMALL_RUNS m ferry-ftps-small-up   "lftp mirror -R -> ferry FTPS" upload   files $SMALL_N "$FLFTPS mirror -R \$BD/small small_up\"" 'rm -rf $FHOME_TLS/small_up' same_dir "$BD/small" "$FHOME_TLS/small_up"
RUNS=$FTP_SMALL_RUNS m ferry-ftps-small-down "lftp mirror -> ferry FTPS" download files $SMALL_N "$FLFTPS mirror small \$BD/dst/small_down\"" "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
rm -rf "$FHOME_PLAIN/big.up" "$FHOME_TLS/big.up" "$FHOME_PLAIN/small_up" "$FHOME_TLS/small_up" "$BD/dst/big.down" "$BD/dst/small_down"

s3_wanted && s3_setup
if [ $s3 = 1 ]; then
  echo "#### S3 (Garage, 3 nodes, replication 3): ferry (TLS, SHA-256 verified) on S3Storage, rclone straight to S3"
  # An upload's check reads it back through the same tool into tmpfs and compares.
  s3_back() {  # TOOL big|small REMOTE-NAME
    local out=$BD/dst/s3check ok
    rm -rf "$out"
    case $1-$2 in
      ferry-big) "$FERRY" get -q -f --known-hosts "$FKH" "$FERRY_S3/$3" "$out" ;;
      ferry-small) "$FERRY" get -q -r -f --known-hosts "$FKH" "$FERRY_S3/$3" "$out" ;;
      rclone-big) rclone copyto -q "$RC/$3" "$out" ;;
      rclone-small) rclone copy -q "$RC/$3" "$out" ;;
    esac
    if [ "$2" = big ]; then same_file "$BD/big.bin" "$out"; else same_dir "$BD/small" "$out"; fi
    ok=$?
    rm -rf "$out"
    return $ok
  }
  FS3='$FERRY_S3' O='--known-hosts $FKH'
  m ferry-s3-big-up "ferry (TLS) -> S3Storage" upload MB $BIG_BYTES "\$FERRY put -q -f $O \$BD/big.bin $FS3/big.up" \
    "\$FERRY rm -q $O $FS3/big.up >/dev/null 2>&1; true" s3_back ferry big big.up
  m rclone-s3-big-up "rclone -> S3" upload MB $BIG_BYTES 'rclone copyto -q $BD/big.bin $RC/big.up' \
    'rclone deletefile -q $RC/big.up >/dev/null 2>&1; true' s3_back rclone big big.up
  m ferry-s3-big-down "ferry (TLS) -> S3Storage" download MB $BIG_BYTES "\$FERRY get -q -f $O $FS3/big.bin \$BD/dst/big.down" \
    "$DOWN" same_big_down
  m rclone-s3-big-down "rclone -> S3" download MB $BIG_BYTES 'rclone copyto -q $RC/big.bin $BD/dst/big.down' "$DOWN" same_big_down
  rm -f "$BD/dst/big.down"
  m ferry-s3-small-up "ferry (TLS) -> S3Storage" upload files $SMALL_N "\$FERRY put -q -r -f $O \$BD/small $FS3/small_up" \
    "\$FERRY rm -q -r $O $FS3/small_up >/dev/null 2>&1; true" s3_back ferry small small_up
  m rclone-s3-small-up "rclone -> S3" upload files $SMALL_N 'rclone copy -q $BD/small $RC/small_up' \
    'rclone purge -q $RC/small_up >/dev/null 2>&1; true' s3_back rclone small small_up
  m ferry-s3-small-down "ferry (TLS) -> S3Storage" download files $SMALL_N "\$FERRY get -q -r -f $O $FS3/small \$BD/dst/small_down" \
    "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
  m rclone-s3-small-down "rclone -> S3" download files $SMALL_N 'rclone copy -q $RC/small $BD/dst/small_down' \
    "$SDOWN" same_dir "$BD/small" "$BD/dst/small_down"
  rm -rf "$BD/dst/small_down"
fi
echo "#### load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# Each ferry server's peak resident set over every ferry row (the highest of the per-row peaks), and the row it was
# reached in, against the 64 MiB target; then each row's peak (the highest of the servers).
hwm() { awk -v n="$1" '$2 == n && $3 > m { m = $3; r = $1 } END { if (m) printf "%.1f MiB (%s)", m / 1024, r; else printf "?" }' "$ST/rss.txt" 2>/dev/null || echo "?"; }
mem_line="Server peak RSS (VmHWM) over all its runs (all front ends): TLS $(hwm ferry-tls), plaintext $(hwm ferry-plain), S3 $(hwm ferry-s3) (target: under 64 MiB)"
mem_rows=$(awk '{ if ($3 > m[$1]) m[$1] = $3; if (!($1 in o)) { o[$1] = ++k; ids[k] = $1 } }
  END { for (i = 1; i <= k; i++) printf "%s%s %.1f", (i > 1 ? ", " : ""), ids[i], m[ids[i]] / 1024 }' "$ST/rss.txt" 2>/dev/null)

# ---------------------------------------------------------------- 5. the table
# spec: issue | measurement | ferry id | target ratio | against (ids; the best of them wins) | ...
# Several "target|ids" pairs per row: each is judged on its own.
specs='17|1 GiB upload, TLS|ferry-tls-big-up|0.8|pipe-tls-blake3|1.5|scp-aes128-gcm-up,sftp-aes-put
17|1 GiB download, TLS|ferry-tls-big-down|0.8|pipe-tls-blake3|1.5|scp-aes128-gcm-down,sftp-aes-get
17|1 GiB upload, plaintext|ferry-plain-big-up|1.0|rsyncd-up|0.8|ftp-curl-up|0.8|pipe-plain-blake3
17|1 GiB download, plaintext|ferry-plain-big-down|1.0|rsyncd-down|0.8|ftp-curl-down|0.8|pipe-plain-blake3
17|2000 x 4 KiB upload, TLS|ferry-tls-small-up|1.5|small-rsyncd-up
17|2000 x 4 KiB download, TLS|ferry-tls-small-down|1.5|small-rsyncd-down
17|2000 x 4 KiB upload, plaintext|ferry-plain-small-up|1.5|small-rsyncd-up
17|2000 x 4 KiB download, plaintext|ferry-plain-small-down|1.5|small-rsyncd-down
14|SFTP 1 GiB upload|ferry-sftp-big-up|1.0|sftp-aes-put
14|SFTP 1 GiB download|ferry-sftp-big-down|1.0|sftp-aes-get
14|SFTP 2000 x 4 KiB upload|ferry-sftp-small-up|1.0|small-sftp-put
14|SFTP 2000 x 4 KiB download|ferry-sftp-small-down|1.0|small-sftp-get
15|FTP 1 GiB upload|ferry-ftp-big-up|1.0|ftp-curl-up
15|FTP 1 GiB download|ferry-ftp-big-down|1.0|ftp-curl-down
15|FTPS 1 GiB upload|ferry-ftps-big-up|1.0|ftps-curl-up
15|FTPS 1 GiB download|ferry-ftps-big-down|1.0|ftps-curl-down
15|FTP 2000 x 4 KiB upload|ferry-ftp-small-up|1.0|small-ftp-lftp-up
15|FTP 2000 x 4 KiB download|ferry-ftp-small-down|1.0|small-ftp-lftp-down
15|FTPS 2000 x 4 KiB upload|ferry-ftps-small-up|1.0|small-ftps-lftp-up
15|FTPS 2000 x 4 KiB download|ferry-ftps-small-down|1.0|small-ftps-lftp-down
16|S3 (Garage) 1 GiB upload|ferry-s3-big-up|0.8|rclone-s3-big-up
16|S3 (Garage) 1 GiB download|ferry-s3-big-down|0.8|rclone-s3-big-down
16|S3 (Garage) 2000 x 4 KiB upload|ferry-s3-small-up|0.8|rclone-s3-small-up
16|S3 (Garage) 2000 x 4 KiB download|ferry-s3-small-down|0.8|rclone-s3-small-down'
{
  echo
  echo "## ferry vs peers and floor (median of $RUNS runs after 1 warm-up, min-max beside; MB/s = 10^6 B/s; files/s)"
  echo
  echo '| issue | measurement | ferry | against (same run) | ratio | target | met? |'
  echo '|---|---|---|---|---|---|---|'
  printf '%s\n' "$specs" | awk -F'|' -v tsv="$RES/results.tsv" '
    BEGIN { while ((getline l < tsv) > 0) { split(l, f, "\t"); med[f[1]] = f[5]; lo[f[1]] = f[6]; hi[f[1]] = f[7];
                                             tool[f[1]] = f[2]; unit[f[1]] = f[4] } }
    function show(id) { return (id in med) ? sprintf("%s %s (%s-%s)", med[id], unit[id], lo[id], hi[id]) : "not run" }
    {
      for (k = 4; k < NF; k += 2) {
        best = ""; n = split($(k + 1), p, ",")
        for (i = 1; i <= n; i++) if ((p[i] in med) && (best == "" || med[p[i]] > med[best])) best = p[i]
        if (!($3 in med) || best == "" || med[best] <= 0) { r = "n/a"; v = "n/a" }
        else { x = med[$3] / med[best]; r = sprintf("%.2fx", x); v = (x >= $k) ? "yes" : "**no**" }
        peer = best == "" ? "not run" : sprintf("%s: %s", tool[best], show(best))
        printf "| %s | %s | %s | %s | %s | >= %.1fx | %s |\n", $1, $2, (k == 4 ? show($3) : "″"), peer, r, $k, v
      }
    }'
  echo
  echo "$mem_line"
  echo "Peak RSS per ferry row, MiB: $mem_rows"
  echo
  echo "Raw rows (median, min-max over the timed runs; CPU = busy % of all cores during one extra run):"
  echo
  bash "$PEERS/render.sh"
} | tee "$RES/ferry-table.md"
echo
echo "(table also in $RES/ferry-table.md; raw TSV $RES/results.tsv; hyperfine logs/JSON in $RES)"
