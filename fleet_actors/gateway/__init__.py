"""The gRPC gateway: ``fleet.context.v1.ContextService`` for the fleet's agents (see server.py)."""

from fleet_actors.gateway.server import RunningGateway, gateway_in_thread, run_gateway, serve

__all__ = ["RunningGateway", "gateway_in_thread", "run_gateway", "serve"]
