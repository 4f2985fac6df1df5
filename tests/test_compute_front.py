"""Accuracy for the compute: the Pareto front of pruning seconds against top-1 after REFLOW, and its table."""

from reflowbench.reports.compute_front import CostPoint, compute_front_rows, cost_points, pareto_front


def _record(label: str, sparsity: float, seconds: float, pruned: float, reflow: float, seed: int = 0) -> dict:
    return {
        "model": "m",
        "method": label.split()[0],
        "label": label,
        "sparsity": sparsity,
        "seed": seed,
        "cost": {"prune": {"seconds": seconds}},
        "pruned": {"top1": pruned},
        "reflow": {"top1": reflow},
    }


def test_pareto_front_keeps_each_point_no_cheaper_point_matches():
    points = [
        CostPoint("slow-worse", 50.0, 10.0, 70.0, 3),
        CostPoint("cheap", 0.1, 10.0, 80.0, 3),
        CostPoint("dear-best", 900.0, 60.0, 85.0, 3),
        CostPoint("mid", 20.0, 40.0, 82.0, 3),
        CostPoint("mid-tie", 30.0, 40.0, 82.0, 3),  # no better than the cheaper "mid": off the front
    ]
    assert [p.label for p in pareto_front(points)] == ["cheap", "mid", "dear-best"]


def test_compute_front_rows_name_the_best_the_cheapest_near_it_and_the_front():
    records = []
    for sparsity in (0.5, 0.7, 0.9):
        for seed in (0, 1):
            records += [
                _record("mp", sparsity, 0.05, 10.0, 80.0 - 10 * sparsity, seed),
                _record("woodfisher", sparsity, 20.0, 50.0, 80.6 - 10 * sparsity, seed),
                _record("chita", sparsity, 500.0, 60.0, 81.0 - 10 * sparsity, seed),
            ]
    records.append(_record("chita", 0.9, 500.0, 60.0, 72.0 + 2.0, seed=2))  # a third seed on one cell only
    header, rows = compute_front_rows(cost_points(records), near=0.5)
    assert header[3] == "cheapest within 0.5 points"
    by_sparsity = {row[1]: row for row in rows}
    best, cheapest, times, front = by_sparsity["0.5"][2:]
    assert best == "chita 76.00 in 500 s (2 seeds)" and cheapest == "woodfisher 75.60 in 20 s (2 seeds)" and times == "25×"
    assert front.split("; ")[0] == "mp 75.00 in 0.05 s (2 seeds)" and len(front.split("; ")) == 3
    assert by_sparsity["0.9"][2] == "chita 72.67 in 500 s" and by_sparsity["0.9"][3] == "chita 72.67 in 500 s" and by_sparsity["0.9"][4] == "1.0×"


def test_best_method_rows_set_mp_reflow_against_the_fisher_pruners_and_the_layerwise_against_both():
    from reflowbench.reports.suite_report import best_method_rows

    records = [_record("mp", 0.8, 0.05, 11.0, 84.0, seed) for seed in (0, 1)]
    records += [_record("woodfisher", 0.8, 20.0, 40.0 + seed, 83.0, seed) for seed in (0, 1)]
    records += [_record("cbs", 0.8, 300.0, 70.0, 82.0, 0)]  # one seed only: its count is shown
    header, (row,) = best_method_rows(cost_points(records))
    cells = dict(zip(header, row))
    assert cells["best pruned (top-1 %)"] == "cbs 70.00 (1 seed)" and cells["best + REFLOW (top-1 %)"] == "mp 84.00"
    assert cells["MP + REFLOW"] == "84.00" and cells["best Fisher, no REFLOW"] == "cbs 70.00 (1 seed)"
    assert cells["MP + REFLOW − best Fisher no REFLOW"] == "+14.00" and cells["best Fisher + REFLOW"] == "woodfisher 83.00"
    assert cells["best Fisher + REFLOW − MP + REFLOW"] == "-1.00"
    assert cells["best layer-wise, no REFLOW"] == "–" and cells["best layer-wise + REFLOW − best Fisher + REFLOW"] == "–"
    records += [_record("sparsegpt", 0.8, 9.0, 75.0 + seed, 85.0, seed) for seed in (0, 1)]  # not a Fisher pruner
    header, (row,) = best_method_rows(cost_points(records))
    cells = dict(zip(header, row))
    assert cells["best Fisher, no REFLOW"] == "cbs 70.00 (1 seed)" and cells["best layer-wise, no REFLOW"] == "sparsegpt 75.50"
    assert cells["best layer-wise + REFLOW"] == "sparsegpt 85.00" and cells["best layer-wise + REFLOW − best Fisher + REFLOW"] == "+2.00"
