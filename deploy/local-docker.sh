#!/usr/bin/env bash
# Makes sure a Docker engine and a loopback registry run on this machine, for the
# container tests and benchmarks (idempotent; needs root to install and start them):
#   - docker.io, docker-registry (and debootstrap, curl, for the base image) from Debian;
#   - dockerd without a bridge or iptables: containers use the host network on 127.0.0.1;
#   - the registry on 127.0.0.1:5000, storage in a temporary directory;
#   - the Python base image (deploy/base-image/build.sh), rebuilt when the runner changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

run_dir="${LUNA_DOCKER_RUN_DIR:-/tmp/luna-lambda-docker}"
mkdir -p "$run_dir"
if ! docker info >/dev/null 2>&1; then
    echo "== starting dockerd (no bridge, no iptables)"
    nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$run_dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { cat "$run_dir/dockerd.log"; exit 1; }
fi
if ! curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
    echo "== starting the registry on 127.0.0.1:5000"
    cat >"$run_dir/registry.yml" <<REGISTRY
version: 0.1
storage:
  filesystem:
    rootdirectory: $run_dir/registry
http:
  addr: 127.0.0.1:5000
REGISTRY
    nohup docker-registry serve "$run_dir/registry.yml" >"$run_dir/registry.log" 2>&1 &
    for _ in $(seq 1 150); do curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 0.2; done
    curl -fsS http://127.0.0.1:5000/v2/ >/dev/null || { cat "$run_dir/registry.log"; exit 1; }
fi
# Always: a changed runner must reach the image (the engine's build cache makes an
# unchanged one a matter of seconds).
"$here/base-image/build.sh"
