"""Archive operations: cutting segments from the stream, retention behind them, export.

The storage itself (Parquet segments, the event store that reads through them) is an adapter:
:mod:`fleet_actors.adapters.archive`.
"""
