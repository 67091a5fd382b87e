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
    if stack.ray is not None:
        stack.write_prometheus_config(
            {"fleet-ray": stack.ray.metrics_url, "fleet-gateway": targets["FLEET_GATEWAY_METRICS_URL"]}
        )
    return targets
