#!/usr/bin/env bash
# One command to build the flashable Raspberry Pi image (Pi 3/3+/4/400/CM4/Zero 2 W, 64-bit):
#
#   board/build-image.sh            -> board/out/toru-<version>-rpi-arm64.img, .img.xz, .img.bmap
#   board/build-image.sh --no-xz    -> only the .img (what the boot test boots; saves ~2.5 min)
#
# Steps: cargo release build of `toru`, `hello-rust` and `sysinfo` for aarch64-unknown-linux-musl (and
# `hostile`, the test plugin board/boot-test.sh installs as a package; never put in the image);
# the plugin packages the image ships (sysinfo, notes), signed with the image key (below); the cached
# Debian rootfs (board/rootfs.sh); a copy of it with board/overlay/ and the binaries laid over it
# (board/assemble.sh, shared with board/build-bundle.sh); an MBR image (disk id 746f7275) of four
# partitions assembled from files (no loop devices, no vfat in the build machine's kernel needed):
# FAT32 RASPIFIRM (Pi firmware, each slot's kernel files, GRUB for UEFI), root slot A (ext4), root
# slot B (empty until the first update), ext4 TORUDATA (Toru's store and packages, kept by every
# update). Also leaves the kernel, initrd and Pi 3 DTB next to the image for QEMU
# (board/boot-test.sh). Needs root (ownership inside the image).
#
# TORU_BUNDLE_CA=<pem>: the CA whose bundles the image's RAUC accepts (board/build-bundle.sh; a
# development CA of this build machine otherwise, made once in the board cache).
#
# TORU_BOARD_BIN_DIR=<dir> takes `toru`, `hello-rust` and `sysinfo` from <dir> instead of building
# them (development: try the image recipe with another build). Timings: board/README.md.
#
# TORU_IMAGE_KEY=<file>: the publisher key (a secret key from `toru key generate`, its `.pub` beside
# it) that signs the packages the image ships and that the image trusts. A release build is given
# the maintainer's key this way; it never lives in the repository. Without it, a key of this build
# machine is made once in the board cache ($BOARD_CACHE/keys/image.key) and used.
set -euo pipefail
umask 022
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/assemble.sh"

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
    say "cargo build --release --target $target (toru, hello-rust, sysinfo; hostile for the boot test)"
    # The same command as board/boot-test.sh's, which then finds everything built.
    (cd "$REPO_DIR" && cargo build --release --locked --target "$target" -p toru -p hello-rust -p sysinfo-plugin -p hostile)
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

# The plugin packages the image ships are packed with this machine's `toru`, signed with the image key.
(cd "$REPO_DIR" && cargo build --locked -q -p toru)
key=${TORU_IMAGE_KEY:-$BOARD_CACHE/keys/image.key}
if [ -z "${TORU_IMAGE_KEY:-}" ] && [ ! -f "$key" ]; then
    mkdir -p "$BOARD_CACHE/keys"
    (cd "$BOARD_CACHE/keys" && "${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/toru" key generate image >&2)
    say "made the image key $key (TORU_IMAGE_KEY names a maintainer's key instead)"
fi
[ -f "${key%.key}.pub" ] || { echo "$0: ${key%.key}.pub: the public half of $key is missing" >&2; exit 1; }

say "assembling $name.img"
mkdir -p "$BOARD_OUT"
work="$BOARD_OUT/work"
rm -rf --one-file-system "$work"
mkdir -p "$work"
tree="$work/rootfs"
board_bundle_keys
board_assemble_tree "$base" "$tree" "$bindir" "$key" "$BUNDLE_CA"

# Kernel, initrd and Pi 3 DTB for QEMU raspi3b, which cannot run the Pi's GPU firmware boot path.
kver=$(basename "$(ls -d "$tree"/lib/modules/* | sort -V | tail -n1)")
cp "$tree/boot/vmlinuz-$kver" "$BOARD_OUT/$name.vmlinuz"
cp "$tree/boot/initrd.img-$kver" "$BOARD_OUT/$name.initrd"
cp "$tree/boot/firmware/bcm2837-rpi-3-b.dtb" "$BOARD_OUT/$name.rpi3b.dtb"

# Boot partition. Raspberry Pi: the firmware at the top, each slot's kernel, initrd, device trees
# and cmdline.txt under slot-a/ and slot-b/ (config.txt's os_prefix, from toru-slot.txt, or from
# toru-tryboot.txt in a tryboot; board/README.md, "Updates"). UEFI (QEMU virt): GRUB as
# EFI/BOOT/BOOTAA64.EFI with grub/grub.cfg and its environment, the boot counter.
boot_mib=256
fw="$work/firmware"
mkdir "$fw"
mv "$tree/boot/firmware/"* "$fw/"
slot_a="$fw/slot-a"
mkdir -p "$slot_a/overlays"
mv "$fw/vmlinuz-$kver" "$slot_a/vmlinuz"
mv "$fw/initrd.img-$kver" "$slot_a/initrd.img"
mv "$fw"/bcm27*.dtb "$slot_a/"
if [ -d "$fw/overlays" ]; then mv "$fw/overlays/"* "$slot_a/overlays/" 2>/dev/null || true; rmdir "$fw/overlays"; fi
printf 'console=tty0 console=ttyS1,115200 root=PARTUUID=%s-02 rw rootwait rootflags=noatime,errors=remount-ro rauc.slot=A fsck.repair=yes net.ifnames=0\n' \
    "$BOARD_DISK_ID" > "$slot_a/cmdline.txt"
rm -f "$fw/cmdline.txt"
# raspi-firmware's config.txt names versioned kernel files at the top level: the slot's are
# unversioned, found through os_prefix.
sed -i -e 's/^kernel=.*/kernel=vmlinuz/' -e 's/^initramfs .*/initramfs initrd.img followkernel/' "$fw/config.txt"
cat >> "$fw/config.txt" <<'CFG'

# Toru A/B root slots (board/README.md, "Updates"): the committed slot, or the one on trial in a tryboot.
[all]
include toru-slot.txt
[tryboot]
include toru-tryboot.txt
[all]
CFG
echo "os_prefix=slot-a/" > "$fw/toru-slot.txt"
echo "os_prefix=slot-a/" > "$fw/toru-tryboot.txt"
mkdir -p "$fw/EFI/BOOT"
cat > "$tree/tmp/early.cfg" <<'CFG'
search --no-floppy --label --set=root RASPIFIRM
set prefix=($root)/grub
configfile ($root)/grub/grub.cfg
CFG
chroot "$tree" grub-mkimage -O arm64-efi -o /tmp/BOOTAA64.EFI -c /tmp/early.cfg -p /grub \
    part_msdos fat ext2 normal linux gzio loadenv test echo configfile search search_label regexp \
    halt reboot sleep
mv "$tree/tmp/BOOTAA64.EFI" "$fw/EFI/BOOT/BOOTAA64.EFI"
rm -f "$tree/tmp/early.cfg"
board_grubenv "$fw/grub/grubenv" "ORDER=A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
mkfs.vfat -F 32 -n RASPIFIRM -C "$work/boot.vfat" $((boot_mib * 1024)) >/dev/null
mcopy -s -p -m -i "$work/boot.vfat" "$fw"/* ::/

# Root slot A: the same filesystem a bundle carries (board/build-bundle.sh), grown to the slot.
# Slot B stays empty until the first update.
slot_mib=$BOARD_SLOT_MIB
root_mib=$(board_root_ext4 "$tree" "$work/root.ext4")
resize2fs -f "$work/root.ext4" "${slot_mib}M" >/dev/null 2>&1

# Data partition: small, grown to the end of the card at the first boot (toru-growdata.service).
data_mib=64
data="$work/data"
install -d -m 0755 "$data"
install -d -m 0711 "$data/toru"
install -d -m 0700 "$data/rauc" "$data/ssh"
mkfs.ext4 -q -F -L TORUDATA -d "$data" "$work/data.ext4" "${data_mib}M"

img="$BOARD_OUT/$name.img"
rm -f "$img" "$img.xz" "$img.bmap"
a_start=$((4 + boot_mib))
b_start=$((a_start + slot_mib))
d_start=$((b_start + slot_mib))
total_mib=$((d_start + data_mib))
truncate -s "${total_mib}M" "$img.tmp"
sfdisk --quiet "$img.tmp" <<SFDISK
label: dos
label-id: 0x$BOARD_DISK_ID
start=4MiB, size=${boot_mib}MiB, type=c, bootable
start=${a_start}MiB, size=${slot_mib}MiB, type=83
start=${b_start}MiB, size=${slot_mib}MiB, type=83
start=${d_start}MiB, type=83
SFDISK
dd if="$work/boot.vfat" of="$img.tmp" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img.tmp" bs=1M seek="$a_start" conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$img.tmp" bs=1M seek="$d_start" conv=notrunc,sparse status=none
mv "$img.tmp" "$img"
used_mib=$(du -sxm "$tree" | cut -f1)
rm -rf --one-file-system "$work"
t_image=$(date +%s)

if [ "$xz" = 1 ]; then
    say "compressing (xz -T2 -6, ~2.5 min) and writing the block map"
    bmaptool -q create -o "$img.bmap" "$img"
    xz -T2 -6 -k -f "$img"
fi
t_xz=$(date +%s)

say "image: $img ($total_mib MiB: boot $boot_mib, slots A and B $slot_mib each (A holds a $root_mib MiB filesystem), data $data_mib; rootfs used ${used_mib} MiB)"
say "timings: cargo $((t_cargo - t0)) s, rootfs $((t_rootfs - t_cargo)) s, assembly $((t_image - t_rootfs)) s, xz+bmap $((t_xz - t_image)) s"
