"""A small JSON-schema validator for the subset the LLM schemas use.

Supported: ``type`` (a name or a list of names), ``enum``, ``const``, ``anyOf``;
objects (``properties``, ``required``, ``additionalProperties`` as a bool or a
schema); arrays (``items``, ``minItems``, ``maxItems``, ``uniqueItems``);
strings (``minLength``, ``maxLength``, ``pattern``); integers and numbers
(``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``).
Other keywords (``$ref``, ``format``, ...) are ignored.

Imports nothing from Django (used by Temporal activities and by ``localllm``).
"""

import json
import re
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate(instance: Any, schema: dict) -> list[str]:
    """Return the errors of ``instance`` against ``schema``, each as ``"$.path: problem"``.

    An empty list means the instance is valid.
    """
    errors: list[str] = []
    _check(instance, schema, "$", errors)
    return errors


def type_name(value: Any) -> str:
    """The JSON type name of a Python value, as used in error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    actual = type_name(value)
    if name == "number":
        return actual in ("integer", "number")
    if name == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == name


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key)}]"


def _check(value: Any, schema: Any, path: str, errors: list[str]) -> None:
    if not isinstance(schema, dict):  # `true` / `{}`-like schemas accept anything
        return

    if "anyOf" in schema:
        branch_errors = [validate(value, branch) for branch in schema["anyOf"]]
        if all(branch_errors):
            closest = min(branch_errors, key=len)
            detail = closest[0].split(": ", 1)[-1] if closest else "no branch matched"
            errors.append(f"{path}: matches no anyOf branch ({detail})")
            return

    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, name) for name in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type_name(value)}")
            return

    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: expected one of {json.dumps(schema['enum'])}, got {json.dumps(value)[:60]}")

    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, errors)


def _check_object(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_child(path, name)}: required property is missing")
    additional = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], _child(path, name), errors)
        elif additional is False:
            errors.append(f"{_child(path, name)}: unexpected property")
        elif isinstance(additional, dict):
            _check(item, additional, _child(path, name), errors)


def _check_array(value: list, schema: dict, path: str, errors: list[str]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: expected at least {schema['minItems']} items, got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: expected at most {schema['maxItems']} items, got {len(value)}")
    if schema.get("uniqueItems"):
        seen: set[str] = set()
        for index, item in enumerate(value):
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                errors.append(f"{_child(path, index)}: duplicate item")
            seen.add(key)
    if "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], _child(path, index), errors)


def _check_string(value: str, schema: dict, path: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: expected at least {schema['minLength']} characters, got {len(value)}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: expected at most {schema['maxLength']} characters, got {len(value)}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: does not match pattern {json.dumps(schema['pattern'])}")


def _check_number(value: float, schema: dict, path: str, errors: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: expected >= {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: expected <= {schema['maximum']}, got {value}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{path}: expected > {schema['exclusiveMinimum']}, got {value}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        errors.append(f"{path}: expected < {schema['exclusiveMaximum']}, got {value}")
