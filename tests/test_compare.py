"""`reflowbench compare`: why two folders have nothing to compare, in words a user can act on."""

from reflowbench.reports.compare import nothing_to_compare


def test_compare_says_which_labels_to_pick_when_a_method_has_several_configurations():
    def run(method, damp, sparsity):
        return {
            "model": "m", "method": method, "sparsity": sparsity, "seed": 0, "options": {"damp": damp},
            "settings": {}, "pruned": {"top1": 50.0}, "reflow": {"top1": 60.0},
        }  # fmt: skip

    tuned = [run("woodfisher", 1e-5, 0.5), run("woodfisher", 1e-3, 0.5), run("mp", 0.0, 0.5)]
    message = nothing_to_compare([("candidate (a)", "woodfisher", tuned), ("baseline (b)", "mp", [run("mp", 0.0, 0.5)])])
    assert message.startswith("nothing to compare: woodfisher has several configurations in the candidate (a), so name one by its report label")
    assert "'woodfisher [options.damp=0.001]', 'woodfisher [options.damp=1e-05]'" in message
    apart = nothing_to_compare([("candidate (a)", "mp", [run("mp", 0.0, 0.5)]), ("baseline (b)", "mp", [run("mp", 0.0, 0.9)])])
    assert apart == "nothing to compare: no (model, sparsity) in common: the candidate (a) has [('m', 0.5)], the baseline (b) [('m', 0.9)]"
