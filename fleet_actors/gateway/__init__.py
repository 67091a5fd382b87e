"""The gRPC gateway: ``fleet.context.v1.ContextService`` for the fleet's agents (see server.py)."""

from fleet_actors.gateway.server import RunningGateway, run_gateway, serve

__all__ = ["RunningGateway", "run_gateway", "serve"]
