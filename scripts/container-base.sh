#!/usr/bin/env bash
# Make a local Debian base image for the vbgw Dockerfile where no image registry is reachable:
# debootstrap (Debian's package mirror only) a minimal bookworm with Python 3.11 and venv, and
# import it into podman. Prints the image name; does nothing if it exists already.
#
#   scripts/container-base.sh [IMAGE]        default IMAGE: localhost/vbgw-base:bookworm
#
# Needs root (debootstrap), podman and debootstrap (apt-get install podman runc debootstrap).
set -euo pipefail
IMAGE="${1:-localhost/vbgw-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
if "${PODMAN[@]}" image exists "$IMAGE"; then
  echo "$IMAGE"; exit 0
fi
ROOT="$(mktemp -d "${TMPDIR:-/tmp}/vbgw-rootfs.XXXXXX")"
trap 'rm -rf "$ROOT"' EXIT
echo "container-base: debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" >&2
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
echo "container-base: importing as $IMAGE" >&2
tar -C "$ROOT" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$IMAGE" >&2
echo "$IMAGE"
