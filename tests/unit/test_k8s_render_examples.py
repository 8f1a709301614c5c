"""examples/k8s: each resource is what the API server would accept (its CRD's
openAPIV3Schema, checked with jsonschema) and what the operator would (the pydantic model
the operator parses it with)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from inferno.k8s.crds import all_crds
from inferno.k8s.resources import API_VERSION, KINDS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples/k8s").glob("*.yaml"))
SPECS = {k.kind: k.spec for k in KINDS}


def json_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3.0 (structural) schema as JSON Schema: ``nullable: true`` becomes a
    type union with null; ``exclusiveMinimum: true`` beside ``minimum`` becomes the
    draft-2020 number form; the ``x-kubernetes-*`` extensions are dropped."""
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if out.get(flag) is True:
                out[flag] = out.pop(bound)
            elif out.get(flag) is False:
                del out[flag]
        return out

    result: dict[str, Any] = walk(copy.deepcopy(openapi))
    return result


def crd_schema(kind: str) -> dict[str, Any]:
    (crd,) = [c for c in all_crds() if c["spec"]["names"]["kind"] == kind]
    (version,) = crd["spec"]["versions"]
    return json_schema(version["schema"]["openAPIV3Schema"])


def test_there_is_an_example_of_every_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == set(SPECS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted_by_the_crd_and_the_operator(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert obj["apiVersion"] == API_VERSION
    jsonschema.validate(obj, crd_schema(obj["kind"]),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    spec = SPECS[obj["kind"]].model_validate(obj["spec"])
    # Nothing in the file is dropped by the model (a misspelt field would be refused, but
    # a field the CRD prunes would vanish silently).
    assert _subset(obj["spec"], spec.wire())


def _subset(given: Any, parsed: Any) -> bool:
    if isinstance(given, dict):
        return isinstance(parsed, dict) and all(
            k in parsed and _subset(v, parsed[k]) for k, v in given.items())
    return bool(given == parsed)


def test_the_canary_route_splits_90_10_between_two_example_deployments() -> None:
    objs = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "InfernoDeployment"}
    (route,) = [o for o in objs if o["kind"] == "InfernoRoute"]
    weights = {b["deployment"]: b["weight"] for b in route["spec"]["backends"]}
    assert sorted(weights.values()) == [10, 90] and set(weights) <= set(deployments)
    assert any(d["spec"].get("scaleToZero", {}).get("enabled") and d["spec"]["minReplicas"] == 0
               for d in deployments.values())
    model_names = {o["metadata"]["name"] for o in objs if o["kind"] == "InfernoModel"}
    assert {d["spec"]["modelRef"] for d in deployments.values()} <= model_names


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("InfernoDeployment", "replicas", -1),
    ("InfernoDeployment", "modelRef", "Not_A_Name"),
    ("InfernoRoute", "backends", []),
    ("InfernoModel", "digest", "md5:abc"),
])
def test_the_crd_schema_refuses_a_bad_value(kind: str, field: str, value: Any) -> None:
    """The schema check above can fail: a broken copy of an example is refused."""
    (path,) = [p for p in EXAMPLES
               if yaml.safe_load(p.read_text())["kind"] == kind
               and "canary" not in p.name]
    obj = yaml.safe_load(path.read_text())
    obj["spec"][field] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, crd_schema(kind))
