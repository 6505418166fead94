#!/usr/bin/env bash
# Prepares a machine for the integration tests and `make up`: a running Docker
# engine, docker compose, and Redis and HAProxy images. Prints shell assignments
# for the variables the tests and docker-compose.yml read, so callers do
# `eval "$(scripts/docker-env.sh)"`. Progress goes to stderr.
#
# Works on an air-gapped CI runner: when the public images are not present
# locally it builds local/redis:7 (redis-server, redis-sentinel, redis-cli: a
# Redis Cluster or a Sentinel setup runs from it too) and local/haproxy:2
# from Debian's binaries (no registry pull). On a laptop with Docker and no redis-server installed, it
# leaves the default public images for testcontainers and compose to pull.
#
# As root on a Debian-like machine it installs what is missing (docker.io,
# busybox-static, redis-server) and starts dockerd if no engine answers.
set -euo pipefail
say() { echo "docker-env: $*" >&2; }

root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
mkdir -p "$cache"

need_apt=()
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
if ! docker compose version >/dev/null 2>&1; then
  command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
fi
if [ -z "${HUB_TEST_REDIS_IMAGE:-}" ]; then
  # Local images are built from Debian's binaries (see below): have them.
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
  [ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need_apt+=(busybox-static)
fi
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

# A dockerd started here is recorded in .cache/dockerd.pid, so that whoever
# asked for it (.ci/run) can stop exactly that process and no other.
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: .cache/dockerd.log, pid: .cache/dockerd.pid)"
    nohup dockerd --iptables=false --ip-masq=false >"$cache/dockerd.log" 2>&1 &
    echo $! >"$cache/dockerd.pid.tmp" && mv "$cache/dockerd.pid.tmp" "$cache/dockerd.pid"
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 1
    done
  fi
fi
if ! docker info >/dev/null 2>&1; then
  say "no Docker engine answers; the integration tests need one"
  exit 1
fi

# The recipe of the local images: a local image built by an older recipe is
# built again (its ENV HUBCLUSTER_RECIPE differs).
recipe=2

# build_image NAME PORT BINARY ARGS...: an image holding BINARY from this machine, the
# libraries it links, and busybox as /bin/sh with the tools testcontainers' port
# wait (and the cluster tests' scripts) run inside the container. BINARY runs
# through a wrapper that adds ARGS after the caller's arguments (so a config
# file may come first, as redis-server wants). EXTRA_BINS names more binaries
# to copy as they are; EXTRA_WRAPPERS "NAME=ARGS;..." more wrappers of BINARY.
build_image() {
  local name=$1 port=$2 bin=$3; shift 3
  local dir; dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/usr/local/bin" "$dir/tmp" "$dir/data"
  chmod 1777 "$dir/tmp"
  local real; real=real-$(basename "$bin")
  cp "$bin" "$dir/usr/local/bin/$real"
  local extra
  for extra in ${EXTRA_BINS:-}; do cp "$extra" "$dir/usr/local/bin/$(basename "$extra")"; done
  for lib in $(ldd "$bin" ${EXTRA_BINS:-} | awk '/=>/ {print $3} /^\t\// {print $1}' | sort -u); do
    [ -f "$lib" ] || continue
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  local bb; bb=$(command -v busybox)
  cp "$bb" "$dir/bin/busybox"
  for tool in sh cat grep awk nc sleep ls kill ps mkdir rm seq sed head tail tr wc cut date; do
    ln -sf busybox "$dir/bin/$tool"
  done
  printf '#!/bin/sh\nexec /usr/local/bin/%s "$@" %s\n' "$real" "$*" >"$dir/usr/local/bin/$(basename "$bin")"
  chmod +x "$dir/usr/local/bin/$(basename "$bin")"
  local wrapper IFS_=$IFS
  IFS=';'
  for wrapper in ${EXTRA_WRAPPERS:-}; do
    IFS=$IFS_
    printf '#!/bin/sh\nexec /usr/local/bin/%s "$@" %s\n' "$real" "${wrapper#*=}" >"$dir/usr/local/bin/${wrapper%%=*}"
    chmod +x "$dir/usr/local/bin/${wrapper%%=*}"
  done
  IFS=$IFS_
  tar -C "$dir" -c . | docker import -c "CMD [\"$(basename "$bin")\"]" -c "EXPOSE $port" \
    -c 'ENV PATH=/usr/local/bin:/bin' -c "ENV HUBCLUSTER_RECIPE=$recipe" -c 'WORKDIR /data' - "$name" >/dev/null
  rm -rf "$dir"
}

# current_image NAME: whether NAME exists, built by this recipe.
current_image() {
  docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" 2>/dev/null | grep -qx "HUBCLUSTER_RECIPE=$recipe"
}

redis_image=${HUB_TEST_REDIS_IMAGE:-}
if [ -z "$redis_image" ]; then
  if docker image inspect redis:7-alpine >/dev/null 2>&1; then
    redis_image=redis:7-alpine
  elif command -v redis-server >/dev/null 2>&1; then
    redis_image=local/redis:7
    if ! current_image "$redis_image"; then
      say "building $redis_image from $(command -v redis-server) and $(command -v redis-cli)"
      EXTRA_BINS=$(command -v redis-cli) EXTRA_WRAPPERS="redis-sentinel=--sentinel --protected-mode no" \
        build_image "$redis_image" 6379 "$(command -v redis-server)" --protected-mode no
    fi
  else
    redis_image=redis:7-alpine # testcontainers pulls it
  fi
fi
haproxy_image=${HAPROXY_IMAGE:-}
if [ -z "$haproxy_image" ]; then
  haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
  if docker image inspect haproxy:2.8 >/dev/null 2>&1; then
    haproxy_image=haproxy:2.8
  elif [ "$redis_image" = local/redis:7 ] && [ -x "$haproxy_bin" ]; then
    haproxy_image=local/haproxy:2
    if ! current_image "$haproxy_image"; then
      say "building $haproxy_image from $haproxy_bin"
      build_image "$haproxy_image" 8080 "$haproxy_bin"
    fi
  else
    haproxy_image=haproxy:2.8 # docker compose pulls it
  fi
fi
say "redis image: $redis_image, haproxy image: $haproxy_image"

echo "export HUB_TEST_REDIS_IMAGE=$redis_image"
echo "export REDIS_IMAGE=\${REDIS_IMAGE:-$redis_image}"
echo "export HAPROXY_IMAGE=$haproxy_image"
echo "export TESTCONTAINERS_RYUK_DISABLED=\${TESTCONTAINERS_RYUK_DISABLED:-true}"
# testcontainers on a machine with /.dockerenv would think it runs inside a
# container and dial the default gateway; the engine publishes ports on this
# machine's loopback, so default the host to 127.0.0.1.
echo "export TESTCONTAINERS_HOST_OVERRIDE=\${TESTCONTAINERS_HOST_OVERRIDE:-127.0.0.1}"
