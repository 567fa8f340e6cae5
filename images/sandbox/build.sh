#!/usr/bin/env bash
# Builds the drafter sandbox image without any container registry.
#
# 1. Base: debootstrap a minimal Debian bookworm with the packages in packages.txt, trim it, and `docker import` it
#    as drafter-sandbox-base:<base-hash> (also tagged :latest). The base hash covers the package list and the
#    debootstrap recipe only, so editing the Dockerfile does not redo the (about one minute) debootstrap.
# 2. Image: `docker build` the Dockerfile on top of that base, labelled drafter.recipe=<recipe-hash>, where the
#    recipe hash is sha256 over Dockerfile, build.sh and packages.txt. If the image already carries that label the
#    script exits early ("up to date").
#
# Environment:
#   DRAFTER_SANDBOX_IMAGE  final image name (default drafter-sandbox:latest)
#   DEBIAN_MIRROR          debootstrap mirror (default: debootstrap's own, http://deb.debian.org/debian)
#   FORCE=1                rebuild even when up to date
#
# On a connected machine you may skip step 1 entirely:
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t drafter-sandbox:latest images/sandbox
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${DRAFTER_SANDBOX_IMAGE:-drafter-sandbox:latest}"
suite="bookworm"
variant="minbase"
base_repo="drafter-sandbox-base"

t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }
log() { echo "[build.sh +$(elapsed)] $*"; }

command -v docker >/dev/null || { echo "build.sh: docker CLI not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build.sh: cannot reach the Docker daemon" >&2; exit 1; }

packages=$(grep -v '^[[:space:]]*#' "$here/packages.txt" | tr -s '[:space:]' '\n' | sed '/^$/d' | sort -u)
include=$(echo "$packages" | paste -sd, -)

# The base depends on the package list and on how debootstrap is called (the trim step below is part of it).
base_hash=$( { echo "suite=$suite variant=$variant include=$include trim=v1"; } | sha256sum | cut -c1-16)
base_tag="$base_repo:$base_hash"
recipe_hash=$(cat "$here/Dockerfile" "$here/build.sh" "$here/packages.txt" | sha256sum | cut -c1-64)

current=$(docker image inspect -f '{{ index .Config.Labels "drafter.recipe" }}' "$image" 2>/dev/null || true)
if [[ "${FORCE:-0}" != 1 && "$current" == "$recipe_hash" ]]; then
    log "$image is up to date (drafter.recipe=$recipe_hash)"
    exit 0
fi

# ---- step 1: the debootstrap base, reused when its hash matches ----------------------------------------------------
if docker image inspect "$base_tag" >/dev/null 2>&1; then
    log "base $base_tag exists, reusing it"
else
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        if [[ $(id -u) -ne 0 ]]; then echo "build.sh: debootstrap missing and not root" >&2; exit 1; fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    if [[ $(id -u) -ne 0 ]]; then echo "build.sh: debootstrap needs root" >&2; exit 1; fi

    rootfs=$(mktemp -d /tmp/drafter-rootfs.XXXXXX)
    trap 'rm -rf --one-file-system "$rootfs"' EXIT
    log "debootstrap --variant=$variant --include=$include $suite $rootfs ${DEBIAN_MIRROR:-}"
    t0=$(date +%s)
    debootstrap --variant="$variant" --include="$include" "$suite" "$rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} \
        > "$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    log "debootstrap done in $(( $(date +%s) - t0 ))s"

    # Trim what a sandbox never needs: docs, man pages, translations, apt caches, logs. C.UTF-8 is built into glibc.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian \
           "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
           "$rootfs"/var/cache/apt/archives/partial/* "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/var/log/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/* 2>/dev/null || true
    # Docker manages these at run time.
    : > "$rootfs/etc/hostname"
    rm -f "$rootfs/etc/resolv.conf"

    log "importing rootfs as $base_tag ($(du -sh "$rootfs" | cut -f1))"
    t0=$(date +%s)
    tar --numeric-owner -C "$rootfs" -c . \
        | docker import --change 'CMD ["/bin/bash"]' - "$base_tag" >/dev/null
    log "import done in $(( $(date +%s) - t0 ))s"
    rm -rf --one-file-system "$rootfs"
    trap - EXIT
fi
docker tag "$base_tag" "$base_repo:latest"

# ---- step 2: the Dockerfile on top ----------------------------------------------------------------------------------
log "docker build $image (drafter.recipe=$recipe_hash) FROM $base_tag"
t0=$(date +%s)
# The engine here (20.10) has no buildx plugin in the CLI: use the classic builder, which needs nothing pulled.
DOCKER_BUILDKIT=0 docker build \
    --quiet \
    --build-arg "BASE_IMAGE=$base_tag" \
    --label "drafter.recipe=$recipe_hash" \
    --label "drafter.base=$base_tag" \
    -t "$image" \
    "$here" >/dev/null
log "docker build done in $(( $(date +%s) - t0 ))s"

docker image inspect -f '{{ .Id }} {{ .Size }}' "$image" | {
    read -r id size
    log "built $image $id ($(( size / 1024 / 1024 )) MiB), total $(elapsed)"
}
