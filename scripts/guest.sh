#!/usr/bin/env bash
# Runs one command of this host inside a throwaway QEMU guest (TCG) that
# boots Debian's kernel with ONLY cgroup v2 mounted. The guest sees the
# host's whole filesystem read-only over 9p with a tmpfs overlay on top (so
# binaries, the cargo target dir and /var/cache/taba/images are all there,
# and nothing it writes reaches the host), and gets fresh proc, sys, dev,
# tmp, run and a cgroup2 at /sys/fs/cgroup.
#
#   scripts/guest.sh setup                     install QEMU 10 and the kernel (prints the initramfs)
#   scripts/guest.sh run [OPTIONS] -- CMD ARG...
#
# run options:
#   --timeout SECS   kill the guest after SECS (default 600)
#   --mem MIB        guest memory (default 1024)
#   --smp N          guest CPUs (default 1; TCG runs one host thread each)
#   --env NAME       pass the host's $NAME into the guest (repeatable)
#   --cwd DIR        working directory in the guest (default: the current one)
#   --console FILE   keep the guest's console log there
#
# CMD's stdout and stderr (merged) are printed, and the script exits with
# CMD's exit status; 124 when the guest timed out, 125 when it failed to
# boot or to run CMD (the console log is printed to stderr then).
#
# Setup is idempotent and needs only apt: `qemu-system-x86` 10.0 from
# bookworm-backports (bookworm's 7.2 corrupts guests migrated under TCG,
# see the brief), and `linux-image-amd64` fetched with `apt-get download`
# and unpacked into $TABA_GUEST_DIR (default /var/cache/taba/guest); only
# the kernel image and the few modules the initramfs loads are kept (a
# module added to MODULES later is fetched into the same directory). The
# cloud kernel is smaller but has no 9p. The initramfs is busybox-static
# plus those modules, loaded with insmod in dependency order; its file name
# carries a hash of its contents, so worktrees with different module lists
# share the kernel directory without overwriting each other's initramfs.
set -euo pipefail

GUEST_DIR=${TABA_GUEST_DIR:-/var/cache/taba/guest}
KERNEL_PKG=linux-image-amd64
# In load order (busybox insmod resolves no dependencies).
MODULES=(
  drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci
  net/9p/9pnet net/9p/9pnet_virtio fs/netfs/netfs fs/fscache/fscache fs/9p/9p
  fs/overlayfs/overlay
  # ext4 on a loop device under dm-flakey, for the power-cut test
  # (crates/taba/tests/durability.rs); dependencies from `modinfo -F depends`
  # (ext4: jbd2, mbcache, crc16; its checksums need the crc32c shash).
  lib/crc16 fs/mbcache fs/jbd2/jbd2 crypto/crc32c_generic fs/ext4/ext4
  drivers/block/loop drivers/md/dm-mod drivers/md/dm-flakey
)
BPO_LIST=/etc/apt/sources.list.d/bookworm-backports.sources

die() {
  echo "guest: $*" >&2
  exit 125
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# QEMU 10.0 from bookworm-backports, and busybox-static for the initramfs.
ensure_qemu() {
  if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed"; then
    apt_install busybox-static
  fi
  if command -v qemu-system-x86_64 >/dev/null &&
    qemu-system-x86_64 --version | grep -q 'version 10\.'; then
    return
  fi
  if [ ! -e "$BPO_LIST" ]; then
    # The same archive the machine's sources name, backports suite.
    local uri
    uri=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "${uri:-http://deb.debian.org/debian}" >"$BPO_LIST"
  fi
  apt-get update -qq
  apt_install -t bookworm-backports qemu-system-x86
  qemu-system-x86_64 --version | grep -q 'version 10\.' || die "qemu-system-x86_64 is not version 10"
}

# The kernel version this host's apt would install (e.g. 6.1.0-57-amd64).
kernel_version() {
  apt-cache depends "$KERNEL_PKG" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); print $2; exit}'
}

# Whether $1 (a kernel directory) holds vmlinuz and every module of MODULES.
kernel_complete() {
  [ -s "$1/vmlinuz" ] || return 1
  local m
  for m in "${MODULES[@]}"; do
    [ -s "$1/modules/${m##*/}.ko" ] || return 1
  done
}

# $GUEST_DIR/<version>/{vmlinuz,modules/*.ko}: the kernel of KERNEL_PKG and
# the MODULES (scripts/vm-guest.sh sets both to its own before calling it).
# Files are only ever added (each renamed into place), so a guest booting
# from the directory while another run adds a module is not disturbed.
ensure_kernel() {
  local ver dir tmp m
  ver=$(kernel_version)
  [ -n "$ver" ] || die "apt knows no $KERNEL_PKG (run apt-get update)"
  dir=$GUEST_DIR/$ver
  if kernel_complete "$dir"; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir/modules"
  tmp=$(mktemp -d "$GUEST_DIR/.dl.XXXXXX")
  local try
  for try in 1 2 3; do
    (cd "$tmp" && apt-get download -qq "linux-image-$ver" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    ls "$tmp"/linux-image-*.deb >/dev/null 2>&1 && break
    sleep "$try"
  done
  ls "$tmp"/linux-image-*.deb >/dev/null 2>&1 || { rm -rf "$tmp"; die "apt-get download linux-image-$ver failed"; }
  dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/x"
  for m in "${MODULES[@]}"; do
    [ -s "$dir/modules/${m##*/}.ko" ] && continue
    cp "$tmp/x/lib/modules/$ver/kernel/$m.ko" "$dir/modules/.${m##*/}.ko.$$" || { rm -rf "$tmp"; die "no module $m in linux-image-$ver"; }
    mv "$dir/modules/.${m##*/}.ko.$$" "$dir/modules/${m##*/}.ko"
  done
  if [ ! -s "$dir/vmlinuz" ]; then
    cp "$tmp/x/boot/vmlinuz-$ver" "$dir/.vmlinuz.$$"
    mv "$dir/.vmlinuz.$$" "$dir/vmlinuz"
  fi
  rm -rf "$tmp"
  echo "$dir"
}

# The start of a guest's /init, shared with scripts/vm-guest.sh: busybox,
# the kernel filesystems, then MODULES loaded in order ($1 tags messages).
init_preamble() {
  local mods=() m
  for m in "${MODULES[@]}"; do mods+=("${m##*/}"); done
  cat <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${mods[*]}; do insmod /modules/\$m.ko || echo "$1: insmod \$m failed"; done
EOF
}

# The guest's /init: modules, the host root over 9p under a tmpfs overlay,
# fresh kernel filesystems with only cgroup2 (and tmpfs on /tmp, /var/tmp,
# /run, /dev/shm), then CMD in a chroot.
write_init() {
  init_preamble guest-init
  cat <<EOF
mkdir -p /host /io /rw /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 hostroot /host || poweroff -f
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 io /io || poweroff -f
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work root /root || poweroff -f
R=/root
mount -t proc proc \$R/proc
mount -t sysfs sys \$R/sys
mount -t cgroup2 -o nsdelegate cgroup2 \$R/sys/fs/cgroup
mount -t devtmpfs dev \$R/dev
mkdir -p \$R/dev/pts \$R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts \$R/dev/pts
mount -t tmpfs -o mode=1777 shm \$R/dev/shm
mount -t tmpfs -o mode=1777 tmp \$R/tmp
mount -t tmpfs -o mode=1777 vartmp \$R/var/tmp
mount -t tmpfs -o mode=0755 run \$R/run
mkdir -p \$R/run/taba-guest
mount --bind /io \$R/run/taba-guest
ip link set lo up
hostname taba-guest
echo "guest-init: running"
chroot \$R /bin/bash /run/taba-guest/cmd >/io/out 2>&1
echo \$? >/io/status
sync
echo "guest-init: done"
poweroff -f
EOF
}

# initramfs-<hash>.cpio in $1: busybox, this script's /init and modules;
# the hash covers all three, so a changed /init or module list is a new file.
ensure_initramfs() {
  local kdir=$1 img tmp m hash
  hash=$({
    write_init
    for m in "${MODULES[@]}"; do echo "$m"; done
    sha256sum /bin/busybox
  } | sha256sum | cut -c1-16)
  img=$kdir/initramfs-$hash.cpio
  if [ -s "$img" ]; then
    echo "$img"
    return
  fi
  tmp=$(mktemp -d "$GUEST_DIR/.initramfs.XXXXXX")
  mkdir -p "$tmp/bin" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/modules"
  cp /bin/busybox "$tmp/bin/busybox"
  for m in "${MODULES[@]}"; do cp "$kdir/modules/${m##*/}.ko" "$tmp/modules/"; done
  write_init >"$tmp/init"
  chmod 0755 "$tmp/init"
  (cd "$tmp" && find . | LC_ALL=C sort | busybox cpio -o -H newc >"$img.tmp.$$" 2>/dev/null)
  mv "$img.tmp.$$" "$img"
  rm -rf "$tmp"
  echo "$img"
}

setup() {
  [ "$(id -u)" = 0 ] || die "needs root (apt, and QEMU exports / over 9p)"
  ensure_qemu
  local kdir
  kdir=$(ensure_kernel)
  ensure_initramfs "$kdir"
}

host_khz() {
  awk -F: '/^cpu MHz/ {printf "%d\n", $2 * 1000; exit}' /proc/cpuinfo
}

run() {
  local timeout=600 mem=1024 smp=1 cwd=$PWD console="" envs=()
  while [ $# -gt 0 ]; do
    case $1 in
      --timeout) timeout=$2; shift 2 ;;
      --mem) mem=$2; shift 2 ;;
      --smp) smp=$2; shift 2 ;;
      --env) envs+=("$2"); shift 2 ;;
      --cwd) cwd=$2; shift 2 ;;
      --console) console=$2; shift 2 ;;
      --) shift; break ;;
      *) die "unknown option $1 (see the header of $0)" ;;
    esac
  done
  [ $# -gt 0 ] || die "no command given: $0 run [OPTIONS] -- CMD ARG..."
  local kdir initrd io status
  initrd=$(setup | tail -1)
  kdir=$(dirname "$initrd")
  io=$(mktemp -d "${TMPDIR:-/tmp}/taba-guest.XXXXXX")
  trap 'rm -rf "$io"' EXIT
  {
    echo "set -u"
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    for e in "${envs[@]}"; do
      [ -n "${!e+x}" ] && printf 'export %s=%q\n' "$e" "${!e}"
    done
    printf 'cd %q || exit 125\n' "$cwd"
    printf 'exec'
    printf ' %q' "$@"
    echo
  } >"$io/cmd"
  local khz append
  khz=$(host_khz)
  append="console=ttyS0 edd=off loglevel=4 panic=-1 rdinit=/init cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
  [ -n "$khz" ] && append+=" tsc_early_khz=$khz"
  local rc=0
  timeout --kill-after=10 "$timeout" qemu-system-x86_64 \
    -accel tcg -M q35 -cpu max -smp "$smp" -m "$mem" \
    -nodefaults -no-user-config -nographic -no-reboot \
    -serial "file:$io/console" \
    -kernel "$kdir/vmlinuz" -initrd "$initrd" -append "$append" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot" \
    -virtfs "local,path=$io,mount_tag=io,security_model=none,id=io" \
    </dev/null >"$io/qemu.log" 2>&1 || rc=$?
  [ -n "$console" ] && cp "$io/console" "$console"
  [ -f "$io/out" ] && cat "$io/out"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "guest: timed out after ${timeout}s; console:" >&2
    tail -n 40 "$io/console" >&2 || true
    exit 124
  fi
  if [ ! -s "$io/status" ]; then
    echo "guest: no exit status (qemu exit $rc); qemu: $(cat "$io/qemu.log"); console:" >&2
    tail -n 40 "$io/console" >&2 || true
    exit 125
  fi
  status=$(cat "$io/status")
  exit "$status"
}

# Sourced (scripts/vm-guest.sh shares the functions above): stop here.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi

case ${1:-} in
  setup) setup ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 setup | run [OPTIONS] -- CMD ARG..." >&2; exit 2 ;;
esac
