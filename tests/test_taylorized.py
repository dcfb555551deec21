"""The real-data experiment `taylorized`: the digits split and its standardization, the missing
extra, the two parameterizations, the side-by-side trainer against separate runs and the closed
form, and the experiment end to end at a tiny size."""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import cli
from jaxntk.data import DIGITS_INSTALL, load_digits, stratified_split
from jaxntk.experiments import taylorized as tz

pytest.importorskip("sklearn", reason="the digits extra: pip install -e '.[digits]'")


def _digits_by_hand():
    from sklearn.datasets import load_digits as sk_digits

    images, labels = sk_digits(return_X_y=True)
    return images, labels.astype(np.int64)


@pytest.mark.parametrize("n_train, n_test", [(300, 360), (1437, 360), (50, 17)])
def test_split_is_stratified_disjoint_and_fixed_by_the_seed(n_train, n_test):
    _, labels = _digits_by_hand()
    share = np.bincount(labels) / labels.size
    train, test = stratified_split(labels, n_train=n_train, n_test=n_test, seed=3)
    assert train.size == n_train and test.size == n_test
    assert np.intersect1d(train, test).size == 0 and np.unique(train).size == n_train
    # each class holds its share of each part, to within a row or two
    assert np.all(np.abs(np.bincount(labels[test], minlength=10) - n_test * share) <= 1.0)
    assert np.all(np.abs(np.bincount(labels[train], minlength=10) - n_train * share) <= 2.0)
    again = stratified_split(labels, n_train=n_train, n_test=n_test, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    other = stratified_split(labels, n_train=n_train, n_test=n_test, seed=4)
    assert not np.array_equal(np.sort(other[1]), np.sort(test))


def test_split_keeps_a_rare_class_in_proportion():
    labels = np.array([0] * 90 + [1] * 10)
    train, test = stratified_split(labels, n_train=50, n_test=40, seed=0)
    assert np.bincount(labels[test]).tolist() == [36, 4]
    assert np.bincount(labels[train]).tolist() == [45, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_train=1500, n_test=360), "n_train \\+ n_test = 1860 exceeds the 1797 rows"),
        (dict(n_train=0, n_test=10), "n_train must be ≥ 1"),
    ],
)
def test_split_sizes_that_do_not_fit_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(_digits_by_hand()[1], seed=0, **kwargs)


def test_digits_are_standardized_with_the_training_statistics():
    images, labels = _digits_by_hand()
    train, test = stratified_split(labels, n_train=400, n_test=200, seed=7)
    mean, std = images[train].mean(0), images[train].std(0)
    scale = np.where(std > 0, std, 1.0)
    task = load_digits(n_train=400, n_test=200, seed=7)
    np.testing.assert_allclose(task.x_train, (images[train] - mean) / scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(task.x_test, (images[test] - mean) / scale, rtol=1e-5, atol=1e-5)
    assert np.array_equal(task.y_test, labels[test]) and task.y_test.dtype == jnp.int32
    # the test pixels are not standardized with their own statistics
    assert np.abs(np.asarray(task.x_test).mean(0)).max() > 0.05
    hot = load_digits(n_train=400, n_test=200, seed=7, one_hot=True)
    assert np.array_equal(hot.y_train, np.eye(10)[labels[train]])
    assert hot.y_train.dtype == jnp.float32


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    with pytest.raises(ModuleNotFoundError) as err:
        load_digits()
    assert DIGITS_INSTALL in str(err.value) and "\n" not in str(err.value)
    rc = cli.main(["reproduce", "--only", "taylorized", "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and 'pip install -e ".[digits]"' in lines[0]


@pytest.mark.parametrize("name", tz.MODELS)
@pytest.mark.slow
def test_both_parameterizations_give_the_same_initial_function(name):
    x = load_digits(n_train=20, n_test=10).x_train
    outputs = {}
    for param in tz.PARAMETERIZATIONS:
        module = tz.make_model(name, 6, param)
        outputs[param] = module.apply(module.init(jax.random.PRNGKey(0), x[:1]), x)
    assert outputs["ntk"].shape == (20, 10)
    np.testing.assert_allclose(outputs["ntk"], outputs["standard"], rtol=1e-5, atol=1e-6)


def test_a_dense_layer_is_its_formula():
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    for param in tz.PARAMETERIZATIONS:
        layer = tz.Dense(3, param)
        p = layer.init(jax.random.PRNGKey(0), x)["params"]
        w, b = np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64)
        if param == "ntk":
            expected = np.asarray(x, np.float64) @ w / 2.0 + 0.1 * b  # σ_w/√4 = ½, σ_b = 0.1
        else:
            expected = np.asarray(x, np.float64) @ w + b
        np.testing.assert_allclose(layer.apply({"params": p}, x), expected, rtol=1e-5)


@pytest.mark.slow
def test_side_by_side_runs_are_the_separate_runs_and_order_one_is_the_closed_form(x64):
    """In float64: the side-by-side trainer's losses are those of `jn.train` per variant, its
    order-1 test outputs are `jn.ntk_predict`'s at the same steps, and at a small learning rate
    the distance to the full network falls with the order (the Taylor remainder)."""
    task = load_digits(n_train=30, n_test=20, seed=1, one_hot=True, dtype=np.float64)
    module = tz.make_model("mlp", 8, "ntk", jnp.float64)
    params0 = module.init(jax.random.PRNGKey(2), task.x_train[:1])
    model = jn.TaylorModel(module.apply, params0)
    run = tz.train_taylorized(model, task, (1, 2), loss="mse", steps=12, lr=0.5, eval_every=4)
    assert run.history["step"].tolist() == [0, 4, 8, 12]
    for i, variant in enumerate(["full", "ntk", "ntk+quadntk"]):
        alone = jn.train(model, task, variant, steps=12, lr=0.5, eval_every=4, progress=False)
        np.testing.assert_allclose(
            run.history["test_loss"][0, 0, :, i], alone.history["test_loss"][0, 0], rtol=1e-12
        )
    outputs = run.history["test_output"][0, 0].reshape(4, 3, 20, 10)
    closed = jn.ntk_predict(
        module.apply, params0, task.x_train, task.y_train, task.x_test, steps=[0, 4, 8, 12], lr=0.5
    )
    np.testing.assert_allclose(outputs[:, 1], closed.test, rtol=1e-9, atol=1e-12)
    gap = [np.linalg.norm(outputs[-1, k] - outputs[-1, 0]) for k in (1, 2)]
    assert gap[1] < 0.2 * gap[0]


@pytest.mark.slow
def test_taylorized_end_to_end(tmp_path, capsys):
    cfg = dataclasses.replace(
        tz.PRESETS["cpu"],
        models=("mlp",),
        parameterizations=("ntk",),
        widths=(8,),
        n_train=40,
        n_test=30,
        steps=20,
        eval_every=10,
    )
    doc = tz.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "taylorized.json").read_text())
    assert saved["summary"] == doc["summary"] and len(saved["results"]) == 2 * 4
    check = saved["ntk_predict_check"]
    assert len(check) == 1 and check[0]["max_relative_deviation"] < 1e-4
    with np.load(tmp_path / "taylorized.npz") as z:
        for r in saved["results"]:
            assert r["step"] == [0, 10, 20]
            assert r["movement"][0] == 0.0 and r["movement"][-1] > 0
            assert r["distance"][0] is None  # 0/0 before the network moves
            key = f"mlp/ntk/8/0/{r['loss']}/{r['order']}"
            np.testing.assert_allclose(z[f"{key}/test_loss"], r["test_loss"])
            if r["order"] == 0:
                assert r["distance"][1:] == [0.0, 0.0]
            else:
                assert 0 < r["distance"][-1] < 1
        ce = [r for r in saved["results"] if r["loss"] == "cross_entropy"]
        for r in ce:  # accuracy from the recorded outputs is the trainer's own
            assert np.all(np.isfinite(r["test_loss"])) and 0 <= r["test_accuracy"][-1] <= 1
    for s in saved["summary"]:
        assert s["distance_3"] < s["distance_1"]
    lines = tz.table(saved).splitlines()
    assert len(lines) == 2 + len(saved["summary"]) and lines[0].startswith("| model |")
    first = saved["summary"][0]
    assert f"| mlp | ntk | MSE | 8 | {first['distance_1']:.3g} |" in lines[2]
    distance_png, accuracy_png = (
        tmp_path / "taylorized-distance.png",
        tmp_path / "taylorized-accuracy.png",
    )
    for png in (distance_png, accuracy_png):
        assert png.read_bytes()[:4] == b"\x89PNG"
        png.unlink()
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert distance_png.exists() and accuracy_png.exists()
    assert "taylorized" in capsys.readouterr().out


def test_taylorized_is_opt_in_and_its_settings_are_checked():
    assert "taylorized" not in cli.DEFAULT_EXPERIMENTS and "taylorized" in cli._experiments()
    with pytest.raises(ValueError, match="models must be a non-empty selection"):
        tz.run(dataclasses.replace(tz.PRESETS["cpu"], models=("resnet",)), None)
    with pytest.raises(ValueError, match="orders must be ints ≥ 1"):
        tz.run(dataclasses.replace(tz.PRESETS["cpu"], orders=(0, 1)), None)
