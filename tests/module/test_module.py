"""Tests of trvae.module: shapes, loss composition and the count likelihoods."""

from __future__ import annotations

import pytest
import torch

from trvae.module import TRVAEModule
from trvae.module.likelihoods import nb_log_likelihood, zinb_log_likelihood
from trvae.module.mmd import mmd_all_pairs

N_INPUT, N_CONDITIONS, N_LATENT, N_MMD, BATCH = 12, 3, 4, 8, 10


def _module(likelihood: str, **kwargs) -> TRVAEModule:
    torch.manual_seed(0)
    params = {"n_latent": N_LATENT, "n_hidden": (16,), "n_mmd": N_MMD, "likelihood": likelihood}
    params.update(kwargs)
    return TRVAEModule(N_INPUT, N_CONDITIONS, **params)


def _batch(likelihood: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if likelihood == "mse":
        x = torch.rand(BATCH, N_INPUT, generator=g) * 3.0
    else:
        x = torch.poisson(torch.full((BATCH, N_INPUT), 4.0), generator=g)
    condition = torch.arange(BATCH) % N_CONDITIONS
    return x, condition, x.sum(1)


@pytest.mark.parametrize("likelihood", ["mse", "nb", "zinb"])
@pytest.mark.parametrize("n_hidden", [(16,), (16, 8), ()])
def test_shapes(likelihood, n_hidden):
    module = _module(likelihood, n_hidden=n_hidden)
    x, condition, library = _batch(likelihood)
    inf = module.inference(x, condition)
    for key in ("z_mean", "z_logvar", "z"):
        assert inf[key].shape == (BATCH, N_LATENT)
    gen = module.generative(inf["z"], condition, library)
    assert gen["y"].shape == (BATCH, N_MMD)
    assert gen["mean"].shape == (BATCH, N_INPUT)
    if likelihood == "mse":
        assert set(gen) == {"y", "mean"}
    else:
        assert gen["theta"].shape == (BATCH, N_INPUT)
        assert torch.all(gen["mean"] >= 0) and torch.all(gen["theta"] > 0)
        # the mean is the library size times a composition over genes
        torch.testing.assert_close(gen["mean"].sum(1), library)
    if likelihood == "zinb":
        assert gen["dropout_logits"].shape == (BATCH, N_INPUT)
    else:
        assert "dropout_logits" not in gen


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_likelihoods_need_the_library(likelihood):
    module = _module(likelihood)
    x, condition, _ = _batch(likelihood)
    with pytest.raises(ValueError, match=r"library size"):
        module(x, condition)


def test_unknown_likelihood():
    with pytest.raises(ValueError, match=r"likelihood must be one of"):
        _module("poisson")


@pytest.mark.parametrize("likelihood", ["mse", "nb", "zinb"])
def test_loss_terms_finite_and_weighted_sum(likelihood):
    module = _module(likelihood, alpha=0.3, beta=7.0)
    x, condition, library = _batch(likelihood)
    terms = module.loss(x, condition, library)
    assert set(terms) == {"loss", "reconstruction", "kl", "mmd"}
    for value in terms.values():
        assert value.shape == ()
        assert torch.isfinite(value)
    assert terms["kl"].item() >= 0 and terms["mmd"].item() >= 0
    expected = terms["reconstruction"] + 0.3 * terms["kl"] + 7.0 * terms["mmd"]
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    for name, param in module.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


def test_beta_zero_skips_the_mmd():
    module = _module("mse", beta=0.0)
    x, condition, library = _batch("mse")
    terms = module.loss(x, condition, library)
    assert terms["mmd"].item() == 0.0
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + module.alpha * terms["kl"])


@pytest.mark.parametrize("mmd_on", ["y", "z"])
def test_mmd_acts_on_the_chosen_layer(mmd_on):
    """``mmd_on`` picks the penalised code; with z, the MMD's gradient stops at the encoder."""
    module = _module("mse", beta=1.0, mmd_on=mmd_on)
    x, condition, _ = _batch("mse")
    torch.manual_seed(0)
    terms = module.loss(x, condition)
    torch.manual_seed(0)
    inf, gen = module(x, condition)
    code = gen["y"] if mmd_on == "y" else inf["z"]
    expected = mmd_all_pairs(code, condition, module.n_conditions, module.mmd_bandwidths)
    torch.testing.assert_close(terms["mmd"], expected)
    terms["mmd"].backward()
    decoder_grads = [p.grad for p in module.mmd_layer.parameters()]
    assert all(g is None for g in decoder_grads) == (mmd_on == "z")
    assert module.z_mean.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mmd_on must be one of"):
        _module("mse", mmd_on="x")


def test_nb_log_likelihood_matches_torch_distribution():
    g = torch.Generator().manual_seed(1)
    shape = (50, 7)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) * 30 + 0.05
    theta = torch.rand(shape, generator=g, dtype=torch.float64) * 10 + 0.1
    x = torch.poisson(mu, generator=g)
    reference = torch.distributions.NegativeBinomial(
        total_count=theta, logits=torch.log(mu / theta)
    ).log_prob(x)
    torch.testing.assert_close(nb_log_likelihood(x, mu, theta), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", ["nb", "zinb"])
def test_likelihoods_are_normalised(fn):
    x = torch.arange(0, 400, dtype=torch.float64)[:, None]
    mu = torch.tensor([[0.5, 3.0, 20.0]], dtype=torch.float64)
    theta = torch.tensor([[0.7, 2.0, 10.0]], dtype=torch.float64)
    if fn == "nb":
        log_p = nb_log_likelihood(x, mu, theta)
    else:
        log_p = zinb_log_likelihood(x, mu, theta, torch.full_like(mu, 0.4))
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(3, dtype=torch.float64))


def test_zinb_reduces_to_nb_without_inflation():
    g = torch.Generator().manual_seed(2)
    shape = (40, 5)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) * 10 + 0.1
    theta = torch.rand(shape, generator=g, dtype=torch.float64) * 5 + 0.2
    x = torch.poisson(mu, generator=g)
    assert (x == 0).any() and (x > 0).any()
    pi_logits = torch.full(shape, -1e4, dtype=torch.float64)
    torch.testing.assert_close(
        zinb_log_likelihood(x, mu, theta, pi_logits), nb_log_likelihood(x, mu, theta)
    )


def test_zinb_zero_probability_with_full_inflation():
    mu = torch.tensor([[5.0, 50.0]], dtype=torch.float64)
    theta = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    pi_logits = torch.full_like(mu, 30.0)
    zero = zinb_log_likelihood(torch.zeros_like(mu), mu, theta, pi_logits)
    torch.testing.assert_close(zero, torch.zeros_like(mu), atol=1e-10, rtol=0)


@pytest.mark.parametrize("likelihood", ["mse", "nb", "zinb"])
def test_eval_inference_is_deterministic(likelihood):
    module = _module(likelihood).eval()
    x, condition, _ = _batch(likelihood)
    first = module.inference(x, condition)
    second = module.inference(x, condition)
    assert torch.equal(first["z"], first["z_mean"])
    assert torch.equal(first["z"], second["z"])
    module.train()
    sampled = module.inference(x, condition)
    assert not torch.equal(sampled["z"], sampled["z_mean"])


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_sample_gives_non_negative_integers(likelihood):
    module = _module(likelihood).eval()
    x, condition, library = _batch(likelihood)
    with torch.no_grad():
        _, gen = module(x, condition, library)
    torch.manual_seed(0)
    counts = module.sample(gen)
    assert counts.shape == x.shape
    assert torch.all(counts >= 0)
    assert torch.equal(counts, counts.round())
    assert counts.sum() > 0


def test_sample_mse_is_mean_plus_residual_noise():
    module = _module("mse").eval()
    module.residual_sd.fill_(0.5)
    x, condition, library = _batch("mse")
    with torch.no_grad():
        _, gen = module(x, condition, library)
    torch.manual_seed(0)
    draws = module.sample(gen)
    assert draws.shape == x.shape
    residual = draws - gen["mean"]
    assert 0.4 < float(residual.std()) < 0.6
    torch.manual_seed(0)
    assert torch.equal(draws, module.sample(gen))
    module.x_min.fill_(0.0)
    assert float(module.sample(gen).min()) >= 0.0


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_decoder_conditioning(architecture):
    """``mmd_layer``: the decoder after y ignores s; ``all_layers``: s changes it for a fixed y."""
    image = {"architecture": "conv", "image_shape": (3, 4)} if architecture == "conv" else {}
    y = torch.randn(BATCH, N_MMD, generator=torch.Generator().manual_seed(3))
    a = torch.nn.functional.one_hot(torch.zeros(BATCH, dtype=torch.long), N_CONDITIONS).float()
    b = torch.nn.functional.one_hot(torch.ones(BATCH, dtype=torch.long), N_CONDITIONS).float()
    for conditioning in ("mmd_layer", "all_layers"):
        module = _module("mse", decoder_conditioning=conditioning, **image).eval()
        out_a, out_b = module.decoder(y, a), module.decoder(y, b)
        assert out_a.shape == (BATCH, N_INPUT if architecture == "conv" else 16)
        if conditioning == "mmd_layer":
            torch.testing.assert_close(out_a, out_b)
        else:
            assert (out_a - out_b).abs().max() > 1e-3
    x, condition, _ = _batch("mse")
    module = _module("mse", decoder_conditioning="all_layers", mmd_estimator="unbiased", **image)
    loss = module.loss(x.clamp(0, 1) if image else x, condition)
    assert torch.isfinite(loss["loss"])
    with pytest.raises(ValueError, match="decoder_conditioning"):
        _module("mse", decoder_conditioning="late")
    with pytest.raises(ValueError, match="mmd_estimator"):
        _module("mse", mmd_estimator="plugin")
