"""Structured logs: one JSON object a line, carrying story_id, command_id, event_id and trace_id
where known. ``FLEET_LOG_FORMAT=json`` turns them on for the gateway and the CLI (this formatter)
and for the Ray actors their drivers create (Ray's own JSON encoding, which keeps the same extra
fields, plus Ray's job, worker and actor ids).

Fields come from :func:`bind` (a context variable: the story actor binds the story and command of
the call in hand) and from the current span when tracing is on; a record factory puts them on
every log record of the process, so any formatter, Ray's included, sees them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from fleet_actors.observability import tracing
from fleet_actors.urls import RedactingFormatter, redact_urls_in

#: the fields a record may carry, in the order they are written
CONTEXT_FIELDS = ("story_id", "command_id", "event_id", "trace_id", "span_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("fleet_log_context", default=None)
_installed = False


@contextlib.contextmanager
def bind(**fields: str) -> Iterator[None]:
    """Log records made inside the block carry these fields (on top of any bound outside it)."""
    outer = _context.get()
    token = _context.set({**outer, **fields} if outer else fields)
    try:
        yield
    finally:
        _context.reset(token)


def install_record_context() -> None:
    """Every log record of this process gets the bound fields and the current trace ids (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _context.get()
        if fields:
            for key, value in fields.items():
                setattr(record, key, value)
        ids = tracing.current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return record

    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, source, and the context fields present.

    The keys follow Ray's JSON log encoding (``asctime``, ``levelname``, ``message``, ``filename``,
    ``lineno``, ``process``, ``exc_text``), so actors' and the gateway's lines read alike. No URL's
    credentials reach the output.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "asctime": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "levelname": record.levelname,
            "name": record.name,
            "message": redact_urls_in(record.getMessage()),
            "filename": record.filename,
            "lineno": record.lineno,
            "process": record.process,
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_text"] = redact_urls_in(record.exc_text)
        return json.dumps(line, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT)


def configure_logging(
    log_format: str = "text", *, level: int = logging.INFO, stream: IO[str] | None = None, file: Path | None = None
) -> None:
    """The root logger of the gateway or a CLI command: ``text`` or ``json`` lines on ``stream``
    (default stderr) or appended to ``file``. Leaves a root logger that has handlers alone."""
    install_record_context()
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)


def ray_logging_config(log_format: str) -> Any:
    """``ray.init(logging_config=...)`` for JSON lines from the job's actors (None: Ray's default)."""
    if log_format != "json":
        return None
    import ray

    return ray.LoggingConfig(encoding="JSON", log_level="INFO")
