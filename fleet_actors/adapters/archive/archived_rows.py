"""The archive as a user projection's catch-up source (``ports.checkpoints.ArchivedEvents``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from fleet_actors.adapters.archive.segments import Archive
from fleet_actors.ports.checkpoints import ArchivedRow


class ArchiveRows:
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    async def last_sequence(self) -> int:
        return (await self._archive.manifest()).last_sequence

    async def rows(self, partitions: Sequence[int], after: int, up_to: int) -> AsyncIterator[Sequence[ArchivedRow]]:
        manifest = await self._archive.manifest()
        owned = {str(p) for p in partitions}
        tables = iter(self._archive.iter_tables(manifest, after=after, up_to=up_to))
        while True:
            # One segment at a time off the event loop (Parquet reads block).
            table = await asyncio.to_thread(next, tables, None)
            if table is None:
                return
            sequences = table.column("sequence").to_pylist()
            subjects = table.column("subject").to_pylist()
            mine = [i for i, subject in enumerate(subjects) if subject.rsplit(".", 1)[-1] in owned]
            if not mine:
                continue
            data = table.column("data").take(mine).to_pylist()
            yield [ArchivedRow(sequences[i], subjects[i], raw) for i, raw in zip(mine, data, strict=True)]
