"""The Python blocks of README.md, CONTRIBUTING.md and the guides run as they stand.

Apart from tests/test_docs.py (which finds the blocks and checks how they are marked) so that the
test runner's workers, given one file each, share the pages' minutes with the rest of the suite.
"""

import numpy as np
import pytest
from test_docs import ROOT, _pages_with_code, _python_blocks


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_code())
def test_doc_python_blocks_run(page):
    """Each page's Python blocks, in order in one namespace, run as they stand (warnings are
    errors); a block after `<!-- no-run: why -->` is skipped. They run under JAX's standard
    dtype promotion, a reader's default (the suite's strict one refuses optax's Adam, which
    raises its int32 step count to a float power)."""
    import jax

    namespace: dict = {"__name__": "__doc_page__"}
    with jax.numpy_dtype_promotion("standard"):
        for no_run, code in _python_blocks(ROOT / page):
            if not no_run:
                exec(compile(code, page, "exec"), namespace)
    if page == "README.md":
        # the ± is over three draws and is not 0; run.params are the trained parameters: seed
        # 1's test loss recomputed from them (numpy, on the order-2 Taylor model) is the history's
        loss, pred, task = namespace["loss"], namespace["pred"], namespace["tasks"][0]
        assert loss.shape == (3,) and np.std(loss) > 1e-3 and np.all(loss < np.var(task.y_test))
        recomputed = np.mean((np.asarray(pred, np.float64) - np.asarray(task.y_test)) ** 2)
        assert np.isclose(recomputed, loss[0], rtol=1e-4)
        assert namespace["K"].shape == (128, 128)
