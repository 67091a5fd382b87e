"""The pure redaction function: every kind of secret, and near-misses that must stay as they are."""

from __future__ import annotations

import pytest

from fleet_actors.domain.redaction import BUILTIN_PATTERNS, parse_patterns, patterns_with, redact_text
from fleet_actors.errors import ConfigurationError

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx7Hq\nq8o3PwKX\n-----END RSA PRIVATE KEY-----"

#: (text, what must be gone, what must come back)
SECRETS = [
    ("db password=hunter2 now", "hunter2", "db password=[REDACTED:password] now"),
    ('{"password": "hunter2"}', "hunter2", '{"password": "[REDACTED:password]"}'),
    ("pwd: s3cr3t!", "s3cr3t!", "pwd: [REDACTED:password]"),
    ("client_secret='abc123def'", "abc123def", "client_secret='[REDACTED:password]'"),
    ("API_KEY=AKIAxyz12345", "AKIAxyz12345", "API_KEY=[REDACTED:password]"),
    ("key sk-proj-Abcdefghijklmnop1234567890QRSTuv ok", "sk-proj-", "key [REDACTED:api_key] ok"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789", "sk-ant", "[REDACTED:api_key]"),
    (f"Authorization: Bearer {JWT}", JWT[:20], "Authorization: Bearer [REDACTED:bearer_token]"),
    ("bearer 4f9c2a7b1e6d8c3a5f0b9e2d7c4a1f8e", "4f9c2a7b", "bearer [REDACTED:bearer_token]"),
    (f"cookie {JWT}", JWT[:20], "cookie [REDACTED:jwt]"),
    (f"the key:\n{PEM}\nend", "MIIEowIBAAKCAQEAx7Hq", "the key:\n[REDACTED:private_key]\nend"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN (cut off", "MIIEvQ", "[REDACTED:private_key]"),
    ("postgres://app:Sup3rS3cret@db.internal:5432/orders", "Sup3rS3cret",
     "postgres://app:[REDACTED:connection_string]@db.internal:5432/orders"),
    ("MONGO=mongodb+srv://admin:p%40ss@cluster0.x.net/db", "p%40ss",
     "MONGO=mongodb+srv://admin:[REDACTED:connection_string]@cluster0.x.net/db"),
    ("redis://:onlypass9@cache:6379/0", "onlypass9", "redis://:onlypass9@cache:6379/0"),  # see below
]  # fmt: skip

NEAR_MISSES = [
    "Password: must be at least 12 characters",
    "reset your password before logging in",
    "password policy = strict rules",
    "we use sk-learn for the model",
    "sk-learn-pipeline-2024-upgrade-notes",
    "risk-assessment-for-2024-release-plan",
    "the bearer of bad news",
    "Bearer token authentication is used by the API",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B\n-----END PUBLIC KEY-----",
    "postgres://db.example.com:5432/app",
    "https://alice@example.com/profile",
    "http://host:8080/path@x",
    "token_budget=500 tokens",
    "the secret sauce is caching",
    "version 1.2.3 of eyJ-style tokens",
    "password=[REDACTED:password]",
]


@pytest.mark.parametrize(("text", "gone", "expected"), SECRETS[:-1])
def test_every_kind_of_secret_is_replaced_by_its_marker(text: str, gone: str, expected: str) -> None:
    redacted, kinds = redact_text(text)
    assert redacted == expected and gone not in redacted and kinds


def test_a_url_with_an_empty_user_is_left_to_the_operator_patterns() -> None:
    # ":password@" with no user is rare enough (and close enough to "host:port@") not to guess at
    text, _, expected = SECRETS[-1]
    assert redact_text(text) == (expected, ())


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_stay_untouched(text: str) -> None:
    assert redact_text(text) == (text, ())


def test_redacting_twice_changes_nothing_more() -> None:
    once, _ = redact_text(" ".join(text for text, _, _ in SECRETS))
    assert redact_text(once) == (once, ())


def test_operators_extend_the_patterns() -> None:
    patterns = patterns_with('{"ticket_secret": "\\\\bTKT-[0-9]{6}\\\\b", "vault": "vault:(?P<secret>\\\\S+)"}')
    assert patterns[: len(BUILTIN_PATTERNS)] == BUILTIN_PATTERNS
    assert redact_text("use TKT-123456 and vault:abc", patterns) == (
        "use [REDACTED:ticket_secret] and vault:[REDACTED:vault]",
        ("ticket_secret", "vault"),
    )
    assert redact_text("TKT-123456")[0] == "TKT-123456"  # not built in
    for bad in ("[]", '{"x": "("}', '{"bad name": "x"}', "not json"):
        with pytest.raises(ConfigurationError):
            parse_patterns(bad)


def test_a_memo_redacts_states_as_redact_value_does_and_each_shared_value_once():
    from dataclasses import replace
    from datetime import UTC, datetime

    from fleet_actors.domain.redaction import RedactionMemo, redact_value
    from fleet_actors.domain.state import Decision, StoryState, Subtask

    at = datetime(2026, 6, 1, tzinfo=UTC)
    leaky = Subtask("T1", "deploy", "db password=hunter2 now", "DEV", "PENDING", (), 1, 2, at, at)
    clean = Subtask("T2", "docs", "nothing to hide", "DEV", "PENDING", ("T1",), 1, 2, at, at)
    decision = Decision("D1", "ARCH", "keys", "use sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789", (), "a", at, {})
    twin = Subtask("T3", "again", "db password=hunter2 now", "DEV", "PENDING", (), 1, 2, at, at)  # a text seen before
    state = StoryState("S1", 3, True, "t", "password=hunter2", subtasks={"T1": leaky, "T2": clean, "T3": twin},
                       decisions={"D1": decision})  # fmt: skip
    memo = RedactionMemo(BUILTIN_PATTERNS)
    first = memo(state)
    assert first == redact_value(state, BUILTIN_PATTERNS)[0]
    assert "hunter2" not in repr(first) and "sk-ant" not in repr(first)
    assert first.subtasks["T2"] is clean  # nothing to redact: the value itself
    assert first.subtasks["T3"].description == first.subtasks["T1"].description == "db password=[REDACTED:password] now"
    # The next version shares the values it did not change: they come back as they were redacted.
    later = replace(state, version=4, last_summary="token: bearer 4f9c2a7b1e6d8c3a5f0b9e2d7c4a1f8e")
    second = memo(later)
    assert second == redact_value(later, BUILTIN_PATTERNS)[0]
    assert second.subtasks["T1"] is first.subtasks["T1"] and "4f9c2a7b" not in second.last_summary
    assert memo(state) is first


def test_a_memo_returns_a_clean_state_itself_when_its_texts_are_equal_to_ones_seen_as_other_objects():
    """Decoded states carry equal texts as distinct objects; a memo that answered a text with the
    first object it saw made every value holding it look changed, and copied the whole state."""
    from datetime import UTC, datetime

    from fleet_actors.domain.redaction import RedactionMemo
    from fleet_actors.domain.state import StoryState, Subtask

    at = datetime(2026, 6, 1, tzinfo=UTC)

    def text(word: str) -> str:
        return "".join([word, " ", "text"])  # a new object of an equal value, each time

    def subtask(sid: str) -> Subtask:
        return Subtask(sid, text("title"), text("nothing to hide"), "DEV", "PENDING", (), 1, 2, at, at)

    memo = RedactionMemo(BUILTIN_PATTERNS)
    assert memo(StoryState("S1", 2, True, text("t"), subtasks={"T1": subtask("T1")})).title == "t text"
    second = StoryState("S2", 2, True, text("t"), subtasks={"T1": subtask("T1"), "T2": subtask("T2")})
    assert text("t") is not text("t")
    assert memo(second) is second


def test_tuples_of_any_kind_are_redacted_inside():
    from typing import NamedTuple

    from fleet_actors.domain.redaction import RedactionMemo, redact_value

    class Pair(NamedTuple):
        key: str
        value: str

    pair = Pair("db", "password=hunter2")
    assert "hunter2" not in repr(redact_value(pair)[0])
    assert "hunter2" not in repr(RedactionMemo()(pair))
