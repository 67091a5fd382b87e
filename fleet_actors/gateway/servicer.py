"""``fleet.context.v1.ContextService``: commands go to the story actors, queries read the read models.

Every RPC validates its request first (INVALID_ARGUMENT naming the field), then calls one
backend: the story actors through :class:`~fleet_actors.client.AsyncFleetClient` (commands,
history, temporal queries), :class:`~fleet_actors.application.read_models.ReadModels` (context
and graph), or JetStream (WatchStory). Errors are translated in one place,
:func:`~fleet_actors.gateway.status_mapping.rpc_failure`, by the wrappers below.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from fleet_actors.adapters.jetstream import JetStreamEventStore
from fleet_actors.adapters.valkey import BundleStore
from fleet_actors.application.ids import new_id
from fleet_actors.application.read_models import ContextView, ReadModels
from fleet_actors.client import AsyncFleetClient
from fleet_actors.codec import decode_event
from fleet_actors.codec.collector import collector_paused
from fleet_actors.domain import rules
from fleet_actors.domain.alternatives import alternatives_from
from fleet_actors.domain.commands import AddDecision, ApplyChanges, CreateStory, CreateSubtask, TransitionPhase
from fleet_actors.domain.events import EventEnvelope, PhaseTransitioned, SubtaskCreated
from fleet_actors.domain.redaction import RedactionMemo, patterns_with, redact_value
from fleet_actors.domain.state import StoryState, SubtaskStatus
from fleet_actors.errors import (
    ConcurrencyConflict,
    InvalidCommand,
    Retryable,
    RuleViolation,
    StoryAlreadyExists,
    StoryError,
    StoryNotFound,
)
from fleet_actors.gateway.context_assembly import assemble_context, role_pack, story_event
from fleet_actors.gateway.context_changes import TOOLS_TEXT, locate_change_error, plan_changes, settle
from fleet_actors.gateway.scope_policy import ScopePolicy
from fleet_actors.gateway.status_mapping import rpc_failure
from fleet_actors.proto import context_service_pb2 as pb
from fleet_actors.proto import context_service_pb2_grpc as pb_grpc
from fleet_actors.settings import Settings

log = logging.getLogger(__name__)

#: request metadata: an idempotency key for commands, and who acts
IDEMPOTENCY_KEY = "idempotency-key"
ACTOR_KEY = "fleet-actor"
#: UpdateContext plans against the story's state; another writer in between makes it plan again
UPDATE_ATTEMPTS = 3
#: AddProjectDecision metadata keys the fleet's callers use for the author and the author's role
AUTHOR_KEYS = ("winner", "author", "decided_by")
AUTHOR_ROLE_KEY = "role"
#: read-your-writes waits never exceed this, whatever the deadline
MAX_PROJECTION_WAIT = 10.0
#: answer a little before the caller's deadline, so it gets our status rather than its own
DEADLINE_MARGIN = 0.05
DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000
DEFAULT_TIMELINE_EVENTS = 50
MAX_TIMELINE_EVENTS = 1000
DEFAULT_BUNDLE_TTL = 3600
DEFAULT_GRAPH_DEPTH = 2
MAX_GRAPH_DEPTH = 3
MAX_GRAPH_RELATIONSHIPS = 1000

Request = TypeVar("Request")
Response = TypeVar("Response")


class NodeNotFound(StoryNotFound):
    """A graph node that does not exist (or a node type this graph does not model)."""

    def __init__(self, message: str, *, field: str = "node_id") -> None:
        StoryError.__init__(self, message, field=field)


# --- backends -------------------------------------------------------------------------------


@dataclass
class Backends:
    """Everything the servicer talks to; :meth:`connect` opens it all, :meth:`close` releases it."""

    client: AsyncFleetClient
    read_models: ReadModels
    events: JetStreamEventStore
    bundles: BundleStore

    @classmethod
    async def connect(cls, settings: Settings) -> Backends:
        """Open the read models, JetStream and Valkey connections (Ray must already be joined)."""
        from fleet_actors.composition import open_gateway_stores

        read_models, events, bundles = await open_gateway_stores(settings)
        backends = cls(AsyncFleetClient(settings, OrderedDict()), read_models, events, bundles)
        try:
            await backends.client.open_reads()  # the log for history and temporal reads, before the first
        except BaseException:
            await backends.close()
            raise
        return backends

    async def unreachable(self, timeout: float) -> list[str]:
        """The backends that do not answer within ``timeout`` seconds (JetStream, Valkey, the graph)."""
        checks = {
            "JetStream": self.events.ping(timeout),
            "Valkey": self.read_models.cache.ping(),
            "graph database": self.read_models.graph.ping(),
        }
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(check, timeout) for check in checks.values()), return_exceptions=True
        )
        return [name for name, outcome in zip(checks, outcomes, strict=True) if isinstance(outcome, BaseException)]

    async def close(self) -> None:
        """Release every connection, whatever fails along the way."""
        for closer in (self.client.close, self.read_models.close, self.events.close, self.bundles.close):
            with contextlib.suppress(Exception):
                await closer()


# --- the one error boundary -----------------------------------------------------------------


def _unary(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Run a unary handler within the call's deadline and turn its errors into statuses."""

    @functools.wraps(method)
    async def handler(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            async with asyncio.timeout(context.time_remaining()):
                return await method(self, request, context)
        except Exception as error:  # CancelledError is a BaseException: it propagates
            failure = rpc_failure(error)
        # abort raises: the caller gets the status, never this function's return value
        await context.abort(failure.code, failure.details, failure.trailing_metadata)
        raise AssertionError("context.abort() returned")  # grpc's stubs do not say it never returns

    return handler


def _streaming(
    method: Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    """The same boundary for a server-streaming handler (the deadline is enforced by gRPC itself)."""

    @functools.wraps(method)
    async def handler(self: Any, request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        try:
            async for item in method(self, request, context):
                yield item
            return
        except Exception as error:
            failure = rpc_failure(error)
        await context.abort(failure.code, failure.details, failure.trailing_metadata)

    return handler


# --- GetGraphRelationships: fixed Cypher ----------------------------------------------------

#: node_type -> (label, key property, the type reported on the wire)
_GRAPH_NODE_TYPES = {
    "story": ("Story", "story_id", "Story"),
    "task": ("Subtask", "uid", "Task"),
    "decision": ("Decision", "uid", "Decision"),
}
_WIRE_TYPES = {label: wire for label, _, wire in _GRAPH_NODE_TYPES.values()}
_UNMODELLED_NODE_TYPES = ("project", "epic")


def _graph_node(eid: str, labels: list[str], props: Mapping[str, Any]) -> pb.GraphNode:
    label = labels[0] if labels else ""
    return pb.GraphNode(
        id=_node_id(eid, props),
        labels=labels,
        properties={k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items() if v is not None},
        type=_WIRE_TYPES.get(label, label),
        title=str(props.get("title") or props.get("kind") or ""),
    )


def _node_id(eid: str, props: Mapping[str, Any]) -> str:
    # Our keys, not the database's element ids: they are what callers pass back as node_id.
    return str(props.get("uid") or props.get("story_id") or eid)


def _is_key(name: str) -> bool:
    """Graph properties that are ids (references, never redacted)."""
    return name == "uid" or name.endswith("_id")


# --- small request helpers ------------------------------------------------------------------


def _non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidCommand(f"{field} must not be negative, got {value}", field=field)
    return value


@contextlib.contextmanager
def _request_fields(**renames: str) -> Iterator[None]:
    """Report a command's rejected field under the request's name for it (e.g. subtask_id -> task_id)."""
    try:
        yield
    except StoryError as error:
        if error.field in renames:
            error.field = renames[error.field]
        raise


def _command_options(context: grpc.aio.ServicerContext, default_actor: str = "") -> dict[str, Any]:
    metadata = dict(context.invocation_metadata() or ())
    options: dict[str, Any] = {"actor": rules.check_actor(metadata.get(ACTOR_KEY, default_actor), ACTOR_KEY)}
    key = metadata.get(IDEMPOTENCY_KEY)
    if key is not None:  # sent but empty is refused, like any malformed key (absent: a fresh one)
        options["command_id"] = rules.check_id(key, IDEMPOTENCY_KEY)
    return options


def _page_token(version: int) -> str:
    return base64.urlsafe_b64encode(f"v{version}".encode()).decode()


def _page_start(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if text.startswith("v") and text[1:].isdigit() and int(text[1:]) >= 1:
            return int(text[1:])
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise InvalidCommand("page_token is not one this service issued", field="page_token")


def _parse_iso(text: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidCommand(f"must be an ISO 8601 time, got {text!r:.80}", field=field) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- the service ----------------------------------------------------------------------------


class ContextServicer(pb_grpc.ContextServiceServicer):
    """Implements every RPC of ``fleet.context.v1.ContextService``."""

    #: an UpdateContext timestamp further than this from the server's clock earns a warning
    CLOCK_SKEW_WARNING = 300.0

    def __init__(self, backends: Backends, policy: ScopePolicy, settings: Settings) -> None:
        self._client = backends.client
        self._read_models = backends.read_models
        self._events = backends.events
        self._bundles = backends.bundles
        self._policy = policy
        self._settings = settings
        self._closing = asyncio.Event()
        patterns = self._patterns = patterns_with(settings.redact_patterns)
        #: secret patterns redacted before appending (empty: off) and in responses (empty: off)
        self._append_redaction = patterns if settings.redact_on_append else ()
        self._response_redaction = patterns if settings.redact_responses else ()
        #: a story's states share their values: each is redacted once while they are shown
        self._redacted = RedactionMemo(self._response_redaction)

    def _shown_properties(self, props: Mapping[str, Any]) -> Mapping[str, Any]:
        """A graph node's properties as responses carry them: text values with secrets redacted."""
        if not self._response_redaction:
            return props
        return {
            k: redact_value(v, self._response_redaction)[0] if isinstance(v, str) and not _is_key(k) else v
            for k, v in props.items()
        }

    def _shown(self, value: Any) -> Any:
        """``value`` (a state or an event envelope) as responses carry it: with secrets redacted."""
        if not self._response_redaction:
            return value
        if isinstance(value, EventEnvelope):
            payload, _ = redact_value(value.payload, self._response_redaction)
            if payload is value.payload:
                return value
            return dataclasses.replace(value, payload=payload)
        return self._redacted(value)

    def close(self) -> None:
        """End every WatchStory stream (cleanly, with OK) so that a graceful stop does not wait for them."""
        self._closing.set()

    # -- queries on the read models ----------------------------------------------------------

    async def _view(
        self, story_id: str, min_version: int, context: grpc.aio.ServicerContext, *, fresh: bool = False
    ) -> ContextView:
        """The story from the read models, at least at ``min_version`` (waiting within the deadline).

        ``fresh`` (GetContext, RehydrateSession): without a ``min_version``, at least at the story's head
        when the call came in, waiting up to FLEET_FRESH_READ_TIMEOUT; past it, what is there.
        """
        _non_negative(min_version, "min_version")
        remaining = context.time_remaining()
        budget = MAX_PROJECTION_WAIT if remaining is None else min(MAX_PROJECTION_WAIT, remaining)
        budget = max(0.0, budget - DEADLINE_MARGIN)
        if min_version == 0 and fresh and self._settings.fresh_read_timeout > 0:
            found, head = await self._read_models.fresh_context(
                story_id, self._head_version(story_id), min(budget, self._settings.fresh_read_timeout)
            )
            if found is not None and found.version < head:
                log.info("fresh read of %s served v%s; the head is v%s", story_id, found.version, head)
            view = found if found is not None else await self._from_actor(story_id)
        elif min_version == 0:
            try:
                view = await self._read_models.get_context(story_id)
            except StoryNotFound:
                view = await self._from_actor(story_id)
        else:
            view = await self._read_models.wait_for_projection(story_id, min_version, budget)
        if not view.state.created:
            raise StoryNotFound(story_id)
        return view

    async def _from_actor(self, story_id: str) -> ContextView:
        # Not projected yet is not "does not exist": a story created a moment ago must be found by
        # the agent that created it. The story actor, the source of truth, decides.
        state = await self._client.get_story(story_id)
        return ContextView(story_id, state.version, 0, state)

    async def _head_version(self, story_id: str) -> int:
        """The story's head, or 0 when the log cannot say now: a read then serves the read model as it
        is (it does not depend on NATS being up), and its version says which one it served."""
        try:
            return await self._events.head_version(story_id)
        except Retryable as error:
            log.warning("fresh read of %s without the head: %s", story_id, error.message)
            return 0

    def _context_response(
        self, state: StoryState, role: str, phase: str, subtask_id: str, token_budget: int
    ) -> pb.GetContextResponse:
        scope, notes = self._policy.resolve(role, phase)
        warnings = list(notes)
        if subtask_id and subtask_id not in state.subtasks:
            # The Context Service answers a focus it cannot find; so do we, without the focus.
            warnings.append(
                f"subtask_id {subtask_id!r} not found in story {state.story_id!r}; answered without a focus"
            )
            subtask_id = ""
        with collector_paused():  # a redacted state's copies and the text: thousands of objects, no cycles
            state = self._shown(state)
            assembled = assemble_context(
                state, scope, subtask_id=subtask_id, token_budget=token_budget, tools=TOOLS_TEXT
            )
        return pb.GetContextResponse(
            context=assembled.context,
            token_count=assembled.token_count,
            scopes=assembled.scopes,
            version=str(assembled.version),
            blocks=pb.PromptBlocks(system=assembled.system, context=assembled.context, tools=assembled.tools),
            trimmed_scopes=assembled.trimmed,
            warnings=warnings,
        )

    def _check_context_request(self, story_id: str, role: str, phase: str, subtask_id: str, budget: int) -> None:
        rules.check_id(story_id, "story_id")
        self._policy.resolve(role, phase or "")  # shape only: unknown names are answered, not refused
        if subtask_id:
            rules.check_id(subtask_id, "subtask_id")
        _non_negative(budget, "token_budget")

    @_unary
    async def GetContext(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextResponse:
        """The role/phase-scoped context from the context read model (waiting for ``min_version`` if given)."""
        r = request
        self._check_context_request(r.story_id, r.role, r.phase, r.subtask_id, r.token_budget)
        state = (await self._view(r.story_id, r.min_version, context, fresh=True)).state
        return self._context_response(state, r.role, r.phase or state.phase, r.subtask_id, r.token_budget)

    @_unary
    async def GetContextAtTime(
        self, request: pb.GetContextAtTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextResponse:
        """The context as it was at a time or right after a version, folded from the story's log."""
        r = request
        self._check_context_request(r.story_id, r.role, r.phase, r.subtask_id, r.token_budget)
        point = r.WhichOneof("point")
        if point == "at":
            try:
                at = r.at.ToDatetime(tzinfo=UTC)
            except ValueError as error:
                raise InvalidCommand(str(error), field="at") from None
            state = await self._client.get_story_at(r.story_id, at)
        elif point == "version":
            if r.version < 1:
                raise InvalidCommand(f"version must be at least 1, got {r.version}", field="version")
            state = await self._client.get_story_at(r.story_id, int(r.version))
        else:
            raise InvalidCommand("give the point in time: either at (a timestamp) or version", field="point")
        return self._context_response(state, r.role, r.phase or state.phase, r.subtask_id, r.token_budget)

    @_unary
    async def RehydrateSession(
        self, request: pb.RehydrateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RehydrateSessionResponse:
        """Per-role packs from the context read model, the timeline from the log; optionally persisted."""
        r = request
        case_id = rules.check_id(r.case_id, "case_id")
        requested: dict[str, tuple[str, str]] = {}  # pack key -> the role as sent, and its field
        for i, role in enumerate(r.roles):
            self._policy.resolve(role, "", role_field=f"roles[{i}]")  # shape only: unknown roles are answered
            requested.setdefault(role.strip().upper(), (role, f"roles[{i}]"))
        roles = list(requested) or list(self._policy.agent_roles)
        timeline_events = _non_negative(r.timeline_events, "timeline_events") or DEFAULT_TIMELINE_EVENTS
        timeline_events = min(timeline_events, MAX_TIMELINE_EVENTS)
        ttl = _non_negative(r.ttl_seconds, "ttl_seconds") or DEFAULT_BUNDLE_TTL
        try:
            state = (await self._view(case_id, r.min_version, context, fresh=True)).state
        except StoryNotFound as error:
            error.field = "case_id"
            raise
        timeline = None
        if r.include_timeline:
            # From the log, cut at the read model's version so the timeline matches the packs.
            start = max(1, state.version - timeline_events + 1)
            timeline = [e for e in await self._client.history(case_id, start) if e.version <= state.version]
        state = self._shown(state)
        if timeline is not None:
            timeline = [self._shown(e) for e in timeline]
        packs: dict[str, Any] = {}
        warnings: list[str] = []
        for role in roles:
            given, field = requested.get(role, (role, "role"))
            scope, notes = self._policy.resolve(given, state.phase, role_field=field)
            warnings.extend(notes)
            packs[role] = role_pack(state, scope, include_summaries=r.include_summaries, timeline=timeline)
        response = pb.RehydrateSessionResponse(
            case_id=case_id,
            generated_at_ms=int(time.time() * 1000),
            packs=packs,
            stats=pb.RehydrationStats(
                decisions=len(state.decisions),
                decision_edges=len(state.relations),
                impacts=len(state.impacts),
                events=state.version,
                roles=roles,
            ),
            version=state.version,
            warnings=list(dict.fromkeys(warnings)),
        )
        if r.persist_bundle:
            response.bundle_key = await self._bundles.put(case_id, response.SerializeToString(), ttl)
        return response

    @_unary
    async def ValidateScope(
        self, request: pb.ValidateScopeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateScopeResponse:
        """Compare the scopes an agent uses with the scope policy's for its role and phase."""
        check = self._policy.validate(request.role, request.phase, request.provided_scopes)
        return pb.ValidateScopeResponse(
            allowed=check.allowed, missing=check.missing, extra=check.extra, reason=check.reason
        )

    @_unary
    async def GetGraphRelationships(
        self, request: pb.GetGraphRelationshipsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetGraphRelationshipsResponse:
        """A node and its neighbourhood (depth 1-3) from the graph read model."""
        r = request
        node_type = r.node_type.strip().lower()
        if node_type in _UNMODELLED_NODE_TYPES:
            raise NodeNotFound(
                f"{r.node_type} node {r.node_id!r} not found: this service models stories, tasks and decisions, "
                f"not {r.node_type} nodes",
                field="node_type",
            )
        if node_type not in _GRAPH_NODE_TYPES:
            raise InvalidCommand(
                f"node_type must be Story, Task or Decision (or Project/Epic), got {r.node_type!r:.80}",
                field="node_type",
            )
        node_id = r.node_id
        if node_type in ("task", "decision") and "/" not in node_id:
            node_id = await self._qualified_node_id(node_type, node_id, r.node_type, r.min_version > 0, context)
        story_id = self._graph_story_id(node_type, node_id)
        depth = _non_negative(r.depth, "depth") or DEFAULT_GRAPH_DEPTH
        notes = []
        if depth > MAX_GRAPH_DEPTH:
            notes.append(f"depth {depth} capped at {MAX_GRAPH_DEPTH}")
            depth = MAX_GRAPH_DEPTH
        if r.min_version:
            await self._view(story_id, r.min_version, context)
        root, rows = await self._read_models.graph.neighbourhood(
            node_type, node_id, depth, limit=MAX_GRAPH_RELATIONSHIPS + 1
        )
        if root is None:
            raise NodeNotFound(f"{r.node_type} node {r.node_id!r} not found in the graph")
        if len(rows) > MAX_GRAPH_RELATIONSHIPS:
            notes.append(
                f"more than {MAX_GRAPH_RELATIONSHIPS} relationships; the first {MAX_GRAPH_RELATIONSHIPS} shown"
            )
            rows = rows[:MAX_GRAPH_RELATIONSHIPS]
        shown = self._shown_properties
        node = _graph_node(root["eid"], root["labels"], shown(root["props"]))
        neighbours: dict[str, pb.GraphNode] = {}
        relationships = []
        for row in rows:
            src = _graph_node(row["src"], row["src_labels"], shown(row["src_props"]))
            dst = _graph_node(row["dst"], row["dst_labels"], shown(row["dst_props"]))
            for end in (src, dst):
                if end.id != node.id:
                    neighbours.setdefault(end.id, end)
            relationships.append(
                pb.GraphRelationship(
                    from_node_id=src.id,
                    to_node_id=dst.id,
                    type=row["type"],
                    properties={k: str(v) for k, v in (row["props"] or {}).items()},
                )
            )
        return pb.GetGraphRelationshipsResponse(
            node=node,
            neighbors=[neighbours[k] for k in sorted(neighbours)],
            relationships=relationships,
            success=True,
            message="; ".join(notes),
            version=root["version"] or 0,
        )

    async def _qualified_node_id(
        self, node_type: str, plain_id: str, wire_type: str, wait: bool, context: grpc.aio.ServicerContext
    ) -> str:
        """``{story}/{id}`` for a Task or Decision named by its own id, if exactly one story has it.

        With ``wait`` (the caller sent a ``min_version``, so it just wrote the node) a node the graph
        does not hold yet is looked for again until the projection wait's bound.
        """
        rules.check_id(plain_id, "node_id")
        uids = await self._read_models.graph.qualified_ids(node_type, plain_id, limit=11)
        remaining = context.time_remaining()
        budget = MAX_PROJECTION_WAIT if remaining is None else min(MAX_PROJECTION_WAIT, remaining - DEADLINE_MARGIN)
        deadline, delay = time.monotonic() + budget, 0.01
        while wait and not uids and time.monotonic() + delay < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            uids = await self._read_models.graph.qualified_ids(node_type, plain_id, limit=11)
        if not uids:
            raise NodeNotFound(f"{wire_type} node {plain_id!r} not found in the graph")
        if len(uids) > 1:
            shown = ", ".join(uids[:10]) + (", ..." if len(uids) > 10 else "")
            raise InvalidCommand(
                f"{wire_type} id {plain_id!r} is in several stories; name one as {{story_id}}/{{id}}: {shown}",
                field="node_id",
            )
        return uids[0]

    @staticmethod
    def _graph_story_id(node_type: str, node_id: str) -> str:
        if node_type == "story":
            return rules.check_id(node_id, "node_id")
        story_id, _, local_id = node_id.partition("/")
        if not local_id:
            raise InvalidCommand(
                f"a {node_type} node_id is '{{story_id}}/{{id}}', got {node_id!r:.80}", field="node_id"
            )
        rules.check_id(story_id, "node_id")
        rules.check_id(local_id, "node_id")
        return story_id

    # -- the audit trail ---------------------------------------------------------------------

    @_unary
    async def GetStoryHistory(
        self, request: pb.GetStoryHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStoryHistoryResponse:
        """A page of the story's decoded events, read from the log (and archive) in the gateway."""
        r = request
        story_id = rules.check_id(r.story_id, "story_id")
        limit = min(_non_negative(r.limit, "limit") or DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)
        start = _page_start(r.page_token) if r.page_token else _non_negative(r.from_version, "from_version") or 1
        events = await self._client.history(story_id, start, limit + 1)  # one more: is there a next page?
        page = events[:limit]
        head = await self._events.head_version(story_id)  # no story actor needed (nor activated)
        return pb.GetStoryHistoryResponse(
            events=[story_event(self._shown(e)) for e in page],
            next_page_token=_page_token(page[-1].version + 1) if len(events) > limit else "",
            story_version=head,
        )

    @_streaming
    async def WatchStory(
        self, request: pb.WatchStoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StoryEvent]:
        """The story's events as they are appended (after replaying from ``from_version`` if given)."""
        story_id = rules.check_id(request.story_id, "story_id")
        from_version = _non_negative(request.from_version, "from_version")
        if await self._events.last_sequence(story_id) == 0:
            raise StoryNotFound(story_id)
        watch = await self._events.watch(story_id, from_start=bool(from_version))
        try:
            # The consumer exists from here on: the initial metadata tells the caller so.
            await context.send_initial_metadata(())
            while (data := await watch.next(self._closing)) is not None:
                envelope = decode_event(data)
                if envelope.version >= from_version:
                    yield story_event(self._shown(envelope))
        finally:
            await watch.close()

    # -- commands ----------------------------------------------------------------------------

    async def _event_at(self, story_id: str, version: int) -> EventEnvelope:
        return (await self._client.history(story_id, version, 1))[0]

    async def _submit(self, story_id: str, command: Any, context: grpc.aio.ServicerContext, **options: Any) -> Any:
        """Send a command to its story actor, redacting secrets before they are appended (if on)."""
        return await self._client.submit(
            story_id, command, redaction=self._append_redaction, **{**_command_options(context), **options}
        )

    async def _create_story(
        self, story_id: str, title: str, description: str, initial_phase: str, context: grpc.aio.ServicerContext
    ) -> tuple[str, int]:
        """Create the story; the same story again (same title, description, phase) is not an error.

        Callers re-run with fixed ids (a demo, a retried workflow): a repeated CreateStory with the
        same content answers OK and appends nothing; a different content is ALREADY_EXISTS.
        Returns the story's phase and version."""
        rules.check_id(story_id, "story_id")
        phases = self._policy.story_phases
        phase = phases.canonical(initial_phase or phases.initial, "initial_phase")
        command = CreateStory(title, description, phase)
        try:
            result = await self._submit(story_id, command, context)
        except StoryAlreadyExists:
            state = await self._client.get_story(story_id)
            # Compared as stored: the stored text may have had its secrets redacted on the way in.
            asked = redact_value((title, description), self._patterns)[0]
            if redact_value((state.title, state.description), self._patterns)[0] != asked or (
                len(state.phase_history) == 0 and state.phase != phase
            ):
                raise
            return state.phase, state.version
        return phase, result.version

    @_unary
    async def CreateStory(
        self, request: pb.CreateStoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateStoryResponse:
        """Create the story aggregate (again with the same content: OK, nothing appended; else ALREADY_EXISTS)."""
        r = request
        phase, version = await self._create_story(r.story_id, r.title, r.description, r.initial_phase, context)
        return pb.CreateStoryResponse(context_id=r.story_id, story_id=r.story_id, current_phase=phase, version=version)

    @_unary
    async def InitializeProjectContext(
        self, request: pb.InitializeProjectContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.InitializeProjectContextResponse:
        """The interface's earlier name for CreateStory: same fields, same behaviour."""
        r = request
        phase, version = await self._create_story(r.story_id, r.title, r.description, r.initial_phase, context)
        return pb.InitializeProjectContextResponse(
            context_id=r.story_id, story_id=r.story_id, current_phase=phase, version=version
        )

    @_unary
    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTaskResponse:
        """Create a subtask (its id is generated when ``task_id`` is empty)."""
        r = request
        task_id = r.task_id or new_id()
        command = CreateSubtask(
            task_id, r.title, r.role, r.description, tuple(r.dependencies), r.priority or 3, r.estimated_hours
        )
        with _request_fields(subtask_id="task_id"):
            result = await self._submit(r.story_id, command, context)
        if result.duplicate and not r.task_id:
            # A retried request (same idempotency key) whose id we generated: report the first one's.
            event = await self._event_at(r.story_id, result.version)
            if isinstance(event.payload, SubtaskCreated):
                task_id = event.payload.subtask_id
        return pb.CreateTaskResponse(
            task_id=task_id, story_id=r.story_id, status=SubtaskStatus.PENDING.value, version=result.version
        )

    @_unary
    async def AddProjectDecision(
        self, request: pb.AddProjectDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddProjectDecisionResponse:
        """Record a decision. Its author is ``metadata["winner"]`` (the fleet's deliberations name the
        winning agent there), else ``fleet-actor`` request metadata; ``metadata["role"]`` is the role
        the events are recorded under. The metadata is kept as sent."""
        r = request
        options = _command_options(context)
        metadata = dict(r.metadata)
        author = next((metadata[k].strip() for k in AUTHOR_KEYS if metadata.get(k, "").strip()), "")
        role = metadata.get(AUTHOR_ROLE_KEY, "").strip()
        if role and not options["actor"]:
            options["actor"] = rules.check_text(role, "metadata.role", rules.MAX_SHORT)
        decided_by = author or options["actor"]
        if author and role:
            decided_by = f"{author} ({role})"
        command = AddDecision(
            r.title,
            r.rationale,
            r.decision_type or "ARCHITECTURE",
            None,
            alternatives_from(r.alternatives_considered),
            decided_by[: rules.MAX_SHORT],
            metadata,
        )
        with _request_fields(alternatives="alternatives_considered", decided_by="metadata.winner"):
            result = await self._submit(r.story_id, command, context, actor=options["actor"])
        return pb.AddProjectDecisionResponse(decision_id=result.decision_id or "", version=result.version)

    @_unary
    async def TransitionPhase(
        self, request: pb.TransitionPhaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.TransitionPhaseResponse:
        """Move the story to another phase (``from_phase``, if given, must be its current one)."""
        r = request
        command = TransitionPhase(r.to_phase, r.rationale, from_phase=r.from_phase or None)
        result = await self._submit(r.story_id, command, context)
        event = await self._event_at(r.story_id, result.version)
        return pb.TransitionPhaseResponse(
            story_id=r.story_id,
            current_phase=event.payload.to_phase if isinstance(event.payload, PhaseTransitioned) else "",
            transitioned_at=event.timestamp.isoformat(),
            version=result.version,
        )

    @_unary
    async def UpdateContext(
        self, request: pb.UpdateContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateContextResponse:
        """Apply the request's changes as one atomic batch.

        Each change is mapped onto the story's commands as the fleet's callers send it
        (``context_changes.plan_changes``). A change that cannot be applied is skipped with a
        warning naming ``changes[i]`` and why, and the others are appended together; with
        ``update_context_all_or_nothing`` it fails the request instead (nothing appended)."""
        r = request
        story_id = rules.check_id(r.story_id, "story_id")
        role = rules.check_label(re.sub(r"[\s-]+", "_", r.role.strip()) or "AGENT", "role")
        task_id = rules.check_id(r.task_id, "task_id") if r.task_id else ""
        strict = self._settings.update_context_all_or_nothing
        warnings = []
        if r.timestamp:
            skew = abs((datetime.now(UTC) - _parse_iso(r.timestamp, "timestamp")).total_seconds())
            if skew > self.CLOCK_SKEW_WARNING:
                warnings.append(
                    f"timestamp is {skew:.0f} s away from the server's clock; events carry the server's time"
                )
        if len(r.changes) > rules.MAX_BATCH:
            raise InvalidCommand(f"at most {rules.MAX_BATCH} changes in one request", field="changes")
        if not r.changes and strict:
            raise InvalidCommand("changes must list at least one change", field="changes")
        options = _command_options(context, default_actor=role)
        for attempt in range(UPDATE_ATTEMPTS):
            state = await self._client.get_story(story_id)
            plan = plan_changes(r.changes, state, role=role, task_id=task_id, strict=strict)
            plan = settle(state, plan, phases=self._policy.story_phases, strict=strict)
            if not plan.commands:
                warnings.extend(plan.warnings)
                warnings.append("nothing was appended: no change could be applied" if r.changes else "no changes given")
                return pb.UpdateContextResponse(version=state.version, hash="", warnings=warnings)
            try:
                result = await self._client.submit(
                    story_id,
                    ApplyChanges(tuple(c.command for c in plan.commands)),
                    expected_version=state.version,
                    redaction=self._append_redaction,
                    **options,
                )
            except ConcurrencyConflict:
                if attempt + 1 == UPDATE_ATTEMPTS:
                    raise
                continue  # another writer moved the story between reading and appending: plan again
            except (InvalidCommand, RuleViolation) as error:
                raise locate_change_error(error, plan.commands) from None
            warnings.extend(plan.warnings)
            break
        if result.duplicate:
            warnings.append("these changes were already applied (same idempotency key); nothing new was appended")
        return pb.UpdateContextResponse(
            version=result.version,
            hash=hashlib.sha256("\n".join(result.event_ids).encode()).hexdigest(),
            warnings=warnings,
        )


__all__ = ["Backends", "ContextServicer", "NodeNotFound"]
