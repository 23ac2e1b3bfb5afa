"""Convolution forms and max pooling (strike_jax.models.conv, .pool) against the plain lax forms.

Every form of every pass (forward, input gradient, kernel gradient), alone and vmapped over per-lane
kernels, must equal `lax.conv_general_dilated` and its JAX gradients within float32 rounding; the
slice max pooling must equal `lax.reduce_window` values and `select_and_scatter` gradients exactly
(first maximum of a window takes its gradient, ties included).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from strike_jax.models import conv as C
from strike_jax.models import pool as P

# (B, H, W, Cin, Cout, (kh, kw), (sh, sw), (ph, pw)): the paper models' layers at small batch, plus
# edge cases (1x1 input, non-square, stride without padding, kernel larger than the padded input
# along one axis's remainder, 1x1 kernel with stride).
SHAPES = [
    (2, 10, 10, 3, 8, (5, 5), (3, 3), (2, 2)),     # like AlexNet-CIFAR conv1: big kernel, stride, padding
    (3, 4, 4, 5, 6, (5, 5), (1, 1), (2, 2)),       # AlexNet-CIFAR conv2 (tiny input, big kernel)
    (2, 2, 2, 4, 3, (3, 3), (1, 1), (1, 1)),       # AlexNet-CIFAR conv3-5
    (2, 1, 1, 3, 4, (3, 3), (1, 1), (1, 1)),       # one pixel
    (2, 9, 7, 2, 3, (3, 3), (2, 2), (1, 1)),       # odd sizes, stride 2
    (2, 6, 5, 3, 2, (2, 3), (1, 2), (0, 1)),       # rectangular kernel, mixed strides
    (1, 5, 5, 3, 4, (1, 1), (2, 2), (0, 0)),       # ResNet shortcut
    (2, 3, 4, 2, 2, (5, 5), (1, 1), (2, 2)),       # dense-eligible, non-square
]


def _lax(x, k, s, p):
    return lax.conv_general_dilated(x, k, s, ((p[0], p[0]), (p[1], p[1])), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _data(shape, seed=0, lanes=None):
    b, h, w, ci, co, kern, _, _ = shape
    rng = np.random.default_rng(seed)
    lead = () if lanes is None else (lanes,)
    x = rng.normal(size=lead + (b, h, w, ci)).astype(np.float32)
    k = rng.normal(size=lead + (*kern, ci, co)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(k)


def _vjp_all(f, x, k, seed=1):
    y, back = jax.vjp(f, x, k)
    dy = jnp.asarray(np.random.default_rng(seed).normal(size=y.shape).astype(np.float32))
    dx, dk = back(dy)
    return y, dx, dk


def _close(a, b, scale_like):
    # float32 sums of up to a few thousand products: relative to the largest magnitude involved.
    tol = 2e-5 * max(1.0, float(jnp.abs(scale_like).max()))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)


# Every form in every pass it supports, and the pairings that share work (the forward pass's
# unfolded kernel reused by a dense input gradient; a dense forward without it).
PLANS = [C.ConvPlan(*p) for p in (("lax", "lax", "lax"), ("patches", "patches", "patches"),
                                  ("dense", "dense", "dense"), ("region", "region", "region"),
                                  ("patches", "dense", "taps"), ("dense", "region", "lax"),
                                  ("lax", "patches", "dense"))]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[1:3])) + f"_k{s[5][0]}s{s[6][0]}p{s[7][0]}")
def test_every_plan_matches_lax(shape):
    """Forward, input gradient and kernel gradient of each plan equal lax's."""
    x, k = _data(shape)
    s, p = shape[6], shape[7]
    y0, dx0, dk0 = _vjp_all(lambda x, k: _lax(x, k, s, p), x, k)
    for plan in PLANS:
        # Eager (op by op): faster than compiling every plan for these small shapes.
        y, dx, dk = _vjp_all(lambda x, k, plan=plan: C.conv2d(x, k, s, p, plan), x, k)
        _close(y, y0, y0)
        _close(dx, dx0, dx0)
        _close(dk, dk0, dk0)


@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: "x".join(map(str, s[1:3])))
@pytest.mark.parametrize("impl", ["cpu", "lax/lax/lax", "region/lax/taps", "patches"])
def test_vmap_over_lanes_matches_lax(shape, impl):
    """Per-lane inputs *and* kernels (vmap over lanes, the lead's vectorised clients): lax passes switch
    to the lane plan, and the result equals lax vmapped (a grouped convolution)."""
    lanes = 3
    x, k = _data(shape, lanes=lanes)
    s, p = shape[6], shape[7]
    cs = C.ConvShape(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], s, p)
    plan, lane_plan = C.plans_for(cs, impl)

    def both(f):
        return jax.jit(jax.vmap(lambda x, k: _vjp_all(f, x, k)))(x, k)

    y0, dx0, dk0 = both(lambda x, k: _lax(x, k, s, p))
    y, dx, dk = both(lambda x, k: C.conv2d(x, k, s, p, plan, lane_plan))
    _close(y, y0, y0)
    _close(dx, dx0, dx0)
    _close(dk, dk0, dk0)
    # A shared kernel (only x batched) keeps lax's own batching.
    y1 = jax.vmap(lambda x: C.conv2d(x, k[0], s, p, plan, lane_plan))(x)
    _close(y1, jax.vmap(lambda x: _lax(x, k[0], s, p))(x), y0)


def _group_counts(text):
    return [int(v) for v in re.findall(r"(?:feature|batch)_group_count = (\d+)", text)]


@pytest.mark.parametrize("lanes", [C.ConvPlan("unroll", "unroll", "unroll"), C.ConvPlan("patches", "region", "taps")])
def test_no_grouped_convolution_under_vmap(lanes):
    """Under vmap with per-lane kernels a lax-plan layer runs no grouped convolution: plain ones per
    lane ("unroll") or none at all (matrix-product forms). JAX's own batching groups them."""
    x, k = _data((2, 4, 4, 3, 5, (3, 3), (1, 1), (1, 1)), lanes=2)

    def program(lane_plan):
        def step(x, k):
            return jax.grad(lambda k: jnp.sum(C.conv2d(x, k, (1, 1), (1, 1), C.LAX_PLAN, lane_plan) ** 2))(k)
        return jax.jit(jax.vmap(step)).lower(x, k).as_text()

    text = program(lanes)
    assert all(g == 1 for g in _group_counts(text))
    assert ("convolution" in text) == (lanes.forward == "unroll")
    assert any(g > 1 for g in _group_counts(program(None)))


def test_unfold_fold_are_transposes():
    rng = np.random.default_rng(0)
    for h, w, kern, s, p in [(4, 4, (5, 5), (1, 1), (2, 2)), (3, 4, (3, 3), (2, 1), (1, 0))]:
        k = jnp.asarray(rng.normal(size=(*kern, 2, 3)).astype(np.float32))
        t = C.unfold_kernel(k, (h, w), s, p)
        ho, wo = (h + 2 * p[0] - kern[0]) // s[0] + 1, (w + 2 * p[1] - kern[1]) // s[1] + 1
        assert t.shape == (h * w * 2, ho * wo * 3)
        # y.flat = x.flat @ T
        x = jnp.asarray(rng.normal(size=(1, h, w, 2)).astype(np.float32))
        _close((x.reshape(1, -1) @ t).reshape(1, ho, wo, 3), _lax(x, k, s, p), k)
        ct = jnp.asarray(rng.normal(size=t.shape).astype(np.float32))
        want = jax.linear_transpose(lambda k: C.unfold_kernel(k, (h, w), s, p), k)(ct)[0]
        _close(C.fold_kernel(ct, k.shape, (h, w), s, p), want, want)


def test_flops_counts():
    alex2 = C.ConvShape(128, 4, 4, 64, 192, (5, 5), (1, 1), (2, 2))
    assert alex2.out_hw == (4, 4)
    assert alex2.flops("patches") == 2 * 128 * 16 * 25 * 64 * 192
    assert alex2.flops("dense") == 2 * 128 * 16 * 16 * 64 * 192
    assert alex2.flops("taps") == 2 * 128 * 14 * 14 * 64 * 192  # valid (tap, output) pairs: 2+3+4+3+2 per axis
    assert C.tiny_input(alex2) and not C.tiny_input(alex2._replace(height=8, width=8))


def test_plans_for_and_resolve():
    s = C.ConvShape(4, 2, 2, 3, 5, (3, 3), (1, 1), (1, 1))
    assert C.plans_for(s, "lax") == (None, None)
    assert C.plans_for(s, "cpu")[0] == C.ConvPlan("region", "region", "region")
    grey = C.ConvShape(32, 28, 28, 1, 32, (5, 5), (1, 1), (2, 2))  # one input channel, 802,816 outputs
    assert C.plans_for(grey, "cpu") == (C.PATCHES_PLAN, C.PATCHES_PLAN)  # alone and across lanes
    unroll = C.ConvPlan("unroll", "unroll", "unroll")
    assert C.plans_for(grey._replace(in_channels=3), "cpu") == (C.LAX_PLAN, unroll)
    assert C.plans_for(grey._replace(out_channels=16), "cpu") == (C.LAX_PLAN, unroll)  # too little work
    assert C.plans_for(s, "patches")[0] == C.ConvPlan("patches", "patches", "patches")
    assert C.plans_for(s, "taps")[0] == C.ConvPlan("patches", "patches", "taps")
    assert C.plans_for(s, "dense/lax/taps")[0] == C.ConvPlan("dense", "lax", "taps")
    assert C.resolve_conv_impl("auto", "cpu") == "cpu"
    assert C.resolve_conv_impl("auto", "gpu") == "lax"
    assert C.resolve_conv_impl("dense/lax/taps", "gpu") == "dense/lax/taps"
    for bad in ("cudnn", "dense/taps/lax", "lax/lax"):
        with pytest.raises(ValueError, match="conv_impl"):
            C.plans_for(s, bad)
    with pytest.raises(ValueError, match="resolve"):
        C.plans_for(s, "auto")
    with pytest.raises(ValueError, match="lane_plan"):
        C.conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 5)), (1, 1), (1, 1), C.LAX_PLAN, C.LAX_PLAN)
    with pytest.raises(ValueError, match="lane_plan"):
        C.conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 5)), (1, 1), (1, 1), C.LAX_PLAN,
                 C.ConvPlan("unroll", "unroll", "fast"))


# ------------------------------------------------------------------------------------------------
# Max pooling.

POOLS = [((2, 6, 6, 3), 2, 2, 0), ((2, 7, 5, 3), 2, 2, 0), ((1, 8, 8, 2), 3, 2, 1), ((2, 5, 5, 1), 3, 1, 1)]


@pytest.mark.parametrize("shape,window,stride,padding", POOLS)
def test_max_pool_slices_matches_reduce_window(shape, window, stride, padding):
    rng = np.random.default_rng(0)
    # Ties on purpose: small integers (and ReLU-like zeros), where a split gradient would differ.
    x = jnp.asarray(np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float32))
    f_lax = lambda x: P.max_pool(x, window, stride, padding, impl="lax")  # noqa: E731
    f_sl = lambda x: P.max_pool(x, window, stride, padding, impl="slices")  # noqa: E731
    y0, back0 = jax.vjp(f_lax, x)
    y1, back1 = jax.vjp(jax.jit(f_sl), x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
    dy = jnp.asarray(rng.normal(size=y0.shape).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(back1(dy)[0]), np.asarray(back0(dy)[0]))
    # vmapped (per-lane inputs)
    xs = jnp.stack([x, -x])
    np.testing.assert_array_equal(np.asarray(jax.vmap(f_sl)(xs)), np.asarray(jax.vmap(f_lax)(xs)))


def test_max_pool_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        P.max_pool(jnp.zeros((1, 4, 4, 1)), 2, impl="fast")
