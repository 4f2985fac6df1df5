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


def test_a_phase_records_the_cpu_seconds_it_ran_apart_from_its_wall_seconds():
    import time

    ledger = CostLedger()
    with ledger.phase("asleep"):
        time.sleep(0.3)  # wall time passes, this process runs on no core (as when suspended)
    with ledger.phase("busy"):
        total, start = 0, time.process_time()
        while time.process_time() - start < 0.2:
            total += 1
    asleep, busy = ledger.as_dict()["asleep"], ledger.as_dict()["busy"]
    assert asleep["seconds"] >= 0.3 and asleep["cpu_seconds"] < 0.1
    assert busy["cpu_seconds"] >= 0.2


def _cpu_record(prune_seconds: float, prune_cpu, device: str = "cpu") -> dict:
    cost = {"prune": {"seconds": prune_seconds, "peak_rss_mb": 1.0, "peak_cuda_mb": 0.0}, "eval_pruned": {"seconds": 5.0, "cpu_seconds": 0.1}}
    if prune_cpu is not None:
        cost["prune"]["cpu_seconds"] = prune_cpu
    return {"model": "m", "method": "cbs", "label": "cbs", "sparsity": 0.8, "seed": 0, "cost": cost, "notes": {}, "environment": {"device": device}}


def test_timing_doubts_name_a_long_cpu_phase_that_hardly_ran_and_nothing_else():
    from reflowbench.reports.aggregate import cost_table, timing_doubt_lines
    from reflowbench.schema.results import timing_doubts

    suspended = _cpu_record(3000.0, 150.0)
    (doubt,) = timing_doubts(suspended)
    assert doubt.startswith("prune: 3000 s of wall time with 150 s on a CPU (5%)")
    assert timing_doubts(_cpu_record(3000.0, 2900.0)) == []  # ran throughout
    assert timing_doubts(_cpu_record(3000.0, 150.0, device="cuda")) == []  # the host waits for the device
    assert timing_doubts(_cpu_record(3000.0, None)) == []  # recorded before CPU seconds were
    assert timing_doubts(_cpu_record(30.0, 0.1)) == []  # eval_pruned above too: too short to judge
    lines = timing_doubt_lines([suspended, _cpu_record(3000.0, 2900.0)])
    assert lines[0].startswith("Timings to distrust: 1 runs") and lines[2].startswith("- m cbs s=0.8 seed 0: prune: 3000 s")
    assert timing_doubt_lines([_cpu_record(3000.0, 2900.0)]) == []
    header, rows = cost_table([suspended, _cpu_record(3000.0, None)])
    assert header[-1] == "prune CPU s / wall s" and rows[0][-1] == "0.05"  # the mean over the runs that measured it
