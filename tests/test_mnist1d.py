"""The MNIST-1D experiment (jaxntk/experiments/mnist1d.py) at a tiny size: its rows are the
trained parameters evaluated again, its summary the rows' statistics, its figure drawn."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import cli
from jaxntk.experiments import mnist1d as exp

TINY = dataclasses.replace(
    exp.Config(),
    n_train=80,
    n_test=30,
    channels=4,
    variants=("full", "regularized"),
    seeds=(0, 1),
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
    with pytest.raises(ValueError, match="losses"):
        exp.run(dataclasses.replace(TINY, losses=("hinge",)), tmp_path)
    with pytest.raises(ValueError, match="activation"):
        exp.run(dataclasses.replace(TINY, activation="swish"), tmp_path)
    assert not (tmp_path / "mnist1d.json").exists()
