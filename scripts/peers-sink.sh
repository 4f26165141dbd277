#!/usr/bin/env bash
# The sink under the peers' own sell-out. `../shared/peers/bench.sh` runs
# seckill as its --project twice: without a sink, then with a `[sink]`
# section (--project-toml) pointing at a private PostgreSQL. In the second
# run a watcher polls seckill's /metrics every 20 ms and, for each
# sell-out, prints the time from the last sale (the worker's code-0
# answers reaching a multiple of the stock) until `seckill_sink_lag_orders`
# reads 0; then PostgreSQL's rows per goods and when the last one came.
# Compare the two runs' sell-out rows (each beside the same peers, in its
# own run) for what the sink costs the sale.
#
# Usage: scripts/peers-sink.sh [peers/bench.sh options, e.g. --rounds 3]
# Installs what it needs from Debian when root; the peers' build.sh installs
# theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PEERS=$(cd ../shared/peers 2>/dev/null && pwd) || {
  echo "$0: ../shared/peers is missing (the peers sit beside the checkout)" >&2
  exit 1
}
STOCK=10000
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --stock ]] && STOCK=${args[i + 1]}
done

need psql postgresql-client
need_postgres
cargo build --release --quiet --bin seckill
BIN=$PWD/target/release/seckill

RUN=$(mktemp -d /tmp/seckill-peers-sink.XXXXXX)
chmod 755 "$RUN"
trap 'pg_private_stop "$RUN/pg"; rm -rf "$RUN"' EXIT
PGPORT=$(free_port)
pg_private_start "$RUN/pg" "$PGPORT"
PGURL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
printf '[sink]\nurl = "%s"\n' "$PGURL" >"$RUN/sink.toml"

# The watcher: bash builtins only, so polling costs the sale no process
# per poll. Reading a FIFO opened read-write (never written, never at EOF)
# with a timeout is its sleep. One line per poll: unix-seconds wins lag.
mkfifo "$RUN/nap"
cat >"$RUN/watch.sh" <<'WATCH'
exec {nap}<>"$1"
while :; do
  read -r -t 0.02 -u "$nap" _ || true
  exec {c}<>"/dev/tcp/127.0.0.1/$2" || continue
  printf 'GET /metrics HTTP/1.1\r\nHost: watch\r\nConnection: close\r\n\r\n' >&"$c"
  wins=0 lag=-
  while IFS=' ' read -r k v; do
    v=${v%$'\r'}
    case $k in
      'seckill_worker_responses_total{code="0"}') wins=$v ;;
      seckill_sink_lag_orders) lag=$v ;;
    esac
  done <&"$c"
  exec {c}<&-
  echo "$EPOCHREALTIME $wins $lag"
done
WATCH
cat >"$RUN/project.sh" <<PROJECT
"$BIN" serve --config "\$SECKILL_CONFIG" &
sp=\$!
bash "$RUN/watch.sh" "$RUN/nap" "\$PORT" 2>/dev/null >"$RUN/lag.log" &
wait \$sp
PROJECT

echo "== without a sink ==" >&2
"$PEERS/bench.sh" --project "exec \"$BIN\" serve --config \"\$SECKILL_CONFIG\"" \
  --project-name seckill "$@" | tee "$RUN/without.txt"
echo "== with a sink ==" >&2
"$PEERS/bench.sh" --no-build --project "bash $RUN/project.sh" --project-name seckill+sink \
  --project-toml "$RUN/sink.toml" "$@" | tee "$RUN/with.txt"

echo
echo "## the sink's lag after each of seckill's sell-outs"
echo "(/metrics every 20 ms: from the first poll that shows the stock sold to the first that shows"
echo "seckill_sink_lag_orders 0; 0.00 means within one poll)"
awk -v stock="$STOCK" '
  $2 > 0 && $2 % stock == 0 && $2 != done {
    if (!t_sale[$2]) t_sale[$2] = $1
    if ($3 == "0") {
      printf "sell-out %d: lag 0 %.2f s after the last sale\n", $2 / stock, $1 - t_sale[$2]
      done = $2
    }
  }
' "$RUN/lag.log"
echo
echo "## seckill's sell-outs in PostgreSQL (the sink also wrote the peers' sales: same Redis, same event)"
echo "(last_tx_after_last_sale_s: when the transaction holding the last row began, after the last"
echo "sale's stream id; its commit came within one batch's write of that)"
psql "$PGURL" -qc "SELECT goods_id, count(*) AS rows, count(DISTINCT uid) AS buyers,
  round(extract(epoch FROM max(persisted_at))
        - max(split_part(order_id, '-', 1)::bigint) / 1000.0, 3) AS last_tx_after_last_sale_s
  FROM seckill_orders WHERE goods_id LIKE 'sell-seckill%' GROUP BY goods_id ORDER BY goods_id"
psql "$PGURL" -qAtc "SELECT 'every goods: ' || count(*) || ' rows, ' || count(DISTINCT (goods_id, uid)) || ' distinct (goods, buyer)' FROM seckill_orders"
