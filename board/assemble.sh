# The parts of the image recipe that board/build-image.sh (the flashable image) and
# board/build-bundle.sh (a RAUC update bundle of the same system) share, so a bundle's root slot is
# exactly what the image's slot A is. Sourced after lib.sh, never run.
# shellcheck shell=bash

# MBR disk id of the image: the root slots are root=PARTUUID=746f7275-02 (A) and -03 (B).
# shellcheck disable=SC2034
BOARD_DISK_ID=746f7275
# Size of each root slot. A bundle's root filesystem must fit in it (RAUC refuses a larger one);
# today's is ~0.8 GiB.
# shellcheck disable=SC2034
BOARD_SLOT_MIB=1280

# board_bundle_keys: sets BUNDLE_CA (the keyring the image trusts), BUNDLE_CERT and BUNDLE_KEY (what
# a bundle is signed with). TORU_BUNDLE_CA / TORU_BUNDLE_CERT / TORU_BUNDLE_KEY name a maintainer's
# (kept outside the repository); without them a development CA and signer of this build machine
# are made once in the board cache and used for every local build.
board_bundle_keys() {
    if [ -n "${TORU_BUNDLE_CA:-}" ]; then
        BUNDLE_CA=$TORU_BUNDLE_CA
        BUNDLE_CERT=${TORU_BUNDLE_CERT:-}
        BUNDLE_KEY=${TORU_BUNDLE_KEY:-}
        return 0
    fi
    local dir="$BOARD_CACHE/keys"
    BUNDLE_CA="$dir/rauc-ca.cert.pem"
    BUNDLE_CERT="$dir/rauc-signer.cert.pem"
    BUNDLE_KEY="$dir/rauc-signer.key.pem"
    if [ ! -f "$BUNDLE_CERT" ]; then
        mkdir -p "$dir"
        board_make_ca "$dir/rauc-ca" "Toru development update CA ($(hostname))"
        board_make_signer "$dir/rauc-ca" "$dir/rauc-signer" "Toru development update signer"
        say "made the development update CA $BUNDLE_CA (TORU_BUNDLE_CA names a maintainer's instead)"
    fi
}

# board_make_ca <prefix> <common name>: <prefix>.key.pem and <prefix>.cert.pem, a self-signed CA.
board_make_ca() {
    openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 7300 -subj "/CN=$2" \
        -keyout "$1.key.pem" -out "$1.cert.pem" 2>/dev/null
}

# board_make_signer <ca prefix> <prefix> <common name>: a bundle-signing certificate issued by the
# CA. No extendedKeyUsage: RAUC (OpenSSL's S/MIME check) refuses codeSigning as "unsuitable
# certificate purpose".
board_make_signer() {
    local ext
    ext=$(mktemp)
    printf '[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n' > "$ext"
    openssl req -newkey rsa:3072 -nodes -sha256 -subj "/CN=$3" -keyout "$2.key.pem" -out "$2.csr" 2>/dev/null
    openssl x509 -req -sha256 -days 3650 -in "$2.csr" -CA "$1.cert.pem" -CAkey "$1.key.pem" \
        -CAcreateserial -extfile "$ext" -extensions v3 -out "$2.cert.pem" 2>/dev/null
    rm -f "$ext" "$2.csr"
}

# board_grubenv <file> KEY=VALUE...: sets variables in a GRUB environment block (1024 bytes,
# '#'-padded, what grub-editenv makes), creating it if needed, without GRUB on the build machine.
board_grubenv() {
    python3 - "$@" <<'PY'
import os, sys
path, pairs = sys.argv[1], sys.argv[2:]
env = {}
if os.path.exists(path):
    for line in open(path).read().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
for p in pairs:
    k, v = p.split("=", 1)
    env[k] = v
body = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in env.items())
assert len(body) <= 1024, "grubenv too long"
open(path, "w").write(body + "#" * (1024 - len(body)))
PY
}

# board_boot_env <image> KEY=VALUE...: sets variables in the GRUB environment on an image's boot partition
# (FAT at 4 MiB; mtools, no mount), e.g. TORU_EXTRA=toru.testtoken for the tests.
board_boot_env() {
    local img=$1 tmp
    shift
    tmp=$(mktemp)
    mcopy -n -i "$img@@4194304" ::/grub/grubenv "$tmp"
    board_grubenv "$tmp" "$@"
    mcopy -o -i "$img@@4194304" "$tmp" ::/grub/grubenv
    rm -f "$tmp"
}

# board_assemble_tree <base rootfs> <tree> <bindir> <image key> <bundle CA>: a copy of the cached
# Debian rootfs with Toru laid over it: board/overlay/, the binaries from <bindir>, the plugin
# packages the image ships signed with <image key>, RAUC's keyring, the units enabled.
board_assemble_tree() {
    local base=$1 tree=$2 bindir=$3 key=$4 ca=$5 target=aarch64-unknown-linux-musl
    cp -a "$base" "$tree"
    rm -f "$tree/.toru-rootfs-complete"
    # Toru's files: root-owned, 0755 if executable in the checkout else 0644, whatever the
    # checkout's owner and umask were; directories that already exist keep their modes.
    (cd "$BOARD_DIR/overlay" && find . -type f -printf '%P\n') | while IFS= read -r f; do
        local mode=0644
        [ -x "$BOARD_DIR/overlay/$f" ] && mode=0755
        install -D -o root -g root -m "$mode" "$BOARD_DIR/overlay/$f" "$tree/$f"
    done
    install -m 0755 "$bindir/toru" "$tree/usr/bin/toru"
    local plugins="$tree/usr/lib/toru/plugins"
    install -d -m 0755 "$plugins"
    install -m 0755 "$bindir/hello-rust" "$plugins/hello-rust.binary"
    local py_plugin="$REPO_DIR/plugins/hello-python/hello-python.binary"
    local py_sdk="$REPO_DIR/toru-plugin-api/python/toru_plugin.py"
    if [ -f "$py_plugin" ] && [ -f "$py_sdk" ]; then
        install -m 0755 "$py_plugin" "$plugins/hello-python.binary"
        install -m 0644 "$py_sdk" "$plugins/toru_plugin.py"
        # Its frontend, in the per-plugin directory the plugin also looks in (no name clashes).
        if [ -f "$REPO_DIR/plugins/hello-python/bundle.js" ]; then
            install -D -m 0644 "$REPO_DIR/plugins/hello-python/bundle.js" "$plugins/hello-python/bundle.js"
        fi
    fi
    # The plugin packages the image ships, installed at the first boot by
    # toru-factory-packages.service through the running host (trusting the image key first).
    install -d -m 0755 "$tree/usr/lib/toru/packages" "$tree/usr/lib/toru/keys"
    install -m 0644 "${key%.key}.pub" "$tree/usr/lib/toru/keys/image.pub"
    "$REPO_DIR/scripts/pack-plugin.sh" "$REPO_DIR/plugins/sysinfo" "$key" \
        "$tree/usr/lib/toru/packages/sysinfo.toru" "$target=$bindir/sysinfo"
    "$REPO_DIR/scripts/pack-plugin.sh" "$REPO_DIR/plugins/notes" "$key" "$tree/usr/lib/toru/packages/notes.toru"
    chmod 0644 "$tree"/usr/lib/toru/packages/*
    install -D -m 0644 "$BOARD_DIR/README.md" "$tree/usr/share/doc/toru/README.md"
    # RAUC accepts bundles whose signer chains to this CA.
    install -D -m 0644 "$ca" "$tree/etc/rauc/keyring.pem"
    # Unversioned kernel names: GRUB boots /boot/vmlinuz of the slot, the Pi's post-install copies it.
    local kver
    kver=$(basename "$(ls -d "$tree"/lib/modules/* | sort -V | tail -n1)")
    ln -sf "vmlinuz-$kver" "$tree/boot/vmlinuz"
    ln -sf "initrd.img-$kver" "$tree/boot/initrd.img"
    # Mount point of the data partition.
    install -d -m 0755 "$tree/data"

    # Inside the image (arm64 binaries through binfmt): the units. The host runs as root with a few
    # capabilities; plugins get uids of their own from [isolation] (no accounts to create).
    chroot "$tree" systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
        toru.service toru-setup-code.path toru-setup-code.service toru-growdata.service \
        toru-factory-packages.service toru-boot-test.service
    # wpa_supplicant@<iface> is started by udev for a Wi-Fi interface; the D-Bus instance is not needed.
    chroot "$tree" systemctl disable --quiet wpa_supplicant.service
    # No password for anyone: root's is locked ('*' from debootstrap; made sure here).
    chroot "$tree" usermod -p '*' root
    # Must stay empty: systemd then generates a new machine ID on the first boot (ConditionFirstBoot).
    : > "$tree/etc/machine-id"
}

# board_root_ext4 <tree> <file>: the root slot's ext4 filesystem image, what the tree uses plus 30 %
# and 128 MiB in 4 MiB steps (RAUC grows it to the slot, resize=true). /boot/firmware stays an empty
# mount point (its files go to the boot partition). Prints the size in MiB.
board_root_ext4() {
    local tree=$1 out=$2 used mib
    used=$(du -sxm --exclude="$tree/boot/firmware" "$tree" | cut -f1)
    mib=$(( (used * 13 / 10 + 128 + 3) / 4 * 4 ))
    [ "$mib" -le "$BOARD_SLOT_MIB" ] || { echo "root filesystem ($mib MiB) larger than a slot ($BOARD_SLOT_MIB MiB)" >&2; return 1; }
    local fwtmp
    fwtmp=$(mktemp -d "$(dirname "$out")/fw.XXXXXX")
    if [ -n "$(ls -A "$tree/boot/firmware")" ]; then mv "$tree/boot/firmware/"* "$fwtmp/"; fi
    mkfs.ext4 -q -F -L toru-root -d "$tree" "$out" "${mib}M"
    if [ -n "$(ls -A "$fwtmp")" ]; then mv "$fwtmp/"* "$tree/boot/firmware/"; fi
    rmdir "$fwtmp"
    echo "$mib"
}
