#!/usr/bin/env bash
# Compare the working tree's benchmarks with those of another revision measured now, on this machine.
#
#   bench/ab_compare.sh BASE_REV [pytest arguments, e.g. -k reflow]
#
# A saved baseline (reports/bench/) was measured on another day; a shared or virtual machine can be 10-50 %
# slower from one hour to the next with no change of code. This script checks out BASE_REV into a temporary
# git worktree, benchmarks it (its own src/ and bench/), then benchmarks the working tree and compares the two
# with the same threshold as the documented compare (exit 1, "Performance has regressed", when a benchmark's
# minimum time is more than ${REFLOWBENCH_BENCH_FAIL:-min:25%} worse). Nothing is written under reports/.
set -euo pipefail
base="${1:?usage: bench/ab_compare.sh BASE_REV [pytest arguments]}"
shift
repo="$(git rev-parse --show-toplevel)"
python="${PYTHON:-$repo/.venv/bin/python}"
if ! git -C "$repo" rev-parse --quiet --verify "$base^{commit}" >/dev/null; then
    echo "bench/ab_compare.sh: no revision named '$base' in $repo (give a branch, tag or commit, e.g. main or HEAD~1)" >&2
    exit 2
fi
if [ ! -x "$python" ]; then
    echo "bench/ab_compare.sh: no Python at $python: create the README's .venv, or set PYTHON to one with reflowbench's test extras" >&2
    exit 2
fi
work="$(mktemp -d)"
cleanup() { git -C "$repo" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
git -C "$repo" worktree add --quiet --detach "$work/base" "$base"
store="file://$work/storage"
shared="${REFLOWBENCH_SHARED:-$(dirname "$repo")/shared}"
echo "== $base (base) =="
(cd "$work/base" && REFLOWBENCH_SHARED="$shared" PYTHONPATH="$work/base/src" "$python" -m pytest bench/ --benchmark-only \
    --benchmark-storage="$store" --benchmark-save=base -p no:cacheprovider "$@")
echo "== working tree of $repo against $base =="
cd "$repo"
REFLOWBENCH_SHARED="$shared" PYTHONPATH="$repo/src" "$python" -m pytest bench/ --benchmark-only --benchmark-storage="$store" \
    --benchmark-compare --benchmark-compare-fail="${REFLOWBENCH_BENCH_FAIL:-min:25%}" -p no:cacheprovider "$@"
