"""Reads messages the test suite took from the exchange with the CloudEvents Python SDK.

Usage: validate_cloudevents.py SAMPLE_DIR FIXTURE_DIR

Each sample (written by the tests' spy with SHOP_WIRE_SAMPLES set) is one message as it
travelled: body, AMQP content type, message id, type and string headers. Every one must parse
through the SDK's RabbitMQ binding as a valid CloudEvent 1.0 in structured mode, with the shop's
attributes, and the AMQP properties must mirror it. Every event of the catalog (one fixture per
event for the version sent today) must have been seen at least once.
"""

import json
import pathlib
import re
import sys

from cloudevents.core.bindings import rabbitmq
from cloudevents.core.exceptions import CloudEventValidationError

SHOP_TYPE = re.compile(r"^shop\.([A-Za-z0-9]+)\.v([0-9]+)$")


def fail(message: str) -> None:
    print(f"CloudEvents check failed: {message}", file=sys.stderr)
    sys.exit(1)


def read(sample: dict):
    message = rabbitmq.RabbitMQMessage(
        headers=sample["headers"],
        content_type=sample["content_type"],
        body=sample["body"].encode(),
    )
    return rabbitmq.from_rabbitmq_event(message)


def check(path: pathlib.Path, sample: dict) -> str:
    if sample["content_type"] != "application/cloudevents+json":
        fail(f"{path.name}: content type {sample['content_type']!r}")
    try:
        event = read(sample)
    except CloudEventValidationError as error:
        fail(f"{path.name}: not a valid CloudEvent: {error}")
    if event.get_specversion() != "1.0":
        fail(f"{path.name}: specversion {event.get_specversion()}")
    match = SHOP_TYPE.match(event.get_type())
    if not match:
        fail(f"{path.name}: type {event.get_type()!r} is not shop.<Event>.v<n>")
    if not event.get_source().startswith("urn:shop:"):
        fail(f"{path.name}: source {event.get_source()!r}")
    correlation = event.get_extension("correlationid")
    if not correlation or event.get_subject() != correlation:
        fail(f"{path.name}: subject {event.get_subject()!r} is not the order id {correlation!r}")
    if event.get_time() is None or event.get_datacontenttype() != "application/json":
        fail(f"{path.name}: time or datacontenttype missing")
    if not isinstance(event.get_data(), dict):
        fail(f"{path.name}: data is not a JSON object")
    # The AMQP properties mirror the event.
    if sample["message_id"] != event.get_id():
        fail(f"{path.name}: AMQP message_id {sample['message_id']} vs id {event.get_id()}")
    if sample["type"] != event.get_type():
        fail(f"{path.name}: AMQP type {sample['type']} vs type {event.get_type()}")
    # Optional in CloudEvents (a test's hand-made message has none); when present, the AMQP
    # header mirrors it.
    traceparent = event.get_extension("traceparent")
    if sample["headers"].get("traceparent") != traceparent:
        fail(f"{path.name}: traceparent header does not match the attribute")
    return match.group(1)


def main() -> None:
    samples_dir, fixtures_dir = (pathlib.Path(arg) for arg in sys.argv[1:3])
    samples = sorted(samples_dir.glob("*.json"))
    if not samples:
        fail(f"no samples in {samples_dir}")
    seen = set()
    for path in samples:
        seen.add(check(path, json.loads(path.read_text())))

    # The SDK is not a rubber stamp: the same message without its source is refused.
    first = json.loads(samples[0].read_text())
    body = json.loads(first["body"])
    del body["source"]
    try:
        read({**first, "body": json.dumps(body)})
        fail("the SDK accepted a CloudEvent without a source")
    except CloudEventValidationError:
        pass

    # One fixture per event for the version sent today (`<Event>.json`); older versions
    # (`<Event>.v<n>.json`) are still read but no longer sent.
    catalog = {path.stem for path in fixtures_dir.glob("*.json") if "." not in path.stem}
    missing = catalog - seen
    if missing:
        fail(f"never seen on the exchange: {sorted(missing)}")
    print(f"{len(samples)} messages from the exchange are valid CloudEvents 1.0; "
          f"all {len(catalog)} event types seen")


if __name__ == "__main__":
    main()
