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

:class:`UnlearnRequest` is a whole UG-CLU unlearn request (``none`` mode) written
the same way (``torch.optim.SGD``, ``LambdaLR``, ``torch.autograd.grad``), for
``bench.py --request``; :func:`from_jax` and :func:`to_jax` move weights (and
masks, Fisher diagonals) between the two layouts, so both sides can start from
the same weights and be compared.
"""

from collections.abc import Callable
import math

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
    self.pooled = (size[0] // 4, size[1] // 4)  # the spatial size the dense layer sees
    self.dense = nn.Linear(self.pooled[0] * self.pooled[1] * 64, 128)
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


# ---------------------------------------------------------------------------
# The whole unlearn request (bench.py --request).

# torch module name -> key path of the same layer in ugclu_jax's params.
_JAX_PATHS = {
  "mlp": {"l1": ("hidden", 0), "l2": ("hidden", 1), "head": ("head",)},
  "cnn": {"conv1": ("conv1",), "conv2": ("conv2",), "dense": ("dense",), "head": ("head",)},
}


def build_model(
  model_name: str, input_shape: tuple[int, int, int], layout=torch.contiguous_format
) -> nn.Module:
  """The PyTorch model of NHWC inputs ``input_shape = (H, W, C)``, 10 classes, in ``layout``."""
  h, w, c = input_shape
  if model_name == "mlp":
    return MLP(h * w * c, 10)
  if model_name == "cnn":
    return SmallCNN(c, 10, (h, w)).to(memory_format=layout)
  raise ValueError(f"no PyTorch reference for {model_name!r}")


def _dense_hwc(model: nn.Module) -> tuple[int, int, int]:
  """``(H, W, C)`` of the feature map the CNN's dense layer flattens."""
  return (*model.pooled, model.conv2.out_channels)


def from_jax(model_name: str, model: nn.Module, tree) -> dict[str, np.ndarray]:
  """``tree``, shaped like ugclu_jax's params (NumPy leaves), as ``{torch name: array}``.

  Kernels ``[in, out]`` become weights ``[out, in]``, HWIO convolutions OIHW, and
  the CNN's dense rows go from NHWC to NCHW flattening order. Works for any tree of
  that structure (weights, masks, Fisher diagonals).
  """
  out = {}
  for name, _ in model.named_parameters():
    module, kind = name.rsplit(".", 1)
    node = tree
    for key in _JAX_PATHS[model_name][module]:
      node = node[key]
    a = np.asarray(node["bias" if kind == "bias" else "kernel"])
    if kind == "weight" and a.ndim == 4:
      a = a.transpose(3, 2, 0, 1)
    elif kind == "weight" and module == "dense":
      a = a.reshape(*_dense_hwc(model), -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
    elif kind == "weight":
      a = a.T
    out[name] = np.ascontiguousarray(a)
  return out


def to_jax(model_name: str, tensors: dict[str, torch.Tensor], model: nn.Module) -> dict:
  """``{torch name: tensor}`` in ugclu_jax's params layout (NumPy), :func:`from_jax` inverted."""
  tree: dict = {}
  for name, t in tensors.items():
    module, kind = name.rsplit(".", 1)
    a = t.detach().cpu().numpy()
    if kind == "weight" and a.ndim == 4:
      a = a.transpose(2, 3, 1, 0)
    elif kind == "weight" and module == "dense":
      h, w, c = _dense_hwc(model)
      a = a.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    elif kind == "weight":
      a = a.T
    node = tree
    for key in _JAX_PATHS[model_name][module]:
      node = node.setdefault(key, {})
    node["bias" if kind == "bias" else "kernel"] = np.ascontiguousarray(a)
  return tree


def cosine(k: int, n: int) -> float:
  """``(1 + cos(pi min(k, N) / N)) / 2``: the factor of the learning rate and of a_U at ``k``."""
  return 0.5 * (1.0 + math.cos(math.pi * min(k, n) / n))


def unlearn_loss(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
  """UG-CLU's target loss on a forget batch, to minimise: ``-sum_i w_i l_i``.

  ``l_i`` the cross-entropies, ``w_i = c_i / sum_j c_j`` with
  ``c_i = 1 / (l_i^temperature + 1e-12)``, not differentiated.
  """
  losses = F.cross_entropy(logits, y, reduction="none")
  with torch.no_grad():
    c = 1.0 / (losses.clamp_min(0.0).pow(temperature) + 1e-12)
  return -(c / c.sum() * losses).sum()


class UnlearnRequest:
  """One unlearn request of UG-CLU's ``none`` mode, written as a PyTorch user would.

  ``mask_pass()``: the weights reset to the initial ones, then the Fisher diagonals
  of the forget set ``D_U`` and of the rest ``D_R`` (one pass over each in consecutive
  batches, the last one short; the squared batch gradients of the mean cross-entropy
  accumulated, divided by the number of batches) and the balanced saliency mask
  ``(F_U + eps) / (F_R + eps) >= threshold``.

  ``iterations(mask)``: ``torch.optim.SGD`` (momentum, coupled weight decay) with a
  ``LambdaLR`` cosine over the ``N`` iterations. Iteration ``k`` takes the remain batch
  ``remain_index[k]``; every ``forget_freq``-th it adds the target direction
  ``d = clip(mask * a_U(k) grad J_U)`` (forget batch ``target_index[k // forget_freq]``,
  :func:`unlearn_loss`, ``a_U(k) = a_target * cosine(k, N)``, global-norm clip
  ``clip_norm``) to the remain gradient ``a_remain * grad CE``, as
  ``ugclu_jax.make_steps(kind="unlearn", mode="none")`` does; the others are remain
  steps. Returns the parameters.

  Args:
    model_name: ``"mlp"`` or ``"cnn"``.
    input_shape: ``(H, W, C)``.
    init_params: the initial weights in ugclu_jax's layout (:func:`from_jax`).
    target, remain: ``(x [n, H, W, C] float32, y [n] int)`` NumPy sets ``D_U``, ``D_R``.
    target_index, remain_index: int ``[ceil(N / f), B]`` and ``[N, B]`` rows of them.
    batch_size: the Fisher pass's batch size.
    layout: ``torch.contiguous_format`` (NCHW) or ``torch.channels_last``.
  """

  def __init__(
    self,
    model_name: str,
    input_shape: tuple[int, int, int],
    init_params,
    target: tuple[np.ndarray, np.ndarray],
    remain: tuple[np.ndarray, np.ndarray],
    target_index: np.ndarray,
    remain_index: np.ndarray,
    *,
    batch_size: int,
    num_iterations: int,
    forget_freq: int = 5,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    a_target: float = 25.0,
    a_remain: float = 1.0,
    temperature: float = 0.5,
    clip_norm: float = 7.0,
    threshold: float = 1.0,
    eps: float = 1e-15,
    layout=torch.contiguous_format,
  ):
    self.model = build_model(model_name, input_shape, layout)
    self.params = list(self.model.parameters())
    self.initial = {
      k: torch.tensor(v) for k, v in from_jax(model_name, self.model, init_params).items()
    }
    self.load(self.initial)

    def tensors(x, y):
      x = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
      return x.contiguous(memory_format=layout), torch.from_numpy(np.asarray(y)).long()

    self.target, self.remain = tensors(*target), tensors(*remain)
    self.target_index = torch.from_numpy(np.asarray(target_index)).long()
    self.remain_index = torch.from_numpy(np.asarray(remain_index)).long()
    self.batch_size, self.n, self.f = batch_size, num_iterations, forget_freq
    self.lr, self.momentum, self.weight_decay = learning_rate, momentum, weight_decay
    self.a_target, self.a_remain, self.temperature = a_target, a_remain, temperature
    self.clip_norm, self.threshold, self.eps = clip_norm, threshold, eps

  def load(self, named: dict[str, torch.Tensor]) -> None:
    """Copies ``{name: tensor}`` into the model's parameters (keeping their layout)."""
    with torch.no_grad():
      for name, p in self.model.named_parameters():
        p.copy_(named[name])

  def named(self, tensors) -> dict[str, torch.Tensor]:
    """Tensors in parameter order as ``{name: tensor}``."""
    return {name: t for (name, _), t in zip(self.model.named_parameters(), tensors)}

  def fisher(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The Fisher diagonal of one set: one pass in batches, squared batch gradients."""
    acc = [torch.zeros_like(p) for p in self.params]
    starts = range(0, len(x), self.batch_size)
    for s in starts:
      xb, yb = x[s : s + self.batch_size], y[s : s + self.batch_size]
      for a, g in zip(acc, torch.autograd.grad(F.cross_entropy(self.model(xb), yb), self.params)):
        a.addcmul_(g, g)
    return [a / len(starts) for a in acc]

  def fishers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The Fisher diagonals of ``D_U`` and ``D_R`` at the current weights (eval mode)."""
    self.model.eval()
    return self.fisher(*self.target), self.fisher(*self.remain)

  def mask_pass(self) -> list[torch.Tensor]:
    """Resets the weights to the initial ones; returns the saliency mask (parameter order)."""
    self.load(self.initial)
    f_t, f_r = self.fishers()
    eps = self.eps
    return [((ft + eps) / (fr + eps) >= self.threshold).float() for ft, fr in zip(f_t, f_r)]

  def iterations(self, mask: list[torch.Tensor]) -> list[torch.Tensor]:
    """The request's ``N`` iterations from the model's current weights; its parameters."""
    model, params, n = self.model, self.params, self.n
    model.train()
    opt = torch.optim.SGD(
      params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine(k, n))
    (xt, yt), (xr, yr) = self.target, self.remain
    for k in range(n):
      opt.zero_grad(set_to_none=True)
      rows = self.remain_index[k]
      remain_loss = self.a_remain * F.cross_entropy(model(xr[rows]), yr[rows])
      if k % self.f == 0:
        rows = self.target_index[k // self.f]
        a_t = self.a_target * cosine(k, n)
        grads = torch.autograd.grad(
          unlearn_loss(model(xt[rows]), yt[rows], self.temperature), params
        )
        d = [a_t * g * m for g, m in zip(grads, mask)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in d]))
        scale = torch.clamp(self.clip_norm / norm.clamp_min(1e-12), max=1.0)
        remain_loss.backward()
        for p, t in zip(params, d):
          p.grad.add_(t * scale)
      else:
        remain_loss.backward()
      opt.step()
      schedule.step()
    return params

  def __call__(self) -> list[torch.Tensor]:
    """The whole request: mask pass, then iterations."""
    return self.iterations(self.mask_pass())
