"""The base of the layer-wise reconstruction pruners (ExactOBS/OBC, SparseGPT, Wanda): per target layer, H = X X^T / n
from the layer's inputs on the pruner's own training images (no gradients, no labels), then a per-layer solve.

The harness's contract is kept: exactly round(s * p) weights pruned over all targets (``sparsity_rule`` global-*) or
per layer (``uniform``), pruned weights exactly zero, the kept ones re-fitted in place.

    sparsity_rule  each layer's share of the pruned weights:
                   uniform           every layer at s (the published LLM setting of SparseGPT and Wanda);
                   global-magnitude  each layer at the sparsity one global magnitude threshold gives it (MP's allocation);
                   global-obs        one threshold on each weight's OBS error w^2 / [H^-1]_jj relative to its layer's
                                     dense output energy tr(W H W^T) (suite choice: the errors of different layers are
                                     made comparable by that normalisation), from the dense network's H
    mode           sequential: each layer's H from the network pruned so far (the default of these methods);
                   parallel: every H from the dense network, in one pass
    target         (sequential mode) what a layer's pruned weights reproduce: pruned-inputs, the dense weights' outputs
                   on the inputs of the network pruned so far, |(W - W_hat) X_hat|^2 (SparseGPT, OBC); dense-outputs, the
                   dense layer's outputs on the dense network's inputs, |W X - W_hat X_hat|^2, which also undoes the
                   change of the inputs (each row first moved to its unconstrained optimum H_hat^-1 C w, C = X_hat X^T / n,
                   then pruned on H_hat as usual: the two objectives differ by a constant)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from reflowbench.config import SparsityPattern
from reflowbench.errors import ConfigError
from reflowbench.pruners.base import PruneContext, Pruner, WorkingSet
from reflowbench.pruners.masks import Masks, masks_from_scores, num_to_prune
from reflowbench.pruners.nm import grouped
from reflowbench.reconstruction import DenseInputs, InputHessian, LayerGeometry, collect_hessians, damped
from reflowbench.reconstruction.obs import REFIT_PEAK_BYTES
from reflowbench.reflow.staged import Visit, staged_walk
from reflowbench.schema.targets import Target, TargetSet

SPARSITY_RULES = ("uniform", "global-magnitude", "global-obs")
MODES = ("sequential", "parallel")
TARGETS = ("pruned-inputs", "dense-outputs")
SEARCHED = (  # the source of a default a ResNet-20 settings search chose; .format(method name)
    "suite choice: the best cell of the ResNet-20 settings search (reports/cifar10-resnet20/tuning/resnet20_{}.md); the published value is the reference row's"
)


@dataclass
class LayerwiseOptions:
    num_images: int = 128  # calibration images from the pruner's own training subset (SparseGPT: 128 samples)
    batch_size: int = 64  # images per forward pass while collecting inputs (how the work is split: same result)
    damp: float = 0.01  # relative damping: lam * mean(diag H) added to H (SparseGPT: 1 %)
    mode: str = "sequential"  # sequential (inputs from the network pruned so far) or parallel (dense inputs)
    sparsity_rule: str = "uniform"  # each layer's sparsity: uniform, global-magnitude, global-obs
    target: str = "pruned-inputs"  # sequential mode: reproduce the dense weights on the pruned inputs, or the dense outputs (dense-outputs)


class LayerwisePruner(Pruner):
    """Collects each layer's H (sequentially or in parallel) and calls :meth:`prune_layer` per target."""

    Options = LayerwiseOptions
    DEFAULTS_PUBLISHED = False  # each pruner's defaults: its ResNet-20 settings search's choice (SEARCHED)
    KEY_NEUTRAL = ("batch_size",)
    REFERENCE: ClassVar[Dict[str, str]] = {
        "num_images": "REFERENCES.md §6 (SparseGPT): 128 calibration samples by default",
        "batch_size": "suite choice: images per forward pass (how the work is split, same result up to float rounding)",
        "damp": "REFERENCES.md §6 (SparseGPT): percdamp 0.01 of the mean diagonal",
        "mode": "REFERENCES.md §6 (SparseGPT): layers pruned in sequence, each on the outputs of the pruned layers before it",
        "sparsity_rule": "REFERENCES.md §6 (SparseGPT, Wanda): the same sparsity in every layer",
        "target": "REFERENCES.md §6 (SparseGPT, OBC): the reconstruction loss |W X - W_hat X|^2 on the layer's (current) inputs",
    }
    # The fair-settings grid ``reflowbench tune`` searches (a subclass adds its own structural axes).
    TUNING_GRID: ClassVar[Dict[str, List[Dict[str, object]]]] = {
        "damp": [{"damp": 0.01}, {"damp": 0.1}],
        "num_images": [{"num_images": 128}, {"num_images": 512}],
        "mode": [{"mode": "sequential"}, {"mode": "parallel"}],
        "sparsity_rule": [{"sparsity_rule": "uniform"}, {"sparsity_rule": "global-magnitude"}, {"sparsity_rule": "global-obs"}],
    }
    uses_damping: ClassVar[bool] = True

    def check_options(self) -> None:
        o = self.options
        rules = (
            ("num_images", isinstance(o.num_images, int) and o.num_images >= 1, "an integer >= 1"),
            ("batch_size", isinstance(o.batch_size, int) and o.batch_size >= 1, "an integer >= 1"),
            ("damp", math.isfinite(o.damp) and o.damp > 0, "a positive number (a fraction of the mean diagonal of H)"),
            ("mode", o.mode in MODES, f"one of {MODES}"),
            ("sparsity_rule", o.sparsity_rule in SPARSITY_RULES, f"one of {SPARSITY_RULES}"),
            ("target", o.target in TARGETS, f"one of {TARGETS}"),
        )
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{self.flag(name)} must be {rule}, got {getattr(o, name)!r}")

    def fisher_images(self) -> int:
        return self.options.num_images

    def unused_options(self) -> Set[str]:
        unused = set() if self.uses_damping else {"damp", "target"}
        return unused | ({"target"} if self.options.mode == "parallel" else set())

    def dense_target(self) -> bool:
        """Whether each layer reproduces the dense network's outputs (``target`` dense-outputs, sequential mode)."""
        return self.options.mode == "sequential" and self.options.target == "dense-outputs" and self.uses_damping

    def mask_scope(self) -> str:
        return "layer" if self.options.sparsity_rule == "uniform" else "global"

    def refits_rows(self) -> bool:
        """Whether the pruner ends with the exact per-row re-fit (``refit_rows``: its systems count in the working set)."""
        return True

    def needs_full_hessian(self) -> bool:
        """False where the pruner reads only diag(H) (Wanda): the layers then accumulate squared norms only."""
        return True

    # --- one layer ---------------------------------------------------------------------------------------------

    def prune_layer(self, name: str, rows: torch.Tensor, hessian: InputHessian, count: int, ctx: PruneContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prune ``count`` of the weight rows ``rows`` (G, R, d) float64 of layer ``name`` under ``hessian``: (new rows
        (G, R, d) float64, keep mask (G, R, d))."""
        raise NotImplementedError

    def prune_layer_nm(self, name: str, rows: torch.Tensor, hessian: InputHessian, pattern: SparsityPattern) -> Tuple[torch.Tensor, torch.Tensor]:
        """Under an N:M ``pattern``: (new rows, keep mask) of layer ``name`` with exactly N of every M consecutive columns
        of each row kept (the layers that declare N:M override it)."""
        raise NotImplementedError

    def _rows_to_fit(self, target: Target, geometry: LayerGeometry, hessian: InputHessian) -> torch.Tensor:
        """The rows the layer's solve starts from: the weights (G, R, d) float64, or with the dense-outputs target their
        unconstrained optimum on the current inputs, H_hat^-1 C w (H_hat damped)."""
        rows = geometry.rows_of(target.weight.detach()).to(hessian.sum.device, torch.float64)
        cross = hessian.cross()
        if cross is None:
            return rows
        _, lower = damped(hessian.matrix(), self.options.damp, target.param_name)
        return torch.cholesky_solve(torch.bmm(cross, rows.transpose(1, 2)), lower).transpose(1, 2)

    # --- the whole network ----------------------------------------------------------------------------------------

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        modules = {t.param_name: model.get_submodule(t.module_name) for t in targets}
        geometries = {name: LayerGeometry.of(module) for name, module in modules.items()}
        self.check_memory(geometries, ctx)
        images = self._calibration_images(ctx)
        dense: Optional[Dict[str, InputHessian]] = None
        with ctx.phase("inputs"):
            if self.options.mode == "parallel" or self.options.sparsity_rule == "global-obs":
                dense = collect_hessians(model, modules, images, ctx.device, full=self.needs_full_hessian() or self.options.sparsity_rule == "global-obs")
        nm = ctx.pattern.kind == "n:m"
        with ctx.phase("selection"):
            counts = {t.param_name: 0 for t in targets} if nm else self.layer_counts(targets, sparsity, dense)
        if self.options.mode == "sequential":
            dense = None  # each layer's H is collected again on the network pruned so far
        reference = None
        if self.dense_target():  # the dense network's inputs to every layer, beside the network being pruned
            with ctx.phase("inputs"):
                dense_copy = copy.deepcopy(model)
                reference = DenseInputs(
                    dense_copy, {t.param_name: dense_copy.get_submodule(t.module_name) for t in targets}, images, self.dense_input_bytes(ctx)
                )
        masks: Masks = {}
        short: Dict[str, List[int]] = {}  # layers with fewer calibration samples than columns: [samples, columns]
        staged = None
        if dense is None:  # sequential: one forward in stages where it applies (the same inputs, bit for bit)
            with ctx.phase("inputs"):
                staged = staged_walk(model, images, [t.module_name for t in targets], "input", cache_bytes=self.dense_input_bytes(ctx))
            ctx.notes["layerwise_staged"] = staged is not None
        for t in targets:
            if dense is not None:
                hessian = dense.pop(t.param_name)
            else:
                with ctx.phase("inputs"):
                    pair = reference(t.param_name) if reference is not None else None
                    if staged is not None:
                        hessian = self._staged_hessian(t, modules[t.param_name], next(staged), images, ctx.device, pair)
                    else:
                        one = {t.param_name: modules[t.param_name]}
                        hessian = collect_hessians(model, one, images, ctx.device, stop_early=True, full=self.needs_full_hessian(), dense=pair)[t.param_name]
            if self.needs_full_hessian() and hessian.count < geometries[t.param_name].columns:
                short[t.param_name] = [hessian.count, geometries[t.param_name].columns]
            with ctx.phase("solve"):
                start = self._rows_to_fit(t, geometries[t.param_name], hessian)
                if nm and grouped(t, ctx.pattern.m) and geometries[t.param_name].groups == 1:
                    rows, keep = self.prune_layer_nm(t.param_name, start, hessian, ctx.pattern)
                elif nm:  # a layer that cannot hold the pattern stays dense (listed in the run's notes by the harness)
                    rows, keep = start, torch.ones_like(start, dtype=torch.bool)
                else:
                    rows, keep = self.prune_layer(t.param_name, start, hessian, counts[t.param_name], ctx)
                with torch.no_grad():
                    t.weight.copy_((rows * keep).reshape(t.weight.shape).to(t.weight.dtype))
                masks[t.param_name] = keep.reshape(t.weight.shape).to(t.weight.device)
            del hessian
        ctx.notes["layerwise"] = {
            "images": sum(len(batch) for batch in images),
            "mode": self.options.mode,
            "sparsity_rule": self.options.sparsity_rule,
            "layer_sparsity": {t.param_name: round(counts[t.param_name] / t.numel, 6) for t in targets},
        }
        if short:
            ctx.notes["layerwise"]["underdetermined"] = short
            if ctx.log is not None:
                ctx.log(underdetermined_warning(self.name, self.flag("num-images"), self.options.num_images, short))
        return masks

    def _staged_hessian(
        self,
        target: Target,
        module: nn.Module,
        item: Tuple[str, Visit],
        images: List[torch.Tensor],
        device: torch.device,
        pair: Optional[Callable[[int, torch.Tensor], Dict[str, torch.Tensor]]],
    ) -> InputHessian:
        """The layer's H from the staged forward's next item (its inputs on the network pruned so far, batch by batch),
        with the dense network's inputs beside them for the dense-outputs target (as :func:`collect_hessians`)."""
        name, visit = item
        assert name == target.module_name
        hessian = InputHessian(module, device, self.needs_full_hessian())
        visit(lambda index, inputs: hessian.add(inputs, pair(index, images[index]).get(target.param_name) if pair is not None else None))
        return hessian

    def working_set(self, targets: TargetSet, activation_bytes: int, budget_bytes: int = 0) -> WorkingSet:
        """The largest layer's H and its factors (about 4 float64 copies of d^2, d a row's inputs), every layer's H at once
        in parallel mode (Wanda: the diagonals only), and with the dense-outputs target the dense network's recorded inputs."""
        square = [t.weight[0].numel() ** (2 if self.needs_full_hessian() else 1) * 8 for t in targets]
        held = sum(square) if self.options.mode == "parallel" else 0
        inputs = self.options.num_images * activation_bytes // 4 if self.dense_target() else 0  # the dense network's recorded inputs, roughly,
        if budget_bytes > 0:  # kept up to a quarter of the budget, recomputed layer by layer above it (dense_input_bytes)
            inputs = min(inputs, budget_bytes // 4)
        widest_refit = max(t.weight.shape[0] * t.weight[0].numel() ** 2 * 8 for t in targets)  # a chunk never holds more than one layer's rows
        refit = min(REFIT_PEAK_BYTES, widest_refit) if self.refits_rows() else 0
        return WorkingSet(
            4 * max(square) + held + inputs + refit,
            "the largest layer's input Hessian and factors"
            + (", every layer's H (parallel mode)" if held else "")
            + (", the exact re-fit's systems" if refit else ""),
            f"{self.flag('mode')} sequential, fewer {self.flag('num-images')}, or exclude the largest layer",
        )

    def forward_passes(self, targets: TargetSet) -> Tuple[float, float]:
        """Over the calibration images: parallel mode one pass; sequential one pass in stages (a plan: where the staged
        pass does not apply, a pass per layer cut short at it, about len(targets) / 2), plus the dense network's pass
        for the dense-outputs target and the global-obs rule."""
        passes = 1.0 + float(self.dense_target() or (self.options.mode == "sequential" and self.options.sparsity_rule == "global-obs"))
        return self.options.num_images * passes, 0.0

    def check_memory(self, geometries: Dict[str, LayerGeometry], ctx: PruneContext) -> None:
        """Refuse, before any work, settings whose H matrices exceed ``--memory-budget-gb``: the largest layer's H and its
        factors (about 4 float64 copies of G d^2; Wanda keeps only the diagonal), and in parallel mode every layer's H at
        once. The message names the layer and what lowers it."""
        per_layer = {name: g.groups * g.columns * (g.columns if self.needs_full_hessian() else 1) * 8 for name, g in geometries.items()}
        largest = max(per_layer, key=per_layer.get)
        working = 4 * per_layer[largest]
        held = sum(per_layer.values()) if self.options.mode == "parallel" else 0
        budget = ctx.memory_budget_gb * 2**30
        if working + held > budget:
            g = geometries[largest]
            raise ConfigError(
                f"{self.name}: the input Hessians need about {(working + held) / 2**30:.1f} GiB, over the {ctx.memory_budget_gb:g} GiB budget "
                f"(largest: {largest}, {g.groups} x {g.columns} x {g.columns} in float64"
                + (", and every layer's H at once in parallel mode" if held else "")
                + "): exclude that layer from the targets (e.g. --exclude-classifier), use "
                + (f"{self.flag('mode')} sequential, " if held else "")
                + "Wanda, or raise --memory-budget-gb"
            )

    @staticmethod
    def dense_input_bytes(ctx: PruneContext) -> int:
        """How much of the memory budget the dense network's recorded layer inputs may take (a quarter): above it they
        are recomputed layer by layer (the same result, one more forward pass per layer)."""
        return int(ctx.memory_budget_gb * 2**30 / 4)

    def _calibration_images(self, ctx: PruneContext) -> List[torch.Tensor]:
        """The pruner's ``num_images`` training images (its own subset, fixed order, no augmentation), on the device."""
        return [images.to(ctx.device) for images, _ in ctx.fisher_batches(self.options.batch_size, self.options.num_images)]

    def layer_counts(self, targets: TargetSet, sparsity: float, dense: Optional[Dict[str, InputHessian]]) -> Dict[str, int]:
        """Weights to prune per layer under ``sparsity_rule``; they sum to round(s * p) for the global rules."""
        rule = self.options.sparsity_rule
        if rule == "uniform":
            return {t.param_name: num_to_prune(t.numel, sparsity) for t in targets}
        if rule == "global-magnitude":
            scores = {t.param_name: t.weight.detach().abs() for t in targets}
        else:
            assert dense is not None
            scores = {t.param_name: self._relative_obs_error(t, dense[t.param_name]) for t in targets}
        masks = masks_from_scores(targets, scores, sparsity, "global")
        return {name: int((~keep).sum()) for name, keep in masks.items()}

    def _relative_obs_error(self, target: Target, hessian: InputHessian) -> torch.Tensor:
        """w^2 / [H^-1]_jj of every weight over the layer's dense output energy sum_rows w^T H w, shaped like the weight."""
        geometry = hessian.geometry
        matrix, lower = damped(hessian.matrix(), self.options.damp, target.param_name)
        inverse_diag = torch.cholesky_inverse(lower).diagonal(dim1=1, dim2=2)  # (G, d)
        rows = geometry.rows_of(target.weight.detach()).to(torch.float64).to(matrix.device)
        energy = torch.einsum("grd,gde,gre->", rows, hessian.matrix(), rows).clamp_min(torch.finfo(torch.float64).tiny)
        return (rows.pow(2) / inverse_diag.unsqueeze(1) / energy).reshape(target.weight.shape)


def underdetermined_warning(method: str, flag: str, images: int, short: Dict[str, List[int]]) -> str:
    """One line naming the layers whose H had fewer calibration samples (images x output positions) than columns
    (``short``: layer -> [samples, columns]): their H is singular before damping, so the weight updates reproduce the
    calibration images' outputs along directions no other image constrains; and the fix."""
    worst = min(short, key=lambda name: short[name][0] / short[name][1])
    samples, columns = short[worst]
    need = math.ceil(images * max(c / n for n, c in short.values()))
    return (
        f"{method}: {len(short)} layer(s) saw fewer calibration samples (images x positions) than their H has columns "
        f"(fewest: {worst}, {samples:,} < {columns:,}): H is singular there before damping and the weight updates fit "
        f"those {images} images only; {flag} {need} or more gives every layer a full-rank H"
    )
