"""Dense building blocks shared by the MLP and convolutional bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


def dense_block(n_in: int, n_out: int, dropout: float, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out))
    layers.append(nn.LeakyReLU(0.2))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def mlp(n_in: int, widths: Sequence[int], dropout: float, batch_norm: bool) -> nn.Sequential:
    layers = []
    for width in widths:
        layers.append(dense_block(n_in, width, dropout, batch_norm))
        n_in = width
    return nn.Sequential(*layers)


class ConditionedMLP(nn.Sequential):
    """Dense blocks whose inputs are ``[h, onehot(s)]`` (``n_conditions > 0``) or ``h`` alone."""

    def __init__(
        self,
        n_in: int,
        widths: Sequence[int],
        n_conditions: int,
        dropout: float,
        batch_norm: bool,
    ) -> None:
        blocks = []
        for width in widths:
            blocks.append(dense_block(n_in + n_conditions, width, dropout, batch_norm))
            n_in = width
        super().__init__(*blocks)
        self.n_conditions = n_conditions

    def forward(self, h: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(torch.cat([h, onehot], dim=1) if self.n_conditions else h)
        return h


class DenseSpec(NamedTuple):
    """The dense part of an encoder or decoder body: hidden widths, dropout and BatchNorm."""

    hidden: Sequence[int]
    dropout: float
    batch_norm: bool
