"""The gradient matrix G (N x d per target layer) with torch.func, model in eval mode.

Row i of G is the gradient of the mean cross-entropy over one group of ``minibatch`` training
images (``minibatch=1``: per-sample gradients) with respect to the target weights, multiplied by
the current keep-mask so already-pruned weights contribute nothing. Groups are processed in
chunks, by default with one ordinary batched backward whose per-group weight gradients are computed
per module from the captured activations and output gradients (:mod:`.group_gradients`: the same
values, faster, and without ``torch.func``, whose first ``grad`` call imports ``torch._dynamo`` and
keeps ~160 MiB of modules resident for the rest of the process); ``vmap(grad(loss))`` where the hooks
cannot be used (a target module called twice per forward, a module type they do not cover) or when
asked for (``engine="vmap"``). Rows are written straight into preallocated storage.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from reflowbench.errors import ConfigError, FisherError
from reflowbench.hessian.group_gradients import group_gradients, supports_group_hooks
from reflowbench.hessian.memory import check_budget, resolve_dtype
from reflowbench.schema.targets import TargetSet
from reflowbench.utils.memory_format import as_channels_last, channels_last_copy_bytes, channels_last_weights

Masks = Dict[str, torch.Tensor]

Batches = Iterator[Tuple[torch.Tensor, torch.Tensor]]
ENGINES = ("auto", "vmap", "hooks")


@dataclass
class GradientSpec:
    """How G is sampled and stored."""

    num_grads: int = 1000  # N: rows of G
    minibatch: int = 1  # m: images averaged into one row (1 = per-sample gradients)
    chunk_images: int = 128  # images per vmap call (memory vs speed)
    dtype: str = "float32"  # storage dtype of G: float32, float64, float16, bfloat16
    offload: bool = False  # keep G in host memory when computing on CUDA
    engine: str = "auto"  # vmap (per-group grad under vmap), hooks (one batched backward, per-group weight products per module), auto: hooks where the model allows, else vmap
    pad_to: int = (
        0  # allocate each layer's rows zero-padded to a multiple of this many columns (the Fisher block size), so the block Fisher needs no padded copy
    )

    @property
    def images(self) -> int:
        return self.num_grads * self.minibatch

    def validate(self) -> None:
        if self.num_grads < 1 or self.minibatch < 1 or self.chunk_images < 1:
            raise ConfigError(f"num_grads, minibatch and chunk_images must be >= 1, got {self.num_grads}, {self.minibatch}, {self.chunk_images}")
        if self.engine not in ENGINES:
            raise ConfigError(f"gradient engine must be one of {ENGINES}, got {self.engine!r}")


@dataclass
class GradientMatrix:
    """rows[name]: (N, d_l) gradient rows for target ``name`` (flattened weight order), in the storage dtype;
    storage[name], where present: the zero-padded (N, d_l') tensor whose first d_l columns ``rows[name]`` views."""

    rows: Dict[str, torch.Tensor]
    num_grads: int
    minibatch: int
    storage: Dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in {**self.rows, **self.storage}.values())


def padded_width(numel: int, pad_to: int) -> int:
    """d rounded up to a multiple of ``pad_to`` (``pad_to`` 0, or at least d: d itself: one whole-layer block)."""
    return numel if pad_to <= 0 or pad_to >= numel else -(-numel // pad_to) * pad_to


def layer_gradient_bytes(numel: int, spec: GradientSpec) -> int:
    """Bytes of one layer's rows of G (N x its padded width) as :func:`collect_gradients` allocates them."""
    return spec.num_grads * padded_width(numel, spec.pad_to) * torch.empty((), dtype=resolve_dtype(spec.dtype)).element_size()


def gradient_bytes(targets: "TargetSet", spec: GradientSpec) -> int:
    """Bytes of G as :func:`collect_gradients` allocates it (padding included)."""
    return sum(layer_gradient_bytes(t.numel, spec) for t in targets)


CHUNK_GRADIENT_BYTES = 256 * 2**20  # float32 per-group gradients computed at once at most (fewer groups per call on large models)
# What one call keeps per image for its backward, at most: every module's output and every tensor autograd saves, besides
# the weights. The allocator keeps the pass's small temporaries after it, so this also sets the resident memory every
# later phase starts from (ResNet-20: 3.2 MiB an image, 19 per-sample rows a call).
CHUNK_ACTIVATION_BYTES = 64 * 2**20


def groups_per_call(targets: "TargetSet", spec: GradientSpec, activation_bytes: int = 0) -> int:
    """Groups (rows) whose gradients one vmap/hooks call computes: ``chunk_images // minibatch``, capped so that their
    float32 gradients stay within :data:`CHUNK_GRADIENT_BYTES` (MobileNetV1, 3.2 M weights: 20 per-sample rows, not 128)
    and, given the activations one image keeps for its backward (bytes, :func:`image_activation_bytes`), their images'
    activations within :data:`CHUNK_ACTIVATION_BYTES`; at least one group."""
    by_images = spec.chunk_images // spec.minibatch
    by_gradients = CHUNK_GRADIENT_BYTES // (4 * max(1, targets.num_weights))
    by_activations = CHUNK_ACTIVATION_BYTES // (activation_bytes * spec.minibatch) if activation_bytes > 0 else by_images
    return max(1, min(by_images, by_gradients, by_activations))


def image_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes one image (``x``: (B, ...), its first is used) keeps alive for a backward pass: the output of every leaf
    module plus every tensor autograd saves for the backward, each storage counted once, the model's parameters and
    buffers not counted (they exist anyway). Measured on one forward with gradients on the input only (no backward, no
    weight gradient); the model's mode and parameters unchanged. ResNet-20: 1.8 MiB of outputs + 1.4 MiB saved."""
    outputs = [0]
    saved: Dict[int, int] = {}
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

    def count(module: nn.Module, inputs, output) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                outputs[0] += tensor.numel() * tensor.element_size()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    probe = x[:1].detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return outputs[0] + sum(saved.values())


def images_per_pass(spec: GradientSpec, activation_bytes: int) -> int:
    """Images of one mini-batch group whose backward runs at once: all ``minibatch`` of them, unless their activations
    exceed :data:`CHUNK_ACTIVATION_BYTES` (ResNet-50's 400-image groups at 224 x 224): then the group's gradient is the
    size-weighted mean of the gradients of parts of this many images (the same row, up to float rounding)."""
    if activation_bytes <= 0:
        return spec.minibatch
    return max(1, min(spec.minibatch, CHUNK_ACTIVATION_BYTES // activation_bytes))


def chunk_gradient_bytes(targets: "TargetSet", spec: GradientSpec, activation_bytes: int = 0) -> int:
    """Bytes one call holds besides G: its float32 gradients twice (the engine's output and the masked copy stored
    from it), a part-sum when a group is computed in parts, and its images' activations (``activation_bytes`` per
    image, :func:`image_activation_bytes`; for the groups per call that :func:`groups_per_call` allows with them, and a
    group's images at most :func:`images_per_pass` at once)."""
    groups = groups_per_call(targets, spec, activation_bytes)
    return 3 * groups * targets.num_weights * 4 + groups * images_per_pass(spec, activation_bytes) * activation_bytes


def _eval_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """:func:`image_activation_bytes` with the model in eval mode, as the collection runs it (mode restored)."""
    was_training = model.training
    model.eval()
    try:
        return image_activation_bytes(model, x)
    finally:
        model.train(was_training)


def _group_loss(model: nn.Module, frozen: Dict[str, torch.Tensor]) -> Callable:
    def loss(target_params: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**frozen, **target_params}, (x,))
        return F.cross_entropy(logits, y)

    return loss


def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The mean cross-entropy on one batch (x: (B, ...), y: (B,)), model in eval mode (restored), no gradients;
    inf when not finite."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x), y))
    finally:
        model.train(was_training)
    return loss if math.isfinite(loss) else math.inf


def probe_loss(model: nn.Module, targets: "TargetSet", x: torch.Tensor, y: torch.Tensor) -> float:
    """The mean cross-entropy on one batch (x: (B, ...), y: (B,)), or inf when it or the squared norm of its gradient
    for any target weight (in float32: what G^T G / N is built from) is not finite; model in eval mode (as in
    :func:`collect_gradients`), mode restored, no ``.grad`` left behind. A cheap probe (one forward and backward of B
    images) of whether the next gradient pass at these weights can succeed, and of the loss there."""
    was_training = model.training
    model.eval()
    weights = [t.weight for t in targets if t.weight.requires_grad]
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            if not bool(torch.isfinite(loss)):
                return math.inf
            grads = torch.autograd.grad(loss, weights, allow_unused=True) if weights else ()
        finite = all(g is None or bool(torch.isfinite(g.float().pow(2).sum())) for g in grads)
        return float(loss.detach()) if finite else math.inf
    finally:
        model.train(was_training)


def _check_gradient_memory(
    model: nn.Module,
    targets: "TargetSet",
    spec: GradientSpec,
    activation_bytes: int,
    device: torch.device,
    budget_gb: float,
    log: Optional[Callable[[str], None]],
    option_prefix: str,
) -> None:
    """Refuse, before any allocation, a G (with one chunk's gradients and activations and the channels-last weights) over
    the memory budget, naming the options that shrink it."""
    check_budget(
        gradient_bytes(targets, spec) + chunk_gradient_bytes(targets, spec, activation_bytes) + channels_last_copy_bytes(model),
        budget_gb,
        f"the gradient matrix ({spec.num_grads} x {targets.num_weights:,} weights, {spec.dtype}), one chunk's float32 gradients and activations"
        " and the convolution weights' channels-last copy",
        f"a smaller {option_prefix}num-grads, {option_prefix}dtype bfloat16/float16 (half the bytes), a smaller {option_prefix}chunk-images, fewer target layers"
        + (f", or {option_prefix}offload (keep G in host memory)" if device.type == "cuda" and not spec.offload else ""),
        log,
    )


def _allocate_rows(
    targets: "TargetSet", spec: GradientSpec, dtype: torch.dtype, device: torch.device
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(the zero-padded storage of the layers whose width is padded to ``spec.pad_to``, each layer's (N, d) rows: a view
    of its storage, or its own tensor)."""
    storage = {
        t.param_name: torch.zeros(spec.num_grads, padded_width(t.numel, spec.pad_to), dtype=dtype, device=device)
        for t in targets
        if padded_width(t.numel, spec.pad_to) > t.numel
    }
    rows = {
        t.param_name: storage[t.param_name][:, : t.numel] if t.param_name in storage else torch.empty(spec.num_grads, t.numel, dtype=dtype, device=device)
        for t in targets
    }
    return storage, rows


def _masked_finite(block: torch.Tensor, mask: Optional[torch.Tensor], name: str, first_row: int, option_prefix: str) -> torch.Tensor:
    """A layer's gradient rows (groups, d) times its flat keep-mask (when given); a FisherError naming the layer and the
    rows when any entry is not finite."""
    if mask is not None:
        block = block * mask
    if not torch.isfinite(block).all():
        raise FisherError(
            f"non-finite gradients in layer {name} (rows {first_row}..{first_row + block.shape[0] - 1}): "
            "the model's loss on these images is not finite: check the checkpoint and input normalisation; in a later "
            f"recomputation step the pruned model itself may have diverged (fewer {option_prefix}recompute-steps or a "
            f"larger {option_prefix}damp)"
        )
    return block


def _groups_at_once(model, params, module_of, loss, gx, gy, groups: int, use_hooks: bool, converted: bool):
    """The gradients of ``groups`` mini-batch groups (gx: (groups, m, ...)) in one call: (param name -> (groups, ...), use_hooks)."""
    grads = group_gradients(model, params, module_of, as_channels_last(gx.flatten(0, 1), converted), gy.flatten(0, 1), groups) if use_hooks else None
    if grads is None:  # vmap engine, or a target module called twice per forward (shared weights)
        with torch.no_grad():
            grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, gx, gy)
        return grads, False
    return grads, use_hooks


def _group_in_parts(model, params, module_of, loss, x, y, part: int, use_hooks: bool, converted: bool):
    """One group's gradient (x: (m, ...)) as the size-weighted mean of its parts' gradients, ``part`` images a pass:
    the gradient of the mean loss over the m images (param name -> (1, ...), use_hooks)."""
    total: Dict[str, torch.Tensor] = {}
    for start in range(0, len(y), part):
        xs, ys = x[start : start + part], y[start : start + part]
        grads, use_hooks = _groups_at_once(model, params, module_of, loss, xs.unsqueeze(0), ys.unsqueeze(0), 1, use_hooks, converted)
        weight = len(ys) / len(y)
        for name, value in grads.items():
            total[name] = total[name] + weight * value if name in total else weight * value
    return total, use_hooks


def collect_gradients(
    model: nn.Module,
    targets: "TargetSet",
    batches: Batches,
    spec: GradientSpec,
    masks: Optional[Masks] = None,
    device: Optional[torch.device] = None,
    budget_gb: float = 8.0,
    log: Optional[Callable[[str], None]] = None,
    progress: bool = False,
    option_prefix: str = "--<pruner>-",
) -> GradientMatrix:
    """Fill G from ``batches`` (which must hold at least N*m images; extra images are ignored).

    The model is switched to eval mode (BN uses its running statistics, so rows are independent)
    and restored afterwards. Raises :class:`FisherError` naming the layer on non-finite gradients.
    """
    spec.validate()
    device = device or next(model.parameters()).device
    store_device = torch.device("cpu") if spec.offload else device
    dtype = resolve_dtype(spec.dtype)
    batches = iter(batches)
    first = next(batches, None)  # its first image measures the activations a call keeps, before anything is allocated
    activation_bytes = _eval_activation_bytes(model, first[0].to(device)) if first is not None else 0
    per_call = groups_per_call(targets, spec, activation_bytes)
    _check_gradient_memory(model, targets, spec, activation_bytes, device, budget_gb, log, option_prefix)
    storage, rows = _allocate_rows(targets, spec, dtype, store_device)
    flat_masks = {name: m.reshape(-1).to(device=device, dtype=torch.float32) for name, m in (masks or {}).items()}
    param_names = {id(p): n for n, p in model.named_parameters()}
    target_keys = {t.param_name: param_names[id(t.weight)] for t in targets}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in target_keys.values()}
    frozen.update({n: b for n, b in model.named_buffers()})
    loss = _group_loss(model, frozen)
    module_of = {target_keys[t.param_name]: t.module_name for t in targets}
    use_hooks = spec.engine in ("hooks", "auto") and supports_group_hooks(model, list(module_of.values()))
    was_training = model.training
    model.eval()
    filled = 0
    pending_x: list = []
    pending_y: list = []
    from tqdm import tqdm

    bar = tqdm(total=spec.num_grads, disable=not progress, desc="gradients", unit="row", leave=False)
    try:
        with channels_last_weights(model) as converted:  # CPU convolutions run faster channels-last (weights and images)
            params = {target_keys[t.param_name]: t.weight.detach() for t in targets}
            for x, y in itertools.chain([first] if first is not None else [], batches):
                pending_x.append(x)
                pending_y.append(y)
                buffered = sum(len(b) for b in pending_y)
                while buffered >= spec.minibatch and filled < spec.num_grads:
                    xs, ys = torch.cat(pending_x), torch.cat(pending_y)
                    groups = min(per_call, len(ys) // spec.minibatch, spec.num_grads - filled)
                    used = groups * spec.minibatch
                    gx = xs[:used].to(device).view(groups, spec.minibatch, *xs.shape[1:])
                    gy = ys[:used].to(device).view(groups, spec.minibatch)
                    part = images_per_pass(spec, activation_bytes)
                    if part < spec.minibatch:  # one group (groups_per_call is 1 then) whose images' activations do not fit at once
                        grads, use_hooks = _group_in_parts(model, params, module_of, loss, gx[0], gy[0], part, use_hooks, converted)
                    else:
                        grads, use_hooks = _groups_at_once(model, params, module_of, loss, gx, gy, groups, use_hooks, converted)
                    for t in targets:
                        block = _masked_finite(
                            grads[target_keys[t.param_name]].reshape(groups, -1), flat_masks.get(t.param_name), t.param_name, filled, option_prefix
                        )
                        rows[t.param_name][filled : filled + groups] = block.to(dtype=dtype, device=store_device)
                    filled += groups
                    bar.update(groups)
                    pending_x, pending_y = [xs[used:]], [ys[used:]]
                    buffered = len(ys) - used
                if filled >= spec.num_grads:
                    break
    finally:
        bar.close()
        model.train(was_training)
    if filled < spec.num_grads:
        raise ConfigError(f"only {filled * spec.minibatch} Fisher images were available, {spec.images} needed (N={spec.num_grads} x m={spec.minibatch})")
    return GradientMatrix(rows=rows, num_grads=spec.num_grads, minibatch=spec.minibatch, storage=storage)
