"""reflowbench: benchmark one-shot pruners with and without BatchNorm recalibration (REFLOW).

Folders by job (docs/architecture.md has the layers they import along):
  cli/             the `reflowbench` command: parser (flags from the settings dataclasses), command bodies, entry
  harness/         one run (prune -> evaluate -> REFLOW -> evaluate), sweeps, named suites, tuning, executors, training
  pruners/         Pruner base class + registry, masks, the pruners themselves (Fisher and layer-wise bases)
  datasets/        embedded digits, CIFAR-10, ImageFolder/ImageNet, disjoint training subsets
  reports/         markdown/HTML reports, figures, the regression gate
  hessian/         gradient matrix and the low-rank empirical Fisher (the curvature math)
  reconstruction/  layer inputs, H = X X^T / n and the exact OBS solvers of the layer-wise pruners
  models/          network definitions and checkpoint loading
  reflow/          BN recalibration and signal-collapse diagnostics
  config.py, suites.py, schema/, utils/, errors.py: settings, named suites, shared data types, helpers, error types
"""

from reflowbench.errors import ReflowbenchError

__version__ = "0.1.0"
__all__ = ["ReflowbenchError", "__version__"]
