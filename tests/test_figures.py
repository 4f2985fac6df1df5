"""Figures a reader can read: short labels, one colour per method in every figure, legends that overprint nothing."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from reflowbench.reports import figures  # noqa: E402
from reflowbench.reports.compute_front import accuracy_vs_cost, cost_points  # noqa: E402
from reflowbench.reports.labels import MAX_LABEL, method_colors, set_short_labels  # noqa: E402
from reflowbench.schema.results import annotate_variants  # noqa: E402

SPARSITIES = (0.5, 0.7, 0.8, 0.9)


def _run(model, method, options, sparsity, seed, key, top1):
    return {
        "key": key,
        "model": model,
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "settings": {"reflow": {"calib_batches": 50}},
        "options": options,
        "dense": {"top1": 90.0},
        "pruned": {"top1": top1 - 20 * sparsity},
        "reflow": {"top1": top1 - 5 * sparsity},
        "variance": {"layers": ["bn1", "bn2", "bn3"], "pruned_ratio": [0.5, 0.2, 0.1], "reflow_ratio": [1.0, 0.9, 0.8]},
        "cost": {"prune": {"seconds": 1.0 + seed}, "recalibrate": {"seconds": 0.5}},
    }


CONFIGS = {  # method -> {configuration name: options}; "ref" is each method's reference
    "mp": {"ref": {"scope": "global"}},
    "woodfisher": {"ref": {"damp": 1e-5, "block_size": 0}, "tuned": {"damp": 1e-4, "block_size": 2000}},
    "cbs": {"ref": {"damp": 1e-5, "block_size": 0, "window": 10}, "tuned": {"damp": 1e-4, "block_size": 128, "window": 10}},
    "chita": {
        "ref": {"solver": "block-backsolve", "damp": 1e-4, "block_size": 500},
        "iht": {"solver": "iht", "damp": 1e-4, "block_size": 500},
        "tuned": {"solver": "block-backsolve", "damp": 1e-3, "block_size": 128},
    },
    "chita++": {"ref": {"solver": "block-backsolve", "recompute_steps": 16}, "iht": {"solver": "iht", "iht_iters": 20, "recompute_steps": 16}},
}


@pytest.fixture
def comparison():
    """Three models x five methods x their configurations x 4 sparsities x 2 seeds, with the roles a suite would give."""
    records, roles = [], {}
    for model in ("resnet20", "resnet56", "mobilenetv1"):
        for method, configs in CONFIGS.items():
            for index, (name, options) in enumerate(configs.items()):
                for sparsity in SPARSITIES:
                    for seed in (0, 1):
                        key = f"{model}-{method}-{name}-{sparsity}-{seed}"
                        records.append(_run(model, method, options, sparsity, seed, key, 80.0 + index))
                        if name in ("ref", "tuned"):
                            roles[key] = "reference" if name == "ref" else "tuned"
    annotate_variants(records)
    set_short_labels(records, roles=roles)
    return records


def test_short_labels_say_reference_tuned_or_the_one_setting_that_differs(comparison):
    shorts = {(r["model"], r["short"]) for r in comparison if r["model"] == "resnet20"}
    assert {s for _, s in shorts} == {
        "mp",
        "woodfisher reference",
        "woodfisher tuned",
        "cbs reference",
        "cbs tuned",
        "chita reference",
        "chita solver=iht",
        "chita tuned",
        "chita++ reference",
        "chita++ solver=iht +1",
    }
    assert all(len(r["short"]) <= MAX_LABEL for r in comparison)
    long = [r for r in comparison if len(r["label"]) > MAX_LABEL]
    assert long, "the full labels this test replaces are long"


def test_without_roles_the_configuration_at_the_reference_options_is_the_reference():
    records = [_run("m", "chita", {"solver": "block-backsolve"}, s, 0, f"a{s}", 80) for s in SPARSITIES]
    records += [_run("m", "chita", {"solver": "iht"}, s, 0, f"b{s}", 80) for s in SPARSITIES]
    annotate_variants(records)
    set_short_labels(records, reference_options={"chita": {"solver": "block-backsolve"}})
    assert sorted({r["short"] for r in records}) == ["chita reference", "chita solver=iht"]


def test_a_folder_report_calls_only_published_defaults_reference():
    """A layer-wise pruner's defaults are its search's choice (its tuned row, on ResNet-20): a folder report must not
    name a configuration at those options "reference"."""
    from reflowbench.harness.sweep import default_options
    from reflowbench.pruners import make_pruner
    from reflowbench.pruners.base import key_options

    published = default_options()
    assert {"mp", "woodfisher", "cbs", "chita"} <= set(published) and not {"sparsegpt", "obc", "wanda"} & set(published)
    records = [_run("m", "obc", key_options(make_pruner("obc")), s, 0, f"a{s}", 80) for s in SPARSITIES]
    records += [_run("m", "obc", {**key_options(make_pruner("obc")), "num_images": 1024}, s, 0, f"b{s}", 80) for s in SPARSITIES]
    annotate_variants(records)
    set_short_labels(records, reference_options=published)
    assert not any(r["role"] for r in records) and not any("reference" in r["short"] for r in records)


def _legends_and_axes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    return [legend.get_window_extent(renderer) for legend in legends], [ax.get_window_extent(renderer) for ax in fig.axes]


def _check_figure(fig):
    """Every line's method (its gid) has one colour across the figure; no legend overlaps a panel or another legend;
    every legend label is short."""
    colours = {}
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.collections]:
            method = artist.get_gid()
            if not method:
                continue
            colour = to_rgba(artist.get_color() if hasattr(artist, "get_linestyle") and artist in ax.lines else artist.get_facecolor()[0])
            colours.setdefault(method, set()).add(tuple(round(c, 4) for c in colour))
    assert colours, "no line carries its method"
    assert all(len(c) == 1 for c in colours.values()), colours
    expected = method_colors(colours)
    for method, (colour,) in colours.items():
        if method != "mp-reference":
            assert colour == tuple(round(c, 4) for c in to_rgba(expected[method]))
    legends, panels = _legends_and_axes(fig)
    for i, legend in enumerate(legends):
        assert not any(legend.overlaps(panel) for panel in panels), "a legend overprints a panel"
        assert not any(legend.overlaps(other) for other in legends[i + 1 :]), "two legends overprint each other"
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            assert all(len(text.get_text()) <= MAX_LABEL + len(" + REFLOW") for text in legend.get_texts())


@pytest.mark.parametrize("draw", ["accuracy_vs_sparsity", "accuracy_all_configurations", "signal_collapse", "cost_vs_sparsity", "accuracy_vs_cost"])
def test_every_figure_keeps_one_colour_per_method_and_its_legends_clear(comparison, tmp_path, monkeypatch, draw):
    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    path = tmp_path / "f.png"
    if draw == "signal_collapse":
        figures.signal_collapse(comparison, 0.9, path)
    elif draw == "accuracy_vs_cost":
        accuracy_vs_cost(cost_points(comparison), 0.8, path)
    else:
        getattr(figures, draw)(comparison, path)
    assert path.stat().st_size > 10_000
    if draw != "accuracy_vs_cost":  # its single figure legend sits below the panels: checked for overlap too
        assert len(kept["fig"].axes) >= 3
    _check_figure(kept["fig"])


def test_the_main_figure_draws_one_curve_per_method_and_mp_reflow_as_the_grey_line(comparison, tmp_path, monkeypatch):
    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    figures.accuracy_vs_sparsity(comparison, tmp_path / "f.png")
    pruned, reflow = kept["fig"].axes[0], kept["fig"].axes[1]
    methods = [line.get_gid() for line in reflow.lines if line.get_gid()]
    assert sorted(methods) == sorted(["mp-reference", "woodfisher", "cbs", "chita", "chita++"])  # MP + REFLOW is the grey line
    assert sorted(line.get_gid() for line in pruned.lines if line.get_gid()) == sorted(["mp-reference", "mp", "woodfisher", "cbs", "chita", "chita++"])
    labels = {line.get_label() for line in reflow.lines if line.get_gid() == "chita"}
    assert labels == {"chita tuned"}  # the best chita configuration after REFLOW in the fixture (the last of three, 2 points up)


def test_a_broken_figure_fails_the_check(comparison, tmp_path, monkeypatch):
    """The check itself can fail: a method drawn in two colours, or a legend moved onto a panel."""
    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    figures.accuracy_vs_sparsity(comparison, tmp_path / "f.png")
    fig = kept["fig"]
    next(line for line in fig.axes[2].lines if line.get_gid() == "cbs").set_color("black")
    with pytest.raises(AssertionError):
        _check_figure(fig)
    kept.clear()
    figures.accuracy_vs_sparsity(comparison, tmp_path / "g.png")
    fig = kept["fig"]
    fig.axes[1].legend(loc="center")
    with pytest.raises(AssertionError, match="overprints a panel"):
        _check_figure(fig)


def test_a_configuration_with_fewer_sparsities_is_judged_on_the_shared_ones():
    """A row still running at its last sparsity must not lose to (or win against) another on points it lacks."""
    from reflowbench.reports.figures import _curves, best_per_method

    records = [_run("m", "chita++", {"solver": "iht"}, s, 0, f"i{s}", 70.0 if s < 0.9 else 90.0) for s in SPARSITIES]
    records += [_run("m", "chita++", {"solver": "block-backsolve"}, s, 0, f"b{s}", 80.0) for s in SPARSITIES[:-1]]
    annotate_variants(records)
    set_short_labels(records, reference_options={"chita++": {"solver": "block-backsolve"}})
    best = best_per_method(_curves(records, "m"))
    assert next(r for r in records if r["label"] == best["chita++"])["options"]["solver"] == "block-backsolve"
