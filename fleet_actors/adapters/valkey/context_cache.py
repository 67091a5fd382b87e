"""Per-story context documents with a version guard, processed event ids and consumer offsets.

Keys (every Valkey key of the project is spelled in ``adapters/valkey/keys.py``)::

    context:{story_id}          hash {version, doc}: the story state (protobuf StoryStateSnapshot, the
                                snapshot encoding), newest version wins
    processed:{event_id}        SET NX with a TTL: an event id already projected (duplicate detection)
    consumer:{name}:offset      the last stream sequence the named consumer committed
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import valkey.asyncio as valkey_async
import valkey.exceptions

from fleet_actors.adapters.valkey.keys import context_key, offset_key, processed_key
from fleet_actors.codec.state import SnapshotEncoder, decode_state, state_from_json
from fleet_actors.domain.state import StoryState
from fleet_actors.errors import BackendError, BackendUnavailable, EventDecodeError, StoryError
from fleet_actors.ports.read_models import ContextDocument, ContextDocuments
from fleet_actors.settings import Settings
from fleet_actors.urls import redact_url

log = logging.getLogger(__name__)

PROCESSED_TTL_SECONDS = 7 * 24 * 3600
#: stories whose last document's encoded values a context cache keeps (the ones being written to)
CONTEXT_ENCODER_STORIES = 64

# Write only if newer: a late or repeated delivery can never move a document backwards.
_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2])
return 1
"""
# One command for a batch's event ids instead of one SET each.
_MARK_PROCESSED = """
for _, key in ipairs(KEYS) do redis.call('SET', key, 1, 'NX', 'EX', ARGV[1]) end
return #KEYS
"""


def translate_valkey_error(error: BaseException, what: str) -> StoryError:
    """The one place Valkey client errors become ours."""
    if isinstance(error, StoryError):
        return error
    if isinstance(error, valkey.exceptions.ConnectionError | valkey.exceptions.TimeoutError | OSError):
        return BackendUnavailable(f"Valkey is unavailable while {what}: {error}")
    return BackendError(f"Valkey failed while {what}: {error}")


@contextlib.contextmanager
def valkey_errors(what: str) -> Iterator[None]:
    """Valkey client errors inside the block as ours."""
    try:
        yield
    except Exception as error:
        raise translate_valkey_error(error, what) from None


def _document(story_id: str, version: int, raw: bytes) -> ContextDocument | None:
    """None for a document this code cannot read: the projector rebuilds it from the log."""
    try:
        if raw[:1] == b"{":  # written as JSON before documents were protobuf (2026-11); still readable
            return ContextDocument(story_id, version, state_from_json(json.loads(raw)))
        return ContextDocument(story_id, version, decode_state(raw)[0])
    except (EventDecodeError, ValueError) as error:
        log.warning("context document of story %s is unreadable (%s); it will be rebuilt", story_id, error)
        return None


def valkey_auth(settings: Settings) -> dict[str, Any]:
    """FLEET_VALKEY_USER / _PASSWORD as client options (user info in the URL wins over them)."""
    auth: dict[str, Any] = {"password": settings.valkey_password} if settings.valkey_password else {}
    if settings.valkey_user:
        auth["username"] = settings.valkey_user
    return auth


def valkey_client(settings: Settings) -> valkey_async.Valkey:
    """A client of the configured Valkey, with FLEET_VALKEY_USER / _PASSWORD (it connects on first use);
    every Valkey client of the project is made here."""
    return valkey_async.Valkey.from_url(
        settings.valkey_url, socket_timeout=5, socket_connect_timeout=5, retry_on_timeout=True, **valkey_auth(settings)
    )


async def connect_valkey(settings: Settings) -> valkey_async.Valkey:
    """A client of the configured Valkey that has answered a ping."""
    client = valkey_client(settings)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        raise translate_valkey_error(error, f"connecting to {redact_url(settings.valkey_url)}") from None
    return client


class ContextCache(ContextDocuments):
    def __init__(self, client: valkey_async.Valkey, *, space: str = "") -> None:
        """``space``: documents kept apart from the live ones (``context:{space}:{story}``)."""
        self._client = client
        self._space = space
        self._set_if_newer = client.register_script(_SET_IF_NEWER)
        self._mark_processed = client.register_script(_MARK_PROCESSED)
        # a story's document is written on every projected batch: re-encode only what changed, or
        # the projector's cost per event grows with the story (and takes CPU from its commands)
        self._encoder = SnapshotEncoder(stories=CONTEXT_ENCODER_STORIES)

    @classmethod
    async def connect(cls, settings: Settings, *, space: str = "") -> ContextCache:
        return cls(await connect_valkey(settings), space=space)

    async def close(self) -> None:
        await self._client.aclose()

    async def drop_stories(self, story_ids: Sequence[str]) -> int:
        """Delete these stories' documents of this key space (a version dropped: the stories of one
        stream, whichever key space; other streams' documents stay). Returns the documents deleted."""
        deleted = 0
        with valkey_errors("dropping context documents"):
            for start in range(0, len(story_ids), 500):
                keys = [context_key(story_id, self._space) for story_id in story_ids[start : start + 500]]
                deleted += await self._client.unlink(*keys)
        return deleted

    async def ping(self) -> None:
        """Raise BackendUnavailable unless Valkey answers."""
        with valkey_errors("pinging Valkey"):
            await self._client.ping()

    async def get_many(self, story_ids: Sequence[str]) -> dict[str, ContextDocument | None]:
        with valkey_errors("reading context documents"):
            async with self._client.pipeline(transaction=False) as pipe:
                for story_id in story_ids:
                    # valkey-py types the keys as one list; it sends any number of positional keys as given
                    pipe.hmget(context_key(story_id, self._space), "version", "doc")  # type: ignore[arg-type]
                rows = await pipe.execute()
        out: dict[str, ContextDocument | None] = {}
        for story_id, (version, doc) in zip(story_ids, rows, strict=True):
            out[story_id] = None if version is None else _document(story_id, int(version), doc)
        return out

    async def versions(self, story_ids: Sequence[str]) -> dict[str, int]:
        """The version of each story's document (stories without one are left out)."""
        with valkey_errors("reading context document versions"):
            async with self._client.pipeline(transaction=False) as pipe:
                for story_id in story_ids:
                    pipe.hget(context_key(story_id, self._space), "version")
                rows = await pipe.execute()
        return {story_id: int(version) for story_id, version in zip(story_ids, rows, strict=True) if version}

    async def commit(
        self,
        states: Iterable[StoryState],
        processed_event_ids: Iterable[str] = (),
        offsets: Mapping[str, int] | None = None,
    ) -> None:
        """One MULTI: newer documents, processed ids and the consumers' offsets land together."""
        with valkey_errors("writing context documents"):
            async with self._client.pipeline(transaction=True) as pipe:
                for state in states:
                    document = self._encoder.encode(state)
                    await self._set_if_newer(
                        keys=[context_key(state.story_id, self._space)], args=[state.version, document], client=pipe
                    )
                processed = [processed_key(event_id) for event_id in processed_event_ids]
                if processed:
                    await self._mark_processed(keys=processed, args=[PROCESSED_TTL_SECONDS], client=pipe)
                for consumer, offset in (offsets or {}).items():
                    pipe.set(offset_key(consumer), offset)
                await pipe.execute()

    async def already_processed(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        with valkey_errors("reading processed event ids"):
            async with self._client.pipeline(transaction=False) as pipe:
                for event_id in event_ids:
                    pipe.exists(processed_key(event_id))
                found = await pipe.execute()
        return {e for e, hit in zip(event_ids, found, strict=True) if hit}

    async def offset(self, consumer: str) -> int | None:
        with valkey_errors("reading a consumer offset"):
            value = await self._client.get(offset_key(consumer))
        return None if value is None else int(value)

    async def delete(self, *keys: str) -> None:
        """Remove keys by name (tests simulate a lost document with it)."""
        with valkey_errors("deleting keys"):
            await self._client.delete(*keys)
