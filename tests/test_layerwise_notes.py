"""The report's section on what the layer-wise runs say about their layers."""

from reflowbench.reports.layerwise_notes import layerwise_note_lines


def _record(label, seed, notes):
    return {"model": "mobilenetv1", "label": label, "short": label, "seed": seed, "notes": notes}


def test_the_underdetermined_and_swept_layers_are_listed_per_configuration():
    records = [
        _record("sparsegpt reference", 0, {"layerwise": {"underdetermined": {"fc.weight": [128, 1024], "features.78.weight": [512, 1024]}}}),
        _record("sparsegpt reference", 1, {"layerwise": {"underdetermined": {"fc.weight": [120, 1024]}}}),
        _record("obc reference", 0, {"layerwise": {}, "obc_sweep_layers": ["features.78.weight"]}),
        _record("mp", 0, {}),
    ]
    text = "\n".join(layerwise_note_lines(records))
    assert "- mobilenetv1 sparsegpt reference: fc.weight (120 < 1,024), features.78.weight (512 < 1,024)" in text  # the fewest samples
    assert "- mobilenetv1 obc reference: features.78.weight" in text and "- mobilenetv1 mp" not in text
    assert layerwise_note_lines([_record("mp", 0, {})]) == []
