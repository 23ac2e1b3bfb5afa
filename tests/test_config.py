"""`Config` identity and validation (issue 20 item 3) and the bad-input error type (item 4).

Equal configs must hash alike and get one run id (numbers normalised from the registry's and the
loaders' declared types); integer fields refuse non-integers; every pre-aggregator the registry
offers is accepted, stored in the order the server pipeline applies them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from strike_jax import data, models, registry, stages, sweep
from strike_jax.config import Config, field_types, preset
from strike_jax.errors import InputError

EQUAL_PAIRS = [
    (dict(attack="strike", attack_params={"nu": 1}), dict(attack="strike", attack_params={"nu": 1.0})),
    (dict(attack="lie", attack_params={"z": np.float32(1.5)}), dict(attack="lie", attack_params={"z": 1.5})),
    (dict(defence="cclip", defence_params={"tau": 5, "iters": 2.0}),
     dict(defence="cclip", defence_params={"tau": 5.0, "iters": 2})),
    (dict(preaggregation=("bucketing",), preaggregation_params={"bucketing": {"s": 3.0}}),
     dict(preaggregation=("bucketing",), preaggregation_params={"bucketing": {"s": 3}})),
    (dict(beta=1, lr=1), dict(beta=1.0, lr=1.0)),
    (dict(num_clients=np.int64(10), clients_per_round=10), dict(num_clients=10, clients_per_round=10)),
    (dict(dataset="synthetic", dataset_params={"separation": 2, "image_shape": [8.0, 8, 1]}),
     dict(dataset="synthetic", dataset_params={"separation": 2.0, "image_shape": (8, 8, 1)})),
    (dict(preaggregation=("bucketing", "nnm")), dict(preaggregation=["nnm", "bucketing"])),
]


@pytest.mark.parametrize("a,b", EQUAL_PAIRS, ids=[str(i) for i in range(len(EQUAL_PAIRS))])
def test_equal_configs_hash_alike_and_share_one_run_id(a, b):
    ca, cb = Config(**a), Config(**b)
    assert ca == cb and hash(ca) == hash(cb)
    assert sweep.run_id(ca) == sweep.run_id(cb) and ca.to_json() == cb.to_json()
    # A JSON round trip keeps the identity.
    back = Config.from_dict(json.loads(ca.to_json()))
    assert back == ca and hash(back) == hash(ca) and sweep.run_id(back) == sweep.run_id(ca)
    assert len({ca, cb, back}) == 1


def test_numbers_take_the_declared_type():
    c = Config(attack="strike", attack_params={"nu": 1}, defence="rfa", defence_params={"iters": 3.0, "eps": 1})
    assert type(c.attack_params["nu"]) is float
    assert type(c.defence_params["iters"]) is int and type(c.defence_params["eps"]) is float
    assert type(Config(beta=1).beta) is float and type(Config(clip_norm=2).clip_norm) is float
    assert Config(clip_norm=None).clip_norm is None
    # Values the registry will refuse pass through unchanged (simulation.check_config names them).
    assert Config(attack="strike", attack_params={"nu": "x"}).attack_params["nu"] == "x"
    assert Config(attack="strike", attack_params={"bogus": 1}).attack_params["bogus"] == 1


def _int_fields():
    return [n for n, t in field_types().items() if t.base is int]


@pytest.mark.parametrize("bad", [2.5, 2.0, True, "3", None])
def test_integer_fields_refuse_non_integers(bad):
    fields = _int_fields()
    assert {"num_clients", "clients_per_round", "rounds", "seed", "lanes", "root_samples"} <= set(fields)
    for name in fields:
        if bad is None and field_types()[name].optional:
            continue
        with pytest.raises(InputError, match=rf"^Config\.{name}={bad!r} is invalid: need an integer"):
            Config(**{name: bad})


def test_other_fields_refuse_wrong_types():
    for kwargs, match in [(dict(beta=True), "beta=True is invalid: need a number"),
                          (dict(lr="0.1"), "need a number"),
                          (dict(skew_metrics=1), "need True or False"),
                          (dict(attack=3), "need a string"),
                          (dict(preaggregation="nnm"), "need a comma-separated list of names"),
                          (dict(attack_params=[("nu", 1)]), "need a dict"),
                          (dict(seed=-1), "need an int >= 0"),
                          (dict(max_test_samples=0), "max_test_samples=0 is invalid")]:
        with pytest.raises(InputError, match=match):
            Config(**kwargs)
    with pytest.raises(InputError, match="Unknown config fields"):
        Config.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="Unknown preset"):
        preset("nope")


def test_every_registered_preaggregator_is_accepted_in_the_pipelines_order():
    from strike_jax import simulation

    offered = registry.names("preaggregator")
    assert {"nnm", "bucketing", "clipping", "arc"} <= set(offered)
    for p in offered:
        cfg = preset("digits", attack="lie", defence="median", preaggregation=(p,))
        assert cfg.preaggregation == (p,)
        simulation.check_config(cfg)  # the server pipeline builds it (no data loads)
    for given in [("bucketing", "nnm"), ("bucketing", "clipping"), ("clipping", "nnm"), ("arc", "bucketing", "nnm"),
                  ("nnm", "clipping", "bucketing")]:
        cfg = Config(preaggregation=given)
        pipeline = stages.server_pipeline("median", attack="lie", preaggregation=given)
        # The config stores the order the pipeline runs (NNM before bucketing, bucketing last).
        assert pipeline.name == "+".join(("lie",) + cfg.preaggregation + ("median",)), (given, cfg.preaggregation)
        assert cfg.preaggregation[-1] == "bucketing" or "bucketing" not in given
    with pytest.raises(InputError, match=r"allowed: a subset of \(nnm, bucketing, clipping, arc"):
        Config(preaggregation=("median",))
    with pytest.raises(InputError, match="each once"):
        Config(preaggregation=("nnm", "nnm"))


def test_bad_input_raises_input_error_one_line():
    cases = [
        lambda: registry.find("nope", ("rule",), "rule"),
        lambda: registry.validate("rule", "cclip", {"tau": -1.0}),
        lambda: registry.validate("rule", "cclip", {"bogus": 1}),
        lambda: data.check_load_args("nope"),
        lambda: data.check_load_args("digits", data_dir="/tmp"),
        lambda: models.get("nope", 10, (8, 8, 1)),
        lambda: models.get("mlp", 0, (8, 8, 1)),
        lambda: Config(num_clients=2.5),
    ]
    for case in cases:
        with pytest.raises(InputError) as e:
            case()
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
