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
#     boot.raw         a BIOS-bootable raw disk (MBR: syslinux's mbr.bin; one
#                      FAT partition: syslinux, this vmlinuz and initramfs,
#                      `taba.bootdisk` on the command line), for `boot_disk`
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
#     of `taba alloc console` type into),
#   - booted from boot.raw (`taba.bootdisk`) prints `taba-guest: booted from
#     its disk`,
#   - with a disk labelled `cidata` (a cloud-init NoCloud seed) mounts it
#     read-only and prints `taba-seed: instance-id: <id>` (from meta-data)
#     and `taba-seed: <line>` for each user-data line starting `taba-`.
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
  fs/fat/fat fs/fat/vfat fs/nls/nls_cp437 fs/nls/nls_ascii fs/nls/nls_utf8
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
case \$cmdline in *" taba.bootdisk "*) echo "taba-guest: booted from its disk" ;; esac
seed=\$(findfs LABEL=cidata 2>/dev/null)
if [ -n "\$seed" ]; then
  mkdir -p /seed
  if mount -t vfat -o ro "\$seed" /seed; then
    echo "taba-seed: \$(grep '^instance-id:' /seed/meta-data)"
    grep '^taba-' /seed/user-data | while read -r l; do echo "taba-seed: \$l"; done
  else
    echo "taba-seed: cannot mount \$seed"
  fi
fi
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

# boot.raw in $1 (rebuilt when the initramfs is newer): a 64 MiB raw disk
# SeaBIOS boots: syslinux's MBR, one bootable FAT partition at 1 MiB made
# with mkfs.vfat --offset, filled with mtools and `syslinux --install`
# (neither needs a loop device or a mount).
ensure_boot_disk() {
  local kdir=$1 img=$1/boot.raw tmp cfg
  if [ -s "$img" ] && [ "$img" -nt "$kdir/initramfs.cpio" ]; then
    return
  fi
  tmp=$(mktemp "$GUEST_DIR/.boot.XXXXXX")
  cfg=$(mktemp "$GUEST_DIR/.syslinux.XXXXXX")
  truncate -s 64M "$tmp"
  printf 'label: dos\nstart=2048, type=c, bootable\n' | sfdisk -q "$tmp"
  mkfs.vfat --offset 2048 -n TABABOOT "$tmp" $((63 * 1024)) >/dev/null
  cat >"$cfg" <<EOF
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT taba
LABEL taba
  LINUX /VMLINUZ
  INITRD /INITRD.IMG
  APPEND console=ttyS0 taba.bootdisk tsc_early_khz=$(host_khz)
EOF
  mcopy -i "$tmp@@1M" "$kdir/vmlinuz" ::VMLINUZ
  mcopy -i "$tmp@@1M" "$kdir/initramfs.cpio" ::INITRD.IMG
  mcopy -i "$tmp@@1M" "$cfg" ::SYSLINUX.CFG
  syslinux --offset $((1 << 20)) --install "$tmp"
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$tmp" bs=440 count=1 conv=notrunc status=none
  rm -f "$cfg"
  chmod 0644 "$tmp"
  mv "$tmp" "$img"
}

# syslinux, mtools, dosfstools and fdisk (sfdisk): the boot disk, and the cloud-init seed
# disks the vm driver makes.
ensure_disk_tools() {
  local p missing=()
  for p in syslinux syslinux-common mtools dosfstools fdisk; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  fi
}

vm_setup() {
  [ "$(id -u)" = 0 ] || die "needs root (apt)"
  ensure_qemu
  ensure_qemu_img
  local kdir
  kdir=$(ensure_kernel)
  ensure_vm_initramfs "$kdir"
  ensure_disk_tools
  ensure_boot_disk "$kdir"
  ln -sfn "$(basename "$kdir")" "$GUEST_DIR/current.tmp.$$"
  mv -T "$GUEST_DIR/current.tmp.$$" "$GUEST_DIR/current"
  echo "$GUEST_DIR/current"
}

case ${1:-} in
  setup) vm_setup ;;
  dir) [ -s "$GUEST_DIR/current/initramfs.cpio" ] && echo "$GUEST_DIR/current" ;;
  *) echo "usage: $0 setup | dir" >&2; exit 2 ;;
esac
