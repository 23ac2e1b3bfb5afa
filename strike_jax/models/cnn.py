"""Plain (BatchNorm-free except `SmallCNNBN`) image classifiers of the paper and the local presets.

All take NHWC float32 images `[B, H, W, C]` and return logits `[B, num_classes]`. The `train` and
`mask` arguments are accepted by every module for a uniform interface; only `SmallCNNBN` uses them.

Parameter counts (with the default shapes, checked in tests/test_models.py):

| model | input | classes | parameters |
|---|---|---|---|
| FemnistCNN (reference) | 28x28x1 | 62 | 848,382 |
| LeafCNN (LEAF's original) | 28x28x1 | 62 | 6,603,710 |
| AlexNetCifar | 32x32x3 | 10 | 2,472,266 |
| SmallCNN | 8x8x1 / 28x28x1 | 10 | 13,706 / 105,866 |
| SmallCNNBN | 8x8x1 / 28x28x1 | 10 | 13,802 (+96 running stats) / 105,962 (+96) |
| MLP (hidden 128) | 8x8x1 / 28x28x1 | 10 | 9,610 / 101,770 |

References:
  SPEC.md §5; LEAF (Caldas et al. 2018) `models/femnist/cnn.py`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from strike_jax.models.layers import Conv, Dense, MaskedBatchNorm, max_pool, pool_impl

Array = jax.Array


def _pool(module: nn.Module, x: Array) -> Array:
    """2x2 max pooling in the form `module.conv_impl` implies ("lax": reduce_window; else slices)."""
    return max_pool(x, 2, impl=pool_impl(module.conv_impl))


def _flatten(x: Array) -> Array:
    return x.reshape((x.shape[0], -1))


class FemnistCNN(nn.Module):
    """The reference FEMNIST CNN: conv 5x5 1->16 pad 2, ReLU, maxpool 2; conv 5x5 16->32 pad 2, ReLU,
    maxpool 2; dense 1568->512, ReLU; dense 512->classes (SPEC §5)."""

    num_classes: int = 62
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = _pool(self, nn.relu(Conv(16, (5, 5), padding=2, conv_impl=self.conv_impl, name="conv1")(x)))
        x = _pool(self, nn.relu(Conv(32, (5, 5), padding=2, conv_impl=self.conv_impl, name="conv2")(x)))
        x = nn.relu(Dense(512, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class LeafCNN(nn.Module):
    """LEAF's original FEMNIST CNN: conv 5x5 ->32 pad 2, ReLU, maxpool 2; conv 5x5 32->64 pad 2, ReLU,
    maxpool 2; dense 3136->2048, ReLU; dense 2048->classes."""

    num_classes: int = 62
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = _pool(self, nn.relu(Conv(32, (5, 5), padding=2, conv_impl=self.conv_impl, name="conv1")(x)))
        x = _pool(self, nn.relu(Conv(64, (5, 5), padding=2, conv_impl=self.conv_impl, name="conv2")(x)))
        x = nn.relu(Dense(2048, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class AlexNetCifar(nn.Module):
    """AlexNet for 32x32 CIFAR (SPEC §5): conv 11x11/4 ->64 pad 5, ReLU, maxpool 2; conv 5x5 ->192
    pad 2, ReLU, maxpool 2; conv 3x3 ->384 pad 1, ReLU; conv 3x3 ->256 pad 1, ReLU; conv 3x3 ->256
    pad 1, ReLU; maxpool 2; dense 256->classes. No BatchNorm, no dropout."""

    num_classes: int = 10
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        conv1 = Conv(64, (11, 11), strides=(4, 4), padding=5, conv_impl=self.conv_impl, name="conv1")
        x = _pool(self, nn.relu(conv1(x)))
        x = _pool(self, nn.relu(Conv(192, (5, 5), padding=2, conv_impl=self.conv_impl, name="conv2")(x)))
        x = nn.relu(Conv(384, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv3")(x))
        x = nn.relu(Conv(256, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv4")(x))
        x = _pool(self, nn.relu(Conv(256, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv5")(x)))
        return Dense(self.num_classes, name="fc")(_flatten(x))


class SmallCNN(nn.Module):
    """A small CNN for digits (8x8x1) and Fashion-MNIST (28x28x1): conv 3x3 ->16 pad 1, ReLU, maxpool 2;
    conv 3x3 16->32 pad 1, ReLU, maxpool 2; dense ->64, ReLU; dense 64->classes."""

    num_classes: int = 10
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = _pool(self, nn.relu(Conv(16, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv1")(x)))
        x = _pool(self, nn.relu(Conv(32, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv2")(x)))
        x = nn.relu(Dense(64, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class SmallCNNBN(nn.Module):
    """`SmallCNN` with a (masked) BatchNorm after each convolution (conv -> BN -> ReLU -> pool): the
    smallest model with batch statistics, to exercise the BatchNorm path of local training cheaply."""

    num_classes: int = 10
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = Conv(16, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv1")(x)
        x = _pool(self, nn.relu(MaskedBatchNorm(name="bn1")(x, train, mask)))
        x = Conv(32, (3, 3), padding=1, conv_impl=self.conv_impl, name="conv2")(x)
        x = _pool(self, nn.relu(MaskedBatchNorm(name="bn2")(x, train, mask)))
        x = nn.relu(Dense(64, name="fc1")(_flatten(x)))
        return Dense(self.num_classes, name="fc2")(x)


class MLP(nn.Module):
    """Flatten, then dense layers of `hidden` widths with ReLU, then dense ->classes."""

    num_classes: int = 10
    hidden: Sequence[int] = (128,)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, mask: Array | None = None) -> Array:
        x = _flatten(x)
        for i, h in enumerate(self.hidden):
            x = nn.relu(Dense(h, name=f"fc{i + 1}")(x))
        return Dense(self.num_classes, name=f"fc{len(self.hidden) + 1}")(x)
