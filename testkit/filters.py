"""Metadata filters for tests: MongoDB's semantics case by case, random filters over labelled
docs, and an independent, slow reading of them."""

from __future__ import annotations

import numpy as np

LABELS = ["boot", "shirt", "bag", "coat", "sandal"]

# MongoDB's semantics, case by case: labels 1-5 hold SEMANTICS_DOCS; label 6 held {"label": "gone"}
# and was removed. Each case is a filter and the labels it matches.
SEMANTICS_DOCS = {
    1: {"label": "boot", "price": 10, "tags": ["red", "big"]},
    2: {"label": "shirt", "price": 25.5, "sale": True},
    3: {"label": "boot", "price": "cheap", "stock": None},
    4: {"label": "bag", "price": 1, "sale": False, "tags": ["red"]},
    5: {"other": {"nested": 1}},
}

SEMANTICS: list[tuple[dict, set[int]]] = [
    ({}, {1, 2, 3, 4, 5}),
    ({"label": "boot"}, {1, 3}),
    ({"label": {"$eq": "boot"}}, {1, 3}),
    ({"label": {"$ne": "boot"}}, {2, 4, 5}),  # $ne matches images without the field
    ({"label": {"$in": ["bag", "shirt", "none"]}}, {2, 4}),
    ({"label": {"$nin": ["bag", "shirt"]}}, {1, 3, 5}),
    ({"price": 1}, {4}),
    ({"price": 1.0}, {4}),  # numbers compare as numbers
    ({"price": {"$gt": 10}}, {2}),  # "cheap" is not a number: no range matches it
    ({"price": {"$gte": 10}}, {1, 2}),
    ({"price": {"$lt": 10}}, {4}),
    ({"price": {"$lte": 10}}, {1, 4}),
    ({"price": {"$gt": 1, "$lt": 25.5}}, {1}),
    ({"sale": True}, {2}),
    ({"sale": 1}, set()),  # true is not 1
    ({"label": "gone"}, set()),  # removed
    ({"stock": None}, {1, 2, 3, 4, 5}),  # null matches null and missing
    ({"stock": {"$ne": None}}, set()),
    ({"stock": {"$exists": True}}, {3}),
    ({"sale": {"$exists": False}}, {1, 3, 5}),
    ({"other": {"$exists": True}}, {5}),  # a nested object counts only for $exists
    ({"tags": "red"}, {1, 4}),  # a list matches when an element does
    ({"tags": {"$ne": "big"}}, {2, 3, 4, 5}),
    ({"label": "boot", "price": {"$lt": 100}}, {1}),
    ({"$and": [{"label": "boot"}, {"tags": "red"}]}, {1}),
    ({"$or": [{"label": "bag"}, {"sale": True}, {"price": {"$gte": 10}}]}, {1, 2, 4}),
    (
        {"$or": [{"$and": [{"label": "boot"}, {"price": 10}]}, {"other": {"$exists": True}}]},
        {1, 5},
    ),
]


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
