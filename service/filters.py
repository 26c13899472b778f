"""Metadata filters for /nearest and the image list: MongoDB's query operators, as Chroma and
Pinecone users know them, parsed into a small typed tree. A bad filter is refused with a message
that names the bad part by its path (`filter.$and[1].price.$gt`).

    {"label": "boot"}                                  equality (same as {"label": {"$eq": "boot"}})
    {"price": {"$gte": 10, "$lt": 20}}                 every operator on a field must hold
    {"$or": [{"label": "boot"}, {"sale": true}]}       $and / $or take non-empty lists of filters
    {"label": {"$in": ["boot", "sandal"]}, "stock": {"$exists": true}}

The semantics are MongoDB's, over the top-level keys of an image's metadata:
- Several keys in one object, and several operators on one field, must all hold; `{}` matches
  every image.
- Values compared are scalars: strings, numbers, booleans and null. Numbers compare as numbers
  (1 equals 1.0, as 64-bit floats); true is not 1, and "1" is not 1.
- `$gt`, `$gte`, `$lt`, `$lte` take a number and match numeric values only (a string or a
  boolean never matches a range).
- A metadata value that is a list matches when any of its scalar elements does; nested objects
  only count for `$exists`.
- `$ne` and `$nin` match when no value equals: an image without the field matches them.
  `{"f": null}` matches a null f and a missing f.
- `$exists: true` matches images that have the field (whatever its value), `false` the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service import strict_json

Scalar = str | float | int | bool | None

RANGES = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", *RANGES, "$exists")
MAX_DEPTH = 16  # nested $and/$or; deeper is refused rather than recursed into


class FilterError(ValueError):
    """A malformed filter; the message names the bad part."""


@dataclass(frozen=True)
class Equals:
    """`field` equals one of `values` (one value for $eq)."""

    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    field: str
    op: str  # one of RANGES
    bound: float


@dataclass(frozen=True)
class Exists:
    field: str
    present: bool


@dataclass(frozen=True)
class Not:
    """$ne and $nin: the images the inner condition does not match."""

    inner: Equals


@dataclass(frozen=True)
class And:
    parts: tuple[Filter, ...]  # none: every image


@dataclass(frozen=True)
class Or:
    parts: tuple[Filter, ...]


Filter = Equals | Range | Exists | Not | And | Or


def parse_filter(value: Any, path: str = "filter", depth: int = 0) -> Filter:
    """A filter's JSON (already decoded) → its tree, or FilterError naming the bad part."""
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: filters nest at most {MAX_DEPTH} levels deep")
    if not isinstance(value, dict):
        raise FilterError(f"{path} must be a JSON object, not {_kind(value)}")
    parts: list[Filter] = []
    for key, condition in value.items():
        here = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise FilterError(f"{here} must be a non-empty list of filters")
            inner = tuple(
                parse_filter(c, f"{here}[{i}]", depth + 1) for i, c in enumerate(condition)
            )
            parts.append(And(inner) if key == "$and" else Or(inner))
        elif key.startswith("$"):
            raise FilterError(
                f"{here}: unknown operator {key}; a filter's keys are metadata fields, $and or $or"
            )
        elif not key:
            raise FilterError(f"{path}: a field name must not be empty")
        else:
            parts.append(_field(key, condition, here))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def parse_filter_json(text: str, path: str = "filter") -> Filter:
    """A filter sent as JSON text (a multipart field, a query parameter)."""
    try:
        value = strict_json.loads(text, path)
    except strict_json.InvalidJSON as exc:
        raise FilterError(str(exc)) from exc
    return parse_filter(value, path)


def _field(field: str, condition: Any, path: str) -> Filter:
    if not isinstance(condition, dict):
        return Equals(field, (_scalar(condition, path),))
    if not condition:
        raise FilterError(f"{path} must not be an empty object")
    if not all(key.startswith("$") for key in condition):
        raise FilterError(
            f"{path} must be a value (string, number, boolean, null) or an object of operators "
            f"({', '.join(FIELD_OPERATORS)}), not an object with plain keys"
        )
    parts = [_operator(field, op, operand, f"{path}.{op}") for op, operand in condition.items()]
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _operator(field: str, op: str, operand: Any, path: str) -> Filter:
    if op in ("$eq", "$ne"):
        equals = Equals(field, (_scalar(operand, path),))
        return equals if op == "$eq" else Not(equals)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise FilterError(f"{path} must be a list of values, not {_kind(operand)}")
        values = tuple(_scalar(v, f"{path}[{i}]") for i, v in enumerate(operand))
        return Equals(field, values) if op == "$in" else Not(Equals(field, values))
    if op in RANGES:
        if not _is_number(operand):
            raise FilterError(f"{path} must be a number, not {_kind(operand)}")
        return Range(field, op, float(operand))
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(f"{path} must be true or false, not {_kind(operand)}")
        return Exists(field, operand)
    raise FilterError(f"{path}: unknown operator {op}; use one of {', '.join(FIELD_OPERATORS)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value: Any, path: str) -> Scalar:
    if value is None or isinstance(value, str | bool) or _is_number(value):
        return value
    raise FilterError(f"{path} must be a string, number, boolean or null, not {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return {str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
