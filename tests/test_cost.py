"""The cost ledger: every phase starts from memory handed back to the OS, so its peak is its own."""

import pytest
import torch

from reflowbench.utils.cost import CostLedger, _glibc, current_rss_mb


@pytest.mark.skipif(_glibc() is None, reason="malloc_trim is glibc's; elsewhere release_freed_memory is a no-op")
def test_a_phase_starts_by_handing_freed_heap_memory_back_to_the_os():
    blocks = [torch.ones(4096) for _ in range(12000)]  # 16 KiB each (below glibc's mmap threshold: heap), ~190 MiB
    survivors = blocks[::16]  # every 16th kept: the heap cannot shrink from its top, only malloc_trim returns the holes
    del blocks
    before = current_rss_mb()
    ledger = CostLedger()
    with ledger.phase("after-the-temporaries"):
        inside = current_rss_mb()
    assert before - inside > 100, f"RSS {before:.0f} MiB before the phase, {inside:.0f} MiB inside: the freed holes stayed resident"
    assert ledger.get("after-the-temporaries").peak_rss_mb < before
    assert len(survivors) == 750


def test_every_phase_entry_releases_freed_memory_nested_ones_too(monkeypatch):
    import reflowbench.utils.cost as cost

    calls = []
    monkeypatch.setattr(cost, "release_freed_memory", lambda: calls.append(1))
    ledger = CostLedger()
    with ledger.phase("prune"):
        with ledger.phase("gradients"):
            pass
        with ledger.phase("curvature"):
            pass
    assert len(calls) == 3
