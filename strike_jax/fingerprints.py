"""Content fingerprints of user objects (data sets, models, stages, functions).

`fingerprint(obj)` digests what an object computes with (arrays' bytes, code objects without their
positions, a module's attributes and parameter shapes), the same in every process, so a result can
record which user objects it ran and a run directory can refuse another object under the same name
(`registry.claim`, `simulation.store.check_fingerprints`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import re
import sys
import types
from typing import Any, Mapping

import jax
import numpy as np


def _is_library(module: str | None) -> bool:
    """Whether code of `module` is a library's (identified by its name; the installed version
    pins its code) rather than the user's (hashed by content)."""
    if not module:
        return False
    top = module.split(".")[0]
    if top in ("strike_jax", "jax", "jaxlib", "flax", "optax", "chex", "numpy", "scipy", "builtins"):
        return True
    if top in sys.stdlib_module_names:
        return True
    path = getattr(sys.modules.get(top), "__file__", None) or ""
    return "site-packages" in path or "dist-packages" in path


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class _Hasher:
    """Feeds a value into sha256 by content, so that equal data and the same code give the same
    digest in any process (no `id`, memory address or `hash()` enters it)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.active: set[int] = set()

    def put(self, *parts: Any) -> None:
        self.h.update(("\x1f".join(map(str, parts)) + "\x1e").encode())

    def code(self, code: types.CodeType) -> None:
        # Positions (file, line numbers) are left out: moving code does not change it.
        self.put("code", code.co_name, code.co_argcount, code.co_kwonlyargcount, code.co_flags,
                 code.co_names, code.co_varnames, code.co_freevars)
        self.h.update(code.co_code)
        for c in code.co_consts:
            self.feed(c)

    def function(self, fn: types.FunctionType) -> None:
        self.put("function", fn.__qualname__)
        self.code(fn.__code__)
        self.feed(fn.__defaults__)
        self.feed(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                self.feed(cell.cell_contents)
            except ValueError:  # an empty cell (a name bound later)
                self.put("empty cell")
        # The globals the code reads (helpers, constants): a changed helper changes the digest.
        names: list[str] = []
        stack = [fn.__code__]
        while stack:
            c = stack.pop()
            names.extend(c.co_names)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        for name in sorted(set(names)):
            if name in fn.__globals__:
                self.put("global", name)
                self.feed(fn.__globals__[name])

    def klass(self, cls: type) -> None:
        if _is_library(cls.__module__):
            self.put("library class", cls.__module__, cls.__qualname__)
            return
        self.put("class", cls.__qualname__)  # by content: not the file it is in
        for base in cls.__mro__:
            if _is_library(base.__module__):
                continue
            for attr, value in sorted(vars(base).items()):
                value = getattr(value, "__func__", value)  # staticmethod / classmethod
                value = inspect.unwrap(value) if callable(value) else value
                if isinstance(value, types.FunctionType) and value.__code__.co_filename != "<string>":
                    self.put("method", attr)
                    self.function(value)

    def feed(self, obj: Any) -> None:
        if obj is None or isinstance(obj, (bool, int, float, complex, str)):
            self.put(type(obj).__name__, repr(obj))
            return
        if isinstance(obj, bytes):
            self.put("bytes", len(obj))
            self.h.update(obj)
            return
        if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
            if isinstance(obj, jax.core.Tracer):
                raise TypeError("fingerprint: a traced value has no content to hash.")
            if isinstance(obj, jax.Array) and jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
                obj = jax.random.key_data(obj)
            a = np.ascontiguousarray(np.asarray(obj))
            self.put("array", a.dtype.str, a.shape)
            self.h.update(a.tobytes())
            return
        if isinstance(obj, types.ModuleType):
            self.put("module", obj.__name__)
            return
        if id(obj) in self.active:  # a cycle (a recursive function, a self-reference)
            self.put("cycle")
            return
        self.active.add(id(obj))
        try:
            self._compound(obj)
        finally:
            self.active.discard(id(obj))

    def _compound(self, obj: Any) -> None:
        from strike_jax import stages  # noqa: PLC0415 (stages imports this module)

        special = getattr(obj, "__strike_fingerprint__", None)
        if isinstance(obj, stages.Stage):
            fp = obj.info.get("fingerprint")
            if fp is not None:
                self.put("stage", obj.kind, fp)
            elif obj.parts:
                self.put("chain", len(obj.parts))
                for part in obj.parts:
                    self.feed(part)
            else:
                self.put("stage", obj.kind, obj.name)
                self.feed(dict(obj.hparams))
                from strike_jax import registry  # (registry imports this module)

                if (obj.kind, obj.name) not in registry._ENTRIES:  # built by hand: its code is its identity
                    self.feed(obj.init)
                    self.feed(obj.update)
            return
        data = sys.modules.get("strike_jax.data")
        if data is not None and isinstance(obj, data.Dataset):
            self.put("dataset")
            self.feed({k: v for k, v in obj._asdict().items() if k != "name"})
            return
        models = sys.modules.get("strike_jax.models")
        if models is not None and isinstance(obj, models.ModelSpec):
            shapes = jax.eval_shape(obj.init, jax.random.PRNGKey(0))
            self.put("model", obj.num_classes, obj.input_shape, obj.has_batch_stats, obj.is_conv, obj.conv_impl)
            self.put("variables", *[(jax.tree_util.keystr(path), leaf.shape, leaf.dtype.str)
                                    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)])
            self.feed(obj.module)
            return
        if callable(special):
            self.put("custom", type(obj).__qualname__)
            self.feed(special())
            return
        if isinstance(obj, type):
            self.klass(obj)
            return
        if isinstance(obj, types.CodeType):
            self.code(obj)
            return
        if isinstance(obj, functools.partial):
            self.put("partial")
            self.feed(obj.func)
            self.feed(obj.args)
            self.feed(obj.keywords)
            return
        if isinstance(obj, types.MethodType):
            self.put("method")
            self.feed(obj.__func__)
            self.feed(obj.__self__)
            return
        if isinstance(obj, types.FunctionType):
            if _is_library(obj.__module__):
                self.put("library function", obj.__module__, obj.__qualname__)
            else:
                self.function(obj)
            return
        if isinstance(obj, (list, tuple)):
            self.put(type(obj).__qualname__, len(obj))
            if hasattr(obj, "_fields"):
                self.put("fields", *obj._fields)
            for x in obj:
                self.feed(x)
            return
        if isinstance(obj, Mapping):
            items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
            self.put("mapping", len(items))
            for k, v in items:
                self.feed(k)
                self.feed(v)
            return
        if isinstance(obj, (set, frozenset)):
            self.put("set", *sorted(fingerprint(x) for x in obj))
            return
        if dataclasses.is_dataclass(obj):  # flax modules, configs
            self.klass(type(obj))
            for field in dataclasses.fields(obj):
                if field.name not in ("parent", "name"):
                    self.put("field", field.name)
                    self.feed(getattr(obj, field.name, None))
            return
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        wrapped = getattr(obj, "__wrapped__", None)
        if qualname and _is_library(module):  # jit-wrapped library functions, ufuncs, custom_jvp
            self.put("library object", module, qualname)
        elif wrapped is not None:  # a user function under jax.jit / functools.wraps
            self.put("wrapped", type(obj).__qualname__)
            self.feed(wrapped)
        elif not _is_library(type(obj).__module__) and hasattr(obj, "__dict__"):
            self.klass(type(obj))
            self.feed(dict(vars(obj)))
        else:
            self.put("object", type(obj).__module__, type(obj).__qualname__, _ADDRESS.sub("", repr(obj)))


def fingerprint(obj: Any) -> str:
    """A content digest of a user object (16 hex digits of a sha256), the same in every process
    for the same data and code, so a result can record what it ran.

    * a `Dataset` (and any array): its arrays' bytes, dtypes and shapes, classes and
      preprocessing (not its name);
    * a `ModelSpec`: the flax module's class (its methods' code) and attributes, the parameters'
      structure (paths, shapes, dtypes) and the input shape and classes;
    * a `Stage`: a registered builder's stage by kind, name and hyper-parameters; a stage from
      `stages.from_function` by its function's code, defaults, closure and the globals it reads;
    * a function: the same (code objects without their positions: moving code does not change it;
      a library's functions by name).

    Raises:
      TypeError: a traced value.

    Examples:
      >>> import numpy as np
      >>> fingerprint(np.arange(3)) == fingerprint(np.array([0, 1, 2]))
      True
      >>> fingerprint(np.arange(3)) == fingerprint(np.arange(3.0))   # the dtype is content too
      False
    """
    hasher = _Hasher()
    hasher.feed(obj)
    return hasher.h.hexdigest()[:16]


__all__ = ["fingerprint"]
