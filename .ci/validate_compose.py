"""Validates docker-compose.yml against the official Compose Specification JSON schema.

No Docker engine runs in CI, so this (with the compose test in tests/) keeps the file honest.
Usage: python3 .ci/validate_compose.py docker-compose.yml schemas/compose-spec.json
"""
import json
import sys

import jsonschema
import yaml


def main() -> int:
    compose_path, schema_path = sys.argv[1], sys.argv[2]
    with open(compose_path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    for error in errors:
        where = "/".join(str(p) for p in error.path) or "(top level)"
        print(f"{compose_path}: {where}: {error.message}")
    if errors:
        return 1
    print(f"{compose_path} is valid against {schema_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
