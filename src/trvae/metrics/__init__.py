"""Metrics comparing predicted cells with real held-out cells.

All functions take cells x genes matrices, dense (``numpy``) or ``scipy.sparse``; sparse input is
densified (the evaluation sets are small), so dense and sparse inputs give identical values.
"""

from trvae.metrics._core import (
    bootstrap_r2,
    delta_pearson,
    evaluate_prediction,
    pca_embed,
    r2_mean,
    r2_var,
    top_degs,
)
from trvae.metrics._distribution import (
    energy_distance,
    mmd_rbf,
    nonzero_fraction,
    r2_nonzero,
    wasserstein_genes,
)
from trvae.metrics._helpers import MMD_SCALES as MMD_SCALES
from trvae.metrics._latent import knn_label_accuracy, mixing_score
from trvae.metrics._response import RESPONSE_CLASSES as RESPONSE_CLASSES
from trvae.metrics._response import response_gene_scores, response_genes

__all__ = [
    "bootstrap_r2",
    "delta_pearson",
    "energy_distance",
    "evaluate_prediction",
    "knn_label_accuracy",
    "mixing_score",
    "mmd_rbf",
    "nonzero_fraction",
    "pca_embed",
    "r2_mean",
    "r2_nonzero",
    "r2_var",
    "response_gene_scores",
    "response_genes",
    "top_degs",
    "wasserstein_genes",
]
