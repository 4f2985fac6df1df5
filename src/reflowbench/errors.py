"""Errors with messages that name the problem and the fix.

Every error raised on bad user input derives from ``ReflowbenchError``; the CLI
prints its message without a traceback.
"""


class ReflowbenchError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(ReflowbenchError, ValueError):
    """A setting is out of range or inconsistent."""


class CheckpointError(ReflowbenchError):
    """A checkpoint cannot be read or does not match the model."""


class DatasetError(ReflowbenchError):
    """A dataset is missing, corrupt or too small for the requested subsets."""


class NoBatchNormError(ReflowbenchError, ValueError):
    """REFLOW or the diagnostics were given a model without BatchNorm layers."""


class FisherError(ReflowbenchError):
    """Gradients or the Fisher are non-finite or cannot be factorised."""


class DivergedError(FisherError):
    """A multi-step pruner's earlier steps drove the weights where a later step's curvature cannot be formed
    (non-finite loss, gradients whose Gram matrix overflows or swamps the damping): the method failed on this run, not the inputs.
    A sweep records such a run as failed and goes on; ``notes`` holds the pruner's notes up to the failure."""

    def __init__(self, message: str, notes: "dict | None" = None) -> None:
        super().__init__(message)
        self.notes = dict(notes or {})


class BrokenModelError(DivergedError):
    """A pruner or a correction left a non-finite parameter or buffer (or a negative BatchNorm variance) in the
    model: the run fails (recorded as failed, with what broke), the sweep goes on."""


class PrunerCrashed(ReflowbenchError):
    """A pruner's own code raised (a bug in it, most often a plug-in's): one line naming the pruner, the run and where;
    ``REFLOWBENCH_DEBUG=1`` shows the traceback instead."""


class MemoryBudgetError(ReflowbenchError, MemoryError):
    """An allocation estimate exceeds the configured memory budget."""


class MaskError(ReflowbenchError):
    """A pruning mask does not hold after pruning (weights not zero, wrong sparsity)."""


class UnreadableRunsError(ReflowbenchError):
    """Run files under a results folder that cannot be read as run records: reported by name, never skipped in silence."""


class JobsFailed(ReflowbenchError):
    """Some submitit jobs failed; their runs are unfinished and a re-submission re-runs them."""
