#!/usr/bin/env bash
# Makes the README's picture of a run: a private Redis and one release node
# on free loopback ports, a goods of STOCK units, `seckill bench --report`
# with USERS distinct users over CONNS connections (one request each), and
# the page rendered to a PNG by headless Chromium (Debian's chromium,
# installed when missing and root). Everything is stopped by PID at exit.
#
# Usage: scripts/report.sh [OUT_DIR]   (default: docs/)
#        STOCK=1000 USERS=50000 CONNS=128 scripts/report.sh
# Writes OUT_DIR/report.html and OUT_DIR/report.png.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need redis-server redis-server
need redis-cli redis-tools
need chromium chromium

OUT=${1:-docs}
STOCK=${STOCK:-1000}
USERS=${USERS:-50000}
CONNS=${CONNS:-128}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "building (release)..." >&2
cargo build --release --quiet
BIN=target/release/seckill
RUN=$(mktemp -d)
PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap stop EXIT

RPORT=$(free_port)
redis_private_start "$RUN" "$RPORT"
PIDS+=("$REDIS_PID")
redis-cli -p "$RPORT" set 'seckill:{e1:g1}:stock' "$STOCK" >/dev/null
printf '{"event_id":"e1","name":"report","start_at":0,"end_at":4102444800,"goods":[{"goods_id":"g1","name":"g","price_cents":100,"stock":%s}]}' "$STOCK" |
  redis-cli -p "$RPORT" -x hset seckill:events e1 >/dev/null

SECRET=report-secret
SPORT=$(free_port)
cat >"$RUN/seckill.toml" <<TOML
[server]
bind = "127.0.0.1:$SPORT"
[admin]
bind = "127.0.0.1:$(free_port)"
[auth]
secret = "$SECRET"
[redis]
url = "redis://127.0.0.1:$RPORT/"
TOML
RUST_LOG=warn "$BIN" serve --config "$RUN/seckill.toml" >"$RUN/seckill.out" 2>"$RUN/seckill.log" &
PIDS+=($!)
for _ in $(seq 200); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SPORT/event/info?event_id=e1" || true) == 200 ]] && break
  sleep 0.05
done

"$BIN" bench --url "http://127.0.0.1:$SPORT" --event e1 --goods g1 --users "$USERS" \
  --concurrency "$CONNS" --secret "$SECRET" --report "$OUT/report.html"

chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-quic \
  --no-first-run --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$RUN/profile" --window-size=960,1720 \
  --screenshot="$OUT/report.png" "file://$OUT/report.html" 2>/dev/null
echo "wrote $OUT/report.html and $OUT/report.png" >&2
