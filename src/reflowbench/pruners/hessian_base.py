"""The base every Hessian-based pruner shares: gradients, the curvature (the block Fisher by default,
the whole-network Fisher where a subclass's ``build_curvature`` says so), recomputation steps, the
weight update, and the bookkeeping of each phase's cost.

One template :meth:`HessianPruner.prune` runs, for each of the R steps of the schedule:

  1. the curvature at the current weights and mask, from :class:`~reflowbench.pruners.curvature_source.CurvatureSource`
     (the dense one of a seed is built once per sweep and shared by all its sparsities, its measured gradient and
     curvature cost charged to every run that uses it; streamed in layer groups or sharded across ranks where asked);
  2. ``select``: the pruner's own choice of the new keep-mask (the one method a subclass writes);
  3. the update of the kept weights, chosen by the ``update`` option (:mod:`.updates`):
     ``none``, ``obs-sum`` (WoodFisher's summed single-weight OBS updates) or ``joint`` (the exact
     multi-weight OBS update under the curvature: per block, CBS-U; over the whole network, CHITA's backsolve).

With several steps, each update is checked before the next step collects gradients at its weights: when the
loss or the gradient on a probe batch of Fisher images is no longer finite (the update made the model
diverge), that step's update is rejected (its kept weights stay as they were, the newly pruned ones go to
zero: update ``none`` for that step), a warning is logged and the step is listed in the run's notes
(``<pruner>_rejected_updates``). Without this guard CHITA++ at 0.95 on ResNet-20 stops mid-way. With
``update_guard`` ``loss`` (not part of any published method) a step's update is also undone when the probe loss is
higher with it than without it (both losses listed in ``<pruner>_probe_losses``): a measured-loss check, as CBS makes
between its candidates, two forward passes of the probe batch a step.

When a later step's curvature cannot be formed at all (the weights diverged although the loss stayed finite: on
ResNet-56, CHITA++ at 0.95 reaches gradients whose Gram matrix is so large that no damping survives float32 rounding
in its last stage), the step raises
:class:`~reflowbench.errors.DivergedError`: the method failed on this run. A sweep records the run as failed, with the
message, and goes on; a failure in the first step (the dense model's curvature) stops the sweep as before.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Set, Tuple

import torch
from torch import nn

from reflowbench.errors import ConfigError, DivergedError, FisherError
from reflowbench.hessian import BlockFisher, Curvature, FisherSpec, GradientMatrix, GradientSpec, batch_loss, probe_loss
from reflowbench.hessian.block_fisher import DAMP_MODES
from reflowbench.hessian.distributed_fisher import is_distributed
from reflowbench.hessian.gradients import ENGINES
from reflowbench.hessian.memory import DTYPES
from reflowbench.pruners.base import PruneContext, Pruner, WorkingSet
from reflowbench.pruners.curvature_source import CurvatureSource
from reflowbench.pruners.masks import Masks
from reflowbench.pruners.updates import UPDATES, apply_update, flat_masks, flat_weights, write_weights
from reflowbench.schema.results import RESULT_NEUTRAL_OPTIONS
from reflowbench.schema.targets import TargetSet
from reflowbench.utils.cost import PhaseCost

SCHEDULES = ("geometric", "cubic", "linear")
UPDATE_GUARDS = ("finite", "loss")  # what makes a multi-step run undo a step's update (see the module)


@dataclass
class HessianOptions:
    """Options every Hessian pruner has (a subclass's Options dataclass inherits them and may change defaults)."""

    num_grads: int = 1000  # N: gradients in the empirical Fisher
    minibatch: int = 1  # m: images averaged per gradient (1 = per-sample)
    block_size: int = 0  # weights per Fisher block within a layer (0 = whole layer)
    damp: float = 1e-5  # lam (absolute), or multiple of the mean diagonal (damp_mode relative)
    damp_mode: str = "absolute"  # absolute or relative
    recompute_steps: int = 1  # R: reach the sparsity in R steps, re-collecting gradients between them
    update_guard: str = "finite"  # with R > 1, undo a step's update when it makes the loss on 256 Fisher images non-finite (finite), or also when it raises that loss above the step's loss without the update (loss: two forward passes a step; not in the published methods)
    schedule: str = "geometric"  # sparsity schedule of the R steps: geometric (in density), cubic, linear
    scope: str = "global"  # global selection across all targets, or layer (same sparsity per layer)
    update: str = "obs-sum"  # update of the kept weights: none, obs-sum (summed single-weight OBS), joint (exact multi-weight OBS per block)
    dtype: str = "float32"  # storage dtype of G (bfloat16/float16 halve its memory; products upcast column chunks to float32)
    chunk_images: int = 128  # images per vmap call when collecting gradients
    offload: bool = False  # on CUDA: keep the gradients in host memory
    grad_engine: str = "auto"  # how per-group gradients are computed: vmap (torch.func), hooks (one batched backward, per-group weight products), auto (hooks where the model allows: faster, and no torch._dynamo import, ~160 MiB)
    layer_groups: int = 1  # 1: G of all layers at once; K > 1: layer-group streaming, G of one of K groups of layers at a time (about K x less memory; every Fisher operation re-collects the gradients group by group: WoodFisher makes 2 gradient passes instead of 1, and no dense Fisher is shared between sparsities); 0: the fewest groups whose G fits in half of --memory-budget-gb


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


class HessianPruner(Pruner):
    """Base of the pruners that use the block empirical Fisher. Subclasses set ``Options`` (a subclass
    of :class:`HessianOptions`) and implement :meth:`select`."""

    Options = HessianOptions
    needs_gradients = True
    KEY_NEUTRAL = RESULT_NEUTRAL_OPTIONS  # streaming and the gradient engine: a finished run stays finished whichever was used
    # The fair-settings grid searched by ``reflowbench tune``: each axis lists option sets, a cell merges one
    # set per axis (the product of the axes is searched). Damping and its mode move together.
    TUNING_GRID: ClassVar[Dict[str, List[Dict[str, Any]]]] = {
        "damping": [
            {"damp": 1e-5, "damp_mode": "absolute"},
            {"damp": 1e-4, "damp_mode": "absolute"},
            {"damp": 1e-3, "damp_mode": "absolute"},
            {"damp": 1e-2, "damp_mode": "relative"},
            {"damp": 1e-1, "damp_mode": "relative"},
        ],
        "block_size": [{"block_size": 0}, {"block_size": 2000}, {"block_size": 128}],
        "num_grads": [{"num_grads": 1000}, {"num_grads": 250}],
    }

    # Sources of the options no published method sets (a subclass adds its own, see ``Pruner.REFERENCE``).
    REFERENCE: ClassVar[Dict[str, str]] = {
        "recompute_steps": "one-shot: one step (every published one-shot script)",
        "dtype": "suite choice: float32 G, as the published code stores it",
        "chunk_images": "suite choice: images per batched gradient call (how the work is split, same result up to float rounding)",
        "offload": "suite choice: where G is kept on CUDA (same result)",
    }

    def fisher_images(self) -> int:
        return self.options.num_grads * self.options.minibatch

    def working_set(self, targets: TargetSet, activation_bytes: int, budget_bytes: int = 0) -> WorkingSet:
        """G (N x p in its dtype, padded to the blocks; the largest layer group's rows when streamed, the groups chosen
        as the pruner chooses them: :func:`~reflowbench.hessian.layer_group_streaming.choose_layer_groups`), the block
        Fisher's packed factors of those layers when the pruner factorises the blocks (per block of B columns:
        side = min(N, B), side^2 / 2 floats), else their largest restricted solve's temporaries, and one gradient
        call's temporaries."""
        from reflowbench.hessian.block_fisher import packed_factor_bytes, restricted_solve_bytes
        from reflowbench.hessian.gradients import chunk_gradient_bytes, layer_gradient_bytes
        from reflowbench.hessian.layer_group_streaming import choose_layer_groups

        o = self.options
        spec = self.gradient_spec()
        fisher = self.fisher_spec()
        rows = {t.param_name: layer_gradient_bytes(t.numel, spec) for t in targets}
        numel = {t.param_name: t.numel for t in targets}
        groups = choose_layer_groups(rows, o.layer_groups, budget_bytes) if self.streams() else [list(rows)]

        def group_bytes(names: List[str]) -> int:
            if self.factorises():  # as LayerFisher.factor_bytes counts them
                solver = sum(packed_factor_bytes(numel[n], o.num_grads, fisher) for n in names)
            else:
                solver = max((restricted_solve_bytes(numel[n], o.num_grads, fisher) for n in names), default=0)
            return sum(rows[n] for n in names) + solver

        total = max((group_bytes(names) for names in groups), default=0) + chunk_gradient_bytes(targets, spec, activation_bytes)
        return WorkingSet(
            total,
            f"G ({o.num_grads:,} x {targets.num_weights:,} in {o.dtype}{f', one of {len(groups)} layer groups' if len(groups) > 1 else ''}) and "
            + ("the block Fisher factors" if self.factorises() else "a restricted solve's temporaries"),
            self._memory_knobs(),
        )

    def factorises(self) -> bool:
        """Whether a run factorises the block Fisher (and keeps every block's factor): the ``obs-sum`` update reads
        F^-1 (its diagonal and products); the ``joint`` update and ``none`` need only products with G and restricted
        solves, whose temporaries are bounded per group of blocks."""
        return self.options.update == "obs-sum"

    def _memory_knobs(self) -> str:
        """The options that lower this pruner's working set, less those already at their lowest-memory value."""
        o, flag = self.options, self.flag
        knobs = [] if o.dtype in ("bfloat16", "float16") else [f"{flag('dtype')} bfloat16"]
        if o.layer_groups != 0 and self.streams():
            knobs.append(f"{flag('layer-groups')} 0 (from the memory budget)")
        knobs += [f"fewer {flag('num-grads')}", f"a smaller {flag('block-size')}"]
        if self.streams():
            knobs.append("or G sharded over K GPUs (--executor submitit --ranks-per-job K --slurm-gpus K, or torchrun)")
        return ", ".join(knobs)

    def forward_passes(self, targets: TargetSet) -> Tuple[float, float]:
        """Per-sample gradients of N x minibatch images, once per step."""
        return 0.0, float(self.fisher_images() * self.options.recompute_steps)

    def unused_options(self) -> Set[str]:
        return {"schedule", "update_guard"} if self.options.recompute_steps == 1 else set()

    def check_options(self) -> None:
        """Every shared option, each error naming its flag (e.g. ``--woodfisher-damp``)."""
        super().check_options()
        o = self.options
        rules = (
            ("num_grads", o.num_grads >= 1, "an integer >= 1"),
            ("minibatch", o.minibatch >= 1, "an integer >= 1"),
            ("chunk_images", o.chunk_images >= 1, "an integer >= 1"),
            ("block_size", o.block_size >= 0, "an integer >= 0 (0 = whole layer)"),
            ("damp", math.isfinite(o.damp) and o.damp > 0, "a positive number (the damped Fisher lam*I + G^T G/N needs lam > 0)"),
            ("damp_mode", o.damp_mode in DAMP_MODES, f"one of {DAMP_MODES}"),
            ("recompute_steps", o.recompute_steps >= 1, "an integer >= 1"),
            ("schedule", o.schedule in SCHEDULES, f"one of {SCHEDULES}"),
            ("update_guard", o.update_guard in UPDATE_GUARDS, f"one of {UPDATE_GUARDS}"),
            ("update", o.update in UPDATES, f"one of {UPDATES}"),
            ("dtype", o.dtype in DTYPES, f"one of {tuple(DTYPES)}"),
            ("grad_engine", o.grad_engine in ENGINES, f"one of {ENGINES}"),
            ("layer_groups", o.layer_groups >= 0, "an integer >= 0 (1: no streaming, 0: from the memory budget)"),
        )
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{self.flag(name)} must be {rule}, got {getattr(o, name)!r}")

    def gradient_spec(self) -> GradientSpec:
        o = self.options
        return GradientSpec(
            num_grads=o.num_grads,
            minibatch=o.minibatch,
            chunk_images=o.chunk_images,
            dtype=o.dtype,
            offload=o.offload,
            pad_to=self.gradient_padding(),
            engine=o.grad_engine,
        )

    def gradient_padding(self) -> int:
        """Columns each layer's gradient rows are padded to a multiple of: the block size, so the block Fisher views G
        without a padded copy (a subclass with another curvature form returns 0)."""
        return self.options.block_size

    def fisher_spec(self) -> FisherSpec:
        o = self.options
        return FisherSpec(block_size=o.block_size, damp=o.damp, damp_mode=o.damp_mode)

    def curvature_key(self) -> Tuple[Any, ...]:
        """What, besides the gradient and Fisher specs, tells this pruner's curvature apart (a subclass that
        overrides :meth:`build_curvature` adds its form here, so two forms never share a cache entry)."""
        return ("block",)

    def build_curvature(self, gradients: GradientMatrix, ctx: PruneContext) -> Curvature:
        """The curvature the pruner works with, from the gradient matrix: the block Fisher by default."""
        return BlockFisher(gradients, self.fisher_spec(), ctx.device, ctx.memory_budget_gb, ctx.log, option_prefix=f"--{self.name}-")

    def streams(self) -> bool:
        """Whether this pruner works on a Fisher held layer by layer elsewhere: streamed in layer groups (each Fisher
        operation is a gradient pass: fine for a few operations, not for a search that reads G at every step) or sharded
        across torch.distributed ranks (each operation is a collective)."""
        return True

    def prepare(self, fisher: Curvature) -> None:
        """Work on a fresh Fisher that belongs with the curvature (charged to it, kept with a shared Fisher)."""

    @abstractmethod
    def select(self, model: nn.Module, targets: TargetSet, fisher: Curvature, masks: Masks, sparsity: float, ctx: PruneContext) -> Masks:
        """The new keep-masks at ``sparsity`` (weights pruned in ``masks`` stay pruned), weights unchanged."""

    def prune(self, model: nn.Module, targets: TargetSet, sparsity: float, ctx: PruneContext) -> Masks:
        masks: Masks = {t.param_name: torch.ones_like(t.weight, dtype=torch.bool) for t in targets}
        schedule = step_sparsities(sparsity, self.options.recompute_steps, self.options.schedule)
        ctx.notes[f"{self.name}_steps"] = schedule
        first = 0
        saving = ctx.stages is not None and len(schedule) > 1 and not is_distributed()
        if saving:
            first, masks = self._resume(targets, masks, schedule, ctx)
        for step in range(first, len(schedule)):
            try:
                masks = self._step(model, targets, masks, step, schedule, ctx)
                if saving and step + 1 < len(schedule):
                    self._save_stage(targets, masks, step + 1, schedule, ctx)
            except FisherError as error:
                if step == 0 or isinstance(error, DivergedError):
                    raise  # the dense model's curvature failing is a property of the inputs, not of this method's steps
                ctx.notes[f"{self.name}_failed_step"] = step
                raise DivergedError(
                    f"{self.name}: step {step + 1} of {len(schedule)} (sparsity {schedule[step]:.4g}) failed after the earlier steps' updates: {error}",
                    ctx.notes,
                ) from error
        return masks

    def _step(self, model: nn.Module, targets: TargetSet, masks: Masks, step: int, schedule: List[float], ctx: PruneContext) -> Masks:
        """Step ``step`` of ``schedule``: the curvature at the current weights and ``masks``, the selection at
        ``schedule[step]`` and the update (checked for divergence when more steps follow); returns the new keep-masks."""
        fisher = self.curvature_at(model, targets, masks, ctx, dense=step == 0)
        ctx.notes["fisher_blocks"] = fisher.describe()
        with ctx.phase("selection"):
            new_masks = self.select(model, targets, fisher, masks, schedule[step], ctx)
        with ctx.phase("update"):
            before = flat_weights(targets, fisher.damp_vector()) if len(schedule) > 1 else None
            apply_update(self.options.update, targets, fisher, masks, new_masks)
            if before is not None:
                self._reject_diverged_update(model, targets, before, new_masks, step, ctx)
        return new_masks

    def _save_stage(self, targets: TargetSet, masks: Masks, done: int, schedule: List[float], ctx: PruneContext) -> None:
        """Keep the state after ``done`` finished steps in ``ctx.stages``: masks, target weights, notes, phase costs."""
        ctx.stages.save(
            {
                "steps_done": done,
                "schedule": list(schedule),
                "masks": {name: m.detach().cpu() for name, m in masks.items()},
                "weights": {t.param_name: t.weight.detach().cpu() for t in targets},
                "notes": json.loads(json.dumps(ctx.notes, default=str)),  # as the run record will hold them: plain types only
                "cost": {name: vars(cost) for name, cost in ctx.ledger.phases.items()},
                "rng": torch.get_rng_state(),
            }
        )

    def _resume(self, targets: TargetSet, masks: Masks, schedule: List[float], ctx: PruneContext) -> Tuple[int, Masks]:
        """(first step to run, masks): the saved steps of this run restored from ``ctx.stages`` (weights, masks, notes,
        their phase costs credited to the ledger, the CPU generator), or (0, ``masks``) when nothing fits this schedule."""
        saved = ctx.stages.load()
        if saved is None or saved.get("schedule") != list(schedule) or set(saved.get("masks", {})) != set(masks):
            return 0, masks
        with torch.no_grad():
            for t in targets:
                t.weight.copy_(saved["weights"][t.param_name].to(device=t.weight.device, dtype=t.weight.dtype))
        restored = {name: m.to(masks[name].device) for name, m in saved["masks"].items()}
        ctx.notes.clear()
        ctx.notes.update(saved["notes"])
        ctx.notes[f"{self.name}_resumed_at_step"] = saved["steps_done"] + 1
        for name, cost in saved["cost"].items():
            if name != "prune":  # the open phase: charged the restored steps' time through add
                ctx.ledger.add(name, PhaseCost(**cost))
        torch.set_rng_state(saved["rng"])
        if not ctx.keep_curvature:  # this run was the dense curvature's last user: it skips step 1, so free it here
            CurvatureSource(self).release_dense(targets, ctx)
        if ctx.log is not None:
            ctx.log(f"{self.name}: resuming at step {saved['steps_done'] + 1} of {len(schedule)} from {ctx.stages.path}")
        return saved["steps_done"], restored

    PROBE_IMAGES = 256  # Fisher images in the batch that checks each step's update in multi-step runs

    def _reject_diverged_update(self, model: nn.Module, targets: TargetSet, before: torch.Tensor, masks: Masks, step: int, ctx: PruneContext) -> None:
        """Undo step ``step``'s update (weights ``before``, (p,), times the keep-``masks``) when the loss or a target
        gradient on the probe batch is not finite, or (``update_guard`` loss) when the probe loss is higher with the
        update than without it; raise when even the un-updated weights diverge."""
        count = min(self.PROBE_IMAGES, self.fisher_images())
        x, y = next(iter(ctx.fisher_batches(count, count)))
        x, y = x.to(ctx.device), y.to(ctx.device)
        without = before * flat_masks(targets, masks, before.device)
        loss_updated = probe_loss(model, targets, x, y)
        if math.isfinite(loss_updated):
            if self.options.update_guard != "loss":
                return
            updated = flat_weights(targets, before)
            write_weights(targets, without)
            loss_without = batch_loss(model, x, y)
            ctx.notes.setdefault(f"{self.name}_probe_losses", []).append([loss_without, loss_updated])
            if loss_updated <= loss_without:
                write_weights(targets, updated)
                return
            reason = f"raised the probe loss from {loss_without:.4g} to {loss_updated:.4g}"
        else:
            write_weights(targets, without)
            reason = "made the loss non-finite"
        ctx.notes.setdefault(f"{self.name}_rejected_updates", []).append(step)
        if ctx.log is not None:
            ctx.log(f"{self.name}: step {step + 1}: the {self.options.update} update {reason}; kept the weights without it")
        if not math.isfinite(probe_loss(model, targets, x, y)):
            raise DivergedError(
                f"{self.name}: at step {step + 1} the pruned model's loss is not finite even without the update: "
                f"use fewer {self.flag('recompute-steps')} or a larger {self.flag('damp')}",
                ctx.notes,
            )

    # -- the curvature: from :class:`~reflowbench.pruners.curvature_source.CurvatureSource` ------------------------
    def curvature_at(self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext, dense: bool) -> Curvature:
        """F at the current weights and mask (the dense F of a seed shared by its sparsities; streamed or sharded
        where the options and the process say so): see :class:`CurvatureSource`."""
        return CurvatureSource(self).at(model, targets, masks, ctx, dense)
