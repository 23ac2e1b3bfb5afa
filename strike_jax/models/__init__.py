"""Model registry: `get(name, num_classes, input_shape) -> ModelSpec`, `names()`.

A `ModelSpec` wraps a flax linen module behind two pure functions:

- `init(key) -> variables`: `{"params": ...}`, plus `"batch_stats"` for models with BatchNorm;
- `apply(variables, x, train, mask=None) -> (logits, batch_stats)`: `x` `[B, H, W, C]` float32 NHWC,
  logits `[B, num_classes]`. With `train=True` a BatchNorm model normalises with the statistics of
  the examples where `mask` (`[B]` bool, default all True) is True and returns its updated running
  statistics; with `train=False` it uses (and returns unchanged) its running statistics. Models
  without BatchNorm return `None` and ignore `train`/`mask`.

All models start from PyTorch's default initialisation (SPEC §5; `strike_jax.models.layers`).

Convolutions and max pooling run in the forms `conv_impl` picks (`strike_jax.models.conv`):
`get(..., conv_impl="auto")` resolves, once and outside traced code, to "cpu" on the CPU backend
(per layer and pass the measured fastest form; patches, unfolded-kernel and lax forms mixed by a
custom VJP, and fast under `jax.vmap` over per-lane parameters) and to "lax" elsewhere (XLA's
convolution: cuDNN on GPU). All choices give the same parameters (same pytree, same init) and the
same function within float32 rounding. `conv_plans(model)` says which form each layer uses.

| name | module | default use |
|---|---|---|
| `femnist_cnn` | `FemnistCNN` (848,382 params at 28x28x1, 62 classes) | FEMNIST (paper) |
| `leaf_cnn` | `LeafCNN` (6,603,710) | FEMNIST, LEAF's original CNN |
| `alexnet_cifar` | `AlexNetCifar` (2,472,266 at 32x32x3, 10 classes) | CIFAR-10 (paper) |
| `resnet18` | `ResNet18` (11,182,668 at 224x224x3, 12 classes; BatchNorm) | ImageNet-12 (paper) |
| `small_cnn` | `SmallCNN` | digits (8x8x1), Fashion-MNIST (28x28x1) |
| `small_cnn_bn` | `SmallCNNBN` (BatchNorm) | tests of the BatchNorm path; digits |
| `mlp` | `MLP` (hidden 128) | digits, Fashion-MNIST |
| `digits_cnn`, `fmnist_cnn` | `SmallCNN` (aliases used by the local presets) | digits / Fashion-MNIST |
| `digits_mlp` | `MLP` (alias) | digits |
| `cnn_mnist`, `fc_mnist`, `logreg_mnist` | ByzFL's MNIST models (431,080 / 79,510 / 7,850 params) | ByzFL benchmarks |
| `cnn_cifar`, `resnet18_cifar` | ByzFL's CIFAR models (2,324,630 / 11,173,962 params) | ByzFL benchmarks |
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from strike_jax.errors import InputError
from strike_jax.models import conv as conv_lib
from strike_jax.models import user as _user
from strike_jax.models.byzfl import CnnCifar, CnnMnist, FcMnist, LogRegMnist, ResNet18Cifar
from strike_jax.models.cnn import MLP, AlexNetCifar, FemnistCNN, LeafCNN, SmallCNN, SmallCNNBN
from strike_jax.models.layers import Conv, Dense, MaskedBatchNorm, max_pool
from strike_jax.models.resnet import BasicBlock, ResNet18
from strike_jax.models.user import from_flax, register

Array = jax.Array
Variables = dict[str, Any]

__all__ = [
    "ModelSpec", "from_flax", "get", "names", "register", "num_params", "num_batch_stats", "conv_plans", "ConvLayer",
    "FemnistCNN", "LeafCNN", "AlexNetCifar", "ResNet18", "BasicBlock", "SmallCNN", "SmallCNNBN", "MLP",
    "Conv", "Dense", "MaskedBatchNorm", "max_pool",
    "CnnMnist", "FcMnist", "LogRegMnist", "CnnCifar", "ResNet18Cifar",
]


class ModelSpec(NamedTuple):
    """A model as pure functions (see the module docstring).

    Attributes:
      name: registry name.
      init: `init(key) -> variables`.
      apply: `apply(variables, x [B,H,W,C], train: bool, mask: [B] bool | None = None) ->
        (logits [B, num_classes], batch_stats | None)`.
      has_batch_stats: the model has BatchNorm running statistics (`variables["batch_stats"]`).
      num_classes: output classes.
      input_shape: one example's shape `(H, W, C)`.
      is_conv: the model has convolutions (local-training strategies pick by it on CPU).
      module: the flax module.
      conv_impl: the resolved convolution policy ("lax", "cpu", ...; `strike_jax.models.conv`).
    """

    name: str
    init: Callable[[Array], Variables]
    apply: Callable[..., tuple[Array, Any]]
    has_batch_stats: bool
    num_classes: int
    input_shape: tuple[int, int, int]
    is_conv: bool
    module: nn.Module
    conv_impl: str = "lax"


# name -> (builder(num_classes, **kwargs) -> module, has_batch_stats, is_conv)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], bool, bool]] = {
    "femnist_cnn": (lambda c, **kw: FemnistCNN(num_classes=c, **kw), False, True),
    "leaf_cnn": (lambda c, **kw: LeafCNN(num_classes=c, **kw), False, True),
    "alexnet_cifar": (lambda c, **kw: AlexNetCifar(num_classes=c, **kw), False, True),
    "resnet18": (lambda c, **kw: ResNet18(num_classes=c, **kw), True, True),
    "small_cnn": (lambda c, **kw: SmallCNN(num_classes=c, **kw), False, True),
    "small_cnn_bn": (lambda c, **kw: SmallCNNBN(num_classes=c, **kw), True, True),
    "mlp": (lambda c, **kw: MLP(num_classes=c, **kw), False, False),
    # Names the local presets use (strike_jax.config): the same small models.
    "digits_cnn": (lambda c, **kw: SmallCNN(num_classes=c, **kw), False, True),
    "fmnist_cnn": (lambda c, **kw: SmallCNN(num_classes=c, **kw), False, True),
    "digits_mlp": (lambda c, **kw: MLP(num_classes=c, **kw), False, False),
    # ByzFL 0.0.11's benchmark models (strike_jax.models.byzfl; strike_jax.byzfl maps its names).
    "cnn_mnist": (lambda c, **kw: CnnMnist(num_classes=c, **kw), False, True),
    "fc_mnist": (lambda c, **kw: FcMnist(num_classes=c, **kw), False, False),
    "logreg_mnist": (lambda c, **kw: LogRegMnist(num_classes=c, **kw), False, False),
    "cnn_cifar": (lambda c, **kw: CnnCifar(num_classes=c, **kw), False, True),
    "resnet18_cifar": (lambda c, **kw: ResNet18Cifar(num_classes=c, **kw), True, True),
}


def names() -> tuple[str, ...]:
    """The registered model names (built-in, then the user's: `register`)."""
    from strike_jax import registry

    return tuple(_REGISTRY) + tuple(n for k, n in registry._USER if k == "model")


def get(name: str, num_classes: int, input_shape: tuple[int, ...], *, conv_impl: str = "auto",
        backend: str | None = None, **kwargs: Any) -> ModelSpec:
    """Builds a registered model.

    Args:
      name: one of `names()`.
      num_classes: number of output classes (>= 1).
      input_shape: one example's shape `(H, W, C)` (NHWC without the batch axis).
      conv_impl: how convolutions and max pooling run: "auto" (default: "cpu" on the CPU backend,
        "lax" elsewhere, resolved here from `backend`), "lax", "cpu", or a forced form for tests
        (`strike_jax.models.conv.plans_for`). Ignored by models without convolutions.
      backend: the backend "auto" resolves for; `jax.default_backend()` when None.
      **kwargs: module attributes, e.g. `hidden=(256, 128)` for `mlp`, `conv_init="torch"` for `resnet18`.

    Returns:
      A `ModelSpec` (a registered user model: the one registered, checked against `num_classes`
      and `input_shape`).
    """
    user = _user.lookup(name, num_classes, input_shape, **kwargs)
    if user is not None:
        return user
    if name not in _REGISTRY:
        raise InputError(f"Unknown model {name!r}; allowed: {', '.join(names())}.")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputError(f"num_classes={num_classes!r} must be an int >= 1.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise InputError(f"input_shape={input_shape!r} must be (H, W, C) of positive ints.")
    build, has_bs, is_conv = _REGISTRY[name]
    conv_impl = conv_lib.resolve_conv_impl(conv_impl, backend)
    module = build(num_classes, conv_impl=conv_impl, **kwargs) if is_conv else build(num_classes, **kwargs)

    def init(key: Array) -> Variables:
        variables = module.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        out = {"params": variables["params"]}
        if has_bs:
            out["batch_stats"] = variables["batch_stats"]
        return out

    def apply(variables: Variables, x: Array, train: bool, mask: Array | None = None):
        if not has_bs:
            return module.apply({"params": variables["params"]}, x, train=train, mask=mask), None
        if train:
            logits, updated = module.apply(
                {"params": variables["params"], "batch_stats": variables["batch_stats"]},
                x, train=True, mask=mask, mutable=["batch_stats"])
            return logits, updated["batch_stats"]
        logits = module.apply(
            {"params": variables["params"], "batch_stats": variables["batch_stats"]}, x, train=False)
        return logits, variables["batch_stats"]

    return ModelSpec(name=name, init=init, apply=apply, has_batch_stats=has_bs, num_classes=num_classes,
                     input_shape=input_shape, is_conv=is_conv, module=module, conv_impl=conv_impl)


class ConvLayer(NamedTuple):
    """One convolution of a model as `conv_plans` reports it.

    Attributes:
      shape: the `ConvShape` (batch included).
      plan: the `ConvPlan` of its passes, or None for JAX's own `lax.conv_general_dilated`.
      lane_plan: the forms its lax passes switch to under `jax.vmap` over per-lane parameters, or
        None (JAX's batching: a grouped convolution).
    """

    shape: conv_lib.ConvShape
    plan: conv_lib.ConvPlan | None
    lane_plan: conv_lib.ConvPlan | None


def conv_plans(model: ModelSpec, batch: int = 1, train: bool = True) -> dict[str, ConvLayer]:
    """Which form every convolution of `model` runs in, for inputs of `batch` examples.

    Shape-only (`jax.eval_shape`): no FLOPs. Keys are the module paths ("conv1",
    "layer2_0/conv1", ...), in call order.
    """
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    with conv_lib.recording() as rec:
        jax.eval_shape(lambda v, x: model.apply(v, x, train), variables, x)
    return {"/".join(path): ConvLayer(shape, plan, lanes) for path, shape, plan, lanes in rec}


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def num_params(model: ModelSpec) -> int:
    """Trainable parameters of `model` (shape-only: `jax.eval_shape`, no FLOPs)."""
    return _count(jax.eval_shape(model.init, jax.random.PRNGKey(0))["params"])


def num_batch_stats(model: ModelSpec) -> int:
    """BatchNorm running statistics of `model` (0 without BatchNorm)."""
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return _count(v.get("batch_stats", {}))
