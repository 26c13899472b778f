"""OpenAI's embeddings API for images, through the official `openai` SDK against a real server.

The server runs the shipped model (256-d), so that `dimensions=64` is a real prefix.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from testkit.hostile_corpus import encode
from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH, Server

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fashion-mnist"
IMAGES = [png_bytes(seed) for seed in range(5)]
DATA_URIS = ["data:image/png;base64," + base64.b64encode(b).decode() for b in IMAGES]


@pytest.fixture(scope="module")
def artifact() -> Path:
    """The shipped model, for this module's servers (conftest's `module_server` among them)."""
    return ROOT / "models" / MODEL


@pytest.fixture(scope="module")
def sdk(module_server: Server) -> Iterator[openai.OpenAI]:
    # The SDK sends its api_key as a bearer key, as the service expects.
    with openai.OpenAI(base_url=module_server.url + "/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def embedded(module_server: Server) -> np.ndarray:
    """What /embed says for IMAGES (multipart), the reference for every comparison."""
    files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(IMAGES)]
    response = httpx.post(module_server.url + "/embed", files=files, timeout=30, headers=AUTH)
    return np.array(response.json()["embeddings"])


def test_sdk_embeddings_equal_embed_in_input_order_as_float_and_base64(
    sdk: openai.OpenAI, embedded: np.ndarray
) -> None:
    as_float = sdk.embeddings.create(model=MODEL, input=DATA_URIS, encoding_format="float")
    as_base64 = sdk.embeddings.create(model=MODEL, input=DATA_URIS)  # the SDK's default
    for response in (as_float, as_base64):
        assert response.object == "list" and response.model == MODEL
        assert [d.index for d in response.data] == list(range(len(IMAGES)))
        assert response.usage.prompt_tokens == response.usage.total_tokens == 0
        got = np.array([d.embedding for d in response.data])
        np.testing.assert_allclose(got, embedded, atol=1e-4)
    reversed_order = sdk.embeddings.create(model=MODEL, input=DATA_URIS[::-1])
    np.testing.assert_allclose(
        [d.embedding for d in reversed_order.data], embedded[::-1], atol=1e-4
    )


def test_base64_embeddings_are_little_endian_float32(
    module_server: Server, embedded: np.ndarray
) -> None:
    bare = base64.b64encode(IMAGES[0]).decode()  # bare base64 works as well as a data URI
    body = {"model": MODEL, "input": bare, "encoding_format": "base64"}
    response = httpx.post(
        module_server.url + "/v1/embeddings", json=body, timeout=30, headers=AUTH
    ).json()
    vector = np.frombuffer(base64.b64decode(response["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, embedded[0], atol=1e-6)


def test_sdk_dimensions_give_the_first_components_renormalised(
    sdk: openai.OpenAI, embedded: np.ndarray
) -> None:
    response = sdk.embeddings.create(model=MODEL, input=DATA_URIS, dimensions=64)
    short = np.array([d.embedding for d in response.data])
    assert short.shape == (len(IMAGES), 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    prefix = embedded[:, :64] / np.linalg.norm(embedded[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, prefix, atol=1e-4)
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        sdk.embeddings.create(model=MODEL, input=DATA_URIS[:1], dimensions=257)
    assert too_many.value.body["param"] == "dimensions"


def test_sdk_takes_avif_and_heic_data_uris(sdk: openai.OpenAI, module_server: Server) -> None:
    picture = Image.open(io.BytesIO(IMAGES[0])).convert("RGB")
    blobs = {"image/avif": encode(picture, "AVIF"), "image/heic": encode(picture, "HEIF")}
    uris = [f"data:{mime};base64,{base64.b64encode(b).decode()}" for mime, b in blobs.items()]
    response = sdk.embeddings.create(model=MODEL, input=uris)
    files = [("files", (f"photo-{i}", b)) for i, b in enumerate(blobs.values())]
    embedded = httpx.post(
        module_server.url + "/embed", files=files, timeout=30, headers=AUTH
    ).json()
    np.testing.assert_allclose(
        [d.embedding for d in response.data], embedded["embeddings"], atol=1e-4
    )


class Listener:
    """A local port that records whether anything ever connects to it."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/shirt.png"
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.socket.close()


BAD_INPUTS = [
    ("a bad data URI", "data:image/png;base64,iVBORw0K!!!", "invalid_input", "not valid base64"),
    ("plain text", "a photo of a red dress", "invalid_input", "not valid base64"),
    ("an http URL", None, "url_not_supported", "fetches no URLs"),
    ("base64 of text", base64.b64encode(b"just words").decode(), "invalid_image", "PNG"),
]


@pytest.mark.parametrize(
    ("case", "value", "code", "hint"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_sdk_bad_input_gets_a_4xx_in_openai_error_shape(
    sdk: openai.OpenAI, module_server: Server, case: str, value: str | None, code: str, hint: str
) -> None:
    listener = Listener()
    try:
        value = value or listener.url
        with pytest.raises(openai.APIStatusError) as raised:
            sdk.embeddings.create(model=MODEL, input=[DATA_URIS[0], value])
        raw = httpx.post(
            module_server.url + "/v1/embeddings",
            json={"model": MODEL, "input": value},
            headers=AUTH,
        )
    finally:
        listener.close()
    assert listener.connections == 0  # a URL is never fetched
    assert raised.value.status_code == 422 == raw.status_code
    assert raised.value.code == code
    error = raw.json()["error"]
    assert set(raw.json()) == {"error"}
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    assert hint in error["message"] and "send an image file" in error["message"]


def test_sdk_unknown_model_is_a_404_in_openai_error_shape(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model="text-embedding-3-small", input=DATA_URIS[:1])
    assert raised.value.code == "model_not_found"
    assert raised.value.body == {  # the SDK keeps the "error" object as the body
        "message": "the model 'text-embedding-3-small' does not exist; "
        f"this service serves '{MODEL}'",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_sdk_models_list_names_the_served_model(sdk: openai.OpenAI) -> None:
    models = list(sdk.models.list())
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by == "lookalike"
    assert models[0].created > 1_700_000_000  # the artifact's created_at
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4o")


def test_the_model_version_is_accepted_as_the_model_name(
    sdk: openai.OpenAI, module_server: Server
) -> None:
    version = httpx.get(module_server.url + "/info", headers=AUTH).json()["model"]["version"]
    response = sdk.embeddings.create(model=version, input=DATA_URIS[0])
    assert len(response.data) == 1 and len(response.data[0].embedding) == 256


def test_token_ids_and_unknown_v1_routes_answer_in_openai_shape(client: TestClient) -> None:
    tokens = client.post("/v1/embeddings", json={"model": MODEL, "input": [[101, 2023]]})
    assert tokens.status_code == 422
    assert tokens.json()["error"]["param"] == "input"
    assert "list of strings" in tokens.json()["error"]["message"]
    missing = client.post("/v1/embeddings", json={"input": DATA_URIS[0]})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "model"
    unknown = client.post("/v1/chat/completions", json={})
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    outside = client.get("/nowhere")  # the rest of the API keeps its own shape
    assert set(outside.json()["error"]) == {"code", "message"}


def test_embed_takes_dimensions_and_nearest_wants_full_vectors(client: TestClient) -> None:
    files = [("files", ("a.png", IMAGES[0], "image/png"))]
    full = client.post("/embed", files=files).json()
    short = client.post("/embed", files=files, params={"dimensions": 32}).json()
    assert short["dim"] == 32 and full["dim"] == 256
    prefix = np.array(full["embeddings"])[:, :32]
    prefix /= np.linalg.norm(prefix, axis=1, keepdims=True)
    np.testing.assert_allclose(short["embeddings"], prefix, atol=1e-5)
    too_big = client.post("/embed", files=files, params={"dimensions": 300})
    assert too_big.status_code == 422 and "between 1 and" in too_big.json()["error"]["message"]
    for word in ("abc", "3.5", ""):
        not_a_number = client.post("/embed", files=files, params={"dimensions": word})
        assert not_a_number.status_code == 422, word
        assert "dimensions must be a whole number" in not_a_number.json()["error"]["message"]
    search = client.post("/nearest", json={"vector": short["embeddings"][0]})
    assert search.status_code == 422
    assert "full-size vectors only" in search.json()["error"]["message"]
