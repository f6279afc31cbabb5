"""The AnnData-facing model, :class:`TRVAE`, assembled from training, prediction and I/O mixins."""

from trvae.model._ensemble import TRVAEEnsemble
from trvae.model._trvae import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_DECODER_CONDITIONING, TRVAE

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_DECODER_CONDITIONING",
    "TRVAE",
    "TRVAEEnsemble",
]
