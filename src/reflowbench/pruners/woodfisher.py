"""WoodFisher: OBS saliency and the summed single-weight OBS update on the block-diagonal empirical Fisher.

Per step of the :class:`~reflowbench.pruners.hessian_base.HessianPruner` template (one step = plain
one-shot; R steps = recomputation, gradients re-collected with the mask):
  1. G from the Fisher subset (mask-aware), F_b = lam I + G_b^T G_b / N per block (shared per seed);
  2. saliency rho_q = w_q^2 / (2 [F^-1]_qq), the lowest-rho weights are pruned (globally or per layer);
  3. update (``obs-sum`` by default): dw = -F^-1 v with v_q = w_q / [F^-1]_qq on the newly pruned q, per block;
  4. pruned weights set exactly to zero.
Defaults follow the reference ResNet-20 setup: N = 1000 per-sample gradients, whole-layer blocks,
lam = 1e-5, global selection, one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Set

import torch
from torch import nn

from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError
from reflowbench.hessian import BlockFisher
from reflowbench.pruners.base import PruneContext, register_pruner
from reflowbench.pruners.channels import channel_masks, lowest_channels, summed_scores
from reflowbench.pruners.hessian_base import HessianOptions, HessianPruner, step_sparsities
from reflowbench.pruners.masks import Masks, masks_from_scores
from reflowbench.pruners.nm import grouped, joint_obs_keep, nm_masks_from_scores
from reflowbench.pruners.updates import apply_update
from reflowbench.schema.targets import TargetSet

__all__ = ["WoodFisherOptions", "WoodFisherPruner", "step_sparsities"]


NM_SELECTIONS = ("single", "joint")


@dataclass
class WoodFisherOptions(HessianOptions):
    """WoodFisher keeps every default of :class:`HessianOptions` (update: obs-sum)."""

    nm_selection: str = "single"  # --pattern N:M only: single (the N highest single-weight saliencies per group) or joint (the N-of-M subset with the lowest joint OBS cost, enumerated)


@register_pruner("woodfisher", "WoodFisher: OBS saliency + summed OBS update, block empirical Fisher")
class WoodFisherPruner(HessianPruner):
    """WoodFisher (Singh & Alistarh, 2020) on the shared low-rank block Fisher backend."""

    Options = WoodFisherOptions
    REFERENCE = {
        **HessianPruner.REFERENCE,
        "num_grads": "REFERENCES.md §2(h), ResNet-20 one-shot sweep: N = 1000",
        "minibatch": "REFERENCES.md §2(h): mini-batch 1 (per-sample gradients; the sweep also runs 50)",
        "block_size": "REFERENCES.md §2(h): one block per layer, no fittable cap (largest 36,864)",
        "damp": "REFERENCES.md §2(a): every published script uses 1e-5",
        "damp_mode": "REFERENCES.md §2(a): an absolute lam",
        "scope": "REFERENCES.md §2(c): global (`--woodburry-joint-sparsify`, every script but the ResNet-50 LOBS sweep)",
        "update": "REFERENCES.md §2(d): the summed single-weight OBS updates",
    }

    PATTERNS = ("unstructured", "n:m", "channels")

    def factorises(self) -> bool:
        """Always: WoodFisher's selection reads [F^-1]_qq whatever the update."""
        return True

    def check_options(self) -> None:
        super().check_options()
        if self.options.nm_selection not in NM_SELECTIONS:
            raise ConfigError(f"--{self.name}-nm-selection must be one of {NM_SELECTIONS}, got {self.options.nm_selection!r}")

    def unused_options(self) -> Set[str]:
        return super().unused_options() | {"nm_selection"}  # read only under an N:M --pattern

    def pattern_refusal(self, pattern: SparsityPattern) -> Optional[str]:
        if pattern.kind in ("n:m", "channels") and self.options.recompute_steps != 1:
            return f"reaches {'N:M' if pattern.kind == 'n:m' else 'channel sparsity'} in one step only (--{self.name}-recompute-steps 1)"
        block = self.options.block_size
        if pattern.kind == "n:m" and self.options.nm_selection == "joint" and self.options.layer_groups != 1:
            return f"chooses N:M jointly only on the one-pass Fisher (--{self.name}-layer-groups 1)"
        if pattern.kind == "n:m" and self.options.nm_selection == "joint" and block and block % pattern.m:
            return f"chooses N:M jointly only with Fisher blocks that split into groups of {pattern.m} (--{self.name}-block-size {block})"
        return super().pattern_refusal(pattern)

    def prepare(self, fisher: BlockFisher) -> None:
        """diag(F^-1) of every layer, computed with the curvature (and kept with a shared Fisher)."""
        fisher.diag_inverse()

    def select(self, model: nn.Module, targets: TargetSet, fisher: BlockFisher, masks: Masks, sparsity: float, ctx: PruneContext) -> Masks:
        """Prune the lowest rho = w^2 / (2 diag(F^-1)); weights already pruned stay pruned."""
        scores = {}
        for t, diag in zip(targets, fisher.split(fisher.diag_inverse())):
            w = t.weight.detach().reshape(-1).to(diag.dtype)
            rho = w.pow(2) / (2.0 * diag)
            rho = torch.where(masks[t.param_name].reshape(-1).to(rho.device), rho, torch.full_like(rho, -1.0))  # pruned stay pruned
            scores[t.param_name] = rho.view(t.weight.shape)
        if ctx is not None and ctx.pattern.kind == "channels":  # a channel's Fisher score: the summed OBS costs of its weights
            channel_scores = summed_scores(ctx.channel_groups, targets, scores)
            return channel_masks(targets, ctx.channel_groups, lowest_channels(channel_scores, ctx.channel_groups, sparsity))
        if ctx is not None and ctx.pattern.kind == "n:m" and self.options.nm_selection == "joint":
            return self._joint_nm_masks(targets, fisher, ctx.pattern)
        if ctx is not None and ctx.pattern.kind == "n:m":  # the N highest-saliency weights of every group (single-weight saliency)
            return nm_masks_from_scores(targets, scores, ctx.pattern)
        return masks_from_scores(targets, scores, sparsity, self.options.scope)

    def _joint_nm_masks(self, targets: TargetSet, fisher: BlockFisher, pattern: SparsityPattern) -> Masks:
        """Per group of every grouped target, the N-of-M subset with the lowest joint OBS cost (pruners/nm.py); the
        targets that cannot hold the pattern are kept whole."""
        masks: Masks = {}
        for t in targets:
            if not grouped(t, pattern.m):
                masks[t.param_name] = torch.ones_like(t.weight, dtype=torch.bool)
                continue
            blocks = fisher[t.param_name].group_inverse(pattern.m)
            weights = t.weight.detach().reshape(-1, pattern.m).to(device=blocks.device, dtype=blocks.dtype)
            masks[t.param_name] = joint_obs_keep(weights, blocks, pattern.n).reshape(t.weight.shape).to(t.weight.device)
        return masks

    def prune_with_fisher(self, targets: TargetSet, fisher: BlockFisher, sparsity: float, masks: Masks) -> Masks:
        """One step on a given Fisher: select by OBS saliency, apply the configured update; returns the new masks."""
        new_masks = self.select(None, targets, fisher, masks, sparsity, None)  # type: ignore[arg-type]
        apply_update(self.options.update, targets, fisher, masks, new_masks)
        return new_masks
