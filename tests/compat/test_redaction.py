"""Item 6: secrets are redacted before they are appended, and in every response carrying stored text
(GetGraphRelationships included: its node properties are stored text too)."""

from __future__ import annotations

import json

from google.protobuf import text_format

from tests.compat.conftest import Compat
from tests.domain.test_redaction import JWT, NEAR_MISSES, PEM

#: one of each kind, as agents paste them into summaries and decisions
SECRETS = {
    "password": "db password=hunter2x",
    "api_key": "key sk-proj-Abcdefghijklmnop1234567890QRSTuv",
    "bearer_token": f"Authorization: Bearer {JWT}",
    "private_key": PEM,
    "connection_string": "postgres://app:Sup3rS3cret@db.internal:5432/orders",
}
LEAKS = ["hunter2x", "Abcdefghijklmnop1234567890", JWT[:24], "MIIEowIBAAKCAQEAx7Hq", "Sup3rS3cret", "TKT-123456"]
SUMMARY = "\n".join([*SECRETS.values(), *NEAR_MISSES, "ticket TKT-123456"])


def text_of(message: object) -> str:
    return text_format.MessageToString(message, as_utf8=True)


def assert_redacted(text: str, *, operator: bool) -> None:
    leaks = LEAKS if operator else LEAKS[:-1]
    assert not [leak for leak in leaks if leak in text]
    for kind in SECRETS:
        assert f"[REDACTED:{kind}]" in text, kind
    if operator:
        assert "[REDACTED:ticket_secret]" in text


async def record(target: Compat) -> str:
    sid = await target.new_story(description="reads go to postgres://reader:R3adOnly9@replica/orders")
    await target.update(
        sid,
        target.change("UPDATE", "SUMMARY", {"summary": SUMMARY}),
        target.change("CREATE", "DECISION", {"title": "Rotate keys", "rationale": "old pwd: s3cr3t!9 leaked"}, "D1"),
        role="architect",
    )
    return sid


async def test_secrets_are_redacted_before_they_are_appended(compat: Compat) -> None:
    sid = await record(compat)
    stored = await compat.client.history(sid)
    created, summary, decision = stored
    assert "R3adOnly9" not in created.payload.description and created.redacted == ("description",)
    assert summary.redacted == ("summary",) and decision.redacted == ("rationale",)
    assert_redacted(summary.payload.summary, operator=False)
    for near_miss in NEAR_MISSES:  # untouched, on the way in too
        assert near_miss in summary.payload.summary
    assert decision.payload.rationale == "old pwd: [REDACTED:password] leaked"
    history = await compat.stub.GetStoryHistory(compat.pb.GetStoryHistoryRequest(story_id=sid))
    assert [list(e.redacted) for e in history.events] == [["description"], ["summary"], ["rationale"]]
    assert "[REDACTED:private_key]" in json.loads(history.events[1].payload_json)["summary"]


async def test_every_response_with_stored_text_is_redacted(strict: Compat) -> None:
    pb, stub = strict.pb, strict.stub
    sid = await record(strict)  # this gateway appends secrets as sent: the log has them
    stored = await strict.client.history(sid)
    assert "hunter2x" in stored[1].payload.summary and stored[1].redacted == ()
    context = await stub.GetContext(pb.GetContextRequest(story_id=sid, role="architect", phase="DESIGN", min_version=3))
    assert "Last summary" in context.context and "Rotate keys" in context.context
    assert "R3adOnly9" not in context.context and "s3cr3t!9" not in context.context
    at_time = await stub.GetContextAtTime(pb.GetContextAtTimeRequest(story_id=sid, role="architect", version=3))
    packs = await stub.RehydrateSession(
        pb.RehydrateSessionRequest(case_id=sid, roles=["architect"], include_summaries=True, include_timeline=True,
                                   min_version=3)
    )  # fmt: skip
    history = await stub.GetStoryHistory(pb.GetStoryHistoryRequest(story_id=sid))
    graph = await stub.GetGraphRelationships(pb.GetGraphRelationshipsRequest(node_id=sid, node_type="Story",
                                                                            min_version=3))  # fmt: skip
    assert "[REDACTED:connection_string]" in graph.node.properties["description"]
    watched = []
    call = stub.WatchStory(pb.WatchStoryRequest(story_id=sid, from_version=1))
    async for event in call:
        watched.append(event)
        if event.version == 3:
            break
    call.cancel()
    for response in (context, at_time, packs, history, *watched[1:2]):
        assert_redacted(text_of(response), operator=True)
    for response in (context, at_time, packs, history, graph, *watched):
        text = text_of(response)
        assert "R3adOnly9" not in text and "s3cr3t!9" not in text
    for near_miss in ("reset your password before logging in", "we use sk-learn for the model"):
        assert near_miss in context.context and near_miss in packs.packs["ARCHITECT"].last_summary
