"""A/B variants: the spec, and a shopper's variant stable across workers and restarts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from stream.core.variants import VariantSpec, assign, bucket_of, parse_variants
from stream.errors import ConfigError
from stream.settings import Settings

WEIGHTS = [("control", 50.0), ("candidate", 50.0)]


def test_parse():
    assert parse_variants("control=pooling:50, candidate=/m/a:b@/ix/t:50") == (
        VariantSpec("control", "pooling", 50.0), VariantSpec("candidate", "/m/a:b", 50.0, "/ix/t"))


@pytest.mark.parametrize("spec", ["control=pooling", "control:50", "=pooling:1", "a=pooling:x",
                                  "a=pooling:1,a=default:1", "a=pooling:0", "a=pooling:-1", "1a=pooling:1"])
def test_a_bad_spec_is_one_config_error(spec):
    with pytest.raises(ConfigError) as err:
        Settings(variants=spec)
    assert "\n" not in str(err.value)


def test_assignment_is_a_keyed_hash_split_by_weight():
    users = [f"user-{i}" for i in range(4000)]
    got = [assign(u, WEIGHTS, "shop") for u in users]
    share = got.count("candidate") / len(got)
    assert 0.46 < share < 0.54
    assert [assign(u, [("a", 9), ("b", 1)], "shop") for u in users].count("b") / len(users) < 0.13
    other = [assign(u, WEIGHTS, "another-key") for u in users]
    assert sum(a != b for a, b in zip(got, other)) > 1000, "the key decides"
    assert bucket_of("user-1", "shop") == bucket_of("user-1", "shop")


def test_assignment_is_the_same_in_another_process():
    """Two workers, or one restarted: a fresh interpreter (another hash seed) assigns the same."""
    users = [f"user-{i}" for i in range(200)]
    here = [assign(u, WEIGHTS, "shop") for u in users]
    code = ("from stream.core.variants import assign;"
            f"print(','.join(assign(u, {WEIGHTS!r}, 'shop') for u in {users!r}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=str(__import__("pathlib").Path.cwd()))
        assert out.stdout.strip().split(",") == here
    # pinned: a change of hash, key handling or bucket split would move shoppers between variants
    assert [bucket_of(f"user-{i}", "shop") for i in range(4)] == [7939, 1503, 5837, 4162]
    assert here[:4] == ["candidate", "control", "candidate", "control"]
