"""Fresh ids for events, decisions and commands: 22 url-safe characters (valid NATS tokens)."""

from __future__ import annotations

import base64
import uuid


def new_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
