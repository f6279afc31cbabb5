"""Fitting a module: the training plan, checkpoints, devices and distributed training."""

from trvae.train.plan import TrainingPlan

__all__ = ["TrainingPlan"]
