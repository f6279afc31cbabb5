"""Diagnostics of a latent space: condition mixing and label neighbourhoods."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trvae._errors import TRVAEError
from trvae.metrics._helpers import _dense

# ---------------------------------------------------------------------- latent diagnostics


def _neighbour_counts(embedding: Any, labels: Any, n_neighbors: int) -> tuple[np.ndarray, ...]:
    """Integer labels, and per cell the label counts among its nearest other cells."""
    from sklearn.neighbors import NearestNeighbors

    emb = _dense(embedding)
    codes, uniques = pd.factorize(pd.Series(np.asarray(labels)).astype(str))
    if len(codes) != len(emb):
        raise TRVAEError(f"{len(codes)} labels for {len(emb)} cells")
    if len(emb) < 3:
        raise TRVAEError(f"need at least 3 cells, got {len(emb)}")
    k = min(n_neighbors, len(emb) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)
    neigh = codes[idx[:, 1:]]
    counts = np.zeros((len(codes), len(uniques)))
    np.add.at(counts, (np.repeat(np.arange(len(codes)), k), neigh.ravel()), 1.0)
    return codes, counts


def mixing_score(embedding: Any, labels: Any, n_neighbors: int = 30) -> float:
    """How well the groups in ``labels`` (e.g. conditions) mix in ``embedding``.

    The entropy of the label distribution among each cell's ``n_neighbors`` nearest neighbours
    (Euclidean, the cell itself excluded), averaged over cells and divided by the entropy of the
    overall label distribution: about 1 when every neighbourhood holds the labels in their overall
    proportions (slightly below, from the finite neighbourhoods), 0 when every neighbourhood is
    pure. Dividing by the overall entropy rather than ``log(n_labels)`` makes unbalanced groups
    score 1 when mixed. NaN with a single label.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import mixing_score
    >>> labels = np.repeat(["control", "stimulated"], 100)
    >>> embedding = np.random.default_rng(0).normal(size=(200, 2))
    >>> bool(mixing_score(embedding, labels) > 0.9)  # labels unrelated to the embedding: mixed
    True
    >>> mixing_score(embedding + 100 * (labels == "stimulated")[:, None], labels)  # apart
    0.0
    """
    codes, counts = _neighbour_counts(embedding, labels, n_neighbors)
    if counts.shape[1] < 2:
        return float("nan")

    def entropy(p: np.ndarray) -> np.ndarray:
        p = p / p.sum(-1, keepdims=True)
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)

    return float(entropy(counts).mean() / entropy(np.bincount(codes).astype(float)))


def knn_label_accuracy(embedding: Any, labels: Any, n_neighbors: int = 15) -> float:
    """Fraction of cells whose label (e.g. cell type) is the majority among their neighbours.

    A leave-one-out k-nearest-neighbour classifier in ``embedding`` (ties go to the smaller
    label code): 1 when labels form pure neighbourhoods, about the largest label's share when
    the embedding ignores them.

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.metrics import knn_label_accuracy
    >>> labels = np.repeat(["B", "NK"], 50)
    >>> embedding = np.random.default_rng(0).normal(size=(100, 2)) + 10 * (labels == "NK")[:, None]
    >>> knn_label_accuracy(embedding, labels)
    1.0
    """
    codes, counts = _neighbour_counts(embedding, labels, n_neighbors)
    return float((counts.argmax(1) == codes).mean())
