"""Each pruner as its authors ship it: the reference settings, the source of every value, the README's generated block."""

from pathlib import Path

import pytest

from reflowbench.cli import main
from reflowbench.errors import ConfigError
from reflowbench.pruners import make_pruner
from reflowbench.pruners.base import NO_SOURCE, UNUSED, option_sources
from reflowbench.reports.readme_block import block_in, markers, replace_block
from reflowbench.reports.reference_settings import reference_lines, reference_page
from reflowbench.schema.tuned import ReferenceRow
from reflowbench.suites import SUITES

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = ("mp", "mp-layer", "woodfisher", "cbs", "chita", "chita++")


def test_chita_defaults_are_the_shipped_block_backsolve():
    """REFERENCES.md section 5 (h): Heuristic_LSBlock, blocks of 500, n = 500 x 16, lam = 1e-4, one stage (CHITA++: 16)."""
    options = make_pruner("chita").options
    assert (options.solver, options.block_size, options.num_grads, options.minibatch, options.damp, options.damp_mode) == (
        "block-backsolve",
        500,
        500,
        16,
        1e-4,
        "absolute",
    )
    assert (options.recompute_steps, options.update) == (1, "joint")
    plus = make_pruner("chita++").options
    assert (plus.solver, plus.block_size, plus.recompute_steps) == ("block-backsolve", 500, 16)
    for solver in ("iht", "active-set", "backsolve"):  # the other solvers stay, as values of --chita-solver
        assert make_pruner("chita", {"solver": solver}).options.solver == solver


@pytest.mark.parametrize("method", PUBLISHED)
def test_every_default_of_a_published_pruner_names_its_source(method):
    rows = option_sources(make_pruner(method))
    assert rows
    for option, _, source in rows:
        assert source != NO_SOURCE, f"{method}: option {option} has no source"
        assert source.startswith(("REFERENCES.md", "suite choice", "not used", "one-shot")), f"{method}.{option}: {source}"


def test_unused_options_follow_the_solver():
    unused = {option for option, _, source in option_sources(make_pruner("chita")) if source == UNUSED}
    assert {"iht_iters", "tolerance", "active_factor", "active_rounds", "form"} <= unused and "block_size" not in unused
    iht = {option for option, _, source in option_sources(make_pruner("chita", {"solver": "iht"})) if source == UNUSED}
    assert "iht_iters" not in iht and "block_size" in iht and "active_factor" in iht
    assert "schedule" not in {o for o, _, s in option_sources(make_pruner("chita++")) if s == UNUSED}  # 16 stages read it


def test_a_value_set_away_from_the_default_without_a_source_says_so_and_an_override_wins():
    rows = dict((o, s) for o, _, s in option_sources(make_pruner("woodfisher", {"damp": 1e-3})))
    assert rows["damp"].startswith("set by the run (the default 1e-05: REFERENCES.md")
    rows = dict((o, s) for o, _, s in option_sources(make_pruner("woodfisher", {"damp": 1e-3}), {"damp": "suite choice: because"}))
    assert rows["damp"] == "suite choice: because"


def test_every_value_the_cifar10_suite_sets_has_its_source():
    """A suite job that sets an option of a main-sweep method away from the pruner's defaults must say where it comes from."""
    for job in SUITES["cifar10"]["jobs"]:
        if job.get("role", "sweep") not in ("sweep", "variant"):
            continue
        for method, options in job["settings"].get("method_options", {}).items():
            sources = job.get("sources", {}).get(method, {})
            missing = sorted(set(options) - set(sources))
            assert not missing, f"{job['folder']}: {method} sets {missing} without a source"
    assert set(SUITES["cifar10"]["notes"]) == {"resnet20", "resnet56", "mobilenetv1"}


def _row(model="resnet20", method="chita"):
    return ReferenceRow("f", model, method, tuple(option_sources(make_pruner(method))), f"note on {model}", frozenset({"k"}))


def test_the_report_prints_every_option_with_its_source():
    page = "\n".join(reference_page("cifar10", [_row(), _row("resnet56", "woodfisher")]))
    assert "## resnet20" in page and "note on resnet20" in page and "### resnet56, woodfisher" in page
    assert "| solver | `block-backsolve` | REFERENCES.md §5(b): the block backsolve, the solver of every shipped script |" in page
    assert "| iht_iters | `100` | not used with these settings |" in page
    section = "\n".join(reference_lines([_row()], "reference-settings.md"))
    line = next(x for x in section.splitlines() if x.startswith("| resnet20 | chita |"))
    assert "solver=block-backsolve" in line and "num_grads=500" in line and line.endswith("| 6 |")
    assert reference_lines([], "x.md") == []


def test_the_readme_block_is_replaced_between_its_markers_and_refused_without_them(tmp_path):
    start, end = markers("demo")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{start}\nold table\n{end}\n\nafter\n")
    assert replace_block(readme, "demo", "new table\n") is True
    assert readme.read_text() == f"# title\n\n{start}\nnew table\n{end}\n\nafter\n"
    assert block_in(readme, "demo") == "new table"
    assert replace_block(readme, "demo", "new table") is False
    (tmp_path / "bare.md").write_text("# no block\n")
    with pytest.raises(ConfigError, match="no block to replace: add the lines <!-- reflowbench-summary:demo:start -->"):
        replace_block(tmp_path / "bare.md", "demo", "x")


def test_the_suite_command_refuses_a_readme_without_the_block_before_any_work(tmp_path, capsys):
    (tmp_path / "bare.md").write_text("# no block\n")
    assert main(["suite", "cifar10", "--out", str(tmp_path / "o"), "--report-only", "--readme", str(tmp_path / "bare.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--readme" in err[0] and "no block to replace" in err[0]
    assert not (tmp_path / "o").exists()


def test_the_readme_shows_the_committed_suite_summary_word_for_word():
    """The README's results block is the suite report's summary.md, never copied by hand: rewrite it with
    `reflowbench suite cifar10 --out reports --data ../shared/datasets/cifar10-jpeg.tar.gz --report-only --readme README.md`."""
    summary = (REPO / "reports" / "cifar10-suite" / "summary.md").read_text(encoding="utf-8").strip("\n")
    assert summary and block_in(REPO / "README.md", "cifar10") == summary
