"""ByzFL's runs on the engine (issue 22, items 2-3): ByzFL's partitions from a `Config`, the validation
hold-out and its accuracy, the evaluation at round 0, pre-aggregators in the given order, ByzFL's random
horizontal flip of the training images. Small: digits, an MLP, a few rounds."""

from __future__ import annotations

import numpy as np
import pytest

from strike_jax import byzfl
from strike_jax import data as data_lib
from strike_jax.config import Config
from strike_jax.data import partition as P
from strike_jax.errors import InputError
from strike_jax.simulation import components


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=6, clients_per_round=6, rounds=2, batch_size=16,
                partition="iid", seed=3, strategy="packed", algorithm="dsgd", momentum=0.9, server_lr=0.5,
                attack="none", defence="mean", byzantine_ratio=0.0, max_test_samples=64)
    base.update(overrides)
    return Config(**base)


def _spec(dd, **bc):
    cfg = {"benchmark_config": {"nb_steps": 5, "f": 2, "nb_honest_clients": 4, "data_distribution_seed": 3,
                                "data_distribution": dd, **bc},
           "aggregator": {"name": "TrMean"}, "attack": {"name": "SignFlipping"}, "evaluation_and_results": {}}
    spec, = byzfl.expand(cfg)
    return spec


# ------------------------------------------------------------------------------------ partitions


@pytest.mark.parametrize("dd,kind,changes", [
    ({"name": "gamma_similarity_niid", "distribution_parameter": 0.5}, "gamma_similarity_niid", {"gamma": 0.5}),
    ({"name": "extreme_niid"}, "extreme_niid", {}),
])
def test_byzfl_partitions_from_a_config_equal_split_clients(dd, kind, changes):
    ds = components.load_dataset(tiny())
    spec = _spec(dd, size_train_set=1.0)
    cfg = tiny(partition=kind, num_clients=6, byzantine_ratio=2 / 6, attack="signflip", byzantine_data=False,
               data_seed=3, **changes)
    part = components.make_partition(cfg, ds)
    want, val = byzfl.split_clients(spec, ds.y_train)
    assert val.size == 0 and part.num_clients == 6
    # The Byzantine clients 0, 1 hold nothing; the honest ones exactly ByzFL's split.
    assert [a.size for a in part.indices[:2]] == [0, 0]
    assert [a.tolist() for a in part.indices[2:]] == [a.tolist() for a in want.indices]
    assert np.array_equal(np.sort(np.concatenate(part.indices)), np.arange(len(ds.y_train)))
    if kind == "extreme_niid":  # sorted by label: each honest client holds few classes
        assert max(len(np.unique(ds.y_train[a])) for a in part.indices[2:]) <= 4


def test_gamma_interpolates_and_is_validated():
    ds = components.load_dataset(tiny())
    classes = [np.mean([len(np.unique(ds.y_train[a])) for a in components.make_partition(
        tiny(partition="gamma_similarity_niid", gamma=g), ds).indices]) for g in (0.0, 1.0)]
    assert classes[0] < 4 and classes[1] == 10
    for g in (-0.1, 1.5):
        with pytest.raises(InputError, match=r"Config.gamma=.* need 0 <= gamma <= 1"):
            tiny(gamma=g)


def test_the_legacy_partitions_are_unchanged():
    # No hold-out: the split every run made before (positions over the kept samples, from the seed).
    ds = components.load_dataset(tiny())
    for cfg, want in ((tiny(partition="iid"), P.iid(len(ds.y_train), 6, 3)),
                      (tiny(partition="dirichlet", beta=1.0), P.dirichlet(ds.y_train, 6, 1.0, 3))):
        got = components.make_partition(cfg, ds)
        assert [a.tolist() for a in got.indices] == [a.tolist() for a in want.indices]
