"""Per-column quantiles (:mod:`trvae.module.quantiles`) against numpy's."""

from __future__ import annotations

import numpy as np
import torch

from trvae.module import quantiles as Q
from trvae.module import readout as R


def test_binned_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 4)).astype(np.float32)
    bins = rng.integers(0, 3, size=(200, 4))
    bins[:, 3] = 0  # bins 1 and 2 of the last gene are empty
    levels = R.quantile_levels(9)
    got, counts = Q.binned_quantiles(torch.from_numpy(values), torch.from_numpy(bins), 3, levels)
    assert got.shape == (3, 9, 4) and counts.shape == (3, 4)
    for k in range(3):
        for g in range(4):
            mask = bins[:, g] == k
            assert counts[k, g] == mask.sum()
            want = np.quantile(values[mask, g], levels.numpy()) if mask.any() else np.zeros(9)
            np.testing.assert_allclose(got[k, :, g].numpy(), want, atol=1e-6)


def test_column_quantiles_match_numpy_and_one_bin():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(101, 5)).astype(np.float32)
    values[:60, 2] = 0.0  # ties
    levels = R.quantile_levels(11)
    got = Q.column_quantiles(torch.from_numpy(values), levels)
    assert got.shape == (11, 5)
    np.testing.assert_allclose(got.numpy(), np.quantile(values, levels.numpy(), axis=0), atol=1e-6)
    one_bin, _ = Q.binned_quantiles(
        torch.from_numpy(values), torch.zeros(101, 5, dtype=torch.long), 1, levels
    )
    assert torch.equal(got, one_bin[0])
    assert torch.equal(Q.column_quantiles(torch.zeros(0, 5), levels), torch.zeros(11, 5))


def test_pooled_quantiles_come_from_the_same_sort():
    rng = np.random.default_rng(5)
    values = torch.from_numpy(rng.normal(size=(150, 6)).astype(np.float32)).clamp_min(0.0)
    bins = torch.from_numpy(rng.integers(0, 4, size=(150, 6)))
    levels = R.quantile_levels(17)
    per_bin, counts, pooled = Q.binned_quantiles(values, bins, 4, levels, pooled=True)
    alone, alone_counts = Q.binned_quantiles(values, bins, 4, levels)
    assert torch.equal(per_bin, alone) and torch.equal(counts, alone_counts)
    assert torch.equal(pooled, Q.column_quantiles(values, levels))
    empty = Q.binned_quantiles(torch.zeros(0, 6), torch.zeros(0, 6), 4, levels, pooled=True)
    assert empty[2].shape == (17, 6) and not empty[2].any()
