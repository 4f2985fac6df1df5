"""The shapes of a channel-pruned network, saved beside its weights so the suite can rebuild it without pickled code.

A channel-pruned checkpoint (``reflowbench prune --pattern channels --save``) is a plain dict that
``torch.load(weights_only=True)`` reads: ``{"state_dict": {...}, "pruned_shapes": {"format": FORMAT, "modules":
{name: {"kind": "Conv2d", "in_channels": .., "out_channels": .., "groups": ..} | {"kind": "BatchNorm2d",
"num_features": ..} | {"kind": "Linear", "in_features": .., "out_features": ..}}}}``. Loading builds the --model,
replaces each listed module by one of the listed size (every other constructor argument copied from the original),
then loads the weights strictly.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn

from reflowbench.errors import CheckpointError

FORMAT = "reflowbench/pruned-shapes-1"
SHAPE_FIELDS = {"Conv2d": ("in_channels", "out_channels", "groups"), "BatchNorm2d": ("num_features",), "Linear": ("in_features", "out_features")}
_KINDS = {"Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "Linear": nn.Linear}


def module_shapes(model: nn.Module) -> Dict[str, Any]:
    """The description of every convolution, BatchNorm and linear layer's size in ``model``."""
    modules: Dict[str, Dict[str, Any]] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in SHAPE_FIELDS and name:
            modules[name] = {"kind": kind, **{f: int(getattr(module, f)) for f in SHAPE_FIELDS[kind]}}
    return {"format": FORMAT, "modules": modules}


def _resized(module: nn.Module, kind: str, size: Mapping[str, int]) -> nn.Module:
    if kind == "Conv2d":
        assert isinstance(module, nn.Conv2d)
        return nn.Conv2d(
            size["in_channels"],
            size["out_channels"],
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=size["groups"],
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if kind == "BatchNorm2d":
        assert isinstance(module, nn.BatchNorm2d)
        return nn.BatchNorm2d(
            size["num_features"], eps=module.eps, momentum=module.momentum, affine=module.affine, track_running_stats=module.track_running_stats
        )
    assert isinstance(module, nn.Linear)
    return nn.Linear(size["in_features"], size["out_features"], bias=module.bias is not None)


def _check_entry(name: str, entry: Any, source: str) -> Dict[str, int]:
    if not isinstance(entry, Mapping) or entry.get("kind") not in SHAPE_FIELDS:
        raise CheckpointError(
            f"{source}: pruned_shapes entry {name!r} is not a Conv2d, BatchNorm2d or Linear description; re-save it with `reflowbench prune --save`"
        )
    fields = SHAPE_FIELDS[entry["kind"]]
    values = {f: entry.get(f) for f in fields}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values.values()):
        raise CheckpointError(f"{source}: pruned_shapes entry {name!r} needs positive integers {', '.join(fields)}, has {dict(values)}")
    if entry["kind"] == "Conv2d" and (values["in_channels"] % values["groups"] or values["out_channels"] % values["groups"]):
        raise CheckpointError(f"{source}: pruned_shapes entry {name!r}: {values['groups']} groups do not divide its channels {dict(values)}")
    return values  # type: ignore[return-value]


def apply_pruned_shapes(model: nn.Module, shapes: Any, source: str) -> nn.Module:
    """``model`` with every module ``shapes`` lists resized to its saved size (in place; returned); a :class:`CheckpointError`
    naming the problem for a description of another format, an unknown module, or one of another kind."""
    if not isinstance(shapes, Mapping) or shapes.get("format") != FORMAT or not isinstance(shapes.get("modules"), Mapping):
        found = shapes.get("format") if isinstance(shapes, Mapping) else type(shapes).__name__
        raise CheckpointError(
            f"{source}: its pruned_shapes are not in format {FORMAT} (found {found!r}): re-save it with this version's `reflowbench prune --save`"
        )
    modules = dict(model.named_modules())
    for name, entry in shapes["modules"].items():
        values = _check_entry(name, entry, source)
        current = modules.get(name)
        if current is None or type(current).__name__ != entry["kind"]:
            found = "no such module" if current is None else f"a {type(current).__name__}"
            raise CheckpointError(
                f"{source} was pruned from another model: its {entry['kind']} {name!r} is {found} in {type(model).__name__}; choose the --model it was pruned from"
            )
        if all(int(getattr(current, f)) == v for f, v in values.items()):
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, _resized(current, entry["kind"], values))
    return model
