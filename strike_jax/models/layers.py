"""Layers with PyTorch's default initialisation and a masked BatchNorm (SPEC §5, §3).

Flax's `nn.Dense`/`nn.Conv` initialise the bias from its shape alone, but PyTorch draws a layer's
bias from `U(±1/sqrt(fan_in))`, which needs the fan-in of the *kernel*. These layers create both
parameters from the input's shape, so every registered model starts from PyTorch's distribution:

- `nn.Linear`/`nn.Conv2d` default (`kaiming_uniform_(a=sqrt(5))` for the weight, which is exactly
  `U(±1/sqrt(fan_in))`, and `U(±1/sqrt(fan_in))` for the bias), `fan_in = in_features` or
  `in_channels * kh * kw`;
- torchvision's ResNet convolutions (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`:
  `N(0, 2 / fan_out)`, `fan_out = out_channels * kh * kw`) as an option;
- BatchNorm: weight 1, bias 0, running mean 0, running variance 1.

Layout is NHWC throughout (kernels HWIO). The flatten order before a dense layer is therefore
(H, W, C) instead of PyTorch's (C, H, W): a fixed permutation of the dense layer's input rows, which
changes neither parameter counts nor the distribution of the initial model.

References:
  PyTorch `torch.nn.modules.linear.Linear.reset_parameters`, `torch.nn.modules.conv._ConvNd.reset_parameters`;
  torchvision `models/resnet.py` (`ResNet.__init__`); `torch.nn.BatchNorm2d`.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from strike_jax.models import conv as _conv
from strike_jax.models.pool import max_pool  # noqa: F401 - re-exported: models, cnn and resnet import it here

Array = jax.Array


def torch_uniform(fan_in: int):
    """Initialiser `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default for weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kaiming_normal_fan_out(fan_out: int):
    """Initialiser `N(0, 2 / fan_out)` (torchvision ResNet convolutions, ReLU gain)."""
    std = math.sqrt(2.0 / fan_out)

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


class Dense(nn.Module):
    """`y = x @ kernel + bias` with PyTorch `nn.Linear` initialisation. `x`: `[..., in]` -> `[..., features]`."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        y = jnp.dot(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO kernel, symmetric zero padding (PyTorch `nn.Conv2d`).

    Attributes:
      features: output channels.
      kernel_size: `(kh, kw)`.
      strides: `(sh, sw)`.
      padding: `p` zero rows/columns on every side (PyTorch's `padding=p`).
      use_bias: add a bias.
      conv_init: "torch" (`U(±1/sqrt(fan_in))`, PyTorch's default) or "kaiming_fan_out" (torchvision
        ResNet). The bias, when present, is always `U(±1/sqrt(fan_in))`.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: int = 0
    use_bias: bool = True
    conv_init: str = "torch"
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        fan_in = cin * kh * kw
        if self.conv_init == "torch":
            k_init = torch_uniform(fan_in)
        elif self.conv_init == "kaiming_fan_out":
            k_init = kaiming_normal_fan_out(self.features * kh * kw)
        else:
            raise ValueError(f"conv_init={self.conv_init!r}; allowed: 'torch', 'kaiming_fan_out'.")
        kernel = self.param("kernel", k_init, (kh, kw, cin, self.features))
        p = self.padding
        shape = _conv.ConvShape(x.shape[0], x.shape[1], x.shape[2], cin, self.features, (kh, kw),
                                (self.strides[0], self.strides[1]), (p, p))
        plan, lanes = _conv.plans_for(shape, self.conv_impl)
        _conv.record(self.scope.path if self.scope is not None else (), shape, plan, lanes)
        y = _conv.conv2d(x, kernel, self.strides, (p, p), plan, lanes)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


class MaskedBatchNorm(nn.Module):
    """BatchNorm over NHWC (or `[B, C]`) activations whose statistics skip padded batch slots.

    Training mode normalises with the biased batch variance of the *real* examples (`mask` True)
    and updates the running statistics as PyTorch does: `running = (1 - momentum) * running +
    momentum * batch`, with the *unbiased* batch variance (`count / (count - 1)`, `count` = real
    examples x spatial positions) in the running variance. Evaluation mode uses the running
    statistics. Padded slots are normalised too (their outputs are ignored by the masked loss) but
    never enter the statistics, so the forward pass and the gradient on the real examples are
    those of `nn.BatchNorm2d` applied to the real examples alone. Statistics are computed in two
    passes (mean, then centred squares) for accuracy.

    PyTorch's `num_batches_tracked` counter is not kept: it only matters with `momentum=None`.

    Attributes:
      momentum: PyTorch convention (weight of the new batch), 0.1 by default (= flax momentum 0.9).
      eps: added to the variance, 1e-5.

    Variables:
      params `scale` (1), `bias` (0); batch_stats `mean` (0), `var` (1); all `[C]`.
    """

    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            b = x.shape[0]
            per_example = math.prod(x.shape[1:-1])
            w = jnp.ones((b,), x.dtype) if mask is None else mask.astype(x.dtype)
            count = w.sum() * per_example
            denom = jnp.maximum(count, 1.0)
            spatial = tuple(range(1, x.ndim - 1))
            # Per-example sums first, then a weighted sum over the batch: one pass over x each.
            s1 = x.sum(axis=spatial) if spatial else x
            mean = (w @ s1) / denom
            centred = x - mean
            sq = jnp.square(centred)
            s2 = sq.sum(axis=spatial) if spatial else sq
            var = (w @ s2) / denom
            if not self.is_initializing():
                unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
                ra_var.value = (1.0 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
        else:
            mean, var = ra_mean.value, ra_var.value
            centred = x - mean
        return centred * (jax.lax.rsqrt(var + self.eps) * scale) + bias


def pool_impl(conv_impl: str) -> str:
    """The max-pooling form that goes with a model's `conv_impl`: "lax" with "lax", else "slices"."""
    return "lax" if conv_impl == "lax" else "slices"
