"""Every Valkey key fleet-actors uses, in one place.

context:{story_id}                       hash {version, doc}: a story's context document
context:{space}:{story_id}               the same in a key space of its own (ContextDocumentsProjection)
processed:{event_id}                     an event id already projected (TTL)
consumer:{name}:offset                   the last stream sequence a consumer committed
projection:pause:{stream}                the rebuild job that asked the live projectors to pause
projection:paused:{stream}:{consumer}    a consumer's acknowledgement of that pause (TTL)
projector:{stream}:{name}:status         a projector's published status (JSON)
rebuild:{stream}:{job_id}                hash: a rebuild job's end sequence and phase
dlq:{stream}:held / dlq:{stream}:release hashes: stories held for a parked event / release requests
                                         (``dlq:held`` without a stream: before 2026-12, still read)
dlq:{stream}:{projection}:held / :release   the same for a user projection (projections/api.py)
projection:{stream}:registered           hash {projection id: JSON record}: user projections
projection:{stream}:context-documents:active   the documents version readers read (absent: 1)
projection:{stream}:graph:active         the graph version (database) readers read (absent: 1)
projection:{stream}:{id}:versions        hash {story: applied version}: a user projection's checkpoint
projection:{stream}:{id}:progress        hash {worker: JSON progress}: its runners' progress
rehydration:{case_id}                    a persisted RehydrateSession bundle (TTL)
"""

from __future__ import annotations


def context_key(story_id: str, space: str = "") -> str:
    """A story's context document; ``space``: a key space of its own (a documents projection's version)."""
    return f"context:{space}:{story_id}" if space else f"context:{story_id}"


def processed_key(event_id: str) -> str:
    return f"processed:{event_id}"


def offset_key(consumer: str) -> str:
    return f"consumer:{consumer}:offset"


def pause_key(stream: str) -> str:
    return f"projection:pause:{stream}"


def paused_key(stream: str, consumer: str) -> str:
    return f"projection:paused:{stream}:{consumer}"


def status_key(stream: str, projector: str) -> str:
    return f"projector:{stream}:{projector}:status"


def job_key(stream: str, job_id: str) -> str:
    return f"rebuild:{stream}:{job_id}"


def held_key(stream: str, projection: str = "") -> str:
    """The stories held for a parked event: the built-in projectors' (no projection) or a user projection's."""
    return f"dlq:{stream}:{projection}:held" if projection else f"dlq:{stream}:held"


def release_key(stream: str, projection: str = "") -> str:
    return f"dlq:{stream}:{projection}:release" if projection else f"dlq:{stream}:release"


#: the built-in projectors' held stories before the keys named their stream (one stream per deployment
#: then); still read
LEGACY_HELD_KEY = "dlq:held"


def active_version_key(stream: str, read_model: str) -> str:
    """The version of a read model (``context-documents``, ``graph``) readers read (absent: 1, the live one)."""
    return f"projection:{stream}:{read_model}:active"


def written_version_key(stream: str, read_model: str) -> str:
    """The version of a built-in read model the live projectors write (absent: 1; ``projections promote``)."""
    return f"projection:{stream}:{read_model}:written"


def dropped_versions_key(stream: str, read_model: str) -> str:
    """The versions of a built-in read model dropped (a set): never switched to again."""
    return f"projection:{stream}:{read_model}:dropped"


def registered_projections_key(stream: str) -> str:
    return f"projection:{stream}:registered"


def projection_versions_key(stream: str, projection: str) -> str:
    return f"projection:{stream}:{projection}:versions"


def projection_progress_key(stream: str, projection: str) -> str:
    return f"projection:{stream}:{projection}:progress"


def bundle_key(case_id: str) -> str:
    return f"rehydration:{case_id}"
