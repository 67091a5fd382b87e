"""Where each projector stands: pending events, ack floor, lag in events and seconds, last error.

Read from a deployment by :func:`fleet_actors.jobs.status.projection_status`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsumerStatus:
    consumer: str
    #: the projector of the pool (FLEET_PROJECTORS) that owns this consumer's partition
    projector: str
    pending: int
    ack_pending: int
    ack_floor: int
    redelivered: int
    lag_events: int
    lag_seconds: float
    applied: int
    parked: int
    commit_lag_p99_ms: float
    last_error: str
    #: running, idle, "paused by rebuild <id>", or down (no heartbeat from its projector)
    state: str = ""
    #: seconds since its projector last published its status (None: never)
    heartbeat_age_s: float | None = None
    #: the rebuild job that keeps the live projectors off the graph ("" when none)
    paused_by: str = ""
    last_error_at: str = ""
    #: the versions of the read models its projector writes, e.g. "graph v2, documents v1"
    writes: str = ""
