"""Reads the OTLP/HTTP trace exports a test run received (one protobuf file each) with the
OpenTelemetry project's own protocol package, and checks that one order made one trace across
the six services (seven, the saga included, when the shop ran orchestrated): a SERVER span for the POST, PRODUCER spans whose parents are the POST or a
CONSUMER span of the same service, and CONSUMER spans each a child of the PRODUCER span that
published the message it handled. Exits non-zero (with what is wrong) otherwise.

Usage: validate_otlp.py <dir with *.pb>
"""

import collections
import copy
import pathlib
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SERVICES = {"orders", "payment", "inventory", "shipping", "notifications", "console"}
# The orchestrated style's trace goes through the saga too.
ORCHESTRATED = SERVICES | {"saga"}


def attributes(pairs):
    return {pair.key: pair.value.WhichOneof("value") and getattr(pair.value, pair.value.WhichOneof("value")) for pair in pairs}


def read(directory):
    spans = []
    files = sorted(pathlib.Path(directory).glob("*.pb"))
    if not files:
        sys.exit(f"no OTLP exports in {directory}")
    for path in files:
        request = ExportTraceServiceRequest()
        request.ParseFromString(path.read_bytes())
        for resource_spans in request.resource_spans:
            service = attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "service": service,
                        "name": span.name,
                        "kind": span.kind,
                        "trace": span.trace_id.hex(),
                        "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "attributes": attributes(span.attributes),
                    })
    return spans


def problems_of(trace):
    """What is wrong with one order's trace (empty when it is right)."""
    problems = []
    by_id = {span["id"]: span for span in trace}
    services = {span["service"] for span in trace}
    expected = ORCHESTRATED if "saga" in services else SERVICES
    if services != expected:
        problems.append(f"services {sorted(services)}, expected {sorted(expected)}")
    servers = [s for s in trace if s["kind"] == Span.SPAN_KIND_SERVER]
    if len(servers) != 1 or servers[0]["service"] != "orders":
        problems.append(f"expected one SERVER span in orders, got {len(servers)}")
    producers = {s["attributes"].get("messaging.message.id"): s
                 for s in trace if s["kind"] == Span.SPAN_KIND_PRODUCER}
    consumers = [s for s in trace if s["kind"] == Span.SPAN_KIND_CONSUMER]
    if not producers or not consumers:
        problems.append("no PRODUCER or no CONSUMER span")
    for producer in producers.values():
        parent = by_id.get(producer["parent"])
        if parent is None or parent["kind"] not in (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CONSUMER) \
                or parent["service"] != producer["service"]:
            problems.append(f"publish {producer['name']} has no SERVER/CONSUMER parent in its service")
        if producer["attributes"].get("messaging.system") != "rabbitmq":
            problems.append(f"publish {producer['name']} lacks messaging.system=rabbitmq")
    for consumer in consumers:
        producer = producers.get(consumer["attributes"].get("messaging.message.id"))
        if producer is None or consumer["parent"] != producer["id"]:
            problems.append(f"{consumer['service']}: {consumer['name']} is not a child of the publish of its message")
        if consumer["attributes"].get("messaging.operation.type") != "process":
            problems.append(f"{consumer['name']} lacks messaging.operation.type=process")
    return problems


def main():
    spans = read(sys.argv[1])
    traces = collections.defaultdict(list)
    for span in spans:
        traces[span["trace"]].append(span)
    # The order's trace is the one with a POST in it.
    orders = [t for t in traces.values() if any(s["kind"] == Span.SPAN_KIND_SERVER for s in t)]
    if not orders:
        sys.exit(f"no trace with a SERVER span among {len(traces)} traces")
    failed = False
    for trace in orders:
        problems = problems_of(trace)
        print(f"trace {trace[0]['trace']}: {len(trace)} spans from "
              f"{len({s['service'] for s in trace})} services: {'ok' if not problems else problems}")
        failed |= bool(problems)
    # Negative control: the same trace with one consumer re-parented must be refused.
    broken = copy.deepcopy(orders[0])
    consumer = next(s for s in broken if s["kind"] == Span.SPAN_KIND_CONSUMER)
    consumer["parent"] = "0" * 16
    if not problems_of(broken):
        sys.exit("the check accepted a consumer span that is not a child of its publish")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
