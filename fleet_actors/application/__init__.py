"""Application layer: runs the pure story rules against the event store. No Ray here."""
