"""The story aggregate: pure rules with no I/O, no clock and no id generation.

Only the standard library and :mod:`fleet_actors.errors` are imported here.
"""
