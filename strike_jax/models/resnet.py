"""ResNet-18 in torchvision's layout (SPEC §5), NHWC, with masked BatchNorm.

torchvision `resnet18(num_classes=12)`: conv 7x7/2 3->64 pad 3 (no bias), BN, ReLU, maxpool 3x3/2
pad 1; four stages of two BasicBlocks (64, 128, 256, 512 channels; the first block of stages 2-4
has stride 2 and a 1x1/2 conv + BN shortcut); global average pool; dense 512->classes.
11,182,668 parameters for 12 classes, 20 BatchNorm layers (4,800 channels, so 9,600 running
statistics: the `batch_stats` collection, part of the update vector, SPEC §1).

Initialisation follows torchvision by default (`conv_init="torchvision"`): convolutions
`N(0, 2 / fan_out)` (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`), BN weight 1 bias 0,
the final dense layer PyTorch's default `U(±1/sqrt(512))`. `conv_init="torch"` uses PyTorch's layer
default `U(±1/sqrt(fan_in))` for the convolutions instead (what a hand-written ResNet without
torchvision's init loop would get).

BatchNorm: PyTorch momentum 0.1 (flax momentum 0.9), eps 1e-5; in training mode it uses the batch
statistics of the real examples only (`mask`, see `MaskedBatchNorm`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from strike_jax.models.layers import Conv, Dense, MaskedBatchNorm, max_pool, pool_impl

Array = jax.Array


def _conv_init(conv_init: str) -> str:
    if conv_init == "torchvision":
        return "kaiming_fan_out"
    if conv_init == "torch":
        return "torch"
    raise ValueError(f"conv_init={conv_init!r}; allowed: 'torchvision', 'torch'.")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN and an identity (or 1x1 conv + BN) shortcut."""

    features: int
    stride: int = 1
    conv_init: str = "torchvision"
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool, mask: Array | None) -> Array:
        ci = _conv_init(self.conv_init)
        out = Conv(self.features, (3, 3), (self.stride, self.stride), padding=1, use_bias=False,
                   conv_init=ci, conv_impl=self.conv_impl, name="conv1")(x)
        out = nn.relu(MaskedBatchNorm(name="bn1")(out, train, mask))
        out = Conv(self.features, (3, 3), padding=1, use_bias=False, conv_init=ci, conv_impl=self.conv_impl,
                   name="conv2")(out)
        out = MaskedBatchNorm(name="bn2")(out, train, mask)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False, conv_init=ci,
                     conv_impl=self.conv_impl, name="downsample_conv")(x)
            x = MaskedBatchNorm(name="downsample_bn")(x, train, mask)
        return nn.relu(out + x)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision layout). `x`: `[B, H, W, 3]` -> logits `[B, num_classes]`.

    Attributes:
      num_classes: output classes (12 for ImageNet-12).
      stage_sizes: blocks per stage, `(2, 2, 2, 2)`.
      conv_init: "torchvision" (default) or "torch"; see the module docstring.
      conv_impl: convolution / pooling forms (`strike_jax.models.conv.plans_for`), "lax" by default.
    """

    num_classes: int = 12
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    conv_init: str = "torchvision"
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        ci = _conv_init(self.conv_init)
        x = Conv(64, (7, 7), (2, 2), padding=3, use_bias=False, conv_init=ci, conv_impl=self.conv_impl,
                 name="conv1")(x)
        x = nn.relu(MaskedBatchNorm(name="bn1")(x, train, mask))
        x = max_pool(x, 3, 2, padding=1, impl=pool_impl(self.conv_impl))
        for stage, blocks in enumerate(self.stage_sizes):
            features = 64 * 2**stage
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                block = BasicBlock(features, stride, self.conv_init, self.conv_impl, name=f"layer{stage + 1}_{b}")
                x = block(x, train, mask)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, name="fc")(x)
