"""Bring your own: a user's arrays (`data.from_arrays`), flax module (`models.from_flax`) and rule or
attack (`stages.from_function`), registered by name (idempotently) and simulated; `fingerprint`."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import strike_jax
from strike_jax import data, models, registry, stages
from strike_jax.stages import RoundContext


def _arrays(seed=0, n_train=60, n_test=20, shape=(4, 4, 1), classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n_train + n_test)
    means = rng.standard_normal((classes, *shape)) * 2
    x = (means[y] + rng.standard_normal((n_train + n_test, *shape))).astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class LinearNet(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


class BNNet(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x, mask=None if mask is None else
                                                                    mask[:, None, None, None])
        return nn.Dense(self.classes)(nn.relu(x).reshape(x.shape[0], -1))


class DropoutNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dropout(0.5, deterministic=not train)(nn.Dense(3)(x.reshape(x.shape[0], -1)))


def coordinate_trimmed_mean(U, f):
    n = U.shape[0]
    keep = (jnp.arange(n) >= f) & (jnp.arange(n) < n - f)
    return (jnp.sort(U, axis=0) * keep[:, None]).sum(0) / keep.sum()


def _trimmed_reference(U, f):
    U = np.asarray(U, np.float64)
    n, d = U.shape
    out = np.empty(d)
    for j in range(d):
        col = sorted(U[:, j])
        out[j] = sum(col[f:n - f]) / (n - 2 * f)
    return out


# ------------------------------------------------------------------------------------------ data


def test_from_arrays_is_a_dataset_that_partitions():
    xtr, ytr, xte, yte = _arrays()
    ds = data.from_arrays(xtr, ytr.astype(np.int64), xte, yte, name="t_arrays")
    assert isinstance(ds, data.Dataset) and ds.num_classes == 3 and ds.input_shape == (4, 4, 1)
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, xtr)
    part = data.dirichlet(ds.y_train, 4, beta=0.5, seed=0, min_size=2)
    assert sorted(np.concatenate(part.indices).tolist()) == list(range(60))
    assert data.make_partition(ds, 3, split="iid").num_clients == 3


def test_from_arrays_uint8_is_scaled_on_the_device():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)
    ds = data.from_arrays(x[:8], np.arange(8) % 2, x[8:], np.arange(2), name="t_u8")
    assert ds.x_train.dtype == np.uint8
    np.testing.assert_allclose(np.asarray(ds.normalize(jnp.asarray(ds.x_train))), x[:8] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(x_train=np.zeros((4, 2, 2), np.float32)), r"x_train of shape \(4, 2, 2\) is not allowed.*\[\.\.\., None\]"),
    (dict(y_train=np.zeros(4, np.float32)), "y_train of shape"),
    (dict(y_test=np.array([0, 5])), "y_test must lie in"),
    (dict(x_test=np.zeros((2, 2, 2, 1), np.uint8)), "x_train is float32 but x_test is uint8"),
    (dict(x_train=np.full((4, 2, 2, 1), np.nan, np.float32)), "NaN"),
])
def test_from_arrays_refuses_bad_input(bad, match):
    args = dict(x_train=np.zeros((4, 2, 2, 1), np.float32), y_train=np.arange(4) % 2,
                x_test=np.zeros((2, 2, 2, 1), np.float32), y_test=np.array([0, 1]))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        data.from_arrays(**args, name="t_bad", num_classes=2)


def test_register_dataset_by_name_idempotent_and_exclusive():
    ds = data.from_arrays(*_arrays(2), name="t_reg_data")
    assert data.register(ds) is ds
    assert data.load("t_reg_data") is ds and "t_reg_data" in data.names()
    data.register(data.from_arrays(*_arrays(2), name="t_reg_data"))  # equal arrays again: a no-op
    assert data.load("t_reg_data") is ds
    with pytest.raises(ValueError, match="'t_reg_data' is already registered with a different object"):
        data.register(data.from_arrays(*_arrays(3), name="t_reg_data"))
    with pytest.raises(ValueError, match="'digits' is a built-in name"):
        data.register(ds._replace(name="digits"))
    with pytest.raises(ValueError, match="takes no data_dir"):
        data.load("t_reg_data", data_dir="/tmp")


# ---------------------------------------------------------------------------------------- models


def test_from_flax_plain_module_matches_flax():
    m = models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="t_linear")
    assert not m.has_batch_stats and not m.is_conv and m.input_shape == (4, 4, 1)
    v = m.init(jax.random.PRNGKey(1))
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 4, 4, 1))
    logits, bs = m.apply(v, x, True)
    assert bs is None
    want = LinearNet().apply(LinearNet().init(jax.random.PRNGKey(1), x[:1]), x)
    np.testing.assert_array_equal(logits, want)


def test_from_flax_batchnorm_module_masks_and_updates_statistics():
    m = models.from_flax(BNNet(), input_shape=(4, 4, 1), num_classes=3, name="t_bn")
    assert m.has_batch_stats and m.is_conv
    v = m.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 1))
    mask = jnp.array([True, True, False, False])
    _, bs_masked = m.apply(v, x, True, mask)
    _, bs_first = m.apply(v, x[:2], True)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), bs_masked, bs_first)
    _, bs_eval = m.apply(v, x, False)
    assert bs_eval is v["batch_stats"]


@pytest.mark.parametrize("module, kwargs, match", [
    (DropoutNet(), {}, "module.apply\\(train=True\\) failed"),
    (LinearNet(), {"num_classes": 4}, r"returns shape \(2, 3\).*num_classes=4"),
    (LinearNet(), {"input_shape": (4, 4)}, r"input_shape=\(4, 4\) is not allowed"),
    ("not a module", {}, "is not allowed; allowed: a flax.linen.Module"),
])
def test_from_flax_refuses(module, kwargs, match):
    args = dict(input_shape=(4, 4, 1), num_classes=3, name="t_refused")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        models.from_flax(module, **args)


def test_register_model_by_name():
    m = models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="t_reg_model")
    strike_jax.register(m)
    assert models.get("t_reg_model", 3, (4, 4, 1)) is m and "t_reg_model" in models.names()
    models.register(models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="t_reg_model"))
    with pytest.raises(ValueError, match="already registered with a different object"):
        models.register(models.from_flax(LinearNet(4), input_shape=(4, 4, 1), num_classes=4, name="t_reg_model"))
    with pytest.raises(ValueError, match="registered for num_classes=3"):
        models.get("t_reg_model", 10, (4, 4, 1))
    with pytest.raises(ValueError, match="'mlp' is a built-in name"):
        models.register(m._replace(name="mlp"))


# ---------------------------------------------------------------------------------------- stages


def test_from_function_rule_matches_reference_and_checks_f():
    rule = stages.from_function(coordinate_trimmed_mean, kind="rule", name="t_trim", max_f=lambda n: (n - 1) // 2)
    U = jax.random.normal(jax.random.PRNGKey(0), (7, 5))
    state = rule.init(U)
    for f in range(4):
        out, _, _ = rule.update(U, state, RoundContext(None, f, None))
        np.testing.assert_allclose(out, _trimmed_reference(U, f), rtol=1e-5, atol=1e-6)
    assert rule.max_f(7) == 3 and stages.check_f(rule, 7, 3) == 3
    with pytest.raises(ValueError, match="t_trim tolerates at most f=3"):
        rule.update(U, state, RoundContext(None, 4, None))
    # traced f: clamped to the limit, one program for every f (jit and vmap)
    run = jax.jit(lambda f: rule.update(U, state, RoundContext(None, f, None))[0])
    np.testing.assert_allclose(run(jnp.int32(9)), _trimmed_reference(U, 3), rtol=1e-5, atol=1e-6)
    many = jax.vmap(run)(jnp.arange(4))
    for f in range(4):
        np.testing.assert_allclose(many[f], _trimmed_reference(U, f), rtol=1e-5, atol=1e-6)


def test_from_function_rule_without_f_and_with_key():
    plain = stages.from_function(lambda U: U.mean(0), name="t_mean")
    U = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(plain.update(U, (), RoundContext(None, 1, None))[0], U.mean(0))
    noisy = stages.from_function(lambda U, key: U.mean(0) + jax.random.normal(key, U.shape[1:]), name="t_noisy")
    assert noisy.info["needs_key"]
    with pytest.raises(ValueError, match="t_noisy is randomised"):
        noisy.update(U, (), RoundContext(None, 0, None))
    k = jax.random.PRNGKey(3)
    np.testing.assert_allclose(noisy.update(U, (), RoundContext(None, 0, k))[0],
                               U.mean(0) + jax.random.normal(k, (3,)))
    with pytest.raises(AssertionError, match="t_bad_shape: the rule must return a \\[d\\] vector"):
        stages.from_function(lambda U: U, name="t_bad_shape").update(U, (), RoundContext(None, 0, None))


def test_from_function_attack_keeps_honest_rows_bit_exact():
    def scale_all(U, mask, f):
        return -3.0 * U + f  # also changes the honest rows: they must be ignored

    attack = stages.from_function(scale_all, kind="attack", name="t_scale")
    U = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    mask = jnp.array([True, False, True, False, False, False])
    out, _, _ = jax.jit(lambda U, m: attack.update(U, (), RoundContext(m, m.sum(), None)))(U, mask)
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(mask)], np.asarray(U)[~np.asarray(mask)])
    np.testing.assert_allclose(np.asarray(out)[np.asarray(mask)], -3.0 * np.asarray(U)[np.asarray(mask)] + 2,
                               rtol=1e-6)
    # in a chain with a library rule
    median = stages.get("rule", "median")
    pipe = stages.chain(attack, median)
    g, _, _ = pipe.update(U, pipe.init(U), RoundContext(mask, 2, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(g, median.update(out, (), RoundContext(None, 2, None))[0])


def test_from_function_refuses_bad_arguments():
    with pytest.raises(ValueError, match="kind='defence' is not allowed"):
        stages.from_function(lambda U: U.mean(0), kind="defence", name="x")
    with pytest.raises(ValueError, match="name='a\\+b' is not allowed"):
        stages.from_function(lambda U: U.mean(0), name="a+b")
    with pytest.raises(ValueError, match="max_f=3 is not allowed"):
        stages.from_function(lambda U: U.mean(0), name="x", max_f=3)


def test_register_stage_by_name_idempotent_and_exclusive():
    rule = stages.from_function(coordinate_trimmed_mean, name="t_reg_rule", max_f=lambda n: (n - 1) // 2)
    registry.register_stage(rule)
    assert stages.get("rule", "t_reg_rule") is rule and "t_reg_rule" in registry.names("rule")
    # the same code again (a notebook cell re-run): a no-op
    strike_jax.register(stages.from_function(coordinate_trimmed_mean, name="t_reg_rule",
                                             max_f=lambda n: (n - 1) // 2))
    with pytest.raises(ValueError, match="rule 't_reg_rule' is already registered with a different object"):
        registry.register_stage(stages.from_function(lambda U: U.mean(0), name="t_reg_rule"))
    with pytest.raises(ValueError, match="rule 'median' is a built-in name"):
        registry.register_stage(stages.from_function(lambda U: U.mean(0), name="median"))
    with pytest.raises(ValueError, match="register: int is not allowed"):
        strike_jax.register(3)


def test_register_decorator_rerun_is_a_no_op():
    def make():
        @registry.register("rule", "t_decorated", scale=registry.real())
        def t_decorated(scale=1.0, *, backend=None):
            return stages.from_function(lambda U: scale * U.mean(0), name="t_decorated")

        return t_decorated

    first = make()
    assert make() is first  # the same code registered again
    with pytest.raises(ValueError, match="already registered with other code"):
        @registry.register("rule", "t_decorated", scale=registry.real())
        def other(scale=2.0, *, backend=None):
            return None


# ----------------------------------------------------------------------------------- fingerprint


def test_fingerprint_follows_content():
    a = _arrays(0)
    fp = registry.fingerprint(data.from_arrays(*a, name="x"))
    assert fp == registry.fingerprint(data.from_arrays(*[np.copy(v) for v in a], name="other name"))
    changed = [np.copy(v) for v in a]
    changed[0][3, 1, 1, 0] += 1e-3
    assert registry.fingerprint(data.from_arrays(*changed, name="x")) != fp
    m = models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="x")
    assert registry.fingerprint(m) == registry.fingerprint(
        models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="x"))
    assert registry.fingerprint(m) != registry.fingerprint(
        models.from_flax(LinearNet(4), input_shape=(4, 4, 1), num_classes=4, name="x"))
    assert registry.fingerprint(m) != registry.fingerprint(
        models.from_flax(LinearNet(), input_shape=(2, 8, 1), num_classes=3, name="x"))
    r1 = stages.from_function(lambda U: U.mean(0), name="x")
    r2 = stages.from_function(lambda U: U.sum(0), name="x")
    assert registry.fingerprint(r1) != registry.fingerprint(r2)
    c = 2.0
    r3 = stages.from_function(lambda U: c * U.mean(0), name="x")
    fp3 = registry.fingerprint(r3)
    c = 3.0  # noqa: F841 (the closure's value enters the digest when it is computed)
    assert registry.fingerprint(stages.from_function(lambda U: c * U.mean(0), name="x")) != fp3
    assert registry.fingerprint(stages.get("rule", "cclip", tau=1.0)) != registry.fingerprint(
        stages.get("rule", "cclip", tau=2.0))


_USER_CODE = textwrap.dedent('''
    import flax.linen as nn
    import jax.numpy as jnp
    import numpy as np
    from strike_jax import data, models, registry, stages

    SCALE = 0.5

    def helper(U):
        return SCALE * U

    def my_rule(U, f):
        return jnp.median(helper(U), axis=0) + f

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(3, kernel_init=nn.initializers.lecun_normal())(nn.relu(x.reshape(x.shape[0], -1)))

    def fingerprints():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((12, 2, 2, 1)).astype(np.float32)
        ds = data.from_arrays(x[:8], np.arange(8) % 3, x[8:], np.arange(4) % 3, name="d", client_ids=np.arange(8) % 2)
        m = models.from_flax(Net(), input_shape=(2, 2, 1), num_classes=3, name="m")
        r = stages.from_function(my_rule, name="r", max_f=lambda n: n // 2)
        return [registry.fingerprint(o) for o in (ds, m, r, stages.get("rule", "cclip", tau=1.0))]
''')


def _import_file(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fingerprint_is_stable_across_processes(tmp_path):
    """The same user code and arrays give the same digests in another process (another hash seed);
    changing a global that the rule's helper reads changes the rule's digest only."""
    (tmp_path / "user_code_fp.py").write_text(_USER_CODE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{root}", PYTHONHASHSEED="7", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", "import user_code_fp; print(user_code_fp.fingerprints())"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    here = _import_file(tmp_path / "user_code_fp.py", "user_code_fp").fingerprints()
    assert proc.stdout.strip() == str(here)
    (tmp_path / "user_code_fp2.py").write_text(_USER_CODE.replace("SCALE = 0.5", "SCALE = 0.25"))
    changed = _import_file(tmp_path / "user_code_fp2.py", "user_code_fp2").fingerprints()
    assert changed[0] == here[0] and changed[1] == here[1] and changed[3] == here[3]
    assert changed[2] != here[2]


# ---------------------------------------------------------------------------------- simulate


def test_simulate_user_module_arrays_rule_and_attack_by_name():
    """A user's flax module on a user's arrays with a user's rule and attack, by name, 2 rounds."""
    xtr, ytr, xte, yte = _arrays(5, n_train=80, n_test=20)
    strike_jax.register(data.from_arrays(xtr, ytr, xte, yte, name="t_sim_data"))
    strike_jax.register(models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="t_sim_model"))
    strike_jax.register(stages.from_function(coordinate_trimmed_mean, name="t_sim_rule",
                                             max_f=lambda n: (n - 1) // 2))
    strike_jax.register(stages.from_function(lambda U, mask: -U, kind="attack", name="t_sim_flip"))
    config = strike_jax.Config(dataset="t_sim_data", model="t_sim_model", defence="t_sim_rule",
                               attack="t_sim_flip", num_clients=5, clients_per_round=5, partition="iid",
                               byzantine_ratio=0.2, rounds=2, batch_size=16, root_samples=5)
    result = strike_jax.simulate(config)
    assert result["completed_rounds"] == 2 and result["finished"]
    rows = result["rounds"]
    assert [r["num_byzantine"] for r in rows] == [1, 1]
    assert all(np.isfinite(r["accuracy"]) and np.isfinite(r["aggregate_norm"]) for r in rows)


def test_simulate_takes_user_objects_and_resume_refuses_another(tmp_path):
    """The issue's spelling: a Config names the objects, the call supplies them; the result records
    their fingerprints, and a run directory refuses a different model under the same name."""
    xtr, ytr, xte, yte = _arrays(5, n_train=80, n_test=20)
    ds = data.from_arrays(xtr, ytr, xte, yte, name="t_kw_data")
    m = models.from_flax(LinearNet(), input_shape=(4, 4, 1), num_classes=3, name="t_kw_model")
    rule = stages.from_function(coordinate_trimmed_mean, name="t_kw_rule", max_f=lambda n: (n - 1) // 2)
    config = strike_jax.Config(dataset="t_kw_data", model="t_kw_model", defence="t_kw_rule", attack="none",
                               num_clients=5, clients_per_round=5, partition="iid", rounds=2, batch_size=16)
    run_dir = str(tmp_path / "run")
    result = strike_jax.simulate(config, run_dir=run_dir, dataset=ds, model=m, defence=rule)
    assert result["finished"]
    assert result["user_objects"] == {"dataset": strike_jax.fingerprint(ds), "model": strike_jax.fingerprint(m),
                                      "defence": strike_jax.fingerprint(rule)}
    # The same call again returns the stored run; a config naming another dataset is refused.
    again = strike_jax.simulate(config, run_dir=run_dir, dataset=ds, model=m, defence=rule)
    assert again["rounds"] == result["rounds"]
    with pytest.raises(ValueError, match="dataset='t_kw_data' was passed"):
        strike_jax.simulate(config.replace(dataset="digits"), dataset=ds)
    # Another model under the name: refused by registration, and by the stored run's fingerprint.
    from strike_jax import registry, simulation

    with pytest.raises(ValueError, match="different object"):
        strike_jax.simulate(config, model=_other_model())
    registry._USER.pop(("model", "t_kw_model"))
    strike_jax.register(_other_model())
    with pytest.raises(simulation.CheckpointError, match="other user objects"):
        strike_jax.simulate(config, run_dir=run_dir, dataset=ds, defence=rule)


def _other_model():
    import flax.linen as nn

    class Wider(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x.reshape((x.shape[0], -1)))))

    return models.from_flax(Wider(), input_shape=(4, 4, 1), num_classes=3, name="t_kw_model")
