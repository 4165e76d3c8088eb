#!/usr/bin/env bash
# Pack one plugin folder of plugins/ into a signed package for the targets that were built.
#
#   scripts/pack-plugin.sh PLUGIN_DIR KEY OUT [TRIPLE=EXECUTABLE ...]
#
# PLUGIN_DIR holds a manifest.toml (docs/PACKAGES.md); KEY is a secret key from `toru key generate`;
# OUT is the package to write (OUT.minisig beside it). Each TRIPLE=EXECUTABLE puts a built
# executable where the manifest's `[entry]` line for TRIPLE names it; `[entry]` lines for targets
# that were not given are left out of the packed manifest, so a package carries exactly the builds
# at hand (a script plugin, entry `any`, needs none). The folder is copied first (symlinks
# followed, e.g. a Python plugin's toru_plugin.py), so the checkout is never written.
# TORU_BIN names the `toru` to pack with (default: target/debug/toru, under $CARGO_TARGET_DIR when set).
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
src=$1 key=$2 out=$3
shift 3
toru=${TORU_BIN:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/debug/toru}
[ -f "$src/manifest.toml" ] || { echo "pack-plugin: $src/manifest.toml: no such file" >&2; exit 2; }
stage=$(mktemp -d "${TMPDIR:-/tmp}/toru-pack.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -rL "$src/." "$stage/"
rm -rf "$stage/bin"
# The entry path the manifest gives TRIPLE (`TRIPLE = "path"` inside [entry]).
entry_path() {
    awk -v t="$1" '
        /^\[/ { inentry = ($0 ~ /^\[entry\][[:space:]]*$/); next }
        inentry && $1 == t { sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit }
    ' "$stage/manifest.toml"
}
keep=" any "
for pair in "$@"; do
    triple=${pair%%=*} exe=${pair#*=}
    path=$(entry_path "$triple")
    [ -n "$path" ] || { echo "pack-plugin: $src/manifest.toml has no [entry] line for $triple" >&2; exit 2; }
    mkdir -p "$stage/$(dirname "$path")"
    install -m 0755 "$exe" "$stage/$path"
    keep+="$triple "
done
# Leave out the [entry] lines of targets that were not built.
awk -v keep="$keep" '
    /^\[/ { inentry = ($0 ~ /^\[entry\][[:space:]]*$/) }
    inentry && $0 ~ /^[a-z0-9_-]+[[:space:]]*=/ && index(keep, " " $1 " ") == 0 { next }
    { print }
' "$stage/manifest.toml" >"$stage/manifest.toml.new"
mv "$stage/manifest.toml.new" "$stage/manifest.toml"
"$toru" plugin pack "$stage" --key "$key" -o "$out" >&2
