"""The harness: plan a suite, one run (prune -> eval -> REFLOW -> eval), sweeps with claims, dense training."""

from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.plan import SuitePlan, plan_suite, resolve_dataset
from reflowbench.harness.run import SuiteState, prune_and_measure, run_one
from reflowbench.harness.sweep import run_suite

__all__ = ["SuitePlan", "SuiteState", "evaluate", "plan_suite", "prune_and_measure", "resolve_dataset", "run_one", "run_suite"]
