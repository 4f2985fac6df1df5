"""reflowbench: benchmark one-shot pruners with and without BatchNorm recalibration (REFLOW).

Folders by job:
  models/    network definitions and checkpoint loading
  datasets/  embedded digits, CIFAR-10, ImageFolder/ImageNet, disjoint training subsets
  hessian/   gradient matrix and low-rank block empirical Fisher (the curvature math)
  pruners/   Pruner base class + registry, target layers, masks, the pruners themselves
  reflow/    BN recalibration and signal-collapse diagnostics
  bench/     the harness: one run, a sweep, the results schema
  reports/   markdown/HTML report and matplotlib figures
"""

from reflowbench.errors import ReflowbenchError

__version__ = "0.1.0"
__all__ = ["ReflowbenchError", "__version__"]
