#!/usr/bin/env bash
# Compare the working tree's benchmarks with those of another revision measured now, on this machine.
#
#   bench/ab_compare.sh BASE_REV [pytest arguments, e.g. -k reflow]
#
# A saved baseline (reports/bench/) was measured on another day; a shared or virtual machine can be 10-50 %
# slower from one hour to the next with no change of code, and a single A/B 10-20 % off. This script checks out
# BASE_REV into a temporary git worktree and benchmarks it and the working tree in ${REFLOWBENCH_AB_ROUNDS:-1}
# alternating round(s) (base, work; then work, base; ...), then judges each benchmark on each side's best round
# (bench/bench_ab.py) with the same threshold as the documented compare: exit 1, "Performance has
# regressed", when a benchmark's minimum time is more than ${REFLOWBENCH_BENCH_FAIL:-min:25%} worse.
# Nothing is written under reports/.
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
rounds="${REFLOWBENCH_AB_ROUNDS:-1}"
fail="${REFLOWBENCH_BENCH_FAIL:-min:25%}"
case "$rounds" in ''|*[!0-9]*|0) echo "bench/ab_compare.sh: REFLOWBENCH_AB_ROUNDS must be a whole number >= 1, not '$rounds'" >&2; exit 2;; esac
if ! PYTHONPATH="$repo/src" "$python" "$repo/bench/bench_ab.py" --check --fail "$fail"; then
    echo "bench/ab_compare.sh: REFLOWBENCH_BENCH_FAIL='$fail' is not a threshold (see above)" >&2
    exit 2
fi
work="$(mktemp -d)"
cleanup() { git -C "$repo" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
git -C "$repo" worktree add --quiet --detach "$work/base" "$base"
store="$work/storage"
shared="${REFLOWBENCH_SHARED:-$(dirname "$repo")/shared}"
measure() {  # measure SIDE FOLDER ROUND [pytest arguments]
    local side="$1" folder="$2" round="$3"
    shift 3
    echo "== round $round of $rounds: $side ($([ "$side" = base ] && echo "$base" || echo "working tree of $repo")) =="
    # one process: a pytest-xdist worker's variables (this script run from the tests) would turn pytest-benchmark off
    (cd "$folder" && unset PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT && \
        REFLOWBENCH_SHARED="$shared" PYTHONPATH="$folder/src" "$python" -m pytest bench/ --benchmark-only \
        --benchmark-storage="file://$store" --benchmark-save="$side" -p no:cacheprovider "$@")
}
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
        measure base "$work/base" "$round" "$@"; measure work "$repo" "$round" "$@"
    else
        measure work "$repo" "$round" "$@"; measure base "$work/base" "$round" "$@"
    fi
done
echo "== verdict =="
PYTHONPATH="$repo/src" "$python" "$repo/bench/bench_ab.py" "$store" --fail "$fail"
