"""The one JSON parser for what requests send and what the gallery stores: strict, so that
whatever it accepts every later reader accepts too (the index, its generations, PostgreSQL's
JSONB, the responses' orjson).

It refuses what Python's `json` lets through and the rest of the service cannot read back:
NaN and ±Infinity, numbers that overflow a double (1e400), lone UTF-16 surrogates ("\\ud800"),
NUL characters (PostgreSQL's JSONB refuses them), and nesting deeper than `MAX_DEPTH`
(orjson writes at most 254 levels). A refusal names the field, as `metadata[0].price`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

MAX_DEPTH = 64  # containers inside containers: far beyond metadata, and filters' 16 levels


class InvalidJSON(ValueError):
    """The text is not JSON the service can keep; the message names the field."""


def loads(text: str | bytes, what: str) -> Any:
    """Parse `text` (named `what` in errors) strictly, or raise InvalidJSON."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(_diagnose(text, what) or f"{what} is not valid JSON: {exc}") from exc
    if not _clean(value, 0):  # the quick walk; the one that names the field only on failure
        raise InvalidJSON(_first_problem(value, what, 0) or f"{what} cannot be kept")
    return value


def dumps(value: Any) -> str:
    """Compact JSON text of a value `loads` returned."""
    return orjson.dumps(value).decode()


def _diagnose(text: str | bytes, what: str) -> str | None:
    """Why orjson refused text that Python's lenient parser reads: the field and the rule."""
    try:
        lenient = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return _first_problem(lenient, what, 0)


def _clean(value: Any, depth: int) -> bool:
    """What orjson let through is clean of NUL characters and over-deep nesting."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(
            "\x00" not in key and _clean(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_clean(item, depth + 1) for item in value)
    return True


def _first_problem(value: Any, path: str, depth: int) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value}: numbers must be finite (send a string or null instead)"
    if isinstance(value, str):
        return _string_problem(value, path)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return f"{path} nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, list):
            children = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        else:
            children = []
            for key, item in value.items():
                here = f"{path}.{key.encode('utf-8', 'backslashreplace').decode()}"
                if problem := _string_problem(key, f"the key of {here}"):
                    return problem
                children.append((here, item))
        for here, item in children:
            if problem := _first_problem(item, here, depth + 1):
                return problem
    return None


def _string_problem(text: str, path: str) -> str | None:
    if "\x00" in text:
        return f"{path} holds a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path} holds a lone surrogate (an unpaired \\ud800–\\udfff escape)"
    return None
