"""The count quantile read-out (:mod:`trvae.module.count_quantile`) and ``predict`` with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special

import trvae
from trvae.module import count_quantile as CQ


def _gen(mu, theta, logits=None) -> dict[str, torch.Tensor]:
    """Decoder outputs as :meth:`~trvae.module.TRVAEModule.generative` gives them."""
    out = {"mean": torch.as_tensor(mu, dtype=torch.float32)}
    out["theta"] = torch.as_tensor(theta, dtype=torch.float32).expand_as(out["mean"])
    if logits is not None:
        out["dropout_logits"] = torch.as_tensor(logits, dtype=torch.float32)
    return out


def test_nb_cdf_by_hand():
    # theta = 1 is the geometric distribution with success probability 1 / (1 + mu)
    mu, theta = np.array([2.0, 2.0, 2.0, 2.0]), np.ones(4)
    got = CQ.nb_cdf(np.array([-1.0, 0.0, 1.0, 2.0]), mu, theta)
    np.testing.assert_allclose(got, [0.0, 1 / 3, 1 / 3 + 2 / 9, 1 / 3 + 2 / 9 + 4 / 27])
    # ZINB: the zero mass pi on top of NB's
    pi = np.full(4, 0.25)
    zinb = CQ.count_cdf(np.array([-1.0, 0.0, 1.0, 2.0]), mu, theta, pi)
    np.testing.assert_allclose(
        zinb, [0.0, 0.25 + 0.75 / 3, 0.25 + 0.75 * 5 / 9, 0.25 + 0.75 * 19 / 27]
    )


def test_survival_function_by_hand_and_in_the_far_tail():
    # geometric (theta = 1, mu = 2): P(X > k) = (2/3)^(k + 1)
    k = np.array([-1.0, 0.0, 1.0, 100.0])
    got = CQ.count_sf(k, np.full(4, 2.0), np.ones(4), None)
    np.testing.assert_allclose(got, [1.0, 2 / 3, 4 / 9, (2 / 3) ** 101], rtol=1e-12)
    assert 1.0 - CQ.count_cdf(k[3:], np.full(1, 2.0), np.ones(1), None)[0] == 0.0  # rounds off
    zinb = CQ.count_sf(k, np.full(4, 2.0), np.ones(4), np.full(4, 0.25))
    np.testing.assert_allclose(zinb, [1.0, 0.5, 1 / 3, 0.75 * (2 / 3) ** 101], rtol=1e-12)


@pytest.mark.parametrize("pi", [None, 0.3])
def test_upper_quantile_inverts_the_survival_function(pi):
    k = np.arange(1.0, 200.0)
    mu, theta = np.full_like(k, 2.0), np.full_like(k, 1.5)
    zero = None if pi is None else np.full_like(k, pi)
    above, from_k = CQ.count_sf(k - 1, mu, theta, zero), CQ.count_sf(k, mu, theta, zero)
    inside = above - from_k > 1e-300
    for frac in (0.001, 0.5, 0.999):
        back = CQ.count_upper_quantile(above - frac * (above - from_k), mu, theta, zero)
        np.testing.assert_array_equal(back[inside], k[inside])


@pytest.mark.parametrize("pi", [None, 0.3])
def test_quantile_inverts_the_cdf(pi):
    k = np.arange(0.0, 40.0)[:, None].repeat(3, 1)
    mu, theta = (
        np.array([[0.5, 4.0, 20.0]]).repeat(40, 0),
        np.array([[0.3, 2.0, 10.0]]).repeat(40, 0),
    )
    zero = None if pi is None else np.full_like(mu, pi)
    below, upto = CQ.count_cdf(k - 1, mu, theta, zero), CQ.count_cdf(k, mu, theta, zero)
    inside = upto - below > 1e-9  # counts with a mass that a level can land in
    for frac in (0.001, 0.5, 0.999):
        back = CQ.count_quantile(below + frac * (upto - below), mu, theta, zero)
        np.testing.assert_array_equal(back[inside], k[inside])


def test_walked_quantile_matches_scipy():
    """The summed-CDF guess agrees with scipy's NB quantile to rounding (at most one count,
    which the exact correction settles), below and beyond its step limit."""
    from scipy import stats

    rng = np.random.default_rng(3)
    mu, theta = rng.gamma(0.5, 8.0, 5000), rng.gamma(2.0, 1.0, 5000)
    level = rng.uniform(0.0, 1.0 - 1e-9, 5000)
    walked = CQ._walk_quantile(level, mu, theta)
    scipy_k = stats.nbinom.ppf(level, theta, theta / (theta + mu))
    assert np.abs(walked - scipy_k).max() <= 1 and (walked == scipy_k).mean() > 0.99
    assert (walked > CQ.WALK_STEPS).any()  # the fallback was used too


@pytest.mark.parametrize("logits", [None, [[-1.0, 0.5]]])
def test_transfer_to_the_same_distribution_returns_the_counts(logits):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.poisson(3.0, (500, 2)).astype(np.float32))
    gen = _gen(
        np.full((500, 2), 3.0), [1.5, 0.7], None if logits is None else np.repeat(logits, 500, 0)
    )
    noise = torch.from_numpy(rng.random((500, 2), dtype=np.float32))
    out = CQ.transfer_counts(x, gen, gen, noise)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), x.numpy())


def test_outlier_counts_come_back_and_keep_their_order():
    """Counts far in the tail of their fitted distribution (1 - F rounds to 0 in float64)
    return unchanged to the same distribution and stay ordered when carried to another."""
    x = torch.tensor([[0.0, 3.0, 40.0, 76.0, 150.0, 400.0]]).T
    source = _gen(np.full((6, 1), 2.0), [5.0])
    noise = torch.full((6, 1), 0.5)
    np.testing.assert_array_equal(CQ.transfer_counts(x, source, source, noise).numpy(), x.numpy())
    up = CQ.transfer_counts(x, source, _gen(np.full((6, 1), 6.0), [5.0]), noise).numpy()[:, 0]
    assert (np.diff(up) > 0).all() and up[-1] > 400


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_transfer_gives_the_target_distribution_and_keeps_ranks(zero_inflated):
    """NB(2, theta 1.5) counts carried to NB(8, theta 1.5) (or the ZINB pair): the results follow
    the target's mean, variance and zero fraction, and a larger count never gets a smaller one
    at the same level."""
    rng = np.random.default_rng(1)
    n, theta, mu_s, mu_t = 40_000, 1.5, 2.0, 8.0
    pi_s, pi_t = (0.2, 0.1) if zero_inflated else (0.0, 0.0)
    nb = rng.poisson(rng.gamma(theta, mu_s / theta, n))
    x = np.where(rng.random(n) < pi_s, 0, nb).astype(np.float32)[:, None]
    logit = (lambda p: np.full((n, 1), special.logit(p))) if zero_inflated else (lambda p: None)
    source = _gen(np.full((n, 1), mu_s), [theta], logit(pi_s))
    target = _gen(np.full((n, 1), mu_t), [theta], logit(pi_t))
    levels = torch.from_numpy(rng.random((n, 1), dtype=np.float32))
    y = CQ.transfer_counts(torch.from_numpy(x), source, target, levels).numpy()[:, 0]
    mean_t = (1 - pi_t) * mu_t
    var_t = (1 - pi_t) * (mu_t + mu_t**2 / theta) + pi_t * (1 - pi_t) * mu_t**2
    assert abs(y.mean() - mean_t) < 0.05 * mean_t
    assert abs(y.var() - var_t) < 0.08 * var_t
    zero_t = pi_t + (1 - pi_t) * (theta / (theta + mu_t)) ** theta
    assert abs((y == 0).mean() - zero_t) < 0.01
    same_level = CQ.transfer_counts(torch.from_numpy(x), source, target, torch.full((n, 1), 0.5))
    order = np.argsort(x[:, 0], kind="stable")
    assert (np.diff(same_level.numpy()[order, 0]) >= 0).all()


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_predict_quantile_counts(likelihood):
    adata = trvae.datasets.simulate_perturbation("shared", n_genes=30, cells_per_group=30)
    model = trvae.TRVAE(adata, "condition", layer="counts", likelihood=likelihood, n_hidden=(16,))
    model.train(max_epochs=2, progress_bar=False, accelerator="cpu")
    ctrl = adata[adata.obs["condition"] == "control"].copy()
    ctrl.obs["note"] = np.arange(ctrl.n_obs)
    pred = model.predict(ctrl, "stimulated", seed=3, accelerator="cpu")
    assert pred.uns["trvae_prediction"]["values"] == "quantile"
    assert pred.shape == ctrl.shape and list(pred.var_names) == list(ctrl.var_names)
    assert (pred.obs["note"] == ctrl.obs["note"]).all()
    assert (pred.obs["condition"] == "stimulated").all()
    x = pred.X
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    again = model.predict(ctrl, "stimulated", seed=3, accelerator="cpu").X
    np.testing.assert_array_equal(again, x)
    assert not np.array_equal(model.predict(ctrl, "stimulated", seed=4, accelerator="cpu").X, x)
    # to the cells' own condition: their counts back
    same = model.predict(ctrl, "control", mode="quantile", accelerator="cpu").X
    np.testing.assert_array_equal(same, ctrl.layers["counts"].toarray())


def test_transfer_does_not_depend_on_the_threads():
    rng = np.random.default_rng(2)
    mu = rng.gamma(0.5, 4.0, (300, 20))
    x = torch.from_numpy(rng.poisson(mu).astype(np.float32))
    source, target = _gen(mu, np.full(20, 1.2)), _gen(mu * 2.0, np.full(20, 1.2))
    noise = torch.from_numpy(rng.random((300, 20), dtype=np.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = CQ.transfer_counts(x, source, target, noise)
        torch.set_num_threads(3)  # three chunks of 100 cells
        three = CQ.transfer_counts(x, source, target, noise)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one.numpy(), three.numpy())
