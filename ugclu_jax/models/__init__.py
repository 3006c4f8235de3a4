"""Flax NNX models and their pure-function interface."""

from ugclu_jax.models.cnn import SmallCNN
from ugclu_jax.models.functional import MODELS
from ugclu_jax.models.functional import ApplyFn
from ugclu_jax.models.functional import as_functional
from ugclu_jax.models.functional import count_params
from ugclu_jax.models.functional import get_model
from ugclu_jax.models.mlp import MLP
from ugclu_jax.models.resnet import BasicBlock
from ugclu_jax.models.resnet import ResNet18

__all__ = (
  "ApplyFn",
  "BasicBlock",
  "MLP",
  "MODELS",
  "ResNet18",
  "SmallCNN",
  "as_functional",
  "count_params",
  "get_model",
)
