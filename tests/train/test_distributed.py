"""Multi-device training: device arguments, and 2-process DDP on CPU (gloo) against one process.

Every DDP run spawns two Python processes that import torch and trvae (about 10 s on a loaded
2-core machine), so the file runs three: the trained model, an exact-equivalence check and a
failing run.
"""

from __future__ import annotations

import os
import pickle

import anndata as ad
import numpy as np
import pytest
import torch
import torch.distributed as dist

from trvae import TRVAE, TRVAEError
from trvae.cli import main
from trvae.data.cell_data import CellData, stratified_split
from trvae.data.portable import portable
from trvae.module import TRVAEModule
from trvae.train.devices import DeviceSetup, resolve_devices
from trvae.train.distributed import (
    DistributedTrainingError,
    FitJob,
    fit_distributed,
)
from trvae.train.plan import TrainingPlan

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed/gloo"
)

TINY = {"n_hidden": (32,), "n_latent": 4, "n_mmd": 16}
EPOCHS = 40
TRAIN = {"max_epochs": EPOCHS, "lr": 0.01, "early_stopping": False, "progress_bar": False}
BATCH = 32  # per process: a DDP step on 2 processes sees 2 x 32 cells, like one process with 64


@pytest.fixture(scope="module")
def adata(synthetic_adata) -> ad.AnnData:
    return synthetic_adata(n_cells_per_group=40, n_genes=20, n_cell_types=2, seed=3)


@pytest.fixture(scope="module")
def ddp_run(adata, tmp_path_factory):
    """A 2-process DDP model (checkpointed), its initial weights and its checkpoint directory."""
    checkpoint_dir = tmp_path_factory.mktemp("ddp_checkpoint")
    model = TRVAE(adata, condition_key="condition", **TINY)
    initial = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(
        batch_size=BATCH,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        checkpoint_dir=checkpoint_dir,
        **TRAIN,
    )
    return model, initial, checkpoint_dir


@pytest.fixture(scope="module")
def single(adata) -> TRVAE:
    """One CPU process, the reference of the CPU DDP run (also where a GPU is visible)."""
    model = TRVAE(adata, condition_key="condition", **TINY)
    return model.train(batch_size=2 * BATCH, accelerator="cpu", **TRAIN)


def _predicted_means(model: TRVAE, adata) -> np.ndarray:
    """Per-gene mean of the control cells decoded as stimulated (the paper's transfer)."""
    control = adata[adata.obs["condition"] == "control"]
    return model.predict(control, "stimulated", mode="decode").X.mean(0)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------- 2-process DDP
def test_ddp_trains_and_returns_rank0_weights_on_cpu(ddp_run):
    model, initial, _ = ddp_run
    history = model.history
    assert history["epoch"].tolist() == list(range(EPOCHS))
    assert np.isfinite(history.drop(columns=["epoch"]).to_numpy()).all()
    for part in ("train", "val"):
        assert history[f"{part}_loss"].iloc[-1] < 0.5 * history[f"{part}_loss"].iloc[0]
    assert history.attrs["best_epoch"] == int(history["val_loss"].idxmin())
    assert model.is_trained
    state = model.module.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    weights = [k for k, _ in model.module.named_parameters() if "weight" in k]
    assert weights and all(not torch.equal(state[k], initial[k]) for k in weights)
    assert not torch.equal(state["residual_sd"], torch.ones_like(state["residual_sd"]))


def test_ddp_predictions_close_to_single_process(ddp_run, single, adata):
    """Per-gene means of the transferred cells: DDP (2 x 32 cells a step) vs one process (64).

    Measured: correlation 0.997 and relative difference 0.13 (two single-process seeds differ by
    0.07-0.09); an untrained model is at 0.52 and 0.99, so the bounds can fail.
    """
    ddp, reference = _predicted_means(ddp_run[0], adata), _predicted_means(single, adata)
    untrained = _predicted_means(TRVAE(adata, condition_key="condition", **TINY), adata)
    assert np.corrcoef(ddp, reference)[0, 1] > 0.99
    assert _rel(ddp, reference) < 0.25
    assert np.corrcoef(untrained, reference)[0, 1] < 0.99 and _rel(untrained, reference) > 0.25
    # and both are close to the real stimulated cells (measured: 0.18 DDP, 0.27 one process)
    real = np.asarray(adata[adata.obs["condition"] == "stimulated"].X).mean(0)
    assert _rel(ddp, real) < 0.4
    assert _rel(untrained, real) > 0.4


class EvalOnlyModule(TRVAEModule):
    """Never in training mode: z is the posterior mean, so a step is a deterministic function."""

    def train(self, mode: bool = True) -> EvalOnlyModule:
        return super().train(False)


def test_ddp_full_batch_equals_one_process_exactly(adata):
    """Deterministic network, full batch: 2 processes x 108 cells is one process x 216 cells.

    Catches any mistake in the gradient averaging or the data sharding, including the weights of
    both processes living in shared memory (every step would then be applied twice).
    """
    plain = {**TINY, "beta": 0.0, "batch_norm": False, "dropout": 0.0}
    model = TRVAE(adata, condition_key="condition", **plain)
    data = model._cell_data(adata)
    train_idx, val_idx = stratified_split(data.conditions.numpy(), 0.1, 0)
    assert len(train_idx) == 144

    def build() -> EvalOnlyModule:
        torch.manual_seed(0)
        return EvalOnlyModule(adata.n_vars, 2, **plain)

    one, two = build(), build()
    kwargs = {"max_epochs": 5, "lr": 0.01, "early_stopping": False}
    h1 = TrainingPlan(batch_size=144, **kwargs).fit(
        one, data, train_idx, val_idx, progress_bar=False
    )
    plan = TrainingPlan(batch_size=72, **kwargs)
    fit = FitJob(plan, two, data, train_idx, val_idx, progress_bar=False)
    h2 = fit_distributed(fit, DeviceSetup("cpu", 2))
    np.testing.assert_allclose(h2.to_numpy(), h1.to_numpy(), rtol=1e-5)
    assert h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0]
    for key, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_ddp_checkpoint_resumes(ddp_run, adata):
    """Rank 0 writes the checkpoint, with every rank's RNG state; it resumes (here on 1 process)."""
    model, _, checkpoint_dir = ddp_run
    state = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert len(state["history"]) == EPOCHS
    resumed = TRVAE(adata, condition_key="condition", **TINY)
    resumed.train(
        batch_size=2 * BATCH,
        checkpoint_dir=checkpoint_dir,
        resume=True,
        **{**TRAIN, "max_epochs": EPOCHS + 2},
    )
    assert len(resumed.history) == EPOCHS + 2
    np.testing.assert_array_equal(
        resumed.history.iloc[:EPOCHS].to_numpy(), model.history.to_numpy()
    )


class FailsInProcess(TRVAEModule):
    """Its loss raises once the module has been sent to a training process."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.in_process = True

    def loss(self, *args, **kwargs):
        if getattr(self, "in_process", False):
            raise RuntimeError("the loss failed in this process")
        return super().loss(*args, **kwargs)


def test_error_in_a_process_surfaces_in_the_caller(adata):
    model = TRVAE(adata, condition_key="condition", **TINY)
    model.module = FailsInProcess(adata.n_vars, 2, **TINY)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(DistributedTrainingError, match=r"process \d of 2: .*loss failed in this"):
        model.train(max_epochs=1, accelerator="cpu", devices=2, progress_bar=False)
    assert not model.is_trained
    assert all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())


class AbortsInTeardown(EvalOnlyModule):
    """Unpickled in a training process, it makes the process abort (SIGABRT) once it has
    destroyed its process group, like a crash in gloo's teardown."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        destroy = dist.destroy_process_group

        def destroy_then_abort(*args, **kwargs):
            destroy(*args, **kwargs)
            os.abort()

        dist.destroy_process_group = destroy_then_abort


def test_a_crash_after_the_finished_training_keeps_the_model(adata):
    """rank 0's result is complete before teardown: a later death warns and returns it."""
    model = TRVAE(adata, condition_key="condition", **TINY)
    data = model._cell_data(adata)
    train_idx, val_idx = stratified_split(data.conditions.numpy(), 0.1, 0)
    torch.manual_seed(0)
    module = AbortsInTeardown(adata.n_vars, 2, **TINY)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    plan = TrainingPlan(batch_size=72, max_epochs=2)
    fit = FitJob(plan, module, data, train_idx, val_idx, progress_bar=False)
    with pytest.warns(RuntimeWarning, match="after the training had finished.*SIGABRT"):
        history = fit_distributed(fit, DeviceSetup("cpu", 2))
    assert len(history) == 2
    assert any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": 0}, "devices must be a positive"),
        ({"devices": -2}, "devices must be a positive"),
        ({"devices": "two"}, "devices must be a positive integer or 'auto'"),
        ({"devices": True}, "devices must be"),
        ({"devices": 1.5}, "devices must be"),
        ({"accelerator": "tpu"}, "accelerator must be one of"),
        ({"accelerator": None}, "accelerator must be one of"),
        ({"strategy": "fsdp"}, "strategy must be one of"),
    ],
)
def test_invalid_device_arguments(adata, kwargs, match):
    model = TRVAE(adata, condition_key="condition", **TINY)
    with pytest.raises(TRVAEError, match=match):
        model.train(max_epochs=1, progress_bar=False, **kwargs)
    assert not model.is_trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "GPU"])
def test_gpu_without_cuda(adata, accelerator):
    with pytest.raises(TRVAEError, match="CUDA is not available"):
        TRVAE(adata, condition_key="condition", **TINY).train(accelerator=accelerator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_is_seeded_and_transfers_like_the_cpu_run(adata, single):
    """On a GPU: one seed gives one model, whose weights come back to the CPU.

    The GPU's arithmetic differs from the CPU's, so its model is compared with the CPU run as the
    DDP run is (an untrained model is at correlation 0.52, relative difference 0.99).
    """

    def fit() -> TRVAE:
        model = TRVAE(adata, condition_key="condition", **TINY)
        return model.train(batch_size=2 * BATCH, accelerator="cuda", **TRAIN)

    gpu, again = fit(), fit()
    assert all(v.device.type == "cpu" for v in gpu.module.state_dict().values())
    means = _predicted_means(gpu, adata)
    np.testing.assert_allclose(means, _predicted_means(again, adata), rtol=1e-5, atol=1e-6)
    reference = _predicted_means(single, adata)
    assert np.corrcoef(means, reference)[0, 1] > 0.95
    assert _rel(means, reference) < 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inference_matches_the_cpu(single, adata, tmp_path):
    """Prediction, latent and MMD layer on the GPU equal the CPU's; the model stays on the CPU."""
    for mode in ("decode", "residual"):
        cpu = single.predict(adata, "stimulated", mode=mode, accelerator="cpu").X
        gpu = single.predict(adata, "stimulated", mode=mode, accelerator="cuda").X
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
    streamed = single.predict(
        adata, "stimulated", mode="residual", out=tmp_path / "p.h5ad", accelerator="cuda"
    )
    np.testing.assert_allclose(streamed.X[:], gpu, rtol=1e-6, atol=1e-6)
    # the default read-out's tables: a cell whose decoded level sits on a bin edge may change
    # bins; compared without the snap to the floor, which adds a step of its own
    tables = single.module.readout
    detection, tables.detection = tables.detection, None
    quantile = single.predict(adata, "stimulated", accelerator="cuda").X
    differ = np.abs(quantile - single.predict(adata, "stimulated", accelerator="cpu").X) > 1e-4
    assert differ.mean() < 0.01
    tables.detection = detection
    # with the snap a value at a gene's midpoint may land on either side, and the mean match
    # then moves that gene: its mean still agrees to within one value's jump
    snapped = [single.predict(adata, "stimulated", accelerator=a).X for a in ("cuda", "cpu")]
    jump = (detection.numpy() - float(single.module.x_min)) / adata.n_obs
    assert (np.abs(snapped[0].mean(0) - snapped[1].mean(0)) <= jump + 1e-4).all()
    streamed.file.close()
    for get in (single.get_latent, single.get_mmd_layer):
        np.testing.assert_allclose(
            get(adata, accelerator="cuda"), get(adata, accelerator="cpu"), rtol=1e-4, atol=1e-4
        )
    assert all(v.device.type == "cpu" for v in single.module.state_dict().values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inference_with_state_matched_tables(adata):
    """The default read-out of a model with groups rebuilds its target table on the CPU for
    each call; on a GPU the batches read a copy of it there, and the result agrees with the
    CPU's."""
    model = TRVAE(adata, condition_key="condition", mmd_group_key="cell_type", **TINY)
    model.train(batch_size=2 * BATCH, accelerator="cpu", **TRAIN)
    control = adata[adata.obs["condition"] == "control"]
    gpu = model.predict(control, "stimulated", accelerator="cuda")
    cpu = model.predict(control, "stimulated", accelerator="cpu")
    assert "state_weights" in gpu.uns["trvae_prediction"]
    assert (
        gpu.uns["trvae_prediction"]["state_weights"] == cpu.uns["trvae_prediction"]["state_weights"]
    )
    np.testing.assert_allclose(gpu.X.mean(0), cpu.X.mean(0), rtol=0, atol=0.05)
    assert all(v.device.type == "cpu" for v in model.module.state_dict().values())


@pytest.mark.skipif(
    getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    reason="MPS is available here",
)
def test_mps_without_mps():
    with pytest.raises(TRVAEError, match="MPS is not available"):
        resolve_devices("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="resolves to CUDA here")
def test_resolve_devices_on_cpu():
    assert resolve_devices() == DeviceSetup("cpu", 1)
    assert resolve_devices("auto", "auto", "ddp") == DeviceSetup("cpu", 1)
    assert resolve_devices("cpu", 2) == DeviceSetup("cpu", 2)
    assert resolve_devices("CPU", "3", "DDP") == DeviceSetup("cpu", 3)
    assert resolve_devices("cpu", np.int64(2)).distributed


def test_one_device_with_ddp_is_the_plain_cpu_run(adata):
    """``strategy="ddp"`` with one CPU device: bitwise the plain CPU run."""
    train = {**TRAIN, "max_epochs": 2, "batch_size": BATCH}
    default = TRVAE(adata, condition_key="condition", **TINY).train(accelerator="cpu", **train)
    explicit = TRVAE(adata, condition_key="condition", **TINY).train(
        accelerator="cpu", devices=1, strategy="ddp", **train
    )
    for key, value in default.module.state_dict().items():
        assert torch.equal(explicit.module.state_dict()[key], value), key
    assert default.history.equals(explicit.history)


def test_unpicklable_job_is_refused_before_spawning(adata):
    model = TRVAE(adata, condition_key="condition", **TINY)
    data = model._cell_data(adata)
    split = (np.arange(10), np.arange(10, 20))
    fit = FitJob(TrainingPlan(max_epochs=1), model.module, data, *split)
    fit.on_epoch_end = lambda state: None  # a lambda does not pickle
    with pytest.raises(TRVAEError, match="cannot send its job"):
        fit_distributed(fit, DeviceSetup("cpu", 2))


@pytest.mark.parametrize("sparse", [False, True])
def test_backed_data_is_sent_by_file_name(synthetic_adata, tmp_path, sparse):
    adata = synthetic_adata(n_cells_per_group=10, n_genes=10, n_cell_types=2, sparse=sparse)
    adata.write_h5ad(tmp_path / "data.h5ad")
    backed = ad.read_h5ad(tmp_path / "data.h5ad", backed="r")
    try:
        codes = adata.obs["condition"].cat.codes.to_numpy()
        sent = pickle.loads(pickle.dumps(portable(CellData(backed.X, codes))))
        assert len(pickle.dumps(portable(CellData(backed.X, codes)))) < 2000  # no matrix inside
        idx = np.array([5, 0, 17, 3])
        for got, want in zip(sent.batch(idx), CellData(adata.X, codes).batch(idx), strict=True):
            torch.testing.assert_close(got, want)
    finally:
        backed.file.close()


def test_cli_device_flags(adata, tmp_path, capsys):
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    args = ["train", str(path), "--condition-key", "condition", "--out", str(tmp_path / "m")]
    assert main([*args, "--devices", "0", "--quiet"]) == 2
    assert "devices must be a positive" in capsys.readouterr().err
    assert main([*args, "--accelerator", "tpu", "--quiet"]) == 2
    assert "accelerator must be one of" in capsys.readouterr().err
    tiny = ["--n-hidden", "8", "--n-latent", "2", "--n-mmd", "4", "--max-epochs", "1"]
    flags = ["--accelerator", "cpu", "--devices", "1", "--strategy", "ddp", "--quiet"]
    assert main([*args, *tiny, *flags]) == 0
    assert (tmp_path / "m" / "model.pt").is_file()
