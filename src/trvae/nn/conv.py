"""Convolutional encoder and decoder bodies of :class:`~trvae.module.TRVAEModule` for images.

Images come in flattened (cells x pixels, row-major ``(C, H, W)`` or ``(H, W)``) exactly like
expression profiles; these bodies reshape them internally, so the rest of the module (the latent
heads, the MMD layer ``y = f([z, onehot(s)])`` and the loss) is the same for both architectures.

Encoder: ``[x, onehot(s)]`` -> x reshaped to ``(C, H, W)`` and zero-padded to a multiple of 4 ->
``Conv2d(C, 16, 4, stride 2)`` -> ``Conv2d(16, 32, 4, stride 2)`` -> flatten -> concatenated with
``onehot(s)`` -> dense layers ``n_hidden``.
Decoder (after the MMD layer): dense layers ``n_hidden[::-1]`` -> dense to ``32 x H/4 x W/4`` ->
``ConvTranspose2d(32, 16, 4, stride 2)`` -> ``ConvTranspose2d(16, C, 4, stride 2)`` -> cropped
to ``(C, H, W)`` and flattened; the module's output is a sigmoid of it (pixels in [0, 1]).
With ``decoder_conditioning="all_layers"`` the dense layers also take ``onehot(s)`` and every
transposed convolution takes it as extra constant channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from trvae.nn.layers import ConditionedMLP, DenseSpec, dense_block, mlp

#: Channels of the two stride-2 convolutions of the encoder (the decoder mirrors them); half the
#: common 32 and 64 for speed on a CPU (``docs/choosing-parameters.md``).
CONV_CHANNELS: tuple[int, ...] = (16, 32)


def image_dims(image_shape: Sequence[int], n_input: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``image_shape`` (``(H, W)`` means one channel), checked against pixels."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {tuple(image_shape)}")
    if shape[0] * shape[1] * shape[2] != n_input:
        raise ValueError(
            f"image_shape {tuple(image_shape)} has {shape[0] * shape[1] * shape[2]} pixels, "
            f"but the data have {n_input} features"
        )
    return shape


def _padded(size: int) -> int:
    step = 2 ** len(CONV_CHANNELS)
    return -(-size // step) * step


def _conv_stack(
    channels: Sequence[int],
    batch_norm: bool,
    transpose: bool,
    last_activation: bool = True,
    n_extra_in: int = 0,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    for i, (n_in, n_out) in enumerate(pairwise(channels)):
        layers.append(conv(n_in + n_extra_in, n_out, kernel_size=4, stride=2, padding=1))
        if last_activation or i < len(channels) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm2d(n_out))
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Encoder body: takes ``[x, onehot(s)]`` like the MLP body, returns the last hidden layer."""

    def __init__(
        self, image_shape: Sequence[int], n_input: int, n_conditions: int, dense: DenseSpec
    ) -> None:
        super().__init__()
        self.shape = image_dims(image_shape, n_input)
        c, h, w = self.shape
        hidden, dropout, batch_norm = dense
        self.conv = _conv_stack((c, *CONV_CHANNELS), batch_norm, transpose=False)
        scale = 2 ** len(CONV_CHANNELS)
        n_flat = CONV_CHANNELS[-1] * (_padded(h) // scale) * (_padded(w) // scale)
        self.dense = mlp(n_flat + n_conditions, list(hidden), dropout, batch_norm)
        self.n_out = hidden[-1] if hidden else n_flat + n_conditions

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        x, condition = inputs[:, : c * h * w], inputs[:, c * h * w :]
        x = F.pad(x.reshape(-1, c, h, w), (0, _padded(w) - w, 0, _padded(h) - h))
        return self.dense(torch.cat([self.conv(x).flatten(1), condition], dim=1))


class ConvDecoder(nn.Module):
    """Decoder body after the MMD layer: ``(y, onehot(s))`` -> flattened image logits.

    ``n_conditions=0`` ignores ``onehot(s)`` (the paper's decoder: the condition is in y only).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        n_input: int,
        n_mmd: int,
        n_conditions: int,
        dense: DenseSpec,
    ) -> None:
        super().__init__()
        self.shape = image_dims(image_shape, n_input)
        self.n_conditions = n_conditions
        c, h, w = self.shape
        hidden, dropout, batch_norm = dense
        scale = 2 ** len(CONV_CHANNELS)
        self.grid = (CONV_CHANNELS[-1], _padded(h) // scale, _padded(w) // scale)
        self.dense = ConditionedMLP(n_mmd, list(hidden)[::-1], n_conditions, dropout, batch_norm)
        n_last = (hidden[0] if hidden else n_mmd) + n_conditions
        self.project = dense_block(
            n_last, self.grid[0] * self.grid[1] * self.grid[2], 0.0, batch_norm
        )
        channels = (*CONV_CHANNELS[::-1], c)
        self.deconv = _conv_stack(
            channels, batch_norm, transpose=True, last_activation=False, n_extra_in=n_conditions
        )

    def _with_condition(self, h: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        if not self.n_conditions:
            return h
        if h.dim() == 2:
            return torch.cat([h, onehot], dim=1)
        planes = onehot[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return torch.cat([h, planes], dim=1)

    def forward(self, y: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        hidden = self._with_condition(self.dense(y, onehot), onehot)
        grid = self.project(hidden).reshape(-1, *self.grid)
        for layer in self.deconv:
            if isinstance(layer, nn.ConvTranspose2d):
                grid = self._with_condition(grid, onehot)
            grid = layer(grid)
        return grid[:, :, :h, :w].flatten(1)
