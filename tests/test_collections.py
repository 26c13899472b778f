"""Collections and filtered /nearest over HTTP, with the real model, FAISS and SQLite: ids stay
inside their collection, and a filtered search returns the exact top k among the matches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from testkit.app import make_settings, wait_ready
from testkit.filters import LABELS, matches, random_filter
from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH, NO_KEY


def upload(client: TestClient, prefix: str, ids: list[str], seeds: list[int], metadata=None):
    data: dict = {"ids": ids}
    if metadata is not None:
        data["metadata"] = [json.dumps(m) for m in metadata]
    files = [("files", (f"{i}.png", png_bytes(s))) for i, s in zip(ids, seeds, strict=True)]
    return client.post(f"{prefix}/images", headers=AUTH, data=data, files=files)


def nearest(client: TestClient, prefix: str, **body) -> list[str]:
    response = client.post(f"{prefix}/nearest", json=body)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_collections_are_listed_created_read_and_refused_clearly(client: TestClient) -> None:
    assert client.get("/collections").json() == {
        "items": [{"name": "default", "count": 0, "index_kind": "flat"}]
    }
    made = client.put("/collections/shoes", headers=AUTH)
    assert made.status_code == 201 and made.json() == {
        "name": "shoes",
        "count": 0,
        "index_kind": "flat",
    }
    assert client.put("/collections/shoes", headers=AUTH).status_code == 200
    assert client.put("/collections/hats", headers=NO_KEY).status_code == 401  # needs a key
    assert [c["name"] for c in client.get("/collections").json()["items"]] == ["default", "shoes"]
    bad = client.put("/collections/no%20spaces", headers=AUTH)
    assert bad.status_code == 422 and "A–Z a–z 0–9 _ -" in bad.json()["error"]["message"]
    assert client.get("/collections/-x/images").status_code == 422
    for response in (
        client.get("/collections/hats"),
        client.get("/collections/hats/images"),
        client.get("/collections/hats/images/a"),
        client.post("/collections/hats/nearest", json={"id": "a"}),
        upload(client, "/collections/hats", ["a"], [1]),
        client.delete("/collections/hats/images/a", headers=AUTH),
        client.delete("/collections/hats", headers=AUTH),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["message"] == "no collection named 'hats'"
    refused = client.delete("/collections/default", headers=AUTH)
    assert refused.status_code == 409 and "always exists" in refused.json()["error"]["message"]


def test_the_same_id_in_two_collections_is_two_images(client: TestClient) -> None:
    client.put("/collections/shoes", headers=AUTH)
    assert upload(client, "", ["a", "b"], [1, 2]).status_code == 201
    made = upload(client, "/collections/shoes", ["a", "c"], [3, 4])
    assert [item["created"] for item in made.json()["items"]] == [True, True]
    assert client.get("/images/a").json()["collection"] == "default"
    shoe = client.get("/collections/shoes/images/a").json()
    assert (
        shoe["collection"] == "shoes" and shoe["sha256"] != client.get("/images/a").json()["sha256"]
    )
    assert client.get("/collections/shoes/images/a/content").content == png_bytes(3)
    assert client.get("/images/c").status_code == 404
    listed = client.get("/collections/shoes/images").json()["items"]
    assert [r["id"] for r in listed] == ["a", "c"]
    vector = client.post("/embed", files=[("files", ("q.png", png_bytes(1)))]).json()
    query = vector["embeddings"][0]
    assert nearest(client, "", vector=query, k=10)[0] == "a"
    assert set(nearest(client, "/collections/shoes", vector=query, k=10)) == {"a", "c"}
    assert set(nearest(client, "/collections/shoes", id="a", k=10)) == {"a", "c"}
    assert client.delete("/collections/shoes/images/a", headers=AUTH).status_code == 204
    assert client.get("/images/a").status_code == 200  # default's a is untouched
    assert nearest(client, "/collections/shoes", vector=query, k=10) == ["c"]
    assert client.get("/collections/shoes").json()["count"] == 1

    assert client.delete("/collections/shoes", headers=AUTH).status_code == 204
    assert client.get("/collections/shoes/images/c").status_code == 404
    assert client.post("/collections/shoes/nearest", json={"vector": query}).status_code == 404
    assert [c["name"] for c in client.get("/collections").json()["items"]] == ["default"]
    assert set(nearest(client, "", vector=query, k=10)) == {"a", "b"}
    client.put("/collections/shoes", headers=AUTH)  # the name again: a new, empty collection
    assert nearest(client, "/collections/shoes", vector=query) == []


N = 2000


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def big(request, artifact: Path, tmp_path_factory) -> Iterator[tuple[TestClient, np.ndarray, list]]:
    """2,000 images with a label and a price, in the collection `big`, and their vectors."""
    settings = make_settings(
        artifact,
        tmp_path_factory.mktemp("big") / "data",
        api_key=API_KEY,
        index_kind=request.param,
        max_images_per_request=500,
    )
    rng = np.random.default_rng(0)
    docs = [{"label": LABELS[i % 5], "price": int(rng.integers(0, 1000))} for i in range(N)]
    for i in (7, 1234, 1999):
        docs[i]["label"] = "rare"
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        client.put("/collections/big", headers=AUTH)
        vectors = []
        for start in range(0, N, 500):
            ids = [f"img{i}" for i in range(start, start + 500)]
            seeds = list(range(start, start + 500))
            made = upload(client, "/collections/big", ids, seeds, docs[start : start + 500])
            assert made.status_code == 201, made.text
            files = [("files", (f"{s}.png", png_bytes(s))) for s in seeds]
            vectors += client.post("/embed", files=files).json()["embeddings"]
        yield client, np.array(vectors, dtype=np.float32), docs


def expected_top_k(vectors: np.ndarray, docs: list, query: np.ndarray, where: dict, k: int):
    allowed = np.array([matches(doc, where) for doc in docs])
    scores = np.where(allowed, vectors @ query, -np.inf)
    return [f"img{i}" for i in np.argsort(-scores, kind="stable")[: min(k, int(allowed.sum()))]]


def test_filtered_nearest_is_the_exact_top_k_among_the_matching_images(big) -> None:
    client, vectors, docs = big
    rng = np.random.default_rng(5)
    for _ in range(50):
        where = random_filter(rng)
        query = vectors[int(rng.integers(N))]
        got = nearest(client, "/collections/big", vector=query.tolist(), k=10, filter=where)
        expected = expected_top_k(vectors, docs, query, where, 10)
        assert got == expected or (  # equal scores may come in either order
            set(got) == set(expected) and len(got) == len(expected)
        ), where


def test_a_filter_matching_three_images_returns_exactly_those_best_first(big) -> None:
    client, vectors, docs = big
    query = vectors[1234]
    got = nearest(client, "/collections/big", id="img1234", k=10, filter={"label": "rare"})
    assert got == expected_top_k(vectors, docs, query, {"label": "rare"}, 10)
    assert got[0] == "img1234" and sorted(got) == ["img1234", "img1999", "img7"]
    multipart = client.post(
        "/collections/big/nearest",
        files=[("file", ("q.png", png_bytes(1234)))],
        data={"k": "10", "filter": '{"label": {"$in": ["rare"]}}'},
    )
    assert [r["id"] for r in multipart.json()["results"]] == got
    page = client.get("/collections/big/images", params={"filter": '{"label": "rare"}', "limit": 2})
    assert [r["id"] for r in page.json()["items"]] == ["img7", "img1234"]
    rest = client.get(
        "/collections/big/images",
        params={"filter": '{"label": "rare"}', "cursor": page.json()["next_cursor"]},
    ).json()
    assert [r["id"] for r in rest["items"]] == ["img1999"] and rest["next_cursor"] is None
    assert client.get("/collections/big/images", params={"filter": '{"label": "x"}'}).json() == {
        "items": [],
        "next_cursor": None,
    }


def test_malformed_filters_get_a_422_that_names_the_bad_part(big) -> None:
    client = big[0]
    for body, names in [
        ({"id": "img1", "filter": {"price": {"$gt": "ten"}}}, "filter.price.$gt must be a number"),
        (
            {"id": "img1", "filter": {"$or": [{"a": 1}, {"b": {"$near": 1}}]}},
            "filter.$or[1].b.$near",
        ),
        ({"id": "img1", "filter": ["label"]}, "filter must be a JSON object"),
    ]:
        response = client.post("/collections/big/nearest", json=body)
        assert response.status_code == 422 and names in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "invalid_filter"
    broken = client.post(
        "/collections/big/nearest",
        files=[("file", ("q.png", png_bytes(1)))],
        data={"filter": "{label: boot}"},
    )
    assert broken.status_code == 422 and "filter is not valid JSON" in broken.text
    listed = client.get("/collections/big/images", params={"filter": '{"label": {"$in": 1}}'})
    assert listed.status_code == 422 and "filter.label.$in must be a list" in listed.text
