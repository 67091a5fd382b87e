"""The raw graph baseline: plain UNWIND MERGE of one node per row, on the same server, same run."""

from __future__ import annotations

import time
import uuid

from fleet_actors.adapters.neo4j import GraphStore
from fleet_actors.settings import Settings

BATCH = 1000


async def raw_unwind_merge_rate(settings: Settings, rows: int) -> float:
    graph = await GraphStore.connect(settings)
    label_tag = uuid.uuid4().hex[:6]
    try:
        await graph.write("CREATE CONSTRAINT raw_bench IF NOT EXISTS FOR (n:RawBench) REQUIRE n.uid IS UNIQUE")
        started = time.perf_counter()
        for first in range(0, rows, BATCH):
            batch = [{"uid": f"{label_tag}-{i}", "v": i, "text": "x" * 60} for i in range(first, first + BATCH)]
            await graph.write("UNWIND $rows AS r MERGE (n:RawBench {uid: r.uid}) SET n.v = r.v, n.text = r.text",
                              rows=batch)  # fmt: skip
        rate = rows / (time.perf_counter() - started)
        while (await graph.query_write("MATCH (n:RawBench) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS c"))[0][
            "c"
        ]:
            pass
        return rate
    finally:
        await graph.close()
