#!/bin/sh
# A Sentinel setup in one container: a primary on PRIMARY_PORT, its replica on
# REPLICA_PORT, and a sentinel on each port of SENTINEL_PORTS (quorum 2),
# watching the primary as "mymaster". Everything announces 127.0.0.1, so
# with ports published one to one the host reaches what Sentinel names.
# A primary unreachable for 1s is failed over. Prints "redis-sentinel: ready"
# once the replica is in sync and every sentinel knows the replica and the
# other sentinels, then waits. Each process's pid is in /data/sentinel/PORT.pid.
set -eu
dir=/data/sentinel
mkdir -p "$dir"
p=$PRIMARY_PORT
r=$REPLICA_PORT
redis-server --port "$p" --dir "$dir" --save '' --appendonly no --replica-announce-ip 127.0.0.1 \
  --daemonize yes --pidfile "$dir/$p.pid" --logfile "$dir/$p.log"
redis-server --port "$r" --dir "$dir" --save '' --appendonly no --replicaof 127.0.0.1 "$p" --replica-announce-ip 127.0.0.1 \
  --daemonize yes --pidfile "$dir/$r.pid" --logfile "$dir/$r.log"
until redis-cli -p "$r" info replication | grep -q "master_link_status:up"; do sleep 0.1; done
n=0
for s in $SENTINEL_PORTS; do
  n=$((n + 1))
  cat >"$dir/sentinel-$s.conf" <<EOF
port $s
daemonize yes
pidfile $dir/$s.pid
logfile $dir/$s.log
dir $dir
sentinel announce-ip 127.0.0.1
sentinel monitor mymaster 127.0.0.1 $p 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
EOF
  redis-sentinel "$dir/sentinel-$s.conf"
done
for s in $SENTINEL_PORTS; do
  until [ "$(redis-cli -p "$s" sentinel replicas mymaster 2>/dev/null | grep -c "^ip$")" -ge 1 ] &&
    [ "$(redis-cli -p "$s" sentinel sentinels mymaster 2>/dev/null | grep -c "^ip$")" -ge $((n - 1)) ]; do
    sleep 0.2
  done
done
echo "redis-sentinel: ready"
# Stop at once on SIGTERM (a process 1 with no handler ignores it).
trap 'exit 0' TERM INT
while :; do
  sleep 3600 &
  wait $!
done
