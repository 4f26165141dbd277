#!/usr/bin/env bash
# seckill's own end-to-end benchmark: one run, one table, ratios taken in
# the same run (absolute numbers move with the machine; ratios carry).
#
#   reject path  sold-out cart-add, keep-alive: seckill vs nginx answering the
#                same JSON to everything (wrk -t1 -c64, rounds interleaved)
#   close path   the same with Connection: close on every request
#   sell-out     seckill bench: stock 10000, 100000 users, 256 connections,
#                one request per connection; wins must equal the stock; with
#                each deduct strategy (SPEC §3.1: lua, sliding-lock), each on
#                its own node, rounds interleaved
#   via-lb       the same sell-out through haproxy (deploy/haproxy.cfg) to
#                three nodes (one event loop each, stock.nodes 3) on the same
#                Redis, rounds interleaved with the direct ones: on two cores
#                this is the cost of the hop, not scaling; and through three
#                more nodes deducting with the sliding lock (their watches
#                contend: one goods, three workers)
#   worker       the worker alone, queue kept full (examples/worker_alone),
#                vs redis-benchmark -P 16 running the same Lua script; with
#                each deduct strategy, against the same baseline
#   worker-rc    the worker alone against a 3-master Redis Cluster, tasks
#                spread over 12 goods (so over every master), vs the same on
#                the one Redis, rounds interleaved: on two cores, the cost of
#                routing and of three servers sharing the cores, not scaling
#   memory       server RSS growth per idle keep-alive connection at 10 000
#                connections (examples/idle_conns)
#   sink         seckill sink: a backlog of 100 000 stream entries into a
#                private PostgreSQL, orders/s, vs psql's \copy of the same
#                rows into a table with the same keys (medians of the rounds,
#                each from empty tables)
#
# Options: --rounds N (3)  --duration S (5, per wrk run)  --connections N (64)
#          --threads N (seckill server.threads; default 0 = one per core)
# Installs what it needs from Debian when run as root: redis-server,
# redis-tools, wrk, nginx-light. Runs everything on 127.0.0.1, free ports,
# and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ROUNDS=3 DURATION=5 CONNS=64 THREADS=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--duration S] [--connections N] [--threads N]" >&2; exit 2 ;;
  esac
done

need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need wrk wrk
need nginx nginx-light
need haproxy haproxy
need curl curl
need psql postgresql-client
need_postgres
echo "building (release)..." >&2
cargo build --release --quiet --bin seckill --example worker_alone --example idle_conns
BIN=$PWD/target/release/seckill
WORKER=$PWD/target/release/examples/worker_alone
IDLE=$PWD/target/release/examples/idle_conns

RUN=$(mktemp -d /tmp/seckill-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT
log() { printf '[%5ss] %s\n' "$SECONDS" "$*" >&2; }
wait_http() { # url log
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/${1##*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing answers at $1; its log:" >&2
  cat "$2" >&2 || true
  exit 1
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- Redis with the event: g0 sold out, a sell-out goods per round, worker goods ----
RPORT=$(free_port)
redis_private_start "$RUN" "$RPORT"
PIDS+=("$REDIS_PID")
rcli() { redis-cli -h 127.0.0.1 -p "$RPORT" "$@"; }
STOCK=10000
goods='{"goods_id":"g0","stock":0}'
rcli set 'seckill:{e1:g0}:stock' 0 >/dev/null
for r in $(seq "$ROUNDS"); do
  for g in sell$r lb$r sl$r lbsl$r; do
    rcli set "seckill:{e1:$g}:stock" "$STOCK" >/dev/null
    goods+=",{\"goods_id\":\"$g\",\"stock\":$STOCK}"
  done
done
rcli set 'seckill:{e1:w}:stock' 100000000 >/dev/null
rcli set 'seckill:{e1:wsl}:stock' 100000000 >/dev/null
rcli set 'seckill:{e1:rb}:stock' 100000000 >/dev/null
printf '{"event_id":"e1","name":"bench","start_at":0,"end_at":4102444800,"goods":[%s]}' "$goods" |
  rcli -x hset seckill:events e1 >/dev/null

# ---- seckill ----
SECRET=bench-secret
node_config() { # port threads nodes: a node on this Redis, queue unpaced
  cat <<TOML
[server]
bind = "127.0.0.1:$1"
threads = $2
[admin]
bind = "127.0.0.1:$(free_port)"
[auth]
secret = "$SECRET"
[redis]
url = "redis://127.0.0.1:$RPORT/"
[queue.shop]
rate = 0
[stock]
nodes = $3
TOML
}
SPORT=$(free_port)
node_config "$SPORT" "$THREADS" 1 >"$RUN/seckill.toml"
RUST_LOG=warn "$BIN" serve --config "$RUN/seckill.toml" >"$RUN/seckill.out" 2>"$RUN/seckill.log" &
SPID=$!
PIDS+=($SPID)
wait_http "http://127.0.0.1:$SPORT" "$RUN/seckill.log"

# ---- nginx: the same "no stock" JSON to every request ----
NPORT=$(free_port)
mkdir -p "$RUN/nginx/logs"
cat >"$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $RUN/nginx/body;
  proxy_temp_path $RUN/nginx/proxy;
  fastcgi_temp_path $RUN/nginx/fastcgi;
  uwsgi_temp_path $RUN/nginx/uwsgi;
  scgi_temp_path $RUN/nginx/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    location / {
      default_type application/json;
      return 200 '{"code":1001,"msg":"no stock","data":null}';
    }
  }
}
CONF
nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" &
PIDS+=($!)
wait_http "http://127.0.0.1:$NPORT" "$RUN/nginx/logs/error.log"

# ---- wrk scripts: PUT with a JSON body and a valid token ----
TOKEN=$("$BIN" token --uid bench-user --secret "$SECRET")
for mode in keep close; do
  {
    echo 'wrk.method = "PUT"'
    echo "wrk.body = '{\"event_id\":\"e1\",\"goods_id\":\"g0\"}'"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo "wrk.headers[\"Authorization\"] = \"Bearer $TOKEN\""
    [[ $mode == close ]] && echo 'wrk.headers["Connection"] = "close"'
  } >"$RUN/$mode.lua"
done
check=$(curl -s -X PUT "http://127.0.0.1:$SPORT/shop/cart/add" -H "Authorization: Bearer $TOKEN" \
  -d '{"event_id":"e1","goods_id":"g0"}' 2>/dev/null || true)
[[ $check == *'"code":1001'* ]] || { echo "seckill did not answer 1001 for g0: $check" >&2; exit 1; }

wrk_run() { # name port mode -> "rps p99ms"
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/$3.lua" "http://127.0.0.1:$2/shop/cart/add" >"$RUN/wrk.out" 2>&1 || true
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$RUN/wrk.out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$RUN/wrk.out")
  echo "${rps:-0} ${p99:-0}"
}
log "warm-up"
wrk -t1 -c"$CONNS" -d1s -s "$RUN/keep.lua" "http://127.0.0.1:$SPORT/shop/cart/add" >/dev/null 2>&1 || true
wrk -t1 -c"$CONNS" -d1s -s "$RUN/keep.lua" "http://127.0.0.1:$NPORT/shop/cart/add" >/dev/null 2>&1 || true

declare -A RPS P99
for mode in keep close; do
  for r in $(seq "$ROUNDS"); do
    order=(seckill nginx)
    ((r % 2 == 0)) && order=(nginx seckill)
    for s in "${order[@]}"; do
      port=$SPORT
      [[ $s == nginx ]] && port=$NPORT
      read -r rps p99 < <(wrk_run "$s" "$port" "$mode")
      RPS[$mode.$s]+="$rps "
      P99[$mode.$s]+="$p99 "
      log "$mode $s round $r: $rps req/s, p99 $p99 ms"
    done
  done
done

# ---- three nodes behind haproxy, for the sell-out through the balancer;
# ---- and three more deducting with the sliding lock, behind their own ----
lb_start() { # name strategy -> prints the balancer's port
  local nodes=() i port lb
  for i in 1 2 3; do
    port=$(free_port)
    { node_config "$port" 1 3; printf '[deduct]\nstrategy = "%s"\n' "$2"; } >"$RUN/$1-node$i.toml"
    RUST_LOG=warn "$BIN" serve --config "$RUN/$1-node$i.toml" >"$RUN/$1-node$i.out" 2>"$RUN/$1-node$i.log" &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port" "$RUN/$1-node$i.log"
    nodes+=("127.0.0.1:$port")
  done
  lb=$(free_port)
  haproxy_config "$lb" "${nodes[@]}" >"$RUN/$1-haproxy.cfg"
  haproxy -db -f "$RUN/$1-haproxy.cfg" >/dev/null 2>"$RUN/$1-haproxy.log" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$lb" "$RUN/$1-haproxy.log"
  for node in "${nodes[@]}"; do # each node has read the catalog
    for _ in $(seq 100); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$node/event/info?event_id=e1") == 200 ]] && break
      sleep 0.05
    done
  done
  LB_STARTED=$lb
}
lb_start lua lua
LBPORT=$LB_STARTED
lb_start sliding sliding-lock
LBSLPORT=$LB_STARTED

# ---- sell-out: one node directly, and three through haproxy, interleaved ----
declare -A SO_RPS SO_P99
SO_OK=1
sellout() { # name url goods round
  local out rps p99 wins hlen xlen left ok=ok
  out=$("$BIN" bench --url "$2" --event e1 --goods "$3" --users 100000 \
    --concurrency 256 --secret "$SECRET" --prefix "$3u" --json 2>/dev/null) || SO_OK=0
  rps=$(sed -E 's/.*"rps":([0-9.]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.*"p99_ms":([0-9.]+).*/\1/' <<<"$out")
  wins=$(sed -E 's/.*"wins":([0-9]+).*/\1/' <<<"$out")
  hlen=$(rcli hlen "seckill:{e1:$3}:buyers")
  xlen=$(rcli xlen "seckill:{e1:$3}:orders")
  left=$(rcli get "seckill:{e1:$3}:stock")
  [[ $wins == "$STOCK" && $hlen == "$STOCK" && $xlen == "$STOCK" && $left == 0 ]] || { ok=FAILED; SO_OK=0; }
  SO_RPS[$1]+="$rps " SO_P99[$1]+="$p99 "
  log "$1 round $4: $rps req/s, p99 $p99 ms, wins $wins, HLEN $hlen, XLEN $xlen, stock $left: $ok"
}
# The same node, but deducting with the sliding stock-number lock.
SLPORT=$(free_port)
{ node_config "$SLPORT" "$THREADS" 1; printf '[deduct]\nstrategy = "sliding-lock"\n'; } >"$RUN/sliding.toml"
RUST_LOG=warn "$BIN" serve --config "$RUN/sliding.toml" >"$RUN/sliding.out" 2>"$RUN/sliding.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$SLPORT" "$RUN/sliding.log"
for r in $(seq "$ROUNDS"); do
  runs=(direct lb sliding lbsl)
  ((r % 2)) || runs=(lbsl sliding lb direct)
  for what in "${runs[@]}"; do
    case $what in
      direct) sellout direct "http://127.0.0.1:$SPORT" "sell$r" "$r" ;;
      lb) sellout lb "http://127.0.0.1:$LBPORT" "lb$r" "$r" ;;
      sliding) sellout sliding "http://127.0.0.1:$SLPORT" "sl$r" "$r" ;;
      lbsl) sellout lbsl "http://127.0.0.1:$LBSLPORT" "lbsl$r" "$r" ;;
    esac
  done
done

# ---- memory per idle keep-alive connection, 10 000 of them ----
MEM=$("$IDLE" --addr "127.0.0.1:$SPORT" --pid "$SPID" --conns 10000 2>/dev/null || true)
MEM_PER=$(sed -E 's/.*bytes_per_conn=([0-9]+).*/\1/' <<<"$MEM")
log "idle connections: ${MEM:-failed}"

# ---- the worker alone vs redis-benchmark on the same script ----
W_OUT=$("$WORKER" --redis "redis://127.0.0.1:$RPORT/" --goods w --tasks 5000 --rounds 4 2>/dev/null)
W_RATE=$(sed -E 's/.*deducts_per_s=([0-9]+).*/\1/' <<<"$W_OUT")
SHA=$(rcli script load "$(cat src/store/deduct.lua)")
RB=$(redis-benchmark -h 127.0.0.1 -p "$RPORT" -n 200000 -P 16 -r 1000000000 -q \
  evalsha "$SHA" 3 'seckill:{e1:rb}:stock' 'seckill:{e1:rb}:buyers' 'seckill:{e1:rb}:orders' \
  'u__rand_int__' e1 rb 0 2>/dev/null | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | awk '{printf "%.0f", $1}')
W_SL_OUT=$("$WORKER" --redis "redis://127.0.0.1:$RPORT/" --goods wsl --tasks 5000 --rounds 4 --strategy sliding-lock 2>/dev/null)
W_SL_RATE=$(sed -E 's/.*deducts_per_s=([0-9]+).*/\1/' <<<"$W_SL_OUT")
log "worker alone: $W_RATE deducts/s (lua), $W_SL_RATE (sliding-lock); redis-benchmark -P 16: $RB req/s"

# ---- the worker against a Redis Cluster vs the one Redis, 12 goods each ----
mkdir -p "$RUN/rc"
redis_cluster_start "$RUN/rc" no >"$RUN/rc/pids" || { cat "$RUN/rc/pids"; exit 1; }
RC_SEEDS=()
while read -r pid p; do PIDS+=("$pid"); RC_SEEDS+=("redis://127.0.0.1:$p"); done <"$RUN/rc/pids"
RC_PORT=${RC_SEEDS[0]##*:}
RC_GOODS=$(seq -f 'c%g' 0 11 | paste -sd,)
for g in ${RC_GOODS//,/ }; do
  redis-cli -c -p "$RC_PORT" set "seckill:{e1:$g}:stock" 100000000 >/dev/null
  rcli set "seckill:{e1:$g}:stock" 100000000 >/dev/null
done
# How many masters hold goods (redis-cli --cluster create gives three
# masters 0-5460, 5461-10922 and 10923-16383).
RC_MASTERS=$(for g in ${RC_GOODS//,/ }; do
  redis-cli -p "$RC_PORT" cluster keyslot "seckill:{e1:$g}:stock"
done | awk '{ if ($1 <= 5460) a=1; else if ($1 <= 10922) b=1; else c=1 } END { print a+b+c }')
declare -A WRC=()
for r in $(seq "$ROUNDS"); do
  for mode in one cluster; do
    if [[ $mode == one ]]; then
      out=$("$WORKER" --redis "redis://127.0.0.1:$RPORT/" --goods "$RC_GOODS" --tasks 5000 --rounds 1 2>/dev/null)
    else
      out=$("$WORKER" --cluster --redis "$(IFS=,; echo "${RC_SEEDS[*]}")" --goods "$RC_GOODS" --tasks 5000 --rounds 1 2>/dev/null)
    fi
    WRC[$mode]+=" $(sed -E 's/.*deducts_per_s=([0-9]+).*/\1/' <<<"$out")"
  done
done
WRC_ONE=$(tr ' ' '\n' <<<"${WRC[one]}" | grep . | median)
WRC_CL=$(tr ' ' '\n' <<<"${WRC[cluster]}" | grep . | median)
log "worker, 12 goods: one Redis $WRC_ONE deducts/s, Redis Cluster ($RC_MASTERS of 3 masters hold goods) $WRC_CL deducts/s"

# ---- the sink: a backlog into PostgreSQL, vs COPY of the same rows ----
PGPORT=$(free_port)
chmod 755 "$RUN" # PostgreSQL runs as postgres when we are root
pg_private_start "$RUN/pg" "$PGPORT"
trap 'pg_private_stop "$RUN/pg"; cleanup' EXIT
PGURL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
SINK_N=100000
# Redis database 1 holds only this event: the sink carries every goods it
# finds, and the sell-outs above left 60 000 orders of their own in db 0.
sink_goods=""
for r in $(seq "$ROUNDS"); do sink_goods+="{\"goods_id\":\"sink$r\",\"stock\":0},"; done
printf '{"event_id":"e1","name":"bench","start_at":0,"end_at":4102444800,"goods":[%s]}' "${sink_goods%,}" |
  rcli -n 1 -x hset seckill:events e1 >/dev/null
cat >"$RUN/sink.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$RPORT/1"
[sink]
url = "$PGURL"
TOML
SINK_RATES="" COPY_RATES=""
for r in $(seq "$ROUNDS"); do
  # Each round starts from empty tables, like the baseline's.
  psql "$PGURL" -qc "DROP TABLE IF EXISTS seckill_orders, seckill_goods, seckill_order_conflicts, seckill_schema, bench_copy" 2>/dev/null
  rcli -n 1 eval "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'uid', 's' .. i, 'event_id', 'e1', 'goods_id', ARGV[2], 'ts_ms', '1') end" \
    1 "seckill:{e1:sink$r}:orders" "$SINK_N" "sink$r" >/dev/null
  RUST_LOG=warn "$BIN" sink --config "$RUN/sink.toml" --name bench 2>"$RUN/sink.log" &
  SINKPID=$!
  PIDS+=($SINKPID)
  # The rate from the first rows seen to the last: the sink's start-up
  # (connect, schema, first discovery) is not the backlog's cost. One psql
  # session polls `sold` (raised in each batch's own transaction) every
  # 20 ms: a psql process and a count(*) per poll took a sixth of this
  # 2-core machine from the sink it measured.
  coproc POLL {
    while sleep 0.02; do
      echo "SELECT extract(epoch FROM clock_timestamp()), sold FROM seckill_goods WHERE event_id = 'e1' AND goods_id = 'sink$r';"
    done | psql "$PGURL" -qAtF ' ' 2>/dev/null
  }
  # Kept now: bash unsets POLL_PID once the coprocess has ended.
  poll_pid=$POLL_PID
  r0=0 t0="" t1=""
  while read -r -t 60 t n <&"${POLL[0]}"; do
    [[ -z $t0 && $n -gt 0 ]] && { r0=$n; t0=$t; }
    [[ $n -ge $SINK_N ]] && { t1=$t; break; }
    kill -0 $SINKPID 2>/dev/null || break
  done
  { pkill -P "$poll_pid"; kill "$poll_pid"; } 2>/dev/null || true
  [[ -n $t1 ]] || { echo "seckill sink did not finish its backlog; its log:" >&2; cat "$RUN/sink.log" >&2; exit 1; }
  kill -TERM $SINKPID; wait $SINKPID 2>/dev/null || true
  rate=$(awk -v n="$((SINK_N - r0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
  # The baseline: the same rows, \copy'd into a table with the same keys.
  psql "$PGURL" -qc "\copy (SELECT event_id, goods_id, order_id, uid, ts_ms FROM seckill_orders) TO '$RUN/orders.csv' CSV"
  psql "$PGURL" -qc "CREATE TABLE bench_copy (LIKE seckill_orders INCLUDING ALL)"
  t0=$(date +%s.%N)
  psql "$PGURL" -qc "\copy bench_copy (event_id, goods_id, order_id, uid, ts_ms) FROM '$RUN/orders.csv' CSV"
  t1=$(date +%s.%N)
  copy=$(awk -v n="$SINK_N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
  SINK_RATES+="$rate " COPY_RATES+="$copy "
  log "sink round $r: $rate orders/s from a $SINK_N backlog; psql \\copy: $copy rows/s"
done
SINK_RATE=$(tr ' ' '\n' <<<"$SINK_RATES" | grep . | median)
COPY_RATE=$(tr ' ' '\n' <<<"$COPY_RATES" | grep . | median)

# ---- the table ----
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "## seckill scripts/bench.sh — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: nproc $(nproc), $(uname -sr), $(redis-server --version | awk '{print $3}'), $(nginx -v 2>&1 | awk -F/ '{print "nginx " $2}'), seckill threads=$THREADS"
echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds interleaved; medians"
echo
printf '%-10s %-13s %14s %14s %8s %12s %12s\n' path strategy "seckill req/s" "nginx req/s" "x nginx" "seckill p99" "nginx p99"
for mode in keep close; do
  s=$(tr ' ' '\n' <<<"${RPS[$mode.seckill]}" | grep . | median)
  n=$(tr ' ' '\n' <<<"${RPS[$mode.nginx]}" | grep . | median)
  sp=$(tr ' ' '\n' <<<"${P99[$mode.seckill]}" | grep . | median)
  np=$(tr ' ' '\n' <<<"${P99[$mode.nginx]}" | grep . | median)
  name=reject
  [[ $mode == close ]] && name=close
  printf '%-10s %-13s %14.0f %14.0f %8s %10s ms %10s ms\n' "$name" - "$s" "$n" "$(ratio "$s" "$n")" "$sp" "$np"
done
so=$(tr ' ' '\n' <<<"${SO_RPS[direct]}" | grep . | median)
sop=$(tr ' ' '\n' <<<"${SO_P99[direct]}" | grep . | median)
lb=$(tr ' ' '\n' <<<"${SO_RPS[lb]}" | grep . | median)
lbp=$(tr ' ' '\n' <<<"${SO_P99[lb]}" | grep . | median)
sl=$(tr ' ' '\n' <<<"${SO_RPS[sliding]}" | grep . | median)
slp=$(tr ' ' '\n' <<<"${SO_P99[sliding]}" | grep . | median)
printf '%-10s %-13s %14.0f %14s %8s %10s ms   (stock %s, 100000 users, 256 conns, 1 node direct; exact wins: %s)\n' \
  sell-out lua "$so" - - "$sop" "$STOCK" "$([[ $SO_OK == 1 ]] && echo yes || echo NO)"
printf '%-10s %-13s %14.0f %14.0f %8s %10s ms   (the same, vs lua req/s)\n' \
  sell-out sliding-lock "$sl" "$so" "$(ratio "$sl" "$so")" "$slp"
printf '%-10s %-13s %14.0f %14.0f %8s %10s ms   (the same through haproxy to 3 nodes, vs direct req/s)\n' \
  via-lb lua "$lb" "$so" "$(ratio "$lb" "$so")" "$lbp"
lbsl=$(tr ' ' '\n' <<<"${SO_RPS[lbsl]}" | grep . | median)
lbslp=$(tr ' ' '\n' <<<"${SO_P99[lbsl]}" | grep . | median)
printf '%-10s %-13s %14.0f %14.0f %8s %10s ms   (the same with the sliding lock on the 3 nodes, vs lua through haproxy)\n' \
  via-lb sliding-lock "$lbsl" "$lb" "$(ratio "$lbsl" "$lb")" "$lbslp"
printf '%-10s %-13s %14s %14s %8s   (deducts/s vs redis-benchmark -P 16, same script)\n' \
  worker lua "$W_RATE" "$RB" "$(ratio "$W_RATE" "$RB")"
printf '%-10s %-13s %14s %14s %8s   (deducts/s vs the same redis-benchmark)\n' \
  worker sliding-lock "$W_SL_RATE" "$RB" "$(ratio "$W_SL_RATE" "$RB")"
printf '%-10s %-13s %14.0f %14.0f %8s   (deducts/s, 12 goods on a 3-master Redis Cluster vs the same on one Redis)\n' \
  worker-rc lua "$WRC_CL" "$WRC_ONE" "$(ratio "$WRC_CL" "$WRC_ONE")"
printf '%-10s %-13s %14s %14s %8s   (RSS bytes per idle keep-alive connection, 10000 connections)\n' \
  memory - "${MEM_PER:-?}" - -
printf '%-10s %-13s %14s %14s %8s   (orders/s into PostgreSQL from a %s-entry backlog vs psql \\copy rows/s)\n' \
  sink - "$SINK_RATE" "$COPY_RATE" "$(ratio "$SINK_RATE" "$COPY_RATE")" "$SINK_N"
[[ $SO_OK == 1 ]]
