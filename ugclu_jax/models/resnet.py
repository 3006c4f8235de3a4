"""ResNet-18 in its CIFAR form (3x3 stem, no max-pool), with batch norm."""

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's BatchNorm2d defaults (torch momentum 0.1 is flax momentum 0.9).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
# He initialisation with fan-out, as torchvision initialises ResNet convolutions.
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(in_ch, out_ch, *, kernel, stride, dtype, param_dtype, rngs):
  """A bias-free convolution padded like PyTorch's (``kernel // 2`` each side)."""
  pad = kernel // 2
  return nnx.Conv(
    in_ch,
    out_ch,
    kernel_size=(kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=_CONV_INIT,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


def _batch_norm(channels, *, dtype, param_dtype, rngs):
  return nnx.BatchNorm(
    channels,
    momentum=_BN_MOMENTUM,
    epsilon=_BN_EPSILON,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


class _Projection(nnx.Module):
  """1x1 convolution + batch norm shortcut used when the shape changes."""

  def __init__(self, in_ch, out_ch, *, stride, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv = _conv(in_ch, out_ch, kernel=1, stride=stride, **kw)
    self.bn = _batch_norm(out_ch, **kw)

  def __call__(self, x, *, train):
    return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers with a residual connection.

  ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is
  the identity, or a 1x1 conv + BN projection when the stride or the number of
  channels changes.
  """

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    *,
    stride: int,
    dtype: jnp.dtype | None,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = _conv(in_ch, out_ch, kernel=3, stride=stride, **kw)
    self.bn1 = _batch_norm(out_ch, **kw)
    self.conv2 = _conv(out_ch, out_ch, kernel=3, stride=1, **kw)
    self.bn2 = _batch_norm(out_ch, **kw)
    if stride != 1 or in_ch != out_ch:
      self.shortcut = _Projection(in_ch, out_ch, stride=stride, **kw)
    else:
      self.shortcut = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    use_running_average = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
    y = self.bn2(self.conv2(y), use_running_average=use_running_average)
    skip = x if self.shortcut is None else self.shortcut(x, train=train)
    return nnx.relu(y + skip)


class ResNet18(nnx.Module):
  """ResNet-18 for small images (CIFAR form).

  Stem: 3x3 stride-1 conv (64) + BN + ReLU, no max-pool. Four stages of two
  ``BasicBlock``s with 64, 128, 256 and 512 channels; stages 2-4 start with
  stride 2 and a projection shortcut. Then global average pooling and a dense
  head. Convolutions have no bias; batch norm uses momentum 0.9 (flax
  convention, PyTorch's 0.1) and epsilon 1e-5. With 10 classes the model has
  11,173,962 parameters (batch-norm running statistics excluded). Any spatial
  size works; a 32x32 input reaches the pooling as 4x4x512.

  In train mode batch norm normalises with batch statistics and updates its
  running averages (``BatchStat``); in eval mode it uses the running averages.
  The running variance is fed the biased batch variance (flax), where PyTorch
  feeds the unbiased one; the two differ by a factor ``n / (n - 1)``, with ``n``
  the batch size times the spatial size.

  Parameters are laid out as ``{"conv1", "bn1", "layer1".."layer4", "head"}``;
  ``layerK`` holds blocks ``0`` and ``1``, each with ``conv1, bn1, conv2, bn2``
  and, where present, ``shortcut: {"conv", "bn"}``.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    in_channels: int = 3,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the layers.

    Args:
      num_classes: number of output logits.
      in_channels: channels of the NHWC input.
      dtype: computation dtype; ``None`` infers it from inputs and parameters.
      param_dtype: dtype of the parameters and batch statistics (float32 by
        default).
      rngs: random streams for initialisation (``params`` stream).
    """
    if num_classes < 1:
      raise ValueError(f"ResNet18: num_classes must be >= 1, got {num_classes}.")
    if in_channels < 1:
      raise ValueError(f"ResNet18: in_channels must be >= 1, got {in_channels}.")
    self.in_channels = in_channels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = _conv(in_channels, 64, kernel=3, stride=1, **kw)
    self.bn1 = _batch_norm(64, **kw)
    self.layer1 = self._stage(64, 64, stride=1, **kw)
    self.layer2 = self._stage(64, 128, stride=2, **kw)
    self.layer3 = self._stage(128, 256, stride=2, **kw)
    self.layer4 = self._stage(256, 512, stride=2, **kw)
    self.head = nnx.Linear(512, num_classes, **kw)

  @staticmethod
  def _stage(in_ch, out_ch, *, stride, **kw) -> nnx.List:
    return nnx.List(
      [
        BasicBlock(in_ch, out_ch, stride=stride, **kw),
        BasicBlock(out_ch, out_ch, stride=1, **kw),
      ]
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns logits ``[B, num_classes]`` for NHWC inputs ``[B, H, W, C]``.

    Args:
      x: inputs ``[B, H, W, in_channels]``.
      train: use batch statistics and update the running averages (True), or
        use the running averages (False).
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
        f"ResNet18: expected inputs [B, H, W, {self.in_channels}], got shape {x.shape}."
      )
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x)
