"""The Helm chart (deploy/helm/inferno) and ``inferno k8s render`` stay one install.

Without Helm: the chart's generated files are current (values.schema.json from the values
model, crds/ from the resource models, the dashboard copy), values.yaml is valid and is
the model's defaults, Chart.yaml is complete. With Helm (a ``helm`` binary on PATH, or the
``helm_python`` SDK importable): ``helm template`` gives exactly the objects render gives,
for the defaults and for other values; without either that comparison is skipped, and
says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from inferno.cli import app
from inferno.k8s.crds import all_crds
from inferno.k8s.render import apply_set, render
from inferno.k8s.values import RenderValues, values_schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/inferno"
VALUE_SETS = [
    [],
    ["governator.enabled=true", "serviceMonitor.enabled=true",
     "database.url=postgresql+asyncpg://u:p@pg/db", "redis.secretRef.name=redis",
     "redis.secretRef.key=url", "nodeToken.value=0123456789abcdef0123",
     "createNamespace=false", "proxy.replicas=3", "proxy.auth=none", "name=prod",
     "namespace=ml"],
    ["operator.enabled=false", "grafanaDashboard.enabled=false", "proxy.port=9000",
     "proxy.serviceType=LoadBalancer", "database.secretRef.name=pg",
     "database.secretRef.key=dsn"],
]
EXTRA_ENV = {"proxy": {"extraEnv": [{"name": "INFERNO_PROXY_QUEUE_SIZE", "value": "64"}]},
             "governator": {"enabled": True, "extraEnv": [
                 {"name": "INFERNO_GOVERNATOR_INTERVAL", "value": "2"}]}}


def _values(sets: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for s in sets:
        apply_set(data, s)
    return data


VALUES = [*map(_values, VALUE_SETS), EXTRA_ENV]


def test_values_schema_is_generated_from_the_values_model() -> None:
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == values_schema(), "stale values.schema.json: run make k8s-manifests"


def test_values_yaml_is_valid_and_is_the_defaults() -> None:
    data = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    assert RenderValues.model_validate(data) == RenderValues()
    assert data == RenderValues().wire()  # every value is spelled out for the reader


@pytest.mark.parametrize(("bad", "where"), [
    ({"proxy": {"auth": "off"}}, "auth"),
    ({"proxy": {"replicas": 0}}, "replicas"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    ({"serviceMonitor": {"enabled": True, "interval": "5s"}}, "interval"),
    ({"unknown": 1}, "unknown"),
])
def test_values_schema_refuses_what_the_model_refuses(bad: dict[str, Any], where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(bad, schema)
    assert where in str(err.value)
    with pytest.raises(ValueError, match=where):
        RenderValues.model_validate(bad)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "inferno"
    assert chart["type"] == "application"
    from inferno import __version__
    assert chart["appVersion"] == __version__
    assert RenderValues().image.endswith(f":{__version__}")
    for field in ("version", "description", "kubeVersion"):
        assert chart[field]


def test_chart_crds_are_the_generated_crds() -> None:
    result = CliRunner().invoke(app, ["k8s", "crds"])
    assert result.exit_code == 0
    committed = (CHART / "crds/inferno-crds.yaml").read_text()
    assert committed == result.output, "stale crds/: run make k8s-manifests"
    assert list(yaml.safe_load_all(committed)) == all_crds()


def test_dashboard_copies_are_the_dashboard() -> None:
    source = (ROOT / "deploy/grafana/inferno.json").read_text()
    assert (CHART / "files/inferno.json").read_text() == source
    assert (ROOT / "src/inferno/k8s/grafana-dashboard.json").read_text() == source


def _helm_template(data: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm is not None:
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(data))
        text = subprocess.run([helm, "template", "inferno", str(CHART), "-f", str(values)],
                              check=True, capture_output=True, text=True, timeout=60).stdout
        docs = list(yaml.safe_load_all(text))
    else:
        try:
            from helm_python.chart import Chart  # Helm's Go SDK, through ctypes
        except ImportError:
            pytest.skip("Helm is not installed (no `helm` on PATH, no helm_python SDK): "
                        "helm template is not compared with inferno k8s render here")
        rendered = Chart.load(str(CHART)).render(data or None, name="inferno",
                                                namespace="inferno", is_install=True)
        docs = [d for text in rendered.values() for d in yaml.safe_load_all(text)]
    return [d for d in docs if d]


@pytest.mark.parametrize("data", VALUES, ids=["defaults", "everything", "others", "extra-env"])
def test_helm_template_equals_render(data: dict[str, Any], tmp_path: Path) -> None:
    helm = _helm_template(data, tmp_path)
    ours = render(RenderValues.model_validate(data), crds=False)

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(map(key, helm)) == sorted(map(key, ours))
    theirs = {key(o): o for o in helm}
    for obj in ours:
        assert theirs[key(obj)] == obj, f"{key(obj)} differs between Helm and render"
