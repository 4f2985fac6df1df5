"""The suite report's Fair settings section: the defaults row beside the tuned row, by run key."""

from reflowbench.reports.fair_settings import fair_settings_lines
from reflowbench.schema.tuned import TunedRow


def _run(key, method, sparsity, seed, pruned, reflow):
    return {
        "key": key,
        "model": "m",
        "method": method,
        "label": method,
        "sparsity": sparsity,
        "seed": seed,
        "pruned": {"top1": pruned},
        "reflow": {"top1": reflow},
    }


def _row(**changes):
    base = dict(
        folder="f",
        model="m",
        method="woodfisher",
        defaults={"damp": 1e-5},
        chosen={"damp": 1e-3},
        defaults_keys=frozenset({"d0", "d1"}),
        tuned_keys=frozenset({"t0"}),
        table="f/tuning/m_woodfisher.md",
        chosen_loss=1.0,
        defaults_loss=1.25,
    )
    return TunedRow(**{**base, **changes})


RUNS = [
    _run("d0", "woodfisher", 0.8, 0, 20.0, 70.0),
    _run("d1", "woodfisher", 0.8, 1, 30.0, 72.0),
    _run("t0", "woodfisher", 0.8, 0, 40.0, 73.0),
    _run("x9", "woodfisher", 0.8, 0, 99.0, 99.0),  # another configuration of the method: in neither row
    _run("m0", "mp", 0.8, 0, 11.0, 69.0),
]


def test_the_rows_are_picked_by_run_key_and_a_shorter_row_shows_its_seeds(tmp_path):
    (tmp_path / "f" / "tuning").mkdir(parents=True)
    (tmp_path / "f" / "tuning" / "m_woodfisher.md").write_text("table")
    text = "\n".join(fair_settings_lines(RUNS, [_row()], tmp_path))
    assert (
        "**m, woodfisher**: defaults `damp=1e-05`; tuned `damp=0.001` (relative loss 1.000, the defaults' 1.250; [search](../f/tuning/m_woodfisher.md))" in text
    )
    assert "| 0.8 | 25.00 ± 7.07 → 71.00 ± 1.41 | 40.00 → 73.00 (1 seed) | 69.00 |" in text


def test_a_search_that_chose_the_defaults_or_is_open_says_so(tmp_path):
    chose_defaults = "\n".join(fair_settings_lines(RUNS, [_row(chosen={}, tuned_keys=frozenset({"d0", "d1"}))], tmp_path))
    assert "the search chose them (relative loss 1.000; no table yet): the tuned row is the defaults row" in chose_defaults and "| 0.8 |" not in chose_defaults
    still_open = "\n".join(fair_settings_lines(RUNS, [_row(chosen=None, tuned_keys=frozenset(), chosen_loss=None, scored=3, needed=16)], tmp_path))
    assert "settings search open (3 of 16 scores in, no table yet)" in still_open


def test_searched_options_are_those_the_grid_varies_or_sets_away_from_the_defaults():
    from reflowbench.harness.suite import searched_options

    defaults = {"damp": 1e-5, "damp_mode": "absolute", "dtype": "float32", "chunk_images": 16, "num_grads": 400}
    cells = [
        {"damp": 1e-5, "damp_mode": "absolute", "dtype": "bfloat16", "chunk_images": 16},
        {"damp": 1e-2, "damp_mode": "relative", "dtype": "bfloat16", "chunk_images": 16},
    ]
    assert searched_options(cells, defaults) == ["damp", "damp_mode", "dtype"]  # chunk_images as in the defaults row; num_grads not searched
