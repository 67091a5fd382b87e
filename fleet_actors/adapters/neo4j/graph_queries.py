"""The Cypher the read side asks of the graph (the writes are in ``graph_mapping``).

Every statement is built once from constant tables: labels, keys and depths never come from a
request, and values are always parameters (the portable Neo4j 5 subset: no APOC).
"""

from __future__ import annotations

#: what ``verify`` compares, per part of a story: one query each, rows as tuples
STORY_PARTS = {
    # every property graph_mapping writes (but the transitions' event version), for `verify`
    "story": "MATCH (s:Story {story_id: $id}) "
    "RETURN s.title AS title, s.description AS description, s.phase AS phase, s.status AS status, "
    "s.version AS version, s.last_summary AS last_summary, s.created_by AS created_by, "
    "s.created_at AS created_at, s.updated_at AS updated_at",
    "subtasks": "MATCH (:Story {story_id: $id})-[:HAS_SUBTASK]->(t:Subtask) "
    "RETURN t.subtask_id AS id, t.title AS title, t.description AS description, t.role AS role, "
    "t.status AS status, t.priority AS priority, t.estimated_hours AS estimated_hours, "
    "t.created_at AS created_at, t.updated_at AS updated_at",
    "subtask_dependencies": "MATCH (:Story {story_id: $id})-[:HAS_SUBTASK]->(t:Subtask)-[:DEPENDS_ON]->(d:Subtask) "
    "RETURN t.subtask_id AS src, d.subtask_id AS dst",
    "decisions": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(d:Decision) "
    "RETURN d.decision_id AS id, d.decision_type AS decision_type, d.title AS title, d.rationale AS rationale, "
    "d.alternatives AS alternatives, d.decided_by AS decided_by, d.decided_at AS decided_at, "
    "d.metadata AS metadata, d.status AS status",
    "decision_relations": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(a:Decision)-[r]->(b:Decision) "
    "RETURN a.decision_id AS src, type(r) AS type, b.decision_id AS dst",
    "impacts": "MATCH (:Story {story_id: $id})-[:HAS_DECISION]->(d:Decision)-[:IMPACTS]->(t:Subtask) "
    "RETURN d.decision_id AS decision, t.subtask_id AS subtask",
    "milestones": "MATCH (:Story {story_id: $id})-[:HAS_MILESTONE]->(m:Milestone) "
    "RETURN m.milestone_id AS id, m.kind AS kind, m.description AS description, m.at AS at, m.actor AS actor",
    "transitions": "MATCH (:Story {story_id: $id})-[:HAS_TRANSITION]->(p:PhaseTransition) "
    "RETURN p.from_phase AS src, p.to_phase AS dst, p.rationale AS rationale, p.at AS at, p.actor AS actor",
}

#: the labels of a story's nodes (all hang off their Story node) and the relationships verify counts
STORY_NODE_LABELS = ("Subtask", "Decision", "PhaseTransition", "Milestone")
CENSUS_QUERIES = {
    "stories": "MATCH (s:Story) RETURN count(s) AS n",
    "nodes": "MATCH (n) WHERE n:Subtask OR n:Decision OR n:PhaseTransition OR n:Milestone RETURN count(n) AS n",
    "edges": "MATCH (a)-[r:HAS_SUBTASK|HAS_DECISION|HAS_TRANSITION|HAS_MILESTONE|DEPENDS_ON|SUPERSEDES|IMPACTS]->(b) "
    "RETURN count(r) AS n",
}
#: story nodes that hang off no Story (nothing of the mapping makes them; a rebuild would not remove them)
ORPHANS = (
    "MATCH (n) WHERE (n:Subtask OR n:Decision OR n:PhaseTransition OR n:Milestone OR n:ContextSnapshot) "
    "AND NOT EXISTS { MATCH (:Story)-->(n) } "
    "RETURN labels(n)[0] AS label, coalesce(n.uid, elementId(n)) AS uid LIMIT $limit"
)
ORPHAN_COUNT = (
    "MATCH (n) WHERE (n:Subtask OR n:Decision OR n:PhaseTransition OR n:Milestone OR n:ContextSnapshot) "
    "AND NOT EXISTS { MATCH (:Story)-->(n) } RETURN count(n) AS n"
)

#: every node of a story hangs off its Story node (see graph_mapping), so one traversal finds them
WIPE_STORIES = """
MATCH (s:Story) WHERE s.story_id IN $ids
OPTIONAL MATCH (s)-[:HAS_SUBTASK|HAS_DECISION|HAS_TRANSITION|HAS_MILESTONE|HAS_SNAPSHOT]->(n)
DETACH DELETE n, s
"""

#: node_type -> (label, key property)
NODE_TYPES = {
    "story": ("Story", "story_id"),
    "task": ("Subtask", "uid"),
    "decision": ("Decision", "uid"),
}
#: a Task or Decision named by its own id alone: where it is
PLAIN_ID_QUERIES = {
    "task": "MATCH (n:Subtask {subtask_id: $id}) RETURN n.uid AS uid ORDER BY uid LIMIT $limit",
    "decision": "MATCH (n:Decision {decision_id: $id}) RETURN n.uid AS uid ORDER BY uid LIMIT $limit",
}
MAX_DEPTH = 3
ROOT_QUERIES = {
    kind: f"MATCH (n:{label} {{{key}: $id}}) OPTIONAL MATCH (s:Story {{story_id: n.story_id}}) "
    "RETURN elementId(n) AS eid, labels(n) AS labels, properties(n) AS props, s.version AS version"
    for kind, (label, key) in NODE_TYPES.items()
}
NEIGHBOURHOOD_QUERIES = {
    (kind, depth): f"MATCH (n:{label} {{{key}: $id}}) MATCH p = (n)-[*1..{depth}]-() "
    "UNWIND relationships(p) AS r WITH DISTINCT r "
    "RETURN elementId(startNode(r)) AS src, labels(startNode(r)) AS src_labels, properties(startNode(r)) AS src_props, "
    "elementId(endNode(r)) AS dst, labels(endNode(r)) AS dst_labels, properties(endNode(r)) AS dst_props, "
    "type(r) AS type, properties(r) AS props LIMIT $limit"
    for kind, (label, key) in NODE_TYPES.items()
    for depth in range(1, MAX_DEPTH + 1)
}
