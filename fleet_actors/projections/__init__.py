"""Read-model projections: the graph (Neo4j) and the context document (Valkey)."""
