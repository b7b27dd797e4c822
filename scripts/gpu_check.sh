#!/usr/bin/env bash
# The checks that need a CUDA device: the gpu-marked tests, then `convoy bench` on the GPU
# (latency in both modes, throughput, generate). Results go under bench-out/gpu/.
# Under 10 minutes on one GPU. Needs the project installed (`make install`); Redis is
# started on a port of its own if none answers and redis-server is at hand.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"

echo "== gpu-marked tests"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || status=1

REDIS_URL=${CONVOY_BENCH_REDIS_URL:-redis://127.0.0.1:6379/9}
MODES=embedded,redis
if ! "$PY" -c "import redis, sys; redis.Redis.from_url('$REDIS_URL', socket_connect_timeout=1).ping()" 2>/dev/null; then
  if command -v redis-server >/dev/null; then
    redis-server --port 6391 --save '' --appendonly no --daemonize yes >/dev/null
    REDIS_URL=redis://127.0.0.1:6391/9
    trap 'redis-cli -p 6391 shutdown nosave >/dev/null 2>&1' EXIT
    sleep 0.5
  else
    echo "no Redis: benchmarks in embedded mode only"
    MODES=embedded
  fi
fi

bench() {  # scenario, time limit in seconds, extra options
  local name=$1 limit=$2
  shift 2
  echo "== convoy bench $name"
  timeout "$limit" "$PY" -m service.cli bench "$name" --device cuda --out "$OUT" \
    --redis-url "$REDIS_URL" "$@" || status=1
}
bench latency 150 --modes "$MODES" --scale 0.5
bench throughput 150 --modes "${MODES##*,}" --scale 0.5
bench generate 120 --modes "${MODES##*,}" --scale 0.5
exit $status
