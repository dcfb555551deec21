"""`spectral.learning_curve` (the eigenlearning estimate of kernel ridge regression's error) and
`spectral.target_spectrum`: against closed forms in float64 and against kernel regression run on
Gaussian designs, with tolerances from the number of trials."""

import numpy as np
import pytest

from jaxntk.spectral import learning_curve, target_spectrum


def flat_spectrum_closed_form(lam, modes, power, n, ridge, noise):
    """M modes of one eigenvalue λ: Mλ/(λ+κ) + δ/κ = n is the quadratic
    n κ² + (nλ − Mλ − δ) κ − δλ = 0, whose positive root gives everything else."""
    b = n * lam - modes * lam - ridge
    kappa = (-b + np.sqrt(b * b + 4 * n * ridge * lam)) / (2 * n)
    learn = lam / (lam + kappa)
    overfit = n / (n - modes * learn**2)
    test = overfit * ((1 - learn) ** 2 * power + noise)
    return kappa, test, (ridge / (n * kappa)) ** 2 * test


@pytest.mark.parametrize("ridge", [1e-3, 0.1, 5.0])
def test_a_flat_spectrum_matches_its_closed_form(ridge):
    lam, modes, noise = 0.02, 50, 0.05
    coef = np.zeros((modes, 3))
    coef[:10] = np.random.default_rng(0).normal(size=(10, 3))
    sizes = np.array([5, 20, 49, 50, 51, 200, 5000])
    curve = learning_curve(np.full(modes, lam), coef, sizes, ridge, noise=noise)
    power = np.mean(np.sum(coef**2, axis=0))  # mean over the 3 outputs of Σ_i v_i²
    kappa, test, train = flat_spectrum_closed_form(lam, modes, power, sizes, ridge, noise)
    np.testing.assert_allclose(curve.kappa, kappa, rtol=1e-10)
    np.testing.assert_allclose(curve.test_mse, test, rtol=1e-10)
    np.testing.assert_allclose(curve.train_mse, train, rtol=1e-10)
    np.testing.assert_array_equal(curve.n, sizes)


def test_ridgeless_past_the_rank_learns_every_mode_and_amplifies_the_noise():
    lam = np.array([1.0, 0.5, 0.25, 0.0])  # rank 3
    curve = learning_curve(lam, [1.0, -2.0, 0.5, 3.0], [2, 3, 4, 10], 0.0, noise=0.1)
    np.testing.assert_array_equal(curve.kappa[1:], 0.0)
    # n = 3, the rank: E_0 = 3 / (3 − 3) is infinite; past it only the noise and the λ = 0 mode
    assert curve.test_mse[1] == np.inf
    np.testing.assert_allclose(curve.test_mse[2:], [4 / 1 * 9.1, 10 / 7 * 9.1], rtol=1e-12)
    assert curve.kappa[0] > 0 and np.isfinite(curve.test_mse[0])


def test_kernel_regression_on_gaussian_designs_meets_the_estimate():
    """y = Σ_j v_j z_j + ε with z ~ N(0, I_M) and the kernel Σ_j λ_j z_j z'_j: the fitted
    coefficients β̂ = Λ Zᵀ (K + δI)⁻¹ y give the test error ‖β̂ − v‖² + noise exactly."""
    rng = np.random.default_rng(1)
    modes, ridge, noise, trials = 200, 1e-3, 0.01, 150
    lam, coef = np.arange(1, modes + 1) ** -1.5, np.arange(1, modes + 1) ** -0.75
    for n in (30, 100):
        errors = []
        for _ in range(trials):
            z = rng.normal(size=(n, modes))
            y = z @ coef + np.sqrt(noise) * rng.normal(size=n)
            fitted = lam * (z.T @ np.linalg.solve((z * lam) @ z.T + ridge * np.eye(n), y))
            errors.append(np.sum((fitted - coef) ** 2) + noise)
        mean, sem = np.mean(errors), np.std(errors) / np.sqrt(trials)
        predicted = learning_curve(lam, coef, n, ridge, noise=noise).test_mse[0]
        # 4 standard errors of the trials, and 2 % for the estimate's finite-n bias (~1 % here)
        assert abs(mean - predicted) <= 4 * sem + 0.02 * predicted, (n, mean, sem, predicted)


def test_target_spectrum_recovers_the_modes_of_a_finite_rank_kernel():
    rng = np.random.default_rng(2)
    size, lam = 20000, np.array([1.0, 0.5, 0.2])
    coef = np.array([0.8, -0.6, 0.3])
    z = rng.normal(size=(size, 3))
    y = z @ coef + 0.1 * rng.normal(size=size)
    e, u = np.linalg.eigh((z * np.sqrt(lam)).T @ (z * np.sqrt(lam)))  # the 3 × 3 dual problem
    vectors = (z * np.sqrt(lam)) @ u / np.sqrt(e)  # eigenvectors of K_N = Z Λ Zᵀ, orthonormal
    est_lam, est_coef, noise = target_spectrum(e, vectors, y)
    # sample covariances: relative errors of order √(2/N) ≈ 0.01; 5 of them allowed
    np.testing.assert_allclose(est_lam, lam, rtol=0.05)
    np.testing.assert_allclose(np.abs(est_coef), np.abs(coef), atol=0.05)
    np.testing.assert_allclose(noise, 0.01, atol=0.005)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eigenvalues": [[1.0]]}, "eigenvalues must be"),
        ({"eigenvalues": [1.0, -1.0]}, "eigenvalues must be"),
        ({"target_coefficients": [1.0, 2.0, 3.0]}, "target_coefficients must be"),
        ({"n": 0}, "n must be"),
        ({"n": [1.5]}, "n must be"),
        ({"ridge": -1.0}, "ridge must be"),
        ({"noise": float("nan")}, "noise must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"eigenvalues": [1.0, 0.5], "target_coefficients": [1.0, 0.0], "n": 10, **kwargs}
    ridge, noise = args.pop("ridge", 0.1), args.pop("noise", 0.0)
    with pytest.raises(ValueError, match=match):
        learning_curve(**args, ridge=ridge, noise=noise)
    with pytest.raises(ValueError, match="eigenvectors must be"):
        target_spectrum([1.0, 2.0], np.eye(3)[:, :1], np.zeros(3))
