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
        $sudo apt-get update -qq >&2
        export TORU_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Repository root.
toru_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }
