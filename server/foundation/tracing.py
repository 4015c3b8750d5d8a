"""OpenTelemetry traces, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (docs/operations.md, "Tracing").

Off (the default), nothing of the SDK is imported, no ``TracerProvider`` is installed and
no library is instrumented: :data:`tracer` is the OpenTelemetry API's proxy, whose spans
are no-ops, and code on a hot path checks :data:`TRACING` before it builds a span or its
attributes. On, :func:`setup_tracing` (once per process: ``create_app`` for a web node, the
worker's start-up) installs the SDK's provider with a batching OTLP/HTTP exporter and
instruments asyncpg, redis-py and httpx (our own HTTP calls and the model SDKs'), and
:func:`shutdown_tracing` flushes what is still queued.

A trace crosses processes as a W3C ``traceparent``: :func:`inject` writes the current
span's into a job's arguments, :func:`extract` reads it back in the worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.foundation.settings import Settings

# Whether this process records spans. Read it as ``tracing.TRACING`` (it changes at set-up).
TRACING = False
# Our own spans' tracer: the API's proxy, which follows the provider once one is installed.
tracer = trace.get_tracer("lounges")

_propagator = TraceContextTextMapPropagator()
_provider: Any = None  # the SDK's TracerProvider, once set up


def setup_tracing(settings: Settings, service: str) -> bool:
    """Install the SDK and the instrumentations when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
    (and ``OTEL_SDK_DISABLED`` is not ``true``); ``service`` names the process's spans unless
    ``OTEL_SERVICE_NAME`` does. Once per process; returns whether tracing is on."""
    global TRACING, _provider
    endpoint = settings.otel_exporter_otlp_endpoint
    if _provider is not None or endpoint is None:
        return TRACING
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # Imported only now: tens of milliseconds and megabytes a process without tracing never pays.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.otel_service_name or service}),
        sampler=_own_roots_only(),
    )
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, when set, wins (the SDK reads it); else <endpoint>/v1/traces.
    traces_endpoint = (
        None if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else endpoint.rstrip("/") + "/v1/traces"
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint)))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)  # Google, Stripe, APNs, FCM
    HTTPX2ClientInstrumentor().instrument(tracer_provider=provider)  # the openai and anthropic SDKs' client
    _provider, TRACING = provider, True
    return True


def shutdown_tracing() -> None:
    """Export what is still queued and stop the exporter (a no-op when tracing is off)."""
    global TRACING
    if _provider is not None and TRACING:
        TRACING = False
        _provider.shutdown()


def _own_roots_only() -> Any:
    """The sampler of ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on), except that a
    database, Redis or HTTP client call with no span above it starts no trace: those are
    background loops (arq's polling, the gateway's sweeps, heartbeats), several per second
    per process, which would bury the traces of what users did."""
    from opentelemetry.sdk.trace import sampling

    class OwnRootsOnly(sampling.Sampler):
        def __init__(self, delegate: sampling.Sampler) -> None:
            self.delegate = delegate

        def should_sample(
            self,
            parent_context: context.Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"OwnRootsOnly{{{self.delegate.get_description()}}}"

    return OwnRootsOnly(sampling._get_from_env_or_default())


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> AbstractContextManager[Span]:
    """A span made current for the ``with`` block (``parent``: a carrier from :func:`inject`,
    e.g. another process's); without tracing, the API's non-recording span, at no cost."""
    if not TRACING:
        return nullcontext(trace.INVALID_SPAN)
    return tracer.start_as_current_span(name, context=extract(parent), kind=kind, attributes=attributes)


def current(span: Span | None) -> AbstractContextManager[Any]:
    """``span`` made current for the block, not ended by it (None: nothing changes). An
    exception leaving the block is recorded on the span."""
    return nullcontext() if span is None else trace.use_span(span, end_on_exit=False)


def inject() -> dict[str, str]:
    """The current span as a W3C ``traceparent`` carrier (empty without tracing or a span)."""
    carrier: dict[str, str] = {}
    if TRACING:
        _propagator.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> context.Context | None:
    """The context a carrier from :func:`inject` names, to parent a span on (None: the current one)."""
    return _propagator.extract(carrier) if carrier else None


def failed(code: str, detail: str = "", span: Span | None = None) -> None:
    """Mark ``span`` (default: the current one) as failed with our stable error ``code``."""
    span = trace.get_current_span() if span is None else span
    if span.is_recording():
        span.set_attribute("lounges.error_code", code)
        span.set_status(StatusCode.ERROR, f"{code}: {detail}" if detail else code)


@contextmanager
def _suppressed() -> Iterator[None]:
    token = context.attach(context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        context.detach(token)


def quiet() -> AbstractContextManager[None]:
    """No spans from the instrumented libraries (asyncpg, Redis, httpx) inside the block: for
    repetitive calls, such as a streamed reply's Redis write per delta, that would swamp a trace."""
    return _suppressed() if TRACING else nullcontext()
