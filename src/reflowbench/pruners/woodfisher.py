"""WoodFisher: OBS saliency and the summed single-weight OBS update on the block-diagonal empirical Fisher.

Per step (one step = plain one-shot; R steps = recomputation, gradients re-collected with the mask):
  1. G from the Fisher subset (mask-aware), F_b = lam I + G_b^T G_b / N per block;
  2. saliency rho_q = w_q^2 / (2 [F^-1]_qq), the lowest-rho weights are pruned (globally or per layer);
  3. update dw = -F^-1 v with v_q = w_q / [F^-1]_qq on the newly pruned q (0 elsewhere), per block;
  4. pruned weights set exactly to zero.
Defaults follow the reference ResNet-20 setup: N = 1000 per-sample gradients, whole-layer blocks,
lam = 1e-5, global selection, one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from reflowbench.errors import ConfigError
from reflowbench.hessian import BlockFisher, FisherSpec, GradientMatrix, GradientSpec, collect_gradients, resolve_dtype
from reflowbench.pruners.base import PruneContext, Pruner, register_pruner
from reflowbench.pruners.masks import Masks, masks_from_scores
from reflowbench.schema.targets import TargetSet
from reflowbench.utils.cost import PhaseCost

SCHEDULES = ("geometric", "cubic", "linear")


@dataclass
class WoodFisherOptions:
    num_grads: int = 1000  # N: gradients in the empirical Fisher
    minibatch: int = 1  # m: images averaged per gradient (1 = per-sample)
    block_size: int = 0  # weights per Fisher block within a layer (0 = whole layer)
    damp: float = 1e-5  # lam (absolute), or multiple of the mean diagonal (damp_mode relative)
    damp_mode: str = "absolute"  # absolute or relative
    recompute_steps: int = 1  # R: reach the sparsity in R steps, re-collecting gradients between them
    schedule: str = "geometric"  # sparsity schedule of the R steps: geometric (in density), cubic, linear
    scope: str = "global"  # global selection across all targets, or layer (same sparsity per layer)
    dtype: str = "float32"  # storage dtype of the gradients while collecting (the block Fisher works in float32)
    chunk_images: int = 128  # images per vmap call when collecting gradients
    offload: bool = False  # on CUDA: keep the gradients in host memory


def step_sparsities(target: float, steps: int, schedule: str) -> List[float]:
    """Intermediate sparsities s_1 < ... < s_R = target."""
    if steps < 1:
        raise ConfigError(f"recompute_steps must be >= 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    out = []
    for j in range(1, steps + 1):
        t = j / steps
        if schedule == "geometric":
            out.append(1.0 - (1.0 - target) ** t)
        elif schedule == "cubic":
            out.append(target * (1.0 - (1.0 - t) ** 3))
        else:
            out.append(target * t)
    out[-1] = target
    return out


@register_pruner("woodfisher", "WoodFisher: OBS saliency + summed OBS update, block empirical Fisher")
class WoodFisherPruner(Pruner):
    """WoodFisher (Singh & Alistarh, 2020) on the shared low-rank block Fisher backend."""

    Options = WoodFisherOptions
    needs_gradients = True

    def fisher_images(self) -> int:
        return self.options.num_grads * self.options.minibatch

    def check_options(self) -> None:
        super().check_options()
        self.gradient_spec().validate()
        self.fisher_spec().validate()
        resolve_dtype(self.options.dtype)
        step_sparsities(0.5, self.options.recompute_steps, self.options.schedule)

    def gradient_spec(self) -> GradientSpec:
        o = self.options
        return GradientSpec(num_grads=o.num_grads, minibatch=o.minibatch, chunk_images=o.chunk_images, dtype=o.dtype, offload=o.offload)

    def fisher_spec(self) -> FisherSpec:
        o = self.options
        return FisherSpec(block_size=o.block_size, damp=o.damp, damp_mode=o.damp_mode)

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        masks: Masks = {t.param_name: torch.ones_like(t.weight, dtype=torch.bool) for t in targets}
        schedule = step_sparsities(sparsity, self.options.recompute_steps, self.options.schedule)
        ctx.notes["woodfisher_steps"] = schedule
        for step, step_sparsity in enumerate(schedule):
            gradients = self._gradients(model, targets, masks, ctx, first_step=step == 0)
            with ctx.phase("curvature"):
                fisher = BlockFisher(gradients, self.fisher_spec(), ctx.device, ctx.memory_budget_gb, ctx.log, option_prefix=f"--{self.name}-")
                diag = {layer.name: layer.diag_inverse() for layer in fisher}
            del gradients
            ctx.notes["fisher_blocks"] = fisher.describe()
            with ctx.phase("selection"):
                new_masks = self.select(targets, masks, diag, step_sparsity)
            with ctx.phase("update"):
                self.update(targets, fisher, diag, masks, new_masks)
            masks = new_masks
            del fisher
        return masks

    def prune_with_fisher(self, targets: TargetSet, fisher: BlockFisher, sparsity: float, masks: Masks) -> Masks:
        """One step on a given Fisher: select by OBS saliency, apply the summed OBS update; returns the new masks."""
        diag = {layer.name: layer.diag_inverse() for layer in fisher}
        new_masks = self.select(targets, masks, diag, sparsity)
        self.update(targets, fisher, diag, masks, new_masks)
        return new_masks

    def _gradients(self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext, first_step: bool) -> GradientMatrix:
        """G for the current mask; the dense (first-step) G is shared through the suite cache per seed."""
        spec = self.gradient_spec()
        key = ("dense-gradients", ctx.seed, spec.num_grads, spec.minibatch, spec.dtype, tuple(targets.names), str(ctx.device))
        if first_step and key in ctx.cache:
            gradients, cost = ctx.cache[key]
            ctx.ledger.add("gradients", cost)
            ctx.notes["gradients_reused"] = True
            return gradients
        if first_step:  # drop another seed's cached gradients before allocating new ones (one G alive at a time)
            for stale in [k for k in ctx.cache if isinstance(k, tuple) and k and k[0] == "dense-gradients"]:
                del ctx.cache[stale]
        before = PhaseCost(**vars(ctx.ledger.get("gradients")))
        with ctx.phase("gradients"):
            gradients = collect_gradients(
                model,
                targets,
                ctx.fisher_batches(min(256, spec.images), spec.images),
                spec,
                masks=masks,
                device=ctx.device,
                budget_gb=ctx.memory_budget_gb,
                log=ctx.log,
                progress=ctx.progress,
                option_prefix=f"--{self.name}-",
            )
        if first_step:
            after = ctx.ledger.get("gradients")
            cost = PhaseCost(after.seconds - before.seconds, after.peak_rss_mb, after.peak_cuda_mb)
            ctx.cache[key] = (gradients, cost)
        return gradients

    def select(self, targets: TargetSet, masks: Masks, diag: Dict[str, torch.Tensor], sparsity: float) -> Masks:
        """Prune the lowest rho = w^2 / (2 diag(F^-1)); weights already pruned stay pruned."""
        scores = {}
        for t in targets:
            w = t.weight.detach().reshape(-1).to(diag[t.param_name].dtype)
            rho = w.pow(2) / (2.0 * diag[t.param_name])
            rho = torch.where(masks[t.param_name].reshape(-1).to(rho.device), rho, torch.full_like(rho, -1.0))  # pruned stay pruned
            scores[t.param_name] = rho.view(t.weight.shape)
        return masks_from_scores(targets, scores, sparsity, self.options.scope)

    def update(self, targets: TargetSet, fisher: BlockFisher, diag: Dict[str, torch.Tensor], old: Masks, new: Masks) -> None:
        """w <- (w - F^-1 v) * mask, v_q = w_q / [F^-1]_qq on the newly pruned q, per layer (block-diagonal F)."""
        with torch.no_grad():
            for t in targets:
                layer = fisher[t.param_name]
                newly = (old[t.param_name] & ~new[t.param_name]).reshape(-1).to(layer.device)
                if not bool(newly.any()):
                    continue
                w = t.weight.detach().reshape(-1).to(device=layer.device, dtype=diag[t.param_name].dtype)
                v = torch.where(newly, w / diag[t.param_name], torch.zeros_like(w))
                delta = -layer.inverse_times(v)
                updated = (w + delta) * new[t.param_name].reshape(-1).to(layer.device)
                t.weight.copy_(updated.view(t.weight.shape).to(t.weight.dtype))
