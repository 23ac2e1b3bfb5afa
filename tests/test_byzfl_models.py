"""ByzFL's benchmark models (strike_jax.models.byzfl): exact parameter counts, layer shapes, forward
shapes and PyTorch's default initialisation (issue 22, item 2)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import models
from strike_jax.models.byzfl import ResNet18Cifar

# (name, classes, input shape, parameters, BatchNorm running statistics); the counts are ByzFL
# 0.0.11's `sum(p.numel() for p in model.parameters())` worked out by hand from its layer lists.
CASES = [
    ("cnn_mnist", 10, (28, 28, 1), 520 + 25_050 + 400_500 + 5_010, 0),
    ("fc_mnist", 10, (28, 28, 1), 78_500 + 1_010, 0),
    ("logreg_mnist", 10, (28, 28, 1), 7_850, 0),
    ("cnn_cifar", 10, (32, 32, 3), 1_520 + 50_100 + 500_200 + 1_638_912 + 131_328 + 2_570, 0),
    ("resnet18_cifar", 10, (32, 32, 3), 11_173_962, 9_600),
    ("resnet18_cifar", 100, (32, 32, 3), 11_173_962 + 90 * 513, 9_600),
]


def test_issue_counts():
    # The numbers the issue states.
    assert CASES[0][3] == 431_080 and CASES[1][3] == 79_510 and CASES[3][3] == 2_324_630


@pytest.mark.parametrize("name,c,shape,n_params,n_stats", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_parameter_counts_and_forward_shape(name, c, shape, n_params, n_stats):
    m = models.get(name, c, shape)
    assert models.num_params(m) == n_params
    assert models.num_batch_stats(m) == n_stats
    assert m.has_batch_stats == (n_stats > 0)
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    logits, _ = jax.eval_shape(lambda v, x: m.apply(v, x, True), v, x)
    assert logits.shape == (3, c)


# cnn_mnist runs forward and backward in test_cpu_conv_forms_match_lax.
@pytest.mark.parametrize("name,shape", [("fc_mnist", (28, 28, 1)), ("logreg_mnist", (28, 28, 1)),
                                        ("cnn_cifar", (32, 32, 3))])
def test_forward_runs_finite(name, shape):
    m = models.get(name, 10, shape, conv_impl="lax")
    v = m.init(jax.random.PRNGKey(1))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, *shape))
    logits, bs = jax.jit(lambda v, x: m.apply(v, x, False))(v, x)
    assert logits.shape == (2, 10) and bs is None and np.isfinite(np.asarray(logits)).all()


def test_resnet18_cifar_layout():
    m = models.get("resnet18_cifar", 10, (32, 32, 3), conv_impl="lax")
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    p = v["params"]
    # CIFAR stem: a 3x3/1 convolution without bias, then BN; no max-pool (the first stage runs at 32x32).
    assert p["conv1"]["kernel"].shape == (3, 3, 3, 64) and "bias" not in p["conv1"]
    assert p["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert "downsample_conv" not in p["layer1_0"]
    bn_layers = [k for k in jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda _: 1, v["batch_stats"]))]
    assert len(bn_layers) == 2 * 20  # mean and var of 20 BatchNorm layers
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    shapes = {}
    with models.conv_lib.recording() as rec:
        jax.eval_shape(lambda v, x: m.apply(v, x, True), v, x)
    for path, shape, _, _ in rec:
        shapes["/".join(path)] = shape
    assert shapes["layer1_0/conv1"][1] == 32  # no max-pool after the stem
    assert shapes["layer4_1/conv2"][1] == 4  # 4x4 before the pool (ByzFL's avg_pool2d(4))


@pytest.mark.slow
def test_resnet18_cifar_forward():
    m = models.get("resnet18_cifar", 10, (32, 32, 3), conv_impl="lax")
    v = m.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
    logits, bs = jax.jit(lambda v, x: m.apply(v, x, True))(v, x)
    assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()
    assert jax.tree_util.tree_structure(bs) == jax.tree_util.tree_structure(v["batch_stats"])


@pytest.mark.parametrize("name,shape,layers", [
    ("cnn_mnist", (28, 28, 1), {"conv1": 25, "conv2": 500, "fc1": 800, "fc2": 500}),
    ("fc_mnist", (28, 28, 1), {"fc1": 784, "fc2": 100}),
    ("logreg_mnist", (28, 28, 1), {"linear": 784}),
    ("cnn_cifar", (32, 32, 3), {"conv1": 75, "conv2": 500, "conv3": 2500, "fc1": 3200, "fc2": 512, "fc3": 256}),
])
def test_pytorch_default_init(name, shape, layers):
    """Every weight and bias is U(±1/sqrt(fan_in)) (PyTorch's nn.Linear / nn.Conv2d default, SPEC §5)."""
    p = models.get(name, 10, shape).init(jax.random.PRNGKey(4))["params"]
    assert set(p) == set(layers)
    for layer, fan_in in layers.items():
        bound = 1.0 / math.sqrt(fan_in)
        for leaf in ("kernel", "bias"):
            a = np.asarray(p[layer][leaf])
            assert np.abs(a).max() <= bound * (1 + 1e-6), (layer, leaf)
            if a.size >= 500:  # large enough for the distribution's moments
                assert abs(a.std() - bound / math.sqrt(3)) < 0.1 * bound, (layer, leaf)
                assert np.abs(a).max() > 0.9 * bound, (layer, leaf)


def test_resnet18_cifar_conv_init_is_pytorch_default():
    # Two stages of one block at 4x4 (the same module code as the full network, a smaller program).
    mod = ResNet18Cifar(num_classes=10, stage_sizes=(1, 1))
    p = jax.jit(lambda k: mod.init(k, jnp.zeros((1, 4, 4, 3)), False))(jax.random.PRNGKey(5))["params"]
    for layer, conv, fan_in in (("layer2_0", "conv2", 3 * 3 * 128), ("layer2_0", "downsample_conv", 64)):
        k = np.asarray(p[layer][conv]["kernel"])
        bound = 1.0 / math.sqrt(fan_in)
        assert np.abs(k).max() <= bound * (1 + 1e-6) and np.abs(k).max() > 0.99 * bound
    k = np.asarray(p["conv1"]["kernel"])
    assert np.abs(k).max() <= 1.0 / math.sqrt(27) * (1 + 1e-6)


@pytest.mark.parametrize("name,shape", [("cnn_mnist", (28, 28, 1)),
                                        pytest.param("cnn_cifar", (32, 32, 3), marks=pytest.mark.slow)])
def test_cpu_conv_forms_match_lax(name, shape):
    """The CPU default ("auto" -> "cpu" forms) gives the same parameters and, within float32
    rounding, the same logits and gradients as plain lax convolutions (unpadded 5x5 in cnn_mnist)."""
    lax_m = models.get(name, 10, shape, conv_impl="lax")
    cpu_m = models.get(name, 10, shape, conv_impl="cpu")
    v = jax.jit(lax_m.init)(jax.random.PRNGKey(3))
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(jax.jit(cpu_m.init)(jax.random.PRNGKey(3)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jax.random.normal(jax.random.PRNGKey(4), (3, *shape))
    y = jnp.asarray([0, 3, 9])

    def loss(m):
        def f(p, x):
            logits, _ = m.apply({"params": p}, x, True)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), y])
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    (l1, g1), (l2, g2) = loss(lax_m)(v["params"], x), loss(cpu_m)(v["params"], x)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g1)):
        scale = float(jnp.abs(b).max()) + 1e-12
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-4 * scale)
