#!/usr/bin/env bash
# Prove the image build on a machine that cannot pull base images or run containers (slow: minutes; not in CI).
#
# It follows the Containerfile's CPU variant step by step without a container runtime:
#   base-cpu  -> debootstrap a Debian bookworm root file system with python3.11 (the base image's packages)
#   build     -> copy the same source files and run scripts/setup.sh inside it with chroot (the same env as the
#                Containerfile: MINMO_VENV=/opt/minmo/venv MINMO_EDITABLE=0 MINMO_EXTRAS=)
#   runtime   -> the `minmo` user (UID 10001), the source tree removed (the runtime stage copies only the venv)
#   commit    -> `buildah from scratch` + the root file system + the image config, saved as an OCI archive
#   run       -> `minmo --help`, then a service and its gRPC health check, as UID 10001 in their own PID, mount
#                and network namespaces (unshare + chroot), since containers cannot run here.
# One difference, said out loud: the Containerfile's CPU variant takes torch's CPU wheel from the PyTorch index;
# here the same wheel (torch==2.13.0+cpu) comes from this machine's wheel directory (PIP_FIND_LINKS), the rest
# from PyPI; and this machine reaches PyPI through a TLS-inspecting proxy, so pip in the chroot gets the host's CA
# bundle (PIP_CERT).
#
# Usage: sudo scripts/prove_image.sh [WORKDIR]    (default /var/tmp/minmo-image; the evidence is WORKDIR/evidence.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/var/tmp/minmo-image}"
ROOTFS="$WORK/rootfs"
EVIDENCE="$WORK/evidence.txt"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
WHEELS="${WHEELS:-/opt/wheels}"
UID_GID=10001
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
IMAGE="localhost/minmo:$VERSION-offline"
mkdir -p "$WORK"
: > "$EVIDENCE"
say() { echo "== $*" | tee -a "$EVIDENCE"; }
run() { echo "\$ $*" >> "$EVIDENCE"; "$@" 2>&1 | tee -a "$EVIDENCE"; }

say "base-cpu: debootstrap bookworm (minbase) into $ROOTFS, then the Containerfile's apt-get line in a chroot"
if [ ! -f "$WORK/base.done" ]; then
    rm -rf "$ROOTFS"
    run debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    run chroot "$ROOTFS" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3.11 python3.11-venv ca-certificates && rm -rf /var/lib/apt/lists/*"
    touch "$WORK/base.done"
fi
run du -sh "$ROOTFS"

say "build: the Containerfile's COPY (pyproject.toml README.md scripts protos shared services) and setup.sh in a chroot"
rm -rf "$ROOTFS/opt/minmo"
mkdir -p "$ROOTFS/opt/minmo/src" "$ROOTFS/opt/wheels"
git archive HEAD pyproject.toml README.md scripts protos shared services | tar -x -C "$ROOTFS/opt/minmo/src"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/tmp/host-ca.crt"
mount --bind "$WHEELS" "$ROOTFS/opt/wheels"
mount -t proc proc "$ROOTFS/proc"
trap 'umount "$ROOTFS/opt/wheels" "$ROOTFS/proc" 2>/dev/null || true' EXIT
start=$(date +%s)
run chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PYTHON=python3.11 PIP_FIND_LINKS=/opt/wheels \
    PIP_CERT=/tmp/host-ca.crt \
    MINMO_VENV=/opt/minmo/venv MINMO_EDITABLE=0 MINMO_EXTRAS= /opt/minmo/src/scripts/setup.sh
say "setup.sh took $(( $(date +%s) - start )) s"
umount "$ROOTFS/opt/wheels" "$ROOTFS/proc"
trap - EXIT
run du -sh "$ROOTFS/opt/minmo/venv"

say "runtime: the minmo user, no source tree, no package lists"
rm -rf "$ROOTFS/opt/minmo/src" "$ROOTFS/opt/wheels" "$ROOTFS/tmp/host-ca.crt" "$ROOTFS/var/lib/apt/lists/"* "$ROOTFS/root/.cache"
chroot "$ROOTFS" sh -c "getent group minmo >/dev/null || groupadd --gid $UID_GID minmo"
chroot "$ROOTFS" sh -c "getent passwd minmo >/dev/null || useradd --uid $UID_GID --gid $UID_GID --home-dir /home/minmo \
    --create-home --shell /usr/sbin/nologin minmo"
mkdir -p "$ROOTFS/home/minmo/.cache" && chown -R $UID_GID:$UID_GID "$ROOTFS/home/minmo"
run du -sh "$ROOTFS"

say "commit: buildah from scratch + the root file system -> OCI archive"
export STORAGE_DRIVER=vfs
container=$(buildah from scratch)
run buildah copy "$container" "$ROOTFS" /
run buildah config --user $UID_GID:$UID_GID --workingdir /home/minmo \
    --env PATH=/opt/minmo/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/home/minmo --env PYTHONUNBUFFERED=1 --env MINMO_HOST=0.0.0.0 \
    --port 50051 --port 50052 --port 50053 --port 50054 --port 50055 \
    --cmd '["minmo", "--help"]' --label org.opencontainers.image.version="$VERSION" "$container"
run buildah commit --rm "$container" "$IMAGE"
run buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE"
rm -f "$WORK/minmo-image.tar"
run buildah push "$IMAGE" "oci-archive:$WORK/minmo-image.tar:$VERSION"
run ls -l "$WORK/minmo-image.tar"
run sh -c "tar -xOf '$WORK/minmo-image.tar' index.json; echo"

say "run: minmo --help as UID $UID_GID in its own PID, mount and network namespaces"
in_namespaces() {
    # $1: a shell command run as the minmo user inside the image's root file system.
    unshare --fork --pid --mount --net --mount-proc="$ROOTFS/proc" sh -c \
        'ip link set lo up && exec chroot --userspec="$1" "$2" /usr/bin/env -i \
         PATH=/opt/minmo/venv/bin:/usr/bin:/bin HOME=/home/minmo sh -c "$3"' _ "$UID_GID:$UID_GID" "$ROOTFS" "$1"
}
run in_namespaces "minmo --help"
say "run: minmo serve encoder (tiny) and minmo health against it, in the same namespaces"
run in_namespaces 'id; MINMO_CONFIG=tiny MINMO_PORT=50052 minmo serve encoder > /tmp/encoder.log 2>&1 & pid=$!;
    for attempt in $(seq 1 180); do minmo health --server 127.0.0.1:50052 && break; sleep 1; done;
    kill -TERM $pid; wait $pid; echo "encoder exit code $?"; tail -3 /tmp/encoder.log'
say "done"
