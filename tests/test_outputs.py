"""Models with several outputs: the empirical NTK's trace and diagonal axes, the closed-form
linearized dynamics (jaxntk/predict.py), and training with MSE over all outputs or softmax
cross-entropy (jaxntk/objectives.py, jaxntk/training.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import spectral

N, N_TEST, D, C = 12, 7, 5, 10


class MLP(nn.Module):
    """A 10-output MLP of width 16 (float64 parameters)."""

    outputs: int = C

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16, param_dtype=jnp.float64)(x))
        return nn.Dense(self.outputs, param_dtype=jnp.float64)(x)


class GridMLP(nn.Module):
    """Outputs of shape (3, 2) per input."""

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8, param_dtype=jnp.float64)(x))
        return nn.Dense(6, param_dtype=jnp.float64)(x).reshape(x.shape[0], 3, 2)


def inputs(seed, n):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, D)))


def flax_model(module=None):
    module = MLP() if module is None else module
    return module.apply, module.init(jax.random.PRNGKey(0), inputs(0, 2))


def flat_jacobian(apply_fn, params, x):
    """∂f(x)/∂θ as an array (n, *out, P), by reverse mode over the flattened parameters."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.jacrev(lambda p: apply_fn(unravel(p), x))(flat))


# (trace_axes, diagonal_axes) -> the explicit contraction of J1 (i a P) with J2 (j b P)
CONTRACTIONS = {
    ((), ()): ("iaP,jbP->ijab", 1),
    ((), (0,)): ("iaP,ibP->iab", 1),
    ((), (-1,)): ("iaP,jaP->ija", 1),
    ((), (0, 1)): ("iaP,iaP->ia", 1),
    ((-1,), ()): ("iaP,jaP->ij", C),
    ((1,), (0,)): ("iaP,iaP->i", C),
}


@pytest.mark.parametrize("method", ["jacobian", "products"])
@pytest.mark.parametrize(("trace", "diagonal"), list(CONTRACTIONS), ids=str)
def test_multi_output_ntk_equals_the_jacobian_contraction(x64, trace, diagonal, method):
    apply_fn, params = flax_model()
    x1, x2 = inputs(1, N), inputs(2, N if 0 in diagonal else N_TEST)
    spec, size = CONTRACTIONS[(trace, diagonal)]
    expected = np.einsum(
        spec, flat_jacobian(apply_fn, params, x1), flat_jacobian(apply_fn, params, x2)
    )
    axes = {"trace_axes": trace, "diagonal_axes": diagonal}
    k = jn.empirical_ntk(apply_fn, params, x1, x2, **axes, method=method, batch_size=5)
    assert k.shape == expected.shape
    np.testing.assert_allclose(k, expected / size, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("trace", "diagonal", "spec", "size"),
    [
        ((), (), "iabP,jcdP->ijacbd", 1),
        ((-2,), (), "iabP,jadP->ijbd", 3),
        ((-1,), (1,), "iabP,jabP->ija", 2),
        ((1, 2), (0,), "iabP,iabP->i", 6),
    ],
)
def test_ntk_of_outputs_with_two_axes(x64, trace, diagonal, spec, size):
    apply_fn, params = flax_model(GridMLP())
    x1 = inputs(3, 6)
    x2 = x1 if 0 in diagonal else inputs(4, 4)
    j1, j2 = flat_jacobian(apply_fn, params, x1), flat_jacobian(apply_fn, params, x2)
    k = jn.empirical_ntk(
        apply_fn, params, x1, x2, trace_axes=trace, diagonal_axes=diagonal, batch_size=4
    )
    np.testing.assert_allclose(k, np.einsum(spec, j1, j2) / size, rtol=1e-12, atol=1e-12)


def test_ntk_compiles_once_per_shape(x64):
    apply_fn, params = flax_model()
    before = spectral._empirical_ntk._cache_size()
    for seed in (5, 6):
        jn.empirical_ntk(apply_fn, params, inputs(seed, N), trace_axes=())
    assert spectral._empirical_ntk._cache_size() == before + 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"trace_axes": (0,)}, ValueError, "batch axis"),
        ({"trace_axes": (2,)}, ValueError, "out of range"),
        ({"trace_axes": (-1,), "diagonal_axes": (1,)}, ValueError, "both traced and diagonal"),
        ({"diagonal_axes": (1, -1), "trace_axes": ()}, ValueError, "repeats"),
        ({"trace_axes": (1.0,)}, TypeError, "ints"),
        ({"x2": np.ones((3, D)), "diagonal_axes": (0,)}, ValueError, "n1"),
    ],
)
def test_bad_ntk_axes_raise(x64, kwargs, error, match):
    apply_fn, params = flax_model(MLP(outputs=3))
    with pytest.raises(error, match=match):
        jn.empirical_ntk(apply_fn, params, inputs(0, 4), **kwargs)
