#!/bin/sh
# A Redis Cluster in one container: one redis-server per port in PORTS
# (default 7000 to 7005), joined by redis-cli --cluster create into a cluster
# of primaries with REPLICAS replicas each (default 1: three primaries, three
# replicas). Every node announces ANNOUNCE_IP (default: this container's
# address), so clients outside the container follow the MOVED replies; with
# ports published one to one, ANNOUNCE_IP=127.0.0.1 serves the host.
#
# NODE_TIMEOUT (ms, default 5000) is how long a primary may be unreachable
# before its replica takes over; APPENDONLY (default no) turns on append-only
# persistence, fsynced before each reply. Data lives in DATA_DIR (default
# /data/cluster); a container started again on the same data keeps its
# cluster. Prints "redis-cluster: ready" once every slot is served, every
# node knows every replica, and every replica is in sync; then waits. Each node's pid is in DATA_DIR/PORT.pid.
#
# Runs under busybox sh: docker-compose.cluster.yml and the integration tests
# use it with local/redis:7 (scripts/docker-env.sh) or redis:7-alpine.
set -eu
ports=${PORTS:-7000 7001 7002 7003 7004 7005}
replicas=${REPLICAS:-1}
timeout=${NODE_TIMEOUT:-5000}
aof=${APPENDONLY:-no}
dir=${DATA_DIR:-/data/cluster}
ip=${ANNOUNCE_IP:-}
if [ -z "$ip" ]; then
  ip=$(awk -v h="$(cat /etc/hostname)" '$2 == h { print $1; exit }' /etc/hosts)
fi
mkdir -p "$dir"
fresh=1
for p in $ports; do
  if [ -s "$dir/nodes-$p.conf" ]; then fresh=0; fi
done
for p in $ports; do
  mkdir -p "$dir/$p"
  redis-server --port "$p" --dir "$dir/$p" --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
    --cluster-node-timeout "$timeout" --cluster-announce-ip "$ip" \
    --appendonly "$aof" --appendfsync always --save '' \
    --daemonize yes --pidfile "$dir/$p.pid" --logfile "$dir/$p.log"
done
for p in $ports; do
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
done
first=${ports%% *}
if [ "$fresh" = 1 ]; then
  addrs=""
  for p in $ports; do addrs="$addrs $ip:$p"; done
  # shellcheck disable=SC2086 # one argument per node
  if ! redis-cli --cluster create $addrs --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1; then
    cat "$dir/create.log"
    exit 1
  fi
fi
until redis-cli --cluster check "$ip:$first" 2>/dev/null | grep -q "All 16384 slots covered"; do sleep 0.2; done
n=0
for p in $ports; do n=$((n + 1)); done
want=$((n - n / (replicas + 1))) # replicas every node must know of
for p in $ports; do
  until redis-cli -p "$p" cluster info | grep -q "cluster_state:ok"; do sleep 0.1; done
  until [ "$(redis-cli -p "$p" cluster nodes | grep -c slave)" -ge "$want" ]; do sleep 0.1; done
  while redis-cli -p "$p" info replication | grep -q "^role:slave" &&
    ! redis-cli -p "$p" info replication | grep -q "master_link_status:up"; do
    sleep 0.1
  done
done
echo "redis-cluster: ready"
# Stop at once on SIGTERM (a process 1 with no handler ignores it).
trap 'exit 0' TERM INT
while :; do
  sleep 3600 &
  wait $!
done
