"""The decision graph read model over Bolt (Neo4j 5 in production, ArcadeDB in local runs)."""

from fleet_actors.adapters.neo4j.graph_store import GraphStore, translate_neo4j_error
from fleet_actors.ports.read_models import GraphApplyResult

__all__ = ["GraphApplyResult", "GraphStore", "translate_neo4j_error"]
