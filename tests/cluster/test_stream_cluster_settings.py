"""Stream replicas and placement come from settings (FLEET_STREAM_REPLICAS, FLEET_STREAM_PLACEMENT_*).

The settings are checked on their own; then a real 3-node JetStream cluster on loopback
(fleet_actors.devstack.nats_cluster) shows that every stream the project declares (events,
snapshots, dead letters) follows them, that an existing R1 deployment is brought to R3 in place
at the next start-up, and that consumers follow their stream's replicas. The cluster has the local
stack's NATS identities per role, as in the multi-node rehearsal: it refuses clients without
credentials, and a projector's identity may not administer a replicated stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, Placement

from fleet_actors.adapters.jetstream.connection import connect_nats, ensure_event_stream, stream_placement
from fleet_actors.adapters.jetstream.dead_letter_stream import DeadLetterStream, dlq_stream
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore, snapshot_stream
from fleet_actors.devstack.credentials import StackCredentials, nats_identity_settings, nats_permissions
from fleet_actors.devstack.nats_cluster import NatsCluster
from fleet_actors.devstack.role_probe import REFUSED, STREAM_ADMIN_ATTEMPTS, attempt_stream_administration
from fleet_actors.errors import ConfigurationError
from fleet_actors.settings import Settings


def test_replicas_and_placement_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "FLEET_STREAM_REPLICAS": "3",
            "FLEET_STREAM_PLACEMENT_CLUSTER": "fleet-nats",
            "FLEET_STREAM_PLACEMENT_TAGS": "ssd, az:eu-1a",
        }
    )
    assert settings.stream_replicas == 3
    assert settings.placement_tags == ("ssd", "az:eu-1a")
    assert stream_placement(settings) == Placement(cluster="fleet-nats", tags=["ssd", "az:eu-1a"])
    assert Settings.from_env(settings.as_env()) == settings  # round trip through FLEET_* variables


def test_no_placement_by_default() -> None:
    settings = Settings()
    assert settings.placement_tags == ()
    assert stream_placement(settings) is None
    assert stream_placement(Settings(stream_placement_tags="ssd")) == Placement(cluster=None, tags=["ssd"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLEET_STREAM_REPLICAS", "0"),
        ("FLEET_STREAM_REPLICAS", "6"),
        ("FLEET_STREAM_PLACEMENT_TAGS", "ssd,,az:a"),
        ("FLEET_STREAM_PLACEMENT_TAGS", "fast disk"),
        ("FLEET_STREAM_PLACEMENT_CLUSTER", "fleet nats"),
    ],
)
def test_invalid_cluster_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    root = Path(tmp_path_factory.mktemp("nats-cluster"))
    # the roles of the local stack and of the rehearsal; the tests below connect as the admin (url)
    users = StackCredentials.load_or_create(root / "credentials", graph_default="").nats
    cluster = NatsCluster(
        root, 3, server_tags=("ssd",), users=users, client_user="admin", permissions=nats_permissions()
    )
    cluster.start(timeout=60)
    try:
        yield cluster
    finally:
        cluster.stop()


async def _declare_all(settings: Settings) -> dict[str, tuple[int, Placement | None, int]]:
    """Declare every stream as the application does; name -> (replicas, placement, followers)."""
    nc = await connect_nats(settings)
    try:
        await ensure_event_stream(nc, settings)
        await JetStreamSnapshotStore(nc, settings).ensure_stream()
        await DeadLetterStream(nc, settings).ensure_stream()
        out = {}
        for name in (settings.stream_name, snapshot_stream(settings), dlq_stream(settings)):
            for _ in range(100):  # a scale-up adds the followers one after the other
                info = await nc.jsm().stream_info(name)
                followers = len(info.cluster.replicas or []) if info.cluster else 0
                if followers == info.config.num_replicas - 1:
                    break
                await asyncio.sleep(0.1)
            out[name] = (info.config.num_replicas, info.config.placement, followers)
        return out
    finally:
        await nc.close()


async def test_an_r1_deployment_becomes_r3_in_place(nats_cluster: NatsCluster) -> None:
    r1 = Settings(nats_url=nats_cluster.url, stream_name="CLUSTER_R1_TO_R3", subject_prefix="r1r3.events")
    assert {replicas for replicas, _, _ in (await _declare_all(r1)).values()} == {1}
    declared = await _declare_all(r1.replace(stream_replicas=3))  # the next start-up with FLEET_STREAM_REPLICAS=3
    assert declared == {name: (3, None, 2) for name in declared}


async def test_every_stream_is_placed_as_configured(nats_cluster: NatsCluster) -> None:
    settings = Settings(
        nats_url=nats_cluster.url,
        stream_name="CLUSTER_PLACED",
        subject_prefix="placed.events",
        stream_replicas=3,
        stream_placement_cluster="fleet-rehearsal",
        stream_placement_tags="ssd",
    )
    declared = await _declare_all(settings)
    wanted = Placement(cluster="fleet-rehearsal", tags=["ssd"])
    assert declared == {name: (3, wanted, 2) for name in declared}
    assert nats_cluster.stream_cluster(settings.stream_name)["leader"] in {node.server_name for node in nats_cluster}
    # declaring again (every start-up does) changes nothing
    assert await _declare_all(settings) == declared


async def test_consumers_follow_their_stream(nats_cluster: NatsCluster) -> None:
    settings = Settings(
        nats_url=nats_cluster.url, stream_name="CLUSTER_CONSUMERS", subject_prefix="cc.events", stream_replicas=3
    )
    nc = await connect_nats(settings)
    try:
        await ensure_event_stream(nc, settings)
        # as the projector declares its consumer: no num_replicas of its own
        await nc.jsm().add_consumer(
            settings.stream_name, ConsumerConfig(durable_name="projector-0-of-1", ack_policy=AckPolicy.EXPLICIT)
        )
        for _ in range(100):
            info = await nc.jsm().consumer_info(settings.stream_name, "projector-0-of-1")
            if info.cluster and len(info.cluster.replicas or []) == 2:
                break
            await asyncio.sleep(0.1)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


async def test_placement_that_no_server_matches_is_refused(nats_cluster: NatsCluster) -> None:
    settings = Settings(
        nats_url=nats_cluster.url,
        stream_name="CLUSTER_NO_PEERS",
        subject_prefix="np.events",
        stream_replicas=3,
        stream_placement_tags="gpu",
    )
    nc = await connect_nats(settings)
    try:
        with pytest.raises(Exception, match=r"(?i)peers|placement|resources"):
            await ensure_event_stream(nc, settings)
    finally:
        await nc.close()


async def test_the_cluster_refuses_clients_without_credentials(nats_cluster: NatsCluster) -> None:
    assert "@" not in nats_cluster.address
    for node in nats_cluster:
        with pytest.raises((nats.errors.Error, OSError)) as refused:
            await nats.connect(node.address, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        assert "authorization" in str(refused.value).lower() or isinstance(refused.value, nats.errors.NoServersError)


async def test_a_projector_may_not_administer_a_replicated_stream(nats_cluster: NatsCluster) -> None:
    admin = Settings(nats_url=nats_cluster.url, stream_name="CLUSTER_ROLES", subject_prefix="roles.events")
    admin = admin.replace(stream_replicas=3)
    await _declare_all(admin)
    projector = nats_identity_settings(admin, nats_cluster.address, nats_cluster.users, "projector")
    assert await attempt_stream_administration(projector, admin.stream_name) == dict.fromkeys(
        STREAM_ADMIN_ATTEMPTS, REFUSED
    )
    nc = await connect_nats(admin)
    try:
        info = await nc.jsm().stream_info(admin.stream_name)
        assert info.config.num_replicas == 3 and not info.config.description
    finally:
        await nc.close()
