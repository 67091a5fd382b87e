"""Adapters: the ports implemented with real servers (JetStream, Neo4j, Valkey) and fakes."""
