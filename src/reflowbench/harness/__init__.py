"""The harness: plan a sweep, one run (prune -> eval -> REFLOW -> eval), sweeps with claims, dense training."""

from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import SweepPlan, plan_sweep, resolve_dataset
from reflowbench.harness.run import SweepState, prune_and_measure, run_one
from reflowbench.harness.sweep import run_sweep

__all__ = ["SweepPlan", "SweepState", "evaluate", "plan_sweep", "prune_and_measure", "resolve_dataset", "run_one", "run_sweep"]
