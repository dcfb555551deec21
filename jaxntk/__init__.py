"""jaxntk: exact Taylor models of wide networks and good directions to escape the NTK regime.

The public API, re-exported from the modules (see DESIGN.md for the one-way data flow
targets → network → taylor → spectral → objectives → train → experiments → plots/cli).
"""

from jaxntk import network, objectives, targets, training
from jaxntk.network import ACTIVATIONS, Prepared, TwoLayer
from jaxntk.objectives import VARIANTS, Regularizer
from jaxntk.targets import (
    DISTRIBUTIONS,
    Target,
    TargetPart,
    Task,
    dense_part,
    gegenbauer,
    hermite,
    legendre,
    make_target,
    make_task,
    mlp_target,
    num_harmonics,
    paper_target,
    paper_task,
    sample_inputs,
    sparse_part,
)
from jaxntk.taylor import (
    TaylorModel,
    TaylorPrepared,
    linear_term,
    linearize,
    quadratic_term,
    taylor,
)
from jaxntk.training import DivergenceWarning, Run, fit, train

__all__ = [
    "ACTIVATIONS",
    "DISTRIBUTIONS",
    "VARIANTS",
    "DivergenceWarning",
    "Prepared",
    "Regularizer",
    "Run",
    "Target",
    "TargetPart",
    "Task",
    "TaylorModel",
    "TaylorPrepared",
    "TwoLayer",
    "dense_part",
    "fit",
    "gegenbauer",
    "hermite",
    "legendre",
    "linear_term",
    "linearize",
    "make_target",
    "make_task",
    "mlp_target",
    "network",
    "num_harmonics",
    "objectives",
    "paper_target",
    "paper_task",
    "quadratic_term",
    "sample_inputs",
    "sparse_part",
    "targets",
    "taylor",
    "train",
    "training",
]

__version__ = "0.1.0"
