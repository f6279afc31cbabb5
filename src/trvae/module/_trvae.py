"""The trVAE network: encoder q(z | x, s), decoder p(x | z, s) and the loss.

The decoder's first layer ``y = f(z, s)`` (width ``n_mmd``) is the layer on which the MMD penalty
acts (``mmd_on="y"``, the paper's; ``mmd_on="z"`` puts it on the latent code instead). With
``decoder_conditioning="mmd_layer"`` (the paper's network) the layers after y see only ``y``, so
``y`` must carry the condition; with ``"all_layers"`` every later layer sees ``onehot(s)`` as
well, so the MMD can make ``y`` condition-free without erasing the transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trvae._errors import check_option
from trvae.module.anchor import MeanShifts
from trvae.module.likelihoods import nb_log_likelihood, zinb_log_likelihood
from trvae.module.mmd import (
    DEFAULT_BANDWIDTHS,
    ESTIMATORS,
    GROUPINGS,
    at_least_float32,
    mmd_all_pairs,
)
from trvae.module.readout import QuantileTables
from trvae.nn.layers import ConditionedMLP, DenseSpec, dense_block, mlp

LIKELIHOODS = ("mse", "nb", "zinb")
f32 = at_least_float32  # the module's outputs in float32, also under bf16 autocast
ARCHITECTURES = ("mlp", "conv")
DECODER_CONDITIONING = ("mmd_layer", "all_layers")
MMD_ON = ("y", "z")


def _encoder_body(
    architecture: str, n_input: int, n_conditions: int, dense: DenseSpec, image_shape
) -> tuple[nn.Module, int]:
    """The encoder's hidden layers (input ``[x, onehot(s)]``) and the width of their output."""
    if architecture == "conv":
        from trvae.nn.conv import ConvEncoder

        body = ConvEncoder(image_shape, n_input, n_conditions, dense)
        return body, body.n_out
    body = mlp(n_input + n_conditions, dense.hidden, dense.dropout, dense.batch_norm)
    return body, dense.hidden[-1] if dense.hidden else n_input + n_conditions


def _decoder_body(
    architecture: str, n_input: int, n_mmd: int, n_conditions: int, dense: DenseSpec, image_shape
) -> tuple[nn.Module, int, nn.Module]:
    """The decoder's layers after the MMD layer, their output width and the output layer.

    The body is called as ``body(y, onehot(s))``; ``n_conditions=0`` makes it ignore ``s``.
    """
    if architecture == "conv":
        from trvae.nn.conv import ConvDecoder

        body = ConvDecoder(image_shape, n_input, n_mmd, n_conditions, dense)
        return body, n_input, nn.Sigmoid()
    hidden = dense.hidden
    body = ConditionedMLP(n_mmd, hidden[::-1], n_conditions, dense.dropout, dense.batch_norm)
    n_last = hidden[0] if hidden else n_mmd
    return body, n_last, nn.Linear(n_last, n_input)


class TRVAEModule(nn.Module):
    """Conditional VAE with an MMD-regularised first decoder layer.

    Parameters
    ----------
    n_input
        Number of genes (features).
    n_conditions
        Number of conditions; the condition enters as a one-hot vector.
    n_latent
        Dimension of z.
    n_hidden
        Widths of the encoder's hidden layers; the decoder mirrors them after the MMD layer.
    n_mmd
        Width of the decoder's first layer y, on which the MMD penalty acts.
    likelihood
        ``"mse"`` (Gaussian with unit variance, for log-normalised data), ``"nb"`` or ``"zinb"``
        (raw counts; the mean is the observed library size times a softmax over genes, with a
        per-gene inverse dispersion).
    dropout
        Dropout rate of the hidden layers.
    batch_norm
        Batch normalisation in the hidden layers.
    alpha, beta
        Weights of the KL divergence and of the MMD penalty.
    mmd_bandwidths
        Squared length scales of the multi-scale RBF kernel (see :mod:`trvae.module.mmd`).
    architecture
        ``"mlp"`` (dense layers) or ``"conv"`` (images, ``likelihood="mse"`` only: convolutions
        around the dense layers, a sigmoid output; see :mod:`trvae.nn.conv`). The MMD layer is the
        same dense layer on ``[z, onehot(s)]`` in both.
    image_shape
        ``(H, W)`` or ``(C, H, W)`` of the flattened input images, for ``architecture="conv"``.
    decoder_conditioning
        ``"mmd_layer"`` (the paper's network): the condition enters the decoder only through the
        MMD layer y. ``"all_layers"``: every decoder layer after y also sees ``onehot(s)`` (for
        ``"conv"``, as constant channels of every transposed convolution).
    mmd_estimator
        ``"biased"`` (the V-statistic) or ``"unbiased"`` (the U-statistic, which does not pull
        each condition's y towards a single point; see :mod:`trvae.module.mmd`).
    n_mmd_groups
        With ``n_mmd_groups > 0`` the MMD compares the conditions group by group (e.g. cell
        type; see ``mmd_grouping``), and the codes given to :meth:`loss` are joint codes
        ``group * n_conditions + condition``; everything else takes plain condition codes.
    mmd_on
        ``"y"`` (the paper's): the MMD acts on the decoder's first layer. ``"z"``: on the
        latent sample z, so that the encoder, not the decoder's first layer, removes the
        condition from the code (the MMD layer y is then an ordinary decoder layer).
    mmd_grouping
        How groups are compared (:func:`trvae.module.mmd.mmd_all_pairs`): ``"within"`` each
        group, or ``"shared"``: each pair of conditions pooled over the groups both hold.

    Examples
    --------
    >>> import torch
    >>> module = TRVAEModule(n_input=30, n_conditions=2, n_latent=4, n_hidden=(16,))
    >>> x, cond = torch.rand(8, 30), torch.tensor([0, 1] * 4)
    >>> terms = module.loss(x, cond, x.sum(1))
    >>> sorted(terms)[:4], terms["loss"].shape
    (['kl', 'loss', 'mmd', 'reconstruction'], torch.Size([]))
    >>> module.inference(x, cond)["z_mean"].shape
    torch.Size([8, 4])
    """

    def __init__(
        self,
        n_input: int,
        n_conditions: int,
        n_latent: int = 40,
        n_hidden: Sequence[int] = (800, 800),
        n_mmd: int = 128,
        likelihood: str = "mse",
        dropout: float = 0.2,
        batch_norm: bool = True,
        alpha: float = 10.0,
        beta: float = 100.0,
        mmd_bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
        architecture: str = "mlp",
        image_shape: Sequence[int] | None = None,
        decoder_conditioning: str = "mmd_layer",
        mmd_estimator: str = "biased",
        n_mmd_groups: int = 0,
        mmd_on: str = "y",
        mmd_grouping: str = "within",
    ) -> None:
        super().__init__()
        check_option("likelihood", likelihood, LIKELIHOODS)
        check_option("architecture", architecture, ARCHITECTURES)
        check_option("decoder_conditioning", decoder_conditioning, DECODER_CONDITIONING)
        check_option("mmd_estimator", mmd_estimator, ESTIMATORS)
        check_option("mmd_on", mmd_on, MMD_ON)
        check_option("mmd_grouping", mmd_grouping, GROUPINGS)
        if architecture == "conv" and (likelihood != "mse" or image_shape is None):
            raise ValueError("architecture='conv' needs likelihood='mse' and an image_shape")
        self.architecture = architecture
        self.n_input, self.n_conditions, self.n_latent = n_input, n_conditions, n_latent
        self.likelihood = likelihood
        self.alpha, self.beta = float(alpha), float(beta)
        self.mmd_bandwidths = tuple(float(b) for b in mmd_bandwidths)
        self.mmd_estimator, self.mmd_on, self.mmd_grouping = mmd_estimator, mmd_on, mmd_grouping
        self.n_mmd_groups = int(n_mmd_groups)
        hidden = list(n_hidden)

        dense = DenseSpec(hidden, dropout, batch_norm)
        self.encoder, n_enc = _encoder_body(architecture, n_input, n_conditions, dense, image_shape)
        self.z_mean = nn.Linear(n_enc, n_latent)
        self.z_logvar = nn.Linear(n_enc, n_latent)
        self.mmd_layer = dense_block(n_latent + n_conditions, n_mmd, 0.0, batch_norm)
        self.decoder_conditioning = decoder_conditioning
        n_decoder_conditions = n_conditions if decoder_conditioning == "all_layers" else 0
        self.decoder, n_last, self.output = _decoder_body(
            architecture, n_input, n_mmd, n_decoder_conditions, dense, image_shape
        )
        # set from the training data by the model: per-gene residual SD of the MSE head (its noise
        # model when sampling) and the smallest training value (the floor of predictions)
        self.register_buffer("residual_sd", torch.ones(n_input))
        self.register_buffer("x_min", torch.tensor(float("-inf")))
        # the residual quantile tables of predict(mode="quantile") (trvae.module.readout)
        self.readout = QuantileTables()
        # the training data's mean shifts that a prediction can be anchored to
        self.mean_shifts = MeanShifts()
        if likelihood in ("nb", "zinb"):
            self.log_theta = nn.Parameter(torch.zeros(n_input))
        if likelihood == "zinb":
            self.dropout_logits = nn.Linear(n_last, n_input)

    def _onehot(self, condition: torch.Tensor) -> torch.Tensor:
        return F.one_hot(condition, self.n_conditions).to(torch.get_default_dtype())

    def inference(self, x: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """q(z | x, s): mean, log-variance and a reparameterised sample of z."""
        if self.likelihood != "mse":
            x = torch.log1p(x)
        h = self.encoder(torch.cat([x, self._onehot(condition)], dim=1))
        # f32: float32 outputs under bf16 autocast (trvae.train.precision); no-op otherwise
        mean, logvar = f32(self.z_mean(h)), f32(self.z_logvar(h)).clamp(-15.0, 15.0)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return {"z_mean": mean, "z_logvar": logvar, "z": z}

    def generative(
        self, z: torch.Tensor, condition: torch.Tensor, library: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """p(x | z, s): the MMD layer y and the parameters of the likelihood."""
        onehot = self._onehot(condition)
        y = self.mmd_layer(torch.cat([z, onehot], dim=1))
        h = self.decoder(y, onehot)
        out = {"y": f32(y)}  # float32 outputs, also under bf16 autocast
        if self.likelihood == "mse":
            out["mean"] = f32(self.output(h))
            return out
        if library is None:
            raise ValueError("count likelihoods need the library size of each cell")
        out["mean"] = library[:, None] * torch.softmax(f32(self.output(h)), dim=-1)
        out["theta"] = torch.exp(self.log_theta).expand_as(out["mean"])
        if self.likelihood == "zinb":
            out["dropout_logits"] = f32(self.dropout_logits(h))
        return out

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, library: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inf = self.inference(x, condition)
        return inf, self.generative(inf["z"], condition, library)

    def reconstruction_loss(self, x: torch.Tensor, gen: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-cell reconstruction loss, summed over genes."""
        if self.likelihood == "mse":
            return ((x - gen["mean"]) ** 2).sum(1)
        if self.likelihood == "nb":
            return -nb_log_likelihood(x, gen["mean"], gen["theta"]).sum(1)
        return -zinb_log_likelihood(x, gen["mean"], gen["theta"], gen["dropout_logits"]).sum(1)

    def loss(
        self, x: torch.Tensor, condition: torch.Tensor, library: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms, each a mean over the cells of the batch, and their weighted sum.

        ``loss = reconstruction + alpha * kl + beta * mmd``, where ``mmd`` (of y, or of z with
        ``mmd_on="z"``) is summed over all pairs of conditions present in the batch (by group,
        see ``n_mmd_groups``).
        """
        group = None
        if self.n_mmd_groups:
            group, condition = condition // self.n_conditions, condition % self.n_conditions
        inf, gen = self(x, condition, library)
        recon = self.reconstruction_loss(x, gen).mean()
        kl = (
            0.5 * (inf["z_mean"] ** 2 + inf["z_logvar"].exp() - 1.0 - inf["z_logvar"]).sum(1)
        ).mean()
        if self.beta > 0:
            mmd = mmd_all_pairs(
                gen["y"] if self.mmd_on == "y" else inf["z"],
                condition,
                self.n_conditions,
                self.mmd_bandwidths,
                self.mmd_estimator,
                group,
                max(self.n_mmd_groups, 1),
                self.mmd_grouping,
            )
        else:
            mmd = recon.new_zeros(())
        total = recon + self.alpha * kl + self.beta * mmd
        return {"loss": total, "reconstruction": recon, "kl": kl, "mmd": mmd}

    @torch.no_grad()
    def sample(self, gen: dict[str, torch.Tensor]) -> torch.Tensor:
        """Draw observations from the likelihood given the decoder's output (global torch RNG).

        MSE: the mean plus Gaussian noise with the per-gene residual SD of the training data,
        floored at the smallest training value. NB: Gamma-Poisson counts. ZINB: NB counts set to
        zero with the dropout probability.
        """
        mean = gen["mean"]
        if self.likelihood == "mse":
            return (mean + torch.randn_like(mean) * self.residual_sd).clamp_min(self.x_min)
        theta = gen["theta"]
        counts = torch.poisson(torch._standard_gamma(theta) * (mean / theta))
        if self.likelihood == "zinb":
            zero = torch.rand_like(mean) < torch.sigmoid(gen["dropout_logits"])
            counts = counts.masked_fill(zero, 0.0)
        return counts
