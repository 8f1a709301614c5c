"""The governator's policy files reloaded while it runs (Kubernetes: a mounted ConfigMap
the operator rewrites): a valid change is applied, a bad one logged and ignored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inferno.core.config import GovernatorSettings
from inferno.core.errors import ConfigError
from inferno.governator.reload import PolicyFiles
from inferno.governator.wiring import build_governator, load_policy_and_prices
from tests.polling import eventually

PRICES = "node_types:\n  a: {usd_per_hour: 1}\n  b: {usd_per_hour: 2}\n"


def pool(model: str, node_type: str, high: int = 4) -> str:
    return f"  - {{model: {model}, node_types: [{node_type}], max_replicas: {high}}}\n"


def write(d: Path, policy: str, deployments: str = "{}\n", prices: str = PRICES) -> None:
    for name, text in (("prices.yaml", prices), ("deployments.yaml", deployments),
                       ("policy.yaml", policy)):
        (d / name).write_text(text)


def files(d: Path, optional: bool = False) -> PolicyFiles:
    return PolicyFiles(d / "policy.yaml", d / "prices.yaml", d / "deployments.yaml",
                       optional=optional)


def test_a_change_is_loaded_once_and_a_bad_one_is_kept_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "pools:\n" + pool("m1", "a"))
    f = files(tmp_path)
    assert [p.model for p in f.load().policy.pools] == ["m1"]
    assert f.poll() is None  # unchanged
    write(tmp_path, "pools:\n" + pool("m1", "a") + pool("m2", "b"),
          "m2: infernodeployment/two\n")
    loaded = f.poll()
    assert loaded is not None and [p.model for p in loaded.policy.pools] == ["m1", "m2"]
    assert loaded.deployments == {"m2": "infernodeployment/two"}
    assert f.poll() is None  # applied once
    with caplog.at_level(logging.ERROR, logger="inferno.governator"):
        write(tmp_path, "pools:\n" + pool("m1", "nope"))
        assert f.poll() is None
        assert f.poll() is None  # the bad version is logged once, not every poll
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unknown node type 'nope'" in errors[0]
    write(tmp_path, "pools:\n" + pool("m3", "b"))
    loaded = f.poll()
    assert loaded is not None and [p.model for p in loaded.policy.pools] == ["m3"]


def test_an_optional_policy_not_there_yet_is_no_pools(tmp_path: Path) -> None:
    s = GovernatorSettings(policy_file=tmp_path / "policy.yaml",
                           prices_file=tmp_path / "prices.yaml",
                           deployments_file=tmp_path / "deployments.yaml")
    with pytest.raises(ConfigError):  # not optional: a missing file is an error at start
        load_policy_and_prices(s)
    policy, _ = load_policy_and_prices(s.model_copy(update={"policy_optional": True}))
    assert policy.pools == []
    f = files(tmp_path, optional=True)
    assert f.load().policy.pools == []
    write(tmp_path, "pools:\n" + pool("m1", "a"), "m1: infernodeployment/one\n")
    loaded = f.poll()
    assert loaded is not None and loaded.deployments == {"m1": "infernodeployment/one"}
    for name in ("policy.yaml", "prices.yaml", "deployments.yaml"):
        (tmp_path / name).unlink()  # the ConfigMap deleted with the last policy
    loaded = f.poll()
    assert loaded is not None and loaded.policy.pools == []


@pytest.mark.parametrize("text", ["[a, b]\n", "m1: 3\n", "m1: ''\n", "m1: [x\n"])
def test_a_bad_deployments_file_is_refused(tmp_path: Path, text: str) -> None:
    write(tmp_path, "pools:\n" + pool("m1", "a"), text)
    with pytest.raises(ConfigError) as err:
        files(tmp_path).load()
    assert "deployments.yaml" in err.value.message


async def test_the_running_governator_takes_a_changed_policy(tmp_path: Path) -> None:
    write(tmp_path, "pools:\n" + pool("m1", "a"), "m1: infernodeployment/one\n")
    s = GovernatorSettings(
        provider="kubernetes", policy_file=tmp_path / "policy.yaml",
        prices_file=tmp_path / "prices.yaml", deployments_file=tmp_path / "deployments.yaml",
        k8s_deployments={"m2": "static-two"}, reload_interval=0.01,
        database_url="memory", data_dir=tmp_path)
    policy, prices = load_policy_and_prices(s)
    gov = build_governator(s, policy, prices)
    provider = gov.provider
    assert provider._deployments == {"m1": "infernodeployment/one"}  # type: ignore[attr-defined]
    assert gov.reload is not None
    kept = gov.pool_state["m1"]
    write(tmp_path, "pools:\n" + pool("m1", "a", 2) + pool("m2", "b") + pool("m3", "b"),
          "m1: infernodeployment/one\nm3: infernodeployment/three\n")

    def reloaded() -> bool:
        assert gov.reload is not None
        gov.reload()  # what the loop calls before each tick
        return len(gov.policy.pools) == 3
    await eventually(reloaded, what="the new policy")
    assert gov.pool_state["m1"] is kept and set(gov.pool_state) == {"m1", "m2", "m3"}
    assert gov.policy.pools[0].max_replicas == 2 and gov.prices.node_types["b"]
    assert provider._deployments == {  # type: ignore[attr-defined]
        "m1": "infernodeployment/one", "m2": "static-two", "m3": "infernodeployment/three"}
    assert provider._max == {"m1": 2, "m2": 4, "m3": 4}  # type: ignore[attr-defined]
    write(tmp_path, "pools:\n" + pool("m3", "c"))  # unknown node type: refused, logged
    write(tmp_path, "pools:\n" + pool("m3", "b"), "m3: infernodeployment/three\n")

    def shrunk() -> bool:
        assert gov.reload is not None
        gov.reload()
        return [p.model for p in gov.policy.pools] == ["m3"]
    await eventually(shrunk, what="the pools removed")
    assert set(gov.pool_state) == {"m3"}
    assert provider._deployments == {"m3": "infernodeployment/three"}  # type: ignore[attr-defined]
    await gov.store.close()
    await gov._client.aclose()
