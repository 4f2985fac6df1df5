"""Named comparison suites (``reflowbench suite NAME``): data only, like the presets in :mod:`reflowbench.config`.

A suite is a list of jobs; each job is one ``reflowbench run`` (a preset plus settings, in the format of a
``--config`` file) whose results go to ``<out>/<folder>``. Jobs that share a folder share its runs and its
report (e.g. a model's main sweep and its selection x update ablation). A job's ``role`` is ``sweep`` (the
default: a main sweep, the methods' reference rows, whose seeds and sparsities ``--seeds``/``--sparsities`` override),
``variant`` (a main row of a method with other settings, labelled by the setting that differs, e.g. CHITA's IHT), ``tuned`` (a main sweep
whose method's options come from a settings search first: the job's ``tune`` entry, see :class:`~reflowbench.config.TuneSpec`),
``ablation`` or ``objective`` (extra cells, kept as defined). A job's ``sources`` (method -> option -> text) say
where each value it sets comes from, and the suite's ``notes`` (model -> text) what a reference row is on that model:
the report's reference-settings tables print them. In strings, ``{models}`` stands for ``--models-dir``. A JSON file of the same shape (``{"description": ..., "jobs": [...]}``) is a suite too.

Per-model settings that differ from a pruner's published defaults are here, each with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from reflowbench.errors import ConfigError
from reflowbench.utils.io import read_settings_file

R20, R56, MNV1 = "{models}/resnet20_cifar10_jpeg.pt", "{models}/resnet56_cifar10_jpeg.pt", "{models}/mobilenetv1_cifar10_jpeg.pt"
R20_GN = "checkpoints/resnet20_gn_cifar10_jpeg.pt"  # trained by the suite (checkpoints/README.md)
FOUR = ["mp", "woodfisher", "cbs", "chita", "chita++"]
# The whole-network IHT variants of CHITA and CHITA++ (the suite's defaults before the shipped block backsolve became
# CHITA's default), kept as labelled rows; CHITA++ with 20 IHT iterations per stage instead of 100 (~8 CPU minutes a
# ResNet-20 run).
CHITA_IHT = {"chita": {"solver": "iht"}}
CHITA_PP_IHT = {"chita++": {"solver": "iht", "iht_iters": 20}}
# MobileNetV1 (3.2 M weights): N = 1000 per-sample gradients need 12.8 GB, over the default 8 GB budget.
MNV1_OPTIONS = {"woodfisher": {"num_grads": 400}, "cbs": {"num_grads": 400}}

# Where each value a job sets away from a pruner's defaults comes from (method -> option -> source), printed in the
# report's reference-settings table beside the pruner's own sources (``Pruner.REFERENCE``).
IHT_SOURCES = {
    "solver": "REFERENCES.md §5(b): IHT with line search, the CHITA class's default solver (not the shipped scripts')",
}
ACTIVE_SET_SOURCES = {"solver": "REFERENCES.md §5(b): the active set (IHT on the top 1.5k magnitudes, grown by outliers)"}
PP_IHT_SOURCES = {
    **IHT_SOURCES,
    "iht_iters": "suite choice: 20 IHT iterations per stage instead of 100, 16 stages (~8 CPU minutes a ResNet-20 run)",
}
PP_IHT_ONLY = (
    "suite choice: IHT per stage (20 iterations), as before the shipped block backsolve became CHITA's default; CHITA++ with the block "
    "backsolve per stage is run on ResNet-20 only so far (16 stages on this model cost hours of CPU)"
)
MNV1_SOURCES = {
    "woodfisher": {
        "num_grads": "REFERENCES.md §2(h), MobileNetV1 script: N = 400 (there each gradient averages 2,400 images; per-sample here: "
        "CIFAR-10's 20,000 Fisher images cannot give 960k)",
        "block_size": "suite choice: whole-layer blocks as in the ResNet-20 scripts; the MobileNetV1 script's c = 10,000 (REFERENCES.md §2(h)) is not run yet",
    },
    "cbs": {
        "num_grads": "REFERENCES.md §4(h), MobileNetV1: N = 400 (of 2,400 images each there; per-sample here)",
        "block_size": "suite choice: whole-layer blocks as in the ResNet-20 scripts; the MobileNetV1 setting c = 10,000 (REFERENCES.md §4(h)) is not run yet",
    },
    "chita": {"num_grads": "no MobileNetV1 script (REFERENCES.md §5(h)): the ResNet-20 setting"},
}
# What a model's reference row is, where no script exists for it.
MODEL_NOTES = {
    "resnet20": "ResNet-20 is the model every reference repository scripts: the values are those scripts'.",
    "resnet56": "No reference repository ships a ResNet-56 script (REFERENCES.md §9): every value is the pruner's ResNet-20 setting, the closest "
    "documented one.",
    "mobilenetv1": "WoodFisher and CBS ship MobileNetV1 (ImageNet) scripts, CHITA none (REFERENCES.md §9): their N is used, the rest is the "
    "ResNet-20 setting where the MobileNetV1 one cannot run on CIFAR-10 or is not run yet (said per value).",
}


def _main_job(folder: str, model: str, checkpoint: str, options: Dict[str, Dict[str, Any]], sources: Dict[str, Dict[str, str]]) -> Dict[str, Any]:
    """A model's main sweep: the five pruners at their reference settings (``options``, each value's ``sources``)."""
    return {**_job(folder, model, checkpoint, "sweep", {"methods": FOUR}, options), "sources": sources}


def _variant_jobs(folder: str, model: str, checkpoint: str, chita_pp_iht: bool, active_set: bool = False) -> List[Dict[str, Any]]:
    """The whole-network IHT rows of CHITA (and of CHITA++ where it is not the model's reference CHITA++; and the active
    set where asked), labelled by solver."""
    jobs = [{**_job(folder, model, checkpoint, "variant", {"methods": ["chita"]}, CHITA_IHT), "sources": {"chita": IHT_SOURCES}}]
    if active_set:  # about as slow as IHT per run; on ResNet-20 only so far (the quadratic-model diagnostic finds it equal to IHT there)
        jobs.append(
            {
                **_job(folder, model, checkpoint, "variant", {"methods": ["chita"]}, {"chita": {"solver": "active-set"}}),
                "sources": {"chita": ACTIVE_SET_SOURCES},
            }
        )
    if chita_pp_iht:
        jobs.append({**_job(folder, model, checkpoint, "variant", {"methods": ["chita++"]}, CHITA_PP_IHT), "sources": {"chita++": PP_IHT_SOURCES}})
    return jobs


def _job(folder: str, model: str, checkpoint: str, role: str, sweep: Dict[str, Any], options: Dict[str, Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    """One suite job on the cifar10 preset: ``extra`` adds settings sections (e.g. ``objective``) or, with key ``tune``, the search."""
    tune = extra.pop("tune", None)
    settings = {"model": {"model": model, "checkpoint": checkpoint}, "sweep": sweep, **extra, "method_options": options}
    return {"folder": folder, "preset": "cifar10", "settings": settings, "role": role, **({"tune": tune} if tune else {})}


CELLS = {"sparsities": [0.7, 0.9], "seeds": [0]}  # the extra cells of ablation and diagnostic jobs


def _ablation_jobs(folder: str, checkpoint: str, model: str) -> List[Dict[str, Any]]:
    """The selection x update grid at 0.7 and 0.9, seed 0 (the default-update cells are the main sweep's runs)."""
    grid = (
        [("mp-hessian", u) for u in ("none", "obs-sum", "joint")] + [("woodfisher", u) for u in ("none", "joint")] + [("cbs", u) for u in ("none", "obs-sum")]
    )
    return [_job(folder, model, checkpoint, "ablation", {"methods": [method], **CELLS}, {method: {"update": update}}) for method, update in grid]


def _objective_jobs(folder: str, checkpoint: str, model: str) -> List[Dict[str, Any]]:
    """The quadratic-model diagnostic at 0.7 and 0.9, seed 0: every pruner and every CHITA solver measured under one
    reference whole-network Fisher (N = 500 x 16, lam = 1e-4)."""
    variants = [("mp", {}), ("woodfisher", {}), ("mp-hessian", {}), ("cbs", {})]
    variants += [("chita", {"solver": solver}) for solver in ("iht", "active-set", "backsolve", "block-backsolve")]
    return [
        _job(folder, model, checkpoint, "objective", {"methods": [method], **CELLS}, {method: options} if options else {}, objective={"objective_grads": 500})
        for method, options in variants
    ]


def _tuned_jobs(
    folder: str,
    checkpoint: str,
    model: str,
    methods: List[str],
    options: Optional[Dict[str, Dict[str, Any]]] = None,
    sweeps: Optional[Dict[str, Dict[str, Any]]] = None,
    first_pass: Optional[Dict[str, Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """Per method: its settings grid searched on the held-out training loss after pruning (seed 0, at 0.7 and 0.9; the
    results in <folder>/tuning/), then the main sweep with the chosen settings (the tuned row beside the defaults' row).
    ``options``: per method, base options the grid's cells override (what makes the cells fit the memory budget);
    ``sweeps``: per method, sweep settings of its job (e.g. a larger memory budget); ``first_pass``: per method, a
    first pass over its grid (``{"first_pass_keep": K}``: every cell at 0.7, the K best of them at 0.9 too)."""
    options, sweeps, first_pass = options or {}, sweeps or {}, first_pass or {}
    return [
        _job(
            folder,
            model,
            checkpoint,
            "tuned",
            {"methods": [method], **sweeps.get(method, {})},
            {method: options[method]} if method in options else {},
            tune={"method": method, "at_sparsities": [0.7, 0.9], "criterion": "pruned", "seeds": [0], **first_pass.get(method, {})},
        )
        for method in methods
    ]


TUNED = ["woodfisher", "cbs", "chita"]
# The layer-wise reconstruction family (no gradients): each pruner's published setting is its reference row (the class
# defaults are the best cell of its ResNet-20 search), and every model gets a tuned row from its own search.
LAYERWISE = ["sparsegpt", "obc", "wanda"]
LAYERWISE_PUBLISHED = {
    "sparsegpt": {"sparsity_rule": "uniform", "target": "pruned-inputs", "refit": False, "mode": "sequential", "mask": "adaptive", "num_images": 128},
    "obc": {"num_images": 1024, "damp": 1e-6, "sparsity_rule": "uniform", "target": "pruned-inputs", "mode": "sequential"},
    "wanda": {"mode": "sequential", "sparsity_rule": "uniform", "compare": "row"},
}
LAYERWISE_SOURCES = {
    "sparsegpt": {
        "sparsity_rule": "REFERENCES.md §6 (SparseGPT): the same sparsity in every layer",
        "target": "REFERENCES.md §6 (SparseGPT): |W X - W_hat X|^2 on the layer's inputs in the network pruned so far",
        "refit": "REFERENCES.md §6 (SparseGPT): the sweep's own compensation, no re-fit",
        "mask": "REFERENCES.md §6 (SparseGPT): the adaptive mask w^2 / [chol(H^-1)]_cc^2 per 128-column block",
        "num_images": "REFERENCES.md §6 (SparseGPT): 128 calibration samples",
        "mode": "REFERENCES.md §6 (SparseGPT): layers in sequence",
    },
    "obc": {
        "num_images": "REFERENCES.md §6 (OBC): 1024 calibration samples (its 10 augmentation rounds are not done here)",
        "damp": "REFERENCES.md §6 (OBC): rel_damp 0; the suite needs a positive damping, 1e-6 the nearest",
        "sparsity_rule": "REFERENCES.md §6 (OBC): every layer at the same sparsity",
        "target": "REFERENCES.md §6 (OBC): the layer's reconstruction on its own inputs",
        "mode": "suite choice: sequential, as SparseGPT (REFERENCES.md §6 does not say which inputs OBC's layers see)",
    },
    "wanda": {
        "mode": "REFERENCES.md §6 (Wanda): layers in sequence, as SparseGPT",
        "sparsity_rule": "REFERENCES.md §6 (Wanda): the same sparsity in every layer",
        "compare": "REFERENCES.md §6 (Wanda): scores compared within each output row",
    },
}
# ResNet-56 and MobileNetV1: SparseGPT's grid (108 cells) and OBC's (36) are cut by a first pass at 0.7.
LAYERWISE_FIRST_PASS = {"sparsegpt": {"first_pass_keep": 8}, "obc": {"first_pass_keep": 8}}


def _layerwise_jobs(folder: str, checkpoint: str, model: str, first_pass: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The layer-wise family on one model: its reference rows (each pruner's published setting) and its tuned rows."""
    reference = {**_job(folder, model, checkpoint, "sweep", {"methods": LAYERWISE}, LAYERWISE_PUBLISHED), "sources": LAYERWISE_SOURCES}
    return [reference, *_tuned_jobs(folder, checkpoint, model, LAYERWISE, first_pass=first_pass)]


# MobileNetV1's grids: WoodFisher's N = 1000 cells store G in bfloat16 (6.4 GB instead of 12.8 GB); CBS (no N axis) at N = 400.
MNV1_TUNING_OPTIONS = {"woodfisher": {"dtype": "bfloat16"}, "cbs": {"num_grads": 400}}
# ... and WoodFisher's blocks of 2,000 with N = 1000 still need 9.1 GiB (G, its padded copy, the factors): a 12 GiB budget
# for that job (the suite runs one job at a time; a 24 GB machine holds it). A cell over the budget would be skipped.
MNV1_TUNING_SWEEPS = {"woodfisher": {"memory_budget_gb": 12.0}}
# CHITA's grid covers its structure (6 solver/block settings x 4 dampings x 2 N = 48 cells): on ResNet-56 and MobileNetV1,
# where a cell costs minutes to an hour of CPU, every cell is scored at 0.7 and the 8 best there at 0.9 too.
FIRST_PASS = {"chita": {"first_pass_keep": 8}}


SUITES: Dict[str, Dict[str, Any]] = {
    "cifar10": {
        "description": "MP, WoodFisher, CBS, CHITA and CHITA++ and the layer-wise SparseGPT, ExactOBS/OBC and Wanda at their published "
        "settings on the three CIFAR-10 _jpeg checkpoints, sparsities 0.5-0.95, seeds 0-2, with and without REFLOW; on each model also "
        "WoodFisher, CBS, CHITA, SparseGPT, OBC and Wanda with settings tuned on the held-out training loss; on ResNet-20 the selection x "
        "update ablation and the quadratic-model diagnostic",
        "notes": MODEL_NOTES,
        "jobs": [
            _main_job("cifar10-resnet20", "resnet20", R20, {}, {}),
            *_variant_jobs("cifar10-resnet20", "resnet20", R20, chita_pp_iht=True, active_set=True),
            *_ablation_jobs("cifar10-resnet20", R20, "resnet20"),
            *_objective_jobs("cifar10-resnet20-objective", R20, "resnet20"),
            *_tuned_jobs("cifar10-resnet20", R20, "resnet20", TUNED),
            *_layerwise_jobs("cifar10-resnet20", R20, "resnet20", {"sparsegpt": {"first_pass_keep": 16}}),
            _main_job("cifar10-resnet56", "resnet56", R56, CHITA_PP_IHT, {"chita++": {**PP_IHT_SOURCES, "solver": PP_IHT_ONLY}}),
            *_variant_jobs("cifar10-resnet56", "resnet56", R56, chita_pp_iht=False),
            *_tuned_jobs("cifar10-resnet56", R56, "resnet56", TUNED, first_pass=FIRST_PASS),
            *_layerwise_jobs("cifar10-resnet56", R56, "resnet56", LAYERWISE_FIRST_PASS),
            _main_job(
                "cifar10-mobilenetv1",
                "mobilenetv1",
                MNV1,
                {**MNV1_OPTIONS, **CHITA_PP_IHT},
                {**MNV1_SOURCES, "chita++": {**PP_IHT_SOURCES, "solver": PP_IHT_ONLY}},
            ),
            *_variant_jobs("cifar10-mobilenetv1", "mobilenetv1", MNV1, chita_pp_iht=False),
            *_tuned_jobs("cifar10-mobilenetv1", MNV1, "mobilenetv1", TUNED, MNV1_TUNING_OPTIONS, MNV1_TUNING_SWEEPS, FIRST_PASS),
            *_layerwise_jobs("cifar10-mobilenetv1", MNV1, "mobilenetv1", LAYERWISE_FIRST_PASS),
        ],
    },
}


# The corrections comparison (issue 39): every correction from the same pruned weights. On the BN checkpoints REFLOW against
# the statistics correction and variance matching; on networks without BN (BatchNorm folded into the convolutions, the
# embedded CNN with GroupNorm or LayerNorm) the corrections that apply there.
BN_CORRECTIONS = {"corrections": ["none", "reflow", "statcorr", "variance-match"]}
FOLDED_CORRECTIONS = {"corrections": ["none", "repair", "variance-match"]}
PER_SAMPLE_NORM_CORRECTIONS = {"corrections": ["none", "statcorr", "repair", "variance-match"]}
CORRECTION_SPARSITIES = {"sparsities": [0.7, 0.8, 0.9], "seeds": [0, 1, 2]}
NO_BN_SPARSITIES = {"sparsities": [0.5, 0.6, 0.7, 0.8, 0.9], "seeds": [0, 1, 2]}


def _corrections_job(
    folder: str,
    model: str,
    checkpoint: str,
    methods: List[str],
    options: Dict[str, Dict[str, Any]],
    corrections: Dict[str, Any],
    without_bn: bool = False,
    **model_extra: Any,
) -> Dict[str, Any]:
    """A corrections job; a network without BatchNorm (``without_bn``, or BN folded) at 0.5-0.9, a BN one at 0.7-0.9."""
    sweep = {"methods": methods, **(NO_BN_SPARSITIES if without_bn or model_extra.get("fold_bn") else CORRECTION_SPARSITIES)}
    job = _job(folder, model, checkpoint, "sweep", sweep, options, corrections=corrections)
    job["settings"]["model"].update(model_extra)
    return job


def _embedded_job(model: str) -> Dict[str, Any]:
    """The embedded CNN with per-sample normalisation on digits (its dense weights trained once and cached, as the embedded default's)."""
    settings = {"model": {"model": model}, "sweep": {"methods": ["mp", "woodfisher"], **NO_BN_SPARSITIES}, "corrections": PER_SAMPLE_NORM_CORRECTIONS}
    return {"folder": "corrections-embedded", "preset": "embedded", "settings": settings, "role": "sweep"}


SUITES["corrections"] = {
    "description": "REFLOW against the statistics correction (statcorr) and variance matching (variance-match), each from the same pruned "
    "weights, for MP, WoodFisher and CHITA at their reference settings on the three CIFAR-10 _jpeg checkpoints (0.7-0.9, seeds 0-2); and "
    "the corrections that apply where there is no BatchNorm: ResNet-20 and MobileNetV1 with BN folded into their convolutions (repair, "
    "variance-match; 0.5-0.9) and the embedded CNN with GroupNorm and with LayerNorm (statcorr, repair, variance-match)",
    "notes": MODEL_NOTES,
    "jobs": [
        _corrections_job("corrections-resnet20", "resnet20", R20, ["mp", "woodfisher", "chita"], {}, BN_CORRECTIONS),
        _corrections_job("corrections-resnet56", "resnet56", R56, ["mp", "woodfisher", "chita"], {}, BN_CORRECTIONS),
        _corrections_job("corrections-mobilenetv1", "mobilenetv1", MNV1, ["mp", "woodfisher", "chita"], MNV1_OPTIONS, BN_CORRECTIONS),
        _corrections_job("corrections-folded", "resnet20", R20, ["mp", "woodfisher"], {}, FOLDED_CORRECTIONS, fold_bn=True),
        _corrections_job("corrections-folded", "mobilenetv1", MNV1, ["mp", "woodfisher"], MNV1_OPTIONS, FOLDED_CORRECTIONS, fold_bn=True),
        _embedded_job("smallcnn-gn"),
        _embedded_job("smallcnn-ln"),
        # a CIFAR network trained with GroupNorm (checkpoints/README.md; the path is the repository's, as every suite command runs from there)
        _corrections_job("corrections-resnet20-gn", "resnet20-gn", R20_GN, ["mp", "woodfisher"], {}, PER_SAMPLE_NORM_CORRECTIONS, without_bn=True),
    ],
}


# Sparsity a machine can use (issue 40): N:M (2:4, 4:8; the first convolution left dense, as the issue asks) for every
# pruner that can hold it, and whole channels removed (a quarter, half and three quarters of every prunable group) by
# filter norm, BN scale and the Fisher score, each ± REFLOW, three seeds.
# MobileNetV1's 3.2 M weights: every Hessian pruner at 400 gradients (its G then fits the 8 GiB default budget, as the cost plan says)
MNV1_NM_OPTIONS = {**MNV1_OPTIONS, "mp-hessian": {"num_grads": 400}, "chita": {"num_grads": 400, "minibatch": 16}}
NM_MODELS = [("resnet20", R20, {}), ("resnet56", R56, {}), ("mobilenetv1", MNV1, MNV1_NM_OPTIONS)]
NM_METHODS = ["mp", "mp-hessian", "woodfisher", "cbs", "chita", "sparsegpt", "wanda", "obc"]
CHANNEL_METHODS = ["mp", "bn-scale", "woodfisher"]
CHANNEL_SWEEP = {"methods": CHANNEL_METHODS, "sparsities": [0.25, 0.5, 0.75], "seeds": [0, 1, 2]}


def _nm_job(folder: str, model: str, checkpoint: str, pattern: str, options: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    targets = {"pattern": pattern, "exclude_first_conv": True}
    return _job(folder, model, checkpoint, "sweep", {"methods": NM_METHODS, "seeds": [0, 1, 2]}, options, targets=targets)


def _channel_job(folder: str, model: str, checkpoint: str, options: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return _job(folder, model, checkpoint, "sweep", dict(CHANNEL_SWEEP), options, targets={"pattern": "channels"})


SUITES["patterns"] = {
    "description": "N:M (2:4 and 4:8, first convolution dense) for MP, MP-Hessian, WoodFisher, CBS, CHITA, SparseGPT, Wanda and ExactOBS/OBC, and channel pruning (0.25, 0.5, 0.75 "
    "of every prunable channel group: MP filter norm, BN scale, WoodFisher's Fisher score) with FLOPs, parameters and measured latency, "
    "each ± REFLOW on the CIFAR-10 _jpeg checkpoints, seeds 0-2",
    "notes": MODEL_NOTES,
    "jobs": [
        *[_nm_job(f"nm-{model}", model, checkpoint, pattern, options) for model, checkpoint, options in NM_MODELS for pattern in ("2:4", "4:8")],
        _channel_job("channels-resnet20", "resnet20", R20, {}),
        _channel_job("channels-mobilenetv1", "mobilenetv1", MNV1, MNV1_OPTIONS),
    ],
}


# The paper's ImageNet comparison (issue 41): torchvision's ImageNet models the paper reports, every pruner family
# (magnitude; the Fisher pruners WoodFisher, CBS and CHITA; the layer-wise SparseGPT and Wanda) at 0.5-0.9 and at 2:4, each
# followed by every correction that applies to a BatchNorm network. Needs ImageNet as an ImageFolder tree (--data) and
# torchvision's weights (downloaded once). Sized for one 80 GB GPU (the imagenet preset: a working set may take 70 GiB);
# `reflowbench suite imagenet --dry-run` prints each job's estimated peak memory and time on the machine it runs on.
IMAGENET_MODELS = {  # model -> torchvision weights: the classic V1 recipe of each (the dense accuracy torchvision documents)
    "resnet50": "IMAGENET1K_V1",
    "resnext101_32x8d": "IMAGENET1K_V1",
    "regnet_x_32gf": "IMAGENET1K_V1",
    "mobilenet_v2": "IMAGENET1K_V1",
    "mobilenet_v3_large": "IMAGENET1K_V1",
}
IMAGENET_METHODS = ["mp", "woodfisher", "cbs", "chita", "sparsegpt", "wanda"]
IMAGENET_NM_METHODS = ["mp", "woodfisher", "chita", "sparsegpt", "wanda"]
ALL_BN_CORRECTIONS = {"corrections": ["none", "reflow", "statcorr", "variance-match"]}
# Per pruner, the published ImageNet setting where one exists (REFERENCES.md), each in G's bfloat16 and with layer groups
# chosen from the memory budget, so the largest model's gradients fit 70 GiB.
IMAGENET_OPTIONS = {
    "woodfisher": {"num_grads": 400, "minibatch": 400, "block_size": 2000, "dtype": "bfloat16", "layer_groups": 0},
    "cbs": {"num_grads": 240, "minibatch": 100, "block_size": 1000, "dtype": "bfloat16", "score_images": 10000},
    "chita": {"dtype": "bfloat16", "layer_groups": 0},
}
IMAGENET_SOURCES = {
    "woodfisher": {
        "num_grads": "REFERENCES.md §2 (ResNet-50 one-shot): N = 400",
        "minibatch": "REFERENCES.md §2 (ResNet-50 one-shot): mini-batch 400",
        "block_size": "REFERENCES.md §2 (ResNet-50): c = 2,000",
        "dtype": "suite choice: G in bfloat16 (half the memory; products in float32) so that ResNeXt-101's fits one GPU",
        "layer_groups": "suite choice: layer groups from the memory budget (the same result as one pass)",
    },
    "cbs": {
        "num_grads": "REFERENCES.md §4 (ResNet-50): N = 240",
        "minibatch": "REFERENCES.md §4 (ResNet-50): mini-batch 100",
        "block_size": "REFERENCES.md §4 (ResNet-50): c = 1,000",
        "dtype": "suite choice: G in bfloat16, as WoodFisher's",
        "score_images": "REFERENCES.md §4(c): 10,000 images (the code's validation images; here held-out training images, pitfall 8)",
    },
    "chita": {"dtype": "suite choice: G in bfloat16, as WoodFisher's", "layer_groups": "suite choice: layer groups from the memory budget"},
}


def _imagenet_job(model: str, weights: Optional[str], pattern: str, methods: List[str], options: Dict[str, Dict[str, Any]], preset: str) -> Dict[str, Any]:
    settings: Dict[str, Any] = {
        "model": {"model": model, **({"weights": weights} if weights else {})},
        "sweep": {"methods": methods},
        "corrections": ALL_BN_CORRECTIONS,
        "method_options": options,
    }
    if pattern != "unstructured":
        settings["targets"] = {"pattern": pattern}
    folder = f"imagenet-{model}" + ("" if pattern == "unstructured" else f"-{pattern.replace(':', 'of')}")
    return {"folder": folder, "preset": preset, "settings": settings, "role": "sweep", "sources": IMAGENET_SOURCES}


SUITES["imagenet"] = {
    "description": "the paper's ImageNet comparison: ResNet-50, ResNeXt-101 32x8d, RegNetX-32GF, MobileNetV2 and MobileNetV3-Large "
    "(torchvision's V1 weights) x MP, WoodFisher, CBS, CHITA, SparseGPT and Wanda at 0.5-0.9 and at 2:4, each with none, REFLOW, "
    "statcorr and variance-match, one seed; sized for one 80 GB GPU",
    "notes": {model: f"torchvision's {weights} weights (ImageNet, the classic recipe)" for model, weights in IMAGENET_MODELS.items()},
    "jobs": [
        *[_imagenet_job(model, weights, "unstructured", IMAGENET_METHODS, IMAGENET_OPTIONS, "imagenet") for model, weights in IMAGENET_MODELS.items()],
        *[_imagenet_job(model, weights, "2:4", IMAGENET_NM_METHODS, IMAGENET_OPTIONS, "imagenet") for model, weights in IMAGENET_MODELS.items()],
    ],
}

# The same jobs, smallest: the two smallest models with random weights, the cheapest settings, on any small ImageFolder tree
# (a few images per class). What CI runs end to end, and what a user runs first to check an installation and a data tree.
SMOKE_REFLOW = {"calib_batches": 2, "calib_batch_size": 8, "diag_images": 16}
SMOKE_DATA = {"dataset": "imagefolder", "eval_batch_size": 16, "workers": 0}  # imagefolder: ImageNet's transforms on any tree
SMOKE_OPTIONS = {
    "woodfisher": {"num_grads": 16, "minibatch": 1, "block_size": 2000, "dtype": "bfloat16"},
    "cbs": {"num_grads": 16, "minibatch": 1, "block_size": 1000, "candidates": 1, "max_iters": 2, "score_images": 16},
    "chita": {"num_grads": 8, "minibatch": 2},
    "sparsegpt": {"num_images": 16, "mode": "parallel"},
    "wanda": {"num_images": 16},
}
REFLOW_ONLY = {"corrections": ["none", "reflow"]}
SMOKE_SECOND_MODEL_METHODS = ["mp", "woodfisher", "sparsegpt"]  # one of each family on the second model (every pruner runs on the first)


def _smoke(job: Dict[str, Any], sparsities: Optional[List[float]], corrections: Dict[str, Any]) -> Dict[str, Any]:
    """``job`` with the smoke suite's REFLOW, data, corrections and (unless its pattern fixes them) sparsities."""
    sweep = {**job["settings"]["sweep"], **({"sparsities": sparsities} if sparsities else {})}
    return {**job, "settings": {**job["settings"], "sweep": sweep, "reflow": SMOKE_REFLOW, "data": SMOKE_DATA, "corrections": corrections}}


SUITES["imagenet-smoke"] = {
    "description": "the imagenet suite's jobs at their smallest, for any small ImageFolder tree (the end-to-end check CI runs): "
    "MobileNetV3-Small (0.9 and 2:4; every pruner) and MobileNetV2 (0.9; MP, WoodFisher, SparseGPT) with random weights, 16 "
    "gradients or calibration images, none and REFLOW; MP on MobileNetV3-Small at 0.5 with every correction (statcorr and variance-match "
    "pass the calibration images once per normalisation layer: the costly ones)",
    "jobs": [
        _smoke(_imagenet_job("mobilenet_v3_small", None, "unstructured", IMAGENET_METHODS, SMOKE_OPTIONS, "imagenet"), [0.9], REFLOW_ONLY),
        _smoke(_imagenet_job("mobilenet_v2", None, "unstructured", SMOKE_SECOND_MODEL_METHODS, SMOKE_OPTIONS, "imagenet"), [0.9], REFLOW_ONLY),
        _smoke(_imagenet_job("mobilenet_v3_small", None, "2:4", IMAGENET_NM_METHODS, SMOKE_OPTIONS, "imagenet"), None, REFLOW_ONLY),
        _smoke(_imagenet_job("mobilenet_v3_small", None, "unstructured", ["mp"], SMOKE_OPTIONS, "imagenet"), [0.5], ALL_BN_CORRECTIONS),
    ],
}


SUITES["resnet20-four"] = {
    "description": "the four pruners (MP, WoodFisher, CBS, CHITA) at their published defaults on the ResNet-20 _jpeg checkpoint, "
    "sparsities 0.5-0.95, seeds 0-2, with and without REFLOW: 72 runs, the end-to-end timing target (wall time against the floor). "
    "Since code 861bdc7 CHITA's default is the shipped block backsolve; the committed timing (code a7f240d) ran its whole-network IHT",
    "jobs": [
        {"folder": "cifar10-resnet20", "preset": "cifar10", "settings": {"model": {"model": "resnet20", "checkpoint": R20}, "sweep": {"methods": FOUR[:4]}}}
    ],
}


def load_suite(name: str) -> Dict[str, Any]:
    """The suite called ``name``, or the one in JSON file ``name``; checked for shape (settings are checked when planned)."""
    if name in SUITES:
        suite = SUITES[name]
    elif name.endswith(".json") or Path(name).is_file():
        suite = read_settings_file(Path(name), f"suite file {name}")
    else:
        raise ConfigError(f"unknown suite {name!r}: choose one of {sorted(SUITES)} or pass a suite JSON file")
    jobs = suite.get("jobs") if isinstance(suite, dict) else None
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) and isinstance(j.get("folder"), str) and j["folder"] for j in jobs):
        raise ConfigError(f'suite {name}: needs {{"jobs": [{{"folder": NAME, "preset": ..., "settings": {{...}}}}, ...]}} with a folder name per job')
    return suite


def fill_placeholders(value: Any, models_dir: str) -> Any:
    """``value`` with ``{models}`` replaced by ``models_dir`` in every string (nested dicts and lists)."""
    if isinstance(value, str):
        return value.replace("{models}", models_dir)
    if isinstance(value, list):
        return [fill_placeholders(v, models_dir) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, models_dir) for k, v in value.items()}
    return value


def suite_name(name: str) -> str:
    """A folder-friendly name of a suite (a file's stem for suite files)."""
    return name if name in SUITES else Path(name).stem
