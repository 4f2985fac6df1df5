"""Memory estimates checked against a budget before large allocations."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from reflowbench.errors import MemoryBudgetError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        from reflowbench.errors import ConfigError

        raise ConfigError(f"unknown dtype {name!r}: choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def gib(num_bytes: float) -> float:
    return num_bytes / 2**30


def check_budget(
    num_bytes: float, budget_gb: float, what: str, knobs: str, log: Optional[Callable[[str], None]] = None, announce_over_gb: float = 0.25
) -> None:
    """Raise :class:`MemoryBudgetError` when ``num_bytes`` exceeds ``budget_gb``; announce large allocations.

    ``what`` describes the allocation (with its shape); ``knobs`` names the settings that shrink it.
    """
    if gib(num_bytes) > budget_gb:
        raise MemoryBudgetError(
            f"{what} needs {gib(num_bytes):.2f} GiB, over the memory budget of {budget_gb:.2f} GiB. "
            f"Lower it with {knobs}, or raise --memory-budget-gb if the machine has the memory."
        )
    if log is not None and gib(num_bytes) >= announce_over_gb:
        log(f"allocating {what}: {gib(num_bytes):.2f} GiB (budget {budget_gb:.2f} GiB)")
