"""jaxntk: exact Taylor models of wide networks and good directions to escape the NTK regime.

The public API, re-exported from the modules. Imports run one way, up these layers (a module
imports only from its own layer and those before it; tests/test_structure.py checks it):
host → polynomials → data → targets → network / taylor → scaling → ntk / store → linalg →
spectral → predict / onestep → diagnostics → objectives → minibatch → sharding / checkpoint →
training → plots → experiments → cli (the private helpers _checks, _jet and _staging sit with host,
_structured with ntk).

Importing jaxntk changes nothing in the process. XLA's CPU backend runs faster when freed host
memory stays in the process (glibc): `jaxntk.configure_allocator()`, called before the first
computation, opts in; the `jaxntk` command and the benchmarks do. See `jaxntk.host`.
"""

from jaxntk import (
    data,
    diagnostics,
    host,
    linalg,
    minibatch,
    network,
    ntk,
    objectives,
    predict,
    sharding,
    store,
    targets,
    training,
)
from jaxntk.data import check_task
from jaxntk.host import allocator_status, configure_allocator
from jaxntk.minibatch import Minibatch
from jaxntk.network import ACTIVATIONS, Prepared, TwoLayer
from jaxntk.ntk import choose_method, empirical_ntk, pseudo_ntk
from jaxntk.objectives import VARIANTS, Regularizer
from jaxntk.onestep import one_step
from jaxntk.predict import NTKPrediction, ntk_predict
from jaxntk.scaling import Scaled, mean_field
from jaxntk.spectral import (
    GoodDirections,
    bulk_residual,
    degree_block_report,
    good_directions,
    gram_matrix,
    hermite_coefficients,
    predict_degree_blocks,
    project_good,
    project_top,
    right_singular_vectors,
)
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
    taylor_terms,
)
from jaxntk.training import DivergenceWarning, Run, fit, train

__all__ = [
    "ACTIVATIONS",
    "DISTRIBUTIONS",
    "VARIANTS",
    "DivergenceWarning",
    "GoodDirections",
    "Minibatch",
    "NTKPrediction",
    "Prepared",
    "Regularizer",
    "Run",
    "Scaled",
    "Target",
    "TargetPart",
    "Task",
    "TaylorModel",
    "TaylorPrepared",
    "TwoLayer",
    "allocator_status",
    "bulk_residual",
    "check_task",
    "choose_method",
    "configure_allocator",
    "data",
    "degree_block_report",
    "dense_part",
    "diagnostics",
    "empirical_ntk",
    "fit",
    "gegenbauer",
    "good_directions",
    "gram_matrix",
    "hermite",
    "hermite_coefficients",
    "host",
    "legendre",
    "linalg",
    "linear_term",
    "linearize",
    "make_target",
    "make_task",
    "mean_field",
    "minibatch",
    "mlp_target",
    "network",
    "ntk",
    "ntk_predict",
    "num_harmonics",
    "objectives",
    "one_step",
    "paper_target",
    "paper_task",
    "predict",
    "predict_degree_blocks",
    "project_good",
    "project_top",
    "pseudo_ntk",
    "quadratic_term",
    "right_singular_vectors",
    "sample_inputs",
    "sharding",
    "sparse_part",
    "store",
    "targets",
    "taylor",
    "taylor_terms",
    "train",
    "training",
]

__version__ = "0.1.0"
