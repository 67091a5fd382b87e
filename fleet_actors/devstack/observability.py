"""What `dev up` tells about seeing the stack run: its metrics endpoints (in fleet.env and a
Prometheus scrape file) and where the logs are."""

from __future__ import annotations

from fleet_actors.devstack.stack import LocalStack


def scrape_targets(stack: LocalStack) -> dict[str, str]:
    """The metrics URLs for fleet.env (FLEET_*_METRICS_URL) and DATA_DIR/prometheus.yml.

    FLEET_RAY_METRICS_URL (story actors, projectors, replay actors, Ray itself) comes with the Ray
    head's variables; the gateway's is added here. Not FLEET_METRICS_ADDRESS: a process started with
    fleet.env would then try to bind the gateway's port.
    """
    targets = {"FLEET_GATEWAY_METRICS_URL": f"http://{stack.gateway_metrics_address}/metrics"}
    jobs = {"fleet-gateway": targets["FLEET_GATEWAY_METRICS_URL"]}
    if stack.ray is not None and stack.ray.metrics:  # `dev up --ray-metrics` (docs/security.md)
        jobs["fleet-ray"] = stack.ray.metrics_url
    stack.write_prometheus_config(jobs)
    return targets
