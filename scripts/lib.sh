# Shared helpers for the scripts in scripts/. Sourced, never run.
# shellcheck shell=bash

# Print a stage banner to stderr.
say() { printf '\n==> %s\n' "$*" >&2; }

# Install Debian packages that are missing (the test command's contract: a fresh Debian/Ubuntu
# machine with rustup gets what the tests need). Uses sudo when not root.
need_apt() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing: ${missing[*]}"
    if [ -z "${TORU_APT_UPDATED:-}" ]; then
        $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
        export TORU_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Add the rustup targets in "$@" that the active toolchain lacks (the test command's contract, as
# for apt packages above). rustup installs the targets listed in rust-toolchain.toml only when it
# installs the toolchain itself, never into a toolchain that is already there; so every script that
# builds with `--target` asks for its targets here. Run from the repository root, so the toolchain
# is the one rust-toolchain.toml pins.
need_rust_target() {
    command -v rustup >/dev/null || {
        echo "need_rust_target: rustup is not installed; cannot add $*" >&2
        return 1
    }
    local installed missing=() t
    installed=$(rustup target list --installed)
    for t in "$@"; do
        grep -qxF "$t" <<<"$installed" || missing+=("$t")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "adding rust targets: ${missing[*]}"
    rustup target add "${missing[@]}" >&2
}

# Repository root.
toru_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }
