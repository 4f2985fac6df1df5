"""Settings in one trip (config.build_settings): the precedence of the layers, the implied preset, narrowing a sweep,
and the flags a command does not take, refused alike."""

import pytest

from reflowbench.config import SettingsLayers, SweepNarrowing, build_settings, narrow_sweep, preset, suite_command_from_flags
from reflowbench.errors import ConfigError


def test_each_layer_wins_over_the_one_below():
    layers = SettingsLayers(
        preset="embedded",  # calib_batches 8, diag_images 256, seeds 0,1,2
        file={"reflow": {"calib_batches": 5, "diag_images": 99}, "sweep": {"seeds": [4]}},
        flags={"reflow": {"calib_batches": 3}},
    )
    spec = build_settings(layers).spec
    assert spec.reflow.calib_batches == 3  # flag over file over preset
    assert spec.reflow.diag_images == 99  # file over preset
    assert spec.sweep.seeds == [4]  # file over preset
    assert spec.reflow.calib_batch_size == 64  # the preset's, nothing above it
    assert spec.sweep.out == preset(None).sweep.out  # the default, nothing above it


def test_the_embedded_preset_is_implied_only_when_no_layer_names_a_model_or_data():
    assert build_settings(SettingsLayers()).preset_implied
    assert build_settings(SettingsLayers()).spec.model.model == "smallcnn"
    named_by_flag = build_settings(SettingsLayers(flags={"model": {"model": "resnet20"}}))
    named_by_file = build_settings(SettingsLayers(file={"data": {"data": "x.tar.gz"}}))
    for built in (named_by_flag, named_by_file):
        assert built.preset is None and not built.preset_implied
    assert build_settings(SettingsLayers(preset="none")).preset is None


def test_flags_are_type_checked_like_file_values():
    with pytest.raises(ConfigError, match="command-line flags: setting 'calib_batches' must be an integer"):
        build_settings(SettingsLayers(flags={"reflow": {"calib_batches": "many"}}))
    with pytest.raises(ConfigError, match="--config f.json: setting 'calib_batches' must be an integer"):
        build_settings(SettingsLayers(file={"reflow": {"calib_batches": "many"}}, file_source="--config f.json"))


def test_narrowing_sets_the_sweep_and_refuses_the_flags_it_replaces():
    narrowing = SweepNarrowing("prune", methods=["cbs"], sparsities=[0.9], seeds=[2], own_flags={"sparsities": "--sparsity"})
    spec = build_settings(SettingsLayers(preset="none"), narrowing).spec
    assert (spec.sweep.methods, spec.sweep.sparsities, spec.sweep.seeds) == (["cbs"], [0.9], [2])
    with pytest.raises(ConfigError, match="use --sparsity instead of --sparsities"):
        build_settings(SettingsLayers(preset="none", flags={"sweep": {"sparsities": [0.5]}}), narrowing)
    untouched = narrow_sweep(preset(None), SweepNarrowing("a job", seeds=[7]))
    assert untouched.sweep.seeds == [7] and untouched.sweep.methods == preset(None).sweep.methods


def test_a_pruners_flag_without_that_pruner_is_refused_but_a_file_may_carry_it():
    with pytest.raises(ConfigError, match="--woodfisher-damp sets an option of woodfisher, which this command does not run"):
        build_settings(SettingsLayers(preset="none", method_flags={"woodfisher": {"damp": 0.1}}))
    ran = build_settings(SettingsLayers(preset="none", flags={"sweep": {"methods": ["mp", "woodfisher"]}}, method_flags={"woodfisher": {"damp": 0.1}}))
    assert ran.spec.method_options["woodfisher"] == {"damp": 0.1}
    from_file = build_settings(SettingsLayers(preset="none", file={"method_options": {"woodfisher": {"damp": 0.1}}}))
    assert from_file.spec.method_options["woodfisher"] == {"damp": 0.1}


def test_run_suite_takes_the_suite_commands_flags_and_refuses_every_other():
    command = suite_command_from_flags({"sweep": {"out": "o", "seeds": [1], "threads": 2}, "data": {"data": "d.tar.gz"}}, {})
    assert (command.out, command.seeds, command.threads, command.data) == ("o", [1], 2, "d.tar.gz")
    for flags, methods, named in (
        ({"reflow": {"calib_batches": 4}}, {}, "--calib-batches"),
        ({"sweep": {"methods": ["mp"]}}, {}, "--methods"),
        ({"executor": {"executor": "submitit"}}, {}, "--executor"),
        ({}, {"cbs": {"window": 3}}, "--cbs-window"),
    ):
        with pytest.raises(ConfigError, match=f"not {named}"):
            suite_command_from_flags(flags, methods)
