#!/usr/bin/env bash
# One command to build the flashable Raspberry Pi image (Pi 3/3+/4/400/CM4/Zero 2 W, 64-bit):
#
#   board/build-image.sh            -> board/out/toru-<version>-rpi-arm64.img, .img.xz, .img.bmap
#   board/build-image.sh --no-xz    -> only the .img (what the boot test boots; saves ~2.5 min)
#
# Steps: cargo release build of `toru` and `hello-rust` for aarch64-unknown-linux-musl (and
# `hostile`, the test plugin board/boot-test.sh installs as a package; never put in the image); the cached
# Debian rootfs (board/rootfs.sh); a copy of it with board/overlay/ and the binaries laid over it;
# a FAT32 RASPIFIRM and an ext4 RASPIROOT partition assembled from files (no loop devices, no vfat in
# the build machine's kernel needed) into an MBR image. Also leaves the kernel, initrd and Pi 3 DTB
# next to the image for QEMU (board/boot-test.sh). Needs root (ownership inside the image).
#
# TORU_BOARD_BIN_DIR=<dir> takes `toru` and `hello-rust` from <dir> instead of building them
# (development: try the image recipe with another build). Timings: board/README.md.
set -euo pipefail
umask 022
. "$(dirname "$0")/lib.sh"

xz=1
case "${1:-}" in
    --no-xz) xz=0 ;;
    "") ;;
    *) echo "usage: $0 [--no-xz]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (files in the image must belong to root)" >&2; exit 1; }

version=$(board_version)
name="toru-$version-rpi-arm64"
target=aarch64-unknown-linux-musl
board_need_tools
board_need_binfmt

t0=$(date +%s)
if [ -n "${TORU_BOARD_BIN_DIR:-}" ]; then
    bindir=$TORU_BOARD_BIN_DIR
else
    (cd "$REPO_DIR" && need_rust_target "$target")
    say "cargo build --release --target $target (toru, hello-rust; hostile for the boot test)"
    # The same command as board/boot-test.sh's, which then finds everything built.
    (cd "$REPO_DIR" && cargo build --release --locked --target "$target" -p toru -p hello-rust -p hostile)
    bindir="${CARGO_TARGET_DIR:-$REPO_DIR/target}/$target/release"
fi
t_cargo=$(date +%s)

# One rootfs build at a time per cache: a second one would delete the first one's work in progress.
mkdir -p "$BOARD_CACHE"
exec 9>"$BOARD_CACHE/.build.lock"
flock 9
base=$("$BOARD_DIR/rootfs.sh")
exec 9>&-
t_rootfs=$(date +%s)

say "assembling $name.img"
mkdir -p "$BOARD_OUT"
work="$BOARD_OUT/work"
rm -rf --one-file-system "$work"
mkdir -p "$work"
tree="$work/rootfs"
cp -a "$base" "$tree"
rm -f "$tree/.toru-rootfs-complete"

# Toru's files: root-owned, 0755 if executable in the checkout else 0644, whatever the checkout's
# owner and umask were; directories that already exist in the rootfs keep their modes.
(cd "$BOARD_DIR/overlay" && find . -type f -printf '%P\n') | while IFS= read -r f; do
    mode=0644
    [ -x "$BOARD_DIR/overlay/$f" ] && mode=0755
    install -D -o root -g root -m "$mode" "$BOARD_DIR/overlay/$f" "$tree/$f"
done
install -m 0755 "$bindir/toru" "$tree/usr/bin/toru"
plugins="$tree/usr/lib/toru/plugins"
install -d -m 0755 "$plugins"
install -m 0755 "$bindir/hello-rust" "$plugins/hello-rust.binary"
# The Python example is optional until it exists in the repository; python3 is in the image for it.
py_plugin="$REPO_DIR/plugins/hello-python/hello-python.binary"
py_sdk="$REPO_DIR/toru-plugin-api/python/toru_plugin.py"
if [ -f "$py_plugin" ] && [ -f "$py_sdk" ]; then
    install -m 0755 "$py_plugin" "$plugins/hello-python.binary"
    install -m 0644 "$py_sdk" "$plugins/toru_plugin.py"
    # Its frontend, in the per-plugin directory the plugin also looks in (no name clashes there).
    if [ -f "$REPO_DIR/plugins/hello-python/bundle.js" ]; then
        install -D -m 0644 "$REPO_DIR/plugins/hello-python/bundle.js" "$plugins/hello-python/bundle.js"
    fi
else
    say "no Python example plugin ($py_plugin, $py_sdk): image ships the Rust plugin only"
fi
install -D -m 0644 "$BOARD_DIR/README.md" "$tree/usr/share/doc/toru/README.md"

# Inside the image (arm64 binaries through binfmt): the units. The host runs as root with a few
# capabilities; plugins get uids of their own from [isolation] (no accounts to create).
chroot "$tree" systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
    toru.service toru-setup-code.path toru-setup-code.service toru-growroot.service \
    toru-boot-test.service
# wpa_supplicant@<iface> is started by udev for a Wi-Fi interface; the D-Bus instance is not needed.
chroot "$tree" systemctl disable --quiet wpa_supplicant.service
# No password for anyone: root's is locked ('*' from debootstrap; made sure here).
chroot "$tree" usermod -p '*' root
# Must stay empty: systemd then generates a new machine ID on the first boot (ConditionFirstBoot).
: > "$tree/etc/machine-id"

# Kernel, initrd and Pi 3 DTB for QEMU, which cannot run the Pi's GPU firmware boot path.
kver=$(basename "$(ls -d "$tree"/lib/modules/* | sort -V | tail -n1)")
cp "$tree/boot/vmlinuz-$kver" "$BOARD_OUT/$name.vmlinuz"
cp "$tree/boot/initrd.img-$kver" "$BOARD_OUT/$name.initrd"
cp "$tree/boot/firmware/bcm2837-rpi-3-b.dtb" "$BOARD_OUT/$name.rpi3b.dtb"

# Boot partition: the Pi firmware, kernel, initrd, config.txt, cmdline.txt and wifi.conf.
boot_mib=256
fw="$work/firmware"
mkdir "$fw"
mv "$tree/boot/firmware/"* "$fw/"
mkfs.vfat -F 32 -n RASPIFIRM -C "$work/boot.vfat" $((boot_mib * 1024)) >/dev/null
mcopy -s -p -m -i "$work/boot.vfat" "$fw"/* ::/

# Root partition: what the tree uses plus 30 % and 128 MiB, in 4 MiB steps; first boot grows it.
used_mib=$(du -sxm "$tree" | cut -f1)
root_mib=$(( (used_mib * 13 / 10 + 128 + 3) / 4 * 4 ))
mkfs.ext4 -q -F -L RASPIROOT -d "$tree" "$work/root.ext4" "${root_mib}M"

img="$BOARD_OUT/$name.img"
rm -f "$img" "$img.xz" "$img.bmap"
truncate -s $((4 + boot_mib + root_mib))M "$img.tmp"
sfdisk --quiet "$img.tmp" <<SFDISK
label: dos
start=4MiB, size=${boot_mib}MiB, type=c, bootable
start=$((4 + boot_mib))MiB, type=83
SFDISK
dd if="$work/boot.vfat" of="$img.tmp" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img.tmp" bs=1M seek=$((4 + boot_mib)) conv=notrunc,sparse status=none
mv "$img.tmp" "$img"
rm -rf --one-file-system "$work"
t_image=$(date +%s)

if [ "$xz" = 1 ]; then
    say "compressing (xz -T2 -6, ~2.5 min) and writing the block map"
    bmaptool -q create -o "$img.bmap" "$img"
    xz -T2 -6 -k -f "$img"
fi
t_xz=$(date +%s)

say "image: $img ($((4 + boot_mib + root_mib)) MiB; rootfs used ${used_mib} MiB)"
say "timings: cargo $((t_cargo - t0)) s, rootfs $((t_rootfs - t_cargo)) s, assembly $((t_image - t_rootfs)) s, xz+bmap $((t_xz - t_image)) s"
