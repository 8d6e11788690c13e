#!/usr/bin/env bash
# ferry benchmark against the peer tools, measured in the same run (issue 4, item 7).
#
# Builds the release binary, makes the test data on tmpfs, starts the peers (sshd, rsync daemon, vsftpd; scripts in
# ../shared/bench/peers/) and two ferry servers (TLS and --insecure-plaintext), all on 127.0.0.1 only, measures
# everything with the peers' hyperfine wrapper (`bench` in lib.sh: process start and login included, destination
# deleted before every run, integrity checked afterwards), stops every server it started (by PID, also on failure)
# and prints one Markdown table: ferry vs the best relevant peer, as ratios against the targets.
#
# Usage (as root, from anywhere):  bash bench/run.sh [--install] [--keep-data]
#   --install    first install the peers' Debian packages (00-install.sh, apt-get)
#   --keep-data  keep the test data in $BD afterwards (default: removed; it is 1 GiB+ of RAM on tmpfs)
# Settings (environment): RUNS (default 3), BD, ST, RES, SSH_PORT, RSYNC_PORT, FTP_PORT (see the peers' env.sh),
#   FERRY_TLS_PORT (7741), FERRY_PLAIN_PORT (7742), PEERS (the peers' folder), CARGO_TARGET_DIR, FERRY (a prebuilt
#   binary: skips the build).
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
export RUNS=${RUNS:-3}
export FERRY_TLS_PORT=${FERRY_TLS_PORT:-7741}
export FERRY_PLAIN_PORT=${FERRY_PLAIN_PORT:-7742}
# shellcheck source=/dev/null
. "$PEERS/lib.sh"   # env.sh (ports, URLs, BIG_BYTES, SMALL_N) + bench/record/same_file/same_dir

[ $install = 1 ] && { bash "$PEERS/00-install.sh" || exit 1; }
for t in hyperfine jq sshd scp sftp rsync vsftpd curl ss cmp; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "missing $t: run with --install"; exit 1; }
done

# Refuse ports someone else is listening on (else the start scripts would "find" a foreign server).
for p in "$SSH_PORT" "$RSYNC_PORT" "$FTP_PORT" "$FERRY_TLS_PORT" "$FERRY_PLAIN_PORT"; do
  if ss -ltnH "sport = :$p" | grep -q .; then
    echo "port $p is already in use on this machine; pick others (SSH_PORT, RSYNC_PORT, FTP_PORT, FERRY_*_PORT)"
    exit 1
  fi
done

# ---------------------------------------------------------------- 1. build
if [ -z "${FERRY:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
  echo "#### cargo build --release -p ferry-cli (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$root" && cargo build --release -p ferry-cli) || { echo "build failed"; exit 1; }
  FERRY=$CARGO_TARGET_DIR/release/ferry
fi
export FERRY
[ -x "$FERRY" ] || { echo "no ferry binary at $FERRY"; exit 1; }

cleanup() {
  bash "$PEERS/99-stop-servers.sh"   # stops every PID in $ST/pids (peers and both ferry servers), removes FTP user
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

# ---------------------------------------------------------------- 3. ferry servers
export FERRY_PASSWORD=bench-$$-$RANDOM
export FKH=$ST/ferry_kh
export FHOME_TLS=$BD/ferry-tls-home FHOME_PLAIN=$BD/ferry-plain-home     # homes on the tmpfs, like the peers' data
export FERRY_TLS=bench@127.0.0.1:$FERRY_TLS_PORT FERRY_PLAIN=bench@127.0.0.1:$FERRY_PLAIN_PORT
rm -rf "$ST/ferry-tls" "$ST/ferry-plain" "$FHOME_TLS" "$FHOME_PLAIN" "$FKH"

start_ferry() {  # NAME PORT HOME [--insecure-plaintext]
  local name=$1 port=$2 home=$3; shift 3
  local data=$ST/$name
  mkdir -p "$data" "$home"
  echo "$FERRY_PASSWORD" | "$FERRY" user add bench --password-stdin --data "$data" --home "$home" >/dev/null || return 1
  "$FERRY" serve --data "$data" --listen "127.0.0.1:$port" "$@" >"$ST/$name.log" 2>&1 &
  echo $! >"$ST/pids/$name"
  for _ in $(seq 100); do ss -ltnH "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
  ss -ltnH "sport = :$port" | grep -q LISTEN || { echo "$name did not start:"; cat "$ST/$name.log"; return 1; }
  # Served copies for the downloads: a hard link of the big file (as vsftpd's ftp/big.bin), a copy of the small tree.
  ln -f "$BD/big.bin" "$home/big.bin"
  rm -rf "$home/small"; cp -r "$BD/small" "$home/small"
}
start_ferry ferry-tls "$FERRY_TLS_PORT" "$FHOME_TLS" || exit 1
start_ferry ferry-plain "$FERRY_PLAIN_PORT" "$FHOME_PLAIN" --insecure-plaintext || exit 1
"$FERRY" login -q --accept-new --known-hosts "$FKH" "$FERRY_TLS" || { echo "ferry login (TLS) failed"; exit 1; }
"$FERRY" login -q --insecure-plaintext "$FERRY_PLAIN" || { echo "ferry login (plaintext) failed"; exit 1; }
echo "ferry TLS on 127.0.0.1:$FERRY_TLS_PORT (pinned: $(cut -d' ' -f2 "$FKH")), plaintext on 127.0.0.1:$FERRY_PLAIN_PORT"

# ---------------------------------------------------------------- 4. measurements
# Peers: the same ids and commands as the peers' 30/40/50/60 scripts (sftp-aes-put is the missing aes128-gcm put).
UP='rm -f $BD/dst/big.up'; DOWN='rm -f $BD/dst/big.down'
AES=aes128-gcm@openssh.com
echo "#### peers, 1 GiB, encrypted (ssh, aes128-gcm)"
bench scp-aes128-gcm-up   "scp ($AES)" upload   MB $BIG_BYTES "scp -F \$SSHCFG -q -c $AES \$BD/big.bin benchssh:\$BD/dst/big.up" "$UP"
same_file "$BD/big.bin" "$BD/dst/big.up"
bench scp-aes128-gcm-down "scp ($AES)" download MB $BIG_BYTES "scp -F \$SSHCFG -q -c $AES benchssh:\$BD/big.bin \$BD/dst/big.down" "$DOWN"
same_file "$BD/big.bin" "$BD/dst/big.down"
bench sftp-aes-put "sftp -b (aes128-gcm)" upload   MB $BIG_BYTES 'echo "put $BD/big.bin $BD/dst/big.up" | sftp -F $SSHCFG -c aes128-gcm@openssh.com -q -b - benchssh' "$UP"
same_file "$BD/big.bin" "$BD/dst/big.up"
bench sftp-aes-get "sftp -b (aes128-gcm)" download MB $BIG_BYTES 'echo "get $BD/big.bin $BD/dst/big.down" | sftp -F $SSHCFG -c aes128-gcm@openssh.com -q -b - benchssh' "$DOWN"
same_file "$BD/big.bin" "$BD/dst/big.down"
rm -f "$BD/dst/big.up" "$BD/dst/big.down"

echo "#### peers, 1 GiB, plaintext (rsync daemon, vsftpd + curl)"
bench rsyncd-up   "rsync daemon (rsync://)" upload   MB $BIG_BYTES 'rsync -a $BD/big.bin $RSYNCURL/dst/big.up' "$UP"
same_file "$BD/big.bin" "$BD/dst/big.up"
bench rsyncd-down "rsync daemon (rsync://)" download MB $BIG_BYTES 'rsync -a $RSYNCURL/big.bin $BD/dst/big.down' "$DOWN"
same_file "$BD/big.bin" "$BD/dst/big.down"
bench ftp-curl-up   "curl -> vsftpd" upload   MB $BIG_BYTES 'curl -s -S -T $BD/big.bin $FTPURL/up/big.up' 'rm -f $BD/ftp/up/big.up'
same_file "$BD/big.bin" "$BD/ftp/up/big.up"
bench ftp-curl-down "curl -> vsftpd" download MB $BIG_BYTES 'curl -s -S -o $BD/dst/big.down $FTPURL/big.bin' "$DOWN"
same_file "$BD/big.bin" "$BD/dst/big.down"
rm -f "$BD/dst/big.up" "$BD/dst/big.down" "$BD/ftp/up/big.up"

echo "#### peers, $SMALL_N x 4 KiB"
SUP='rm -rf $BD/dst/small_up'; SDOWN='rm -rf $BD/dst/small_down'
bench small-sftp-put    "sftp -b put -r" upload   files $SMALL_N 'echo "put -r $BD/small $BD/dst/small_up" | sftp -F $SSHCFG -q -b - benchssh' "$SUP"
same_dir "$BD/small" "$BD/dst/small_up"
bench small-sftp-get    "sftp -b get -r" download files $SMALL_N 'echo "get -r $BD/small $BD/dst/small_down" | sftp -F $SSHCFG -q -b - benchssh' "$SDOWN"
same_dir "$BD/small" "$BD/dst/small_down"
bench small-rsyncd-up   "rsync daemon (rsync://)" upload   files $SMALL_N 'rsync -a $BD/small/ $RSYNCURL/dst/small_up/' "$SUP"
same_dir "$BD/small" "$BD/dst/small_up"
bench small-rsyncd-down "rsync daemon (rsync://)" download files $SMALL_N 'rsync -a $RSYNCURL/small/ $BD/dst/small_down/' "$SDOWN"
same_dir "$BD/small" "$BD/dst/small_down"
rm -rf "$BD/dst/small_up" "$BD/dst/small_down"

# ferry: TLS (pinned fingerprint) and plaintext. Each run = process start + connect + TLS + SCRAM login + transfer
# (the client and server check SHA-256 of every file) + close.
for mode in tls plain; do
  if [ $mode = tls ]; then R='$FERRY_TLS' H='$FHOME_TLS' O='--known-hosts $FKH' label="ferry (TLS)"
  else R='$FERRY_PLAIN' H='$FHOME_PLAIN' O='--insecure-plaintext' label="ferry (--insecure-plaintext)"; fi
  home=$FHOME_TLS; [ $mode = plain ] && home=$FHOME_PLAIN
  echo "#### $label"
  bench "ferry-$mode-big-up"   "$label" upload   MB $BIG_BYTES "\$FERRY put -q -f $O \$BD/big.bin $R/big.up" "rm -f $H/big.up"
  same_file "$BD/big.bin" "$home/big.up"
  bench "ferry-$mode-big-down" "$label" download MB $BIG_BYTES "\$FERRY get -q -f $O $R/big.bin \$BD/dst/big.down" "$DOWN"
  same_file "$BD/big.bin" "$BD/dst/big.down"
  rm -f "$home/big.up" "$BD/dst/big.down"
  bench "ferry-$mode-small-up"   "$label" upload   files $SMALL_N "\$FERRY put -q -r -f $O \$BD/small $R/small_up" "rm -rf $H/small_up"
  same_dir "$BD/small" "$home/small_up"
  bench "ferry-$mode-small-down" "$label" download files $SMALL_N "\$FERRY get -q -r -f $O $R/small \$BD/dst/small_down" "$SDOWN"
  same_dir "$BD/small" "$BD/dst/small_down"
  rm -rf "$home/small_up" "$BD/dst/small_down"
done
echo "#### load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# Each ferry server served every run of its mode (1 GiB up and down included):
# its peak resident set over all of them, against the 64 MiB target.
hwm() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$(cat "$ST/pids/$1" 2>/dev/null)/status" 2>/dev/null || echo "?"; }
mem_line="Server peak RSS (VmHWM) over all its runs: TLS $(hwm ferry-tls), plaintext $(hwm ferry-plain) (target: under 64 MiB during a 1 GiB transfer)"

# ---------------------------------------------------------------- 5. the table
# spec: label | ferry TLS id | ferry plaintext id | judged column (tls/plain/both) | target ratio | peer ids (best wins)
specs='1 GiB upload, encrypted|ferry-tls-big-up|ferry-plain-big-up|tls|2.5|scp-aes128-gcm-up,sftp-aes-put
1 GiB download, encrypted|ferry-tls-big-down|ferry-plain-big-down|tls|2.5|scp-aes128-gcm-down,sftp-aes-get
1 GiB upload, plaintext|ferry-tls-big-up|ferry-plain-big-up|plain|1.0|ftp-curl-up
1 GiB download, plaintext|ferry-tls-big-down|ferry-plain-big-down|plain|1.0|ftp-curl-down
2000 x 4 KiB upload|ferry-tls-small-up|ferry-plain-small-up|both|1.0|small-rsyncd-up
2000 x 4 KiB download|ferry-tls-small-down|ferry-plain-small-down|both|1.0|small-rsyncd-down'
{
  echo
  echo "## ferry vs peers (median of $RUNS runs after 1 warm-up; MB/s = 10^6 B/s; files/s)"
  echo
  echo '| measurement | ferry TLS | ferry plaintext | best peer (same run) | ratio | target | met? |'
  echo '|---|---|---|---|---|---|---|'
  printf '%s\n' "$specs" | awk -F'|' -v tsv="$RES/results.tsv" '
    BEGIN { while ((getline l < tsv) > 0) { split(l, f, "\t"); med[f[1]] = f[5]; tool[f[1]] = f[2]; unit[f[1]] = f[4] } }
    function show(id) { return (id in med) ? sprintf("%s %s", med[id], unit[id]) : "FAILED" }
    function ratio(a, b) { return (a in med && b != "" && med[b] > 0) ? med[a] / med[b] : -1 }
    function verdict(r, t) { return r < 0 ? "n/a" : (r >= t ? "yes" : "**no**") }
    {
      best = ""; n = split($6, p, ",")
      for (i = 1; i <= n; i++) if ((p[i] in med) && (best == "" || med[p[i]] > med[best])) best = p[i]
      peer = best == "" ? "FAILED" : sprintf("%s: %s (%s)", tool[best], show(best), best)
      rt = ratio($2, best); rp = ratio($3, best)
      if ($4 == "tls")        { r = sprintf("%.2fx (TLS)", rt);   m = verdict(rt, $5) }
      else if ($4 == "plain") { r = sprintf("%.2fx (plaintext)", rp); m = verdict(rp, $5) }
      else { r = sprintf("%.2fx TLS, %.2fx plaintext", rt, rp); m = "TLS " verdict(rt, $5) ", plaintext " verdict(rp, $5) }
      printf "| %s | %s | %s | %s | %s | >= %.1fx | %s |\n", $1, show($2), show($3), peer, r, $5, m
    }'
  echo
  echo "$mem_line"
  echo
  echo "Raw rows (median, min-max over the timed runs; CPU = busy % of all cores during one extra run):"
  echo
  bash "$PEERS/render.sh"
} | tee "$RES/ferry-table.md"
echo
echo "(table also in $RES/ferry-table.md; raw TSV $RES/results.tsv; hyperfine logs/JSON in $RES)"
