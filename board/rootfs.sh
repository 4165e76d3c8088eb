#!/usr/bin/env bash
# Builds (or reuses) the cached Debian bookworm arm64 root filesystem of the Pi image and prints its
# directory. Only packages and what must happen inside the chroot live here (initramfs, raspi-firmware's
# config.txt/cmdline.txt); Toru's files and configuration are laid over a copy by assemble-image.sh, so
# editing them never costs a rootfs rebuild.
#
# Cache: $BOARD_CACHE/rootfs-<key>/ where key hashes packages.txt and this file. Old keys are deleted.
# Cost: ~10 min on a 2-core x86_64 (two arm64 initramfs builds under qemu-user would double that, so
# update-initramfs is diverted while packages install and run once at the end).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

key=$(cat "$BOARD_DIR/packages.txt" "$BOARD_DIR/rootfs.sh" | sha256sum | cut -c1-16)
dir="$BOARD_CACHE/rootfs-$key"
if [ -f "$dir/.toru-rootfs-complete" ]; then
    echo "$dir"
    exit 0
fi

board_need_tools
board_need_binfmt
mkdir -p "$BOARD_CACHE"
# A previous run may have died half-way; mmdebstrap wants an empty target. Never delete through a
# mount mmdebstrap may have left behind (/proc, /sys, /dev of the build machine).
if grep -qF " $dir.tmp/" /proc/self/mounts; then
    echo "$dir.tmp has mounts left from an interrupted build: unmount them first" >&2
    exit 1
fi
rm -rf --one-file-system "$dir.tmp"
packages=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$BOARD_DIR/packages.txt" | tr '\n' ',' | sed 's/,$//')
mirror=${TORU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${TORU_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
say "building the arm64 rootfs (~10 min) into $dir"
start=$(date +%s)
mmdebstrap --mode=root --arch=arm64 --variant=minbase --components=main,non-free-firmware \
    --include="$packages" \
    --setup-hook='mkdir -p "$1/boot/firmware"' \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs' \
    --essential-hook='printf "#!/bin/sh\nexit 0\n" > "$1/usr/sbin/update-initramfs"; chmod 755 "$1/usr/sbin/update-initramfs"' \
    --customize-hook='rm "$1/usr/sbin/update-initramfs"; chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
    --customize-hook='chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl libperl5.36 perl-modules-5.36 >/dev/null' \
    --customize-hook='chroot "$1" apt-get autoremove -y -qq --purge >/dev/null' \
    --customize-hook='printf "%s\n" "ROOTPART=LABEL=RASPIROOT" "CONSOLES=\"tty0 ttyS1,115200\"" > "$1/etc/default/raspi-firmware"' \
    --customize-hook='chroot "$1" update-initramfs -c -k all' \
    --customize-hook='for k in "$1"/lib/modules/*; do DEB_MAINT_PARAMS=configure chroot "$1" /etc/kernel/postinst.d/z50-raspi-firmware "$(basename "$k")"; done' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    bookworm "$dir.tmp" \
    "deb $mirror bookworm main non-free-firmware" \
    "deb $mirror bookworm-updates main non-free-firmware" \
    "deb $security bookworm-security main non-free-firmware"
touch "$dir.tmp/.toru-rootfs-complete"
mv "$dir.tmp" "$dir"
# Keep one rootfs per machine: older keys are stale recipes.
find "$BOARD_CACHE" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$key" -exec rm -rf {} +
say "rootfs built in $(( $(date +%s) - start )) s"
echo "$dir"
