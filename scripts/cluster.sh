#!/usr/bin/env bash
# Several seckill nodes behind haproxy, on loopback (SPEC §10).
#
#   scripts/cluster.sh up N [--redis-cluster]
#       a private Redis (with --redis-cluster: a 3-master Redis Cluster,
#       redis.nodes), N nodes (stock.nodes = N, one event loop each) and
#       haproxy in front of them (deploy/haproxy.cfg, its bind and server
#       lines replaced), every one on a free port; creates the demo event
#       (examples/demo-event.json) and prints a curl that buys through the
#       balancer.
#   scripts/cluster.sh down
#       stops everything `up` started, by PID (SIGTERM: the nodes answer what
#       they hold and exit); its logs stay until the next `up`.
#
# With SECKILL_SINK_URL set (a PostgreSQL URL), every node also runs the
# orders sink into it (SPEC §9).
#
# State, configs and logs: target/cluster/. Installs redis-server,
# redis-tools, haproxy and curl from Debian when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
dir=$PWD/target/cluster
pids=$dir/pids

usage() {
  echo "usage: $0 up N [--redis-cluster] | $0 down" >&2
  exit 2
}

down() {
  [[ -f $pids ]] || { echo "nothing is up (no $pids)" >&2; return 0; }
  # haproxy first, so no new request reaches a stopping node.
  tac "$pids" | while read -r name pid; do
    # Only what `up` started: a stale file (a reboot since) must not name
    # some other process that got the PID.
    grep -qaE 'redis-server|seckill|haproxy' "/proc/$pid/cmdline" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null && echo "$name ($pid) did not stop in 5 s: killed" >&2
    echo "stopped $name ($pid)" >&2
  done
  rm -f "$pids"
}

# started NAME PID: remembers a process for `down`.
started() { echo "$1 $2" >>"$pids"; }

up() {
  local n=$1 redis_cluster=$2
  [[ $n =~ ^[1-9][0-9]*$ ]] || usage
  if [[ -f $pids ]]; then
    echo "already up ($pids): $0 down first" >&2
    exit 1
  fi
  need redis-server redis-server
  need redis-cli redis-tools
  need haproxy haproxy
  need curl curl
  echo "building (release)..." >&2
  cargo build --release --quiet --bin seckill
  local bin=$PWD/target/release/seckill
  # A fresh sale each time: the last cluster's Redis data (its AOF) and
  # logs go.
  rm -rf "$dir"
  mkdir -p "$dir"
  trap 'echo "up failed: stopping what started" >&2; down' ERR

  local rport secret key redis_section where
  if [[ $redis_cluster == 1 ]]; then
    # Three masters, no replicas; each keeps an AOF in its own dir.
    local ports=() seeds=() pid p k=0
    redis_cluster_start "$dir" yes >"$dir/redis-cluster.pids" ||
      { while read -r pid p; do started "redis$((++k))" "$pid"; done <"$dir/redis-cluster.pids"; false; }
    while read -r pid p; do
      started "redis$((++k))" "$pid"
      ports+=("$p")
      seeds+=("\"redis://127.0.0.1:$p\"")
    done <"$dir/redis-cluster.pids"
    redis_section="nodes = [$(IFS=,; echo "${seeds[*]}")]"
    where="a 3-master Redis Cluster on 127.0.0.1:$(IFS=,; echo "${ports[*]}")"
  else
    rport=$(free_port)
    setsid redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly yes \
      --appendfsync everysec --dir "$dir" --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
    started redis $!
    for _ in $(seq 100); do
      [[ $(redis-cli -p "$rport" ping 2>/dev/null || true) == PONG ]] && break
      sleep 0.05
    done
    redis_section="url = \"redis://127.0.0.1:$rport/\""
    where="one Redis on 127.0.0.1:$rport"
  fi
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

  # The nodes bind port 0 and say which port they got: no two can race
  # for one.
  local nodes=() i
  for i in $(seq "$n"); do
    cat >"$dir/node$i.toml" <<TOML
[server]
bind = "127.0.0.1:0"
threads = 1
[admin]
bind = "127.0.0.1:0"
key = "$key"
[auth]
secret = "$secret"
[redis]
$redis_section
[stock]
nodes = $n
TOML
    if [[ -n ${SECKILL_SINK_URL:-} ]]; then
      printf '[sink]\nurl = "%s"\n' "$SECKILL_SINK_URL" >>"$dir/node$i.toml"
    fi
    setsid "$bin" serve --config "$dir/node$i.toml" </dev/null >"$dir/node$i.out" 2>"$dir/node$i.log" &
    started "node$i" $!
  done
  for i in $(seq "$n"); do
    for _ in $(seq 100); do grep -q 'listening on' "$dir/node$i.out" 2>/dev/null && break; sleep 0.05; done
    grep -q 'listening on' "$dir/node$i.out" || { cat "$dir/node$i.log" >&2; false; }
    nodes+=("$(grep -o 'http://[^ )]*' "$dir/node$i.out" | sed -n 1p | sed 's#^http://##')")
  done

  local lb
  lb=$(free_port)
  haproxy_config "$lb" "${nodes[@]}" >"$dir/haproxy.cfg"
  setsid haproxy -db -f "$dir/haproxy.cfg" </dev/null >/dev/null 2>"$dir/haproxy.log" &
  started haproxy $!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$lb") 2>/dev/null && break; sleep 0.05; done
  (exec 3<>"/dev/tcp/127.0.0.1/$lb") 2>/dev/null || { cat "$dir/haproxy.log" >&2; false; }

  local admin1
  admin1=$(grep -o 'http://[^ )]*' "$dir/node1.out" | sed -n 2p)
  curl -fsS -X POST "$admin1/admin/events" -H "Authorization: Bearer $key" \
    --data-binary @examples/demo-event.json >/dev/null
  # Every node learns of the event within a second; the balancer then
  # answers for it whichever node it picks.
  for _ in $(seq 60); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$lb/event/info?event_id=demo") == 200 ]] && break
    sleep 0.05
  done
  trap - ERR
  local token
  token=$("$bin" token --uid demo-user --secret "$secret")
  cat <<MSG

$n nodes behind haproxy on 127.0.0.1:$lb, $where (state and logs: $dir)
Buy a sticker (3 in stock) as demo-user, through the balancer:

  curl -s -X PUT http://127.0.0.1:$lb/shop/cart/add -H 'Authorization: Bearer $token' -d '{"event_id":"demo","goods_id":"sticker"}'

More users: $bin token --count 5 --prefix user --secret $secret
A sale through the balancer: $bin bench --url http://127.0.0.1:$lb --event demo --goods phone --users 5000 --secret $secret
The books: $bin check --event demo --config $dir/node1.toml
Stop everything: $0 down

MSG
}

case ${1:-} in
  up)
    [[ $# -ge 2 ]] || usage
    rc=0
    [[ ${3:-} == --redis-cluster ]] && rc=1
    [[ $# -le 3 ]] || usage
    up "$2" "$rc"
    ;;
  down) down ;;
  *) usage ;;
esac
