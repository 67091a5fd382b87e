"""deploy/monitoring: the scrape targets match the pods of deploy/base, the alerts and the dashboard
use only metrics that exist, and docs/operations.md explains every metric and every alert."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from fleet_actors.observability.metrics import FleetMetrics, _Family, metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
BASE = ROOT / "deploy" / "base"
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
METRIC = re.compile(r"\b(?:ray_)?fleet_[a-z_]+\b")


def our_metrics() -> dict[str, _Family]:
    families = [value for value in vars(metrics()).values() if isinstance(value, _Family)]
    assert isinstance(metrics(), FleetMetrics) and len(families) > 20
    return {family.name: family for family in families}


def exists(reference: str) -> bool:
    """A name in a query: ray_ prefix for actor metrics, _bucket/_count/_sum of histograms."""
    name = reference.removeprefix("ray_")
    families = our_metrics()
    if name in families:
        return True
    base, _, suffix = name.rpartition("_")
    return (
        suffix in ("bucket", "count", "sum")
        and families.get(base, None) is not None
        and families[base].kind == "histogram"
    )


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MONITORING / name).read_text()) if doc]


def base_pod_templates() -> list[dict[str, Any]]:
    templates = []
    for path in BASE.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "Deployment":
                templates.append(doc["spec"]["template"])
            elif doc["kind"] == "RayCluster":
                templates.append(doc["spec"]["headGroupSpec"]["template"])
                templates += [group["template"] for group in doc["spec"]["workerGroupSpecs"]]
    return templates


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file()
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (MONITORING / file).is_file()


def test_pod_monitors_select_pods_that_name_a_metrics_port() -> None:
    monitors = load("podmonitors.yaml")
    assert {m["kind"] for m in monitors} == {"PodMonitor"}
    templates = base_pod_templates()
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert selected, f"{monitor['metadata']['name']} selects no pod of deploy/base"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for template in selected:
                ports = [p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])]
                assert endpoint["port"] in ports, (monitor["metadata"]["name"], template["metadata"]["labels"])


def test_alerts_use_existing_metrics_and_are_explained() -> None:
    (rule,) = load("prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    wanted = {
        "FleetProjectionLagging",
        "FleetEventsParked",
        "FleetProjectorDown",
        "FleetProjectorPausedWithoutRebuild",
        "FleetGatewayNotServing",
        "FleetLiveStoriesAtCap",
    }
    assert wanted <= {a["alert"] for a in alerts}
    for alert in alerts:
        names = METRIC.findall(alert["expr"])
        assert names and all(exists(n) for n in names), (alert["alert"], names)
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == anchor.lower() and f"#### {anchor}" in OPERATIONS.lower(), alert["alert"]
        assert alert["alert"] in OPERATIONS


def test_dashboard_queries_use_existing_metrics() -> None:
    dashboard = json.loads((MONITORING / "fleet-actors-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) > 20
    used = {n for e in expressions for n in METRIC.findall(e)}
    assert used and all(exists(n) for n in used), sorted(n for n in used if not exists(n))
    # every metric is on the dashboard
    shown = {n.removeprefix("ray_") for n in used}
    shown |= {n.rsplit("_", 1)[0] for n in shown}
    assert set(our_metrics()) <= shown, sorted(set(our_metrics()) - shown)


def test_operations_lists_every_metric_with_its_labels() -> None:
    for name, family in our_metrics().items():
        assert f"`{name}`" in OPERATIONS, name
        for label in family.labels:
            assert f"`{label}`" in OPERATIONS, (name, label)
