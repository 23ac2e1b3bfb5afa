"""A user's own flax module as a `ModelSpec` (`from_flax`) and registering it by name (`register`).

```python
m = models.from_flax(MyNet(), input_shape=(28, 28, 1), num_classes=10, name="my_model")
models.register(m)             # now models.get("my_model", 10, (28, 28, 1)) and Config(model="my_model")
```
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["from_flax", "lookup", "register"]

_COLLECTIONS = ("params", "batch_stats")


def _keywords(module: nn.Module) -> tuple[bool, bool]:
    """Whether `module.__call__` takes `train=` and `mask=`."""
    try:
        params = inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False, False
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return var_kw or "train" in params, var_kw or "mask" in params


def from_flax(module: nn.Module, *, input_shape: tuple[int, ...], num_classes: int, name: str,
              is_conv: bool | None = None) -> Any:
    """A `ModelSpec` (what `models.get` returns) around a user's flax linen module.

    The module is called as `module(x, train=..., mask=...)` when its `__call__` takes those
    keywords (BatchNorm: normalise over the examples where `mask` is True in training), else as
    `module(x)`; `x` is `[B, H, W, C]` float32 and it must return `[B, num_classes]` logits. Its
    variables may hold `params` and `batch_stats` (BatchNorm; then it must take `train=`); it must
    need no RNG stream when applied (no dropout: `ModelSpec.apply` takes no key).

    Args:
      module: the flax module (unbound).
      input_shape: one example's shape `(H, W, C)`.
      num_classes: the number of classes (the logits' last axis).
      name: the name to register it under (`register`).
      is_conv: whether it has convolutions (local-training strategies pick by it on CPU; None:
        True when a parameter has 4 axes, as a convolution kernel does).

    Returns:
      `strike_jax.models.ModelSpec`.

    Raises:
      ValueError: a bad argument, or a module that cannot be initialised and applied as described
        (one line naming what failed).

    Examples:
      >>> import flax.linen as nn, jax
      >>> from strike_jax import models
      >>> class Linear(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(3)(x.reshape(x.shape[0], -1))
      >>> m = models.from_flax(Linear(), input_shape=(4, 4, 1), num_classes=3, name="doc_linear")
      >>> logits, batch_stats = m.apply(m.init(jax.random.PRNGKey(0)), jax.numpy.zeros((5, 4, 4, 1)), True)
      >>> logits.shape, batch_stats, models.num_params(m)
      ((5, 3), None, 51)
    """
    from strike_jax.models import ModelSpec

    if not isinstance(module, nn.Module):
        raise ValueError(f"from_flax: module={type(module).__name__} is not allowed; allowed: a flax.linen.Module.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"from_flax: name={name!r} is not allowed; allowed: a non-empty string.")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"from_flax: num_classes={num_classes!r} is not allowed; allowed: an int >= 1.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise ValueError(f"from_flax: input_shape={input_shape!r} is not allowed; allowed: (H, W, C) of positive ints.")
    takes_train, takes_mask = _keywords(module)

    def call_kwargs(train: bool, mask: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {"train": train} if takes_train else {}
        if takes_mask and mask is not None:
            kw["mask"] = mask
        return kw

    def raw_init(key):
        return module.init(key, jnp.zeros((1, *input_shape), jnp.float32), **call_kwargs(False, None))

    try:
        shapes = jax.eval_shape(raw_init, jax.random.PRNGKey(0))
    except Exception as e:  # noqa: BLE001 (any failure of user code, reported in one line)
        raise ValueError(f"from_flax: {name}: module.init failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    extra = sorted(set(shapes) - set(_COLLECTIONS))
    if extra:
        raise ValueError(f"from_flax: {name}: variable collections {extra} are not allowed; allowed: {_COLLECTIONS}.")
    has_bs = "batch_stats" in shapes
    if has_bs and not takes_train:
        raise ValueError(f"from_flax: {name}: a module with batch_stats must take train= (to switch BatchNorm).")
    if is_conv is None:
        is_conv = any(leaf.ndim == 4 for leaf in jax.tree_util.tree_leaves(shapes["params"]))

    def init(key):
        variables = raw_init(key)
        out = {"params": variables["params"]}
        if has_bs:
            out["batch_stats"] = variables["batch_stats"]
        return out

    def apply(variables, x, train, mask=None):
        kw = call_kwargs(train, mask)
        if not has_bs:
            return module.apply({"params": variables["params"]}, x, **kw), None
        full = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        if train:
            logits, updated = module.apply(full, x, mutable=["batch_stats"], **kw)
            return logits, updated["batch_stats"]
        return module.apply(full, x, **kw), variables["batch_stats"]

    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = {k: shapes[k] for k in _COLLECTIONS if k in shapes}
    for train in (True, False):
        try:
            logits, _ = jax.eval_shape(functools.partial(apply, train=train), variables, x)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"from_flax: {name}: module.apply(train={train}) failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
        if logits.shape != (2, num_classes):
            raise ValueError(f"from_flax: {name}: the module returns shape {logits.shape} for a batch of 2; "
                             f"allowed: logits [2, num_classes={num_classes}].")
    return ModelSpec(name=name, init=init, apply=apply, has_batch_stats=has_bs, num_classes=num_classes,
                     input_shape=input_shape, is_conv=bool(is_conv), module=module, conv_impl="lax")


def register(model: Any) -> Any:
    """Registers a user's model under `model.name`: `models.get(model.name, ...)`,
    `models.names()` and `simulate(Config(model=model.name, ...))` then find it. Re-registering the
    same model (equal `registry.fingerprint`) is a no-op.

    Returns:
      `model`.

    Raises:
      ValueError: not a `ModelSpec`, a built-in name, or the name taken by a different model.
    """
    from strike_jax import models, registry

    if not isinstance(model, models.ModelSpec):
        raise ValueError(f"models.register: {type(model).__name__} is not allowed; allowed: a ModelSpec "
                         "(models.from_flax or models.get).")
    builtin = model.name in models._REGISTRY
    registry.claim("model", model.name, model, builtin=builtin)
    return model


def lookup(name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> Any | None:
    """The registered user model `name` (None if there is none), checked against the shape asked.

    Raises:
      ValueError: `num_classes`, `input_shape` or module arguments that differ from the model's.
    """
    from strike_jax import registry

    model = registry.registered("model", name)
    if model is None:
        return None
    if kwargs:
        raise ValueError(f"model {name!r} is a user model: module arguments {sorted(kwargs)} are not allowed; "
                         "allowed: none (build the module with them before models.from_flax).")
    if num_classes != model.num_classes or tuple(input_shape) != model.input_shape:
        raise ValueError(f"model {name!r} was registered for num_classes={model.num_classes}, input_shape="
                         f"{model.input_shape}; got num_classes={num_classes}, input_shape={tuple(input_shape)}.")
    return model
