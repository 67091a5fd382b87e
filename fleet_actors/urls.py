"""Credentials never leave in a URL: the one function that removes user info from URLs in text.

Every server URL the project is given may carry a secret in its user info: ``nats://user:password@``,
``nats://token@``, ``redis://:password@``, ``bolt+s://user:password@``, ``s3://key:secret@``...
Anything the project prints, logs, raises or returns that may hold such a URL goes through
:func:`redact_urls_in`, which replaces the user info with ``***``; the host, port, path and
every other character stay as they were, so a message still says which server failed.

It works on any ``scheme://`` (nats, tls, ws(s), redis, rediss, valkey, valkeys, bolt, bolt+s, bolt+ssc,
neo4j, neo4j+s, s3, http(s), file, ...), on several URLs in one text, and on comma-separated server
lists (each member has its own scheme). User info ends at the last ``@`` before the host, so a
password with an unescaped ``@`` or ``/`` is hidden whole.
"""

from __future__ import annotations

import logging
import re

#: what replaces the user info
MARKER = "***"

# scheme://USERINFO@ where USERINFO runs to the last "@" before whitespace, a quote, a bracket or a
# comma (the separator of server lists). "/", "?" and "#" may not appear unescaped in user info,
# but a careless password may hold them: hiding a path with it is the lesser evil.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\"`<>()\[\]{},]*)@")


def redact_urls_in(text: str) -> str:
    """``text`` with the user info of every URL in it replaced by ``***``.

    >>> redact_urls_in("cannot reach nats://fleet:s3cret@nats-1:4222,nats://fleet:s3cret@nats-2:4222")
    'cannot reach nats://***@nats-1:4222,nats://***@nats-2:4222'
    """
    if "@" not in text:  # the common case costs one scan
        return text
    return _USERINFO.sub(lambda match: f"{match['scheme']}{MARKER}@", text)


def redact_url(url: str) -> str:
    """A URL (or a comma-separated list of them, as ``FLEET_NATS_URL`` may be) fit to show: no user info."""
    return redact_urls_in(url)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments, traceback) never holds a URL's user info."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls_in(super().format(record))
