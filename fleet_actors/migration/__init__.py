"""Adopting event sourcing from an existing context graph: read it, import it as genesis histories, compare.

See docs/migration.md for the runbook (dual write, event-first, full event sourcing).
"""
