"""What ``reflowbench list`` prints: the registered pruners with their option defaults, the corrections, the models, datasets and presets."""

from __future__ import annotations

from dataclasses import fields
from typing import List

from reflowbench.config import PRESETS
from reflowbench.corrections import CORRECTIONS
from reflowbench.datasets import DATASETS
from reflowbench.models import BUILTIN_MODELS, torchvision_names
from reflowbench.pruners import PRUNERS


def catalog_lines() -> List[str]:
    """One line per pruner, built-in model and dataset, then the torchvision models and the presets."""
    lines = ["pruners (patterns: the --pattern values each can produce):"]
    for name, cls in sorted(PRUNERS.items()):
        options = ", ".join(f"{f.name}={getattr(cls.Options(), f.name)!r}" for f in fields(cls.Options))
        patterns = ", ".join("N:M" if p == "n:m" else p for p in cls.PATTERNS)
        lines.append(f"  {name:<14} {cls.description} (patterns: {patterns})" + (f"  [{options}]" if options else ""))
    lines.append("corrections (--corrections; none: the pruned network alone):")
    lines += [f"  {name:<14} {cls.description}" for name, cls in sorted(CORRECTIONS.items())]
    lines.append("models (built-in):")
    lines += [f"  {name:<14} {entry.description} (data: {entry.dataset})" for name, entry in BUILTIN_MODELS.items()]
    lines.append(f"models (torchvision, ImageNet): {', '.join(torchvision_names())}")
    lines.append("datasets:")
    lines += [f"  {name:<14} {text}" for name, text in DATASETS.items()]
    lines.append(f"presets: {', '.join(sorted(PRESETS))}")
    return lines
