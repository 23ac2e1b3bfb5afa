"""2-D convolution in several equivalent forms, chosen per layer shape, pass and backend.

A convolution has three passes: the forward pass `y = conv(x, k)`, the input gradient `dL/dx` and
the kernel gradient `dL/dk`. Each can run in one of these forms (all exact up to float32 summation
order; tests/test_conv.py checks every form of every pass against `lax.conv_general_dilated`):

- "lax": XLA's convolution (and, for the gradients, the convolutions JAX differentiates it into).
- "patches": image patches by strided slicing (`extract_patches`) times the kernel as a matrix.
- "dense": the kernel unfolded into the `[H*W*Cin, Ho*Wo*Cout]` matrix of the convolution
  (`unfold_kernel`), one matrix product; the kernel gradient folds `x^T dy` back (`fold_kernel`).
- "region": one matrix product per output position over the inputs it really reads (no padding):
  `y[:, o] = x[:, window(o)].flat @ k[taps(o)].flat`; its transposes for the gradients.
- "taps" (kernel gradient only): one product per kernel tap over the real inputs it meets.

`ConvPlan(forward, input_grad, kernel_grad)` names a form per pass; `conv2d` runs a plan as a
`jax.custom_vjp`. The policy `conv_impl` picks the plans (`plans_for`), once, from static shapes,
when a model is built (`strike_jax.models.get(..., conv_impl="auto")` resolves "auto" from the
backend; nothing reads the backend inside traced code):

- "lax" (GPU/TPU; cuDNN picks its own algorithms): plain `lax.conv_general_dilated`.
- "cpu": `cpu_plan`: "region" for all three passes when the input has no more pixels than the
  kernel has taps (`tiny_input`: AlexNet-CIFAR's conv2-5), "patches" for all three when the input
  has one channel and the output is large enough (`wide_single_channel`: the first layer of the small
  and LEAF CNNs), XLA's convolution otherwise; with max
  pooling as strided slices (`strike_jax.models.pool`). Under `jax.vmap` over per-lane parameters
  (vectorised clients) a lax pass switches to `lane_plan` through `jax.custom_batching.custom_vmap`:
  one plain convolution per lane ("unroll") instead of the grouped convolution JAX would emit.

Measurements behind the choice (2-core x86-64 CPU shared with other jobs, jax 0.10.2, float32;
times are medians of interleaved calls; where the machine was loaded, the process CPU time per
call is the comparison; `experiments/bench_steps.py --sections layers` prints the per-layer,
per-pass table of every form):

- XLA:CPU's convolution is pathological at tiny inputs with big kernels. AlexNet-CIFAR conv2
  (batch 128, 4x4x64 -> 192, 5x5, padding 2): forward 142 ms, input gradient 150 ms, kernel
  gradient 4.6 ms on a quiet machine; conv3 (2x2x192 -> 384, 3x3): forward 84 ms, input gradient
  77 ms, kernel gradient 2.6 ms. The same passes as "region": 5-7 ms (conv2) and 2-3 ms (conv3);
  as "dense": 9-11 ms / 2.6 ms; as "patches": 10-15 ms / 3-10 ms. The whole AlexNet-CIFAR step
  (CPU time per step, same run): "region" everywhere at tiny inputs 80 ms, "dense" 91 ms, region
  with "taps" or "lax" kernel gradients 94-101 ms, "patches" 160 ms, plain lax ~1500 ms.
- `lax.conv_general_dilated_patches` is no way out: up to 627 ms for AlexNet conv1's input
  gradient, 200-400 ms for FEMNIST/LEAF conv2's; the strided slices of `extract_patches` build the
  same patches in 1-8 ms.
- XLA:CPU runs its convolution on one thread at these shapes (process CPU time = wall time), the
  matrix products of "patches" on both cores. With one input channel "patches" also does less
  work: LEAF conv1 (batch 32, 28x28x1 -> 32, 5x5) forward + both gradients 10.7 ms wall /
  11.4 ms CPU as lax, 3.3 / 6.2 ms as patches; small CNN conv1 (batch 64 -> 16) 10.0 / 16.8 vs
  4.4 / 7.9 ms; vmapped over 8 lanes 105 vs 64 ms (LEAF) and 155 vs 110 ms (small CNN) wall, the
  lanes' "unroll" against patches (quiet machine, 2 threads, 2026-12-07). With 16-64 input
  channels lax stays ahead in wall time even on one thread (LEAF conv2, 14x14x32 -> 64: 39-44 ms
  lax, 47 ms patches, 59-63 ms mixed plans; small CNN conv2 23 vs 40 ms); splitting the batch
  into independent lax convolutions, which XLA may run concurrently, gave erratic times (27-45 ms).
- At the small CNNs' shapes (28x28 and 14x14, 16-64 channels) XLA's convolution is as fast as any
  other form or faster (small CNN step CPU time: lax 15.1 ms, patches variants 15.4-19.6 ms), and
  so is it for AlexNet conv1 (11x11, stride 4: forward 3.5 ms, kernel gradient 5.9 ms; patches
  8.6 / 11.4 ms, space-to-depth rewrites 6.0 / 10.9 ms).
- The unfolded kernel of "dense" is built by a concatenation that XLA:CPU runs at ~0.5 GB/s inside
  a training step (8.6 ms for conv3's 4.7 MB matrix), which is why "region" wins there; JAX's own
  transpose of `unfold_kernel` materialised every padded block (~45 ms for conv2's gradient), hence
  the explicit `fold_kernel`.
- Max pooling's gradient through `reduce_window` (`select_and_scatter`) costs 12 ms on AlexNet's
  [128, 8, 8, 64] and 25 ms on the small CNN's [64, 28, 28, 16]; as slices 0.4-0.6 ms.
- Vmapped over 8 lanes (CPU time per call; the lanes one after another = 1.0): small CNN (batch
  64) "unroll" 1.7, "patches" 2.3, JAX's grouped convolution 1.9 (lax policy); AlexNet-CIFAR
  (batch 128) "unroll" 1.2, "patches" 1.5. XLA:CPU's grouped convolution at tiny inputs is, oddly,
  faster than its plain one (AlexNet "lax" policy: vmapped 2.0 s vs 15 s one after another) but
  slower than the "cpu" policy either way. `lax.map` over lanes (kernels sliced inside a loop)
  ran 16x slower than the lanes one after another.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Forms of a pass; "taps" only computes kernel gradients.
FORMS = ("lax", "patches", "dense", "region", "taps")
_PASS_FORMS = {
    "forward": ("lax", "patches", "dense", "region"),
    "input_grad": ("lax", "patches", "dense", "region"),
    "kernel_grad": ("lax", "patches", "dense", "region", "taps"),
}
CONV_IMPLS = ("auto", "lax", "cpu")  # policies; a form name or "forward/input_grad/kernel_grad" also works


class ConvShape(NamedTuple):
    """Static description of one convolution: input `[batch, height, width, in_channels]`, kernel
    `[*kernel, in_channels, out_channels]` (HWIO), `strides`, symmetric zero `padding`."""

    batch: int
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.strides, self.padding
        return (self.height + 2 * ph - kh) // sh + 1, (self.width + 2 * pw - kw) // sw + 1

    def flops(self, form: str) -> int:
        """2 x multiply-adds of one pass in `form`: "lax" and "patches" count every kernel tap at every
        output position (padding included), "dense" every input pixel against every output position,
        "region" and "taps" only the products of real (non-padding) inputs."""
        ho, wo = self.out_hw
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.strides, self.padding
        per = 2 * self.batch * self.in_channels * self.out_channels
        if form == "dense":
            return per * self.height * self.width * ho * wo
        if form in ("taps", "region"):
            ny = sum(o1 - o0 for o0, o1, _ in _tap_ranges(self.height, ho, kh, sh, ph))
            nx = sum(o1 - o0 for o0, o1, _ in _tap_ranges(self.width, wo, kw, sw, pw))
            return per * ny * nx
        return per * ho * wo * kh * kw


class ConvPlan(NamedTuple):
    """The form of each pass of one convolution.

    Attributes:
      forward: computes `y` from `x` and the kernel: "lax", "patches", "dense" or "region".
      input_grad: `dL/dx` from `dL/dy`: "lax", "patches", "dense" or "region".
      kernel_grad: `dL/dkernel` from `x` and `dL/dy`: "lax", "patches", "dense", "region" or "taps".
      (In a lane plan, "unroll" also: one lax convolution per lane; see `conv2d`.)
    """

    forward: str
    input_grad: str
    kernel_grad: str


LAX_PLAN = ConvPlan("lax", "lax", "lax")


# ------------------------------------------------------------------------------------------------
# Building blocks.


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _tap_ranges(n_in: int, n_out: int, k: int, s: int, p: int) -> list[tuple[int, int, int]]:
    """Per kernel tap `t < k` along one axis: `(o0, o1, i0)`, the outputs `o0 <= o < o1` whose input
    `o * s + t - p` lies in `[0, n_in)` (a contiguous range), and the first such input `i0`."""
    out = []
    for t in range(k):
        valid = [o for o in range(n_out) if 0 <= o * s + t - p < n_in]
        out.append((valid[0], valid[-1] + 1, valid[0] * s + t - p) if valid else (0, 0, 0))
    return out


def _out_ranges(n_in: int, n_out: int, k: int, s: int, p: int) -> list[tuple[int, int, int]]:
    """Per output position `o < n_out` along one axis: `(t0, t1, i0)`, the kernel taps `t0 <= t < t1`
    that meet real inputs (`0 <= o * s + t - p < n_in`, a contiguous range), and the first input `i0`."""
    out = []
    for o in range(n_out):
        taps = [t for t in range(k) if 0 <= o * s + t - p < n_in]
        out.append((taps[0], taps[-1] + 1, o * s + taps[0] - p) if taps else (0, 0, 0))
    return out


def _regions(x_shape, k_shape, strides, padding):
    """Per output position `(oy, ox)`: the input window it reads and the kernel taps that meet it,
    `((oy, ox), (iy0, ny), (ix0, nx), (ky0, kx0))`, padding excluded (positions with no real input
    are left out: their output is 0)."""
    _, h, w, _ = x_shape
    kh, kw = k_shape[:2]
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    out = []
    for oy, (ty0, ty1, iy0) in enumerate(_out_ranges(h, ho, kh, sh, ph)):
        for ox, (tx0, tx1, ix0) in enumerate(_out_ranges(w, wo, kw, sw, pw)):
            if ty1 > ty0 and tx1 > tx0:
                out.append(((oy, ox), (iy0, ty1 - ty0), (ix0, tx1 - tx0), (ty0, tx0)))
    return out


def _conv_region(x: Array, k: Array, strides, padding) -> Array:
    """One matrix product per output position: `y[:, o] = x[:, window(o)].flat @ k[taps(o)].flat`,
    only real inputs (no padding, no unfolded kernel). For tiny inputs with big kernels."""
    b, h, w, cin = x.shape
    kh, kw, _, cout = k.shape
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    ys = {}
    for o, (iy0, ny), (ix0, nx), (ky0, kx0) in _regions(x.shape, k.shape, strides, padding):
        # stride s: the window's inputs step by 1 as the taps do (one output position at a time)
        xr = lax.slice(x, (0, iy0, ix0, 0), (b, iy0 + ny, ix0 + nx, cin)).reshape(b, ny * nx * cin)
        kr = lax.slice(k, (ky0, kx0, 0, 0), (ky0 + ny, kx0 + nx, cin, cout)).reshape(ny * nx * cin, cout)
        ys[o] = jnp.dot(xr, kr)
    zero = jnp.zeros((b, cout), jnp.result_type(x, k))
    cols = [ys.get((oy, ox), zero) for oy in range(ho) for ox in range(wo)]
    return jnp.stack(cols, axis=1).reshape(b, ho, wo, cout)


def _input_grad_region(dy: Array, k: Array, x_shape, strides, padding) -> Array:
    """The transpose of `_conv_region` in x: `dx[:, window(o)] += dy[:, o] @ k[taps(o)].flat^T`."""
    b, h, w, cin = x_shape
    cout = k.shape[3]
    dx = jnp.zeros(x_shape, dy.dtype)
    for (oy, ox), (iy0, ny), (ix0, nx), (ky0, kx0) in _regions(x_shape, k.shape, strides, padding):
        kr = lax.slice(k, (ky0, kx0, 0, 0), (ky0 + ny, kx0 + nx, cin, cout)).reshape(ny * nx * cin, cout)
        g = lax.dot_general(dy[:, oy, ox, :], kr, (((1,), (1,)), ((), ()))).reshape(b, ny, nx, cin)
        dx = dx + jnp.pad(g, ((0, 0), (iy0, h - iy0 - ny), (ix0, w - ix0 - nx), (0, 0)))
    return dx


def _kernel_grad_region(x: Array, dy: Array, k_shape, strides, padding) -> Array:
    """The transpose of `_conv_region` in the kernel: `dk[taps(o)] += x[:, window(o)].flat^T @ dy[:, o]`."""
    kh, kw, cin, cout = k_shape
    b = x.shape[0]
    dk = jnp.zeros(k_shape, dy.dtype)
    for (oy, ox), (iy0, ny), (ix0, nx), (ky0, kx0) in _regions(x.shape, k_shape, strides, padding):
        xr = lax.slice(x, (0, iy0, ix0, 0), (b, iy0 + ny, ix0 + nx, cin)).reshape(b, ny * nx * cin)
        g = lax.dot_general(xr, dy[:, oy, ox, :], (((0,), (0,)), ((), ()))).reshape(ny, nx, cin, cout)
        dk = dk + jnp.pad(g, ((ky0, kh - ky0 - ny), (kx0, kw - kx0 - nx), (0, 0), (0, 0)))
    return dk


def extract_patches(x: Array, kernel: Sequence[int], strides: Sequence[int], padding: Sequence[int]) -> Array:
    """Image patches by strided slicing: `[B, H, W, C] -> [B, Ho, Wo, kh * kw * C]`.

    The feature order is `(ky, kx, c)`, that of an HWIO kernel reshaped to `[kh * kw * C, Cout]`.
    Built from `kh * kw` strided slices of the zero-padded input: no convolution op (XLA:CPU ran
    `lax.conv_general_dilated_patches` 2-40x slower than these slices).
    """
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, strides, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x
    cols = [lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def unfold_kernel(k: Array, in_hw: Sequence[int], strides: Sequence[int], padding: Sequence[int]) -> Array:
    """The convolution as a matrix: `T [H * W * Cin, Ho * Wo * Cout]` with `y.flat = x.flat @ T`.

    `T[(iy, ix, ci), (oy, ox, co)] = k[iy - oy * sh + ph, ix - ox * sw + pw, ci, co]` where that tap
    exists, else 0. Built as `Ho * Wo` slices of the zero-padded kernel (one `[H, W, Cin, Cout]`
    block per output position) stacked together.
    """
    kh, kw, cin, cout = k.shape
    h, w = in_hw
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    # Row iy of block oy is tap iy - oy*sh + ph: pad the kernel so that every block is one slice.
    ly, hy = max(0, (ho - 1) * sh - ph), max(0, h - 1 + ph - (kh - 1))
    lx, hx = max(0, (wo - 1) * sw - pw), max(0, w - 1 + pw - (kw - 1))
    kp = jnp.pad(k, ((ly, hy), (lx, hx), (0, 0), (0, 0)))
    blocks = [lax.slice(kp, (ly + ph - oy * sh, lx + pw - ox * sw, 0, 0),
                        (ly + ph - oy * sh + h, lx + pw - ox * sw + w, cin, cout))
              for oy in range(ho) for ox in range(wo)]
    return jnp.stack(blocks, axis=3).reshape(h * w * cin, ho * wo * cout)


def fold_kernel(t: Array, k_shape: Sequence[int], in_hw: Sequence[int], strides: Sequence[int],
                padding: Sequence[int]) -> Array:
    """The transpose of `unfold_kernel`: `[H * W * Cin, Ho * Wo * Cout] -> [kh, kw, Cin, Cout]`, each
    tap the sum of the `[Cin, Cout]` blocks of `t` where it sits.

    Written block by block: JAX's own transpose of `unfold_kernel` (a sum of `Ho * Wo` padded
    kernel-sized arrays) ran 2.4x slower alone and far slower inside a training step, where XLA:CPU
    materialised every padded array.
    """
    kh, kw, cin, cout = k_shape
    h, w = in_hw
    (sh, sw), (ph, pw) = strides, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    t6 = t.reshape(h, w, cin, ho, wo, cout)
    ry, rx = _tap_ranges(h, ho, kh, sh, ph), _tap_ranges(w, wo, kw, sw, pw)
    taps = []
    for ky, (oy0, oy1, _) in enumerate(ry):
        for kx, (ox0, ox1, _) in enumerate(rx):
            acc = jnp.zeros((cin, cout), t.dtype)
            for oy in range(oy0, oy1):
                for ox in range(ox0, ox1):
                    acc = acc + t6[oy * sh + ky - ph, ox * sw + kx - pw, :, oy, ox, :]
            taps.append(acc)
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


def _conv_lax(x: Array, k: Array, strides, padding) -> Array:
    (ph, pw) = padding
    return lax.conv_general_dilated(x, k, window_strides=tuple(strides), padding=((ph, ph), (pw, pw)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_patches(x: Array, k: Array, strides, padding) -> Array:
    kh, kw, cin, cout = k.shape
    p = extract_patches(x, (kh, kw), strides, padding)
    b, ho, wo, f = p.shape
    # A 2-D product: XLA:CPU ran the same contraction on the 4-D patches up to 3x slower.
    return jnp.dot(p.reshape(b * ho * wo, f), k.reshape(f, cout)).reshape(b, ho, wo, cout)


def _conv_dense(x: Array, k: Array, strides, padding) -> Array:
    return _dense_apply(x, unfold_kernel(k, x.shape[1:3], strides, padding), k.shape, strides, padding)


def _dense_apply(x: Array, t: Array, k_shape, strides, padding) -> Array:
    b, h, w, _ = x.shape
    ho, wo = _out(h, k_shape[0], strides[0], padding[0]), _out(w, k_shape[1], strides[1], padding[1])
    return jnp.dot(x.reshape(b, -1), t).reshape(b, ho, wo, k_shape[3])


_CONV = {"lax": _conv_lax, "patches": _conv_patches, "dense": _conv_dense, "region": _conv_region}


def _input_grad(form: str, dy: Array, k: Array, x_shape, strides, padding, t: Array | None = None) -> Array:
    """`dL/dx` in `form`; `t` the unfolded kernel when the forward pass built it ("dense")."""
    if form == "region":
        return _input_grad_region(dy, k, x_shape, strides, padding)
    if form == "dense":
        t = unfold_kernel(k, x_shape[1:3], strides, padding) if t is None else t
        b = dy.shape[0]
        return lax.dot_general(dy.reshape(b, -1), t, (((1,), (1,)), ((), ()))).reshape(x_shape)
    aval = jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype)
    return jax.linear_transpose(lambda v: _CONV[form](v, k, strides, padding), aval)(dy)[0]


def _kernel_grad(form: str, x: Array, dy: Array, k_shape, strides, padding) -> Array:
    """`dL/dkernel` in `form`."""
    kh, kw, cin, cout = k_shape
    b, h, w, _ = x.shape
    if form == "dense":
        dt = lax.dot_general(x.reshape(b, -1), dy.reshape(b, -1), (((0,), (0,)), ((), ())))
        return fold_kernel(dt, k_shape, (h, w), strides, padding)
    if form == "patches":
        p = extract_patches(x, (kh, kw), strides, padding)
        n = p.shape[0] * p.shape[1] * p.shape[2]
        dk = lax.dot_general(p.reshape(n, -1), dy.reshape(n, cout), (((0,), (0,)), ((), ())))
        return dk.reshape(k_shape)
    if form == "taps":
        return _kernel_grad_taps(x, dy, k_shape, strides, padding)
    if form == "region":
        return _kernel_grad_region(x, dy, k_shape, strides, padding)
    aval = jax.ShapeDtypeStruct(tuple(k_shape), dy.dtype)
    return jax.linear_transpose(lambda v: _CONV[form](x, v, strides, padding), aval)(dy)[0]


def _kernel_grad_taps(x: Array, dy: Array, k_shape, strides, padding) -> Array:
    """`dL/dkernel[ky, kx] = X_t^T @ dY_t` per tap `t = (ky, kx)`: `X_t` the inputs that tap meets
    (real pixels only, no padding) and `dY_t` the matching output gradients."""
    kh, kw, cin, cout = k_shape
    b, h, w, _ = x.shape
    _, ho, wo, _ = dy.shape
    (sh, sw), (ph, pw) = strides, padding
    taps = []
    for oy0, oy1, iy0 in _tap_ranges(h, ho, kh, sh, ph):
        for ox0, ox1, ix0 in _tap_ranges(w, wo, kw, sw, pw):
            ny, nx = oy1 - oy0, ox1 - ox0
            if ny == 0 or nx == 0:
                taps.append(jnp.zeros((cin, cout), dy.dtype))
                continue
            xt = lax.slice(x, (0, iy0, ix0, 0), (b, iy0 + sh * (ny - 1) + 1, ix0 + sw * (nx - 1) + 1, cin),
                           (1, sh, sw, 1)).reshape(b * ny * nx, cin)
            dyt = lax.slice(dy, (0, oy0, ox0, 0), (b, oy1, ox1, cout)).reshape(b * ny * nx, cout)
            taps.append(lax.dot_general(xt, dyt, (((0,), (0,)), ((), ()))))
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


# ------------------------------------------------------------------------------------------------
# The convolution with a chosen form per pass.
#
# A lax-form pass is wrapped in `custom_vmap`: batched over per-lane kernels (each vmapped lane with
# its own parameters), XLA turns a lax convolution into a grouped one, which XLA:CPU runs several
# times slower than separate ones; the rule runs that pass in the lane plan's (matrix-product) form,
# whose products batch into batched matrix products. Other forms batch as they are.


def _vmap_call(fn, in_batched, *args):
    return jax.vmap(fn, in_axes=tuple(0 if b else None for b in in_batched))(*args)


def _lane_aware(fn_lax, fn_lane, batched_when):
    """`fn_lax` with a vmap rule that runs `fn_lane` when `batched_when(in_batched)` holds; `fn_lane`
    None: one `fn_lax` per lane (unrolled), the results stacked."""
    op = jax.custom_batching.custom_vmap(fn_lax)

    @op.def_vmap
    def _rule(axis_size, in_batched, *args):
        if not batched_when(in_batched):
            return _vmap_call(fn_lax, in_batched, *args), True
        if fn_lane is None:
            # `op` again (not fn_lax): an enclosing vmap (runs x lanes) unrolls its axis the same way.
            return jnp.stack([op(*(a[i] if b else a for a, b in zip(args, in_batched)))
                              for i in range(axis_size)]), True
        return _vmap_call(fn_lane, in_batched, *args), True

    return op


def conv2d(x: Array, kernel: Array, strides: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
           plan: ConvPlan | None = None, lane_plan: ConvPlan | None = None) -> Array:
    """`y = conv(x, kernel)` (cross-correlation, PyTorch `F.conv2d`), each pass in the form `plan` gives.

    Args:
      x: `[B, H, W, Cin]`.
      kernel: `[kh, kw, Cin, Cout]` (HWIO).
      strides: `(sh, sw)`.
      padding: `(ph, pw)` zero rows / columns on both sides.
      plan: the form of each pass. None: `lax.conv_general_dilated` differentiated by JAX (vmapped
        with per-lane kernels it becomes a grouped convolution). Otherwise a `jax.custom_vjp` (no
        forward-mode differentiation) whose backward pass runs `plan.input_grad` and
        `plan.kernel_grad`.
      lane_plan: the forms that replace "lax" passes of `plan` under `jax.vmap` with a batched kernel
        (for the kernel gradient: batched inputs and output gradients): a form other than "lax", or
        "unroll" (one lax convolution per lane, unrolled in the program). None keeps JAX's batching
        of lax convolutions (a grouped convolution).

    Returns:
      `[B, Ho, Wo, Cout]`.
    """
    strides, padding = tuple(int(s) for s in strides), tuple(int(p) for p in padding)
    if plan is None:
        return _conv_lax(x, kernel, strides, padding)
    if lane_plan is not None:
        for pass_name, form in zip(ConvPlan._fields, lane_plan):
            if form != "unroll" and (form == "lax" or form not in _PASS_FORMS[pass_name]):
                raise ValueError(f"lane_plan {pass_name}={form!r}; allowed: 'unroll' or {_PASS_FORMS[pass_name][1:]}.")
    for pass_name, form in zip(ConvPlan._fields, plan):
        if form not in _PASS_FORMS[pass_name]:
            raise ValueError(f"{pass_name}={form!r}; allowed: {_PASS_FORMS[pass_name]}.")
    x_shape, k_shape = tuple(x.shape), tuple(kernel.shape)
    keep_t = plan.forward == "dense" and plan.input_grad == "dense"

    def forward(form):
        if form == "dense" and keep_t:
            def fn(x, k):
                t = unfold_kernel(k, x_shape[1:3], strides, padding)
                return _dense_apply(x, t, k_shape, strides, padding), t
        else:
            def fn(x, k):
                return _CONV[form](x, k, strides, padding), None
        return fn

    def input_grad(form):
        return lambda dy, k: _input_grad(form, dy, k, x_shape, strides, padding)

    def kernel_grad(form):
        return lambda x, dy: _kernel_grad(form, x, dy, k_shape, strides, padding)

    fwd_fn, dx_fn, dk_fn = forward(plan.forward), input_grad(plan.input_grad), kernel_grad(plan.kernel_grad)
    if lane_plan is not None:
        def lane(make, form):
            return None if form == "unroll" else make(form)

        if plan.forward == "lax":
            base, fl = forward("lax"), lane(forward, lane_plan.forward)
            fwd_y = _lane_aware(lambda x, k: base(x, k)[0], None if fl is None else (lambda x, k: fl(x, k)[0]),
                                lambda b: b[1])
            fwd_fn = lambda x, k: (fwd_y(x, k), None)  # noqa: E731
        if plan.input_grad == "lax":
            dx_fn = _lane_aware(input_grad("lax"), lane(input_grad, lane_plan.input_grad), lambda b: b[1])
        if plan.kernel_grad == "lax":
            dk_fn = _lane_aware(kernel_grad("lax"), lane(kernel_grad, lane_plan.kernel_grad), lambda b: b[0] and b[1])

    @jax.custom_vjp
    def conv(x, k):
        return fwd_fn(x, k)[0]

    def conv_fwd(x, k):
        y, t = fwd_fn(x, k)
        return y, (x, k, t)

    def conv_bwd(res, dy):
        x, k, t = res
        if t is not None:  # the forward pass's unfolded kernel
            dx = _input_grad("dense", dy, k, x_shape, strides, padding, t=t)
        else:
            dx = dx_fn(dy, k)
        return dx, dk_fn(x, dy)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv(x, kernel)


# ------------------------------------------------------------------------------------------------
# The choice.


def tiny_input(shape: ConvShape) -> bool:
    """The input has no more pixels than the kernel has taps (AlexNet-CIFAR's conv2 at 4x4 with a 5x5
    kernel, conv3-5 at 2x2 with 3x3; ResNet-18's last stage at 1x1 for small images): then "dense"
    does no more multiply-adds than "patches", and "region" needs at most `kh * kw` products."""
    return shape.height * shape.width <= shape.kernel[0] * shape.kernel[1]


def wide_single_channel(shape: ConvShape) -> bool:
    """One input channel (a grey image's first layer) and an output of at least 2^19 values: XLA:CPU's
    convolution runs it on one thread, while its patches (`kh * kw` columns) make matrix products
    that use every core once there is enough work (the small CNN's and LEAF CNN's conv1, 802,816
    outputs: the step 0.83-0.90x and 0.96-0.99x; the FEMNIST CNN's, 401,408 outputs: 1.02-1.09x,
    so it stays lax; 2 threads, three interleaved runs each)."""
    ho, wo = shape.out_hw
    return shape.in_channels == 1 and shape.batch * ho * wo * shape.out_channels >= 1 << 19


PATCHES_PLAN = ConvPlan("patches", "patches", "patches")


def cpu_plan(shape: ConvShape) -> ConvPlan:
    """The XLA:CPU choice for `shape` (measurements in the module docstring): "region" for every
    pass at tiny inputs, "patches" for every pass at a single-channel input with a large enough
    output (`wide_single_channel`), XLA's convolution otherwise."""
    if tiny_input(shape):
        return ConvPlan("region", "region", "region")
    if wide_single_channel(shape):
        return PATCHES_PLAN
    return LAX_PLAN


def lane_plan(shape: ConvShape) -> ConvPlan:
    """What replaces lax passes under `jax.vmap` over per-lane kernels on CPU: "unroll" (one lax
    convolution per lane) except at tiny inputs ("region", whose products batch) and where
    `wide_single_channel` holds ("patches", likewise)."""
    if tiny_input(shape):
        return ConvPlan("region", "region", "region")
    if wide_single_channel(shape):
        return PATCHES_PLAN
    return ConvPlan("unroll", "unroll", "unroll")


def resolve_conv_impl(conv_impl: str = "auto", backend: str | None = None) -> str:
    """`conv_impl` with "auto" replaced by the backend's policy: "cpu" on CPU, "lax" elsewhere (cuDNN
    and the TPU compiler pick their own convolution algorithms).

    Args:
      conv_impl: "auto", "lax", "cpu", one of the forms, or "forward/input_grad/kernel_grad".
      backend: `jax.default_backend()` when None.
    """
    if conv_impl == "auto":
        backend = jax.default_backend() if backend is None else backend
        return "cpu" if backend == "cpu" else "lax"
    plans_for(ConvShape(1, 8, 8, 1, 1, (3, 3), (1, 1), (1, 1)), conv_impl)  # validates
    return conv_impl


def plans_for(shape: ConvShape, conv_impl: str) -> tuple[ConvPlan | None, ConvPlan | None]:
    """`(plan, lane_plan)` for a convolution of `shape` under policy `conv_impl` (see `conv2d`).

    Args:
      shape: the layer's `ConvShape`.
      conv_impl: "lax" (`(None, None)`: `lax.conv_general_dilated` differentiated by JAX; the choice
        on GPU/TPU), "cpu" (`cpu_plan` with `lane_plan`), a form name for every pass it supports
        (the kernel gradient of "taps" aside, whose other passes are "patches"), or
        "forward/input_grad/kernel_grad" (e.g. "dense/dense/taps"). "auto" must be resolved first
        (`resolve_conv_impl`): the choice depends on the backend, never read inside traced code.
    """
    if conv_impl == "lax":
        return None, None
    if conv_impl == "cpu":
        return cpu_plan(shape), lane_plan(shape)
    if conv_impl == "taps":
        return ConvPlan("patches", "patches", "taps"), lane_plan(shape)
    if conv_impl in FORMS:
        return ConvPlan(conv_impl, conv_impl, conv_impl), lane_plan(shape)
    parts = conv_impl.split("/") if isinstance(conv_impl, str) else []
    if len(parts) == 3 and all(f in _PASS_FORMS[p] for p, f in zip(ConvPlan._fields, parts)):
        return ConvPlan(*parts), lane_plan(shape)
    if conv_impl == "auto":
        raise ValueError("conv_impl='auto' must be resolved outside traced code: "
                         "strike_jax.models.conv.resolve_conv_impl('auto').")
    raise ValueError(f"conv_impl={conv_impl!r}; allowed: 'auto', 'lax', 'cpu', one of {FORMS}, or "
                     "'forward/input_grad/kernel_grad' (forward, input_grad in lax/patches/dense/region; "
                     "kernel_grad in lax/patches/dense/region/taps).")


# ------------------------------------------------------------------------------------------------
# Introspection: which plan every convolution of a model uses.

_RECORDERS: list[list] = []


def record(path: tuple[str, ...], shape: ConvShape, plan: ConvPlan | None, lanes: ConvPlan | None) -> None:
    """Called by `strike_jax.models.Conv` at trace time; a no-op unless `recording()` is active."""
    for rec in _RECORDERS:
        rec.append((path, shape, plan, lanes))


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collects `(module path, ConvShape, plan, lane_plan)` of every convolution traced inside."""
    rec: list = []
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)
