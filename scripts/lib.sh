# Shared helpers for scripts/*.sh (sourced, not run).

# need CMD PACKAGE...: installs Debian packages when CMD is missing (as root).
need() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$0: '$cmd' is missing; install: apt-get install -y $*" >&2
    exit 1
  fi
  echo "$0: installing $* (for '$cmd')" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  fi
}

# need_postgres: the PostgreSQL server binaries the tests start privately
# (initdb, postgres). Debian keeps them in /usr/lib/postgresql/*/bin, off
# PATH; installs `postgresql` when neither place has them (as root). The
# package's own cluster is not used.
need_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$0: PostgreSQL server binaries are missing; install: apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "$0: installing postgresql (for the sink's tests)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
}

# A private PostgreSQL cluster for the scripts (the tests have their own, in
# tests/support/pg.rs). PostgreSQL refuses to run as root: as root its files
# and its process belong to the postgres user, and DIR's parents must let
# that user through.
pg_bin() { dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -n1)"; }
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# pg_private_start DIR PORT [HOST]: the cluster in DIR/data (made on first
# use: trust auth, user postgres), listening on HOST:PORT (127.0.0.1), its
# socket and log in DIR; returns once it accepts connections.
pg_private_start() {
  local dir=$1 port=$2 host=${3:-127.0.0.1} bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  [[ $(id -u) -eq 0 ]] && chown postgres "$dir"
  [[ -f $dir/data/PG_VERSION ]] || as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >/dev/null
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-p $port -k $dir -c listen_addresses=$host" start >/dev/null
}
# pg_private_stop DIR: a fast shutdown; quiet when it is not running.
pg_private_stop() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/data" -m fast stop >/dev/null 2>&1 || true
}

# free_port: a TCP port nothing listens on, below the ephemeral range
# (32768+) so no outgoing connection takes it meanwhile.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# haproxy_config PORT NODE_ADDR...: deploy/haproxy.cfg as shipped, listening
# on 127.0.0.1:PORT, with one `server` line per node (host:port) instead of
# its own; on stdout. (tests/support/haproxy.rs does the same for the tests.)
haproxy_config() {
  local port=$1 servers="" i=0 node
  shift
  for node in "$@"; do
    i=$((i + 1))
    servers+="    server node$i $node"$'\n'
  done
  awk -v bind="    bind 127.0.0.1:$port" -v servers="$servers" '
    $1 == "server" { next }
    $1 == "bind" { print bind; next }
    { print }
    END { printf "%s", servers }' deploy/haproxy.cfg
}

# redis_private_start DIR PORT: a throwaway redis-server (no persistence)
# on 127.0.0.1:PORT with its log in DIR, in the background; waits until it
# answers and leaves its PID in REDIS_PID for the caller to stop.
redis_private_start() {
  redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$1" \
    --logfile "$1/redis.log" </dev/null >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do [[ $(redis-cli -p "$2" ping 2>/dev/null || true) == PONG ]] && break; sleep 0.05; done
}

# redis_cluster_start DIR AOF(yes|no): three Redis Cluster masters, no
# replicas, on free loopback ports (each with its cluster bus port, +10000,
# free too), with their data and logs in DIR/redis1..3; joined with
# `redis-cli --cluster create`, then waited for until every one says
# cluster_state:ok. Prints "PID PORT" for each master on stdout, for the
# caller to stop by PID; returns 1 (saying why) when the cluster did not form.
redis_cluster_start() {
  local dir=$1 aof=$2 ports=() p i try
  for i in 1 2 3; do
    mkdir -p "$dir/redis$i"
    for try in 1 2 3 4 5; do
      # Both ports below the ephemeral range (32768+), so no outgoing
      # connection takes the bus port between this check and the bind.
      while :; do
        p=$((20000 + RANDOM % 2700))
        (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
        (echo >"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null || break
      done
      setsid redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/redis$i/nodes.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly "$aof" --appendfsync everysec --dir "$dir/redis$i" \
        --logfile "$dir/redis$i/redis.log" </dev/null >/dev/null 2>&1 &
      local pid=$!
      # Up before the next port is picked, so two masters never pick one.
      for _ in $(seq 100); do
        [[ $(redis-cli -p "$p" ping 2>/dev/null || true) == PONG ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      if [[ $(redis-cli -p "$p" ping 2>/dev/null || true) == PONG ]]; then
        echo "$pid $p"
        ports+=("$p")
        break
      fi
      kill -KILL "$pid" 2>/dev/null || true
      [[ $try == 5 ]] && { echo "redis cluster node $i did not start:" >&2; tail -5 "$dir/redis$i/redis.log" >&2; return 1; }
      rm -f "$dir/redis$i/nodes.conf"
    done
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$dir/cluster-create.log" 2>&1 || { cat "$dir/cluster-create.log" >&2; return 1; }
  for p in "${ports[@]}"; do
    for _ in $(seq 200); do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
      sleep 0.05
    done
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' ||
      { echo "redis cluster node $p is not ok" >&2; return 1; }
  done
}
