"""The device-resident training matrix and the prefetching thread, exercised on the CPU."""

import anndata
import numpy as np
import pytest
import torch
from scipy import sparse

import trvae
from trvae._errors import TRVAEError
from trvae.data.cell_data import CellData
from trvae.data.device_data import DeviceCellData, prefetched, to_device_data


def _matrix(kind: str, n: int = 53, g: int = 11):
    rng = np.random.default_rng(0)
    x = rng.poisson(0.7, (n, g)).astype(np.float32)
    return sparse.csr_matrix(x) if kind == "csr" else x


def _all_batches(data, **kw):
    return list(data.batches(np.arange(3, 50), 8, **kw))


@pytest.mark.parametrize("kind", ["csr", "dense"])
@pytest.mark.parametrize("gene_order", [None, np.array([4, 0, 10, 2, 7])])
def test_batches_equal_the_host_batches(kind, gene_order):
    conds = np.arange(53) % 3
    host = CellData(_matrix(kind), conds, gene_order=gene_order)
    resident = DeviceCellData(host, "cpu")
    kw = {"shuffle": True, "drop_small_last": True}
    a = _all_batches(host, generator=np.random.default_rng(5), **kw)
    b = _all_batches(resident, generator=np.random.default_rng(5), **kw)
    assert len(a) == len(b) == 6  # 47 cells: 5 of 8 and a tail of 7 (kept: not < 8 // 4)
    for (xa, ca, la), (xb, cb, lb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ca, cb) and torch.allclose(la, lb)
    assert resident.batch(np.array([5, 1]))[0].shape == (2, host.rows(np.array([1])).shape[1])


def test_empty_rows_and_small_last_batch_dropped():
    x = sparse.csr_matrix(([2.0], ([3], [1])), shape=(10, 4), dtype=np.float32)
    host = CellData(x, np.zeros(10, dtype=int))
    batches = list(DeviceCellData(host, "cpu").batches(np.arange(10), 9, drop_small_last=True))
    assert len(batches) == 1  # 1 cell left < max(2, 9 // 4): dropped
    assert batches[0][0].sum() == 2.0 and batches[0][0][3, 1] == 2.0


def test_to_device_data_choices(tmp_path):
    host = CellData(_matrix("csr"), np.zeros(53, dtype=int))
    assert to_device_data(host, "cpu") is host  # auto: only CUDA
    assert to_device_data(host, "cpu", data_on_device=False) is host
    assert isinstance(to_device_data(host, "cpu", data_on_device=True), DeviceCellData)
    adata = trvae.datasets.simulate_perturbation(n_genes=10, cells_per_group=5)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = trvae.TRVAE(
        anndata.read_h5ad(tmp_path / "a.h5ad", backed="r"), "condition", n_hidden=(8,)
    )
    with pytest.raises(TRVAEError, match="in memory"):
        backed.train(max_epochs=1, progress_bar=False, data_on_device=True)


def test_training_on_resident_data_is_the_same_fit():
    adata = trvae.datasets.simulate_perturbation(n_genes=30, cells_per_group=20)
    histories, latents = [], []
    for on_device in (False, True):
        model = trvae.TRVAE(adata, "condition", n_hidden=(16,), n_latent=4)
        model.train(max_epochs=3, progress_bar=False, data_on_device=on_device)
        histories.append(model.history.to_numpy())
        latents.append(model.get_latent(adata))
    np.testing.assert_array_equal(histories[0], histories[1])
    np.testing.assert_array_equal(latents[0], latents[1])


def test_prefetched_keeps_order_and_raises_errors():
    batches = [(torch.full((2, 2), float(i)), torch.zeros(2), torch.ones(2)) for i in range(9)]
    out = list(prefetched(iter(batches), "cpu", depth=2))
    assert [float(b[0][0, 0]) for b in out] == list(range(9))

    def failing():
        yield batches[0]
        raise ValueError("broken batch")

    stream = prefetched(failing(), "cpu")
    next(stream)
    with pytest.raises(ValueError, match="broken batch"):
        next(stream)
    early = prefetched(iter(batches * 50), "cpu", depth=1)
    next(early)
    early.close()  # the consumer leaves: the thread stops instead of blocking
