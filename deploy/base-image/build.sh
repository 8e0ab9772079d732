#!/usr/bin/env bash
# Builds the base image for Python container lambdas on a machine with no registry to pull
# from: a minimal Debian root filesystem made by debootstrap (python3 + pip, nothing else) is
# imported into the local Docker engine, then the runner is layered on top of it.
#
#   deploy/base-image/build.sh [TAG]        (default tag: luna-lambda/python:bookworm)
#
# Needs root, debootstrap and a running Docker engine. Only the Debian mirror is contacted
# (DEBIAN_MIRROR, default deb.debian.org). Re-running reuses the imported root filesystem.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tag="${1:-luna-lambda/python:bookworm}"
rootfs_image="luna-lambda/debian-python-rootfs:bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if ! docker image inspect "$rootfs_image" >/dev/null 2>&1; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "== debootstrap bookworm (minbase + python3, pip) into $work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
        bookworm "$work/rootfs" "$mirror"
    # Lambda images install requirements.txt into the system interpreter: the image is the
    # virtual environment, so PEP 668's guard does not apply.
    rm -f "$work"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/*.bin \
        "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/*
    echo "== docker import as $rootfs_image"
    tar -C "$work/rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1' \
        - "$rootfs_image"
fi

echo "== docker build $tag (runner on $rootfs_image)"
docker build --network host --build-arg "ROOTFS=$rootfs_image" -t "$tag" "$here"
echo "== done: $tag"
