"""Where a Hessian pruner's curvature comes from, at the current weights and mask: built here from the gradients the
pruner's options ask for, or the dense one of a seed taken from the sweep's cache (built once, shared by its sparsities,
its measured gradient and curvature cost charged to every run that uses it); streamed in layer groups when the gradients
do not fit at once; sharded across torch.distributed ranks under torchrun. The pruner says what (its gradient and
Fisher specs, its curvature form); this module says from where."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

import torch.distributed as dist
from torch import nn

from reflowbench.errors import ConfigError
from reflowbench.hessian import BlockFisher, Curvature, GradientMatrix, GradientSpec, collect_gradients
from reflowbench.hessian.distributed_fisher import assign_layers, build_sharded, gather_owned_rows, is_distributed, row_shares
from reflowbench.hessian.gradients import layer_gradient_bytes
from reflowbench.hessian.layer_group_streaming import StreamedBlockFisher, choose_layer_groups
from reflowbench.hessian.memory import resolve_dtype
from reflowbench.pruners.base import PruneContext
from reflowbench.pruners.masks import Masks
from reflowbench.schema.targets import TargetSet
from reflowbench.utils.cost import PhaseCost

if TYPE_CHECKING:
    from reflowbench.pruners.hessian_base import HessianPruner

DENSE_FISHER = "dense-fisher"  # first element of the sweep-cache key of a seed's dense block Fisher


class CurvatureSource:
    """The curvature of one Hessian pruner, from the source its options and the process choose."""

    def __init__(self, pruner: "HessianPruner") -> None:
        self.pruner = pruner

    def layer_groups(self, targets: TargetSet, ctx: PruneContext) -> List[List[str]]:
        """The groups of target layers G is collected for at a time (one group: no streaming), from ``layer_groups``."""
        spec = self.pruner.gradient_spec()
        sizes = {t.param_name: layer_gradient_bytes(t.numel, spec) for t in targets}
        groups = choose_layer_groups(sizes, self.pruner.options.layer_groups, ctx.memory_budget_gb * 2**30)
        if len(groups) > 1 and not self.pruner.streams():
            raise ConfigError(
                f"{self.pruner.flag('layer-groups')} {self.pruner.options.layer_groups} (layer-group streaming, {len(groups)} groups) is not supported by {self.pruner.name}: "
                "its selection reads the gradients at every step; use 1, or shrink G with a smaller "
                f"{self.pruner.flag('num-grads')} or {self.pruner.flag('dtype')} bfloat16"
            )
        return groups

    def _cache_key(self, targets: TargetSet, ctx: PruneContext) -> Tuple:
        spec, fisher = self.pruner.gradient_spec(), self.pruner.fisher_spec()
        return (
            DENSE_FISHER,
            ctx.seed,
            spec.num_grads,
            spec.minibatch,
            spec.dtype,
            fisher.block_size,
            fisher.damp,
            fisher.damp_mode,
            *self.pruner.curvature_key(),
            tuple(targets.names),
            str(ctx.device),
        )

    def release_dense(self, targets: TargetSet, ctx: PruneContext) -> None:
        """Drop the seed's dense curvature from the sweep's cache (its last user no longer needs it)."""
        ctx.cache.pop(self._cache_key(targets, ctx), None)

    def at(self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext, dense: bool) -> Curvature:
        """F at the current weights and mask. The dense F (first step) of a seed is kept in the sweep
        cache and reused by the other sparsities (while ``ctx.keep_curvature``: the last run that needs it takes it out,
        so it is freed when the pruning ends); a reuse is charged the measured gradient and curvature cost."""
        groups = self.layer_groups(targets, ctx)
        if len(groups) > 1:
            return self._streamed(model, targets, masks, ctx, groups)
        key = self._cache_key(targets, ctx)
        if dense and key in ctx.cache:
            fisher, costs = ctx.cache[key] if ctx.keep_curvature else ctx.cache.pop(key)
            for phase, cost in costs.items():
                ctx.ledger.add(phase, cost)
            ctx.notes["gradients_reused"] = True
            if self._sharded():
                ctx.notes["sharded_ranks"] = dist.get_world_size()
            return fisher
        if dense:  # one dense Fisher alive at a time: drop another seed's or setting's before building a new one
            for stale in [k for k in ctx.cache if isinstance(k, tuple) and k and k[0] == DENSE_FISHER]:
                del ctx.cache[stale]
        before = {phase: PhaseCost(**vars(ctx.ledger.get(phase))) for phase in ("gradients", "curvature")}
        prefix = f"--{self.pruner.name}-"
        sharded = self._sharded()
        with ctx.phase("gradients"):
            if sharded:
                owned, owner = self._sharded_gradients(model, targets, masks, ctx)
            else:
                gradients = self._collect(model, targets, masks, ctx, self.pruner.gradient_spec())
        with ctx.phase("curvature"):
            if sharded:
                sizes = [t.numel for t in targets]
                fisher = build_sharded(
                    targets.names, sizes, owned, owner, self.pruner.fisher_spec(), ctx.device, budget_gb=ctx.memory_budget_gb, log=ctx.log, option_prefix=prefix
                )
                ctx.notes["sharded_ranks"] = dist.get_world_size()
                del owned
            else:
                fisher = self.pruner.build_curvature(gradients, ctx)
                del gradients
            self.pruner.prepare(fisher)
        if dense and ctx.keep_curvature:
            costs = {phase: ctx.ledger.get(phase).since(before[phase]) for phase in ("gradients", "curvature")}
            ctx.cache[key] = (fisher, costs)
        return fisher

    def _streamed(self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext, groups: List[List[str]]) -> Curvature:
        """The block Fisher streamed over ``groups`` of layers: each operation collects one group's gradients at a time at
        the weights and masks of now (not cached: the model object changes between runs)."""
        spec, fixed_masks = self.pruner.gradient_spec(), dict(masks)

        def group_fisher(names: List[str]) -> BlockFisher:
            with ctx.phase("gradients"):
                gradients = self._collect(model, targets.subset(names), fixed_masks, ctx, spec, progress=False)
            with ctx.phase("curvature"):
                return self.pruner.build_curvature(gradients, ctx)  # a block Fisher: only pruners that stream get here

        if ctx.log is not None:
            ctx.log(f"{self.pruner.name}: layer-group streaming over {len(groups)} groups ({', '.join(str(len(g)) for g in groups)} layers)")
        fisher_spec = self.pruner.fisher_spec()
        fisher = StreamedBlockFisher(
            targets.names, [t.numel for t in targets], groups, group_fisher, resolve_dtype(fisher_spec.factor_dtype), ctx.device,
            absolute_damp=fisher_spec.damp if fisher_spec.damp_mode == "absolute" else None,
        )  # fmt: skip
        ctx.notes["layer_groups"] = len(groups)
        with ctx.phase("curvature"):
            self.pruner.prepare(fisher)
        return fisher

    def _sharded_gradients(self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext) -> Tuple[GradientMatrix, Dict[str, int]]:
        """This rank's share of the gradient rows for every layer, then all rows of the layers this rank owns
        (:mod:`reflowbench.hessian.distributed_fisher`); returns (the owned rows, layer -> owning rank)."""
        spec = self.pruner.gradient_spec()
        world, rank = dist.get_world_size(), dist.get_rank()
        if spec.num_grads < world:
            raise ConfigError(
                f"{self.pruner.flag('num-grads')} {spec.num_grads} is fewer than the {world} ranks sharing the gradient rows: use at least {world}"
            )
        share = row_shares(spec.num_grads, world)
        mine = share[rank]
        local_spec = GradientSpec(**{**vars(spec), "num_grads": len(mine), "pad_to": 0})
        local = self._collect(model, targets, masks, ctx, local_spec, first_image=mine.start * spec.minibatch)
        owner = assign_layers({t.param_name: t.numel for t in targets}, world)
        return gather_owned_rows(local, owner, spec.num_grads, share), owner

    def _sharded(self) -> bool:
        """Whether this process shares the Fisher with other torch.distributed ranks (see :mod:`reflowbench.hessian.distributed_fisher`)."""
        return is_distributed() and self.pruner.streams()

    def _collect(
        self, model: nn.Module, targets: TargetSet, masks: Masks, ctx: PruneContext, spec: GradientSpec, first_image: int = 0, progress: bool = True
    ) -> GradientMatrix:
        """G of ``targets`` (``spec.num_grads`` rows) from the Fisher images from ``first_image`` on, rows masked by ``masks``."""
        return collect_gradients(
            model, targets, ctx.fisher_batches(min(256, spec.images), spec.images, start=first_image), spec,
            masks={t.param_name: masks[t.param_name] for t in targets}, device=ctx.device, budget_gb=ctx.memory_budget_gb, log=ctx.log,
            progress=ctx.progress and progress, option_prefix=f"--{self.pruner.name}-",
        )  # fmt: skip
