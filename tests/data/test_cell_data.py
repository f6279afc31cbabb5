"""Tests of trvae.data.cell_data: the stratified split and the mini-batch server CellData."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from scipy import sparse

from trvae.data.cell_data import CellData, stratified_split


@pytest.fixture
def codes():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat([0, 1, 2], [50, 30, 20]))


@pytest.fixture
def dense():
    rng = np.random.default_rng(1)
    x = rng.poisson(1.0, size=(40, 9)).astype(np.float32)
    x[x < 1] = 0
    return x


def test_split_is_seeded(codes):
    a_train, a_val = stratified_split(codes, 0.2, seed=3)
    b_train, b_val = stratified_split(codes, 0.2, seed=3)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_val, b_val)
    _, c_val = stratified_split(codes, 0.2, seed=4)
    assert not np.array_equal(a_val, c_val)


def test_split_is_stratified_disjoint_and_covering(codes):
    train, val = stratified_split(codes, 0.2, seed=0)
    for code, n in zip([0, 1, 2], [50, 30, 20], strict=True):
        assert (codes[val] == code).sum() == round(0.2 * n)
        assert (codes[train] == code).sum() == n - round(0.2 * n)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(codes)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_split_small_groups_and_zero_fraction():
    codes = np.array([0, 0, 1, 1, 1, 2])
    train, val = stratified_split(codes, 0.1, seed=0)
    # every condition with at least two cells has one in each part; a single cell trains
    assert sorted(codes[val].tolist()) == [0, 1]
    assert sorted(codes[train].tolist()) == [0, 1, 1, 2]
    train, val = stratified_split(codes, 0.0, seed=0)
    assert len(val) == 0
    np.testing.assert_array_equal(train, np.arange(6))


@pytest.mark.parametrize(
    "convert", [np.asarray, sparse.csr_matrix, sparse.csc_matrix], ids=["dense", "csr", "csc"]
)
def test_formats_give_identical_batches(dense, convert):
    conditions = np.arange(len(dense)) % 3
    reference = CellData(dense, conditions)
    data = CellData(convert(dense), conditions)
    assert len(data) == len(dense)
    idx = np.array([7, 2, 30, 2, 11, 39, 0])
    for got, want in zip(data.batch(idx), reference.batch(idx), strict=True):
        assert torch.equal(got, want)
    x, cond, library = data.batch(idx)
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), dense[idx])
    np.testing.assert_array_equal(cond.numpy(), conditions[idx])
    np.testing.assert_allclose(library.numpy(), dense[idx].sum(1), rtol=1e-6)


@pytest.mark.parametrize("convert", [np.asarray, sparse.csr_matrix], ids=["dense", "csr"])
def test_rows_keep_the_requested_order(dense, convert):
    data = CellData(convert(dense), np.zeros(len(dense)))
    idx = np.array([31, 4, 17, 0, 22, 9])
    np.testing.assert_array_equal(data.rows(idx).numpy(), dense[idx])


def test_gene_order_reorders_columns(dense):
    order = np.random.default_rng(2).permutation(dense.shape[1])
    idx = np.array([5, 1, 12])
    for x in (dense, sparse.csr_matrix(dense)):
        data = CellData(x, np.zeros(len(dense)), gene_order=order)
        np.testing.assert_array_equal(data.rows(idx).numpy(), dense[idx][:, order])


def test_h5py_backed_rows(dense, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["x"] = dense
    with h5py.File(tmp_path / "x.h5", "r") as handle:
        data = CellData(handle["x"], np.zeros(len(dense)))
        idx = np.array([20, 3, 11])  # h5py needs increasing indices: rows sorts them
        np.testing.assert_array_equal(data.rows(idx).numpy(), dense[idx])


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_callers_sparse_matrix_is_untouched(dense, fmt):
    x = sparse.csr_matrix(dense) if fmt == "csr" else sparse.csc_matrix(dense)
    data_before, indices_before, indptr_before = x.data.copy(), x.indices.copy(), x.indptr.copy()
    cells = CellData(x, np.zeros(len(dense)))
    for _ in cells.batches(np.arange(len(dense)), 16, shuffle=True):
        pass
    assert sparse.issparse(x) and x.format == fmt
    assert sparse.issparse(cells.x) and cells.x.format == "csr"
    if fmt == "csr":
        assert cells.x is x
    np.testing.assert_array_equal(x.data, data_before)
    np.testing.assert_array_equal(x.indices, indices_before)
    np.testing.assert_array_equal(x.indptr, indptr_before)


def test_batches_cover_shuffle_and_drop(dense):
    conditions = np.arange(len(dense)) % 2
    data = CellData(dense, conditions)
    indices = np.arange(35)
    sizes = [len(b[0]) for b in data.batches(indices, 16)]
    assert sizes == [16, 16, 3]
    sizes = [len(b[0]) for b in data.batches(indices, 16, drop_small_last=True)]
    assert sizes == [16, 16]  # a last batch of 3 < 16 // 4 cells is dropped

    def shuffled(seed):
        rng = np.random.default_rng(seed)
        return [b[0] for b in data.batches(indices, 8, shuffle=True, generator=rng)]

    first, again = shuffled(5), shuffled(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    seen = torch.cat(first)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, dense[:35].tolist()))
    assert not torch.equal(seen, torch.from_numpy(dense[:35]))


def test_code_sums_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 5.0], [2.0, 2.0]], dtype=np.float32)
    data = CellData(sparse.csr_matrix(x), np.array([0, 1, 0, 1]))
    cells = np.array([0, 1, 2])  # cell 3 left out
    sums = data.code_sums(cells, 3, 2, batch_size=2)
    torch.testing.assert_close(sums, torch.tensor([[1.0, 7.0], [3.0, 0.0], [0.0, 0.0]]).double())
    both = data.code_sums(cells, 3, 2, batch_size=2, squares=True)
    torch.testing.assert_close(both[0], sums)
    torch.testing.assert_close(
        both[1], torch.tensor([[1.0, 29.0], [9.0, 0.0], [0.0, 0.0]]).double()
    )
