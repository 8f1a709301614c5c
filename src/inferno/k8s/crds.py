"""CustomResourceDefinitions generated from the resource models.

Kubernetes wants *structural* OpenAPI v3.0 schemas: every type spelled out, no ``$ref``,
no ``anyOf`` of a type and null (``nullable: true`` instead), ``exclusiveMinimum`` as a
flag beside ``minimum``, no ``title``, never ``properties`` and ``additionalProperties``
together. pydantic writes JSON Schema 2020-12, so its output
is rewritten here, once, into that dialect.
"""

from __future__ import annotations

from typing import Any

from inferno.k8s.resources import GROUP, KINDS, VERSION, Kind, Status

_DROP = {"title", "examples", "$defs", "discriminator"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (pydantic's JSON Schema) as a structural OpenAPI v3.0 schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}})
        any_of = node.get("anyOf")
        if any_of is not None:
            rest = [s for s in any_of if s.get("type") != "null"]
            if len(rest) == 1 and len(rest) < len(any_of):
                merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **rest[0]}
                nullable: dict[str, Any] = walk(merged)
                nullable["nullable"] = True
                if nullable.get("default", 0) is None:
                    del nullable["default"]
                return nullable
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key in ("exclusiveMinimum", "exclusiveMaximum"):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
                continue
            if key in ("properties", "patternProperties"):
                out[key] = {k: walk(v) for k, v in value.items()}
                continue
            out[key] = walk(value)
        if "properties" in out:  # structural schemas forbid both (unknown fields are pruned)
            out.pop("additionalProperties", None)
        if "const" in out:  # a one-value Literal: an enum of one
            out["enum"] = [out.pop("const")]
        if out.get("default") == {} and out.get("type") == "object":
            out["default"] = {}
        return out

    result: dict[str, Any] = walk(schema)
    return result


def crd(kind: Kind) -> dict[str, Any]:
    spec = structural(kind.spec.model_json_schema(by_alias=True))
    status = structural(Status.model_json_schema(by_alias=True))
    status["x-kubernetes-preserve-unknown-fields"] = True
    version: dict[str, Any] = {
        "name": VERSION, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": {
            "type": "object", "required": ["spec"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": {"type": "object"}, "spec": spec, "status": status}}},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [{"name": n, "type": t, "jsonPath": p}
                                     for n, t, p in kind.columns],
    }
    if kind.scale:
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {"group": GROUP, "scope": "Namespaced",
                 "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.singular,
                           "shortNames": kind.short, "listKind": f"{kind.kind}List",
                           "categories": ["inferno"]},
                 "versions": [version]},
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(k) for k in KINDS]
