"""Layers shared by the networks: dense blocks and convolutional bodies for images."""

from trvae.nn.layers import ConditionedMLP, DenseSpec, dense_block, mlp

__all__ = ["ConditionedMLP", "DenseSpec", "dense_block", "mlp"]
