#!/usr/bin/env bash
# Installs what taba's build, dev mode and tests need on a Debian (bookworm)
# host, and builds the local test images. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(busybox-static crun podman iproute2 procps ca-certificates python3 python3-venv util-linux e2fsprogs dmsetup etcd-server protobuf-compiler curl prometheus docker-registry skopeo apache2-utils man-db syslinux syslinux-common mtools dosfstools fdisk chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo is not installed (install Rust first)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "setup: taba's workloads need root (cgroups, namespaces, mounts)" >&2; exit 1; }

# schemathesis (PyPI), for the API test crates/taba/tests/openapi.rs
# (scripts/schemathesis.sh), in a venv of its own.
ST_VENV="${TABA_SCHEMATHESIS_VENV:-/var/cache/taba/schemathesis}"
if ! [ -x "$ST_VENV/bin/st" ]; then
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install -q "schemathesis>=4.32,<5"
fi

# The local busybox image, in both archive formats taba imports.
IMAGES="${TABA_IMAGE_DIR:-/var/cache/taba/images}"
mkdir -p "$IMAGES"
[ -s "$IMAGES/busybox.tar" ] || scripts/build-busybox-image.sh "$IMAGES/busybox.tar"
[ -s "$IMAGES/busybox-oci.tar" ] || scripts/build-busybox-image.sh "$IMAGES/busybox-oci.tar" --oci
# QEMU 10 (bookworm-backports) and Debian's kernel for the cgroup v2 guest
# that runs the v2 tests (crates/taba-cgroups/tests/root_v2_guest.rs).
scripts/guest.sh setup >/dev/null
# The vm driver's test guest: Debian's cloud kernel + a busybox initramfs
# (crates/taba/tests/vm.rs, crates/taba-driver/tests/vm_boot.rs).
scripts/vm-guest.sh setup >/dev/null
echo "setup: ok (images in $IMAGES, cgroup v2 guest in ${TABA_GUEST_DIR:-/var/cache/taba/guest}, VM test guest in ${TABA_VM_GUEST_DIR:-/var/cache/taba/vm-guest})"
