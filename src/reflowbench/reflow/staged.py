"""Layer-by-layer moments in one forward pass, cut into stages: what the sequential corrections need, without a pass
per layer.

A sequential correction (``statcorr``, ``repair``, ``variance-match``) measures layer k's output with the layers before
it already corrected, corrects layer k, then measures layer k + 1. Made with a forward pass per layer, each cut short
after its layer, that is about (k + 1) / 2 whole passes over the calibration images (ResNet-56's 55 BatchNorm layers:
28). Here the network is traced once (``torch.fx``) and run node by node: before layer k the values still needed later
(the *frontier*: the input of layer k, a residual branch's saved input) are kept for every calibration batch, layer
k's output is measured from them, and after the caller has corrected layer k the run goes on from the same frontier
(layer k evaluated again, now corrected) to layer k + 1. Every node runs once, and each measured layer twice: about
two passes in all. The operations are the module's own, in the same order, on the same memory layouts, so the moments
are those of the pass-per-layer way (tests/test_corrections.py compares both).

The frontier of every batch is held at once: :func:`staged_layer_moments` measures its largest size on one batch first
and declines (returns None: the caller cuts passes short as before) when all batches' would exceed ``cache_bytes``,
when the model cannot be traced, or when a layer is called more than once or out of the order given.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from reflowbench.reflow.moments import ChannelMoments
from reflowbench.utils.memory_format import as_channels_last, channels_last_weights, runs_channels_last

Batches = Callable[[], Iterable[Tuple[torch.Tensor, torch.Tensor]]]
LayerMoments = Tuple[str, List[ChannelMoments]]  # (layer name, its output's moments per part)
Visit = Callable[[Callable[[int, torch.Tensor], None]], None]  # visit(fn): fn(batch index, value) for every batch

CACHE_BYTES = 2 * 2**30  # default cap on the frontier held for all calibration batches


class _Plan:
    """The traced graph's nodes in order, where each measured layer is called, and when each node is last used."""

    def __init__(self, traced: fx.GraphModule, names: Sequence[str]) -> None:
        self.traced = traced
        self.nodes = list(traced.graph.nodes)
        position = {node: index for index, node in enumerate(self.nodes)}
        self.last_use = {node: max((position[user] for user in node.users), default=-1) for node in self.nodes}
        calls: Dict[str, List[int]] = {}
        for index, node in enumerate(self.nodes):
            if node.op == "call_module":
                calls.setdefault(str(node.target), []).append(index)
        self.cuts = [calls[name][0] if len(calls.get(name, [])) == 1 else -1 for name in names]

    def usable(self) -> bool:
        """One input (the first node), one output (the last), each layer called exactly once, in the order given."""
        placeholders = [index for index, node in enumerate(self.nodes) if node.op == "placeholder"]
        ordered = all(cut > 0 for cut in self.cuts) and all(a < b for a, b in zip(self.cuts, self.cuts[1:]))
        return bool(self.cuts) and placeholders == [0] and self.nodes[-1].op == "output" and ordered

    def frontier(self, env: Dict[fx.Node, torch.Tensor], cut: int) -> Dict[fx.Node, torch.Tensor]:
        """The values of ``env`` produced before node ``cut`` and still used at or after it."""
        return {node: value for node, value in env.items() if self.last_use[node] >= cut}


def _run(interpreter: fx.Interpreter, env: Dict[fx.Node, torch.Tensor], nodes: Iterable[fx.Node]) -> Optional[torch.Tensor]:
    """Evaluate ``nodes`` in order on ``env`` (updated in place); the last node's value."""
    interpreter.env = env
    value = None
    for node in nodes:
        value = interpreter.run_node(node)
        env[node] = value
    return value


def _frontier_bytes(plan: _Plan, first: torch.Tensor) -> int:
    """The largest frontier at any cut for one batch (``first``), measured by running it through the whole graph."""
    interpreter = fx.Interpreter(plan.traced)
    env: Dict[fx.Node, torch.Tensor] = {plan.nodes[0]: first}
    _run(interpreter, env, plan.nodes[1:-1])
    size = {node: value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0 for node, value in env.items()}
    return max(sum(size[node] for node in plan.nodes[:cut] if plan.last_use[node] >= cut) for cut in plan.cuts)


def staged_walk(
    model: nn.Module, inputs: List[torch.Tensor], names: Sequence[str], take: str = "output", channels_last: bool = False, cache_bytes: int = CACHE_BYTES
) -> Optional[Iterator[Tuple[str, Visit]]]:
    """An iterator over (name, visit) for the layers ``names`` in order: ``visit(fn)`` calls ``fn(i, value)`` for every
    batch i of ``inputs`` (batches on the model's device), value the layer's output (``take="output"``) or its first
    input (``"input"``) with the model as the caller left it after the previous item; call it once per item, before
    changing the layer. ``channels_last``: the convolution weights channels-last while the model runs (give the inputs
    in that layout too). None when the staged run does not apply (see the module docstring). Eval mode, no gradients."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # a model torch.fx cannot trace (data-dependent control flow): passes cut short instead
        return None
    plan = _Plan(traced, names)
    if (
        not plan.usable()
        or not inputs
        or (take == "input" and not all(plan.nodes[cut].args and isinstance(plan.nodes[cut].args[0], fx.Node) for cut in plan.cuts))
    ):
        return None
    was_training = model.training
    model.eval()
    with torch.no_grad(), _layout(model, channels_last):
        per_batch = _frontier_bytes(plan, inputs[0])
    model.train(was_training)
    if per_batch * sum(len(x) for x in inputs) / max(1, len(inputs[0])) > cache_bytes:
        return None
    return _stages(model, plan, inputs, names, take, channels_last)


def staged_layer_moments(
    model: nn.Module,
    batches: Batches,
    names: Sequence[str],
    parts: int,
    device: torch.device,
    cache_bytes: int = CACHE_BYTES,
) -> Optional[Iterator[LayerMoments]]:
    """An iterator over (name, the layer's output moments per part: batch i in part i % ``parts``) for the layers
    ``names`` in order, each measured with the model as the caller left it after the previous item (what
    :func:`~reflowbench.reflow.moments.collect_split_moments` with ``stop_after`` measures, channels-last on the CPU as
    it runs); None when the staged run does not apply. The caller may change any layer's parameters between items."""
    converted = runs_channels_last(model)
    inputs = [as_channels_last(x.to(device, non_blocking=True), converted) for x, _ in batches()]
    walk = staged_walk(model, inputs, names, "output", converted, cache_bytes)
    return None if walk is None else _moments(model, walk, parts)


def _moments(model: nn.Module, walk: Iterator[Tuple[str, Visit]], parts: int) -> Iterator[LayerMoments]:
    modules = dict(model.named_modules())
    for name, visit in walk:
        moments = [ChannelMoments(modules[name]) for _ in range(parts)]
        visit(lambda index, output, moments=moments: moments[index % parts].add(output))
        yield name, moments


def _layout(model: nn.Module, channels_last: bool):
    return channels_last_weights(model) if channels_last else nullcontext()


def _stages(model: nn.Module, plan: _Plan, inputs: List[torch.Tensor], names: Sequence[str], take: str, channels_last: bool) -> Iterator[Tuple[str, Visit]]:
    envs: List[Dict[fx.Node, torch.Tensor]] = [{plan.nodes[0]: x} for x in inputs]
    interpreter = fx.Interpreter(plan.traced)
    was_training = model.training
    done = [1]  # every env holds the frontier before node done[0] (the input, node 0, given)
    for name, cut in zip(names, plan.cuts):

        def visit(fn: Callable[[int, torch.Tensor], None], cut: int = cut) -> None:
            model.eval()
            try:
                with torch.no_grad(), _layout(model, channels_last):
                    for index, env in enumerate(envs):
                        _run(interpreter, env, plan.nodes[done[0] : cut])
                        envs[index] = env = plan.frontier(env, cut)
                        node = plan.nodes[cut]
                        fn(index, env[node.args[0]] if take == "input" else _run(interpreter, dict(env), [node]))
                done[0] = cut
            finally:
                model.train(was_training)

        yield name, visit  # the caller changes the layer after visiting (outside the channels-last block: its writes are kept)
