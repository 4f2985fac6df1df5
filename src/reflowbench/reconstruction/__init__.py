"""The layer-wise reconstruction backend the ExactOBS/SparseGPT/Wanda pruners share.

- :mod:`layer_inputs`: a layer's inputs as the columns its weight rows multiply (convolutions unfolded, one H per
  group), and their second moment H = X X^T / n;
- :mod:`collect`: the forward passes that gather H for every layer (dense network) or one layer at a time (the
  network as pruned so far);
- :mod:`obs`: damping, exact re-fits, ExactOBS's greedy removal and SparseGPT's column sweep;
- :mod:`selection`: exact-k masks, counts split between rows, N-of-M masks.

No gradients and no labels: only forward passes over the pruner's own training subset.
"""

from reflowbench.reconstruction.collect import DenseInputs, collect_hessians
from reflowbench.reconstruction.layer_inputs import InputHessian, LayerGeometry, input_columns
from reflowbench.reconstruction.obs import damped, greedy_obs, inverse_upper, nm_sweep, refit_rows, sweep
from reflowbench.reconstruction.selection import counts_from_traces, lowest_k_keep, lowest_per_row, prefix_keep, row_counts

__all__ = [
    "DenseInputs",
    "InputHessian",
    "LayerGeometry",
    "collect_hessians",
    "counts_from_traces",
    "damped",
    "greedy_obs",
    "input_columns",
    "inverse_upper",
    "nm_sweep",
    "lowest_k_keep",
    "lowest_per_row",
    "prefix_keep",
    "refit_rows",
    "row_counts",
    "sweep",
]
