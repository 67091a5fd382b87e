"""The gateway's RPC metrics and spans, for every method at once: a ``grpc.aio`` server interceptor.

Each finished call counts in ``fleet_gateway_rpcs_total{method, code}`` and its latency (a stream's
whole life) in ``fleet_gateway_rpc_duration_seconds``; with tracing on it runs in a span that
continues a ``traceparent`` the caller sent as metadata, so a command's trace starts at the RPC.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fleet_actors.observability import tracing
from fleet_actors.observability.metrics import metrics

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code: Any = None
    try:
        code = context.code()
    except Exception:  # not every context implements it
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code in _CODES:
        return _CODES[code].name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, BaseException) and type(error).__name__ == "CancelledError" else "UNKNOWN"


def _record(method: str, context: grpc.aio.ServicerContext, error: BaseException | None, started: float) -> None:
    code = _code_name(context, error)
    m = metrics()
    m.rpcs.inc(method, code)
    m.rpc_duration.observe(time.perf_counter() - started, method, code)


class ObservedInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and traces every RPC (health and reflection included)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = tuple(handler_call_details.invocation_metadata or ())
        if handler.response_streaming:
            inner_stream = handler.unary_stream or handler.stream_stream

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                with tracing.rpc_span(method, metadata):
                    try:
                        responses = inner_stream(request, context)
                        if inspect.isawaitable(responses):  # a handler that only aborts, say
                            await responses
                        elif hasattr(responses, "__aiter__"):
                            async for response in responses:
                                yield response
                        else:
                            for response in responses:
                                yield response
                    except BaseException as failure:
                        error = failure
                        raise
                    finally:
                        _record(method, context, error, started)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_unary = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, error = time.perf_counter(), None
            with tracing.rpc_span(method, metadata):
                try:
                    response = inner_unary(request, context)
                    return await response if inspect.isawaitable(response) else response
                except BaseException as failure:
                    error = failure
                    raise
                finally:
                    _record(method, context, error, started)

        make_unary = (
            grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        )
        return make_unary(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
