"""REFLOW (BatchNorm recalibration) and signal-collapse diagnostics."""

from reflowbench.reflow.diagnostics import bn_output_variances, summarize_ratios, variance_ratios
from reflowbench.reflow.recalibrate import MODES, RecalibrationHandle, batchnorm_layers, recalibrate_bn, require_batchnorm

__all__ = [
    "MODES",
    "RecalibrationHandle",
    "batchnorm_layers",
    "bn_output_variances",
    "recalibrate_bn",
    "require_batchnorm",
    "summarize_ratios",
    "variance_ratios",
]
