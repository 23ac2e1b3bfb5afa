"""Models: parameter counts, output shapes, PyTorch-default initialisation, masked BatchNorm (SPEC §5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import models

# (name, num_classes, input_shape, parameters, batch statistics), counted by hand from the layer
# shapes (weights + biases); the paper models' counts are the ones SPEC §5 states.
COUNTS = [
    ("femnist_cnn", 62, (28, 28, 1), 848_382, 0),
    ("leaf_cnn", 62, (28, 28, 1), 6_603_710, 0),
    ("alexnet_cifar", 10, (32, 32, 3), 2_472_266, 0),
    ("resnet18", 12, (224, 224, 3), 11_182_668, 9_600),
    # conv 1*16*9+16, conv 16*32*9+32, dense 2*2*32*64+64, dense 64*10+10
    ("small_cnn", 10, (8, 8, 1), 160 + 4_640 + 8_256 + 650, 0),
    ("small_cnn", 10, (28, 28, 1), 160 + 4_640 + (7 * 7 * 32 * 64 + 64) + 650, 0),
    ("small_cnn_bn", 10, (8, 8, 1), 160 + 32 + 4_640 + 64 + 8_256 + 650, 96),
    ("mlp", 10, (8, 8, 1), 64 * 128 + 128 + 128 * 10 + 10, 0),
    ("mlp", 10, (28, 28, 1), 784 * 128 + 128 + 128 * 10 + 10, 0),
]


ALIASES = {"digits_cnn": "small_cnn", "fmnist_cnn": "small_cnn", "digits_mlp": "mlp"}
#: ByzFL's benchmark models: counts, shapes and init in tests/test_byzfl_models.py.
BYZFL_MODELS = {"cnn_mnist", "fc_mnist", "logreg_mnist", "cnn_cifar", "resnet18_cifar"}


def test_names_cover_counts():
    assert set(models.names()) == {c[0] for c in COUNTS} | set(ALIASES) | BYZFL_MODELS


@pytest.mark.parametrize("alias,target", sorted(ALIASES.items()))
def test_aliases(alias, target):
    for shape in ((8, 8, 1), (28, 28, 1)):
        assert models.num_params(models.get(alias, 10, shape)) == models.num_params(models.get(target, 10, shape))


@pytest.mark.parametrize("name,c,shape,n_params,n_stats", COUNTS)
def test_parameter_counts_and_output_shape(name, c, shape, n_params, n_stats):
    m = models.get(name, c, shape)
    assert models.num_params(m) == n_params
    assert models.num_batch_stats(m) == n_stats
    assert m.has_batch_stats == (n_stats > 0)
    variables = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    assert set(variables) == ({"params", "batch_stats"} if n_stats else {"params"})
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    for train in (False, True):
        logits, bs = jax.eval_shape(lambda v, x: m.apply(v, x, train), variables, x)
        assert logits.shape == (3, c) and logits.dtype == jnp.float32
        if n_stats:
            assert jax.tree_util.tree_structure(bs) == jax.tree_util.tree_structure(variables["batch_stats"])
        else:
            assert bs is None


def test_resnet18_layout():
    m = models.get("resnet18", 12, (224, 224, 3))
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_flatten_with_path(v["params"])[0]
    bn_scales = [p for p, _ in params if "scale" in jax.tree_util.keystr(p)]
    assert len(bn_scales) == 20  # SPEC §5: 20 BatchNorm layers
    conv_biases = [p for p, _ in params if "conv" in jax.tree_util.keystr(p) and "bias" in jax.tree_util.keystr(p)]
    assert conv_biases == []  # torchvision convolutions have no bias
    assert v["params"]["fc"]["kernel"].shape == (512, 12)
    assert v["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)


def test_forward_runs_finite():
    m = models.get("small_cnn_bn", 10, (8, 8, 1))
    v = jax.jit(m.init)(jax.random.PRNGKey(1))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype(np.float32))
    both = jax.jit(lambda v, x: (m.apply(v, x, False), m.apply(v, x, True)))(v, x)
    for train, (logits, bs) in zip((False, True), both):
        assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
        # Evaluation leaves the running statistics as they are; training moves them.
        same = all(bool(jnp.array_equal(a, b)) for a, b in
                   zip(jax.tree_util.tree_leaves(bs), jax.tree_util.tree_leaves(v["batch_stats"])))
        assert same == (not train)


@pytest.mark.parametrize("layer,x_shape,fan_in", [
    (models.Dense(512), (1, 1568), 1568),  # FEMNIST CNN fc1
    (models.Conv(32, (5, 5), padding=2), (1, 14, 14, 16), 16 * 25),  # FEMNIST CNN conv2
])
def test_torch_default_init_bounds(layer, x_shape, fan_in):
    """Weights and biases are U(±1/sqrt(fan_in)) (PyTorch `kaiming_uniform_(a=sqrt(5))` = 1/sqrt(fan_in))."""
    p = layer.init(jax.random.PRNGKey(0), jnp.zeros(x_shape))["params"]
    bound = 1.0 / math.sqrt(fan_in)
    for leaf in ("kernel", "bias"):
        a = np.asarray(p[leaf], np.float64)
        assert np.abs(a).max() <= bound * (1 + 1e-6)
        # U(-b, b): mean 0, std b/sqrt(3) (loose for the 32 conv biases)
        tol = 0.02 if a.size > 10_000 else 0.25
        assert abs(a.mean()) < tol * bound
        assert abs(a.std() - bound / math.sqrt(3)) < tol * bound
        assert np.abs(a).max() > (1 - tol) * bound


def test_kaiming_fan_out_conv_init():
    conv = models.Conv(64, (7, 7), conv_init="kaiming_fan_out", use_bias=False)
    k = np.asarray(conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]["kernel"], np.float64)
    assert k.shape == (7, 7, 3, 64)
    assert abs(k.std() - math.sqrt(2.0 / (64 * 49))) < 0.03 * math.sqrt(2.0 / (64 * 49))
    with pytest.raises(ValueError, match="conv_init"):
        models.Conv(4, (3, 3), conv_init="xavier").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))


def test_get_rejects_bad_input():
    with pytest.raises(ValueError, match="Unknown model"):
        models.get("vgg", 10, (32, 32, 3))
    with pytest.raises(ValueError, match="num_classes"):
        models.get("mlp", 0, (8, 8, 1))
    with pytest.raises(ValueError, match="input_shape"):
        models.get("mlp", 10, (8, 8))


# ------------------------------------------------------------------------------------------------
# Masked BatchNorm against a NumPy float64 reference of torch.nn.BatchNorm2d.


def _np_bn_train(x, scale, bias, rmean, rvar, momentum=0.1, eps=1e-5):
    """torch.nn.BatchNorm2d in training mode on NHWC `x` (float64 loops over channels)."""
    y = np.empty_like(x)
    new_m, new_v = rmean.copy(), rvar.copy()
    for c in range(x.shape[-1]):
        v = x[..., c].ravel()
        mu = v.mean()
        var = ((v - mu) ** 2).mean()
        y[..., c] = (x[..., c] - mu) / np.sqrt(var + eps) * scale[c] + bias[c]
        new_m[c] = (1 - momentum) * rmean[c] + momentum * mu
        new_v[c] = (1 - momentum) * rvar[c] + momentum * var * v.size / (v.size - 1)
    return y, new_m, new_v


@pytest.mark.parametrize("jit", [False, True])
def test_masked_batchnorm_matches_torch_on_real_examples(jit):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(6, 3, 4, 5)).astype(np.float32)
    mask = np.array([1, 0, 1, 1, 0, 1], bool)
    bn = models.MaskedBatchNorm()
    variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    scale = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    rmean = rng.normal(size=5).astype(np.float32)
    rvar = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
                 "batch_stats": {"mean": jnp.asarray(rmean), "var": jnp.asarray(rvar)}}

    def f(v, x, m):
        return bn.apply(v, x, train=True, mask=m, mutable=["batch_stats"])

    f = jax.jit(f) if jit else f
    y, upd = f(variables, jnp.asarray(x), jnp.asarray(mask))
    y_ref, m_ref, v_ref = _np_bn_train(x[mask].astype(np.float64), scale, bias, rmean, rvar)
    np.testing.assert_allclose(np.asarray(y)[mask], y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], m_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], v_ref, rtol=1e-5, atol=1e-6)

    # Evaluation mode: running statistics, unchanged.
    y_eval = bn.apply(variables, jnp.asarray(x), train=False)
    ref = (x.astype(np.float64) - rmean) / np.sqrt(rvar.astype(np.float64) + 1e-5) * scale + bias
    np.testing.assert_allclose(y_eval, ref, rtol=1e-5, atol=1e-5)


def test_masked_batchnorm_gradient_ignores_padded_slots():
    """The gradient of a loss on the real examples equals that of BatchNorm on the real examples alone."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, 2, 2, 3)).astype(np.float32))
    mask = jnp.asarray([True, False, True, True, False])
    bn = models.MaskedBatchNorm()
    v = bn.init(jax.random.PRNGKey(0), x, train=False)
    t = jnp.asarray(rng.normal(size=(5, 2, 2, 3)).astype(np.float32))

    def loss_masked(p, x):
        y, _ = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mask=mask,
                        mutable=["batch_stats"])
        return jnp.sum(jnp.where(mask[:, None, None, None], y * t, 0.0))

    def loss_subset(p, xs):
        y, _ = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, xs, train=True, mutable=["batch_stats"])
        return jnp.sum(y * t[mask])

    gp_m, gx_m = jax.grad(loss_masked, argnums=(0, 1))(v["params"], x)
    gp_s, gx_s = jax.grad(loss_subset, argnums=(0, 1))(v["params"], x[mask])
    for k in ("scale", "bias"):
        np.testing.assert_allclose(gp_m[k], gp_s[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx_m[mask], gx_s, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(gx_m[~mask]).max()) == 0.0


# ------------------------------------------------------------------------------------------------
# Convolution forms (strike_jax.models.conv): every model, the "cpu" policy against plain lax.

# (name, classes, input shape) of every distinct module; ResNet-18 at 16x16 keeps the test short
# (its last stages then run at 2x2 and 1x1, where the "cpu" policy switches forms).
FORM_MODELS = [("femnist_cnn", 62, (28, 28, 1)), ("leaf_cnn", 62, (28, 28, 1)), ("alexnet_cifar", 10, (32, 32, 3)),
               ("resnet18", 12, (16, 16, 3)), ("small_cnn", 10, (28, 28, 1)), ("small_cnn_bn", 10, (8, 8, 1)),
               ("mlp", 10, (8, 8, 1))]


def _loss_and_grads(m, variables, x, y, train=True):
    def loss(params, x):
        v = dict(variables, params=params)
        logits, _ = m.apply(v, x, train)
        return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y]), logits

    (val, logits), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)
    return logits, gp, gx


def _assert_trees_close(a, b, rel=2e-5):
    """Leaf by leaf, within `rel` of the leaf's largest magnitude; a leaf whose true value is 0 up to
    rounding (a convolution bias followed by BatchNorm) is measured against 1e-2 of the largest."""
    leaves_b = jax.tree_util.tree_leaves(b)
    top = max(float(jnp.abs(v).max()) for v in leaves_b)
    for u, v in zip(jax.tree_util.tree_leaves(a), leaves_b):
        scale = max(float(jnp.abs(v).max()), 1e-2 * top)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=rel * scale)


@pytest.mark.parametrize("name,c,shape", FORM_MODELS, ids=[m[0] for m in FORM_MODELS])
def test_cpu_conv_forms_match_lax(name, c, shape):
    """Same parameters (pytree and values) and, within float32 rounding, the same logits and
    gradients (parameters and input) under the "cpu" policy as with plain lax convolutions."""
    lax_m = models.get(name, c, shape, conv_impl="lax")
    cpu_m = models.get(name, c, shape, conv_impl="cpu")
    assert (lax_m.conv_impl, cpu_m.conv_impl) == ("lax", "cpu")
    v_lax = jax.jit(lax_m.init)(jax.random.PRNGKey(3))
    v_cpu = jax.jit(cpu_m.init)(jax.random.PRNGKey(3))
    assert jax.tree_util.tree_structure(v_lax) == jax.tree_util.tree_structure(v_cpu)
    for a, b in zip(jax.tree_util.tree_leaves(v_lax), jax.tree_util.tree_leaves(v_cpu)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, c, 3))
    # ResNet-18 in evaluation mode: in training mode its last stages normalise 3 values per channel
    # (1x1 maps), so ill-conditioned that a 1e-7 relative change of the input moves gradients by 4%
    # under lax itself; the convolutions run the same forms in both modes.
    train = name != "resnet18"
    ref = _loss_and_grads(lax_m, v_lax, x, y, train)
    got = _loss_and_grads(cpu_m, v_cpu, x, y, train)
    _assert_trees_close(got, ref)


@pytest.mark.parametrize("impl", ["dense/patches/taps"])
def test_forced_conv_forms_match_lax_alexnet(impl):
    """AlexNet-CIFAR with every convolution in forms the "cpu" policy does not pick there (the
    unfolded kernel of conv1 is 32*32*3 x 8*8*64, still small); tests/test_conv.py covers every
    form layer by layer."""
    shape = (32, 32, 3)
    ref_m, m = models.get("alexnet_cifar", 10, shape, conv_impl="lax"), models.get("alexnet_cifar", 10, shape, conv_impl=impl)
    v = jax.jit(ref_m.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, *shape)).astype(np.float32))
    y = jnp.asarray([1, 7])
    _assert_trees_close(_loss_and_grads(m, v, x, y), _loss_and_grads(ref_m, v, x, y))


@pytest.mark.parametrize("name,c,shape", [("alexnet_cifar", 10, (32, 32, 3))])
def test_cpu_conv_forms_under_vmap_over_lanes(name, c, shape):
    """Per-lane parameters and inputs (the vectorised clients): the "cpu" policy vmapped (conv1 one
    lax convolution per lane, conv2-5 "region" products batched) equals plain lax vmapped (grouped
    convolutions), gradients included."""
    lanes = 2
    lax_m = models.get(name, c, shape, conv_impl="lax")
    cpu_m = models.get(name, c, shape, conv_impl="cpu")
    v = jax.jit(jax.vmap(lax_m.init))(jax.random.split(jax.random.PRNGKey(0), lanes))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(lanes, 2, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, c, (lanes, 2)))

    def grads(m):
        def one(v, x, y):
            return jax.grad(lambda p: jnp.sum(jax.nn.log_softmax(m.apply(dict(v, params=p), x, True)[0])
                                              [jnp.arange(2), y]))(v["params"])
        return jax.jit(jax.vmap(one))(v, x, y)

    _assert_trees_close(grads(cpu_m), grads(lax_m))


def test_conv_plans_and_auto():
    m = models.get("alexnet_cifar", 10, (32, 32, 3), conv_impl="cpu")
    plans = models.conv_plans(m, batch=128)
    assert list(plans) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert plans["conv2"].shape == models.conv.ConvShape(128, 4, 4, 64, 192, (5, 5), (1, 1), (2, 2))
    assert all(layer.plan is not None and layer.lane_plan is not None for layer in plans.values())
    assert all(layer.plan is None and layer.lane_plan is None
               for layer in models.conv_plans(models.get("small_cnn", 10, (28, 28, 1), conv_impl="lax")).values())
    assert models.get("small_cnn", 10, (8, 8, 1), backend="cpu").conv_impl == "cpu"
    assert models.get("small_cnn", 10, (8, 8, 1), backend="gpu").conv_impl == "lax"
    assert models.get("small_cnn", 10, (8, 8, 1)).conv_impl == models.conv.resolve_conv_impl("auto")
    assert models.conv_plans(models.get("mlp", 10, (8, 8, 1))) == {}
    with pytest.raises(ValueError, match="conv_impl"):
        models.get("small_cnn", 10, (8, 8, 1), conv_impl="cudnn")
