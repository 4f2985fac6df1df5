"""One run: load dense -> prune -> verify -> evaluate -> REFLOW -> evaluate, with per-phase cost.

:class:`SweepState` holds what every run of a sweep shares (data, the dense weights and their
accuracy, dense BN variances per seed, a gradient cache); :func:`run_one` produces one record.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from reflowbench.channels import GroupSearch, find_channel_groups, remove_channels
from reflowbench.config import SweepSettings
from reflowbench.corrections import Correction, CorrectionContext, make_correction, refuse_inapplicable
from reflowbench.datasets import DataBundle, SubsetSizes, check_subset_sizes, disjoint_subsets
from reflowbench.errors import BrokenModelError, CheckpointError, ConfigError, DivergedError, MaskError, PrunerCrashed, ReflowbenchError
from reflowbench.harness.correct import correct_and_measure, pruned_zeros
from reflowbench.harness.evaluate import evaluate
from reflowbench.harness.objective import measure_objective, objective_images, reference_fisher
from reflowbench.harness.plan import SweepPlan
from reflowbench.harness.process import configure_process, load_spec_data
from reflowbench.models import BUILTIN_MODELS, build_model, check_model_fits_data
from reflowbench.models.counts import counts
from reflowbench.models.fold_bn import fold_batchnorm
from reflowbench.models.state_checks import first_non_finite_module, state_problems
from reflowbench.pruners import PruneContext, Pruner, apply_masks, select_targets, verify_masks
from reflowbench.pruners.base import StageCheckpoint, key_options
from reflowbench.pruners.channels import channel_fraction, channels_to_remove, removed_channels
from reflowbench.pruners.nm import dense_layers, verify_nm
from reflowbench.reflow import RecalibrationHandle, bn_output_variances, recalibrate_bn, summarize_ratios, variance_ratios
from reflowbench.schema.results import SCHEMA_VERSION, settings_in_key
from reflowbench.schema.run_record import CompleteRecord, FailedRecord, ReflowMetrics, RunHeader, Subsets, Variance
from reflowbench.utils.cost import CostLedger
from reflowbench.utils.env import environment
from reflowbench.utils.io import cache_dir, content_sha256, stable_hash

Log = Callable[[str], None]


SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"  # dense weights of the embedded default, in the package


def default_checkpoint(spec: SweepSettings, data: DataBundle, device: torch.device, log: Log) -> Path:
    """The embedded default's dense weights: the ones shipped with the package for this model, data and recipe
    (the same weights on every machine: trained once, since training on another CPU's float kernels gives other
    weights), else trained once here and cached."""
    from reflowbench.config import TrainSpec
    from reflowbench.harness.train import train_dense

    recipe = TrainSpec(epochs=40, batch_size=64, lr=0.1, seed=0, augment=False)
    name = f"dense-{spec.model.model}-{data.name}-{stable_hash(asdict(recipe), 8)}.pt"
    shipped = SHIPPED_WEIGHTS / name
    if shipped.exists():
        return shipped
    path = cache_dir() / name
    if not path.exists():
        log(f"training the dense {spec.model.model} on {data.name} once ({recipe.epochs} epochs); cached at {path}")
        torch.manual_seed(recipe.seed)
        model = build_model(spec.model.model, num_classes=data.num_classes)
        train_dense(model, data.train, recipe, torch.device("cpu"))
        tmp = path.with_name(path.name + ".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def _fisher_knobs(plan: SweepPlan, need: int) -> str:
    """The flags that lower the Fisher images ``need`` of ``plan``: those of the pruners (or the objective diagnostic)
    that need that many."""
    flags = [f"{p.flag('num-grads')} or {p.flag('minibatch')}" for p in plan.pruners if p.fisher_images() == need and need > 0]
    if objective_images(plan.spec.objective) == need:
        flags.append("--objective-grads or --objective-minibatch")
    return "; ".join(flags) or "the pruner's number of gradients or images per gradient"


class SweepState:
    """Everything the runs of one sweep share. Build it once from a :class:`SweepPlan`; call :func:`run_one` per run.

    Order of the checks: data loaded and subset sizes checked, then the model built, its tensors checked
    for NaN/Inf, and one forward pass on training images checking the model takes the data's images and classes.
    """

    def __init__(self, plan: SweepPlan, log: Log = print) -> None:
        spec = plan.spec
        self.spec = spec
        self.log = log
        configure_process(spec.sweep)
        self.device = plan.device
        dataset = spec.data.dataset
        if plan.dataset_inferred:
            log(f"dataset: {dataset} (from {'--data ' + spec.data.data if spec.data.data else 'the model'}; --dataset overrides)")
        self.data = load_spec_data(spec, dataset)
        fisher_need = max([p.fisher_images() for p in plan.pruners] + [objective_images(spec.objective)])
        self.sizes = SubsetSizes(spec.reflow.calib_batches * spec.reflow.calib_batch_size, fisher_need, spec.reflow.diag_images)
        check_subset_sizes(len(self.data.train), self.sizes, {"fisher": _fisher_knobs(plan, fisher_need)})  # fail now, not after the first run
        checkpoint = spec.model.checkpoint
        if checkpoint is None and spec.model.weights is None:
            if spec.model.model.startswith("smallcnn") and dataset == "digits":
                checkpoint = str(default_checkpoint(spec, self.data, self.device, log))
            elif spec.model.model in BUILTIN_MODELS:
                raise CheckpointError(
                    f"{spec.model.model} needs dense weights: pass --checkpoint PATH (train one with `reflowbench train --model {spec.model.model} ...`)"
                )
        self.checkpoint = checkpoint
        num_classes = spec.model.num_classes or self.data.num_classes
        self.dense = build_model(spec.model.model, num_classes, Path(checkpoint) if checkpoint else None, spec.model.shortcut, spec.model.weights)
        self.dense.to(self.device).eval()
        problems = state_problems(self.dense)
        if problems:
            shown = ", ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            raise CheckpointError(
                f"the dense {spec.model.model} ({checkpoint or spec.model.weights or 'its initial weights'}) cannot be pruned: {shown}; "
                "use another checkpoint, or re-estimate its BatchNorm statistics (`reflowbench train` writes valid ones)"
            )
        if spec.model.fold_bn:
            self.dense = fold_batchnorm(self.dense, spec.model.model).to(self.device)
            log(f"--fold-bn: every BatchNorm of {spec.model.model} folded into its convolution; the folded weights are pruned")
        self.corrections: List[Correction] = [make_correction(name, spec.corrections) for name in spec.corrections.applied()]
        for correction in self.corrections:
            refuse_inapplicable(correction, self.dense, spec.model.model + (" with --fold-bn" if spec.model.fold_bn else ""))
        sample, _ = next(iter(self.data.train.batches(np.arange(2), 2)))
        check_model_fits_data(self.dense, sample.to(self.device), self.data.num_classes, spec.model.model, dataset)
        self.policy = spec.targets.policy()
        self.pattern = spec.targets.sparsity_pattern()
        self.targets_record = select_targets(self.dense, self.policy).record()
        self.example = sample  # two training images: the channel groups' and the surgery's check batch
        self.channel_search: Optional[GroupSearch] = None
        if self.pattern.kind == "channels":
            self.channel_search = self._channel_groups()
        self.cache: Dict[Any, Any] = {}
        self._dense_metrics: Optional[Dict[str, float]] = None
        self._dense_variances: Dict[int, Dict[str, float]] = {}
        self._dense_moments: Dict[int, Dict[Tuple[Tuple[str, ...], int], Any]] = {}  # seed -> CorrectionContext.moments_cache
        self.environment = environment(self.device)
        self.settings = self._settings(dataset)

    def _channel_groups(self) -> GroupSearch:
        """The dense model's prunable channel groups under the target policy (refused when there is none), logged."""
        name = self.spec.model.model + (" with --fold-bn" if self.spec.model.fold_bn else "")
        found = find_channel_groups(self.dense, self.example, name)
        search = found.restricted({t.param_name for t in select_targets(self.dense, self.policy)})
        left = "; ".join(f"{root}: {why}" for root, why in search.excluded.items())
        if not search.groups:
            raise ConfigError(f"--pattern channels: no channel of {name} can be removed ({left or 'no convolution found'})")
        self.log(f"channel groups: {len(search.groups)} prunable ({search.prunable_channels()} channels)" + (f"; left whole: {left}" if left else ""))
        return search

    def _settings(self, dataset: str) -> Dict[str, Any]:
        """Everything shared by the sweep's runs that changes a result (hashed into each run key):
        the model and the checkpoint's content, the data's content, REFLOW, the target policy, the device."""
        spec = self.spec
        data_path = spec.data.data
        settings: Dict[str, Any] = {
            "model": settings_in_key(
                "model",
                {**asdict(spec.model), "checkpoint": None, "checkpoint_sha256": content_sha256(Path(self.checkpoint))[:16] if self.checkpoint else None},
            ),
            "data": {
                "dataset": dataset,
                "norm": spec.data.norm,
                "partial_data": spec.data.partial_data,
                "content_sha256": content_sha256(Path(data_path))[:16] if data_path and Path(data_path).exists() else f"builtin-{dataset}",
            },
            "reflow": asdict(spec.reflow),
            "targets": settings_in_key("targets", {**asdict(self.policy), "pattern": str(self.pattern)}),
            "device": {"type": self.device.type, "name": self.environment.get("cuda_device", "cpu")},
        }
        corrections = spec.corrections.key_fields()
        if corrections is not None:  # REFLOW alone (the default) leaves the key as it was before corrections existed
            settings["corrections"] = corrections
        return settings

    def sources(self) -> Dict[str, Optional[str]]:
        """Where the checkpoint and the data were read from (recorded, not hashed: moving a file changes no result)."""
        return {"checkpoint": self.checkpoint, "data": self.spec.data.data}

    def run_key(self, pruner: Pruner, sparsity: float, seed: int) -> str:
        return stable_hash({**self.settings, "method": pruner.name, "options": key_options(pruner), "sparsity": sparsity, "seed": seed})

    def fresh_model(self) -> nn.Module:
        return copy.deepcopy(self.dense).eval()

    def test_batches(self):
        return self.data.test.batches(None, self.spec.data.eval_batch_size)

    def dense_metrics(self) -> Dict[str, float]:
        if self._dense_metrics is None:
            self._dense_metrics = evaluate(self.dense, self.test_batches(), self.device)
            if not math.isfinite(self._dense_metrics["loss"]):
                images, _ = next(iter(self.test_batches()))
                where = first_non_finite_module(self.dense, images.to(self.device)) or "the loss itself"
                raise CheckpointError(
                    f"the dense {self.spec.model.model}'s test loss is not finite (the first non-finite output: {where}); "
                    "nothing pruned from it would mean anything: use another checkpoint"
                )
            self.log(f"dense {self.spec.model.model}: top-1 {self._dense_metrics['top1']:.2f}% on {int(self._dense_metrics['images'])} test images")
        return self._dense_metrics

    def subsets(self, seed: int) -> Dict[str, np.ndarray]:
        return disjoint_subsets(len(self.data.train), self.sizes, seed)

    def recalibrate(
        self,
        model: nn.Module,
        seed: int,
        images: Optional[np.ndarray] = None,
        batches: Optional[int] = None,
        batch_size: Optional[int] = None,
        only: Optional[List[str]] = None,
    ) -> RecalibrationHandle:
        """REFLOW on ``model`` in place with the sweep's REFLOW settings: ``batches`` x ``batch_size`` shuffled images
        (default: --calib-batches x --calib-batch-size) from ``images`` (indices into the training split; default: the
        seed's calibration subset), of the BN layers named in ``only`` (default: all); the handle undoes it."""
        reflow = self.spec.reflow
        size = batch_size or reflow.calib_batch_size
        pool = self.subsets(seed)["calibration"] if images is None else images
        calibration = self.data.train.batches(pool, size, shuffle=True, augment=reflow.calib_augment, seed=seed)
        return recalibrate_bn(
            model,
            calibration,
            batches or reflow.calib_batches,
            reflow.reflow_mode,
            reflow.reflow_momentum,
            reset=reflow.reflow_mode == "cumulative",
            device=self.device,
            only=only,
        )

    def calibration_batches(self, seed: int):
        """The REFLOW calibration batches of ``seed`` (shuffled, --calib-batches x --calib-batch-size), a fresh iterator."""
        reflow = self.spec.reflow
        batches = self.data.train.batches(self.subsets(seed)["calibration"], reflow.calib_batch_size, shuffle=True, augment=reflow.calib_augment, seed=seed)
        for index, batch in enumerate(batches):
            if index >= reflow.calib_batches:
                break
            yield batch

    def correction_context(self, seed: int, targets) -> CorrectionContext:
        """What a correction of a model pruned with ``seed`` may use: the dense model, the seed's calibration batches
        (the same images REFLOW sees), REFLOW itself, the pruned layers' names."""
        return CorrectionContext(
            dense=self.dense,
            calibration=lambda: self.calibration_batches(seed),
            recalibrate=lambda model: self.recalibrate(model, seed),
            layers=list(dict.fromkeys(t.module_name for t in targets)),
            device=self.device,
            moments_cache=self._dense_moments.setdefault(seed, {}),  # one dense pass per seed and set of layers, for every run
        )

    def diagnostic_batches(self, seed: int):
        return self.data.train.batches(self.subsets(seed)["heldout"], self.spec.data.eval_batch_size)

    def dense_variances(self, seed: int) -> Dict[str, float]:
        if seed not in self._dense_variances:
            self._dense_variances[seed] = bn_output_variances(self.dense, self.diagnostic_batches(seed), self.device)
        return self._dense_variances[seed]


def run_one(
    state: SweepState, pruner: Pruner, sparsity: float, seed: int, key: str, keep_curvature: bool = False, stages: Optional[StageCheckpoint] = None
) -> Dict[str, Any]:
    """Prune a fresh copy of the dense model and return the run record (see ``schema/results.py``); ``keep_curvature``:
    whether a later run reuses the seed's dense curvature (see :class:`PruneContext`); ``stages``: where a multi-step
    pruner keeps its finished steps, so an interrupted run resumes at its next step (the caller removes it once the
    record is written).

    A run whose pruner diverged (:class:`DivergedError`: a later step of a multi-step pruner could not form its
    curvature) returns a record with status ``failed``, the message and the cost spent, so a sweep goes on."""
    ledger = CostLedger()
    try:
        return prune_and_measure(state, pruner, sparsity, seed, key, keep_curvature, ledger, stages)[0]
    except DivergedError as error:
        return failed_record(state, pruner, sparsity, seed, key, error, ledger)


def run_header(state: SweepState, pruner: Pruner, sparsity: float, seed: int, key: str, status: str) -> RunHeader:
    """The fields every run record starts with, finished or failed."""
    return RunHeader(
        schema=SCHEMA_VERSION,
        status=status,
        key=key,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=state.spec.model.model,
        dataset=state.data.name,
        method=pruner.name,
        method_description=pruner.description,
        options=asdict(pruner.options),
        sparsity=sparsity,
        seed=seed,
    )


def failed_record(state: SweepState, pruner: Pruner, sparsity: float, seed: int, key: str, error: DivergedError, ledger: CostLedger) -> FailedRecord:
    """The record of a run whose pruner diverged: why (``error``), the pruner's notes and the cost spent until then."""
    return FailedRecord(
        **run_header(state, pruner, sparsity, seed, key, "failed"),
        error=str(error),
        settings=state.settings,
        sources=state.sources(),
        targets=state.targets_record,
        dense=state.dense_metrics(),
        cost=ledger.as_dict(),
        notes=error.notes,
        environment=state.environment,
    )


def prune_fresh(
    state: SweepState,
    pruner: Pruner,
    sparsity: float,
    seed: int,
    ledger: CostLedger,
    keep_curvature: bool = False,
    stages: Optional[StageCheckpoint] = None,
) -> Tuple[nn.Module, float, PruneContext]:
    """Prune a fresh copy of the dense model with the seed's subsets (phase ``prune`` in ``ledger``; a multi-step
    pruner resumes from and saves to ``stages`` when given), masks applied and verified; returns (pruned model,
    its actual sparsity, the pruner's context with its notes)."""
    torch.manual_seed(seed)
    model = state.fresh_model()
    targets = select_targets(model, state.policy)
    subsets = state.subsets(seed)
    ctx = PruneContext(
        device=state.device,
        seed=seed,
        ledger=ledger,
        train=state.data.train,
        fisher_indices=subsets["fisher"],
        heldout_indices=subsets["heldout"],
        memory_budget_gb=state.spec.sweep.memory_budget_gb,
        cache=state.cache,
        progress=state.spec.sweep.progress,
        log=state.log,
        keep_curvature=keep_curvature,
        stages=stages,
        pattern=state.pattern,
        channel_groups=state.channel_search.groups if state.channel_search else (),
    )
    where = f"{pruner.name} at sparsity {sparsity:g}, seed {seed}"
    with _pruner_errors(where):
        with ledger.phase("prune", state.device):
            masks = pruner.prune(model, targets, sparsity, ctx)
            apply_masks(targets, masks)
        if state.channel_search is not None:
            with ledger.phase("surgery", state.device):  # the same for every channel pruner: kept out of the pruner's own seconds
                actual = _remove_channels(state, model, targets, masks, sparsity, ctx)
        if state.pattern.kind == "n:m":
            verify_nm(targets, masks, state.pattern)
            ctx.notes["nm_dense_layers"] = dense_layers(targets, state.pattern)
        if state.channel_search is None:
            actual = verify_masks(targets, masks, sparsity, pruner.mask_scope(), model=model, count=state.pattern.kind != "n:m")
    check_model_state(model, f"{pruner.name} at sparsity {sparsity:g}, seed {seed}: after pruning", ctx.notes)
    return model, actual, ctx


def _remove_channels(state: SweepState, model: nn.Module, targets, masks, fraction: float, ctx: PruneContext) -> float:
    """Read the removed channels back from ``masks`` (whole channels only, the pattern's count in every group), remove
    them from ``model`` in place (checked against the zeroed model), note them; the fraction of prunable channels removed."""
    assert state.channel_search is not None
    groups = state.channel_search.groups
    removal = removed_channels(targets, groups, masks)
    wrong = [
        f"{g.root}: {len(removal[g.root])} of {g.channels}, not {channels_to_remove(g.channels, fraction)}"
        for g in groups
        if len(removal[g.root]) != channels_to_remove(g.channels, fraction)
    ]
    if wrong:
        raise MaskError(
            f"the pruner removed other channel counts than --pattern channels at {fraction:g} asks (the same fraction of every group): {'; '.join(wrong[:4])}"
        )
    surgery = remove_channels(model, groups, removal, state.example)
    ctx.notes["channels_removed"] = {g.root: f"{len(removal[g.root])}/{g.channels}" for g in groups}
    ctx.notes["channels_left_whole"] = dict(state.channel_search.excluded)
    ctx.notes["channel_surgery_relative_error"] = surgery.relative_error
    return channel_fraction(groups, removal)


@contextmanager
def _pruner_errors(where: str) -> Iterator[None]:
    """Inside: a pruner's own exception becomes a one-line :class:`PrunerCrashed` naming ``where`` (method, sparsity,
    seed), the exception and the file and line it came from; a mask problem is prefixed with ``where``. With
    ``REFLOWBENCH_DEBUG=1`` the original exception propagates (its traceback)."""
    try:
        yield
    except MaskError as exc:
        raise MaskError(f"{where}: {exc}") from None
    except (ReflowbenchError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        if os.environ.get("REFLOWBENCH_DEBUG"):
            raise
        frames = traceback.extract_tb(exc.__traceback__)
        origin = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        raise PrunerCrashed(
            f"{where}: the pruner raised {type(exc).__name__}: {exc}{origin}; the runs finished before it are saved. "
            "Fix the pruner (REFLOWBENCH_DEBUG=1 shows the traceback)"
        ) from None


def check_model_state(model: nn.Module, where: str, notes: Optional[Dict[str, Any]] = None) -> None:
    """Raise :class:`BrokenModelError` (the run fails, the sweep goes on) when any parameter or buffer of ``model`` is
    not finite or a BatchNorm running variance is negative; ``where`` names the method, sparsity, seed and step."""
    problems = state_problems(model)
    if problems:
        shown = ", ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        raise BrokenModelError(f"{where}: {shown} (every parameter and buffer must be finite, no BatchNorm variance negative)", notes)


def prune_and_measure(
    state: SweepState,
    pruner: Pruner,
    sparsity: float,
    seed: int,
    key: str,
    keep_curvature: bool = False,
    ledger: Optional[CostLedger] = None,
    stages: Optional[StageCheckpoint] = None,
) -> Tuple[Dict[str, Any], nn.Module, RecalibrationHandle]:
    """The run itself: returns (record, the pruned model after REFLOW, the REFLOW undo handle); without REFLOW in
    --corrections, the pruned model and None. The other corrections act on copies, recorded under ``corrections``.

    ``sparsity`` and ``seed`` come from a validated plan; ``key`` is :meth:`SweepState.run_key` of this run;
    ``keep_curvature``: whether a later run reuses the seed's dense curvature (else it is freed before the evaluations);
    ``ledger``: where the phases' costs go (a fresh one when None).
    """
    ledger = ledger if ledger is not None else CostLedger()
    subsets = state.subsets(seed)
    dense = state.dense_metrics()
    dense_var = state.dense_variances(seed)
    model, actual, ctx = prune_fresh(state, pruner, sparsity, seed, ledger, keep_curvature, stages)
    objective = _objective(state, model, seed, subsets, ledger) if state.spec.objective.objective_grads else None
    with ledger.phase("eval_pruned", state.device):
        pruned_metrics = evaluate(model, state.test_batches(), state.device)
    with ledger.phase("diagnostics", state.device):
        pruned_ratios = variance_ratios(bn_output_variances(model, state.diagnostic_batches(seed), state.device), dense_var)
    where = f"{pruner.name} at sparsity {sparsity:g}, seed {seed}"
    corrections = _other_corrections(state, model, seed, ledger, dense_var, ctx.notes, where)
    handle: Optional[RecalibrationHandle] = None
    reflow_metrics: Optional[Dict[str, float]] = None
    reflow_ratios: Dict[str, float] = {}
    if any(c.name == "reflow" for c in state.corrections):
        handle, reflow_metrics, reflow_ratios = _reflow(state, model, seed, subsets, ledger, dense_var, ctx.notes, where)
    variance = _variance(dense_var, pruned_ratios, reflow_ratios if reflow_metrics is not None else None)
    record = CompleteRecord(
        **run_header(state, pruner, sparsity, seed, key, "complete"),
        sparsity_actual=actual,
        settings=state.settings,
        sources=state.sources(),
        targets=state.targets_record,
        subsets=Subsets(
            calibration_images=int(len(subsets["calibration"])),
            fisher_images=int(pruner.fisher_images()),
            diagnostic_images=int(len(subsets["heldout"])),
        ),
        dense=dense,
        pruned=pruned_metrics,
        variance=variance,
        cost=ledger.as_dict(),
        notes=ctx.notes,
        environment=state.environment,
    )
    if reflow_metrics is not None and handle is not None:  # calibration images replace the test count
        record["reflow"] = ReflowMetrics(**{**reflow_metrics, "batches": handle.batches_seen, "images": handle.images_seen})
    if corrections or state.spec.corrections.key_fields() is not None:
        record["corrections"] = corrections
    if objective is not None:
        record["objective"] = objective
    if state.channel_search is not None:
        record["structure"] = structure_record(state, model)
    return record, model, handle


def _objective(state: SweepState, model: nn.Module, seed: int, subsets: Dict[str, Any], ledger: CostLedger) -> Dict[str, Any]:
    """The loss-model objective of the pruned ``model`` against the dense one (``--objective-grads``), on the seed's
    Fisher range of the training split."""
    spec = state.spec
    with ledger.phase("objective", state.device):
        images = objective_images(spec.objective)
        batches = state.data.train.batches(subsets["fisher"][:images], min(256, images), shuffle=False, augment=False, seed=seed)
        fisher = reference_fisher(state.dense, state.policy, batches, spec.objective, seed, state.cache, state.device, spec.sweep.memory_budget_gb)
        return measure_objective(fisher, state.dense, model, state.policy)


def _other_corrections(
    state: SweepState, model: nn.Module, seed: int, ledger: CostLedger, dense_var: Dict[str, float], notes: Dict[str, Any], where: str
) -> Dict[str, Any]:
    """{correction name: its record} for every correction but REFLOW, each applied to a copy of the same pruned weights
    (REFLOW, when asked, runs after them, in place)."""
    others = [c for c in state.corrections if c.name != "reflow"]
    if not others:
        return {}
    targets = select_targets(model, state.policy)
    zeros = pruned_zeros(model, targets)
    correction_ctx = state.correction_context(seed, targets)
    return {
        correction.name: correct_and_measure(
            model,
            correction,
            correction_ctx,
            ledger,
            state.test_batches,
            lambda: state.diagnostic_batches(seed),
            dense_var,
            zeros,
            lambda m, at: check_model_state(m, at, notes),
            where,
        )
        for correction in others
    }


def _reflow(
    state: SweepState,
    model: nn.Module,
    seed: int,
    subsets: Dict[str, Any],
    ledger: CostLedger,
    dense_var: Dict[str, float],
    notes: Dict[str, Any],
    where: str,
) -> Tuple[RecalibrationHandle, Dict[str, float], Dict[str, float]]:
    """REFLOW on ``model`` in place: (its undo handle, the test metrics after it, the BN variance ratios after it)."""
    with ledger.phase("recalibrate", state.device):
        handle = state.recalibrate(model, seed, subsets["calibration"])
    check_model_state(model, f"{where}: after REFLOW", notes)
    with ledger.phase("eval_reflow", state.device):
        metrics = evaluate(model, state.test_batches(), state.device)
    with ledger.phase("diagnostics", state.device):
        ratios = variance_ratios(bn_output_variances(model, state.diagnostic_batches(seed), state.device), dense_var)
    return handle, metrics, ratios


def _variance(dense_var: Dict[str, float], pruned_ratios: Dict[str, float], reflow_ratios: Optional[Dict[str, float]]) -> Variance:
    """The run's variance record: per BN layer (forward order) the dense output variance and the ratios pruned / dense
    (and after REFLOW / dense when it ran), with their summaries."""
    variance = Variance(
        layers=list(dense_var),
        dense=[dense_var[k] for k in dense_var],
        pruned_ratio=[pruned_ratios[k] for k in dense_var],
        pruned=summarize_ratios(pruned_ratios),
    )
    if reflow_ratios is not None:
        variance["reflow_ratio"] = [reflow_ratios[k] for k in dense_var]
        variance["reflow"] = summarize_ratios(reflow_ratios)
    return variance


LATENCY_BATCHES = (1, 256)  # images per timed forward pass of a channel-pruned network and of its dense one
LATENCY_SECONDS = 1.0  # torch.utils.benchmark's min_run_time per model and batch size


def structure_record(state: SweepState, model: nn.Module) -> Dict[str, Any]:
    """The channel-pruned ``model`` against the dense one: parameters and FLOPs per image (PyTorch's FLOP counter), and
    the latency of a forward pass at batch 1 and 256 measured on this device with this run's threads (median and
    interquartile range of ``torch.utils.benchmark`` blocks; the dense model timed right before, so both see the same
    machine load), with the load average."""
    from reflowbench.harness.speed import latency, machine_load

    shape = tuple(state.example.shape[1:])
    dense, pruned = counts(state.dense, shape), counts(model, shape)
    dense_latency = {str(b): latency(state.dense, shape, b, state.device, LATENCY_SECONDS) for b in LATENCY_BATCHES}
    return {
        "params": pruned["params"],
        "dense_params": dense["params"],
        "flops": pruned["flops"],
        "dense_flops": dense["flops"],
        "channels_prunable": state.channel_search.prunable_channels() if state.channel_search else 0,
        "latency": {str(b): latency(model, shape, b, state.device, LATENCY_SECONDS) for b in LATENCY_BATCHES},
        "dense_latency": dense_latency,
        "threads": torch.get_num_threads(),
        "machine": machine_load(),
    }
