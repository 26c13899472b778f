"""The HTTP contract through TestClient: embeddings, similarity, gallery, auth, bad input."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.batcher import Overloaded
from service.fashion_mnist import load_split
from service.imaging import InputSpec, decode_image
from testkit.app import generation_seq, make_settings, wait_ready, wait_until
from testkit.hostile_corpus import encode
from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH, NO_KEY

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "fashion-mnist"


def _files(*blobs: bytes, field: str = "files") -> list:
    return [(field, (f"img{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


def _direct_onnx(artifact: Path, blobs: list[bytes]) -> np.ndarray:
    spec = InputSpec(channels=1, height=28, width=28, colour_mode="L")
    pixels = np.stack([decode_image(b, spec) for b in blobs]).transpose(0, 3, 1, 2)
    session = ort.InferenceSession(str(artifact / "encoder.onnx"))
    return session.run(None, {"images": pixels.astype(np.float32) / 255})[0]


def test_embed_equals_onnx_runtime_for_multipart_base64_and_raw(
    client: TestClient, artifact: Path
) -> None:
    blobs = [png_bytes(i) for i in range(3)]
    expected = _direct_onnx(artifact, blobs)
    multipart = client.post("/embed", files=_files(*blobs)).json()
    b64 = client.post("/embed", json={"images": [base64.b64encode(b).decode() for b in blobs]})
    raw = client.post("/embed", content=blobs[0], headers={"Content-Type": "image/png"})
    assert multipart["dim"] == expected.shape[1]
    np.testing.assert_allclose(multipart["embeddings"], expected, atol=1e-5)
    np.testing.assert_allclose(b64.json()["embeddings"], expected, atol=1e-5)
    np.testing.assert_allclose(raw.json()["embeddings"], expected[:1], atol=1e-5)
    assert multipart["model"] == json.loads((artifact / "model.json").read_text())["version"]


def test_similarity_is_symmetric_with_a_unit_diagonal(client: TestClient) -> None:
    response = client.post("/similarity", files=_files(*(png_bytes(i) for i in range(4))))
    scores = np.array(response.json()["scores"])
    assert scores.shape == (4, 4)
    np.testing.assert_allclose(scores, scores.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(scores), 1.0)
    assert (scores <= 1).all() and (scores >= -1).all()


def test_upload_search_replace_and_delete(client: TestClient) -> None:
    blobs = [png_bytes(i) for i in range(6)]
    response = client.post(
        "/images",
        files=_files(*blobs),
        headers=AUTH,
        data={
            "ids": [f"item-{i}" for i in range(6)],
            "metadata": [json.dumps({"label": f"L{i}"}) for i in range(6)],
        },
    )
    assert response.status_code == 201
    assert response.json()["items"] == [{"id": f"item-{i}", "created": True} for i in range(6)]
    hits = client.post("/nearest", files=_files(blobs[4], field="file"), data={"k": "3"}).json()
    assert hits["results"][0] == {
        "id": "item-4",
        "score": pytest.approx(1.0, abs=1e-5),
        "metadata": {"label": "L4"},
    }
    assert len(hits["results"]) == 3
    # The same id again replaces the image.
    again = client.post("/images", files=_files(blobs[5]), data={"ids": "item-4"}, headers=AUTH)
    assert again.json()["items"] == [{"id": "item-4", "created": False}]
    by_vector = client.post("/nearest", json={"id": "item-4", "k": 2}).json()["results"]
    assert by_vector[0]["id"] in ("item-4", "item-5")
    assert client.get("/images/item-4").json()["metadata"] == {}
    assert client.get("/images/item-4/content").content == blobs[5]
    assert client.delete("/images/item-4", headers=AUTH).status_code == 204
    assert client.get("/images/item-4").status_code == 404
    ids = [
        r["id"] for r in client.post("/nearest", json={"id": "item-0", "k": 10}).json()["results"]
    ]
    assert "item-4" not in ids and len(ids) == 5
    assert client.get("/readyz").json()["indexed"] == 5


def test_avif_and_heic_embed_like_the_same_png_and_upload(tmp_path: Path) -> None:
    # Fashion-MNIST pictures at 112×112 (phone photos are larger still) through the shipped
    # model: lossy AVIF and HEIC copies land where the lossless PNG does.
    pictures = [
        Image.fromarray(pixels[:, :, 0]).resize((112, 112), Image.Resampling.BICUBIC).convert("RGB")
        for pixels in load_split("test")[0][:8]
    ]
    blobs = {fmt: [encode(p, fmt) for p in pictures] for fmt in ("PNG", "AVIF", "HEIF")}
    settings = make_settings(SHIPPED_MODEL, tmp_path / "data", api_key=API_KEY)
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        vectors = {
            fmt: np.array(client.post("/embed", files=_files(*b)).json()["embeddings"])
            for fmt, b in blobs.items()
        }
        for fmt, mime in (("AVIF", "image/avif"), ("HEIF", "image/heif")):
            cosines = (vectors[fmt] * vectors["PNG"]).sum(axis=1)
            assert cosines.min() >= 0.98, (fmt, cosines)
            upload = client.post(
                "/images", files=_files(blobs[fmt][0]), data={"ids": fmt}, headers=AUTH
            )
            assert upload.status_code == 201, upload.text
            content = client.get(f"/images/{fmt}/content")
            assert content.content == blobs[fmt][0] and content.headers["content-type"] == mime


def test_list_is_paginated_with_a_cursor(client: TestClient) -> None:
    client.post("/images", files=_files(*(png_bytes(i) for i in range(5))), headers=AUTH)
    first = client.get("/images", params={"limit": 2}).json()
    second = client.get("/images", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/images", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    seen = [i["id"] for page in (first, second, third) for i in page["items"]]
    assert len(seen) == 5 == len(set(seen))
    assert third["next_cursor"] is None


def test_writes_without_the_key_get_401(client: TestClient) -> None:
    upload = client.post("/images", files=_files(png_bytes(0)), headers=NO_KEY)
    assert upload.status_code == 401
    assert upload.json()["error"]["code"] == "unauthorized"
    wrong = client.delete("/images/x", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.get("/readyz").json()["images"] == 0


def _png(width: int, height: int, idat: bytes) -> bytes:
    """A grayscale PNG built by hand, so its header can claim any size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_with_header(width: int, height: int) -> bytes:
    return _png(width, height, zlib.compress(b"\x00" * 64))


def _bomb_png() -> bytes:
    # 12000×12000 of zeros compresses to ~140 kB but decodes to 144 MB: over the pixel limit.
    return _png(12000, 12000, zlib.compress(b"\x00" * (12000 + 1) * 12000, 9))


def _ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="ICO")
    return buffer.getvalue()


BAD_INPUTS = [
    (
        "text sent as an image",
        "/embed",
        {"files": [("files", ("a.png", b"hello world", "image/png"))]},
        422,
    ),
    ("an empty file", "/embed", {"files": [("files", ("a.png", b"", "image/png"))]}, 422),
    (
        "a truncated PNG",
        "/embed",
        {"files": [("files", ("a.png", png_bytes(1, (64, 64))[:120], "image/png"))]},
        422,
    ),
    (
        "a decompression bomb",
        "/embed",
        {"files": [("files", ("bomb.png", _bomb_png(), "image/png"))]},
        413,
    ),
    (
        "a 30000×30000 header",
        "/embed",
        {"files": [("files", ("big.png", _png_with_header(30000, 30000), "image/png"))]},
        413,
    ),
    (
        "a disallowed format",
        "/embed",
        {"files": [("files", ("a.ico", _ico_bytes(), "image/x-icon"))]},
        415,
    ),
    ("bad base64", "/embed", {"json": {"images": ["not base64!!"]}}, 422),
    ("k of zero", "/nearest", {"json": {"vector": [1.0] * 128, "k": 0}}, 422),
    ("k over the limit", "/nearest", {"json": {"vector": [1.0] * 128, "k": 10**6}}, 422),
    ("a wrong vector length", "/nearest", {"json": {"vector": [1.0, 2.0], "k": 3}}, 422),
    ("another model's vector", "/nearest", {"json": {"vector": [1.0] * 128, "model": "v0"}}, 409),
    ("a model with an id", "/nearest", {"json": {"id": "x", "model": "v0"}}, 422),
    ("a model that is no string", "/nearest", {"json": {"vector": [1.0] * 128, "model": 7}}, 422),
    ("an unknown id", "/nearest", {"json": {"id": "nobody", "k": 3}}, 404),
    (
        "bad metadata JSON",
        "/images",
        {
            "files": [("files", ("a.png", png_bytes(1), "image/png"))],
            "data": {"metadata": "{oops"},
            "headers": AUTH,
        },
        422,
    ),
    (
        "a bad id",
        "/images",
        {
            "files": [("files", ("a.png", png_bytes(1), "image/png"))],
            "data": {"ids": "../etc"},
            "headers": AUTH,
        },
        422,
    ),
    ("no images", "/embed", {"json": {"images": []}}, 422),
    (
        "one image for similarity",
        "/similarity",
        {"json": {"images": [base64.b64encode(png_bytes(1)).decode()]}},
        422,
    ),
    (
        "a wrong content type",
        "/embed",
        {"content": b"abc", "headers": {"Content-Type": "text/plain"}},
        415,
    ),
    (
        "malformed JSON",
        "/embed",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        422,
    ),
    (
        "malformed multipart",
        "/nearest",
        {
            "content": b"--xx\r\n[[]]--xx--\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=xx"},
        },
        422,
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "kwargs", "status"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_4xx_json_error(
    client: TestClient, case: str, path: str, kwargs: dict, status: int
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert client.get("/readyz").json()["images"] == 0  # nothing was stored


def test_a_vector_sent_with_its_model_is_searched_and_another_models_gets_409(
    client: TestClient,
) -> None:
    assert client.post("/images", files=_files(png_bytes(3)), headers=AUTH).status_code == 201
    embedded = client.post("/embed", files=_files(png_bytes(3))).json()
    query = {"vector": embedded["embeddings"][0], "model": embedded["model"], "k": 1}
    found = client.post("/nearest", json=query)
    assert found.status_code == 200 and found.json()["results"][0]["score"] > 0.999
    stale = client.post("/nearest", json={**query, "model": "0" * 64})
    assert stale.status_code == 409
    error = stale.json()["error"]
    assert error["code"] == "model_mismatch"
    assert "0" * 64 in error["message"] and embedded["model"] in error["message"]


def test_a_bad_image_names_itself_and_fails_only_its_request(client: TestClient) -> None:
    response = client.post("/embed", files=_files(png_bytes(0), b"garbage"))
    assert response.status_code == 422
    assert "files[1] (img1.png)" in response.json()["error"]["message"]
    assert client.post("/embed", files=_files(png_bytes(0))).status_code == 200


def test_oversized_body_without_content_length_gets_413(artifact: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(artifact, tmp_path / "data", max_upload_bytes=4096))

    def chunks():
        for _ in range(64):
            yield b"x" * 1024

    with TestClient(app, headers=AUTH) as client:
        wait_ready(client)
        response = client.post("/embed", content=chunks(), headers={"Content-Type": "image/png"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        lying = client.post(
            "/embed",
            content=b"x" * 8000,
            headers={"Content-Type": "image/png", "Content-Length": "8000"},
        )
        assert lying.status_code == 413


def test_nearest_rejects_k_over_limit_in_multipart(client: TestClient) -> None:
    response = client.post("/nearest", files=_files(png_bytes(0), field="file"), data={"k": "1001"})
    assert response.status_code == 422
    assert "k must be between 1 and 1000" in response.json()["error"]["message"]


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def _has_example(media: dict, spec: dict) -> bool:
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return "example" in media or "examples" in media or "examples" in schema


def test_every_route_documents_an_example(artifact: Path, tmp_path: Path) -> None:
    """/docs shows an example of each JSON or text body, in and out, and of each path id."""
    spec = create_app(make_settings(artifact, tmp_path / "data")).openapi()
    missing, seen = [], 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
            media = [
                *(
                    ("request", k, v)
                    for k, v in operation.get("requestBody", {}).get("content", {}).items()
                ),
                *(("response", k, v) for k, v in success.get("content", {}).items()),
            ]
            for side, kind, body in media:
                if ("json" in kind or kind.startswith("text/")) and not _has_example(body, spec):
                    missing.append(f"{where}: {side} {kind}")
            for param in operation.get("parameters", []):
                if param["in"] == "path" and not _has_example(param, spec):
                    missing.append(f"{where}: {param['name']}")
            seen += 1
    assert seen >= 15 and missing == []


def test_metrics_count_requests_and_batches(client: TestClient) -> None:
    client.post("/embed", files=_files(png_bytes(0), png_bytes(1)))
    text = client.get("/metrics").text
    assert 'lookalike_requests_total{method="POST",route="/embed",status="200"} 1.0' in text
    assert 'lookalike_request_seconds_count{method="POST",route="/embed",status="200"} 1.0' in text
    assert "lookalike_batch_images_count" in text
    assert "lookalike_index_vectors" in text


def test_service_starts_without_importing_torch(artifact: Path, tmp_path: Path) -> None:
    script = f"""
import sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.config import Settings
app = create_app(Settings(model_dir={str(artifact)!r}, data_dir={str(tmp_path / "d")!r}))
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
assert "torch" not in sys.modules, "torch was imported"
assert not any(m == "training" or m.startswith("training.") for m in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_store_that_keeps_its_model_serves_it_whatever_model_dir_says(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from testkit.artifacts import export_random_artifact

    data = tmp_path / "data"
    blobs = [png_bytes(i) for i in range(5)]
    with TestClient(
        create_app(make_settings(artifact, data, api_key=API_KEY)), headers=AUTH
    ) as client:
        wait_ready(client)
        served = client.get("/readyz").json()["model"]
        client.post(
            "/images", files=_files(*blobs), data={"ids": [f"i{i}" for i in range(5)]}, headers=AUTH
        )
    other = export_random_artifact(tmp_path / "other", seed=7)
    with TestClient(create_app(make_settings(other, data)), headers=AUTH) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["model"] == served and ready["images"] == ready["indexed"] == 5
        hit = client.post("/nearest", files=_files(blobs[2], field="file"), data={"k": "1"})
        assert hit.json()["model"] == served and hit.json()["results"][0]["id"] == "i2"
    assert "LOOKALIKE_MODEL_DIR is not the model the store serves" in caplog.text


def test_an_empty_gallery_is_seeded_with_labelled_fashion_mnist(
    artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        artifact, tmp_path / "data", seed_demo_gallery=True, demo_gallery_size=300
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        assert client.get("/readyz").json()["images"] == 300
        results = client.post("/nearest", json={"id": "fmnist-test-00000", "k": 5}).json()[
            "results"
        ]
        assert results[0]["id"] == "fmnist-test-00000"
        assert results[0]["metadata"] == {"label": "Ankle boot", "source": "fashion-mnist/test"}


def test_cors_is_off_by_default_and_configurable(artifact: Path, tmp_path: Path) -> None:
    origin = {"Origin": "https://app.example.com"}
    with TestClient(create_app(make_settings(artifact, tmp_path / "a")), headers=AUTH) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    settings = make_settings(artifact, tmp_path / "b", cors_origins=["https://app.example.com"])
    with TestClient(create_app(settings), headers=AUTH) as client:
        allowed = client.get("/healthz", headers=origin).headers
        assert allowed["access-control-allow-origin"] == "https://app.example.com"


def test_deleted_images_are_filtered_until_the_next_generation_leaves_them_out(
    artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        artifact, tmp_path / "data", api_key=API_KEY, index_kind="hnsw", compact_after_changes=8
    )
    blobs = [png_bytes(300 + i) for i in range(10)]
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        client.post(
            "/images",
            files=_files(*blobs),
            data={"ids": [f"h{i}" for i in range(10)]},
            headers=AUTH,
        )
        wait_until(lambda: generation_seq(client) == 10)  # 10 changes: written to a generation
        for i in range(3):
            assert client.delete(f"/images/h{i}", headers=AUTH).status_code == 204
        # 3 changes since the generation, below the 8 that write the next: filtered at query time.
        ready = client.get("/readyz").json()
        assert ready["index_tombstones"] == 3 and ready["indexed"] == ready["images"] == 7
        ids = [
            r["id"] for r in client.post("/nearest", json={"id": "h5", "k": 10}).json()["results"]
        ]
        assert sorted(ids) == sorted(f"h{i}" for i in range(3, 10))
        # Upserts delete the old version too; at 8 changes the next generation leaves them out.
        client.post(
            "/images",
            files=_files(*blobs[3:8]),
            data={"ids": [f"h{i}" for i in range(3, 8)]},
            headers=AUTH,
        )
        wait_until(lambda: client.get("/readyz").json()["index_tombstones"] == 0)
        top = client.post("/nearest", files=_files(blobs[4], field="file"), data={"k": "1"}).json()
        assert top["results"][0]["id"] == "h4"
        assert client.get("/readyz").json()["indexed"] == 7


def test_auto_index_switches_to_hnsw_past_the_configured_size(
    artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(artifact, tmp_path / "data", approximate_index_min_vectors=6)
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        client.post("/images", files=_files(*(png_bytes(400 + i) for i in range(4))))
        ready = client.get("/readyz").json()
        assert ready["index_kind"] == "flat" and ready["indexed"] == 4, ready
        client.post("/images", files=_files(*(png_bytes(500 + i) for i in range(4))))
        wait_until(lambda: client.get("/readyz").json()["index_kind"] == "hnsw")
        ready = client.get("/readyz").json()
        assert ready["indexed"] == ready["images"] == 8, ready


def test_a_size_crossed_during_a_compaction_still_switches_the_index_without_another_write(
    artifact: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        artifact, tmp_path / "data", approximate_index_min_vectors=8, compact_after_changes=4
    )
    release = threading.Event()
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        follower = client.app.state.runtime.gallery._follower  # the thread doing the chores
        compact, held = follower.compact, threading.Event()

        def slow_compact() -> None:
            held.set()
            release.wait(30)
            compact()

        follower.compact = slow_compact
        client.post("/images", files=_files(*(png_bytes(700 + i) for i in range(4))))
        assert held.wait(30)  # the compaction fell due and is held; these writes cross the HNSW
        client.post("/images", files=_files(*(png_bytes(800 + i) for i in range(4))))  # size
        assert client.get("/readyz").json()["index_kind"] == "flat"
        release.set()
        wait_until(lambda: client.get("/readyz").json()["index_kind"] == "hnsw")
        assert client.get("/readyz").json()["indexed"] == 8


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_a_damaged_index_generation_is_rebuilt_from_the_store(
    artifact: Path, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    blobs = [png_bytes(600 + i) for i in range(5)]
    settings = make_settings(artifact, data, api_key=API_KEY, compact_after_changes=1)
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        client.post(
            "/images", files=_files(*blobs), data={"ids": [f"s{i}" for i in range(5)]}, headers=AUTH
        )
        wait_until(lambda: generation_seq(client) == 5)  # all five in the generation's files
    generations = data / "generations"
    (vectors,) = generations.glob("*/c0/index.faiss")
    content = vectors.read_bytes()
    if damage == "truncate":
        vectors.write_bytes(content[: len(content) // 2])
    elif damage == "corrupt":
        vectors.write_bytes(
            content[:100] + bytes(b ^ 0xFF for b in content[100:200]) + content[200:]
        )
    else:
        shutil.rmtree(generations)
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["indexed"] == ready["images"] == 5
        top = client.post("/nearest", files=_files(blobs[3], field="file"), data={"k": "1"}).json()
        assert top["results"][0]["id"] == "s3"
        upload = client.post("/images", files=_files(png_bytes(700)), headers=AUTH)
        assert upload.status_code == 201
    current = (generations / "CURRENT").read_text()
    assert (generations / current / "manifest.json").exists()  # written again


class FullBatcher:
    def ensure_room(self, images: int = 1) -> None:
        raise Overloaded(retry_after_s=7)


def test_a_full_model_queue_answers_503_overloaded_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client.app.state.runtime.models, "batcher", lambda _: FullBatcher())
    for path, kwargs in (
        ("/embed", {"files": _files(png_bytes(1))}),
        ("/nearest", {"files": _files(png_bytes(1), field="file")}),
    ):
        response = client.post(path, **kwargs)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "7"
        assert response.json()["error"]["code"] == "overloaded"
