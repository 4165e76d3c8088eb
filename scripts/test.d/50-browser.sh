#!/usr/bin/env bash
# Browser tests of the web UI in real headless Chromium: Debian's chromium, driven by playwright-core
# from npm (no browser download). Starts the real `toru` with the example plugins and walks setup,
# login, plugin toggle, plugin views, logs, the settings form (tests/browser/run.mjs); then plugin
# packages on hosts of their own: trust, install, update, a rolled-back update, versions and
# rollback, settings, remove, a viewer, the unsigned banner (tests/browser/packages.mjs); then a
# plugin's Security page: protections and limits as the API says, an admin changing limits and
# grants, a refused value, a viewer (tests/browser/security.mjs); the notes plugin as a package:
# add, tick, page, delete, settings, a viewer (tests/browser/notes.mjs); the sysinfo plugin as a
# package: live figures, the history chart, settings (tests/browser/sysinfo.mjs); a licensed
# package's card (tests/browser/licenses.mjs); the safe-mode banner after the host was killed:
# the likely culprit, leaving, disabling the culprit (tests/browser/safemode.mjs); System → Update,
# off and then with the real RAUC as tests/update.rs runs it (tests/browser/update.mjs; needs root,
# rauc, dbus and openssl, which stage `cargo` installs).
# Screenshots: $TORU_SHOTS.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$(toru_root)"
need_apt chromium python3 fonts-dejavu-core
# Node may come from elsewhere (e.g. NodeSource's nodejs bundles npm and conflicts with Debian's).
command -v node >/dev/null || need_apt nodejs
command -v npm >/dev/null || need_apt npm
cargo build --workspace --locked
cd tests/browser
# `npm ci` installs exactly the committed lock file; quiet unless it fails.
npm ci --no-audit --no-fund --loglevel=error >&2
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" node run.mjs
