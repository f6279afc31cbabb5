"""The torch network: inference q(z | x, s), generative p(x | z, s), likelihoods, MMD and loss."""

from trvae.module._trvae import (
    ARCHITECTURES,
    DECODER_CONDITIONING,
    LIKELIHOODS,
    MMD_ON,
    TRVAEModule,
)

__all__ = ["ARCHITECTURES", "DECODER_CONDITIONING", "LIKELIHOODS", "MMD_ON", "TRVAEModule"]
