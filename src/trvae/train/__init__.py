"""Fitting a module: the training plan, its default budget, checkpoints, devices and distributed
training."""

from trvae.train.plan import TrainingPlan

__all__ = ["TrainingPlan"]
