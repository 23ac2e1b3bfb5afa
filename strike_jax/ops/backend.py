"""How the row operations run on a platform: one static, hashable value chosen once.

The fastest way to sort along the client axis, to form a Gram matrix or to walk column blocks
depends on the platform (XLA:CPU is slow at `jnp.sort` and at skinny products; accelerators are
not) and on the number of rows. Every choice is made by a `Backend` value passed explicitly as a
static argument: a stage resolves it once when it is built (`Backend()` reads
`jax.default_backend()` at construction), so nothing reads a global while it is traced, and a
test picks a strategy by passing `Backend(sort="radix")` instead of patching a module.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

#: Order-statistics strategies (see `strike_jax.ops.order`); "auto" picks by platform, rows, dtype.
SORT_METHODS = ("auto", "network", "radix", "sort")
#: Centred Gram forms (see `strike_jax.ops.distances.centred_gram`).
GRAM_MODES = ("auto", "blocks", "triangle", "plain")


# Cost model of `Backend.for_run` on a CPU, from `python -m experiments.bench_grid --forms` (the
# Median of [n, d] by network vs radix, 2-core development CPU under load; results/bench_grid_forms.json):
#   n = 10, 20:  the network compiles faster than radix (1.0-2.8 s vs 2.7-7.2 s) and runs 4-75x faster;
#   n = 50:      d = 10^4: same compile (3.7 s), network 7.6 ms vs radix 58 ms a call;
#                d = 10^5: network 9.7 s vs radix 5.2 s to compile, 62 ms vs 122 ms a call.
# So the network's extra compile appears from ~32 rows and large d, about
# NETWORK_EXTRA_COMPILE_S_PER_ROW2 * n^2 seconds, against a saving of at least
# RADIX_EXTRA_S_PER_ELEMENT * n * d seconds a round.
NETWORK_EXTRA_COMPILE_MIN_ROWS = 32
NETWORK_EXTRA_COMPILE_MIN_COLUMNS = 1 << 15
NETWORK_EXTRA_COMPILE_S_PER_ROW2 = 2e-3
RADIX_EXTRA_S_PER_ELEMENT = 1.2e-8


@dataclasses.dataclass(frozen=True)
class Backend:
    """Static choices of how `strike_jax.ops` runs (hashable: usable as a jit static argument).

    Attributes:
      platform: "cpu", "gpu", "tpu", ...; None (the default) means `jax.default_backend()`,
        read once when the value is constructed.
      sort: order statistics along the client axis: "network" (fused min/max sorting network),
        "radix" (exact bitwise selection, float32), "sort" (`jnp.sort`), or "auto": network on CPU
        for `n <= network_max_rows`, radix on CPU beyond (float32; `sort` for other dtypes),
        `sort` elsewhere. A forced "radix" falls back to "sort" for non-float32 data.
      gram: the centred Gram matrix: "blocks" (accumulated over column blocks in cache),
        "triangle" (one product per upper-triangle block of a 4 x 4 row split), "plain" (one
        product), or "auto": blocks on CPU for `n <= gram_chunk_max_rows`, triangle on CPU
        beyond, plain elsewhere.
      network_max_rows: the largest `n` sorted by a network under "auto" (100: beyond, the fused
        kernel stops fusing and compile time grows).
      gram_chunk_max_rows: the largest `n` for the blocked Gram under "auto" (128: beyond, one big
        multi-threaded product is faster; 1.7 s vs ~3 s at 1000 x 1e5). Also the row count up to
        which RFA iterates in the space of row weights.

    Raises:
      ValueError: an unknown `sort` or `gram`, or a threshold that is not a positive int.
    """

    platform: str | None = None
    sort: str = "auto"
    gram: str = "auto"
    network_max_rows: int = 100
    gram_chunk_max_rows: int = 128

    def __post_init__(self):
        if self.platform is None:
            object.__setattr__(self, "platform", jax.default_backend())
        if self.sort not in SORT_METHODS:
            raise ValueError(f"Backend sort={self.sort!r} is not allowed; "
                             f"allowed: {', '.join(map(repr, SORT_METHODS))}.")
        if self.gram not in GRAM_MODES:
            raise ValueError(f"Backend gram={self.gram!r} is not allowed; allowed: {', '.join(map(repr, GRAM_MODES))}.")
        for name in ("network_max_rows", "gram_chunk_max_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Backend {name}={v!r} is not allowed; allowed: an int >= 1.")

    @property
    def on_cpu(self) -> bool:
        return self.platform == "cpu"

    @classmethod
    def for_run(cls, *, n: int, d: int, rounds: int, platform: str | None = None) -> Backend:
        """The forms for a whole run of `rounds` server steps on `[n, d]`, chosen by its expected
        cost (compile + rounds x per-round), deterministically from the shapes and the platform.

        On a CPU the unrolled sorting network is the fastest order statistic per round; from ~32
        rows and large `d` it is also the slowest to compile (it grows with the `n^2` comparators,
        unrolled). It is kept unless its extra compile (`NETWORK_EXTRA_COMPILE_S_PER_ROW2 * n^2`)
        exceeds what it saves over the run (`rounds * RADIX_EXTRA_S_PER_ELEMENT * n * d`); then
        the radix selection. Elsewhere (and beyond `network_max_rows`) the platform's default.
        """
        b = cls(platform=platform)
        if not b.on_cpu or n > b.network_max_rows:
            return b
        if n < NETWORK_EXTRA_COMPILE_MIN_ROWS or d < NETWORK_EXTRA_COMPILE_MIN_COLUMNS:
            return b
        extra_compile = NETWORK_EXTRA_COMPILE_S_PER_ROW2 * n * n
        saving = rounds * RADIX_EXTRA_S_PER_ELEMENT * n * d
        return b if saving >= extra_compile else cls(platform=platform, sort="radix")

    def sort_method(self, n: int, dtype) -> str:
        """The order-statistics strategy for `n` rows of `dtype`: "network", "radix" or "sort"."""
        f32 = jnp.dtype(dtype) == jnp.float32
        if self.sort != "auto":
            return "sort" if self.sort == "radix" and not f32 else self.sort
        if not self.on_cpu:
            return "sort"
        if n <= self.network_max_rows:
            return "network"
        return "radix" if f32 else "sort"

    def gram_mode(self, n: int) -> str:
        """The centred Gram form for `n` rows: "blocks", "triangle" or "plain"."""
        if self.gram != "auto":
            return self.gram
        if not self.on_cpu:
            return "plain"
        return "blocks" if n <= self.gram_chunk_max_rows else "triangle"

    def few_rows(self, n: int) -> bool:
        """True where an `[n, n]` (or `[n, n, n]`) computation beats extra passes over `[n, d]`
        (CPU, `n <= gram_chunk_max_rows`)."""
        return self.on_cpu and n <= self.gram_chunk_max_rows

    def gram_column_chunk(self, n: int, m: int, d: int) -> int:
        """Columns per block for a `scan_columns` pass that accumulates an `[m, m]` Gram matrix of
        `[n, d]` rows: `column_chunk(n, d)`, raised on CPU to a power of two `>= m / 4`, so that the
        accumulator, read and written once a block, does not outweigh the blocks themselves. Measured
        (STRIKE at 10,000 x 20,000, f = 2,000, quiet 2-core CPU): 128 columns, a 268 MB accumulator
        rewritten 156 times, 62.6 s; 2,048 columns 27.5 s (same vector). At most `d`."""
        c = self.column_chunk(n, d)
        if self.on_cpu and m > 4 * c:
            c = 1 << max(m // 4 - 1, 1).bit_length()
        return int(max(1, min(c, d)))

    def column_chunk(self, n: int, d: int) -> int:
        """Columns per block for `scan_columns`: on CPU a power of two near `2^19 / n` (~2 MB
        float32 blocks, in L2/L3), clipped to [128, 16384]; elsewhere `2^20`. At most `d`."""
        if self.on_cpu:
            target = max((1 << 19) // max(n, 1), 1)
            c = max(128, min(16384, 1 << (target.bit_length() - 1)))
        else:
            c = 1 << 20
        return int(max(1, min(c, d)))


def resolve(backend: Backend | None) -> Backend:
    """`backend`, or the platform's default `Backend()` for None."""
    return Backend() if backend is None else backend


__all__ = ["Backend", "GRAM_MODES", "SORT_METHODS", "resolve"]
