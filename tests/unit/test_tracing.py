"""OpenTelemetry traces proxy -> node -> engine, exported over OTLP/HTTP to an in-process
receiver; W3C traceparent carried from the client through both hops."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import pytest

from inferno.net import HttpServer, Request, Response
from inferno.ops.tracing import tracing_wanted
from tests.conftest import start_fake_node, start_plain_gateway
from tests.polling import eventually

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace endpoint: POST /v1/traces with a protobuf body."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.server = HttpServer(self.handle)

    async def handle(self, req: Request) -> Response:
        assert req.path == "/v1/traces" and req.method == "POST"
        msg = ExportTraceServiceRequest.FromString(req.body)
        for rs in msg.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes
                           if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append({"name": s.name, "service": service, "kind": s.kind,
                                       "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                       "parent": s.parent_span_id.hex(), "attrs": attrs,
                                       "start": s.start_time_unix_nano,
                                       "end": s.end_time_unix_nano})
        return Response(200, b"", content_type="application/x-protobuf")


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def test_tracing_is_off_unless_otel_variables_say_so() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "none",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


async def test_off_by_default_nothing_is_traced() -> None:
    gw = await start_plain_gateway()
    try:
        assert gw.tracing is None and gw.api.tracing is None
    finally:
        await gw.drain()


async def test_a_request_is_one_trace_across_proxy_node_and_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = Receiver()
    await receiver.server.start("127.0.0.1", 0)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    gw = await start_plain_gateway()
    node = await start_fake_node(node_id="n1")
    try:
        assert gw.tracing is not None and node.metrics.tracing is not None
        from inferno.api.node import Registration

        gw.pool.upsert(Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                                    metrics_port=node.ops.port, models=["fake-model"],
                                    lease_seconds=30))
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
                json={"model": "fake-model", "max_tokens": 4, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and "[DONE]" in r.text
        await eventually(lambda: len(receiver.spans) >= 3, what="three spans exported")
    finally:
        await node.drain()
        await gw.drain()
        await receiver.server.stop(grace=1)
    spans = {(s["service"], s["name"]): s for s in receiver.spans}
    proxy = spans[("inferno-proxy", "chat fake-model")]
    served = spans[("inferno-node", "chat fake-model")]
    engine = spans[("inferno-node", "generate fake-model")]
    # One trace: the client's span -> proxy -> node -> engine.
    assert {proxy["trace"], served["trace"], engine["trace"]} == {CLIENT_TRACE}
    assert proxy["parent"] == CLIENT_SPAN
    assert served["parent"] == proxy["id"]
    assert engine["parent"] == served["id"]
    for span in (proxy, served, engine):
        a = span["attrs"]
        assert a["gen_ai.request.model"] == "fake-model"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.usage.output_tokens"] == 4
        assert a["gen_ai.usage.input_tokens"] > 0
        assert 0 < a["gen_ai.server.time_to_first_token"] < 5
        assert span["end"] > span["start"]
    assert served["attrs"]["gen_ai.response.finish_reasons"] == ["length"]
    assert proxy["attrs"]["inferno.node"] == "n1"
    assert proxy["attrs"]["http.response.status_code"] == 200
