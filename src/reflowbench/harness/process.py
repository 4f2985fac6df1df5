"""What every command that loads a model sets up first, in one place: the process's torch threads and determinism,
then the dataset its settings name (used by the sweeps' :class:`~reflowbench.harness.run.SweepState` and by training)."""

from __future__ import annotations

import torch

from reflowbench.config import SweepSettings, SweepSpec
from reflowbench.datasets import DataBundle, load_dataset
from reflowbench.utils.env import use_deterministic


def configure_process(sweep: SweepSpec) -> None:
    """Torch CPU threads (``--threads``; 0 keeps torch's) and deterministic kernels (``--deterministic``)."""
    if sweep.threads:
        torch.set_num_threads(sweep.threads)
    use_deterministic(sweep.deterministic)


def load_spec_data(spec: SweepSettings, dataset: str) -> DataBundle:
    """The images of ``dataset`` (already resolved) from the settings' path, normalisation, workers and download flags."""
    data = spec.data
    return load_dataset(dataset, data.data, data.norm, data.download, data.workers, data.partial_data)
