# Shared helpers of the board/ scripts. Sourced, never run.
# shellcheck shell=bash
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

BOARD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BOARD_DIR/.." && pwd)"
# shellcheck disable=SC2034  # BOARD_CACHE and BOARD_OUT are for the scripts that source this file
BOARD_CACHE="${TORU_BOARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/toru-board}"
# shellcheck disable=SC2034
BOARD_OUT="${TORU_BOARD_OUT:-$BOARD_DIR/out}"

# Host tools for building and booting the image (Debian main). gcc-aarch64-linux-gnu: the C
# compiler the device build uses for ring (the MQTT bridge's TLS; .cargo/config.toml [env]).
board_need_tools() {
    need_apt mmdebstrap qemu-user-static binfmt-support arch-test mtools dosfstools fdisk \
        e2fsprogs xz-utils bmap-tools qemu-system-arm curl ca-certificates openssl python3 \
        gcc-aarch64-linux-gnu
}

# mmdebstrap runs arm64 maintainer scripts through qemu-user: binfmt_misc must be mounted and
# qemu-aarch64 registered (a fresh container often has neither).
board_need_binfmt() {
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 >&2
    fi
    arch-test arm64 >/dev/null || { echo "arm64 binaries do not run here (binfmt)" >&2; return 1; }
}

# Version of the toru package, for artefact names.
board_version() {
    sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml" | head -n1
}
