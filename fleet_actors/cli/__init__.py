"""Command line interface: ``fleet-actors COMMAND``, or ``python -m fleet_actors.cli.main COMMAND``.

The parser and the subcommands live in :mod:`fleet_actors.cli.main`; importing this package
stays free of side effects so that ``-m fleet_actors.cli.main`` runs cleanly.
"""
