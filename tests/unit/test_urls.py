"""No credential leaves in a URL: redact_url on each server's URL form, and every place a URL is shown."""

from __future__ import annotations

import logging
import pickle
import socket

import grpc
import pytest

from fleet_actors.adapters.archive.segments import Archive
from fleet_actors.adapters.jetstream.connection import connect_nats, translate_nats_error
from fleet_actors.adapters.neo4j.graph_store import translate_neo4j_error
from fleet_actors.adapters.valkey.context_cache import ContextCache, translate_valkey_error
from fleet_actors.errors import BackendUnavailable, ConfigurationError, StoryError
from fleet_actors.gateway.status_mapping import rpc_failure
from fleet_actors.settings import Settings
from fleet_actors.urls import RedactingFormatter, redact_url, redact_urls_in

SECRET = "pa55-W0rd"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://fleet:pa55-W0rd@nats-1:4222", "nats://***@nats-1:4222"),
        ("nats://pa55-W0rd@nats-1:4222", "nats://***@nats-1:4222"),  # a token as user info
        ("tls://fleet:pa55-W0rd@nats-1:4222", "tls://***@nats-1:4222"),
        ("ws://fleet:pa55-W0rd@nats-1:8080", "ws://***@nats-1:8080"),
        (
            "nats://fleet:pa55-W0rd@nats-0:4222,nats://fleet:pa55-W0rd@nats-1:4222, tls://pa55-W0rd@nats-2:4222",
            "nats://***@nats-0:4222,nats://***@nats-1:4222, tls://***@nats-2:4222",
        ),
        ("redis://:pa55-W0rd@cache:6379/0", "redis://***@cache:6379/0"),
        ("rediss://default:pa55-W0rd@cache:6380/0", "rediss://***@cache:6380/0"),
        ("valkey://:pa55-W0rd@fleet-valkey:6379/0", "valkey://***@fleet-valkey:6379/0"),
        (
            "valkeys://fleet:pa55-W0rd@fleet-valkey:6379/0?ssl_cert_reqs=required",
            "valkeys://***@fleet-valkey:6379/0?ssl_cert_reqs=required",
        ),
        ("bolt://neo4j:pa55-W0rd@graph:7687", "bolt://***@graph:7687"),
        ("bolt+s://neo4j:pa55-W0rd@graph:7687", "bolt+s://***@graph:7687"),
        ("bolt+ssc://neo4j:pa55-W0rd@graph:7687", "bolt+ssc://***@graph:7687"),
        ("neo4j://neo4j:pa55-W0rd@graph:7687/neo4j", "neo4j://***@graph:7687/neo4j"),
        ("neo4j+s://neo4j:pa55-W0rd@x.databases.neo4j.io", "neo4j+s://***@x.databases.neo4j.io"),
        ("s3://AKIAKEY:pa55-W0rd@bucket/events/prefix", "s3://***@bucket/events/prefix"),
        ("http://user:pa55-W0rd@minio:9000/bucket", "http://***@minio:9000/bucket"),
        ("https://user:pa55-W0rd@[::1]:8443/x?y=1#z", "https://***@[::1]:8443/x?y=1#z"),
        # careless passwords: an unescaped @ or / is still hidden whole; percent-escapes too
        ("nats://fleet:pa55@W0rd@nats-1:4222", "nats://***@nats-1:4222"),
        ("redis://:pa55/W0rd@cache:6379", "redis://***@cache:6379"),
        ("nats://fleet:pa55%40W0rd@nats-1:4222", "nats://***@nats-1:4222"),
    ],
)
def test_user_info_is_removed_from_every_url_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url) and "pa55" not in redact_url(url)
    assert redact_url(shown) == shown  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "nats://nats-1:4222,nats://nats-2:4222",
        "valkey://127.0.0.1:6379/0",
        "bolt+s://graph.example.com:7687",
        "s3://bucket/prefix/segments/000000000001-000000001000.parquet",
        "write to ops@example.com or see https://example.com/a?b=c",
        "file:///var/lib/fleet/archive",
        "127.0.0.1:4222",
    ],
)
def test_urls_without_user_info_and_other_text_stay_untouched(text: str) -> None:
    assert redact_urls_in(text) == text


def test_an_at_sign_in_a_path_hides_the_path_too() -> None:
    """Deliberate: "/" is not allowed in user info, but a careless password may hold one, and the two
    cannot be told apart. Hiding a path that holds an "@" is the lesser evil (no name we make has one)."""
    assert redact_urls_in("s3://bucket/prefix/seg@2026.parquet") == "s3://***@2026.parquet"


def test_urls_inside_messages_quotes_and_reprs() -> None:
    text = (
        "cannot open archive 's3://AKIA:pa55-W0rd@bucket/p': denied; "
        'tried ["nats://u:pa55-W0rd@a:4222", (redis://:pa55-W0rd@c:6379)] and <neo4j://n:pa55-W0rd@g>'
    )
    shown = redact_urls_in(text)
    assert SECRET not in shown
    assert shown == (
        "cannot open archive 's3://***@bucket/p': denied; "
        'tried ["nats://***@a:4222", (redis://***@c:6379)] and <neo4j://***@g>'
    )


def test_every_story_error_message_is_redacted_and_stays_so_across_pickling() -> None:
    error = BackendUnavailable(f"cannot reach NATS at nats://fleet:{SECRET}@nats-1:4222: nothing was appended")
    for seen in (error, pickle.loads(pickle.dumps(error))):  # Ray pickles errors from actors to callers
        assert SECRET not in seen.message and SECRET not in str(seen)
        assert "nats://***@nats-1:4222" in seen.message


@pytest.mark.parametrize(
    ("translate", "driver_error"),
    [
        (translate_nats_error, OSError(f"connect to nats://fleet:{SECRET}@nats-1:4222 refused")),
        (translate_valkey_error, OSError(f"Error connecting to valkey://:{SECRET}@cache:6379")),
        (translate_neo4j_error, OSError(f"Couldn't connect to bolt://neo4j:{SECRET}@graph:7687")),
    ],
)
def test_driver_errors_quoting_a_url_are_redacted_when_translated(translate, driver_error) -> None:
    error = translate(driver_error, f"connecting to {redact_url(f'x://u:{SECRET}@h')}")
    assert isinstance(error, StoryError) and SECRET not in error.message


def test_grpc_details_never_carry_credentials() -> None:
    for error in (
        BackendUnavailable(f"cannot reach NATS at nats://fleet:{SECRET}@nats-1:4222"),
        ConfigurationError(f"bad FLEET_VALKEY_URL valkey://:{SECRET}@cache:6379/0"),
    ):
        # even if a message was built around the constructor (the last line of defence)
        error.message = f"{error.message} (nats://fleet:{SECRET}@nats-2:4222)"
        failure = rpc_failure(error)
        assert SECRET not in failure.details and "nats://***@nats-2:4222" in failure.details
    assert rpc_failure(BackendUnavailable(f"nats://fleet:{SECRET}@n:1")).code == grpc.StatusCode.UNAVAILABLE


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_unreachable_nats_is_reported_without_the_password() -> None:
    port = _closed_port()
    url = f"nats://fleet:{SECRET}@127.0.0.1:{port},nats://fleet:{SECRET}@127.0.0.1:{port}"
    with pytest.raises(BackendUnavailable) as raised:
        await connect_nats(Settings(nats_url=url, nats_timeout=0.3))
    assert SECRET not in raised.value.message and f"nats://***@127.0.0.1:{port}" in raised.value.message


async def test_an_unreachable_valkey_is_reported_without_the_password() -> None:
    port = _closed_port()
    with pytest.raises(BackendUnavailable) as raised:
        await ContextCache.connect(Settings(valkey_url=f"valkey://:{SECRET}@127.0.0.1:{port}/0"))
    assert SECRET not in raised.value.message and f"valkey://***@127.0.0.1:{port}/0" in raised.value.message


def test_archive_messages_show_the_url_without_credentials(tmp_path) -> None:
    with pytest.raises(StoryError) as raised:
        Archive(f"nosuchscheme://key:{SECRET}@bucket/prefix", "S")
    assert SECRET not in raised.value.message and "nosuchscheme://***@bucket/prefix" in raised.value.message
    assert Archive(str(tmp_path), "S").display_url == str(tmp_path)


def test_settings_repr_shows_no_credential() -> None:
    settings = Settings(
        nats_url=f"nats://fleet:{SECRET}@n:4222",
        valkey_url=f"valkey://:{SECRET}@v:6379/0",
        neo4j_password=SECRET,
        gateway_token=SECRET,
        archive_url=f"s3://k:{SECRET}@bucket",
    )
    shown = repr(settings)
    assert SECRET not in shown and "nats://***@n:4222" in shown and "neo4j_password='***'" in shown


def test_log_lines_and_tracebacks_are_redacted() -> None:
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise OSError(f"connect to redis://:{SECRET}@cache:6379 failed")
    except OSError as error:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "backend %s down", (f"nats://u:{SECRET}@n:4222",), (OSError, error, None)
        )
    line = formatter.format(record)
    assert SECRET not in line and "nats://***@n:4222" in line and "redis://***@cache:6379" in line
