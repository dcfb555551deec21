#!/usr/bin/env bash
# CI's run on a fresh clone: clones the committed HEAD of this checkout into a temporary folder and
# runs .ci/run there (README.md's test command: a new virtual environment, the install, the suite)
# with no active virtual environment and a plain PATH, as CI does. Run it from the checkout before
# a release or any change to the install, the dependencies, README.md or the CLI; uncommitted
# changes are not part of the clone.
#
#   bash tools/fresh_clone_check.sh             # clone, install, run the suite; exit code of .ci/run
#   bash tools/fresh_clone_check.sh --keep      # keep the clone and its log afterwards
#   bash tools/fresh_clone_check.sh --dry-run   # clone and print the command CI would run
set -u
mode=${1:-}
case "$mode" in "" | --keep | --dry-run) ;; *)
  echo "usage: bash tools/fresh_clone_check.sh [--keep | --dry-run]" >&2
  exit 2
  ;;
esac
src=$(git rev-parse --show-toplevel 2>/dev/null) || { echo "run it inside the project's checkout" >&2; exit 2; }
tmp=$(mktemp -d)
[[ $mode == --keep ]] || trap 'rm -rf "$tmp"' EXIT
git clone -q "$src" "$tmp/clone" || exit 2
cd "$tmp/clone" || exit 2
[[ -f .ci/run ]] || { echo "no .ci/run in the committed HEAD" >&2; exit 1; }
if [[ $mode == --dry-run ]]; then
  bash .ci/run --print
  exit $?
fi
echo "fresh clone of $(git rev-parse --short HEAD) in $tmp/clone; running .ci/run ..."
SECONDS=0
env -u VIRTUAL_ENV PATH=/usr/local/bin:/usr/bin:/bin CI=true bash .ci/run >"$tmp/ci.log" 2>&1
rc=$?
tail -n 5 "$tmp/ci.log"
echo "exit $rc after ${SECONDS}s (log: $tmp/ci.log$([[ $mode == --keep ]] || echo ', removed on exit'))"
exit $rc
