"""Does a NATS identity administer a stream? The probe behind the least-privilege tests.

The local stack's tests and the multi-node rehearsal (scripts/rehearse_multinode.py) try, as a
role's identity, to delete, purge and edit a stream and to create one; each attempt must be
refused by the server (a permissions violation; the request itself then times out) and change
nothing. An identity that may (``admin``) really deletes, purges or edits: probe a stream you can
lose, or one whose refusal you are testing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StreamConfig

from fleet_actors.settings import Settings

#: the attempts, in the order they are made
STREAM_ADMIN_ATTEMPTS: tuple[str, ...] = ("edit", "purge", "delete", "create")
REFUSED = "refused"


async def attempt_stream_administration(settings: Settings, stream: str, *, timeout: float = 2.0) -> dict[str, str]:
    """As ``settings``' NATS identity (``nats_user`` / ``nats_password``, or a URL's user info), try to
    edit (a new description), purge and delete ``stream`` and to create a stream ``{stream}_PROBE``.

    Returns attempt -> :data:`REFUSED` when the server answered it with a permissions violation, else
    what happened (``allowed``, or the server's answer). The identity must be allowed to read the
    stream's configuration (every role of the project is).
    """
    violations: list[str] = []

    async def note(error: Exception) -> None:
        violations.append(str(error))

    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    nc = await nats.connect(
        servers,
        user=settings.nats_user or None,
        password=settings.nats_password or None,
        connect_timeout=settings.nats_timeout,
        max_reconnect_attempts=3,
        error_cb=note,
    )
    try:
        jsm = nc.jsm(timeout=timeout)
        config = (await jsm.stream_info(stream)).config
        attempts: dict[str, Callable[[], Awaitable[object]]] = {
            "edit": lambda: jsm.update_stream(dataclasses.replace(config, description="edited by a role probe")),
            "purge": lambda: jsm.purge_stream(stream),
            "delete": lambda: jsm.delete_stream(stream),
            "create": lambda: jsm.add_stream(StreamConfig(name=f"{stream}_PROBE", subjects=[f"_probe.{stream}.>"])),
        }
        outcomes = {}
        for name in STREAM_ADMIN_ATTEMPTS:
            seen = len(violations)
            try:
                await attempts[name]()
                outcome = "allowed"
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
                await nc.flush()  # the server's -ERR, if any, precedes its PONG
                outcome = f"no answer ({type(error).__name__}), no permissions violation"
            except nats.js.errors.APIError as error:
                outcome = f"answered: {error.description} (code {error.err_code})"
            new = [text for text in violations[seen:] if "permissions violation" in text.lower()]
            outcomes[name] = REFUSED if new else outcome
        return outcomes
    finally:
        await nc.close()
