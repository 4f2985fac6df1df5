"""The one damping escalation both curvature backends use: a batched Cholesky factorisation that multiplies the
damping of each matrix that is not positive definite by 10 (with a warning) and tries again."""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

MAX_DAMP_ESCALATIONS = 6  # x10 each: at most a million times the asked damping


def escalating_cholesky(
    matrix: torch.Tensor,
    damp: torch.Tensor,
    add_damping: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    warning: Callable[[torch.Tensor, torch.Tensor], str],
    escalations: int = MAX_DAMP_ESCALATIONS,
) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The lower Cholesky factors of ``matrix`` (B, d, d), already damped by ``damp`` (B,). Where one is not positive
    definite, ``add_damping(matrix, extra)`` adds ``extra`` (B,: nine times its damping, zero elsewhere) so its damping
    is ten times larger, after the warning ``warning(failed, damp)`` (failed: (B,) bool); at most ``escalations`` times.
    Returns (the factors, or None when some matrix is still not positive definite; the damped matrices; the dampings)."""
    for attempt in range(escalations + 1):
        factor, info = torch.linalg.cholesky_ex(matrix)
        failed = info != 0
        if not bool(failed.any()):
            return factor, matrix, damp
        if attempt == escalations:
            break
        warnings.warn(warning(failed, damp), RuntimeWarning, stacklevel=3)
        extra = torch.where(failed, damp * 9.0, torch.zeros_like(damp))
        matrix = add_damping(matrix, extra)
        damp = damp + extra
    return None, matrix, damp


def relative_output_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    """max |reference - output| over max |reference| (float): how far two networks' outputs on one batch are apart,
    relative to the reference's largest output."""
    reference, output = reference.detach().float(), output.detach().float()
    return float((reference - output).abs().max()) / (float(reference.abs().max()) + 1e-12)
