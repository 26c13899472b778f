"""Metadata that one reader accepts and another refuses must never reach the store, and a row
that got there before (an older, lenient lookalike) must never stop the service."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import strict_json
from service.app import create_app
from testkit.app import generation_seq, make_settings, wait_ready, wait_until
from testkit.images import png_bytes
from testkit.server import AUTH

# Each was accepted by `json.loads` at upload and refused by the index's orjson, bricking the
# gallery; the rest are what PostgreSQL's JSONB or orjson's writer refuse.
POISON = {
    "NaN": ('{"p": NaN}', "metadata[0].p is nan"),
    "Infinity": ('{"p": Infinity}', "metadata[0].p is inf"),
    "-Infinity": ('{"p": -Infinity}', "metadata[0].p is -inf"),
    "overflow": ('{"p": 1e400}', "metadata[0].p is inf"),
    "lone surrogate": ('{"p": "\\ud800"}', "metadata[0].p holds a lone surrogate"),
    "surrogate key": ('{"\\udfff": 1}', "the key of metadata[0].\\udfff holds a lone surrogate"),
    "NUL": ('{"p": "a\\u0000b"}', "metadata[0].p holds a NUL"),
    "nested 300": ('{"p": ' + "[" * 300 + "]" * 300 + "}", "nests deeper than 64"),
    "nested 5000": ('{"p": ' + "[" * 5000 + "]" * 5000 + "}", "not valid JSON"),
}


def _upload(client: TestClient, image_id: str, metadata: str, seed: int = 0):
    return client.post(
        "/images",
        files=[("files", (f"{image_id}.png", png_bytes(seed), "image/png"))],
        data={"ids": image_id, "metadata": metadata},
        headers=AUTH,
    )


def _nearest(client: TestClient, seed: int, **fields: str):
    return client.post(
        "/nearest",
        files=[("file", ("q.png", png_bytes(seed), "image/png"))],
        data={"k": "5", **fields},
        headers=AUTH,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@contextmanager
def _app(artifact: Path, data_dir: Path, **overrides: object) -> Iterator[TestClient]:
    app = create_app(make_settings(artifact, data_dir, **overrides))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("name", list(POISON))
def test_poison_metadata_gets_a_422_naming_the_field_and_the_gallery_keeps_serving(
    artifact: Path, data_dir: Path, name: str
) -> None:
    text, message = POISON[name]
    with _app(artifact, data_dir) as client:
        assert _upload(client, "good", '{"p": 1}').status_code == 201
        refused = _upload(client, "bad", text, seed=1)
        assert refused.status_code == 422, refused.text
        assert message in refused.json()["error"]["message"]
        assert client.get("/images/bad", headers=AUTH).status_code == 404
        assert _upload(client, "after", '{"p": 2}', seed=2).status_code == 201
        hits = _nearest(client, seed=2).json()["results"]
        assert hits[0]["id"] == "after"
        filtered = _nearest(client, seed=2, filter='{"p": {"$lt": 2}}').json()["results"]
        assert [hit["id"] for hit in filtered] == ["good"]
    with _app(artifact, data_dir) as client:  # a restart is ready, with nothing lost
        listed = client.get("/images", headers=AUTH).json()["items"]
        assert sorted(item["id"] for item in listed) == ["after", "good"]


@pytest.mark.parametrize("name", ["NaN", "nested 5000"])
def test_poison_in_a_json_filter_or_body_is_a_422(client: TestClient, name: str) -> None:
    text = POISON[name][0]
    assert _nearest(client, seed=0, filter=text).status_code == 422
    body = '{"image": "x", "k": 1, "filter": ' + text + "}"
    sent = client.post(
        "/nearest", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert sent.status_code == 422, sent.text


def _poison_sqlite_row(data_dir: Path, image_id: str, text: str) -> None:
    with sqlite3.connect(data_dir / "gallery.sqlite3") as db:
        assert db.execute("UPDATE images SET metadata = ? WHERE id = ?", (text, image_id)).rowcount


def test_a_poisoned_sqlite_row_is_skipped_logged_and_counted_and_the_rest_serves(
    artifact: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gallery poisoned by an older lookalike: the row went in as `json.dumps` wrote it."""
    with _app(artifact, data_dir) as client:
        for i in range(4):
            assert _upload(client, f"img{i}", json.dumps({"n": i}), seed=i).status_code == 201
    _poison_sqlite_row(data_dir, "img1", json.dumps({"n": float("nan")}))
    shutil.rmtree(data_dir / "generations")  # the index is rebuilt from the rows
    with _app(artifact, data_dir) as client:
        assert client.get("/readyz").json()["index_unreadable"] == 1
        assert "lookalike_unreadable_rows 1.0" in client.get("/metrics", headers=AUTH).text
        assert "'img1' is left out of search" in caplog.text
        ids = [hit["id"] for hit in _nearest(client, seed=1).json()["results"]]
        assert "img1" not in ids and len(ids) == 3
        filtered = _nearest(client, seed=0, filter='{"n": {"$gte": 0}}').json()["results"]
        assert sorted(hit["id"] for hit in filtered) == ["img0", "img2", "img3"]
        record = client.get("/images/img1", headers=AUTH)
        assert record.status_code == 200 and record.json()["metadata"] == {}
        assert client.get("/images/img1/content", headers=AUTH).content == png_bytes(1)
        assert len(client.get("/images", headers=AUTH).json()["items"]) == 4
        assert _upload(client, "img4", '{"n": 4}', seed=4).status_code == 201
        # Re-uploading with valid metadata repairs the row.
        assert _upload(client, "img1", '{"n": 1}', seed=1).status_code == 201
        assert _nearest(client, seed=1).json()["results"][0]["id"] == "img1"
        assert client.get("/readyz").json()["index_unreadable"] == 0


def test_a_generation_holding_a_poisoned_row_is_rebuilt_not_fatal(
    artifact: Path, data_dir: Path
) -> None:
    """A generation whose files say what the store's strict parser refuses (written by hand, or
    damaged) fails its checksum and is written again from the store, which leaves the row out."""
    with _app(artifact, data_dir, compact_after_changes=1) as client:
        for i in range(3):
            assert _upload(client, f"img{i}", json.dumps({"n": i}), seed=i).status_code == 201
        wait_until(lambda: generation_seq(client) == 3)  # all three in the shared files
    _poison_sqlite_row(data_dir, "img2", '{"n": "\\ud800"}')
    (metadata,) = (data_dir / "generations").glob("*/c0/metadata.bin")
    assert b'{"n":2}' in metadata.read_bytes()
    metadata.write_bytes(metadata.read_bytes().replace(b'{"n":2}', b'{"n":"\\ud800"}'))
    with _app(artifact, data_dir) as client:
        assert client.get("/readyz").json()["index_unreadable"] == 1
        assert [hit["id"] for hit in _nearest(client, seed=2).json()["results"]][:1] != ["img2"]
        assert client.get("/images", headers=AUTH).status_code == 200


def test_a_too_deep_postgres_row_is_skipped_and_the_rest_serves(
    artifact: Path, data_dir: Path, postgres
) -> None:
    """JSONB refuses NaN and surrogates, but keeps nesting that orjson cannot write back."""
    url = postgres.new_database()
    with _app(artifact, data_dir, database_url=url) as client:
        for i in range(3):
            assert _upload(client, f"img{i}", json.dumps({"n": i}), seed=i).status_code == 201
    deep = '{"p": ' + "[" * 300 + "]" * 300 + "}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE images SET metadata = %s::jsonb WHERE id = 'img0'", (deep,))
    shutil.rmtree(data_dir / "generations")
    with _app(artifact, data_dir, database_url=url) as client:
        assert client.get("/readyz").json()["index_unreadable"] == 1
        ids = [hit["id"] for hit in _nearest(client, seed=0).json()["results"]]
        assert sorted(ids) == ["img1", "img2"]


# --- property: arbitrary JSON text through upload, list, get, filter and restart --------------

JSON_TEXT = st.one_of(
    st.text(max_size=60),  # anything at all, mostly not JSON
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=12,
    ).map(json.dumps),  # Python's writer: NaN, Infinity, big integers, lone surrogates
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(JSON_TEXT, min_size=1, max_size=6))
def test_any_metadata_text_is_stored_exactly_or_refused_with_a_422(
    artifact: Path, tmp_path_factory: pytest.TempPathFactory, texts: list[str]
) -> None:
    data_dir = tmp_path_factory.mktemp("prop") / "data"
    kept: dict[str, dict] = {}
    with _app(artifact, data_dir) as client:
        for i, text in enumerate(texts):
            answer = _upload(client, f"img{i}", text, seed=i)
            assert answer.status_code in (201, 422), answer.text
            try:
                value = strict_json.loads(text, "metadata")
            except strict_json.InvalidJSON:
                assert answer.status_code == 422
                continue
            assert answer.status_code == (201 if isinstance(value, dict) else 422)
            if isinstance(value, dict):
                kept[f"img{i}"] = value
        _check_served(client, kept)
    with _app(artifact, data_dir) as client:
        _check_served(client, kept)


def _check_served(client: TestClient, kept: dict[str, dict]) -> None:
    listed = client.get("/images", headers=AUTH).json()["items"]
    assert {item["id"]: item["metadata"] for item in listed} == kept
    for image_id, metadata in kept.items():
        assert client.get(f"/images/{image_id}", headers=AUTH).json()["metadata"] == metadata
    hits = _nearest(client, seed=0).json()["results"]
    assert {hit["id"] for hit in hits} <= set(kept)
    assert len(hits) == min(5, len(kept))
    for image_id, metadata in kept.items():
        for field in [name for name in metadata if name and not name.startswith("$")][:2]:
            where = json.dumps({field: {"$exists": True}})
            answer = client.get("/images", params={"filter": where}, headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert image_id in {item["id"] for item in answer.json()["items"]}


@pytest.mark.parametrize("levels", [20, 500, 5000])
def test_a_deeply_nested_filter_is_a_422_on_every_route_that_takes_one(
    client: TestClient, levels: int
) -> None:
    text = '{"$and": [' * levels + '{"p": 1}' + "]}" * levels
    body = '{"id": "x", "filter": ' + text + "}"
    answers = [
        _nearest(client, seed=0, filter=text),
        client.post("/nearest", content=body, headers={"content-type": "application/json"}),
    ]
    if levels <= 20:  # longer does not fit in a URL
        answers.append(client.get("/images", params={"filter": text}))
    for answer in answers:
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]["message"]
        assert "nest" in message or "not valid JSON" in message, message
