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


def test_ordered_bits_keep_the_order_of_float32():
    values = torch.tensor(
        [-np.inf, -3e38, -2.5, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 1.0, 1.5, 3e38, np.inf]
    )
    bits = Q._ordered_bits(values)
    assert (bits.diff() > 0).all() and (bits >= 0).all() and (bits < 2**32).all()
    back = Q._from_ordered_bits(bits)
    assert torch.equal(back.view(torch.int32), values.view(torch.int32))  # bit for bit


def test_binned_quantiles_with_ties_match_numpy_in_float32_and_float64():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(300, 3)).astype(np.float32)
    values[values < 0.3] = 0.0  # a floor: most values tied
    values[:50, 1] = -values[:50, 1]
    bins = rng.integers(0, 4, size=(300, 3))
    levels = R.quantile_levels(17)
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(values).to(dtype)
        got, _ = Q.binned_quantiles(x, torch.from_numpy(bins), 4, levels)
        for k in range(4):
            for g in range(3):
                want = np.quantile(values[bins[:, g] == k, g].astype(np.float64), levels.numpy())
                np.testing.assert_allclose(got[k, :, g].double().numpy(), want, atol=1e-6)
