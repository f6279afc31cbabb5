"""Tests of the user-facing TRVAE model: transfer, persistence, reproducibility, errors."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import trvae
from trvae import TRVAE, TRVAEError
from trvae.data.cell_data import stratified_split
from trvae.metrics import r2_mean
from trvae.train.plan import evaluate

SMALL = {"n_hidden": (32,), "n_latent": 4, "n_mmd": 16}
QUIET = {"progress_bar": False, "batch_size": 32}
LOSS_COLUMNS = [
    f"{part}_{term}"
    for part in ("train", "val")
    for term in ("loss", "reconstruction", "kl", "mmd")
]


def _weights(model: TRVAE) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


@pytest.fixture(scope="module")
def small(synthetic_adata) -> ad.AnnData:
    return synthetic_adata(n_cells_per_group=20, n_genes=20, n_cell_types=2, seed=1)


@pytest.fixture(scope="module")
def trained(small) -> TRVAE:
    """Trained with a large learning rate so that the last epoch is not the best one.

    On the CPU: that scenario was built on its arithmetic (on a GPU the last epoch was the best).
    """
    return _train_past_best(small)


def _train_past_best(small, **train_kwargs) -> TRVAE:
    """The ``trained`` scenario's fit, with ``train_kwargs`` added."""
    model = TRVAE(small, condition_key="condition", **SMALL)
    return model.train(
        max_epochs=15, lr=0.05, early_stopping=False, accelerator="cpu", **QUIET, **train_kwargs
    )


@pytest.fixture(scope="module")
def counts(synthetic_adata) -> ad.AnnData:
    return synthetic_adata(
        n_cells_per_group=15, n_genes=20, n_cell_types=2, counts=True, sparse=True, seed=2
    )


@pytest.fixture
def untrained(small) -> TRVAE:
    return TRVAE(small, condition_key="condition", **SMALL)


# ------------------------------------------------------------------ transfer
def test_transfer_to_held_out_cell_type(synthetic_adata):
    """Hold out (type0, stimulated); predicting it from type0 controls recovers the shift."""
    adata = synthetic_adata(n_cells_per_group=40, n_genes=30, n_cell_types=4, seed=3)
    is_type0 = adata.obs["cell_type"] == "type0"
    held_out = is_type0 & (adata.obs["condition"] == "stimulated")
    control = adata[is_type0 & (adata.obs["condition"] == "control")]
    real = adata[held_out].X

    model = TRVAE(adata[~held_out].copy(), condition_key="condition", dropout=0.0, **SMALL)
    model.train(max_epochs=100, batch_size=64, lr=3e-3, early_stopping=False, progress_bar=False)
    pred = model.predict(control, "stimulated")

    change = pred.X.mean(0) - control.X.mean(0)
    true_shift = adata.uns["sim"]["true_shift"][0]
    assert np.corrcoef(change, true_shift)[0, 1] > 0.6
    shifted = adata.uns["sim"]["shift_genes"]
    assert np.mean(np.sign(change[shifted]) == np.sign(true_shift[shifted])) > 0.8
    r2_pred, r2_control = r2_mean(pred.X, real), r2_mean(control.X, real)
    assert r2_pred > r2_control + 0.1, (r2_pred, r2_control)


@pytest.mark.parametrize(("mmd_on", "mmd_grouping"), [("y", "within"), ("z", "shared")])
def test_grouped_unbiased_all_layers_model_trains_saves_and_loads(
    small, tmp_path, mmd_on, mmd_grouping
):
    """The non-default MMD options train, use the groups and survive save/load."""
    options = {
        "decoder_conditioning": "all_layers",
        "mmd_estimator": "unbiased",
        "mmd_group_key": "cell_type",
        "mmd_on": mmd_on,
        "mmd_grouping": mmd_grouping,
    }
    model = TRVAE(small, condition_key="condition", **SMALL, **options)
    assert model.init_params["mmd_groups"] == ["type0", "type1"]
    assert model.module.n_mmd_groups == 2
    model.train(max_epochs=3, **QUIET)
    assert np.isfinite(model.history[LOSS_COLUMNS].to_numpy()).all()
    model.save(tmp_path / "model")
    loaded = TRVAE.load(tmp_path / "model", adata=small)  # its training data: state matching
    assert {k: loaded.init_params[k] for k in options} == options
    np.testing.assert_array_equal(
        loaded.predict(small, "stimulated").X, model.predict(small, "stimulated").X
    )
    no_groups = small.copy()
    del no_groups.obs["cell_type"]
    assert loaded.predict(no_groups, "stimulated").shape == small.shape  # only training uses them


def test_bad_mmd_options(small):
    with pytest.raises(TRVAEError, match="mmd_group_key 'tissue' is not a column"):
        TRVAE(small, condition_key="condition", mmd_group_key="tissue")
    with pytest.raises(TRVAEError, match="mmd_estimator"):
        TRVAE(small, condition_key="condition", mmd_estimator="plugin")
    with pytest.raises(TRVAEError, match="decoder_conditioning"):
        TRVAE(small, condition_key="condition", decoder_conditioning="late")
    with pytest.raises(TRVAEError, match=r"mmd_on must be one of \('y', 'z'\), got 'x'"):
        TRVAE(small, condition_key="condition", mmd_on="x")
    with pytest.raises(TRVAEError, match="mmd_grouping"):
        TRVAE(small, condition_key="condition", mmd_grouping="across")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"n_latent": 0}, r"n_latent must be an integer >= 1, got 0"),
        ({"n_latent": 2.5}, r"n_latent must be an integer >= 1, got 2.5"),
        ({"n_hidden": 16}, r"n_hidden must be a sequence of layer widths"),
        ({"n_hidden": (32, 0)}, r"n_hidden\[1\] must be an integer >= 1, got 0"),
        ({"n_mmd": -1}, r"n_mmd must be an integer >= 1"),
        ({"alpha": -1.0}, r"alpha must be a finite number >= 0, got -1.0"),
        ({"beta": float("nan")}, r"beta must be a finite number >= 0, got nan"),
        ({"dropout": 1.0}, r"dropout must be a finite number in \[0, 1\), got 1.0"),
        ({"mmd_bandwidths": ()}, r"mmd_bandwidths must be a non-empty sequence"),
        ({"mmd_bandwidths": (1.0, 0.0)}, r"mmd_bandwidths\[1\] must be a finite number > 0"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_sizes_and_weights_are_named(small, option, message):
    with pytest.raises(TRVAEError, match=message):
        TRVAE(small, condition_key="condition", **{**SMALL, **option})


def test_integral_floats_and_numpy_sizes_are_taken(small):
    model = TRVAE(small, "condition", n_latent=4.0, n_hidden=np.array([32]), n_mmd=np.int64(16))
    assert (model.init_params["n_latent"], model.init_params["n_hidden"]) == (4, [32])
    assert type(model.init_params["n_mmd"]) is int


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"max_epochs": 0}, r"max_epochs must be an integer >= 1, got 0"),
        ({"max_epochs": -1}, r"max_epochs must be an integer >= 1, got -1"),
        ({"batch_size": 1}, r"batch_size must be an integer >= 2, got 1"),
        ({"lr": 0.0}, r"lr must be a finite number > 0, got 0.0"),
        ({"patience": 0}, r"patience must be an integer >= 1, got 0"),
        ({"validation_fraction": -0.1}, r"validation_fraction must be a finite number in \[0, 1\)"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be a finite number in \[0, 1\)"),
        ({"seed": -3}, r"seed must be an integer >= 0, got -3"),
        ({"lr_factor": 1.0}, r"lr_factor must be a finite number in \(0, 1\), got 1.0"),
        ({"kl_warmup": -2}, r"kl_warmup must be an integer >= 0, got -2"),
    ],
)
def test_bad_training_arguments_stop_before_training(small, option, message):
    model = TRVAE(small, condition_key="condition", **SMALL)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(TRVAEError, match=message):
        model.train(**{"max_epochs": 1, **QUIET, **option})
    assert not model.is_trained and model.history.empty
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_predict_out_must_name_a_file(trained, small, tmp_path):
    with pytest.raises(TRVAEError, match="is a directory; give a file path"):
        trained.predict(small[:5], "stimulated", out=tmp_path)
    assert not list(tmp_path.iterdir())


def test_bad_batch_size_of_inference_is_named(trained, small):
    with pytest.raises(TRVAEError, match=r"batch_size must be an integer >= 1, got 0"):
        trained.predict(small[:5], "stimulated", batch_size=0)
    with pytest.raises(TRVAEError, match=r"batch_size must be an integer >= 1, got 2.5"):
        trained.get_latent(small[:5], batch_size=2.5)


# ------------------------------------------------------------------ persistence
def test_save_load_predict_identical(trained, small, tmp_path):
    trained.save(tmp_path / "model")
    loaded = TRVAE.load(tmp_path / "model")
    assert loaded.is_trained and loaded.conditions_ == trained.conditions_
    assert loaded.var_names == trained.var_names
    assert _same_weights(_weights(loaded), _weights(trained))
    for target in ("control", "stimulated"):
        np.testing.assert_array_equal(
            loaded.predict(small, target).X, trained.predict(small, target).X
        )
    np.testing.assert_array_equal(loaded.get_latent(small), trained.get_latent(small))
    assert list(loaded.history.columns) == list(trained.history.columns)
    np.testing.assert_allclose(loaded.history["val_loss"], trained.history["val_loss"])


def test_save_refuses_to_overwrite(trained, small, tmp_path):
    path = tmp_path / "model"
    trained.save(path)
    with pytest.raises(TRVAEError, match=r"exists; pass overwrite=True"):
        trained.save(path)
    other = TRVAE(small, condition_key="condition", seed=7, **SMALL)  # untrained, other weights
    other.save(path, overwrite=True)
    loaded = TRVAE.load(path)
    assert not loaded.is_trained
    assert _same_weights(_weights(loaded), _weights(other))
    np.testing.assert_array_equal(
        loaded.predict(small, "stimulated").X, other.predict(small, "stimulated").X
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers


# ------------------------------------------------------------------ reproducibility
def test_same_seed_same_model_different_seed_different(small):
    def fit(model_seed: int, train_seed: int) -> TRVAE:
        model = TRVAE(small, condition_key="condition", seed=model_seed, **SMALL)
        return model.train(max_epochs=3, seed=train_seed, **QUIET)

    first, second = fit(0, 0), fit(0, 0)
    assert _same_weights(_weights(first), _weights(second))
    np.testing.assert_array_equal(
        first.predict(small, "stimulated").X, second.predict(small, "stimulated").X
    )
    pd.testing.assert_frame_equal(first.history, second.history)
    assert not _same_weights(_weights(first), _weights(fit(1, 0)))
    assert not _same_weights(_weights(first), _weights(fit(0, 1)))
    untrained_a = TRVAE(small, condition_key="condition", seed=0, **SMALL)
    untrained_b = TRVAE(small, condition_key="condition", seed=1, **SMALL)
    assert not _same_weights(_weights(untrained_a), _weights(untrained_b))


def test_latent_and_mmd_layer(trained, small):
    latent = trained.get_latent(small)
    assert latent.shape == (small.n_obs, 4)
    np.testing.assert_array_equal(latent, trained.get_latent(small))
    y = trained.get_mmd_layer(small)
    assert y.shape == (small.n_obs, 16)
    np.testing.assert_array_equal(y, trained.get_mmd_layer(small))
    y_stim = trained.get_mmd_layer(small, condition="stimulated")
    assert y_stim.shape == (small.n_obs, 16)
    is_stim = (small.obs["condition"] == "stimulated").to_numpy()
    np.testing.assert_allclose(y_stim[is_stim], y[is_stim], rtol=1e-6)
    assert not np.allclose(y_stim[~is_stim], y[~is_stim])


# ------------------------------------------------------------------ prediction
def test_predict_output(trained, small):
    control = small[small.obs["condition"] == "control"]
    pred = trained.predict(control, "stimulated")
    assert isinstance(pred, ad.AnnData)
    assert pred.shape == control.shape
    assert list(pred.var_names) == list(small.var_names)
    assert list(pred.obs_names) == list(control.obs_names)
    assert (pred.obs["condition"] == "stimulated").all()
    assert list(pred.obs["condition"].cat.categories) == trained.conditions_
    pd.testing.assert_series_equal(pred.obs["cell_type"], control.obs["cell_type"])
    assert (control.obs["condition"] == "control").all()  # the caller's obs is unchanged
    info = pred.uns["trvae_prediction"]
    assert info["values"] == "quantile" and info["target_condition"] == "stimulated"
    assert info["likelihood"] == "mse" and info["source_condition"] is None
    assert pred.X.dtype == np.float32 and np.isfinite(pred.X).all()
    assert not np.allclose(pred.X, trained.predict(control, "control").X)


def test_predict_realigns_shuffled_genes(trained, small):
    order = np.random.default_rng(0).permutation(small.n_vars)
    shuffled = small[:, order].copy()
    pred = trained.predict(shuffled, "stimulated")
    expected = trained.predict(small, "stimulated")
    assert list(pred.var_names) == list(small.var_names)
    np.testing.assert_array_equal(pred.X, expected.X)
    np.testing.assert_array_equal(trained.get_latent(shuffled), trained.get_latent(small))


def test_predict_with_source_condition_needs_no_obs_column(trained, small):
    control = small[small.obs["condition"] == "control"]
    bare = ad.AnnData(control.X.copy(), var=control.var.copy())
    bare.obs_names = control.obs_names
    pred = trained.predict(bare, "stimulated", source_condition="control")
    np.testing.assert_array_equal(pred.X, trained.predict(control, "stimulated").X)
    assert pred.uns["trvae_prediction"]["source_condition"] == "control"
    with pytest.raises(TRVAEError, match=r"'condition' is not a column of adata\.obs"):
        trained.predict(bare, "stimulated")


def test_predict_samples_are_seeded(trained, small):
    a = trained.predict(small, "stimulated", mode="decode", return_mean=False, seed=0)
    b = trained.predict(small, "stimulated", mode="decode", return_mean=False, seed=0)
    c = trained.predict(small, "stimulated", mode="decode", return_mean=False, seed=1)
    assert a.uns["trvae_prediction"]["values"] == "sample"
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


def test_predict_modes(trained, small):
    control = small[small.obs["condition"] == "control"]
    x = np.asarray(control.X)
    decoded = trained.predict(control, "stimulated", mode="decode")
    assert decoded.uns["trvae_prediction"]["values"] == "mean"
    to_self = trained.predict(control, "control", mode="decode").X
    residual = trained.predict(control, "stimulated", mode="residual").X
    expected = np.maximum(x + decoded.X - to_self, float(trained.module.x_min))
    np.testing.assert_allclose(residual, expected, rtol=1e-5, atol=1e-5)
    # carrying cells to their own condition leaves them unchanged
    np.testing.assert_allclose(trained.predict(control, "control", mode="residual").X, x, atol=1e-5)
    with pytest.raises(TRVAEError, match="mode must be"):
        trained.predict(control, "stimulated", mode="nonsense")


def test_sampling_noise_matches_training_residuals(trained, small):
    sd = trained.module.residual_sd.numpy()
    assert sd.shape == (small.n_vars,) and (sd > 0).all()
    decoded = trained.predict(small, "stimulated", mode="decode").X
    samples = trained.predict(small, "stimulated", mode="decode", return_mean=False).X
    noise_sd = (samples - decoded).std(0)
    unclipped = (samples > float(trained.module.x_min)).all(0)
    np.testing.assert_allclose(noise_sd[unclipped], sd[unclipped], rtol=0.5)


def test_predict_with_integer_condition_labels(small):
    adata = small.copy()
    adata.obs["dose"] = (adata.obs["condition"] == "stimulated").astype(int)
    model = TRVAE(adata, condition_key="dose", **SMALL)
    assert model.conditions_ == ["0", "1"]
    np.testing.assert_array_equal(model.predict(adata, 1).X, model.predict(adata, "1").X)
    assert (model.predict(adata, 1).obs["dose"] == "1").all()


# ------------------------------------------------------------------ training
def test_history_and_best_weights_restored(trained, small):
    history = trained.history
    assert isinstance(history, pd.DataFrame)
    assert set(LOSS_COLUMNS) <= set(history.columns)
    assert len(history) == 15 and list(history["epoch"]) == list(range(15))
    assert np.isfinite(history[LOSS_COLUMNS].to_numpy()).all()
    best = history.attrs["best_epoch"]
    assert best == int(history["val_loss"].idxmin())
    assert best < len(history) - 1, "the scenario should make the last epoch not the best"
    # the same run keeping the running batch norm statistics ends on the best epoch's state
    kept = _train_past_best(small, recompute_batch_norm=False)
    pd.testing.assert_frame_equal(kept.history, history)
    data = kept._cell_data(small)
    _, val_idx = stratified_split(data.conditions.numpy(), 0.1, 0)
    recomputed = evaluate(kept.module, data, val_idx, 1024)
    assert recomputed["loss"] == pytest.approx(history["val_loss"].min(), rel=1e-4)
    assert recomputed["mmd"] == pytest.approx(history["val_mmd"].iloc[best], rel=1e-4, abs=1e-7)
    # the default re-estimates those statistics only: the weights are the best epoch's too
    weights = dict(kept.module.named_parameters())
    for name, value in trained.module.named_parameters():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)


def test_training_leaves_adata_unchanged(small):
    x_before, obs_before = small.X.copy(), small.obs.copy()
    model = TRVAE(small, condition_key="condition", **SMALL)
    model.train(max_epochs=1, **QUIET)
    np.testing.assert_array_equal(small.X, x_before)
    pd.testing.assert_frame_equal(small.obs, obs_before)


def test_setup_anndata(small):
    adata = small.copy()
    adata.layers["expr"] = adata.X.copy()
    TRVAE.setup_anndata(adata, condition_key="condition", layer="expr")
    model = TRVAE(adata, **SMALL)
    assert model.condition_key == "condition" and model.layer == "expr"
    model.train(max_epochs=1, **QUIET)
    assert model.predict(adata, "control").shape == adata.shape
    with pytest.raises(TRVAEError, match=r"condition_key is required"):
        TRVAE(small.copy(), **SMALL)
    with pytest.raises(TRVAEError, match=r"'cond' is not a column"):
        TRVAE.setup_anndata(adata, condition_key="cond")


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_models_on_sparse_counts(counts, likelihood):
    adata = counts.copy()
    x = adata.X
    data_before = x.data.copy()
    model = TRVAE(adata, condition_key="condition", likelihood=likelihood, **SMALL)
    model.train(max_epochs=2, **QUIET)
    assert np.isfinite(model.history[LOSS_COLUMNS].to_numpy()).all()
    assert adata.X is x and type(adata.X) is type(x) and sparse.issparse(adata.X)
    np.testing.assert_array_equal(adata.X.data, data_before)

    means = model.predict(adata, "stimulated", mode="decode", return_mean=True).X
    assert means.dtype == np.float32 and (means >= 0).all() and np.isfinite(means).all()
    assert not np.array_equal(means, np.round(means))
    # the decoder's mean keeps each cell's library size
    np.testing.assert_allclose(means.sum(1), _dense(adata.X).sum(1), rtol=1e-4)
    samples = model.predict(adata, "stimulated", mode="decode", return_mean=False).X
    assert (samples >= 0).all()
    np.testing.assert_array_equal(samples, np.round(samples))
    assert model.predict(adata, "stimulated", mode="decode", return_mean=False).uns[
        "trvae_prediction"
    ]["values"] == ("sample")
    # residual read-out: each cell's counts plus the decoder's change, floored at 0
    x = _dense(adata.X)
    to_self = model.predict(adata, adata.obs["condition"].iloc[0], mode="decode").X
    residual = model.predict(adata, "stimulated", mode="residual")
    assert residual.uns["trvae_prediction"]["values"] == "residual"
    own = adata.obs["condition"].to_numpy() == adata.obs["condition"].iloc[0]
    expected = np.maximum(x + means - to_self, 0.0)
    np.testing.assert_allclose(residual.X[own], expected[own], rtol=1e-4, atol=1e-4)
    assert (residual.X >= 0).all() and float(model.module.x_min) == 0.0


def test_checkpoint_and_resume(small, tmp_path):
    def model() -> TRVAE:
        return TRVAE(small, condition_key="condition", **SMALL)

    straight = model().train(max_epochs=4, early_stopping=False, **QUIET)
    first = model().train(max_epochs=2, early_stopping=False, checkpoint_dir=tmp_path, **QUIET)
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "config.json").is_file()
    assert len(first.history) == 2
    resumed = model().train(
        max_epochs=4, early_stopping=False, checkpoint_dir=tmp_path, resume=True, **QUIET
    )
    assert len(resumed.history) == 4
    assert list(resumed.history["epoch"]) == [0, 1, 2, 3]
    # an interrupted and resumed run is the uninterrupted run
    np.testing.assert_allclose(resumed.history["val_loss"], straight.history["val_loss"], rtol=1e-5)
    with pytest.raises(TRVAEError, match=r"resume=True needs the checkpoint_dir"):
        model().train(max_epochs=1, resume=True, **QUIET)


# ------------------------------------------------------------------ errors
def test_unknown_condition_key_lists_columns(small):
    with pytest.raises(TRVAEError, match=r"'cond' is not a column.*'condition', 'cell_type'"):
        TRVAE(small, condition_key="cond", **SMALL)


def test_unknown_target_condition(untrained, small):
    with pytest.raises(TRVAEError, match=r"'treated' was not seen in training.*'control'"):
        untrained.predict(small, "treated")
    with pytest.raises(TRVAEError, match=r"'treated' was not seen"):
        untrained.predict(small, "control", source_condition="treated")


def test_unknown_condition_in_obs(untrained, small):
    other = small.copy()
    other.obs["condition"] = other.obs["condition"].cat.rename_categories({"stimulated": "treated"})
    with pytest.raises(TRVAEError, match=r"conditions not seen in training: \['treated'\]"):
        untrained.predict(other, "control")


def test_fewer_than_two_conditions(small):
    only_control = small[small.obs["condition"] == "control"].copy()
    with pytest.raises(TRVAEError, match=r"at least 2 conditions.*'control'"):
        TRVAE(only_control, condition_key="condition", **SMALL)


@pytest.mark.parametrize(
    ("value", "match"), [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")]
)
def test_non_finite_values(small, value, match):
    bad = small.copy()
    bad.X[3, 2] = value
    with pytest.raises(TRVAEError, match=match):
        TRVAE(bad, condition_key="condition", **SMALL)


def test_non_finite_values_in_predict(untrained, small):
    bad = small.copy()
    bad.X[0, 0] = np.nan
    with pytest.raises(TRVAEError, match=r"adata\.X contains 1 NaN"):
        untrained.predict(bad, "control")


def test_negative_values_with_nb(counts):
    bad = counts.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = -1
    with pytest.raises(TRVAEError, match=r"negative values"):
        TRVAE(bad, condition_key="condition", likelihood="nb", **SMALL)


def test_non_integer_values_with_zinb(counts, small):
    with pytest.raises(TRVAEError, match=r"non-integer values"):
        TRVAE(small, condition_key="condition", likelihood="zinb", **SMALL)
    bad = counts.copy()
    bad.X.data[0] += 0.5
    with pytest.raises(TRVAEError, match=r"non-integer values"):
        TRVAE(bad, condition_key="condition", likelihood="zinb", **SMALL)


def test_counts_with_mse_warn(counts):
    with pytest.warns(UserWarning, match=r"looks like raw counts"):
        TRVAE(counts, condition_key="condition", **SMALL)


def test_predict_with_missing_genes(untrained, small):
    with pytest.raises(TRVAEError, match=r"training genes missing.*'gene0'"):
        untrained.predict(small[:, 1:], "stimulated")
    with pytest.raises(TRVAEError, match=r"training genes missing.*'gene0'"):
        untrained.get_latent(small[:, 1:])


def test_empty_selection(untrained, small):
    with pytest.raises(TRVAEError, match=r"no cells"):
        TRVAE(small[[]], condition_key="condition", **SMALL)
    with pytest.raises(TRVAEError, match=r"no cells"):
        untrained.predict(small[[]], "stimulated")
    nobody = small[small.obs["condition"] == "nobody"]
    assert nobody.n_obs == 0
    with pytest.raises(TRVAEError, match=r"no cells"):
        untrained.get_latent(nobody)


def test_not_an_anndata(untrained, small):
    with pytest.raises(TRVAEError, match=r"must be an AnnData object, got ndarray"):
        TRVAE(np.zeros((4, 3)), condition_key="condition")
    with pytest.raises(TRVAEError, match=r"must be an AnnData object, got DataFrame"):
        untrained.predict(small.to_df(), "stimulated")


def test_unknown_layer(small):
    with pytest.raises(TRVAEError, match=r"layer 'counts' is not in adata\.layers"):
        TRVAE(small, condition_key="condition", layer="counts", **SMALL)


def test_unknown_likelihood(small):
    with pytest.raises(TRVAEError, match=r"likelihood must be one of"):
        TRVAE(small, condition_key="condition", likelihood="poisson", **SMALL)


def test_errors_are_value_errors():
    assert issubclass(trvae.TRVAEError, ValueError)
    assert issubclass(trvae.ModelLoadError, trvae.TRVAEError)


# ------------------------------------------------------------------ on-disk and real data
def test_backed_dense_matches_in_memory(small, tmp_path):
    small.write_h5ad(tmp_path / "small.h5ad")
    backed = ad.read_h5ad(tmp_path / "small.h5ad", backed="r")
    try:
        on_disk = TRVAE(backed, condition_key="condition", **SMALL).train(max_epochs=2, **QUIET)
        in_memory = TRVAE(small, condition_key="condition", **SMALL).train(max_epochs=2, **QUIET)
        np.testing.assert_array_equal(
            on_disk.predict(backed, "stimulated").X, in_memory.predict(small, "stimulated").X
        )
    finally:
        backed.file.close()


def test_backed_sparse(synthetic_adata, tmp_path):
    adata = synthetic_adata(n_cells_per_group=10, n_genes=10, n_cell_types=2, sparse=True)
    adata.write_h5ad(tmp_path / "sparse.h5ad")
    backed = ad.read_h5ad(tmp_path / "sparse.h5ad", backed="r")
    try:
        model = TRVAE(backed, condition_key="condition", **SMALL).train(max_epochs=1, **QUIET)
        assert model.predict(backed, "stimulated").shape == adata.shape
    finally:
        backed.file.close()


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_kang_subset_untrained_predict(kang_path):
    kang = ad.read_h5ad(kang_path)
    subset = kang[np.random.default_rng(0).choice(kang.n_obs, 200, replace=False)].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # log-normalised: no raw-counts warning
        model = TRVAE(subset, condition_key="condition", **SMALL)
    assert sorted(model.conditions_) == ["control", "stimulated"]
    assert model.conditions_ == list(subset.obs["condition"].cat.categories)  # obs order kept
    nk = subset[subset.obs["cell_type"] == "NK"]
    pred = model.predict(nk, "stimulated")
    assert pred.shape == nk.shape and list(pred.var_names) == list(kang.var_names)
    assert np.isfinite(pred.X).all()
