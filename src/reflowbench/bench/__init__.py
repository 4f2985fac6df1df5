"""The harness: one run (prune -> eval -> REFLOW -> eval), sweeps, results schema, dense training."""

from reflowbench.bench.evaluate import evaluate
from reflowbench.bench.harness import SuiteState, run_one
from reflowbench.bench.results import load_runs, write_csv
from reflowbench.bench.sweep import run_suite

__all__ = ["SuiteState", "evaluate", "load_runs", "run_one", "run_suite", "write_csv"]
