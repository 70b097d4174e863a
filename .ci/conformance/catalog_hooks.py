"""What the Orders API's document cannot say, for Schemathesis: the server's own state.

Which SKUs the catalog holds is data (served at GET /products), so the document says only "a
SKU", and an order of made-up SKUs is rightly refused (422 unknown_sku); an Idempotency-Key the
customer already used for another order is rightly refused too (422 idempotency_key_reused).
So the schema-valid orders Schemathesis generates name the catalog's SKUs, and a key it sends
is made that order's own (the key, then a digest of the body): enough orders are placed for the
stateful sequences the document's links describe (place -> read -> timeline -> cancel) to run.
Invalid ones are left exactly as generated.
"""

import hashlib
import json
import os
import urllib.request

import schemathesis
from schemathesis.generation import GenerationMode

_catalog: list[str] = []


def catalog() -> list[str]:
    if not _catalog:
        with urllib.request.urlopen(os.environ["SHOP_ORDERS_URL"] + "/products") as answer:
            _catalog.extend(product["sku"] for product in json.load(answer))
    return _catalog


@schemathesis.hook
def map_case(context, case):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/orders"):
        return case
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    items = case.body.get("items") if isinstance(case.body, dict) else None
    if isinstance(items, list):
        skus = catalog()
        for index, item in enumerate(items):
            if isinstance(item, dict) and isinstance(item.get("sku"), str):
                item["sku"] = skus[index % len(skus)]
    headers = case.headers or {}
    for name, key in list(headers.items()):
        if name.lower() == "idempotency-key" and isinstance(key, str) and key.strip():
            digest = hashlib.sha256(json.dumps(case.body, sort_keys=True).encode()).hexdigest()
            headers[name] = f"{key.strip()[:100]}-{digest[:16]}"
    return case
