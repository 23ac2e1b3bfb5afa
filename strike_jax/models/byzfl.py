"""ByzFL's benchmark models (ByzFL 0.0.11, `byzfl.fed_framework.models`), as flax modules.

Written from ByzFL's layer lists (no code shared). All take NHWC float32 images `[B, H, W, C]` and
return logits `[B, num_classes]`; parameters start from PyTorch's default initialisation (SPEC §5,
`strike_jax.models.layers`), as ByzFL's models do (they never re-initialise their layers).

| name | module | layers | parameters (10 classes) |
|---|---|---|---|
| `cnn_mnist` | `CnnMnist` | conv 5x5 1->20 (no pad), ReLU, maxpool 2; conv 5x5 20->50, ReLU, maxpool 2; dense 800->500, ReLU; dense 500->classes | 431,080 (28x28x1) |
| `fc_mnist` | `FcMnist` | flatten; dense 784->100, ReLU; dense 100->classes | 79,510 (28x28x1) |
| `logreg_mnist` | `LogRegMnist` | flatten; dense 784->classes | 7,850 (28x28x1) |
| `cnn_cifar` | `CnnCifar` | 3 x (conv 5x5 pad 2 ->20/100/200, ReLU, maxpool 2); dense 3200->512, ReLU; dense 512->256, ReLU; dense 256->classes | 2,324,630 (32x32x3) |
| `resnet18_cifar` | `ResNet18Cifar` | CIFAR-stem ResNet-18: conv 3x3/1 3->64 pad 1 (no bias), BN, ReLU (no max-pool); 4 stages of 2 BasicBlocks (64..512); average pool; dense 512->classes | 11,173,962 (+9,600 running statistics) |

Differences from ByzFL's PyTorch modules, none of which changes a parameter count or the
initial distribution:

- Outputs. ByzFL's `cnn_mnist` and `fc_mnist` end in `log_softmax` (trained with `NLLLoss`): the
  cross-entropy of our logits is the same loss, and the argmax the same prediction.
  `logreg_mnist` ends in a `sigmoid` in ByzFL and its default loss is `NLLLoss`, i.e. it minimises
  `-sigmoid(z_y)`, not a likelihood; ours returns the linear logits (multinomial logistic
  regression under cross-entropy). `strike_jax.byzfl` states this difference.
- Flatten order (H, W, C) instead of PyTorch's (C, H, W): a fixed permutation of the first dense
  layer's input rows (as everywhere in `strike_jax.models`).
- ResNet-18's final `avg_pool2d(x, 4)` is a mean over the spatial axes here: identical at 32x32
  inputs (the last stage is 4x4), and defined for other sizes. Its convolutions keep PyTorch's
  layer default `U(±1/sqrt(fan_in))` (ByzFL's ResNet has no torchvision init loop), BatchNorm
  weight 1, bias 0, momentum 0.1, eps 1e-5.

References:
  ByzFL 0.0.11 (`pip download byzfl==0.0.11`), `byzfl/fed_framework/models.py`; the CIFAR ResNet
  layout of K. Liu's pytorch-cifar, which ByzFL follows.
"""  # noqa: E501 (the table rows above are longer than a line; wrapping would break the table)

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from strike_jax.models.cnn import _flatten, _pool
from strike_jax.models.layers import Conv, Dense, MaskedBatchNorm
from strike_jax.models.resnet import BasicBlock

Array = jax.Array


class CnnMnist(nn.Module):
    """ByzFL `cnn_mnist`: conv 5x5 ->20, ReLU, maxpool 2; conv 5x5 20->50, ReLU, maxpool 2 (28x28
    -> 4x4x50 = 800); dense ->500, ReLU; dense 500->classes. 431,080 parameters at 28x28x1."""

    num_classes: int = 10
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = _pool(self, nn.relu(Conv(20, (5, 5), conv_impl=self.conv_impl, name="conv1")(x)))
        x = _pool(self, nn.relu(Conv(50, (5, 5), conv_impl=self.conv_impl, name="conv2")(x)))
        x = nn.relu(Dense(500, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class FcMnist(nn.Module):
    """ByzFL `fc_mnist`: flatten; dense ->100, ReLU; dense 100->classes (79,510 at 28x28x1)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = nn.relu(Dense(100, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class LogRegMnist(nn.Module):
    """ByzFL `logreg_mnist` without its final sigmoid: flatten; dense ->classes (7,850 at 28x28x1)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        return Dense(self.num_classes, name="linear")(_flatten(x))


class CnnCifar(nn.Module):
    """ByzFL `cnn_cifar`: three (conv 5x5 pad 2, ReLU, maxpool 2) blocks with 20, 100, 200 channels
    (32x32 -> 4x4x200 = 3200); dense ->512, ReLU; dense ->256, ReLU; dense ->classes. 2,324,630
    parameters at 32x32x3."""

    num_classes: int = 10
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        for i, ch in enumerate((20, 100, 200)):
            x = _pool(self, nn.relu(Conv(ch, (5, 5), padding=2, conv_impl=self.conv_impl, name=f"conv{i + 1}")(x)))
        x = nn.relu(Dense(512, name="fc1")(_flatten(x)))
        x = nn.relu(Dense(256, name="fc2")(x))
        return Dense(self.num_classes, name="fc3")(x)


class ResNet18Cifar(nn.Module):
    """ByzFL `ResNet18`: the CIFAR-stem ResNet-18 (3x3/1 stem without max-pool; see the module
    docstring). `x`: `[B, H, W, 3]` -> logits `[B, num_classes]`; BatchNorm with masked statistics
    (`MaskedBatchNorm`)."""

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = Conv(64, (3, 3), padding=1, use_bias=False, conv_impl=self.conv_impl, name="conv1")(x)
        x = nn.relu(MaskedBatchNorm(name="bn1")(x, train, mask))
        for stage, blocks in enumerate(self.stage_sizes):
            features = 64 * 2**stage
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                x = BasicBlock(features, stride, "torch", self.conv_impl, name=f"layer{stage + 1}_{b}")(x, train, mask)
        return Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


__all__ = ["CnnCifar", "CnnMnist", "FcMnist", "LogRegMnist", "ResNet18Cifar"]
