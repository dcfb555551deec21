"""The MNIST-1D experiment (jaxntk/experiments/mnist1d.py) at a tiny size: its rows are the
trained parameters evaluated again, its summary the rows' statistics, its figure drawn."""

import dataclasses
import json
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import cli
from jaxntk.experiments import _mnist1d as m
from jaxntk.experiments import mnist1d as exp

TINY = dataclasses.replace(
    exp.Config(),
    n_train=80,
    n_test=30,
    channels=4,
    variants=("full", "regularized"),
    losses=("cross_entropy", "mse"),
    seeds=(0, 1),
    sections=("variants",),
    batch_size=20,
    epochs=3,
    patience=2,
    k=3,
)


def test_the_cnn_has_the_published_shape_and_parameter_count():
    cnn = exp.CNN1D()
    params = cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))
    kernels = [p["kernel"].shape for p in params["params"].values()]
    assert kernels == [(5, 1, 25), (3, 25, 25), (3, 25, 25), (125, 10)]
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 5210
    # signals of 40 positions: 19, 10, 5 after the three strided convolutions
    assert cnn.apply(params, jnp.zeros((2, 40, 1))).shape == (2, 10)


@pytest.mark.slow
def test_mnist1d_experiment_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    # optax's Adam raises its int32 step count to a float power: the suite's strict promotion
    # (tests/conftest.py) refuses that, so this test runs under JAX's standard rules
    with jax.numpy_dtype_promotion("standard"):
        _end_to_end(tmp_path, monkeypatch)


def _end_to_end(tmp_path, monkeypatch):
    doc = exp.run(TINY, tmp_path, progress=False)
    saved = json.loads((tmp_path / "mnist1d.json").read_text())
    assert saved["summary"] == doc["summary"] and (tmp_path / "mnist1d.png").stat().st_size > 0
    rows = doc["results"]
    assert len(rows) == 2 * 2 * 2  # variants × losses × seeds
    for key, summary in doc["summary"].items():
        variant, loss = key.split("/")
        accs = [r["test_accuracy"] for r in rows if (r["variant"], r["loss"]) == (variant, loss)]
        assert summary["test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert summary["test_accuracy_std"] == pytest.approx(np.std(accs))
    # 3 epochs in chunks of 5: no chunk after the compiling one to time an epoch by
    assert doc["summary"]["full/mse"]["seconds_per_epoch"] is None

    # run again on the same folder: everything is there, nothing is trained again
    def refuse(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(exp, "_train", refuse)
    again = exp.run(TINY, tmp_path, progress=False)
    assert again["results"] == rows


def test_a_rows_accuracy_is_the_trained_network_evaluated_by_flax_alone(tmp_path, monkeypatch):
    """The full CNN on one-hot targets: `accuracy_at` of the run's parameters equals the
    argmax of flax's own forward pass at θ0 + U against the class labels."""
    from jaxntk import data

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path))
    task = data.mnist1d(n_train=60, n_test=30, one_hot=True)
    config = dataclasses.replace(TINY, seeds=(3,), epochs=2, patience=None, validation=0.0)
    model = exp._model(config, 3, task.x_train[:1])
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam (see above)
        run = exp._train(config, [model], [task][0], "full", "mse", False)
    u = jax.tree.map(lambda leaf: leaf[0, 0], run.params)
    labels = np.argmax(np.asarray(task.y_test), axis=1)
    cnn = exp.CNN1D(channels=4)
    trained = jax.tree.map(jnp.add, cnn.init(jax.random.PRNGKey(3), task.x_train[:1]), u)
    want = np.mean(np.argmax(np.asarray(cnn.apply(trained, task.x_test)), axis=1) == labels)
    assert exp.accuracy_at(model, "full", u, task.x_test, labels) == pytest.approx(want, abs=1e-12)
    assert 0 < want < 1


def test_reproduce_names_mnist1d_and_plot_redraws_it(tmp_path):
    doc = {
        "config": dataclasses.asdict(TINY),
        "anchors": {k: list(v) for k, v in exp.ANCHORS.items()},
        "summary": {
            f"{v}/{loss}": {"test_accuracy_mean": 0.5, "test_accuracy_std": 0.1}
            for v in TINY.variants
            for loss in TINY.losses
        },
    }
    (tmp_path / "mnist1d.json").write_text(json.dumps(doc))
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "mnist1d.png").stat().st_size > 0
    assert "mnist1d" in cli._experiments()


def test_bad_settings_are_named_before_any_work(tmp_path):
    for preset in exp.PRESETS.values():  # both presets pass the checks
        exp._check(preset)
    with pytest.raises(ValueError, match="losses"):
        exp.run(dataclasses.replace(TINY, losses=("hinge",)), tmp_path)
    with pytest.raises(ValueError, match="activation"):
        exp.run(dataclasses.replace(TINY, activation="swish"), tmp_path)
    with pytest.raises(ValueError, match="sections"):
        exp.run(dataclasses.replace(TINY, sections=("variants", "gru")), tmp_path)
    with pytest.raises(ValueError, match="spectrum_ns"):
        exp.run(dataclasses.replace(SMALL, sections=("spectrum",), spectrum_ns=(200,)), tmp_path)
    with pytest.raises(ValueError, match="ridges"):
        exp.run(dataclasses.replace(SMALL, ridges=(0.0,)), tmp_path)
    assert not (tmp_path / "mnist1d.json").exists()


# ------------------------------------------------------------------------- the new sections

SMALL = dataclasses.replace(
    TINY,
    sections=exp.SECTIONS,
    variants=("full", "ntk"),
    losses=("mse",),
    seeds=(0,),
    mlp_hidden=(8,),
    ridges=(1e-3, 1e-1),
    reg_lambdas=(0.1, 1.0),
    reg_ks=(3,),
    reg_select_seeds=(0,),
    onestep_etas=(1.0, 10.0),
    onestep_ridges=(1e-3, 1e-1),
    curve_ns=(40, 80),
    curve_rows=("kernel", "full"),
    curve_min_steps=6,
    alphas=(1.0, 10.0),
    lazy_n=60,
    lazy_probe=8,
    widths=(2, 4),
    width_n=60,
    spectrum_n=100,
    spectrum_k=100,
    spectrum_ns=(40, 80),
    spectrum_iters=3,
)


def _tiny_task(n=40, n_test=20):
    from jaxntk import data

    return data.mnist1d(n_train=n, n_test=n_test, one_hot=True)


def _numpy_ridge(k, k_test, f0, f0_test, y, ridge):
    """f0(X') + K(X', X)(K + ρI)⁻¹(Y − f0(X)) by numpy in float64."""
    k, k_test = np.asarray(k, np.float64), np.asarray(k_test, np.float64)
    alpha = np.linalg.solve(k + ridge * np.eye(len(k)), np.asarray(y, np.float64) - f0)
    return f0_test + k_test @ alpha


def test_kernel_regression_is_a_numpy_solve_of_the_same_kernel_and_ntk_predicts_it(
    tmp_path, monkeypatch
):
    import jaxntk as jn
    from jaxntk.minibatch import Minibatch

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path))
    task = _tiny_task()
    cnn = exp.CNN1D(channels=3)
    params = cnn.init(jax.random.PRNGKey(1), task.x_train[:1])
    ridges = (1e-3, 1e-1, 10.0)
    fit = m.kernel_regression(
        cnn.apply,
        params,
        task.x_train,
        task.y_train,
        task.x_test,
        task.y_test,
        ridges=ridges,
        validation=0.25,
    )
    x = np.asarray(task.x_train)
    k = np.asarray(jn.empirical_ntk(cnn.apply, params, x), np.float64)
    k_test = np.asarray(jn.empirical_ntk(cnn.apply, params, task.x_test, x), np.float64)
    f0 = np.asarray(cnn.apply(params, x), np.float64)
    f0_test = np.asarray(cnn.apply(params, task.x_test), np.float64)
    y, y_test = np.asarray(task.y_train), np.asarray(task.y_test)
    # the choice: the validation rows of Minibatch.split, each ridge fitted on the others
    fitted, held = Minibatch(1, 1, validation=0.25).split(40)
    scale = np.trace(k) / 40
    accs = []
    for r in ridges:
        pred = _numpy_ridge(
            k[np.ix_(fitted, fitted)],
            k[np.ix_(held, fitted)],
            f0[fitted],
            f0[held],
            y[fitted],
            r * scale,
        )
        accs.append(np.mean(pred.argmax(1) == y[held].argmax(1)))
    assert fit["val_accuracy"] == pytest.approx(accs)
    assert fit["ridge"] == pytest.approx(ridges[fit["val_accuracy"].index(max(accs))] * scale)
    want = _numpy_ridge(k, k_test, f0, f0_test, y, fit["ridge"])
    np.testing.assert_allclose(fit["test_outputs"], want, rtol=1e-4, atol=1e-5)
    assert fit["test_accuracy"] == np.mean(want.argmax(1) == y_test.argmax(1))
    assert fit["test_mse"] == pytest.approx(np.mean((want - y_test) ** 2), rel=1e-5)
    # ntk_predict's t = ∞ limit with that ridge is the same regression
    out = jn.ntk_predict(
        cnn.apply,
        params,
        task.x_train,
        task.y_train,
        task.x_test,
        steps=[math.inf],
        trace_axes=(-1,),
        ridge=fit["ridge"],
    )
    np.testing.assert_allclose(np.asarray(out.test[0]), want, rtol=1e-3, atol=1e-4)


def test_slope_and_the_n_at_a_target_against_polyfit_and_by_hand():
    n = np.array([250, 500, 1000, 2000, 4000])
    err = np.array([0.6, 0.45, 0.3, 0.22, 0.15])
    slope, intercept = m.fit_slope(n, err)
    want = np.polyfit(np.log10(n), np.log10(err), 1)
    assert (slope, intercept) == pytest.approx(tuple(want), abs=1e-10)
    # 80 %: error 0.2 is crossed between n = 2000 (0.22) and 4000 (0.15), in log-log
    t = (np.log(0.2) - np.log(0.22)) / (np.log(0.15) - np.log(0.22))
    assert m.n_at_accuracy(n, 1 - err, 0.8) == pytest.approx(2000 * 2**t)
    assert m.n_at_accuracy(n, 1 - err, 0.99) is None
    assert m.n_at_accuracy(n, 1 - err, 0.3) == 250  # reached at the first n already
    assert np.isnan(m.fit_slope([100], [0.1])[0])
    section = {
        "config": {"curve_rows": ["kernel"], "curve_ns": [250, 500, 1000, 2000, 4000]},
        "units": {
            f"kernel/{k}": {"test_accuracy": [1 - e - 0.01, 1 - e + 0.01]}
            for k, e in zip(n, err, strict=True)
        },
    }
    summary = exp.curve_summary(section, 0.8)["kernel"]
    assert summary["error_mean"] == pytest.approx(err) and summary["slope"] == pytest.approx(
        want[0]
    )
    assert summary["error_std"] == pytest.approx([0.01] * 5)
    assert summary["n_at_target"] == pytest.approx(2000 * 2**t)


def test_one_step_on_the_cnn_is_a_step_on_the_convolutions_then_a_ridge_readout(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path))
    task = _tiny_task()
    cnn = exp.CNN1D(channels=3)
    params = cnn.init(jax.random.PRNGKey(2), task.x_train[:1])
    got = m.one_step_cnn(
        cnn,
        params,
        task.x_train,
        task.y_train,
        task.x_test,
        task.y_test,
        etas=[5.0],
        ridges=[1e-2],
        validation=0.25,
    )
    # by hand: the gradient of the squared error through the whole CNN, the convolutions moved
    x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
    grads = jax.grad(lambda p: jnp.mean((cnn.apply(p, x) - y) ** 2))(params)["params"]
    moved = {
        name: {k: v - 5.0 * grads[name][k] for k, v in layer.items()}
        if name.startswith("Conv")
        else layer
        for name, layer in params["params"].items()
    }
    # the flattened last convolution: the logits are its product with the readout's kernel
    body = exp.CNN1D(channels=3, readout=False)

    def phi(inputs):
        f = np.asarray(body.apply({"params": moved}, inputs), np.float64)
        return np.hstack([f, np.ones((len(f), 1))])

    p = phi(x).shape[1]  # 3 channels × 5 positions, and the constant
    assert p == 16
    a = np.linalg.lstsq(  # min ‖Φa − Y‖² + nλ‖a‖², as least squares on stacked rows
        np.vstack([phi(x), np.sqrt(40 * 1e-2) * np.eye(p)]),
        np.vstack([np.asarray(y, np.float64), np.zeros((p, 10))]),
        rcond=None,
    )[0]
    pred = phi(jnp.asarray(task.x_test)) @ a
    assert got["eta"] == 5.0 and got["ridge"] == 1e-2
    assert got["test_accuracy"] == np.mean(pred.argmax(1) == np.asarray(task.y_test).argmax(1))
    assert got["test_mse"] == pytest.approx(
        np.mean((pred - np.asarray(task.y_test)) ** 2), rel=1e-4
    )


def test_laziness_at_the_start_and_the_alignment_by_hand(tmp_path, monkeypatch):
    from jaxntk.scaling import Scaled
    from jaxntk.taylor import TaylorModel

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path))
    task = _tiny_task(n=12, n_test=6)
    cnn = exp.CNN1D(channels=2)
    params = cnn.init(jax.random.PRNGKey(0), task.x_train[:1])
    model = Scaled(TaylorModel(cnn.apply, params), 4.0)
    u = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
    zero = jax.tree.map(jnp.zeros_like, params)
    x, y = task.x_train[:8], np.asarray(task.y_train[:8], np.float64)
    start = m.laziness(model, zero, x, y, task.x_test)
    # the network's Jacobian and its linear term's, two programs: equal to rounding
    assert start["kernel_change"] == pytest.approx(0, abs=1e-6) and start["displacement"] == 0
    moved = m.laziness(model, u, x, y, task.x_test)
    # K(U) from the explicit Jacobian of α·f(θ0 + U) (traced: the mean over the 10 outputs)
    flat, unravel = jax.flatten_util.ravel_pytree(u)
    theta0 = jax.flatten_util.ravel_pytree(params)[0]
    jac = np.asarray(jax.jacobian(lambda t: 4.0 * cnn.apply(unravel(t), x))(theta0 + flat))
    k = np.einsum("iap,jap->ij", jac, jac) / 10
    h = np.eye(8) - 1 / 8
    kc, yc = h @ k @ h, h @ y
    want = np.sum(kc * (yc @ yc.T)) / (np.linalg.norm(kc) * np.linalg.norm(yc @ yc.T))
    assert moved["alignment"] == pytest.approx(want, rel=1e-4)
    jac0 = np.asarray(jax.jacobian(lambda t: 4.0 * cnn.apply(unravel(t), x))(theta0))
    k0 = np.einsum("iap,jap->ij", jac0, jac0) / 10
    assert moved["kernel_change"] == pytest.approx(
        np.linalg.norm(k - k0) / np.linalg.norm(k0), rel=1e-4
    )
    assert 0 < moved["distance_quadratic"] and 0 < moved["distance_linear"]


def test_the_spectrum_of_the_whole_kernel_predicts_as_learning_curve_on_numpy_eigenpairs(
    tmp_path, monkeypatch
):
    import jaxntk as jn

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path))
    task = _tiny_task(n=60, n_test=20)
    cnn = exp.CNN1D(channels=2)
    params = cnn.init(jax.random.PRNGKey(0), task.x_train[:1])
    settings = {"k": 60, "ns": (30, 60), "ridges": (1e-2, 1.0), "validation": 0.2, "max_iters": 6}
    got = m.spectrum_prediction(
        cnn.apply, params, task.x_train, task.y_train, task.x_test, task.y_test, settings
    )
    x = np.asarray(task.x_train)
    k = np.asarray(jn.empirical_ntk(cnn.apply, params, x), np.float64)
    k_test = np.asarray(jn.empirical_ntk(cnn.apply, params, task.x_test, x), np.float64)
    f0 = np.asarray(cnn.apply(params, x), np.float64)
    f0_test = np.asarray(cnn.apply(params, task.x_test), np.float64)
    e, v = np.linalg.eigh(k)
    e, v = e[::-1], v[:, ::-1]
    # all N pairs: λ_i = e_i / N, v_i = u_iᵀ(Y − f0)/√N, nothing left for the noise or a tail
    np.testing.assert_allclose(got["eigenvalues"][:20], e[:20] / 60, rtol=2e-3)
    coef = v.T @ (np.asarray(task.y_train) - f0) / np.sqrt(60)
    assert got["noise"] == pytest.approx(0, abs=1e-4)
    for row, n in zip(got["rows"], (30, 60), strict=True):
        assert row["n"] == n
        pred = _numpy_ridge(
            k[:n, :n], k_test[:, :n], f0[:n], f0_test, task.y_train[:n], row["ridge"]
        )
        assert row["measured_mse"] == pytest.approx(
            np.mean((pred - np.asarray(task.y_test)) ** 2), rel=1e-4
        )
        curve = jn.spectral.learning_curve(e.clip(0) / 60, coef, n, row["ridge"])
        assert row["predicted_top_k"] == pytest.approx(curve.test_mse[0], rel=2e-2)
        assert row["predicted_flat_tail"] == pytest.approx(row["predicted_top_k"], rel=1e-6)


def test_the_choice_of_lambda_and_k_is_the_best_mean_validation_score():
    config = dataclasses.replace(SMALL, reg_lambdas=(0.1, 1.0), reg_ks=(3, 5))

    def rows(*scores):
        return [{"seed": s, "val_score": v, "test_accuracy": 0.5} for s, v in enumerate(scores)]

    units = {
        "select/mse/k=3": {"by_lambda": [rows(0.4, 0.2), rows(0.25, 0.3)]},
        "select/mse/k=5": {"by_lambda": [rows(0.5, 0.5), rows(0.2, 0.31)]},
        "select/cross_entropy/k=3": {"by_lambda": [rows(0.4, 0.2), rows(0.25, 0.3)]},
        "select/cross_entropy/k=5": {"by_lambda": [rows(0.5, 0.5), rows(0.2, 0.31)]},
    }
    assert exp.regularized_choice(config, units, "mse")[:2] == (1.0, 5)  # lowest loss 0.255
    assert exp.regularized_choice(config, units, "cross_entropy")[:2] == (0.1, 5)  # accuracy 0.5


TRAINED = {"variants", "baselines", "regularized", "curves", "lazy", "width"}


def _check_section(name: str, doc: dict) -> None:
    """What each section leaves in the document, at SMALL's sizes."""
    section = doc["sections"][name]
    rows = {r["row"] for r in doc["table"]}
    if name == "variants":
        assert {"CNN, full", "CNN, ntk"} <= rows
    elif name == "baselines":
        assert {"logistic regression", "MLP, full"} <= rows
    elif name == "kernel":
        assert set(section["units"]) == {"cnn/0", "mlp/0"}
        kernel = section["units"]["cnn/0"]["test_accuracy"]
        assert next(r["mean"] for r in doc["table"] if r["row"].endswith("CNN NTK")) == kernel
    elif name == "regularized":
        assert any(r.startswith("CNN, regularized (λ_b") for r in rows)
    elif name == "one_step":
        assert section["units"]["0"]["eta"] in SMALL.onestep_etas
    elif name == "curves":
        assert set(section["summary"]) == {"kernel", "full"}
        assert section["summary"]["full"]["n"] == [40, 80]
    elif name == "lazy":
        assert set(section["summary"]) == {"1", "10"}
    elif name == "width":
        assert set(section["summary"]) == {"2", "4"}
    else:
        assert [r["n"] for r in section["units"]["result"]["rows"]] == [40, 80]


@pytest.mark.parametrize(
    "name", [pytest.param(s, marks=pytest.mark.slow) if s in TRAINED else s for s in exp.SECTIONS]
)
def test_each_section_runs_alone_writes_and_redraws(name, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam (see above)
        doc = exp.run(dataclasses.replace(SMALL, sections=(name,)), out, progress=False)
    assert list(doc["sections"]) == [name]
    assert json.loads((out / "mnist1d.json").read_text())["sections"] == doc["sections"]
    _check_section(name, doc)
    assert "MNIST-1D" in exp.table(doc)
    (out / "mnist1d.png").unlink()
    assert cli.main(["plot", str(out)]) == 0 and (out / "mnist1d.png").stat().st_size > 0


def test_sections_resume_and_only_a_changed_one_is_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    config = dataclasses.replace(SMALL, sections=("kernel", "one_step"), kernel_networks=("cnn",))
    first = exp.run(config, tmp_path, progress=False)
    monkeypatch.setattr(exp.m, "kernel_regression", _refuse)
    monkeypatch.setattr(exp.m, "one_step_cnn", _refuse)
    assert exp.run(config, tmp_path, progress=False)["sections"] == first["sections"]
    monkeypatch.undo()
    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(exp.m, "kernel_regression", _refuse)
    redone = exp.run(dataclasses.replace(config, onestep_etas=(2.0,)), tmp_path, progress=False)
    assert redone["sections"]["one_step"]["units"]["0"]["eta"] == 2.0
    assert redone["sections"]["kernel"] == first["sections"]["kernel"]


def _refuse(*args, **kwargs):
    raise AssertionError("computed again")


def test_the_figure_draws_every_panel_from_the_json(tmp_path):
    doc = {
        "config": dataclasses.asdict(SMALL),
        "anchors": {k: list(v) for k, v in exp.ANCHORS.items()},
        "summary": {},
        "table": [
            {
                "row": "CNN, full",
                "loss": "mse",
                "mean": 0.9,
                "std": 0.01,
                "seeds": 3,
                "anchor": [94, 2],
            },
        ],
        "sections": {
            "curves": {
                "config": {},
                "units": {},
                "summary": {
                    "kernel": {
                        "n": [250, 1000],
                        "error_mean": [0.5, 0.2],
                        "error_std": [0.01, 0.01],
                        "slope": -0.66,
                        "intercept": 1.3,
                        "n_at_target": 1000.0,
                    }
                },
            },
            "spectrum": {
                "config": {},
                "units": {
                    "result": {
                        "k": 10,
                        "n_big": 100,
                        "rows": [
                            {
                                "n": n,
                                "measured_mse": 0.1 / n,
                                "predicted_top_k": 0.11 / n,
                                "predicted_flat_tail": 0.09 / n,
                            }
                            for n in (10, 20)
                        ],
                    }
                },
            },
            "lazy": {
                "config": {},
                "units": {},
                "summary": {
                    a: {
                        f"{k}_{s}": 0.5
                        for k in (
                            "test_accuracy",
                            "kernel_change",
                            "distance_linear",
                            "distance_quadratic",
                            "alignment",
                            "alignment_init",
                        )
                        for s in ("mean", "std")
                    }
                    for a in ("1", "10")
                },
            },
        },
    }
    (tmp_path / "mnist1d.json").write_text(json.dumps(doc))
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "mnist1d.png").stat().st_size > 0
