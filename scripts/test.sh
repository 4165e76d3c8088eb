#!/usr/bin/env bash
# The test command: installs what the tests need if it is missing, then runs every stage in
# scripts/test.d/ in order. A stage is one file; set TORU_TEST_ONLY="lint cargo" to run a subset.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
cd "$(toru_root)"
start=$(date +%s)
for stage in "$here"/test.d/*.sh; do
    name=$(basename "$stage" .sh); name=${name#*-}
    if [ -n "${TORU_TEST_ONLY:-}" ] && ! grep -qw "$name" <<<"$TORU_TEST_ONLY"; then continue; fi
    s=$(date +%s)
    say "stage $name"
    bash "$stage"
    say "stage $name passed in $(( $(date +%s) - s )) s"
done
say "all stages passed in $(( $(date +%s) - start )) s"
