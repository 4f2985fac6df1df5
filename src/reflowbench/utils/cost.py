"""Per-phase wall time and peak memory (RSS on the host, max allocated on CUDA)."""

from __future__ import annotations

import functools
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import torch


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (Linux) or since start, in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def release_freed_memory() -> None:
    """Hand memory freed by large temporaries back to the OS (glibc's ``malloc_trim``; a no-op elsewhere). glibc keeps
    freed blocks below its (adaptive) mmap threshold in the heap, so without this the gradient pass's temporaries stay
    resident under the factors that follow (about 0.4 GiB on ResNet-20 with N = 1000)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[Any]:
    """glibc, where the process has it (None elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseCost:
    """Cost of one phase: wall seconds, peak RSS (MiB), peak CUDA memory (MiB, 0 on CPU) and the CPU seconds this
    process spent in it (all its threads: ``cpu_seconds / seconds`` is about the thread count on an idle machine, far
    below 1 when the process was suspended or starved of cores)."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = 0.0
    cpu_seconds: float = 0.0

    def since(self, before: "PhaseCost") -> "PhaseCost":
        """What this accumulated cost added after ``before`` (an earlier copy of it): seconds and CPU seconds as the
        difference, the peaks as they are now."""
        return PhaseCost(self.seconds - before.seconds, self.peak_rss_mb, self.peak_cuda_mb, self.cpu_seconds - before.cpu_seconds)

    def merge(self, other: "PhaseCost") -> None:
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)
        self.peak_cuda_mb = max(self.peak_cuda_mb, other.peak_cuda_mb)


@dataclass
class CostLedger:
    """Phase name -> accumulated :class:`PhaseCost`; phases may repeat (costs add up) and nest.

    Nesting: an inner phase resets the kernel's peak-RSS counter, so before it does, the peak so far
    is credited to every enclosing phase, and the inner phase's peak is credited to them when it ends.

    Every phase starts by handing freed memory back to the OS (:func:`release_freed_memory`), so a phase's peak is
    what it needs on top of what is live, not the allocator's leftovers from the phase before (the gradient pass's
    temporaries under the curvature, the selection's under the update, the last run's evaluations under the next prune).
    """

    phases: Dict[str, PhaseCost] = field(default_factory=dict)
    _open: List[PhaseCost] = field(default_factory=list, repr=False)

    @contextmanager
    def phase(self, name: str, device: Optional[torch.device] = None) -> Iterator[None]:
        on_cuda = device is not None and torch.device(device).type == "cuda"
        peak_before = peak_rss_mb()
        release_freed_memory()
        for outer in self._open:
            outer.peak_rss_mb = max(outer.peak_rss_mb, peak_before)
        reset_peak_rss()
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        running = PhaseCost(peak_rss_mb=current_rss_mb())
        self._open.append(running)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if on_cuda:
                torch.cuda.synchronize(device)
            self._open.pop()
            running.seconds += time.perf_counter() - start  # plus any cost credited while open (see add)
            running.cpu_seconds += time.process_time() - cpu_start
            running.peak_rss_mb = max(running.peak_rss_mb, peak_rss_mb())
            if on_cuda:
                running.peak_cuda_mb = max(running.peak_cuda_mb, torch.cuda.max_memory_allocated(device) / 2**20)
            for outer in self._open:
                outer.peak_rss_mb = max(outer.peak_rss_mb, running.peak_rss_mb)
                outer.peak_cuda_mb = max(outer.peak_cuda_mb, running.peak_cuda_mb)
            self.phases.setdefault(name, PhaseCost()).merge(running)

    def add(self, name: str, cost: PhaseCost) -> None:
        """Credit a cost measured elsewhere (e.g. gradients reused from a cache) to phase ``name``."""
        self.phases.setdefault(name, PhaseCost()).merge(cost)
        for outer in self._open:
            outer.seconds += cost.seconds  # an enclosing phase (e.g. "prune") is charged the credited time too
            outer.cpu_seconds += cost.cpu_seconds
            outer.peak_rss_mb = max(outer.peak_rss_mb, cost.peak_rss_mb)
            outer.peak_cuda_mb = max(outer.peak_cuda_mb, cost.peak_cuda_mb)

    def get(self, name: str) -> PhaseCost:
        return self.phases.get(name, PhaseCost())

    def as_dict(self) -> Dict[str, Dict[str, float]]:
        return {
            name: {
                "seconds": round(c.seconds, 4),
                "cpu_seconds": round(c.cpu_seconds, 4),
                "peak_rss_mb": round(c.peak_rss_mb, 1),
                "peak_cuda_mb": round(c.peak_cuda_mb, 1),
            }
            for name, c in self.phases.items()
        }


def format_duration(seconds: float) -> str:
    """Seconds for a person: ``42 s``, ``17 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
