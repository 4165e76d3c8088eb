#!/usr/bin/env bash
# Builds a signed RAUC update bundle of the Toru image: the same root filesystem a fresh image's
# slot A holds (board/assemble.sh), for RAUC to write into the other slot of a running device.
#
#   board/build-bundle.sh [OUT.raucb]     -> board/out/toru-<version>-rpi-arm64.raucb by default
#
# compatible=toru-rpi-arm64 (what /etc/rauc/system.conf on the device says), version = the toru
# package's version, or TORU_BUNDLE_VERSION. format=verity: the device checks every block as it reads.
# Signed with TORU_BUNDLE_CERT and TORU_BUNDLE_KEY, a certificate that chains to the CA the device
# trusts (TORU_BUNDLE_CA when the image was built). A maintainer keeps the CA's key offline and these
# files outside the repository; without them the development CA of this build machine (made once in
# the board cache, the one local images trust) signs. The same TORU_BOARD_BIN_DIR and TORU_IMAGE_KEY
# as build-image.sh apply. Needs root (ownership inside the filesystem).
#
# For tests (board/update-test.sh): TORU_BUNDLE_TOUCH=<script> runs <script> <tree> on the assembled
# tree before it is packed (e.g. a version marker, or a broken toru).
set -euo pipefail
umask 022
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/assemble.sh"
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (files in the bundle must belong to root)" >&2; exit 1; }

version=${TORU_BUNDLE_VERSION:-$(board_version)}
name="toru-$(board_version)-rpi-arm64"
out=${1:-$BOARD_OUT/$name.raucb}
target=aarch64-unknown-linux-musl
board_need_tools
board_need_binfmt
need_apt rauc squashfs-tools openssl

t0=$(date +%s)
if [ -n "${TORU_BOARD_BIN_DIR:-}" ]; then
    bindir=$TORU_BOARD_BIN_DIR
else
    (cd "$REPO_DIR" && need_rust_target "$target")
    (cd "$REPO_DIR" && cargo build --release --locked --target "$target" -p toru -p hello-rust -p sysinfo-plugin -p hostile)
    bindir="${CARGO_TARGET_DIR:-$REPO_DIR/target}/$target/release"
fi
(cd "$REPO_DIR" && cargo build --locked -q -p toru)
key=${TORU_IMAGE_KEY:-$BOARD_CACHE/keys/image.key}
[ -f "$key" ] || { echo "$0: no image key $key: build the image first (board/build-image.sh) or set TORU_IMAGE_KEY" >&2; exit 1; }
board_bundle_keys
[ -f "$BUNDLE_CERT" ] && [ -f "$BUNDLE_KEY" ] ||
    { echo "$0: TORU_BUNDLE_CERT and TORU_BUNDLE_KEY must name the signing certificate and key" >&2; exit 1; }

mkdir -p "$BOARD_CACHE"
exec 9>"$BOARD_CACHE/.build.lock"
flock 9
base=$("$BOARD_DIR/rootfs.sh")
exec 9>&-

work=$(mktemp -d "$BOARD_OUT.bundle.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf --one-file-system "$work"' EXIT
tree="$work/rootfs"
board_assemble_tree "$base" "$tree" "$bindir" "$key" "$BUNDLE_CA"
if [ -n "${TORU_BUNDLE_TOUCH:-}" ]; then "$TORU_BUNDLE_TOUCH" "$tree"; fi
content="$work/content"
mkdir "$content"
mib=$(board_root_ext4 "$tree" "$content/rootfs.ext4")
cat > "$content/manifest.raucm" <<MANIFEST
[update]
compatible=toru-rpi-arm64
version=$version
description=Toru $version for Raspberry Pi (arm64) and UEFI boards
build=$(date -u +%Y%m%dT%H%M%SZ)

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
MANIFEST
mkdir -p "$(dirname "$out")"
rm -f "$out"
rauc bundle --cert="$BUNDLE_CERT" --key="$BUNDLE_KEY" "$content" "$out" >&2
say "bundle: $out ($(du -m "$out" | cut -f1) MiB; root filesystem $mib MiB; version $version) in $(( $(date +%s) - t0 )) s"
