"""``precision="bf16-mixed"``: bfloat16 autocast on CPU, float32 weights, outputs and loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trvae import TRVAE, TRVAEError
from trvae.cli import main
from trvae.module.mmd import mmd_all_pairs
from trvae.train.plan import TrainingPlan
from trvae.train.precision import PRECISIONS, autocast, check_precision

TINY = {"n_hidden": (32,), "n_latent": 4, "n_mmd": 16}
TRAIN = {"max_epochs": 30, "batch_size": 64, "lr": 0.01, "early_stopping": False}
TRAIN.update(progress_bar=False, accelerator="cpu")


@pytest.fixture(scope="module")
def adata(synthetic_adata):
    return synthetic_adata(n_cells_per_group=40, n_genes=30, n_cell_types=2, seed=5)


@pytest.fixture(scope="module")
def models(adata) -> dict[str, TRVAE]:
    """The same model (seed, data) trained at both precisions."""
    return {
        p: TRVAE(adata, condition_key="condition", **TINY).train(precision=p, **TRAIN)
        for p in PRECISIONS
    }


def test_check_precision_names_and_aliases():
    assert check_precision("32") == "32"
    assert check_precision(32) == "32"
    assert check_precision("32-true") == "32"
    assert check_precision("bf16-mixed") == "bf16-mixed"
    assert check_precision("BF16") == "bf16-mixed"
    for bad in ("16-mixed", "64", "fp8", None, 1.5, True):
        with pytest.raises(TRVAEError, match="precision must be one of"):
            check_precision(bad)
    with pytest.raises(TRVAEError, match="precision must be one of"):
        TrainingPlan(precision="16-mixed")


def test_bad_precision_is_refused_before_training(adata):
    model = TRVAE(adata, condition_key="condition", **TINY)
    with pytest.raises(TRVAEError, match="precision"):
        model.train(precision="half", **TRAIN)
    assert not model.is_trained
    with pytest.raises(TRVAEError, match="precision"):
        model.get_latent(adata, precision="16")


def test_autocast_context():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16-mixed", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_mmd_is_float32_under_autocast():
    y = torch.randn(40, 6)
    cond = torch.arange(40) % 2
    reference = mmd_all_pairs(y, cond, 2)
    with autocast("bf16-mixed", "cpu"):
        value = mmd_all_pairs(y.bfloat16(), cond, 2)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=0.05, atol=1e-4)


def test_bf16_training_weights_outputs_float32(models, adata, tmp_path):
    model = models["bf16-mixed"]
    history = model.history
    assert np.isfinite(history.drop(columns=["epoch"]).to_numpy()).all()
    assert history["val_loss"].iloc[-1] < 0.5 * history["val_loss"].iloc[0]
    for key, value in model.module.state_dict().items():
        assert not value.is_floating_point() or value.dtype == torch.float32, key
    model.save(tmp_path / "m")
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # the state dict
    floats = [v for v in saved.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    control = adata[adata.obs["condition"] == "control"]
    for mode in ("decode", "residual"):
        pred = model.predict(control, "stimulated", mode=mode, precision="bf16-mixed")
        assert pred.X.dtype == np.float32 and np.isfinite(pred.X).all()
    assert model.get_latent(adata, precision="bf16-mixed").dtype == np.float32
    assert model.get_mmd_layer(adata, precision="bf16-mixed").dtype == np.float32


def test_bf16_close_to_fp32(models, adata):
    """bf16-mixed inference of a model: close to its fp32 inference; bf16-mixed training: close
    to fp32 training (same seeds). Measured: inference correlation 0.99996; trained in bf16,
    0.996 on per-gene means and 0.989 cell by cell (fp32 with another seed: 0.92 / 0.88; an
    untrained model: 0.15 / 0.14)."""
    control = adata[adata.obs["condition"] == "control"]
    fp32, bf16 = models["32"], models["bf16-mixed"]
    exact = fp32.predict(control, "stimulated", mode="decode").X
    approx = fp32.predict(control, "stimulated", mode="decode", precision="bf16-mixed").X
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.999
    assert np.abs(approx - exact).max() < 0.1 * np.abs(exact).max()
    latent = fp32.get_latent(adata, precision="bf16-mixed")
    assert np.corrcoef(latent.ravel(), fp32.get_latent(adata).ravel())[0, 1] > 0.999
    trained_bf16 = bf16.predict(control, "stimulated", mode="decode", precision="bf16-mixed").X
    assert np.corrcoef(trained_bf16.mean(0), exact.mean(0))[0, 1] > 0.98
    assert np.corrcoef(trained_bf16.ravel(), exact.ravel())[0, 1] > 0.97
    untrained = TRVAE(adata, condition_key="condition", **TINY)
    assert np.corrcoef(untrained.predict(control, "stimulated", mode="decode").X.mean(0),
                       exact.mean(0))[0, 1] < 0.9  # fmt: skip


def test_cli_precision(adata, tmp_path):
    data, out = tmp_path / "data.h5ad", tmp_path / "model"
    adata.write_h5ad(data)
    common = ["--condition-key", "condition", "--n-hidden", "16", "--n-latent", "4"]
    argv = ["train", str(data), *common, "--max-epochs", "2", "--quiet", "--out", str(out)]
    assert main([*argv, "--accelerator", "cpu", "--precision", "bf16-mixed"]) == 0
    pred = tmp_path / "pred.h5ad"
    argv = ["predict", str(out), str(data), "--target-condition", "stimulated"]
    argv += ["--accelerator", "cpu", "--precision", "bf16-mixed", "--out", str(pred)]
    assert main(argv) == 0 and pred.exists()
    assert main([*argv[:-2], "--precision", "16-mixed", "--out", str(pred)]) == 2
