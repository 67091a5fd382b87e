"""The archive on an S3-compatible bucket: a moto server on 127.0.0.1 (installed from PyPI, `moto[server]`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_actors.adapters.archive import Archive, ArchivedEventStore
from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.jetstream.snapshot_store import JetStreamSnapshotStore
from fleet_actors.application.messages import CommandRequest
from fleet_actors.application.story_runtime import StoryRuntime
from fleet_actors.composition import archiver_on, export_events
from fleet_actors.devstack.process import free_port
from fleet_actors.domain.commands import CreateStory, RecordSummary
from fleet_actors.settings import Settings

MOTO = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    if not Path(MOTO).exists():
        pytest.skip("moto[server] is not installed (dev extra)")
    port = free_port()
    process = subprocess.Popen(
        [MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_settings(stream_settings: Settings, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Credentials and endpoint come from the standard AWS variables, as in production.
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"fleet-{stream_settings.stream_name.lower()}"
    archive = Archive(f"s3://{bucket}", stream_settings.stream_name, skip_instance_cache=True)
    archive.fs.mkdir(bucket)
    return stream_settings.replace(archive_url=f"s3://{bucket}/events")


async def test_archive_on_s3_round_trip(s3_settings: Settings, tmp_path: Path):
    stream = await JetStreamEventStore.connect(s3_settings)
    try:
        snapshots = JetStreamSnapshotStore(stream.connection, s3_settings)
        await snapshots.ensure_stream()
        runtime = StoryRuntime("S3-story", stream, snapshots=snapshots)
        await runtime.execute(CommandRequest("S3-story", CreateStory("on a bucket", "s3"), "c-create", "t"))
        for i in range(11):
            await runtime.execute(CommandRequest("S3-story", RecordSummary(f"s{i}"), f"c{i}", "t"))
        archive = Archive(s3_settings.archive_url, s3_settings.stream_name)
        report = await (await archiver_on(s3_settings, stream.connection, archive, segment_events=5)).archive_once()
        assert report.events == 12 and report.segments == 3
        assert not await archive.verify()
        assert sorted(archive.fs.ls(archive.path("segments"), detail=False)) == sorted(
            archive.path(s.name) for s in (await archive.manifest()).segments
        )
        composite = ArchivedEventStore(stream, archive, s3_settings)
        history = [s.envelope.version async for s in composite.read("S3-story")]
        assert history == list(range(1, 13))
        exported = await export_events(s3_settings, f"{s3_settings.archive_url}/export/all.parquet")
        assert exported.from_archive == 12
        # Damage on the bucket is found like damage in a folder.
        victim = (await archive.manifest()).segments[1]
        archive.fs.pipe_file(archive.path(victim.name), b"not parquet")
        problems = await archive.verify()
        assert [p.segment for p in problems] == [victim.name] and "checksum" in problems[0].problem
        archive.fs.rm(archive.path(victim.name))
        assert [p.problem for p in await archive.verify()] == ["missing"]
    finally:
        await stream.close()
