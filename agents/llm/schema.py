"""JSON schemas for structured replies, and parsing replies back into models.

A grammar-constrained small model that may emit an unbounded string or list
keeps emitting it until ``max_tokens`` and the reply is cut (measured with
SmolLM2 on vLLM). So the schema is checked before anything is sent: every
string needs ``maxLength``, every array ``maxItems``, and open-ended values
(``Any``, ``dict``) are refused, each error naming the field's path.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from teachgym.agents.llm.types import LLMCallError

M = TypeVar("M", bound=BaseModel)

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_CONSTRAINING = frozenset(("type", "$ref", "enum", "const", "anyOf", "oneOf", "allOf"))
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def response_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, checked to be bounded, for ``response_format`` / guided decoding.

    Objects with properties get ``additionalProperties: false`` (unless they say otherwise):
    strict OpenAI structured outputs require it, and it keeps a constrained model from
    inventing keys. Raises ValueError naming the first unbounded field.
    """
    schema = copy.deepcopy(model.model_json_schema())
    defs = schema.get("$defs", {})
    _check(schema, defs, model.__name__, frozenset())
    return schema


def _check(node: Any, defs: dict[str, Any], path: str, seen: frozenset[str]) -> None:
    if not isinstance(node, dict) or not _CONSTRAINING.intersection(node):
        if node is False:
            return
        raise ValueError(f"{path}: an unconstrained value (Any) has no length bound; type it")
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith("#/$defs/") or name not in defs:
            raise ValueError(f"{path}: cannot follow $ref {ref!r}")
        if name not in seen:  # a recursive model is checked once, not forever
            _check(defs[name], defs, path, seen | {name})
    if "enum" in node or "const" in node:
        return  # a fixed set of values is bounded whatever its type
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key, ())):
            _check(sub, defs, path if key != "prefixItems" else f"{path}[{i}]", seen)
    types = node.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if "string" in types and "maxLength" not in node:
        raise ValueError(f"{path}: string without maxLength; use Field(max_length=...)")
    if "array" in types:
        if "maxItems" not in node:
            raise ValueError(f"{path}: array without maxItems; use Field(max_length=...)")
        if "items" in node or "prefixItems" not in node:
            _check(node.get("items", {}), defs, f"{path}[]", seen)
    if "object" in types:
        for name, sub in node.get("properties", {}).items():
            _check(sub, defs, f"{path}.{name}", seen)
        extra = node.get("additionalProperties")
        if extra not in (None, False):
            raise ValueError(f"{path}: open-ended mapping (dict); use a model with fixed fields")
        if "properties" in node and extra is None:
            node["additionalProperties"] = False


def parse_reply(model: type[M], text: str) -> M:
    """Parse a reply into ``model``; a ```json fence around it is tolerated because
    unconstrained servers often add one even when asked for bare JSON."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise LLMCallError("malformed_json", f"{err.msg} at char {err.pos}") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise LLMCallError(
            "schema", f"{err.error_count()} error(s): {err.errors()[0]['msg']}"
        ) from err
