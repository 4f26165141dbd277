#!/usr/bin/env bash
# The sink during a sell-out: does it keep up, and does it slow the sale?
#
# One seckill (server.threads = 1, queue rate unlimited), one private Redis,
# one private PostgreSQL. Rounds alternate a sell-out without a sink and one
# with a sink (10 000 stock, 100 000 users, 256 connections, `seckill
# bench`); after each sink round, the time from the last answer until
# `seckill_sink_lag_orders` reads 0, the rows PostgreSQL holds, and when
# the transaction holding the last of them began, after the last sale.
#
# Options: --rounds N (2). Installs what it needs from Debian when root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ROUNDS=2
[[ ${1:-} == --rounds ]] && ROUNDS=$2

need redis-server redis-server
need redis-cli redis-tools
need psql postgresql-client
need curl curl
need_postgres
cargo build --release --quiet --bin seckill
BIN=$PWD/target/release/seckill

RUN=$(mktemp -d /tmp/seckill-sink-lag.XXXXXX)
chmod 755 "$RUN"
RPORT=$(free_port) PGPORT=$(free_port) SPORT=$(free_port) APORT=$(free_port)
SP=""
cleanup() {
  [[ -n $SP ]] && { kill -TERM "$SP" 2>/dev/null || true; wait "$SP" 2>/dev/null || true; }
  pg_private_stop "$RUN/pg"
  [[ -f $RUN/redis.pid ]] && kill "$(cat "$RUN/redis.pid")" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" \
  --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
pg_private_start "$RUN/pg" "$PGPORT"
PGURL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
for _ in $(seq 100); do [[ $(redis-cli -p "$RPORT" ping 2>/dev/null || true) == PONG ]] && break; sleep 0.05; done
goods=""
for g in $(seq $((2 * ROUNDS))); do
  redis-cli -p "$RPORT" set "seckill:{e1:s$g}:stock" 10000 >/dev/null
  goods+="{\"goods_id\":\"s$g\",\"stock\":10000},"
done
redis-cli -p "$RPORT" hset seckill:events e1 \
  "{\"event_id\":\"e1\",\"start_at\":0,\"end_at\":4102444800,\"goods\":[${goods%,}]}" >/dev/null

serve() { # sink url, or empty
  cat >"$RUN/seckill.toml" <<TOML
[server]
bind = "127.0.0.1:$SPORT"
threads = 1
[admin]
bind = "127.0.0.1:$APORT"
[auth]
secret = "lag"
[redis]
url = "redis://127.0.0.1:$RPORT/"
[queue.shop]
rate = 0
[sink]
url = "$1"
TOML
  RUST_LOG=warn "$BIN" serve --config "$RUN/seckill.toml" >"$RUN/serve.out" 2>"$RUN/serve.log" &
  SP=$!
  for _ in $(seq 200); do grep -q listening "$RUN/serve.out" 2>/dev/null && break; sleep 0.05; done
  sleep 1.2 # the catalog read and, with a sink, its first discovery
}
lag() { curl -s "http://127.0.0.1:$SPORT/metrics" | awk '/^seckill_sink_lag_orders/ {print $2}'; }
g=0
for r in $(seq "$ROUNDS"); do
  for mode in without with; do
    g=$((g + 1))
    if [[ $mode == with ]]; then serve "$PGURL"; else serve ""; fi
    out=$("$BIN" bench --url "http://127.0.0.1:$SPORT" --event e1 --goods "s$g" --users 100000 \
      --concurrency 256 --secret lag --prefix "s$g-u" --json 2>/dev/null)
    t_end=$(date +%s.%N)
    rps=$(sed -E 's/.*"rps":([0-9.]+).*/\1/' <<<"$out")
    line="round $r, $mode sink: sell-out $(printf '%.0f' "$rps") req/s"
    if [[ $mode == with ]]; then
      while [[ "$(lag)" != "0" ]]; do sleep 0.01; done
      t0=$(date +%s.%N)
      # The sale ends long before the bench's last answer (90% of the
      # requests find no stock): PostgreSQL says when the last order went
      # in, against the last sale's stream id (Redis's clock, this machine).
      read -r rows after < <(psql "$PGURL" -qAtF ' ' -c "SELECT count(*),
        round(extract(epoch FROM max(persisted_at)) - max(split_part(order_id, '-', 1)::bigint) / 1000.0, 3)
        FROM seckill_orders WHERE goods_id = 's$g'")
      line+=", lag 0 $(awk -v a="$t_end" -v b="$t0" 'BEGIN { printf "%.2f", b - a }') s after the last answer, rows $rows"
      line+=", the last row's transaction began $after s after the last sale"
    fi
    echo "$line"
    kill -TERM "$SP"; wait "$SP" 2>/dev/null || true; SP=""
  done
done
