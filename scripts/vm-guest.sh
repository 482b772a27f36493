#!/usr/bin/env bash
# Builds the test guest of the `vm` driver from Debian packages, without
# installing them: the kernel of `linux-image-cloud-amd64` (apt-get download
# + dpkg-deb -x) and an initramfs of `busybox-static` plus the virtio
# modules, which its /init loads itself in dependency order (busybox insmod
# resolves none). QEMU 10 and the download come from scripts/guest.sh,
# whose functions this script shares.
#
#   scripts/vm-guest.sh setup     build it (idempotent); prints the directory
#   scripts/vm-guest.sh dir       print the directory (empty if not built)
#
# The result, under $TABA_VM_GUEST_DIR (default /var/cache/taba/vm-guest):
#
#   current -> <kernel version>/   (a symlink, so tests need no version)
#     vmlinuz          the kernel
#     initramfs.cpio   busybox + modules + /init
#
# The guest's /init
#   - loads the modules, mounts proc, sys and dev,
#   - prints `taba-guest: init ok` and `taba-guest: boot <boot id>` on the
#     serial console (ttyS0),
#   - powers off when the ACPI power button is pressed (QMP
#     `system_powerdown`): prints `taba-guest: power button`,
#   - with `taba.count` on the kernel command line, keeps a counter in RAM
#     and prints `taba-count N` every 100 ms (live migration tests: the
#     count goes on across a migration, a reboot would restart it at 1),
#   - with `taba.dirty` rewrites 16 MiB of its RAM with random bytes up to
#     five times a second (a guest that dirties memory faster than a slow
#     migration moves it),
#   - with `taba.disk` mounts /dev/vda (ext2/ext4 or made one), appends the
#     boot id to `boots` there and prints `taba-disk: N boots`,
#   - with `taba.console` prints `taba-console: ready` and answers every line
#     typed on the serial console with `taba-echo: <line>` (what the tests
#     of `taba alloc console` type into).
#
# Boot it directly (what the driver starts, without taba):
#
#   d=$(scripts/vm-guest.sh dir)
#   qemu-system-x86_64 -accel tcg -M microvm -m 256 -nodefaults -display none \
#     -serial stdio -kernel $d/vmlinuz -initrd $d/initramfs.cpio \
#     -append "console=ttyS0 tsc_early_khz=$(awk -F: '/^cpu MHz/{printf "%d",$2*1000;exit}' /proc/cpuinfo)"
set -euo pipefail

# shellcheck source=scripts/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest.sh"

# Overrides of guest.sh's settings: the cloud kernel, its virtio modules
# (the order the driver's tests need), the ACPI power button and evdev.
GUEST_DIR=${TABA_VM_GUEST_DIR:-/var/cache/taba/vm-guest}
KERNEL_PKG=linux-image-cloud-amd64
MODULES=(
  drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio
  drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
  drivers/virtio/virtio_pci drivers/block/virtio_blk net/core/failover
  drivers/net/net_failover drivers/net/virtio_net
  drivers/input/evdev drivers/acpi/button
)

write_vm_init() {
  init_preamble taba-guest
  cat <<EOF
hostname taba-guest
echo "taba-guest: init ok"
echo "taba-guest: boot \$(cat /proc/sys/kernel/random/boot_id)"
for e in /sys/class/input/event*; do
  if grep -q "Power Button" "\$e/device/name" 2>/dev/null; then
    (head -c 1 "/dev/input/\${e##*/}" >/dev/null && echo "taba-guest: power button" && sync && poweroff -f) &
  fi
done
cmdline=" \$(cat /proc/cmdline) "
case \$cmdline in *" taba.disk "*)
  mkdir -p /disk
  if [ -b /dev/vda ]; then
    mount /dev/vda /disk 2>/dev/null || { mke2fs -q /dev/vda && mount /dev/vda /disk; }
    cat /proc/sys/kernel/random/boot_id >>/disk/boots
    sync
    echo "taba-disk: \$(wc -l </disk/boots) boots"
  else
    echo "taba-disk: no /dev/vda"
  fi
  ;;
esac
case \$cmdline in *" taba.console "*)
  echo "taba-console: ready"
  while read -r line; do
    echo "taba-echo: \$line"
  done
  ;;
esac
case \$cmdline in *" taba.dirty "*)
  # 16 MiB of RAM rewritten with random bytes, five times a second at most
  # (the rest of the vCPU stays for the counter).
  (while :; do dd if=/dev/urandom of=/dirty bs=1M count=16 conv=notrunc 2>/dev/null; usleep 200000; done) &
  echo "taba-dirty: rewriting 16 MiB"
  ;;
esac
case \$cmdline in *" taba.count "*)
  i=0
  while :; do
    i=\$((i + 1))
    echo "taba-count \$i"
    usleep 100000
  done
  ;;
esac
while :; do sleep 3600; done
EOF
}

# initramfs.cpio in $1 (rebuilt when this script or guest.sh changes).
ensure_vm_initramfs() {
  local kdir=$1 img=$1/initramfs.cpio tmp
  if [ -s "$img" ] && [ "$img" -nt "${BASH_SOURCE[0]}" ] && [ "$img" -nt "$(dirname "${BASH_SOURCE[0]}")/guest.sh" ]; then
    return
  fi
  tmp=$(mktemp -d "$GUEST_DIR/.initramfs.XXXXXX")
  mkdir -p "$tmp/bin" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/modules"
  cp /bin/busybox "$tmp/bin/busybox"
  cp "$kdir"/modules/*.ko "$tmp/modules/"
  write_vm_init >"$tmp/init"
  chmod 0755 "$tmp/init"
  (cd "$tmp" && find . | LC_ALL=C sort | busybox cpio -o -H newc >"$img.tmp.$$" 2>/dev/null)
  mv "$img.tmp.$$" "$img"
  rm -rf "$tmp"
}

# qemu-img (disk overlays), from the same backports QEMU.
ensure_qemu_img() {
  if command -v qemu-img >/dev/null && qemu-img --version | grep -q 'version 10\.'; then
    return
  fi
  apt_install -t bookworm-backports qemu-utils
}

vm_setup() {
  [ "$(id -u)" = 0 ] || die "needs root (apt)"
  ensure_qemu
  ensure_qemu_img
  local kdir
  kdir=$(ensure_kernel)
  ensure_vm_initramfs "$kdir"
  ln -sfn "$(basename "$kdir")" "$GUEST_DIR/current.tmp.$$"
  mv -T "$GUEST_DIR/current.tmp.$$" "$GUEST_DIR/current"
  echo "$GUEST_DIR/current"
}

case ${1:-} in
  setup) vm_setup ;;
  dir) [ -s "$GUEST_DIR/current/initramfs.cpio" ] && echo "$GUEST_DIR/current" ;;
  *) echo "usage: $0 setup | dir" >&2; exit 2 ;;
esac
