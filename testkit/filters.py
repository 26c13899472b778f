"""Random metadata filters over labelled docs, and an independent, slow reading of them."""

from __future__ import annotations

import numpy as np

LABELS = ["boot", "shirt", "bag", "coat", "sandal"]


def random_filter(rng: np.random.Generator) -> dict:
    label, other = rng.choice(LABELS, 2, replace=False).tolist()
    price = int(rng.integers(0, 1000))
    kinds = [
        {"label": label},
        {"label": {"$eq": label}},
        {"label": {"$ne": label}},
        {"label": {"$in": [label, other]}},
        {"label": {"$nin": [label, other]}},
        {"price": {"$gt": price}},
        {"price": {"$gte": price}},
        {"price": {"$lt": price}},
        {"price": {"$lte": price}},
        {"price": {"$exists": True}},
        {"$and": [{"label": label}, {"price": {"$lt": price}}]},
        {"$or": [{"label": label}, {"price": {"$gt": price}}]},
    ]
    return kinds[int(rng.integers(len(kinds)))]


def matches(doc: dict, where: dict) -> bool:
    """An independent, slow reading of the filters the tests use."""
    if "$and" in where:
        return all(matches(doc, part) for part in where["$and"])
    if "$or" in where:
        return any(matches(doc, part) for part in where["$or"])
    ((field, condition),) = where.items()
    if not isinstance(condition, dict):
        condition = {"$eq": condition}
    ((op, operand),) = condition.items()
    value = doc.get(field)
    return {
        "$eq": lambda: value == operand,
        "$ne": lambda: value != operand,
        "$in": lambda: value in operand,
        "$nin": lambda: value not in operand,
        "$gt": lambda: value > operand,
        "$gte": lambda: value >= operand,
        "$lt": lambda: value < operand,
        "$lte": lambda: value <= operand,
        "$exists": lambda: (field in doc) == operand,
    }[op]()
