"""One settings search shared by several workers (processes on one machine, or cluster jobs on one file system).

Each (cell, sparsity, seed) score is claimed before it is measured (a claim file as the sweeps' runs have,
:mod:`reflowbench.harness.claims`: taken over when its worker is gone), so no two workers measure the same point; each
result is merged into the search's results file under a lock (a claim on the file itself), the file re-read first, so
no worker overwrites another's scores. A worker that finds every point it still needs held by another waits for them
(polling), so each worker leaves the search only once it is complete: the first pass's cut, and the chosen settings,
are the same whichever worker ends last. One worker alone claims, measures and writes as before.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from reflowbench.harness.claims import Claim, try_claim
from reflowbench.utils.io import atomic_write_json

Point = Tuple[str, float, int]  # (cell id, sparsity, seed)
Record = Dict[str, Any]

LOCK_POLL_S = 0.05  # between tries for the results file's lock (held for one read and one write)
WAIT_POLL_S = 10.0  # between looks at points another worker is measuring


def point_file(results_path: Path, point: Point) -> Path:
    """The name a point's claim is made for (``<results stem>.<cell>_s<sparsity>_seed<seed>.json``; only its
    ``.claim`` is ever written)."""
    cell, sparsity, seed = point
    return results_path.with_name(f"{results_path.stem}.{cell}_s{sparsity:g}_seed{seed}.json")


def claim_point(results_path: Path, point: Point) -> Optional[Claim]:
    """Claim ``point`` of the search; None when another live worker is measuring it."""
    return try_claim(point_file(results_path, point))


@contextmanager
def locked(results_path: Path) -> Iterator[None]:
    """Hold the results file's lock (its claim) for a read-modify-write; wait while another worker holds it."""
    while True:
        claim = try_claim(results_path)
        if claim is not None:
            break
        time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        claim.release()


def merge_into_file(results_path: Path, read: Callable[[], Record], change: Callable[[Record], None]) -> Record:
    """Under the lock: ``read()`` the file as it is now, apply ``change`` to that record, write it whole; the
    merged record is returned (other workers' scores included)."""
    with locked(results_path):
        record = read()
        change(record)
        atomic_write_json(results_path, record)
    return record


def scored_points(record: Record) -> set:
    """The (cell, sparsity, seed) points a results record holds."""
    return {(r["cell"], r["sparsity"], r["seed"]) for r in record["results"]}
