"""PyTorch references of the benchmarked models and steps, for side-by-side ratios.

Only ``benchmarks/bench.py`` imports this module, and only when PyTorch is
installed (``pip install -e .[bench]``); the library never does. The models
mirror ``ugclu_jax.models``: the MLP 784-256-256-10 and the SmallCNN
(conv32-ReLU-maxpool, conv64-ReLU-maxpool, dense 128-ReLU, dense 10; 3x3
convolutions with ``SAME`` padding). Each step is written as a PyTorch user
would write it, on the same random batches as the JAX side:

* ``sgd_step``: ``zero_grad``, forward, mean cross-entropy, ``backward``,
  ``torch.optim.SGD(lr=0.01, momentum=0.9).step()``;
* ``grad``: ``torch.autograd.grad`` of the mean cross-entropy;
* ``fisher_batch``: the squared batch gradient added into an accumulator, per
  batch of a pass over several batches (``ugclu_jax.fisher_diagonal``'s work).

The CNN runs in both of PyTorch's layouts, NCHW (the default) and channels-last,
so that the faster one can be the reference.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
  def __init__(self, in_features: int, num_classes: int):
    super().__init__()
    self.l1 = nn.Linear(in_features, 256)
    self.l2 = nn.Linear(256, 256)
    self.head = nn.Linear(256, num_classes)

  def forward(self, x):
    x = x.flatten(1)
    return self.head(F.relu(self.l2(F.relu(self.l1(x)))))


class SmallCNN(nn.Module):
  def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int]):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
    self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
    self.dense = nn.Linear((size[0] // 4) * (size[1] // 4) * 64, 128)
    self.head = nn.Linear(128, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    return self.head(F.relu(self.dense(x.flatten(1))))


def cases(
  model_name: str, batches: list[tuple[np.ndarray, np.ndarray]], *, learning_rate: float
) -> dict[str, tuple[Callable[[], object], int]]:
  """The PyTorch cases of one model: ``{name: (run, units)}``.

  Args:
    model_name: ``"mlp"`` or ``"cnn"``.
    batches: ``(x [B, H, W, C] float32, y [B] int)`` NumPy batches; the first is the
      step's batch, all of them the Fisher pass's.
    learning_rate: the SGD learning rate (momentum 0.9, as the JAX side).

  Returns:
    ``run`` performs one call; ``units`` is the number of batches a call covers.
  """
  torch.manual_seed(0)
  x0 = batches[0][0]
  num_classes = 10
  layouts = {"": torch.contiguous_format}
  if model_name == "cnn":
    layouts["_channels_last"] = torch.channels_last
  out = {}
  for suffix, layout in layouts.items():
    if model_name == "mlp":
      model = MLP(int(np.prod(x0.shape[1:])), num_classes)
    elif model_name == "cnn":
      model = SmallCNN(x0.shape[-1], num_classes, x0.shape[1:3]).to(memory_format=layout)
    else:
      raise ValueError(f"no PyTorch reference for {model_name!r}")
    data = [
      (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y).long())
      for x, y in batches
    ]
    if model_name == "cnn":
      data = [(x.to(memory_format=layout), y) for x, y in data]
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=learning_rate, momentum=0.9)
    x, y = data[0]

    def sgd_step(model=model, opt=opt, x=x, y=y):
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(x), y)
      loss.backward()
      opt.step()
      return loss

    def grad(model=model, params=params, x=x, y=y):
      return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    def fisher(model=model, params=params, data=data):
      acc = [torch.zeros_like(p) for p in params]
      for xb, yb in data:
        for a, g in zip(acc, torch.autograd.grad(F.cross_entropy(model(xb), yb), params)):
          a.addcmul_(g, g)
      return acc

    out[f"torch_sgd_step{suffix}"] = (sgd_step, 1)
    out[f"torch_grad{suffix}"] = (grad, 1)
    out[f"torch_fisher_batch{suffix}"] = (fisher, len(data))
  return out
