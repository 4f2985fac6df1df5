"""`reflowbench tune`: grid cells scored on the held-out training loss, resume, ranking, the tuned config, bad input."""

import json
import math

import pytest

from reflowbench.cli import main
from reflowbench.harness.tuning import grid_cells, rank_cells

QUICK = ["--calib-batches", "2", "--calib-batch-size", "32", "--diag-images", "64", "--seeds", "0", "--no-progress"]
GRID = {"damping": [{"damp": 1e-5}, {"damp": 1e-2, "damp_mode": "relative"}], "num_grads": [{"num_grads": 16}, {"num_grads": 32}]}


def test_grid_cells_are_the_product_of_the_axes():
    cells = grid_cells(GRID)
    assert len(cells) == 4 and {"damp": 1e-2, "damp_mode": "relative", "num_grads": 32} in cells


def _points(losses):
    """Tuning results from {cell: {sparsity: loss}} (seed 0)."""
    return [{"cell": c, "sparsity": s, "seed": 0, "loss_pruned": loss} for c, by_s in losses.items() for s, loss in by_s.items()]


def test_rank_cells_weighs_how_much_worse_not_the_place():
    # the MobileNetV1 WoodFisher case: "a" is 3.6x the best at 0.7 and narrowly first at 0.9, where every cell
    # collapsed to about chance; a mean rank ties it with "b" and "c", the relative loss puts it last
    losses = {"a": {0.7: 2.5, 0.9: 2.45}, "b": {0.7: 0.7, 0.9: 2.65}, "c": {0.7: 0.75, 0.9: 2.6}}
    ranking = rank_cells(_points(losses), "pruned")
    assert [score.cell for score in ranking] == ["b", "c", "a"]
    by_cell = {score.cell: score for score in ranking}
    assert by_cell["a"].relative_loss == pytest.approx(math.sqrt(2.5 / 0.7 * 2.45 / 2.45))  # by hand: geometric mean of loss / best
    assert by_cell["b"].relative_loss == pytest.approx(math.sqrt(0.7 / 0.7 * 2.65 / 2.45))
    assert all(score.unscored == 0 for score in ranking)


def test_rank_cells_is_scale_free_per_point_and_puts_unscored_points_last():
    losses = {"a": {0.7: 1.0, 0.9: 9.0}, "b": {0.7: 1.2, 0.9: 7.0}, "c": {0.7: 0.5, 0.9: float("inf")}}
    order = [score.cell for score in rank_cells(_points(losses), "pruned")]
    assert order == ["b", "a", "c"]  # c is best where it was scored, but diverged at 0.9: after every fully scored cell
    for cell in losses:
        losses[cell][0.9] *= 100.0  # one point's losses on another scale: the order does not move
    assert [score.cell for score in rank_cells(_points(losses), "pruned")] == order
    nothing = rank_cells(_points({"a": {0.7: float("nan")}}), "pruned")
    assert nothing[0].unscored == 1 and math.isinf(nothing[0].relative_loss)


def test_tune_scores_every_cell_resumes_and_its_config_runs(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    out = tmp_path / "out"
    args = ["tune", "--out", str(out), "--grid", str(grid), "--at-sparsities", "0.7,0.9", "--woodfisher-chunk-images", "16", *QUICK]
    assert main(args) == 0
    record = json.loads((out / "tuning" / "smallcnn_woodfisher.json").read_text())
    assert len(record["results"]) == 8 and all(r["loss_pruned"] > 0 and r["loss_reflow"] > 0 for r in record["results"])
    config = json.loads((out / "tuning" / "smallcnn_woodfisher.config.json").read_text())
    chosen = config["method_options"]["woodfisher"]
    assert chosen in [{**cell, "chunk_images": 16} for cell in grid_cells(GRID)]
    table = (out / "tuning" / "smallcnn_woodfisher.md").read_text()
    assert "(chosen)" in table and table.count("\n| ") == 5  # header + 4 cells
    record["results"] = record["results"][:-1]  # as if interrupted before the last cell
    (out / "tuning" / "smallcnn_woodfisher.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main([*args, "--report-only"]) == 0  # the table from what is scored, saying it is partial
    assert "held-out loss" not in capsys.readouterr().out and "Partial search**: 7 of 8" in (out / "tuning" / "smallcnn_woodfisher.md").read_text()
    assert main(args) == 0
    assert capsys.readouterr().out.count("held-out loss") == 1  # only the missing cell ran again
    runs = tmp_path / "runs"
    config_path = out / "tuning" / "smallcnn_woodfisher.config.json"
    assert main(["run", "--config", str(config_path), "--methods", "woodfisher", "--sparsities", "0.7", "--out", str(runs), "--no-report", *QUICK]) == 0
    (run,) = (runs / "runs").glob("*.json")
    assert all(json.loads(run.read_text())["options"][k] == v for k, v in chosen.items())  # the tuned settings are recorded in the result


def test_a_first_pass_scores_every_cell_at_the_first_sparsity_and_only_the_best_at_the_others(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    out = tmp_path / "out"
    args = ["tune", "--out", str(out), "--grid", str(grid), "--at-sparsities", "0.7,0.9", "--woodfisher-chunk-images", "16", "--first-pass-keep", "2", *QUICK]
    assert main(args) == 0
    assert "first pass at s=0.7: 2 of 4 cells go on to s=0.9" in capsys.readouterr().out
    record = json.loads((out / "tuning" / "smallcnn_woodfisher.json").read_text())
    at_first = {r["cell"]: r["loss_pruned"] for r in record["results"] if r["sparsity"] == 0.7}
    went_on = {r["cell"] for r in record["results"] if r["sparsity"] == 0.9}
    assert len(at_first) == 4 and len(record["results"]) == 6  # 4 cells at 0.7, the 2 best of them at 0.9
    assert went_on == set(sorted(at_first, key=at_first.get)[:2])
    table = (out / "tuning" / "smallcnn_woodfisher.md").read_text()
    assert "**First pass**" in table and table.count("cut by the first pass at s=0.7") == 2 and "Partial search" not in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "options" not in line]
    assert all("cut by the first pass" not in row for row in rows[:2])  # a cut cell never outranks one scored at every sparsity
    chosen = json.loads((out / "tuning" / "smallcnn_woodfisher.config.json").read_text())["method_options"]["woodfisher"]
    assert {k: chosen[k] for k in ("damp", "num_grads")} in [{k: c.get(k) for k in ("damp", "num_grads")} for c in grid_cells(GRID)]
    assert main(args) == 0 and "held-out loss" not in capsys.readouterr().out  # resumed: nothing left to score


def test_rank_cells_puts_cells_cut_by_the_first_pass_after_the_fully_scored_ones():
    losses = {"a": {0.7: 1.0, 0.9: 3.0}, "c": {0.7: 1.2, 0.9: 2.0}, "b": {0.7: 1.05}}  # b was cut after 0.7: its ratio there is below a's and c's means
    assert [score.cell for score in rank_cells(_points(losses), "pruned")] == ["b", "c", "a"]  # what a ranking without the cut would say
    assert [score.cell for score in rank_cells(_points(losses), "pruned", frozenset({"b"}))] == ["c", "a", "b"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "mp"], "has no settings grid"),
        (["--criterion", "test"], "--criterion must be one of"),
        (["--at-sparsities", "0.7,1.2"], "sparsity must be in [0, 1)"),
        (["--sparsities", "0.5"], "use --at-sparsities instead of --sparsities"),
        (["--grid", "GRID_MISSING"], "cannot read the file"),
        (["--grid", "GRID_BAD_CELL"], "tuning grid cell"),
    ],
)
def test_tune_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    bad_cell = tmp_path / "bad.json"
    bad_cell.write_text(json.dumps({"damping": [{"damp": -1.0}]}))
    extra = [str(tmp_path / "none.json") if e == "GRID_MISSING" else str(bad_cell) if e == "GRID_BAD_CELL" else e for e in extra]
    assert main(["tune", "--out", str(tmp_path / "out"), *extra, *QUICK]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_cell_whose_pruner_diverges_is_scored_infinite_and_not_chosen(tmp_path, monkeypatch):
    """A setting under which the pruner diverges (DivergedError) is a result of the search, not its end: its losses are
    infinite, the error is kept with them, and another cell is chosen."""
    from reflowbench.errors import DivergedError
    from reflowbench.harness import tuning

    real_prune = tuning.prune_fresh

    def prune_fresh(state, pruner, sparsity, seed, ledger, keep_curvature=False):
        if pruner.options.damp == 1e-5:
            raise DivergedError("woodfisher: step 2 of 2 (sparsity 0.9) failed after the earlier steps' updates: overflow")
        return real_prune(state, pruner, sparsity, seed, ledger, keep_curvature)

    monkeypatch.setattr(tuning, "prune_fresh", prune_fresh)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"damping": GRID["damping"]}))
    out = tmp_path / "out"
    assert main(["tune", "--out", str(out), "--grid", str(grid), "--at-sparsities", "0.9", "--woodfisher-num-grads", "16", *QUICK]) == 0
    record = json.loads((out / "tuning" / "smallcnn_woodfisher.json").read_text())
    diverged = [r for r in record["results"] if "error" in r]
    assert len(diverged) == 1 and diverged[0]["loss_pruned"] == float("inf") and "overflow" in diverged[0]["error"]
    chosen = json.loads((out / "tuning" / "smallcnn_woodfisher.config.json").read_text())["method_options"]["woodfisher"]
    assert chosen["damp"] == 1e-2


def test_a_cell_over_the_memory_budget_is_skipped_then_scored_under_a_larger_one(tmp_path, capsys, monkeypatch):
    """A grid cell whose pruning needs more than --memory-budget-gb does not end the search: it is ranked last with the
    reason in the table, and a later `tune` with a budget it fits scores it (the other cells are kept)."""
    from reflowbench.errors import MemoryBudgetError
    from reflowbench.harness import tuning

    real_prune = tuning.prune_fresh

    def prune_fresh(state, pruner, sparsity, seed, ledger, keep_curvature=False):  # the 64-gradient cell "needs" 5 GiB
        if pruner.options.num_grads == 64 and state.spec.sweep.memory_budget_gb < 5:
            raise MemoryBudgetError(f"the gradient matrix needs 5.00 GiB, over the memory budget of {state.spec.sweep.memory_budget_gb:.2f} GiB")
        return real_prune(state, pruner, sparsity, seed, ledger, keep_curvature)

    monkeypatch.setattr(tuning, "prune_fresh", prune_fresh)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"num_grads": [{"num_grads": 16}, {"num_grads": 64}]}))
    out = tmp_path / "out"
    args = ["tune", "--out", str(out), "--grid", str(grid), "--at-sparsities", "0.9", *QUICK]
    assert main([*args, "--memory-budget-gb", "2"]) == 0
    record = json.loads((out / "tuning" / "smallcnn_woodfisher.json").read_text())
    (over,) = [r for r in record["results"] if r.get("over_budget_gb")]
    assert over["options"]["num_grads"] == 64 and over["loss_pruned"] == float("inf") and over["over_budget_gb"] == 2
    assert "over the 2 GiB memory budget (--memory-budget-gb)" in (out / "tuning" / "smallcnn_woodfisher.md").read_text()
    assert json.loads((out / "tuning" / "smallcnn_woodfisher.config.json").read_text())["method_options"]["woodfisher"]["num_grads"] == 16
    capsys.readouterr()
    assert main(args) == 0  # the default 8 GiB: the skipped cell is scored, the other kept
    assert "scoring 1 cells again that were over a smaller memory budget" in capsys.readouterr().out
    record = json.loads((out / "tuning" / "smallcnn_woodfisher.json").read_text())
    assert len(record["results"]) == 2 and all(r["loss_pruned"] < float("inf") and "over_budget_gb" not in r for r in record["results"])
    monkeypatch.setattr(tuning, "prune_fresh", lambda *a, **k: (_ for _ in ()).throw(MemoryBudgetError("needs 9 GiB")))
    assert main(["tune", "--out", str(tmp_path / "none"), "--grid", str(grid), "--at-sparsities", "0.9", *QUICK]) == 2
    assert "no cell of the woodfisher grid could be scored (2 tried): needs 9 GiB" in capsys.readouterr().err


def test_two_workers_share_one_search_and_score_each_point_once(tmp_path):
    """Two `reflowbench tune` processes on one --out at once (with a first pass): every point is measured once, by one
    of them, both leave with the search complete, and it holds what one process alone scores."""
    import os
    import subprocess
    import sys

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    args = ["tune", "--grid", str(grid), "--at-sparsities", "0.7,0.9", "--woodfisher-chunk-images", "16", "--first-pass-keep", "2", "--threads", "1", *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shared = tmp_path / "shared"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "reflowbench", *args, "--out", str(shared)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    measured = [output.count("held-out loss") for output in outputs]
    assert sum(measured) == 6 and all(measured), outputs  # 4 cells at 0.7 and the 2 best at 0.9, split between the two
    record = json.loads((shared / "tuning" / "smallcnn_woodfisher.json").read_text())
    points = [(r["cell"], r["sparsity"], r["seed"]) for r in record["results"]]
    assert len(points) == len(set(points)) == 6
    alone = tmp_path / "alone"
    subprocess.run([sys.executable, "-m", "reflowbench", *args, "--out", str(alone)], check=True, capture_output=True, env=env)
    solo = json.loads((alone / "tuning" / "smallcnn_woodfisher.json").read_text())
    losses = {(r["cell"], r["sparsity"]): r["loss_pruned"] for r in record["results"]}
    assert losses == pytest.approx({(r["cell"], r["sparsity"]): r["loss_pruned"] for r in solo["results"]})
    chosen = [json.loads((folder / "tuning" / "smallcnn_woodfisher.config.json").read_text()) for folder in (shared, alone)]
    assert chosen[0] == chosen[1]
    assert not list((shared / "tuning").glob("*.claim"))  # every claim and the file's lock released


def test_a_point_another_worker_holds_is_waited_for_not_measured_again(tmp_path, monkeypatch):
    import threading

    from reflowbench.harness import search_sharing
    from reflowbench.harness.tuning import _score_shared

    monkeypatch.setattr(search_sharing, "WAIT_POLL_S", 0.05)
    results = tmp_path / "model_method.json"
    empty = {"key": "k", "results": []}
    results.write_text(json.dumps(empty))

    def read():
        return json.loads(results.read_text())

    held = search_sharing.claim_point(results, ("b", 0.7, 0))  # "another worker" measuring point b
    assert held is not None and search_sharing.claim_point(results, ("b", 0.7, 0)) is None

    def other_worker_finishes():
        search_sharing.merge_into_file(results, read, lambda rec: rec["results"].append({"cell": "b", "sparsity": 0.7, "seed": 0}))
        held.release()

    measured, lines = [], []

    def measure(point):
        measured.append(point)
        search_sharing.merge_into_file(results, read, lambda rec: rec["results"].append(dict(zip(("cell", "sparsity", "seed"), point))))

    timer = threading.Timer(0.3, other_worker_finishes)
    timer.start()
    _score_shared(results, [("a", 0.7, 0), ("b", 0.7, 0)], read, measure, lines.append)
    timer.join()
    assert measured == [("a", 0.7, 0)]  # b was the other worker's: waited for, never measured here
    assert search_sharing.scored_points(read()) == {("a", 0.7, 0), ("b", 0.7, 0)}
    assert len(lines) == 1 and "1 scores are being measured by another worker" in lines[0]
    dead = search_sharing.point_file(results, ("c", 0.7, 0)).with_suffix(".json.claim")
    dead.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2**22 + 12345, "started": 0}))  # its worker is gone
    _score_shared(results, [("c", 0.7, 0)], read, measure, lines.append)
    assert measured[-1] == ("c", 0.7, 0)  # a dead worker's claim is taken over
