"""Seeing fleet-actors run: Prometheus metrics (metrics.py), OpenTelemetry traces (tracing.py) and
structured JSON logs (logs.py). Each module is one concern; docs/operations.md lists what they export."""
