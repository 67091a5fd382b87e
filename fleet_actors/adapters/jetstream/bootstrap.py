"""Declare every stream the project uses (events, snapshots, dead letters) with the admin identity.

Components that run with a least-privilege NATS identity (docs/security.md) may not create or edit
streams; this runs first, as ``admin``, at install and after a change of the stream settings:

    FLEET_NATS_USER=admin FLEET_NATS_PASSWORD=... python -m fleet_actors.adapters.jetstream.bootstrap
"""

from __future__ import annotations

import asyncio
import sys

from fleet_actors.adapters.jetstream.connection import connect_nats, ensure_event_stream
from fleet_actors.adapters.jetstream.dead_letter_stream import DeadLetterStream
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.errors import StoryError
from fleet_actors.settings import Settings


async def declare_streams(settings: Settings) -> None:
    """Create the streams, or bring their settings up to date."""
    nc = await connect_nats(settings, name="fleet-bootstrap")
    try:
        await ensure_event_stream(nc, settings)
        await JetStreamSnapshotStore(nc, settings).ensure_stream()
        await DeadLetterStream(nc, settings).ensure_stream()
    finally:
        await nc.close()


def main() -> int:
    try:
        asyncio.run(declare_streams(Settings.from_env()))
    except StoryError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    print("streams declared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
