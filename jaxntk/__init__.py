"""jaxntk: exact Taylor models of wide networks and good directions to escape the NTK regime.

The public API, re-exported from the modules (see DESIGN.md for the one-way data flow
targets → network → taylor → spectral → objectives → train → experiments → plots/cli).
"""

from jaxntk import network
from jaxntk.network import ACTIVATIONS, Prepared, TwoLayer
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

__all__ = [
    "ACTIVATIONS",
    "DISTRIBUTIONS",
    "Prepared",
    "Target",
    "TargetPart",
    "Task",
    "TaylorModel",
    "TaylorPrepared",
    "TwoLayer",
    "dense_part",
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
    "paper_target",
    "paper_task",
    "quadratic_term",
    "sample_inputs",
    "sparse_part",
    "taylor",
]

__version__ = "0.1.0"
