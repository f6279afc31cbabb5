"""Tests of the cell-type-specific response genes and the latent diagnostics of trvae.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from trvae._errors import TRVAEError
from trvae.metrics import (
    knn_label_accuracy,
    mixing_score,
    response_gene_scores,
    response_genes,
)

N_GENES, N_CELLS = 30, 80
OPPOSITE, SHARED, ONLY_HERE = np.arange(0, 6), np.arange(6, 12), np.arange(12, 16)


@pytest.fixture(scope="module")
def response_data():
    """A held-out type whose response is opposite to the other types' on ``OPPOSITE``.

    The other (pooled) types respond by +1 on ``OPPOSITE`` and ``SHARED``; the held-out type by
    -1 on ``OPPOSITE``, +1 on ``SHARED`` and +1 on ``ONLY_HERE``; the rest never responds.
    """
    rng = np.random.default_rng(0)

    def cells(mean, n=N_CELLS):
        return np.clip(mean + rng.normal(scale=0.3, size=(n, N_GENES)), 0, None)

    base, base_other = rng.uniform(1.5, 2.5, N_GENES), rng.uniform(1.5, 2.5, N_GENES)
    own, other = np.zeros(N_GENES), np.zeros(N_GENES)
    own[OPPOSITE], own[SHARED], own[ONLY_HERE] = -1.0, 1.0, 1.0
    other[OPPOSITE], other[SHARED] = 1.0, 1.0
    data = {
        "control": cells(base),
        "stimulated": cells(base + own),
        "oracle": cells(base + own),  # an independent draw of the true stimulated cells
        "other_control": cells(base_other, 3 * N_CELLS),
        "other_stimulated": cells(base_other + other, 3 * N_CELLS),
    }
    names = [f"g{j}" for j in range(N_GENES)]
    genes = response_genes(
        data["stimulated"],
        data["control"],
        data["other_stimulated"],
        data["other_control"],
        names,
    )
    return data, genes


def test_response_genes_finds_exactly_the_specific_genes(response_data):
    _, genes = response_data
    specific = genes.index[genes["response"] == "specific"]
    assert set(specific) == {f"g{j}" for j in (*OPPOSITE, *ONLY_HERE)}
    assert set(genes.index[genes["response"] == "shared"]) == {f"g{j}" for j in SHARED}
    assert set(genes.index[genes["reason"] == "opposite"]) == {f"g{j}" for j in OPPOSITE}
    assert set(genes.index[genes["reason"] == "only_here"]) == {f"g{j}" for j in ONLY_HERE}
    assert not genes["de"].iloc[16:].any()
    assert (genes.loc["g0", "lfc"] < 0) and (genes.loc["g0", "lfc_others"] > 0)


def test_mean_shift_gets_the_opposite_genes_wrong_and_an_oracle_right(response_data):
    data, genes = response_data
    shift = data["other_stimulated"].mean(0) - data["other_control"].mean(0)
    mean_shift = data["control"] + shift
    opposite = genes.assign(response=np.where(genes["reason"] == "opposite", "specific", ""))
    ms = response_gene_scores(mean_shift, data["stimulated"], data["control"], opposite)
    assert ms["specific_n"] == len(OPPOSITE)
    assert ms["specific_direction"] <= 0.1
    assert ms["specific_lfc_pearson"] < 0.5
    oracle = response_gene_scores(data["oracle"], data["stimulated"], data["control"], genes)
    assert oracle["specific_direction"] >= 0.9 and oracle["specific_lfc_r2"] > 0.9
    assert oracle["shared_direction"] == 1.0
    # the mean shift is right where the response is shared
    ms_all = response_gene_scores(mean_shift, data["stimulated"], data["control"], genes)
    assert ms_all["shared_direction"] == 1.0 and ms_all["specific_direction"] < 0.5


def test_response_gene_scores_shapes_and_small_classes(response_data):
    data, genes = response_data
    with pytest.raises(TRVAEError, match="classified genes"):
        response_gene_scores(data["oracle"], data["stimulated"], data["control"], genes[:5])
    two = genes.assign(response=["specific", "specific"] + [""] * (N_GENES - 2))
    scores = response_gene_scores(data["oracle"], data["stimulated"], data["control"], two)
    assert scores["specific_n"] == 2 and np.isnan(scores["specific_lfc_r2"])
    assert scores["shared_n"] == 0 and np.isnan(scores["shared_direction"])


def test_response_genes_needs_cells():
    x = np.ones((1, 3))
    with pytest.raises(TRVAEError, match="at least 2 stimulated"):
        response_genes(x, np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)), ["a", "b", "c"])


def _two_groups(separation: float, n: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(2 * n, 5))
    emb[n:, 0] += separation
    return emb, np.repeat(["control", "stimulated"], n)


def test_mixing_score_high_when_mixed_low_when_separated():
    mixed, separated = _two_groups(0.0), _two_groups(20.0)
    assert mixing_score(*mixed) > 0.9
    assert mixing_score(*separated) < 0.05
    # unbalanced but mixed groups still score high: the reference is the overall entropy
    emb, labels = _two_groups(0.0)
    keep = np.r_[np.arange(150), np.arange(150, 180)]
    assert mixing_score(emb[keep], labels[keep]) > 0.85
    assert np.isnan(mixing_score(emb, np.repeat("a", len(emb))))


def test_knn_label_accuracy():
    emb, labels = _two_groups(20.0)
    assert knn_label_accuracy(emb, labels) == 1.0
    emb, labels = _two_groups(0.0)
    assert 0.3 < knn_label_accuracy(emb, labels) < 0.7
    with pytest.raises(TRVAEError, match="labels for"):
        knn_label_accuracy(emb, labels[:-1])
