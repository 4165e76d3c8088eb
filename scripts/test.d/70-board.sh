#!/usr/bin/env bash
# The Raspberry Pi image: builds it (cached rootfs under ~/.cache/toru-board, no xz) and boots a
# copy under QEMU virt, checking UI, health, setup code, plugins, signed packages, plugin isolation
# with systemd's real cgroup delegation (uids, Landlock, seccomp, cgroup limits, the hostile test
# plugin's attacks and its oom/limit events), watchdog soak, restart after SIGKILL and the
# first-boot root grow (board/boot-test.sh). Needs root. ~4-5 min with a warm rootfs cache; a cold
# one adds the rootfs build, 10-20 min depending on load.
set -euo pipefail
. "$(dirname "$0")/../../board/lib.sh"
"$BOARD_DIR/build-image.sh" --no-xz
"$BOARD_DIR/boot-test.sh" "$BOARD_OUT/toru-$(board_version)-rpi-arm64.img" virt
