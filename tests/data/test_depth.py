"""Sequencing depth read off log-normalised cells (:mod:`trvae.data.depth`)."""

from __future__ import annotations

import numpy as np
import torch

from trvae.data import depth
from trvae.pp import log_normalize


def _log_counts(counts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(log_normalize(counts.astype(np.float32))))


def test_log_depth_recovers_library_sizes():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(50, 200))
    counts[:, 0] = 1  # every cell holds a count of one
    counts[7] = 0  # a cell without counts
    got = depth.log_depth(_log_counts(counts))
    libraries = counts.sum(1).astype(float)
    # log1p(1 * 1e4 / L): exp(-log(expm1(.))) = L / 1e4
    some = libraries > 0
    np.testing.assert_allclose(np.exp(got[some]) * 1e4, libraries[some], rtol=1e-3)
    assert np.isnan(got[7])


def test_log_counts_are_recognised():
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(30, 100))
    assert depth.looks_like_log_counts(_log_counts(counts))
    continuous = torch.from_numpy(np.abs(rng.normal(size=(30, 100))).astype(np.float32))
    assert not depth.looks_like_log_counts(continuous)
    assert not depth.looks_like_log_counts(torch.zeros(3, 4))


def test_depth_differs():
    rng = np.random.default_rng(2)
    pool = rng.normal(0, 1, 2000)
    assert not depth.depth_differs(pool, rng.normal(0, 1, 300))
    assert depth.depth_differs(pool, rng.normal(0.5, 1, 300))
    assert not depth.depth_differs(pool, np.array([np.nan, 1.0]))  # too few to test


def test_resample_moves_the_pool_to_the_reference_depth():
    rng = np.random.default_rng(3)
    pool = rng.normal(0, 1, 5000)
    cells = np.arange(5000) + 100
    reference = rng.normal(1.0, 0.5, 400)
    drawn = depth.resample_to_depth(cells, pool, reference, 3000, np.random.default_rng(4))
    assert len(drawn) == 3000 and set(drawn) <= set(cells)
    assert abs(np.median(pool[drawn - 100]) - np.median(reference)) < 0.2
    again = depth.resample_to_depth(cells, pool, reference, 3000, np.random.default_rng(4))
    np.testing.assert_array_equal(drawn, again)
