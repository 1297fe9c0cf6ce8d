#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:6379: install redis-server with apt-get if missing, start it if down.
set -euo pipefail
if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "redis-server not found: installing it with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
mkdir -p /tmp/voice-agent-redis
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir /tmp/voice-agent-redis --logfile /tmp/voice-agent-redis/redis.log
for _ in $(seq 1 50); do
  redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && exit 0
  sleep 0.1
done
echo "Redis did not start on 127.0.0.1:6379; see /tmp/voice-agent-redis/redis.log" >&2
exit 1
