"""Fold every BatchNorm into the convolution before it: the form a deployed network has.

W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta, with the BN's
stored (eval-mode) statistics (``../shared/REFERENCES.md`` 6b). The folding itself is torch.fx's
``experimental.optimization.fuse`` (a maintained graph pass of PyTorch, chosen over a hand-written walk of the module
tree so that any traceable network folds, torchvision's included): the network is traced, each conv -> BN pair whose
conv output feeds only that BN becomes one convolution keeping the conv's module name, and the BN disappears. The
folded network computes the same function (float rounding), has no running statistics left, and its weights are the
scaled ones a deployer holds: pruning it ranks and removes those scaled weights (the magnitude order changes with
gamma / sqrt(var + eps)).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from reflowbench.errors import ConfigError


def fold_batchnorm(model: nn.Module, model_name: str) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm folded into its convolution; a BN that follows no
    convolution (or whose convolution's output is used elsewhere too) is refused, naming it."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(model.eval(), inplace=False)
    except Exception as exc:  # torch.fx could not trace the forward (data-dependent control flow, say)
        raise ConfigError(f"--fold-bn: torch.fx cannot trace {model_name} ({type(exc).__name__}: {exc}); prune it without --fold-bn") from None
    left = [name for name, module in folded.named_modules() if isinstance(module, _BatchNorm)]
    if left:
        raise ConfigError(
            f"--fold-bn: {len(left)} BatchNorm layer(s) of {model_name} follow no convolution they can fold into ({', '.join(left[:3])}); prune it without --fold-bn"
        )
    return folded.eval()
