#!/usr/bin/env bash
# Builds seckill in release, makes sure a Redis answers (starting a private
# one, AOF on, if none does) and, when the config has a sink.url, that a
# PostgreSQL answers there (starting a private one if none does), creates
# the demo event, prints a curl to buy with and a psql line to see the
# orders arrive, and runs the server in the foreground (Ctrl-C stops it
# gracefully).
#
# Config: $SECKILL_CONFIG if set; otherwise target/run/config.toml, made once
# from config.toml with a fresh auth.secret and admin.key, and a sink into
# postgres://postgres@127.0.0.1:55432/seckill.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need redis-server redis-server
need redis-cli redis-tools
need curl curl
need psql postgresql-client
need_postgres

echo "building (release)..." >&2
cargo build --release --quiet
bin=target/release/seckill
run=target/run
mkdir -p "$run"

config=${SECKILL_CONFIG:-}
if [[ -z $config ]]; then
  config=$run/config.toml
  if [[ ! -f $config ]]; then
    secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    sed -e "s/^secret = \"\"/secret = \"$secret\"/" -e "s/^key = \"\"/key = \"$key\"/" \
      -e "s#^url = \"\"  #url = \"postgres://postgres@127.0.0.1:55432/seckill\"#" config.toml >"$config"
  fi
fi
export SECKILL_CONFIG=$config

# Read a key from the config: toml_get SECTION KEY DEFAULT
toml_get() {
  awk -v sec="[$1]" -v key="$2" -v def="$3" '
    /^\[/ { insec = ($0 == sec) }
    insec && $1 == key { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*#.*$/, ""); gsub(/"/, ""); print; found=1; exit }
    END { if (!found) print def }' "$config"
}
redis_url=$(toml_get redis url "redis://127.0.0.1:6379/")
hostport=${redis_url#redis://}
hostport=${hostport%%/*}
hostport=${hostport##*@}
rhost=${hostport%%:*}
rport=${hostport##*:}
[[ $rport == "$hostport" ]] && rport=6379
if [[ $(redis-cli -h "$rhost" -p "$rport" ping 2>/dev/null || true) != PONG ]]; then
  echo "no Redis at $rhost:$rport: starting a private redis-server (AOF every second in $run; log $run/redis.log)" >&2
  redis-server --bind "$rhost" --port "$rport" --save "" --appendonly yes --appendfsync everysec --daemonize yes \
    --dir "$PWD/$run" --pidfile "$PWD/$run/redis.pid" --logfile "$PWD/$run/redis.log"
  for _ in $(seq 100); do
    [[ $(redis-cli -h "$rhost" -p "$rport" ping 2>/dev/null || true) == PONG ]] && break
    sleep 0.05
  done
fi

# The sink's PostgreSQL: the one at sink.url, else a private one there.
sink_url=$(toml_get sink url "")
if [[ -n $sink_url ]]; then
  if ! psql "$sink_url" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    pg_hostport=${sink_url#postgres*://}
    pg_hostport=${pg_hostport#*@}
    pg_hostport=${pg_hostport%%/*}
    phost=${pg_hostport%%:*}
    pport=${pg_hostport##*:}
    [[ $pport == "$pg_hostport" ]] && pport=5432
    pdb=${sink_url##*/}
    pdb=${pdb%%\?*}
    pgdir=$PWD/$run/pg
    # As root, PostgreSQL runs as postgres, who must reach its directory.
    if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$PWD/$run"; then
      pgdir=/tmp/seckill-run-pg
    fi
    echo "no PostgreSQL at $phost:$pport: starting a private one (data $pgdir/data; log $pgdir/pg.log)" >&2
    pg_private_start "$pgdir" "$pport" "$phost"
    psql "postgres://postgres@$phost:$pport/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$pdb'" |
      grep -q 1 || psql "postgres://postgres@$phost:$pport/postgres" -qc "CREATE DATABASE $pdb" >/dev/null
  fi
fi

"$bin" serve >"$run/serve.out" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
for _ in $(seq 100); do
  grep -q 'listening on' "$run/serve.out" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { echo "seckill did not start (see above)" >&2; exit 1; }
  sleep 0.05
done
line=$(head -n1 "$run/serve.out")
public=$(echo "$line" | grep -o 'http://[^ )]*' | sed -n 1p | sed 's#0\.0\.0\.0#127.0.0.1#')
admin=$(echo "$line" | grep -o 'http://[^ )]*' | sed -n 2p)
admin_key=$(toml_get admin key "")

if [[ -n $admin_key ]]; then
  curl -fsS -X POST "$admin/admin/events" -H "Authorization: Bearer $admin_key" \
    --data-binary @examples/demo-event.json >/dev/null &&
    echo "demo event created from examples/demo-event.json (event 'demo', goods 'phone' and 'sticker')" >&2
else
  echo "admin.key is empty in $config: the demo event was not created" >&2
fi
token=$("$bin" token --uid demo-user)
cat <<MSG

seckill is running: $line
Buy a sticker (3 in stock) as demo-user:

  curl -s -X PUT $public/shop/cart/add -H 'Authorization: Bearer $token' -d '{"event_id":"demo","goods_id":"sticker"}'

More users: $bin token --count 5 --prefix user   (config: $config)
See the stock: curl -s $public/event/info?event_id=demo
MSG
if [[ -n $sink_url ]]; then
  cat <<MSG
See the orders arrive in PostgreSQL:

  psql '$sink_url' -c 'SELECT * FROM seckill_orders ORDER BY persisted_at DESC LIMIT 10'

Check the books: $bin check --event demo --wait 5
MSG
fi
cat <<MSG
Ctrl-C stops the server.

MSG
wait $pid
